"""Loss functions of the MRI-GAN bundle; their equations: "The losses" in docs/gan_training.md."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss
from torch import nn

from .data.datasets import IGNORE_LABEL
from .networks.generators import class_intensity_statistics, tissue_boundaries, tissue_onehot


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
    """Semi-supervised GAN discriminator loss (paper eq. 2) with tissue transfer:
    a_lab*l_lab + s*(a_unlab*l_unlab + a_fake*l_fake + a_syn*l_syn).

    ``labelled`` is the labelled-voxel loss (cross-entropy, optionally with a Dice term); ``l_syn`` is the same loss on
    generated patches against the tissue maps they were generated from (tissue transfer as labelled data); ``s`` is
    the trainer's ramp factor (``scale``). The paper's weights are 1.0 / 1.0 / 2.0 / 0 (Mondal et al.'s code:
    1.0 / 0.5 / 0.5 / 0). A term whose logits are ``None`` or whose weight is 0 is left out. Returns the total and
    each term, so that handlers can log them.
    """

    def __init__(
        self,
        labelled: nn.Module | None = None,
        labelled_weight: float = 1.0,
        unlabelled_weight: float = 1.0,
        fake_weight: float = 2.0,
        synthetic_weight: float = 0.0,
    ):
        super().__init__()
        self.labelled = labelled if labelled is not None else LabelledCrossEntropy()
        self.weights = {
            "labelled": float(labelled_weight), "unlabelled": float(unlabelled_weight), "fake": float(fake_weight),
            "synthetic": float(synthetic_weight),
        }  # fmt: skip

    def forward(
        self,
        labelled_logits: torch.Tensor,
        label: torch.Tensor,
        unlabelled_logits: torch.Tensor | None = None,
        fake_logits: torch.Tensor | None = None,
        synthetic_logits: torch.Tensor | None = None,
        synthetic_label: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        terms = {"labelled": self.labelled(labelled_logits, label)}
        if unlabelled_logits is not None and self.weights["unlabelled"]:
            terms["unlabelled"] = unlabelled_loss(unlabelled_logits)
        if fake_logits is not None and self.weights["fake"]:
            terms["fake"] = fake_loss(fake_logits)
        if synthetic_logits is not None and synthetic_label is not None and self.weights["synthetic"]:
            terms["synthetic"] = self.labelled(synthetic_logits, synthetic_label)
        terms["total"] = sum(
            self.weights[name] * (1.0 if name == "labelled" else scale) * value for name, value in terms.items()
        )
        return terms


def class_feature_means(features: torch.Tensor, label: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature vector of each tissue class over a batch: ``(K, C)`` means and a ``(K,)`` mask of present classes.

    ``label`` (B, 1, *spatial) is one-hot encoded and average-pooled to the feature resolution, so each feature
    voxel counts with the fraction of its receptive voxels in the class; ignored voxels (255) count for no class.
    """
    weights = tissue_onehot(label, num_classes)
    if weights.shape[2:] != features.shape[2:]:
        weights = nn.functional.adaptive_avg_pool3d(weights, features.shape[2:])
    mass = weights.sum(dim=(0, 2, 3, 4))
    sums = torch.einsum("bk...,bc...->kc", weights, features.float())
    return sums / mass.clamp_min(1e-6)[:, None], mass > 0


class GeneratorLoss(nn.Module):
    """Generator loss: the paper's eqs. 7-8 as we read them, plus tissue transfer ("The losses" in
    docs/gan_training.md). Each term has a weight (0 skips it):

    - feature matching: mean over channels of ``(E f(x_real) - E f(G))^2`` on a discriminator layer. With
      ``class_wise`` and tissue maps, the expectations are taken per tissue class (real labelled patches under their
      labels, fakes under the maps they were generated from) and averaged over the classes present in both;
      otherwise over all voxels of the batch (Salimans et al., Mondal et al.);
    - adversarial: non-saturating ``-log D(G) = softplus(-log Z(G))``;
    - segmentation: ``segmentation`` (D's labelled loss) of the fakes against their maps: G must carry its map so
      that the segmenter reads it back;
    - appearance: per fake and class of its map, the squared differences of the mean and standard deviation of its
      intensities (per channel) from those of its source patch under D's tissue probabilities, for classes with at
      least ``min_voxels`` voxels in both: the fake takes the source subject's contrast (``source_stats``, the
      statistics a ``source_statistics`` generator rendered the fake with, replace the source patch's own);
    - boundary: binary cross-entropy of the generator's boundary logits against the tissue boundaries of the map;
    - reconstruction: L1 between ``G(x, y_x)`` and ``x`` when the trainer passes them.

    Returns the weighted total and each term computed.
    """

    def __init__(
        self,
        feature_matching_weight: float = 1.0,
        adversarial_weight: float = 0.1,
        boundary_weight: float = 1.0,
        reconstruction_weight: float = 0.0,
        segmentation_weight: float = 0.0,
        appearance_weight: float = 0.0,
        segmentation: nn.Module | None = None,
        class_wise: bool = True,
        num_classes: int = 4,
        min_voxels: float = 20.0,
    ):
        super().__init__()
        self.weights = {
            "feature_matching": float(feature_matching_weight),
            "adversarial": float(adversarial_weight),
            "segmentation": float(segmentation_weight),
            "appearance": float(appearance_weight),
            "boundary": float(boundary_weight),
            "reconstruction": float(reconstruction_weight),
        }
        self.segmentation = segmentation if segmentation is not None else LabelledCrossEntropy()
        self.class_wise = class_wise
        self.num_classes = num_classes
        self.min_voxels = float(min_voxels)

    def feature_matching(
        self,
        real_features: torch.Tensor,
        fake_features: torch.Tensor,
        label: torch.Tensor | None = None,
        fake_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared distance of mean features, per class when ``class_wise`` and ``label`` are given (the fakes'
        classes from ``fake_label``, default ``label``)."""
        real_features = real_features.detach()
        if self.class_wise and label is not None:
            fake_label = label if fake_label is None else fake_label
            real, real_present = class_feature_means(real_features, label, self.num_classes)
            fake, fake_present = class_feature_means(fake_features, fake_label, self.num_classes)
            return ((real - fake) ** 2).mean(dim=1)[real_present & fake_present].mean()
        dims = (0, *range(2, real_features.ndim))
        return ((real_features.float().mean(dim=dims) - fake_features.float().mean(dim=dims)) ** 2).mean()

    def appearance(self, fake, fake_label, source=None, source_probs=None, source_stats=None):
        """Class-wise intensity statistics of the fakes against their sources' (see the class docstring)."""
        fake_mean, fake_std, fake_mass = class_intensity_statistics(fake, tissue_onehot(fake_label, self.num_classes))
        if source_stats is None:
            source_stats = class_intensity_statistics(source, source_probs.detach())
        src_mean, src_std, src_mass = (t.detach() for t in source_stats)
        present = (fake_mass >= self.min_voxels) & (src_mass >= self.min_voxels)
        if not present.any():
            return fake.sum() * 0.0
        error = ((fake_mean - src_mean) ** 2 + (fake_std - src_std) ** 2).mean(dim=2)
        return error[present].mean()

    def forward(
        self,
        real_features: torch.Tensor,
        fake_features: torch.Tensor,
        fake_logits: torch.Tensor,
        label: torch.Tensor | None = None,
        fake_label: torch.Tensor | None = None,
        boundary_logits: torch.Tensor | None = None,
        reconstruction: torch.Tensor | None = None,
        reconstruction_target: torch.Tensor | None = None,
        fake: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        source_probs: torch.Tensor | None = None,
        source_stats: tuple | None = None,
    ) -> dict[str, torch.Tensor]:
        """``label``: tissue map of the real features (class-wise matching); ``fake_label``: the map the fakes were
        generated from (default ``label``); ``fake``, ``source``, ``source_probs``: the fakes, their source patches and
        D's tissue probabilities on them, or ``source_stats`` (mean, std, mass) of their sources (appearance term)."""
        fake_label = label if fake_label is None else fake_label
        terms = {"feature_matching": self.feature_matching(real_features, fake_features, label, fake_label)}
        if self.weights["adversarial"]:
            terms["adversarial"] = unlabelled_loss(fake_logits)
        if self.weights["segmentation"] and fake_label is not None:
            terms["segmentation"] = self.segmentation(fake_logits, fake_label)
        if self.weights["appearance"] and fake is not None and (
            source_stats is not None or (source is not None and source_probs is not None)
        ):
            terms["appearance"] = self.appearance(fake, fake_label, source, source_probs, source_stats)
        if self.weights["boundary"] and boundary_logits is not None and fake_label is not None:
            target = tissue_boundaries(fake_label, self.num_classes)
            terms["boundary"] = nn.functional.binary_cross_entropy_with_logits(boundary_logits.float(), target)
        if self.weights["reconstruction"] and reconstruction is not None and reconstruction_target is not None:
            terms["reconstruction"] = nn.functional.l1_loss(reconstruction.float(), reconstruction_target.float())
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms
