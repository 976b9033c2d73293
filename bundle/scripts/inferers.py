"""Sliding-window inference tuned for whole brain volumes on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer


class BrainSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` whose window never exceeds the (head-cropped) image.

    MONAI pads an image smaller than ``roi_size`` up to the window size; after ``CropForegroundd`` a brain is
    often smaller than a generous window, so the window is clamped to the image instead and no time is spent
    on padding. Gaussian weighting, overlap and the output buffer device are MONAI's.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        clamped = copy.copy(self)
        clamped.roi_size = _clamp(self.roi_size, inputs.shape[2:])
        return SlidingWindowInferer.__call__(clamped, inputs, network, *args, **kwargs)


def _clamp(roi_size: Sequence[int], image_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) if r <= 0 else min(int(r), int(s)) for r, s in zip(roi_size, image_size))

