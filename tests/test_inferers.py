"""The brain sliding-window inferer clamps its window to the image instead of padding."""

import torch

from scripts.inferers import BrainSlidingWindowInferer


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return x.sum(1, keepdim=True).repeat(1, 4, 1, 1, 1)


def test_small_image_runs_in_one_unpadded_window():
    net = _Recorder()
    inferer = BrainSlidingWindowInferer(roi_size=(64, 64, 64), sw_batch_size=1, overlap=0.25, mode="gaussian")
    x = torch.randn(1, 2, 20, 30, 40)
    out = inferer(x, net)
    assert net.shapes == [(20, 30, 40)]
    assert out.shape == (1, 4, 20, 30, 40)
    torch.testing.assert_close(out, x.sum(1, keepdim=True).repeat(1, 4, 1, 1, 1))
    assert inferer.roi_size == (64, 64, 64)  # the configured window is left as it was


def test_large_image_is_tiled_with_the_configured_window():
    net = _Recorder()
    inferer = BrainSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=1, overlap=0.0)
    inferer(torch.randn(1, 1, 32, 16, 8), net)
    assert net.shapes == [(16, 16, 8), (16, 16, 8)]
