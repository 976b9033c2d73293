"""Tiny label maps for tests that render scans from them (``scripts.data.anatomy``): a ball of WM, cortex and CSF
under a scalp, in air, with FreeSurfer codes."""

import nibabel as nib
import numpy as np


def write_label_maps(folder, indices, size=20):
    """Write the same tiny map as ``seg_NN.nii.gz`` for each of ``indices`` into ``folder``; return ``folder``."""
    radius = np.linalg.norm(np.indices((size,) * 3) - (size - 1) / 2, axis=0)
    codes = np.select([radius < 4, radius < 6, radius < 7, radius < 9], [2, 3, 24, 507], 0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        nib.save(nib.Nifti1Image(codes, np.eye(4)), str(folder / f"seg_{index:02d}.nii.gz"))
    return folder
