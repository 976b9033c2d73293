"""A warning in the inference log when an input looks unlike the training data (``OutOfDistributionWarningd``)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy, convert_to_tensor

from .tissue_outputs import subject_of, voxel_volume_ml

logger = logging.getLogger(__name__)


def subject_statistics(probabilities, image=None) -> dict[str, float]:
    """What ``OutOfDistributionWarningd`` checks, from the tissue probabilities on the input's grid (a MetaTensor
    with its affine) and the preprocessed image (optional): ``spacing`` (the largest voxel size, mm), ``brain_ml``
    (voxels whose most likely class is not background), ``confidence`` (the mean probability of that class over
    them) and ``flat_background``: the share of the image's background (at most -0.9 in every channel) that is
    exactly -1: 1 for the training phantoms' zero background, about 0.3 for a head in noisy air."""
    affine = convert_to_numpy(probabilities.affine)
    confidence, tissue = convert_to_tensor(probabilities, track_meta=False).max(0)
    brain = tissue > 0
    statistics = {
        "spacing": float(np.max(nib.affines.voxel_sizes(affine))),
        "brain_ml": float(brain.sum()) * voxel_volume_ml(affine),
        "confidence": float(confidence[brain].mean()) if brain.any() else 0.0,
    }
    if image is not None:
        image = convert_to_tensor(image, track_meta=False)
        background = (image <= -0.9).all(0)
        statistics["flat_background"] = float(((image == -1).all(0) & background).sum() / background.sum().clamp(min=1))
    return statistics


class OutOfDistributionWarningd(MapTransform):
    """Log one warning naming the subject and what is odd when its input looks unlike the training phantoms:
    voxels coarser than ``max_spacing`` mm, a background that is not 0 (``flat_background`` below
    ``min_flat_background``: a head in noisy air, where the phantoms are skull-stripped brains), a segmented brain
    outside ``brain_ml`` mL or a mean confidence over it below ``min_confidence`` (``subject_statistics``).

    ``keys``: the tissue probabilities on the input's grid (after ``Activationsd`` and ``Invertd``, before
    ``ChannelArgmaxd``); ``image_key``: the preprocessed image, if the data hold it. Cheap; never an error.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        max_spacing: float = 3.0,
        min_flat_background: float = 0.8,
        brain_ml: Sequence[float] = (150.0, 2500.0),
        min_confidence: float = 0.7,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.max_spacing = max_spacing
        self.min_flat_background = min_flat_background
        self.brain_ml = tuple(brain_ml)
        self.min_confidence = min_confidence

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            s = subject_statistics(d[key], d.get(self.image_key))
            odd = []
            if s["spacing"] > self.max_spacing:
                odd.append(f"voxels of up to {s['spacing']:.1f} mm (coarser than {self.max_spacing:g} mm)")
            if s.get("flat_background", 1.0) < self.min_flat_background:
                odd.append("a background that is not 0 (a head in noisy air? the model was trained on skull-stripped "
                           "brains: pass a brain mask)")
            low, high = self.brain_ml
            if not low <= s["brain_ml"] <= high:
                odd.append(f"a segmented brain of {s['brain_ml']:.0f} mL (outside {low:g}-{high:g} mL)")
            if s["confidence"] < self.min_confidence:
                odd.append(f"a mean confidence of {s['confidence']:.2f} over the brain (below {self.min_confidence:g})")
            if odd:
                logger.warning(f"subject {subject_of(d[key], d)} looks unlike the training data: {'; '.join(odd)}")
        return d
