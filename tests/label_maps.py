"""Tiny label maps for tests that render scans from them (``scripts.data.anatomy``): a ball of WM, cortex and CSF
under a scalp, in air, with FreeSurfer codes."""

import nibabel as nib
import numpy as np


def write_label_maps(folder, indices, size=20, scale=1.0):
    """Write the same tiny map as ``seg_NN.nii.gz`` for each of ``indices`` into ``folder``; return ``folder``.
    ``scale`` multiplies the radii of its layers (WM 4, cortex 6, CSF 7, scalp 9 voxels): 2 in a ``size`` 40 map
    gives every tissue voxels away from its borders, whose intensity blur leaves alone."""
    radius = np.linalg.norm(np.indices((size,) * 3) - (size - 1) / 2, axis=0) / scale
    codes = np.select([radius < 4, radius < 6, radius < 7, radius < 9], [2, 3, 24, 507], 0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        nib.save(nib.Nifti1Image(codes, np.eye(4)), str(folder / f"seg_{index:02d}.nii.gz"))
    return folder
