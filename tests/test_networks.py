"""Shape and feature tests for the segmenter (the GAN discriminator)."""

import pytest
import torch

from scripts.networks import Segmenter


@pytest.mark.parametrize("in_channels", [1, 2, 3])
@pytest.mark.parametrize("patch", [(16, 16, 16), (32, 24, 16)])
def test_segmenter_shapes(in_channels, patch):
    net = Segmenter(in_channels, 4, features=(4, 8, 16))
    logits, features = net.forward_features(torch.randn(2, in_channels, *patch))
    assert logits.shape == (2, 4, *patch)
    assert features["bottleneck"].shape == (2, 16, *(s // 4 for s in patch))
    assert features["last"].shape == (2, 4, *patch)


def test_forward_matches_forward_features():
    torch.manual_seed(0)
    net = Segmenter(2, 4, features=(4, 8)).eval()
    x = torch.randn(1, 2, 8, 8, 8)
    assert torch.allclose(net(x), net.forward_features(x)[0])


def test_rejects_single_level():
    with pytest.raises(ValueError, match="two levels"):
        Segmenter(1, 4, features=(8,))
