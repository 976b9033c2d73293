"""Figure of MRI and tissues transfer: a source subject, a target tissue map, the synthetic MRI the generator wrote
for them (``configs/synthesize.yaml``) and the target's own MRI, middle axial slice, one row per modality.

A faithful transfer shows the target's tissues (compare the label and the target's MRI) with the source's contrast
(compare the source's MRI). Run from the repository root after ``run synthesize``:

    python -m tools.transfer_figure --source "['s-T1.hdr','s-T2.hdr']" --label t-label.hdr \\
        --target "['t-T1.hdr','t-T2.hdr']" --synthetic bundle/synthetic/t_from_s_synth.nii.gz \\
        --out bundle/docs/figures/transfer.png
"""

from __future__ import annotations

from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from scripts.data.datasets import IGNORE_LABEL
from tools import BUNDLE_ROOT


def _slice(path, channel=None):
    """Middle axial slice (last spatial axis) of an image, transposed for display."""
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data = data.reshape(data.shape[:3] + (-1,))
    return data[:, :, data.shape[2] // 2, 0 if channel is None else channel].T


def _scaled(image):
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def draw(
    source,
    label,
    target,
    synthetic,
    out=str(BUNDLE_ROOT / "docs" / "figures" / "transfer.png"),
    modalities=("T1", "T2"),
    title=None,
):
    """Draw the figure into ``out``: columns source MRI, target tissues, synthetic MRI, target MRI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(modalities)
    fig, axes = plt.subplots(rows, 4, figsize=(11, 3.2 * rows), squeeze=False)
    tissues = _slice(label)
    tissues[tissues == IGNORE_LABEL] = np.nan  # ignored voxels blank, not the top of the tissues' colour scale
    for r, name in enumerate(modalities):
        panels = [
            (f"source {name}", _scaled(_slice(source[r]))),
            ("target tissues", tissues),
            (f"synthetic {name}", _scaled(_slice(synthetic, r))),
            (f"target's own {name}", _scaled(_slice(target[r]))),
        ]
        for ax, (caption, image) in zip(axes[r], panels):
            if caption == "target tissues":
                ax.imshow(image, cmap="viridis", vmin=0, vmax=3, origin="lower")
            else:
                ax.imshow(image, cmap="gray", origin="lower")
            ax.set_title(caption, fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


if __name__ == "__main__":
    fire.Fire(draw)
