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


def test_image_within_the_voxel_budget_runs_in_one_window():
    """``one_window_voxels``: an image of at most that many voxels is one window of its own size; a larger one is
    tiled with ``roi_size`` as before."""
    inferer = BrainSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=1, overlap=0.0, one_window_voxels=32 * 16 * 8)
    net = _Recorder()
    x = torch.randn(1, 1, 32, 16, 8)
    torch.testing.assert_close(inferer(x, net), x.repeat(1, 4, 1, 1, 1))
    assert net.shapes == [(32, 16, 8)]
    net = _Recorder()
    inferer(torch.randn(1, 1, 32, 16, 9), net)  # one voxel row over the budget
    assert net.shapes == [(16, 16, 9), (16, 16, 9)]


def test_cached_weight_map_with_a_clamped_window():
    """The cached Gaussian map of the full window is not reused for a clamped one (it crashed before)."""
    inferer = BrainSlidingWindowInferer(roi_size=(24, 24, 24), overlap=0.25, mode="gaussian", cache_roi_weight_map=True)
    x = torch.randn(1, 2, 20, 30, 40)
    out = inferer(x, _Recorder())
    torch.testing.assert_close(out, x.sum(1, keepdim=True).repeat(1, 4, 1, 1, 1))
    assert inferer.roi_weight_map.shape[-3:] == (24, 24, 24)  # the configured window's map is kept


def test_batch_norm_folded_in_evaluation_only():
    """Folding batch norm into the convolutions keeps the evaluation-mode output, and only applies there."""
    from scripts.inferers import fold_batch_norm
    from scripts.networks import Segmenter

    torch.manual_seed(0)
    net = Segmenter(2, 4, features=(4, 8))
    net.train()
    for _ in range(3):  # running statistics away from their initial 0/1
        net(torch.randn(2, 2, 16, 16, 16) * 3 + 1)
    net.eval()
    folded = fold_batch_norm(net)
    norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) < len([m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)])
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)
        inferer = BrainSlidingWindowInferer(roi_size=(16, 16, 16))
        torch.testing.assert_close(inferer(x, net), net(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # the network itself is unchanged
    net.train()
    recorder = []
    inferer(x, lambda t: recorder.append(t) or torch.zeros(1, 4, 16, 16, 16))  # not a module: used as it is
    assert len(recorder) == 1
