"""MONAI Label studies: multi-modal subjects as MONAI Label hands them to a bundle, one multi-channel ``image``
file per study. Every run goes through this module, whichever form its subjects take: the configs pick the
label format and the unlabelled data with it, and inference checks and resamples ``image`` with its transforms.

MONAI Label gives inference one ``image`` path per study and training ``{"image": path, "label": path}`` pairs of
its labelled studies. Here that image is a 4D NIfTI whose 4th axis holds the modalities in the order of the configs'
``modalities`` (T1, T2); its label holds the class indices of ``metadata.json`` (0 background, 1 CSF, 2 GM, 3 WM).
The repository's ``tools.monailabel_studies`` writes such studies from a dataset folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

from monai.config import KeysCollection
from monai.transforms import MapTransform, Spacingd

from ..checks import InputError

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
                    f"{self.channels} modalities in the order of --modalities "
                    "(python -m tools.monailabel_studies stack)"
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


def _source(image) -> str:
    """The file an image was loaded from (MONAI metadata), or ``'image'`` when unknown."""
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "image")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)

