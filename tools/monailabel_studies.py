"""MONAI Label studies from a dataset folder: one 4D NIfTI per subject whose 4th axis holds the modalities in the order
of the configs' ``modalities``, and for labelled subjects its label as the class indices of ``metadata.json``, the
form ``scripts.data.studies`` reads (bundle/docs/monailabel.md). Run from the repository root::

    python -m tools.monailabel_studies studies --dataset_dir /data/iSeg-2017-Training --dataset_format iseg \\
        --studies_dir /data/mri_gan_studies
    python -m tools.monailabel_studies stack /data/case01.nii.gz /data/case01_T1.nii.gz /data/case01_T2.nii.gz
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from scripts.checks import InputError, Volume, as_bool, check_same_grid
from scripts.data.datasets import find_subjects, label_mapping


def stack_modalities(output, *inputs) -> str:
    """Write the 3D images ``inputs`` (one per modality, in the order of ``modalities``) as one 4D NIfTI ``output``
    (float32, the first input's affine). They must share one voxel grid. Returns ``output``."""
    if not inputs:
        raise InputError(f"{output}: give the modality images to stack, in the order of --modalities (e.g. T1 T2)")
    images = [nib.load(str(p)) for p in inputs]
    for path, image in zip(inputs, images):
        if len(image.shape) != 3:
            raise InputError(f"{path} has shape {image.shape}: each modality must be one 3D volume")
    check_same_grid([Volume(str(p), tuple(i.shape), i.affine) for p, i in zip(inputs, images)], Path(output).name)
    data = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in images], axis=-1)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, images[0].affine), str(output))
    return str(output)


def write_studies(
    dataset_dir,
    dataset_format: str,
    studies_dir,
    modalities: Sequence[str] = ("t1", "t2"),
    suffixes: dict | None = None,
    overwrite: bool = False,
) -> None:
    """Write every subject of a dataset folder as a MONAI Label study: ``<studies_dir>/<subject>.nii.gz`` (4D, see
    ``stack_modalities``) and, for labelled subjects, ``<studies_dir>/labels/final/<subject>.nii.gz`` holding the
    class indices 0..3, and 255 (``IGNORE_LABEL``) on structures the dataset excludes (e.g. MRBrainS cerebellum), which
    training, like the dataset's own format, leaves out of the loss.
    ``dataset_format``/``modalities``/``suffixes``: as in the configs."""
    studies = Path(studies_dir).expanduser().resolve()
    subjects = find_subjects(dataset_dir, dataset_format, modalities, suffixes=suffixes)
    codes, classes = label_mapping(dataset_format)
    lookup = dict(zip(codes, classes))
    for subject in subjects:
        name = f"{subject['subject']}.nii.gz"
        image, label = studies / name, studies / "labels" / "final" / name
        for path in (image, label) if "label" in subject else (image,):
            if path.exists() and not as_bool(overwrite):
                raise FileExistsError(f"{path} already exists; pass --overwrite true to replace it")
        stack_modalities(image, *(subject[m] for m in modalities))
        if "label" in subject:
            source = nib.load(subject["label"])
            values = np.asarray(source.dataobj)
            unknown = np.setdiff1d(np.unique(values), codes)
            if unknown.size:
                raise InputError(f"{subject['label']} has label values {unknown.tolist()} that {dataset_format} lacks")
            mapped = np.zeros(values.shape, np.uint8)
            for code, index in lookup.items():
                mapped[values == code] = index
            label.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mapped, source.affine), str(label))
    print(f"{len(subjects)} studies in {studies} ({sum('label' in s for s in subjects)} labelled)")


if __name__ == "__main__":
    fire.Fire({"stack": stack_modalities, "studies": write_studies})
