"""Multi-modal subjects the way MONAI Label hands them to a bundle: one multi-channel ``image`` file per study.

MONAI Label gives inference one ``image`` path per study and training ``{"image": path, "label": path}`` pairs of
its labelled studies. Here that image is a 4D NIfTI whose 4th axis holds the modalities in the order of the configs'
``modalities`` (T1, T2); its label holds the class indices of ``metadata.json`` (0 background, 1 CSF, 2 GM, 3 WM).
``write_studies`` turns a dataset folder into such a MONAI Label studies folder, ``stack_modalities`` one subject::

    python -m scripts.monailabel_data studies --dataset_dir /data/iSeg-2017-Training --dataset_format iseg \\
        --studies_dir /data/mri_gan_studies
    python -m scripts.monailabel_data stack /data/case01.nii.gz /data/case01_T1.nii.gz /data/case01_T2.nii.gz
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Spacingd

from .cli import as_bool
from .datasets import IGNORE_LABEL, find_subjects, label_mapping
from .input_checks import InputError, Volume, check_same_grid

IMAGE_KEY = "image"
_EXTENSIONS = re.compile(r"(\.nii\.gz|\.nii|\.hdr|\.img|\.nrrd|\.mha|\.mhd)$", re.IGNORECASE)


class CheckChannelsd(MapTransform):
    """Raise an ``InputError`` naming the file unless ``keys`` hold ``channels`` channels of one 3D volume.

    Run after loading with ``ensure_channel_first``: a 4D NIfTI with one volume per modality is ``(C, H, W, D)``.
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape)
            if len(shape) != 4 or shape[0] != self.channels:
                raise InputError(
                    f"{_source(d[key])} has shape {shape} as {key} (channels first) but the network needs "
                    f"{self.channels} channels of one 3D volume: give a 4D NIfTI whose 4th axis holds the "
                    f"{self.channels} modalities in the order of --modalities (python -m scripts.monailabel_data stack)"
                )
        return d


class SubjectFromFilenamed(MapTransform):
    """Set ``subject_key`` from the file name of ``keys`` (``case01.nii.gz`` -> ``case01``) when the data has none.

    MONAI Label's requests carry only the ``image`` path; outputs are named after the subject.
    """

    def __init__(self, keys: KeysCollection, subject_key: str = "subject", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.subject_key = subject_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.subject_key not in d:
                d[self.subject_key] = _EXTENSIONS.sub("", Path(_source(d[key])).name)
        return d


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` for data that carry strings under ``<key>_...`` names, as MONAI Label's requests do.

    MONAI 1.6's ``Spacingd`` updates every ``<key>_...`` entry beside a NIfTI image as a metadata dict, and MONAI
    Label's infer requests hold the string ``image_path`` (``'str' object has no attribute 'update'``); such
    entries are set aside during the call. Its inverse is ``Spacingd``'s.
    """

    def __call__(self, data: Mapping[Hashable, object], lazy: bool | None = None) -> dict[Hashable, object]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: v for k, v in data.items() if str(k).startswith(prefixes) and not isinstance(v, Mapping)}
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        d.update(aside)
        return d


def is_image_datalist(entries: Sequence[Mapping]) -> bool:
    """Whether a non-empty datalist gives every subject as one ``image`` (MONAI Label's form), not per modality."""
    return bool(entries) and all(IMAGE_KEY in e for e in entries)


def label_format_of(entries: Sequence[Mapping], dataset_format: str) -> str:
    """The label format of ``entries`` (training or evaluated data): ``datalist`` (the class indices 0..3 that MONAI
    Label writes, ``metadata.json``'s ``channel_def``) for an image datalist, otherwise ``dataset_format``."""
    return "datalist" if is_image_datalist(entries) else dataset_format


def unlabeled_data(training: Sequence[Mapping], dataset_split: Callable[[], Mapping]) -> list[dict]:
    """The GAN's unlabelled subjects: ``dataset_split()["unlabeled"]``, or for an image datalist the training images
    without their labels (MONAI Label passes labelled studies only; ``dataset_split`` is then never called, so
    the dataset folder is not read)."""
    if is_image_datalist(training):
        return [{k: v for k, v in entry.items() if k != "label"} for entry in training]
    return list(dataset_split()["unlabeled"])


def stack_modalities(output, *inputs) -> str:
    """Write the 3D images ``inputs`` (one per modality, in the order of ``modalities``) as one 4D NIfTI ``output``
    (float32, the first input's affine). They must share one voxel grid. Returns ``output``."""
    import nibabel as nib

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
    import nibabel as nib

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


def _source(image) -> str:
    """The file an image was loaded from (MONAI metadata), or ``'image'`` when unknown."""
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "image")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


if __name__ == "__main__":
    import fire

    fire.Fire({"stack": stack_modalities, "studies": write_studies})
