"""Small transforms the bundle needs beyond MONAI's own."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, MaskIntensityd, RandomizableTransform
from monai.utils import convert_to_numpy

from .datasets import IGNORE_LABEL
from .input_checks import InputError, check_label_codes


class MaskIgnoredd(MapTransform):
    """Set ``keys`` to background (0) wherever ``label_key`` holds ``ignore_value``.

    Used before metrics so that structures a dataset excludes from evaluation (MRBrainS cerebellum,
    brainstem, ...) count neither as hits nor as errors. Expects label maps, not one-hot.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", ignore_value: int = IGNORE_LABEL):
        super().__init__(keys)
        self.label_key = label_key
        self.ignore_value = ignore_value

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ignored = d[self.label_key] == self.ignore_value
        for key in self.key_iterator(d):
            d[key] = torch.where(ignored, torch.zeros_like(d[key]), d[key])
        return d


class CheckLabelCodesd(MapTransform):
    """Raise an ``InputError`` naming the file (the MetaTensor's ``filename_or_obj``) and the values when ``keys``
    hold values outside ``codes``.

    Goes before ``MapLabelValued``, which passes codes outside its ``orig_labels`` unchanged (MONAI has no transform
    that rejects them), so that a label map in another format stops the run here, not inside the loss, also with
    ``check_inputs`` off. ``set_name`` names the set in the message (e.g. the dataset format).
    """

    def __init__(
        self, keys: KeysCollection, codes: Sequence[float], set_name: str = "allowed", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.codes, self.set_name = list(codes), set_name

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            path = label.meta.get("filename_or_obj", key) if isinstance(label, MetaTensor) else key
            check_label_codes(path, convert_to_numpy(label), self.codes, self.set_name)
        return d


class SubjectToMetad(MapTransform):
    """Copy the datalist's subject id into the metadata of ``keys`` so saved outputs are named after the subject."""

    def __init__(self, keys: KeysCollection, subject_key: str = "subject"):
        super().__init__(keys)
        self.subject_key = subject_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key].meta[self.subject_key] = d[self.subject_key]
        return d


def subject_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImaged`` name formatter: name outputs ``<subject><postfix>`` after the subject id in the metadata."""
    return {"subject": str(metadict["subject"]), "idx": metadict.get("patch_index")}


class OptionalMaskIntensityd(MaskIntensityd):
    """MONAI's ``MaskIntensityd`` (``keys`` set to 0 wherever the mask ``mask_key`` is not > 0) for data in which the
    mask is optional: an item without ``mask_key`` passes unchanged. A mask whose spatial shape differs from that of
    ``keys`` raises an ``InputError`` naming the mask file (MONAI would fail to broadcast, or crop it wrongly later)."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        if self.mask_key not in data:
            return dict(data)
        mask = data[self.mask_key]
        for key in self.key_iterator(dict(data)):
            if tuple(mask.shape[1:]) != tuple(data[key].shape[1:]):
                source = getattr(mask, "meta", {}).get("filename_or_obj", self.mask_key)
                shapes = f"{tuple(mask.shape[1:])} but the image {tuple(data[key].shape[1:])}"
                raise InputError(f"brain mask {source} has shape {shapes}: the mask must be on the image's voxel grid")
        return super().__call__(data)


class RandTissueShiftd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add to each tissue of ``keys`` (labels 1..num_classes-1 of ``label_key``) one
    random offset per channel, uniform in ``[-offset, offset]``; background and excluded voxels stay as they are.

    Contrast randomisation that keeps the scan's texture, noise and bias (SynthSeg redraws whole images from the
    labels instead): with offsets as large as the tissue contrasts, the order of GM and WM intensities flips, as it
    does in the first year of life. MONAI's intensity transforms change all voxels alike and know no labels.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", offset: float = 0.5, prob: float = 0.5,
                 num_classes: int = 4, allow_missing_keys: bool = False):  # fmt: skip
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.offset, self.num_classes = label_key, float(offset), int(num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = torch.as_tensor(d[self.label_key])[0].long()
        tissue = (label > 0) & (label < self.num_classes)  # background and excluded voxels keep their intensity
        for key in self.key_iterator(d):
            image = d[key]
            shifts = self.R.uniform(-self.offset, self.offset, (image.shape[0], self.num_classes))
            offsets = torch.as_tensor(shifts, dtype=image.dtype)[:, torch.where(tissue, label, 0)]
            d[key] = image + torch.where(tissue, offsets, torch.zeros_like(offsets))
        return d
