"""Tests of the MRI-GAN and Standard-GAN generators, the GT-Layer and the tissue-boundary map."""

import pytest
import torch
import torch.nn.functional as F

from scripts.networks.generators import (
    GTLayer,
    MRIGANGenerator,
    StandardGANGenerator,
    class_intensity_statistics,
    tissue_boundaries,
    tissue_onehot,
)


def _one_hot(label: torch.Tensor, k: int = 4) -> torch.Tensor:
    return F.one_hot(label[:, 0].long(), k).permute(0, 4, 1, 2, 3).float()


def test_gt_layer_hand_computation():
    layer = GTLayer(num_features=1, code_dim=3, hidden=4, eps=1e-12)
    h = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)
    code = torch.randn(1, 3)
    # at initialisation: plain instance norm -> [-1, 1]
    torch.testing.assert_close(layer(h, code).flatten(), torch.tensor([-1.0, 1.0]))
    with torch.no_grad():
        for mlp, bias in ((layer.r_sigma, 2.0), (layer.r_mu, 0.5)):
            mlp[-1].weight.zero_()
            mlp[-1].bias.fill_(bias)
    torch.testing.assert_close(layer(h, code).flatten(), torch.tensor([-1.5, 2.5]))


def test_gt_layer_init_is_instance_norm():
    torch.manual_seed(0)
    layer = GTLayer(num_features=3, code_dim=5)
    h = torch.randn(2, 3, 4, 5, 6) * 3 + 1
    expected = F.instance_norm(h, eps=1e-5)
    torch.testing.assert_close(layer(h, torch.randn(2, 5)), expected, atol=1e-5, rtol=1e-5)


def test_tissue_boundaries_known_map():
    label = torch.ones(1, 1, 4, 4, 4, dtype=torch.long)
    label[..., 2:] = 2
    boundary = tissue_boundaries(label)
    expected = torch.zeros(1, 1, 4, 4, 4)
    expected[..., 1:3] = 1.0
    assert boundary.dtype == torch.float32
    assert torch.equal(boundary, expected)
    # one-hot input gives the same map
    assert torch.equal(tissue_boundaries(_one_hot(label)), expected)
    assert torch.equal(tissue_boundaries(torch.full((2, 1, 4, 4, 4), 3)), torch.zeros(2, 1, 4, 4, 4))


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("spatial", [(16, 16, 16), (16, 24, 32)])
def test_mrigan_generator_shapes(in_channels, spatial):
    torch.manual_seed(0)
    net = MRIGANGenerator(in_channels, num_classes=4, features=(4, 8, 8), code_dim=4, noise_dim=2, gt_hidden=8)
    mri = torch.randn(2, in_channels, *spatial)
    label = _one_hot(torch.randint(0, 4, (2, 1, *spatial)))
    fake, logits = net(mri, label)
    assert fake.shape == mri.shape
    assert logits.shape == (2, 1, *spatial)
    assert fake.abs().max() < 1.0


def test_mrigan_generator_gradient_and_label_dependence():
    torch.manual_seed(0)
    net = MRIGANGenerator(1, num_classes=4, features=(4, 8), code_dim=4, gt_hidden=8)
    mri = torch.randn(1, 1, 16, 16, 16)
    label_a = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    label_a[..., 8:] = 3
    label_b = torch.randint(0, 4, (1, 1, 16, 16, 16))
    fake_a, _ = net(mri, _one_hot(label_a))
    fake_a.sum().backward()
    grad = net.tissue_encoder[0].conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():
        fake_b, _ = net(mri, _one_hot(label_b))
    assert not torch.allclose(fake_a.detach(), fake_b, atol=1e-4)


def test_mrigan_generator_rejects_indivisible_patch():
    net = MRIGANGenerator(1, features=(4, 8, 8))
    with pytest.raises(ValueError):
        net(torch.randn(1, 1, 18, 16, 16), torch.zeros(1, 4, 18, 16, 16))


@pytest.mark.parametrize("patch", [(16, 16, 16), (32, 16, 24)])
def test_standard_gan_generator_shapes(patch):
    torch.manual_seed(0)
    net = StandardGANGenerator(2, patch_size=patch, noise_dim=10, features=(8, 4, 4))
    out = net(torch.randn(3, 10))
    assert out.shape == (3, 2, *patch)
    assert out.abs().max() < 1.0


def test_standard_gan_generator_is_monai_generator_with_relu_after_linear_and_tanh():
    """MONAI's Generator plus a ReLU on the linear layer's output: with the linear layer giving -1 everywhere, the
    transposed convs see zeros; the output is their tanh."""
    from monai.networks.nets import Generator

    net = StandardGANGenerator(2, patch_size=(16, 8, 8), noise_dim=5, features=(8, 4, 4)).eval()
    assert isinstance(net, Generator)
    with torch.no_grad():
        net.linear.weight.zero_()
        net.linear.bias.fill_(-1.0)
        expected = torch.tanh(net.conv(torch.zeros(3, 8, 2, 1, 1)))
        assert torch.allclose(net(torch.randn(3, 5)), expected)
        assert not torch.allclose(expected, torch.tanh(net.conv(-torch.ones(3, 8, 2, 1, 1))))


def test_standard_gan_generator_rejects_bad_patch():
    with pytest.raises(ValueError):
        StandardGANGenerator(1, patch_size=(20, 16, 16))


def test_source_appearance_code_reaches_the_output():
    """With source_code_dim, the source's appearance code reaches the output; without it, the generator keeps the paper's parameters (the shipped generator.pt still loads)."""
    torch.manual_seed(0)
    plain = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, noise_dim=0)
    coded = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, noise_dim=0, source_code_dim=3)
    assert plain.source_fc is None and coded.source_fc.out_features == 3
    assert set(coded.state_dict()) - set(plain.state_dict()) == {"source_fc.weight", "source_fc.bias"}
    label = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 8, 8, 8)), 4).permute(0, 4, 1, 2, 3).float()
    source = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        for layer in [coded.gt_bottleneck, *coded.gts]:  # GT-Layers start as plain instance norms: give them a say
            torch.nn.init.normal_(layer.r_mu[-1].weight)
        before = coded(source, label)[0]
        coded.source_fc.bias.add_(1.0)  # the code alone changes
        after = coded(source, label)[0]
    assert not torch.allclose(before, after)


def test_source_statistics_paint_the_map_with_the_source_tissue_means():
    """With source_statistics and no residual, the fake is the target map painted with the source's class-wise mean
    intensities (hand-computed: the source is constant per tissue, the probabilities are its one-hot tissues)."""
    torch.manual_seed(0)
    gen = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, noise_dim=2, source_statistics=True)
    src_tissue = torch.randint(0, 4, (1, 8, 8, 8))
    values = torch.tensor([[-1.0, 0.5, -0.2, 0.3], [-1.0, -0.4, 0.1, 0.6]])  # modality x tissue
    source = values[:, src_tissue[0]].unsqueeze(0)  # (1, 2, 8, 8, 8)
    probs = F.one_hot(src_tissue, 4).permute(0, 4, 1, 2, 3).float()
    mean, std, mass = class_intensity_statistics(source, probs)
    assert torch.allclose(mean[0], values.T) and torch.allclose(std, torch.zeros_like(std), atol=2e-3)
    assert torch.equal(mass[0], torch.bincount(src_tissue.flatten(), minlength=4).float())
    target = torch.randint(0, 4, (1, 8, 8, 8))
    with torch.no_grad():
        gen.final.conv.weight.zero_()
        gen.final.conv.bias.zero_()
        fake, _ = gen(source, tissue_onehot(target[:, None]), source_stats=(mean, std))
    expected = values[:, target[0]].clamp(-0.99, 0.99).unsqueeze(0)
    assert torch.allclose(fake, expected, atol=1e-5)
    with pytest.raises(ValueError, match="source_stats"):
        gen(source, tissue_onehot(target[:, None]))


def test_class_statistics_pooled_over_the_patches_of_a_volume():
    """group_size 2: two patches of one volume share the statistics of both; a tissue absent from one patch gets the
    other's (hand-computed)."""
    image = torch.tensor([0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]).view(2, 1, 4, 1, 1)  # patch 2: tissue 1 only
    weights = torch.stack([torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]), torch.tensor([[0.0] * 4, [1.0] * 4])])
    mean, std, mass = class_intensity_statistics(image, weights.view(2, 2, 4, 1, 1), group_size=2)
    assert torch.equal(mass, torch.tensor([[2.0, 6.0], [2.0, 6.0]]))
    assert torch.allclose(mean[:, :, 0], torch.tensor([[0.0, 7 / 3], [0.0, 7 / 3]]))  # (1 + 1 + 3 * 4) / 6; second moment (1 + 1 + 9 * 4) / 6
    assert torch.allclose(std[:, 1, 0], torch.full((2,), (38 / 6 - (7 / 3) ** 2) ** 0.5), atol=1e-4)
    with pytest.raises(ValueError, match="groups of 3"):
        class_intensity_statistics(image, weights.view(2, 2, 4, 1, 1), group_size=3)


def test_source_statistics_join_the_code():
    """The GT-Layers' code ends with the source's per-tissue mean and standard deviation."""
    torch.manual_seed(0)
    gen = MRIGANGenerator(1, 2, features=(4, 8), code_dim=4, noise_dim=0, source_statistics=True)
    probs = torch.zeros(1, 2, 8, 8, 8)
    probs[:, 0, :4], probs[:, 1, 4:] = 1.0, 1.0
    stats = (torch.tensor([[[-0.6], [0.5]]]), torch.tensor([[[0.2], [0.0]]]))
    seen = []
    gen.gt_bottleneck.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    gen(torch.zeros(1, 1, 8, 8, 8), probs.flip(2), source_stats=stats)
    assert seen[0].shape == (1, 4 + 2 * 2)
    assert torch.equal(seen[0][0, 4:], torch.tensor([-0.6, 0.5, 0.2, 0.0]))
