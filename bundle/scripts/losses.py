"""Loss functions of the MRI-GAN bundle (DESIGN.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .datasets import IGNORE_LABEL


class LabelledCrossEntropy(nn.Module):
    """Cross-entropy over the K tissue classes for labelled voxels (paper eq. 3).

    Takes MONAI-style inputs: logits ``(B, K, *spatial)`` and an integer label map ``(B, 1, *spatial)``.
    Voxels whose label is ``ignore_index`` (structures a dataset excludes from evaluation) add nothing.

    Args:
        class_weights: optional weight per class (Mondal et al. used 0.33, 1.5, 0.83, 1.33).
        ignore_index: label value excluded from the loss.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = IGNORE_LABEL):
        super().__init__()
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = label[:, 0].long() if label.dim() == logits.dim() else label.long()
        return nn.functional.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index
        )
