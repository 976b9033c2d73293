"""Handlers: loss terms for logging, the tissue-collapse warning and the atomic best checkpoint."""

import contextlib
import io
import logging

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from scripts.handlers import TissueCollapseWarning, loss_terms


def test_loss_terms_keeps_losses_as_floats():
    out = {"loss": torch.tensor(1.5), "loss_d_fake": torch.tensor(0.25), "image": torch.zeros(1), "pred": None}
    assert loss_terms(out) == {"loss": 1.5, "loss_d_fake": 0.25}
    assert loss_terms([out]) == {"loss": 1.5, "loss_d_fake": 0.25}



class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _progress_run(stream):
    """3 epochs of 4 iterations whose losses are the iteration (loss) and twice it (loss_g_total), with a
    LossProgressBar on ``stream`` (which stands for stderr, the bar's default, with stdout redirected too)."""
    from scripts.handlers import LossProgressBar

    def step(engine, batch):
        return {"loss": torch.tensor(float(engine.state.iteration)), "loss_g_total": 2.0 * engine.state.iteration}

    engine = Engine(step)
    with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):
        LossProgressBar().attach(engine)
        engine.run([0] * 4, max_epochs=3)
    return stream.getvalue()


def test_progress_is_one_line_per_epoch_where_the_output_is_no_terminal(caplog):
    """In a log file or CI no bar fragments: one logged line per epoch, with the epoch means of the losses."""
    with caplog.at_level(logging.INFO, logger="scripts.handlers"):
        written = _progress_run(io.StringIO())
    assert "\r" not in written and "it/s" not in written and "Epoch [" not in written  # no bar fragments
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.handlers"]
    assert [line.rsplit(",", 1)[0] for line in lines] == [
        "Epoch 1/3, iteration 4/12: loss 2.5000, loss_g 5.0000 (epoch means)",
        "Epoch 2/3, iteration 8/12: loss 6.5000, loss_g 13.0000 (epoch means)",
        "Epoch 3/3, iteration 12/12: loss 10.5000, loss_g 21.0000 (epoch means)",
    ]
    assert all(line.endswith(" s") for line in lines)


def test_progress_bar_in_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="scripts.handlers"):
        written = _progress_run(_Terminal())
    assert "loss=12" in written and "loss_g=24" in written  # the bar, with the last iteration's losses
    assert not [r for r in caplog.records if r.name == "scripts.handlers"]


def test_collapse_warning_when_a_tissue_falls_below_half_its_best(caplog):
    engine = Engine(lambda e, b: None)
    handler = TissueCollapseWarning(fraction=0.5)
    history = [
        {"val_dice_CSF": 0.79, "val_dice_GM": 0.68},
        {"val_dice_CSF": 0.66, "val_dice_GM": 0.74},  # a dip, not a collapse
        {"val_dice_CSF": 0.13, "val_dice_GM": 0.49},  # CSF collapsed (the MRI-GAN run in docs/gan_training.md)
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


def _iteration_output(label_values, predicted_values, fake_loss=None):
    """A trainer output with a 1-D "volume": labels and the argmax D predicts (as one-hot logits)."""
    label = torch.tensor(label_values).view(1, 1, -1, 1, 1)
    pred = torch.nn.functional.one_hot(torch.tensor(predicted_values), 4).T.float().view(1, 4, -1, 1, 1)
    out = {"label": label, "pred": pred}
    if fake_loss is not None:
        out["loss_d_fake"] = torch.tensor(fake_loss)
    return out


def _run_health(handler, outputs, caplog, engine=None, start=1):
    engine = engine or Engine(lambda e, b: None)
    messages = []
    for iteration, out in enumerate(outputs, start=start):
        engine.state.iteration, engine.state.output = iteration, out
        caplog.clear()
        with caplog.at_level(logging.INFO):
            handler(engine)
        messages.append([r.getMessage() for r in caplog.records if r.name == "scripts.handlers"])
    return engine, messages


def test_discriminator_health_reports_a_tissue_given_up_and_its_recovery(caplog):
    from scripts.handlers import DiscriminatorHealth

    # 9 valid voxels (255 is ignored), 1 of them CSF: CSF's true share is 1/9 = 11.1%
    label = [0, 0, 0, 0, 0, 1, 2, 2, 3, 255]
    no_csf = [0, 0, 0, 0, 0, 0, 2, 2, 3, 1]  # CSF predicted only on the ignored voxel: 0.0%
    half = [0, 0, 0, 0, 0, 1, 2, 2, 3, 1]
    handler = DiscriminatorHealth(window=2, ratio=0.25)
    engine, messages = _run_health(handler, [_iteration_output(label, p) for p in (no_csf, no_csf, half, half)], caplog)
    assert messages[0] == []  # the window is not full yet
    assert messages[1] == [
        "discriminator collapse at iteration 2: it predicts CSF on 0.0% of the labelled voxels, 11.1% are CSF "
        "(last 2 iterations); see 'Getting the GAN to train' in docs/gan_training.md"
    ]
    # window (no_csf, half): predicted 1/18 = 5.6% >= 0.25 * 11.1% = 2.8%: recovered
    assert messages[2] == ["CSF recovered at iteration 3: predicted on 5.6%"]
    assert messages[3] == [] and engine.state.gan_health == {"collapsed": [], "fakes_rejected": False}


def test_discriminator_health_reports_fakes_all_rejected(caplog):
    from scripts.handlers import DiscriminatorHealth

    label = [0, 1, 2, 3]
    losses = [0.5, 0.004, 0.004, 0.004, 0.5]  # window means: 0.252, 0.004, 0.004, 0.252
    handler = DiscriminatorHealth(window=2, fake_floor=0.01)
    engine, messages = _run_health(handler, [_iteration_output(label, label, f) for f in losses[:4]], caplog)
    assert messages[:2] == [[], []]
    assert messages[2] == [
        "the discriminator rejects every fake at iteration 3 (mean fake loss 0.0040 over 2 iterations): "
        "the generator learns little; lower gan#fake_weight"
    ]
    assert messages[3] == [] and engine.state.gan_health["fakes_rejected"]
    _, messages = _run_health(handler, [_iteration_output(label, label, losses[4])], caplog, engine, start=5)
    assert messages == [["fakes fool the discriminator again at iteration 5"]]
    assert not engine.state.gan_health["fakes_rejected"]


def test_checkpoints_never_save_non_finite_weights(tmp_path, caplog):
    from scripts.checkpoint import BestCheckpoint, BundleWeights, LastCheckpoint, nonfinite_tensors

    assert nonfinite_tensors({"a": torch.ones(2), "opt": {"state": {0: {"m": torch.tensor([1.0, float("inf")])}}}}) == [
        "opt.state.0.m"
    ]
    net = torch.nn.Linear(2, 1)
    best, last = tmp_path / "model.pt", tmp_path / "last.pt"
    engine = Engine(lambda e, b: None)
    engine.state.epoch = engine.state.best_metric_epoch = 1
    BestCheckpoint(BundleWeights(net), best)(engine)
    LastCheckpoint({"network": net}, last)(engine)
    good = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.bias.fill_(float("nan"))
    engine.state.epoch = engine.state.best_metric_epoch = 2
    with caplog.at_level(logging.ERROR):
        BestCheckpoint(BundleWeights(net), best)(engine)
        LastCheckpoint({"network": net}, last)(engine)
    assert torch.equal(torch.load(best, weights_only=True)["bias"], good["bias"])
    assert torch.equal(torch.load(last, weights_only=False)["network"]["bias"], good["bias"])
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2 and "non-finite values in bias" in errors[0]
    assert "non-finite values in network.bias" in errors[1]


@pytest.mark.parametrize("epochs, validated", [(5, [2, 4, 5]), (4, [2, 4])])
def test_final_validation_after_the_last_epoch(epochs, validated):
    from scripts.handlers import FinalValidation

    from monai.engines import Evaluator

    validator = Evaluator(device="cpu", val_data_loader=[0])
    validator.run = lambda epoch: seen.append(epoch)
    seen = []
    trainer = Engine(lambda e, b: None)
    FinalValidation(validator=validator, interval=2).attach(trainer)
    trainer.run([0], max_epochs=epochs)
    assert seen == validated


@pytest.mark.parametrize("epochs, validated", [(6, [4, 6]), (2, [2])])
def test_final_validation_waits_for_the_gan_terms(epochs, validated):
    """No validation (hence no best checkpoint) until the warm-up's last iteration has passed, but always a final one."""
    from scripts.handlers import FinalValidation

    from monai.engines import Evaluator

    validator = Evaluator(device="cpu", val_data_loader=[0])
    validator.run = lambda epoch: seen.append(epoch)
    seen = []
    trainer = Engine(lambda e, b: None)
    FinalValidation(validator=validator, interval=2, start_iteration=2).attach(trainer)
    trainer.run([0], max_epochs=epochs)  # one iteration per epoch
    assert seen == validated


class _Scripted(Metric):
    """A validation metric whose value is the next of ``values`` at every validation."""

    def __init__(self, values):
        self.values = iter(values)
        super().__init__()

    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return next(self.values)


def _validated_training(tmp_path, dice):
    """A trainer (2 iterations per epoch, each adding 1 to the network's bias) validated after every epoch by a MONAI
    evaluator whose mean Dice is the next of ``dice`` (tissues: +0.01, +0.02, +0.03); best weights to model.pt."""
    from scripts.checkpoint import BestCheckpoint, BundleWeights
    from scripts.handlers import BestValidation

    from monai.engines import Evaluator
    from monai.handlers import ValidationHandler

    net = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(net.bias)
    tissues = [{f"val_dice_{t}": d + k / 100 for k, t in enumerate(("CSF", "GM", "WM"), start=1)} for d in dice]
    validator = Evaluator(
        device="cpu", val_data_loader=[0], iteration_update=lambda e, b: None,
        key_val_metric={"val_mean_dice": _Scripted(dice)}, additional_metrics={"val_dice": _Scripted(tissues)},
        val_handlers=[BestCheckpoint(BundleWeights(net), tmp_path / "model.pt")],
    )  # fmt: skip
    trainer = Engine(lambda e, b: net.bias.data.add_(1.0))
    ValidationHandler(validator=validator, interval=1, epoch_level=True).attach(trainer)
    best = BestValidation(validator)
    best.attach(trainer)
    return trainer, best


def test_the_run_reports_the_best_model_not_the_last_validation(tmp_path, capsys):
    from scripts.handlers import print_validation_dice

    trainer, best = _validated_training(tmp_path, [0.7, 0.8, 0.6])
    trainer.run([0, 0], max_epochs=3)
    assert (best.epoch, best.iteration) == (2, 4) and float(torch.load(tmp_path / "model.pt")["bias"]) == 4
    assert print_validation_dice(best) == pytest.approx({"CSF": 0.81, "GM": 0.82, "WM": 0.83})
    assert capsys.readouterr().out.splitlines() == [
        "Validation Dice per tissue (best model, epoch 2, iteration 4): CSF 0.8100, GM 0.8200, WM 0.8300",
        "Mean Dice 0.8000 (last validation, epoch 3: 0.6000)",
    ]


def test_a_resumed_run_replaces_the_best_model_only_with_a_better_one(tmp_path):
    """--resume: the best validation so far, kept in last.pt, is the bar the restarted evaluator's model must pass."""
    from scripts.checkpoint import LastCheckpoint, resume

    trainer, best = _validated_training(tmp_path, [0.7, 0.8])
    LastCheckpoint({"best_validation": best}, tmp_path / "last.pt").attach(trainer)
    trainer.run([0, 0], max_epochs=2)
    for dice, saved_at in ((0.75, 4), (0.9, 2)):  # worse than epoch 2's 0.8: kept; better: epoch 3's weights
        trainer, best = _validated_training(tmp_path, [dice])
        trainer.state.max_epochs = 3
        resume(trainer, {"best_validation": best}, tmp_path / "last.pt")
        trainer.run([0, 0])
        assert float(torch.load(tmp_path / "model.pt")["bias"]) == saved_at  # bias: iterations trained in this run
    assert (best.epoch, best.iteration, best.metrics["val_dice_WM"]) == (3, 6, pytest.approx(0.93))
