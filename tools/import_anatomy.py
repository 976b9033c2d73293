"""Bring SynthSeg's 16 training label maps into the bundle in a compact form (run once; its output is committed).

Each ``training_seg_NN.nii.gz`` (1 mm, 256^3, float32 or int32) becomes ``bundle/anatomy/seg_NN.nii.gz``: the labels
rounded to uint16 (FreeSurfer codes kept), cropped to the head with a 2-voxel margin (the affine moved with the crop),
gzip level 9; 26 MB become about 8.5 MB. The licence, the labels table and a README with the citation go beside them.

    python -m tools.import_anatomy run --source ../shared/anatomy --target bundle/anatomy
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

MARGIN = 2


def compact(source: Path, target: Path) -> tuple[int, ...]:
    """Write ``source``'s labels as uint16, cropped to the non-zero box plus ``MARGIN``; return the cropped shape."""
    image = nib.load(str(source))
    labels = np.rint(np.asarray(image.dataobj)).astype(np.int64)
    if labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{source}: label values outside uint16")
    nonzero = np.argwhere(labels > 0)
    lo = np.maximum(nonzero.min(0) - MARGIN, 0)
    hi = np.minimum(nonzero.max(0) + 1 + MARGIN, labels.shape)
    crop = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.uint16)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ lo + image.affine[:3, 3]
    out = nib.Nifti1Image(crop, affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.openers.Opener.default_compresslevel = 9
    nib.save(out, str(target))
    return crop.shape


def run(source: str = "../shared/anatomy", target: str = "bundle/anatomy") -> None:
    """Compact every ``training_seg_*.nii.gz`` of ``source`` into ``target``, with the licence and labels table."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("training_seg_*.nii.gz")):
        name = "seg_" + path.name.removeprefix("training_seg_")
        print(name, compact(path, target / name))
    for extra in ("LICENSE-SynthSeg.txt", "labels_table_SynthSeg.txt"):
        shutil.copyfile(source / extra, target / extra)


if __name__ == "__main__":
    fire.Fire({"run": run})
