"""Loss functions of the MRI-GAN bundle (DESIGN.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss
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


class LabelledSegmentationLoss(nn.Module):
    """Labelled loss: cross-entropy (paper eq. 3) plus ``dice_weight`` times MONAI's soft Dice loss over tissues.

    The Dice term (background excluded, computed over the whole batch) helps thin structures such as the
    cortical grey-matter ribbon; ``dice_weight=0`` gives the paper's plain cross-entropy. Voxels labelled
    ``ignore_index`` are left out of both terms.
    """

    def __init__(
        self, class_weights: Sequence[float] | None = None, dice_weight: float = 1.0, ignore_index: int = IGNORE_LABEL
    ):
        super().__init__()
        self.cross_entropy = LabelledCrossEntropy(class_weights, ignore_index)
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, label)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits.float(), label)
        return loss
