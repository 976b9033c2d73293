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


def _logsumexp_classes(logits: torch.Tensor) -> torch.Tensor:
    """log Z per voxel, Z = sum_k exp(l_k), over the class axis 1, in float32."""
    return torch.logsumexp(logits.float(), dim=1)


def unlabelled_loss(logits: torch.Tensor) -> torch.Tensor:
    """Real unlabelled voxels (paper eq. 4): mean of -log(Z / (Z + 1)) = softplus(-log Z).

    The fake class has a fixed logit of 0, so D(x) = P(real) = Z / (Z + 1); softplus keeps it finite for any logits.
    """
    return nn.functional.softplus(-_logsumexp_classes(logits)).mean()


def fake_loss(logits: torch.Tensor) -> torch.Tensor:
    """Generated voxels (paper eq. 5): mean of -log(1 / (Z(G) + 1)) = softplus(log Z(G))."""
    return nn.functional.softplus(_logsumexp_classes(logits)).mean()


class DiscriminatorLoss(nn.Module):
    """Semi-supervised GAN discriminator loss (paper eq. 2): a_lab*l_lab + a_unlab*l_unlab + a_fake*l_fake.

    Defaults are the paper's weights 1.0 / 1.0 / 2.0 (Mondal et al.'s code used 1.0 / 0.5 / 0.5). ``labelled`` is the
    labelled-voxel loss (cross-entropy, optionally with a Dice term). Returns the total and each term, so that
    handlers can log them.
    """

    def __init__(
        self,
        labelled: nn.Module | None = None,
        labelled_weight: float = 1.0,
        unlabelled_weight: float = 1.0,
        fake_weight: float = 2.0,
    ):
        super().__init__()
        self.labelled = labelled if labelled is not None else LabelledCrossEntropy()
        self.weights = {"labelled": float(labelled_weight), "unlabelled": float(unlabelled_weight), "fake": float(fake_weight)}

    def forward(
        self, labelled_logits: torch.Tensor, label: torch.Tensor, unlabelled_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        terms = {
            "labelled": self.labelled(labelled_logits, label),
            "unlabelled": unlabelled_loss(unlabelled_logits),
            "fake": fake_loss(fake_logits),
        }
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms
