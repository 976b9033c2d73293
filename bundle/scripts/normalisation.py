"""Intensity normalisation that survives real scans (``ForegroundPercentileScaled``) and the head crop that goes
with it (``foreground``, ``CropForegroundd``'s ``select_fn``): a background anchor and percentiles over the
foreground, for skull-stripped scans and for heads in noisy, offset or negative air alike."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_dst_type, convert_to_tensor

DARK = 0.05  # voxels at most this fraction of the 99th percentile are dark: air, or the zero background


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the histogram split with the largest between-class variance (the values up
    to it form one class). The histogram spans the 0.1th to 99.9th percentile: a few extreme voxels do not squeeze it.
    """
    low, high = (float(v) for v in percentile(values, [0.1, 99.9]))
    if high <= low:
        return low
    counts = torch.histc(values.float().clamp(low, high), bins, low, high).double()
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    below, mass = counts.cumsum(0), (counts * (edges[:-1] + edges[1:]) / 2).cumsum(0)
    between = (mass[-1] * below - mass * below[-1]) ** 2 / (below * (below[-1] - below)).clamp(min=1)
    return float(edges[int(between[:-1].argmax()) + 1])


def channel_background(channel: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(foreground, background level)`` of one channel.

    A zero background (skull-stripped or zero-filled: most of the dark voxels, at most ``DARK`` times the 99th
    percentile, are exactly 0): the voxels above 0, level 0. Otherwise (a head in noisy air, whose dark voxels
    spread over many values, possibly negative ones): the voxels above Otsu's threshold, level the median of the
    others.
    """
    dark = channel <= DARK * float(percentile(channel, 99))
    if 2 * int((channel == 0).sum()) >= int(dark.sum()):
        return channel > 0, 0.0
    threshold = otsu_threshold(channel)
    return channel > threshold, float(percentile(channel[channel <= threshold], 50))


def foreground(image: torch.Tensor) -> torch.Tensor:
    """The foreground (``channel_background``) of each channel of ``image`` (C, ...): ``CropForegroundd``'s
    ``select_fn`` for a head in noisy air, where MONAI's default (``> 0``) keeps the whole field of view."""
    image = convert_to_tensor(image, track_meta=False)
    return torch.stack([channel_background(channel)[0] for channel in image])


class ForegroundPercentileScaled(MapTransform):
    """Scale each channel of ``keys`` linearly from its background level (to ``b_min``) to the ``upper`` percentile
    of its foreground (to ``b_max``), clipped to [b_min, b_max] with ``clip``; foreground and background level as in
    ``channel_background`` (the head, or the brain of a skull-stripped or masked scan).

    MONAI's ``ScaleIntensityRangePercentiles`` has neither a foreground for its percentiles nor a background anchor:
    it takes both ends from percentiles of the whole box, so with ``lower=0`` one negative voxel (common after bias
    correction) moves every other voxel, a noisy background sits above ``b_min``, and the upper percentile is diluted
    by the background. ``NormalizeIntensity(nonzero=True)`` takes the non-zero voxels as its foreground, which noisy
    air fills, and anchors nothing. For a skull-stripped scan (background 0) this transform is
    ``ScaleIntensityRangePercentiles(lower=0, upper)`` with the percentile taken over the brain; voxels below the
    background level (negative ones) clip to ``b_min`` without moving the others.
    """

    def __init__(
        self,
        keys: KeysCollection,
        upper: float = 99.5,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.upper, self.b_min, self.b_max, self.clip = upper, b_min, b_max, clip

    def scale(self, channel: torch.Tensor) -> torch.Tensor:
        mask, level = channel_background(channel)
        top = float(percentile(channel[mask], self.upper)) if mask.any() else level
        scaled = ScaleIntensityRange(level, top, self.b_min, self.b_max, clip=self.clip)(channel)
        return convert_to_tensor(scaled, track_meta=False)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False)
            d[key] = convert_to_dst_type(torch.stack([self.scale(c) for c in image]), d[key], dtype=torch.float32)[0]
        return d
