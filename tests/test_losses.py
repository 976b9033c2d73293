"""Loss values checked against hand computations."""

import math

import pytest
import torch

from scripts.data.datasets import IGNORE_LABEL
from scripts.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    LabelledCrossEntropy,
    LabelledSegmentationLoss,
    class_feature_means,
    fake_loss,
    unlabelled_loss,
)


def test_all_zero_logits_give_log_k():
    loss = LabelledCrossEntropy()(torch.zeros(1, 4, 2, 1, 1), torch.tensor([0, 3]).view(1, 1, 2, 1, 1))
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6)


def test_two_voxels_one_ignored():
    logits = torch.zeros(1, 4, 2, 1, 1)
    logits[0, 1, 0] = math.log(3.0)  # voxel 0: p(CSF) = 3 / 6
    label = torch.tensor([1, IGNORE_LABEL]).view(1, 1, 2, 1, 1)
    loss = LabelledCrossEntropy()(logits, label)
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-6)


def test_class_weights_weighted_mean():
    # voxel 0 label 0 (weight 1), voxel 1 label 2 (weight 3); both have loss log 4 -> weighted mean log 4,
    # so change voxel 1 to loss log 2 and check (1*log4 + 3*log2) / 4.
    logits = torch.zeros(1, 4, 2, 1, 1)
    logits[0, 2, 1] = math.log(3.0)
    label = torch.tensor([0, 2]).view(1, 1, 2, 1, 1)
    loss = LabelledCrossEntropy(class_weights=[1.0, 1.0, 3.0, 1.0])(logits, label)
    assert math.isclose(loss.item(), (math.log(4) + 3 * math.log(2)) / 4, rel_tol=1e-6)


def test_dice_term_hand_computed_and_ignores_voxels():
    # Uniform softmax (0.25 per class) on 2 voxels: voxel 0 is CSF, voxel 1 is ignored.
    # Soft Dice over CSF/GM/WM on voxel 0 only: CSF 2*0.25/(0.25+1) = 0.4, GM and WM ~0 -> loss (0.6+1+1)/3.
    logits = torch.zeros(1, 4, 2, 1, 1)
    label = torch.tensor([1, IGNORE_LABEL]).view(1, 1, 2, 1, 1)
    loss = LabelledSegmentationLoss(dice_weight=1.0)(logits, label)
    assert math.isclose(loss.item(), math.log(4) + (0.6 + 1 + 1) / 3, rel_tol=1e-4)
    assert math.isclose(LabelledSegmentationLoss(dice_weight=0.0)(logits, label).item(), math.log(4), rel_tol=1e-6)


def test_gan_terms_on_all_zero_logits():
    # K = 4 zero logits: Z = 4, so D = 4/5; unlabelled -log(4/5) = log 1.25, fake -log(1/5) = log 5.
    logits = torch.zeros(2, 4, 2, 1, 1)
    assert math.isclose(unlabelled_loss(logits).item(), math.log(1.25), rel_tol=1e-6)
    assert math.isclose(fake_loss(logits).item(), math.log(5.0), rel_tol=1e-6)


def test_gan_terms_stay_finite_for_extreme_logits():
    logits = torch.tensor([[-1000.0, -1000.0], [1000.0, 1000.0]]).view(2, 2, 1, 1, 1)
    # voxel 0: Z ~ 0 -> unlabelled ~ 1000 - log 2, fake ~ 0; voxel 1: Z huge -> unlabelled ~ 0, fake ~ 1000 + log 2
    unl, fake = unlabelled_loss(logits), fake_loss(logits)
    assert torch.isfinite(unl) and torch.isfinite(fake)
    assert math.isclose(unl.item(), (1000 - math.log(2)) / 2, rel_tol=1e-6)
    assert math.isclose(fake.item(), (1000 + math.log(2)) / 2, rel_tol=1e-6)


def test_discriminator_loss_weights_paper_defaults():
    zeros = torch.zeros(1, 4, 2, 1, 1)
    label = torch.tensor([0, 3]).view(1, 1, 2, 1, 1)
    terms = DiscriminatorLoss()(zeros, label, zeros, zeros)
    assert math.isclose(terms["labelled"].item(), math.log(4), rel_tol=1e-6)
    expected = 1.0 * math.log(4) + 1.0 * math.log(1.25) + 2.0 * math.log(5)
    assert math.isclose(terms["total"].item(), expected, rel_tol=1e-6)
    mondal = DiscriminatorLoss(unlabelled_weight=0.5, fake_weight=0.5)(zeros, label, zeros, zeros)["total"]
    assert math.isclose(mondal.item(), math.log(4) + 0.5 * math.log(1.25) + 0.5 * math.log(5), rel_tol=1e-6)


def test_discriminator_loss_leaves_out_missing_terms():
    zeros = torch.zeros(1, 4, 2, 1, 1)
    label = torch.tensor([0, 3]).view(1, 1, 2, 1, 1)
    terms = DiscriminatorLoss()(zeros, label)
    assert set(terms) == {"labelled", "total"}
    assert math.isclose(terms["total"].item(), math.log(4), rel_tol=1e-6)


def test_class_feature_means_by_hand():
    # one channel over 4 voxels: labels 0, 1, 1, 255 with features 2, 4, 6, 100 -> class 0 mean 2, class 1 mean 5;
    # the ignored voxel (255) counts for no class and classes 2, 3 are absent.
    features = torch.tensor([2.0, 4.0, 6.0, 100.0]).view(1, 1, 4, 1, 1)
    label = torch.tensor([0, 1, 1, IGNORE_LABEL]).view(1, 1, 4, 1, 1)
    means, present = class_feature_means(features, label, num_classes=4)
    assert present.tolist() == [True, True, False, False]
    assert means[:2, 0].tolist() == [2.0, 5.0]


def test_class_feature_means_pools_labels_to_feature_resolution():
    # a 2-voxel feature map over a 4-voxel label: the first feature voxel is half class 1, half class 2
    features = torch.tensor([3.0, 7.0]).view(1, 1, 2, 1, 1)
    label = torch.tensor([1, 2, 2, 2]).view(1, 1, 4, 1, 1)
    means, present = class_feature_means(features, label, num_classes=4)
    assert present.tolist() == [False, True, True, False]
    assert math.isclose(means[1, 0].item(), 3.0)
    assert math.isclose(means[2, 0].item(), (0.5 * 3 + 1.0 * 7) / 1.5, rel_tol=1e-6)


def test_generator_feature_matching_class_wise_and_global():
    label = torch.tensor([1, 1, 2, 2]).view(1, 1, 4, 1, 1)
    real = torch.tensor([[1.0, 3.0, 5.0, 5.0], [0.0, 0.0, 2.0, 2.0]]).view(1, 2, 4, 1, 1)
    fake = torch.tensor([[3.0, 3.0, 5.0, 5.0], [0.0, 2.0, 2.0, 2.0]]).view(1, 2, 4, 1, 1)
    # class 1: real means (2, 0), fake (3, 1) -> mean sq diff 1; class 2: equal -> 0; average over classes 0.5
    terms = GeneratorLoss(adversarial_weight=0, boundary_weight=0)(real, fake, torch.zeros(1, 4, 4, 1, 1), label)
    assert math.isclose(terms["feature_matching"].item(), 0.5, rel_tol=1e-6)
    assert set(terms) == {"feature_matching", "total"}
    # global: real means (3.5, 1), fake (4, 1.5) -> (0.25 + 0.25) / 2
    global_fm = GeneratorLoss(class_wise=False).feature_matching(real, fake)
    assert math.isclose(global_fm.item(), 0.25, rel_tol=1e-6)


def test_generator_loss_terms_by_hand():
    # all-zero fake logits: adversarial -log D(G) = -log(4/5); zero boundary logits: BCE log 2 for any target;
    # reconstruction |0.5 - 0| = 0.5. Total = 1*0 + 0.1*log1.25 + 1*log2 + 2*0.5.
    label = torch.tensor([0, 1, 1, 3]).view(1, 1, 4, 1, 1)
    feats = torch.ones(1, 3, 4, 1, 1)
    loss = GeneratorLoss(reconstruction_weight=2.0)
    terms = loss(
        feats, feats, torch.zeros(1, 4, 4, 1, 1), label, boundary_logits=torch.zeros(1, 1, 4, 1, 1),
        reconstruction=torch.full((1, 2, 4, 1, 1), 0.5), reconstruction_target=torch.zeros(1, 2, 4, 1, 1),
    )  # fmt: skip
    assert math.isclose(terms["adversarial"].item(), math.log(1.25), rel_tol=1e-6)
    assert math.isclose(terms["boundary"].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(terms["reconstruction"].item(), 0.5, rel_tol=1e-6)
    expected = 0.1 * math.log(1.25) + math.log(2) + 2 * 0.5
    assert math.isclose(terms["total"].item(), expected, rel_tol=1e-6)


def test_generator_feature_matching_gradient_reaches_fakes_only():
    label = torch.tensor([0, 1]).view(1, 1, 2, 1, 1)
    real = torch.randn(1, 2, 2, 1, 1, requires_grad=True)
    fake = torch.randn(1, 2, 2, 1, 1, requires_grad=True)
    GeneratorLoss()(real, fake, torch.zeros(1, 4, 2, 1, 1), label)["total"].backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


def test_discriminator_synthetic_term_and_ramp_by_hand():
    """Synthetic term: the labelled loss on generated logits against their maps; the ramp scales every GAN term."""
    label = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    zeros = torch.zeros(1, 4, 4, 1, 1)
    loss = DiscriminatorLoss(unlabelled_weight=1.0, fake_weight=2.0, synthetic_weight=3.0)
    terms = loss(zeros, label, zeros, zeros, synthetic_logits=zeros, synthetic_label=label, scale=0.5)
    # uniform logits: CE log 4; unlabelled softplus(-log 4) = log(1.25); fake softplus(log 4) = log 5
    assert math.isclose(terms["synthetic"].item(), math.log(4), rel_tol=1e-6)
    expected = math.log(4) + 0.5 * (math.log(1.25) + 2 * math.log(5) + 3 * math.log(4))
    assert math.isclose(terms["total"].item(), expected, rel_tol=1e-6)
    assert set(DiscriminatorLoss(fake_weight=0)(zeros, label, None, zeros, zeros, label)) == {"labelled", "total"}


def test_class_intensity_statistics_by_hand():
    from scripts.losses import class_intensity_statistics

    image = torch.tensor([1.0, 3.0, 10.0, 10.0]).view(1, 1, 4, 1, 1)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(1, 2, 4, 1, 1)
    mean, std, mass = class_intensity_statistics(image, weights)
    assert mean.flatten().tolist() == [2.0, 10.0] and mass.flatten().tolist() == [2.0, 2.0]
    assert torch.allclose(std.flatten(), torch.tensor([1.0, 0.0]), atol=1e-3)


def test_generator_appearance_and_segmentation_terms_by_hand():
    """The fake's class-1 voxels have mean 0, std 0; its source's class-1 voxels (by D's probabilities) mean 2, std 1:
    appearance (2^2 + 1^2) = 5. Uniform fake logits: segmentation CE log 4."""
    fake_label = torch.tensor([1, 1, 1, 1]).view(1, 1, 4, 1, 1)
    fake = torch.zeros(1, 1, 4, 1, 1, requires_grad=True)
    source = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(1, 1, 4, 1, 1)
    probs = torch.zeros(1, 4, 4, 1, 1)
    probs[:, 1] = 1.0
    loss = GeneratorLoss(feature_matching_weight=0, adversarial_weight=0, boundary_weight=0, appearance_weight=2.0,
                         segmentation_weight=1.0, min_voxels=1)  # fmt: skip
    feats = torch.ones(1, 3, 4, 1, 1)
    terms = loss(feats, feats, torch.zeros(1, 4, 4, 1, 1), fake_label, fake=fake, source=source, source_probs=probs)
    assert math.isclose(terms["appearance"].item(), 5.0, rel_tol=1e-3)
    assert math.isclose(terms["segmentation"].item(), math.log(4), rel_tol=1e-6)
    assert math.isclose(terms["total"].item(), 2 * 5.0 + math.log(4), rel_tol=1e-3)
    terms["total"].backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    # classes too small in the source are left out
    assert loss.appearance(fake, fake_label, source, probs * 0.1).item() == 0.0


def test_appearance_against_given_source_statistics():
    """Given ``source_stats`` (mean, std, mass), the appearance term compares the fakes' class-wise statistics with
    them (hand-computed): tissue 1 of the fake is 0.5 everywhere, the target mean 0.2, std 0.0 -> (0.3^2 + 0) / 1."""
    loss = GeneratorLoss(appearance_weight=1.0, min_voxels=1)
    label = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label[..., 2:] = 1
    fake = torch.where(label == 1, 0.5, -1.0).float()
    mean = torch.tensor([[[-1.0], [0.2], [0.0], [0.0]]])
    std = torch.full((1, 4, 1), 1e-3)
    mass = torch.tensor([[32.0, 32.0, 0.0, 0.0]])  # tissues 2 and 3 absent from the source: not compared
    value = loss.appearance(fake, label, source_stats=(mean, std, mass))
    assert value.item() == pytest.approx((0.0 + 0.3**2) / 2, abs=1e-5)
