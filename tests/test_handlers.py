"""Handlers: loss terms for logging, the tissue-collapse warning and the atomic best checkpoint."""

import logging

import pytest
import torch
from ignite.engine import Engine

from scripts.handlers import TissueCollapseWarning, loss_terms


def test_loss_terms_keeps_losses_as_floats():
    out = {"loss": torch.tensor(1.5), "loss_d_fake": torch.tensor(0.25), "image": torch.zeros(1), "pred": None}
    assert loss_terms(out) == {"loss": 1.5, "loss_d_fake": 0.25}
    assert loss_terms([out]) == {"loss": 1.5, "loss_d_fake": 0.25}


def test_collapse_warning_when_a_tissue_falls_below_half_its_best(caplog):
    engine = Engine(lambda e, b: None)
    handler = TissueCollapseWarning(fraction=0.5)
    history = [
        {"val_dice_CSF": 0.79, "val_dice_GM": 0.68},
        {"val_dice_CSF": 0.66, "val_dice_GM": 0.74},  # a dip, not a collapse
        {"val_dice_CSF": 0.13, "val_dice_GM": 0.49},  # CSF collapsed (the MRI-GAN run in docs/README.md)
        {"val_dice_CSF": float("nan"), "val_dice_GM": 0.70},
    ]
    warnings = []
    for epoch, metrics in enumerate(history, start=1):
        engine.state.epoch, engine.state.metrics = epoch, metrics
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            handler(engine)
        warnings.append([r.getMessage() for r in caplog.records])
    assert warnings[0] == [] and warnings[1] == []
    assert len(warnings[2]) == 1 and "val_dice_CSF fell to 0.130 at epoch 3 (best 0.790 at epoch 1)" in warnings[2][0]
    assert len(warnings[3]) == 1 and "CSF" in warnings[3][0]


def test_best_checkpoint_saves_only_new_bests_and_keeps_the_old_file_on_failure(tmp_path):
    from scripts.checkpoint import BestCheckpoint, BundleWeights

    net = torch.nn.Linear(2, 1)
    path = tmp_path / "model.pt"
    handler = BestCheckpoint(BundleWeights(net), path)
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.best_metric_epoch = 1, 1
    handler(engine)
    saved = torch.load(path, weights_only=True)
    assert sorted(saved) == ["bias", "weight"] and torch.equal(saved["weight"], net.weight)
    with torch.no_grad():
        net.weight.add_(1.0)
    engine.state.epoch = 2  # not a new best: the file keeps epoch 1's weights
    handler(engine)
    assert torch.equal(torch.load(path, weights_only=True)["weight"], saved["weight"])

    class Broken:
        def state_dict(self):
            raise RuntimeError("killed while saving")

    engine.state.best_metric_epoch = 2
    with pytest.raises(RuntimeError):
        BestCheckpoint(Broken(), path)(engine)
    assert torch.equal(torch.load(path, weights_only=True)["weight"], saved["weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left
