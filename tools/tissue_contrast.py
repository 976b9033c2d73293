"""The tissue contrast of a scan or of a generator's fake: per channel, the mean intensity of CSF, GM and WM under a
tissue map and GM's place between CSF and WM, ``(GM - CSF) / (WM - CSF)`` (unchanged by any linear rescaling, so a
fake in the generator's [-1, 1] range compares with its source's file). A generator that kept its source's contrast
gives its fake the source's place; 1 means GM as bright as WM (isointense). Run from the repository root:

    python -m tools.tissue_contrast --images "['s_T1.nii','s_T2.nii']" --label s_label.nii.gz
    python -m tools.tissue_contrast --images "['synthetic/t_from_s_synth.nii.gz']" --label t_label.nii.gz
"""

from __future__ import annotations

import fire
import nibabel as nib
import numpy as np

from scripts.data.datasets import CSF, GM, WM


def tissue_contrast(channels, label: np.ndarray) -> list[dict]:
    """Per channel of ``channels`` (arrays on ``label``'s grid): ``means`` of CSF, GM and WM and GM's ``place``."""
    rows = []
    for image in channels:
        means = [float(image[label == tissue].mean()) for tissue in (CSF, GM, WM)]
        rows.append({"means": [round(m, 4) for m in means],
                     "place": round((means[1] - means[0]) / (means[2] - means[0]), 3)})  # fmt: skip
    return rows


def main(images, label: str) -> list[dict]:
    """:func:`tissue_contrast` of the image files ``images`` (a 4D file counts as its channels)."""
    channels = []
    for path in [images] if isinstance(images, str) else images:
        data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
        channels += [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
    return tissue_contrast(channels, np.asanyarray(nib.load(str(label)).dataobj))


if __name__ == "__main__":
    fire.Fire(main)
