"""The mean-teacher baseline (scripts.engines.mean_teacher): one step on tiny tensors, the EMA teacher, the ramp-up, and an
end-to-end run of configs/mean_teacher.yaml on tiny phantom data."""

import math
import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scripts.checkpoint import LastCheckpoint, resume
from scripts.engines.mean_teacher import MeanTeacherTrainer
from scripts.losses import DiscriminatorLoss
from scripts.networks import Segmenter

PATCH = (8, 8, 8)
WEIGHT = "consistency_weight"


def _batches(n, with_label=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        item = {"image": torch.rand(2, 2, *PATCH, generator=g) * 2 - 1}
        if with_label:
            item["label"] = torch.randint(0, 4, (2, 1, *PATCH), generator=g)
        out.append(item)
    return out


def _trainer(num_batches=1, config_teacher=False, max_epochs=1, **kwargs):
    torch.manual_seed(0)
    net = Segmenter(2, 4, features=(4, 8))
    if config_teacher:  # as configs/mean_teacher.yaml builds it
        kwargs["teacher"] = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    trainer = MeanTeacherTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_batches(num_batches),
        unlabeled_data_loader=_batches(1, with_label=False, seed=1),
        network=net,
        d_optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        d_loss_function=DiscriminatorLoss(),
        **kwargs,
    )
    return trainer, net


def test_one_iteration_updates_student_then_teacher_as_an_ema():
    decay = 0.9
    trainer, net = _trainer(ema_decay=decay, consistency_weight=0.5, rampup_iterations=0)
    teacher = trainer.teacher.module
    assert teacher is not net and all(torch.equal(a, b) for a, b in zip(teacher.parameters(), net.parameters()))
    student0 = [p.detach().clone() for p in net.parameters()]
    teacher0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(student0, net.parameters()))
    student = net.state_dict()
    # teacher = decay * old teacher + (1 - decay) * new student, for weights and batch-norm statistics alike
    for name in ("head.conv.weight", "stem.conv_0.adn.N.running_mean"):
        assert name in student, sorted(student)
        expected = decay * teacher0[name] + (1 - decay) * student[name]
        torch.testing.assert_close(teacher.state_dict()[name], expected)
        assert not torch.equal(teacher.state_dict()[name], student[name])
    assert not any(p.requires_grad for p in trainer.teacher.parameters())

    out = trainer.state.output[0]
    assert {k for k in out if k.startswith("loss_")} == {"loss_d_labelled", "loss_d_consistency", "loss_d_total"}
    assert out["consistency_weight"] == 0.5 and float(out["loss_d_consistency"]) > 0
    expected_total = float(out["loss_d_labelled"]) + 0.5 * float(out["loss_d_consistency"])
    assert math.isclose(float(out["loss_d_total"]), expected_total, rel_tol=1e-5)
    assert math.isclose(float(out["loss"]), float(out["loss_d_total"]))
    assert out["pred"].shape == (2, 4, *PATCH) and not out["pred"].requires_grad


def test_consistency_weight_ramps_up_as_exp_minus_5_phase_squared():
    trainer, _ = _trainer(num_batches=2, consistency_weight=0.1, rampup_iterations=200)
    assert math.isclose(trainer.consistency_weight_at(0), 0.1 * math.exp(-5))  # 0.000673795
    assert math.isclose(trainer.consistency_weight_at(100), 0.1 * math.exp(-1.25))  # 0.0286505
    assert math.isclose(trainer.consistency_weight_at(200), 0.1)
    assert math.isclose(trainer.consistency_weight_at(1000), 0.1)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output[0][WEIGHT]))
    trainer.run()
    assert seen == [pytest.approx(0.1 * math.exp(-5)), pytest.approx(0.1 * math.exp(-5 * (199 / 200) ** 2))]


def test_a_config_built_teacher_is_saved_and_resumed(tmp_path):
    """configs/mean_teacher.yaml builds the teacher and lists it in checkpoint#objects: --resume restores the EMA."""
    def build(max_epochs=1):
        trainer, net = _trainer(config_teacher=True, max_epochs=max_epochs)
        return trainer, {"network": net, "optimizer": trainer.d_optimizer, "teacher": trainer.teacher}

    trainer, objects = build()
    assert trainer.teacher.module is not trainer.network and int(trainer.teacher.n_averaged) == 1
    LastCheckpoint(objects, tmp_path / "last.pt").attach(trainer)
    trainer.run()
    saved = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    Segmenter(2, 4, features=(4, 8)).load_state_dict(saved["teacher"])  # the averaged segmenter itself
    fresh, fresh_objects = build(max_epochs=2)  # trains on (a finished run is not resumed)
    resume(fresh, fresh_objects, tmp_path / "last.pt")
    for name, value in trainer.teacher.module.state_dict().items():
        assert torch.equal(fresh.teacher.module.state_dict()[name], value), name
    assert not torch.equal(fresh.teacher.module.head.conv.weight, fresh.network.head.conv.weight)
    with pytest.raises(TypeError, match="AveragedModel"):
        _trainer(teacher=Segmenter(2, 4, features=(4, 8)))


def test_generator_arguments_and_missing_unlabelled_data_are_rejected():
    net = Segmenter(2, 4, features=(4, 8))
    common = dict(device="cpu", max_epochs=1, train_data_loader=_batches(1), network=net,
                  d_optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                  d_loss_function=DiscriminatorLoss())  # fmt: skip
    with pytest.raises(ValueError, match="unlabelled"):
        MeanTeacherTrainer(**common)
    with pytest.raises(ValueError, match="no generator"):
        MeanTeacherTrainer(**common, unlabeled_data_loader=_batches(1, False), generator=torch.nn.Identity())


TINY = [
    "--dataset_format", "phantom",
    "--data#phantom#shape", "[48,56,64]", "--data#phantom#num_labeled", "3", "--data#phantom#num_unlabeled", "1",
    "--num_labeled", "1", "--num_val", "1", "--num_test", "-1", "--patch_size", "[16,16,16]",
    "--patches#samples_per_volume", "2", "--runtime#num_workers", "0",
]  # fmt: skip


@pytest.mark.slow
def test_mean_teacher_trains_from_the_command_line(bundle_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
         "['configs/train.yaml','configs/mean_teacher.yaml']", "--schedule#epochs", "1", "--schedule#epoch_length", "2",
         "--schedule#val_interval", "1", "--consistency_rampup", "1", *TINY, "--dataset_dir", str(tmp_path / "phantom"),
         "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models")],
        cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Validation Dice per tissue" in out
    Segmenter(2, 4).load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert not (tmp_path / "models" / "generator.pt").exists()
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 2 and "generator" not in last
    Segmenter(2, 4).load_state_dict(last["teacher"])  # the EMA teacher is saved for --resume
    assert not torch.equal(last["teacher"]["head.conv.weight"], last["network"]["head.conv.weight"])
    values = {}
    for f in (tmp_path / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    assert {"loss_d_labelled", "loss_d_consistency", "loss_d_total"} <= set(values)
    assert not any(tag.startswith(("loss_d_unlabelled", "loss_d_fake", "loss_g_")) for tag in values)
    assert len(values["loss_d_consistency"]) == 2 and all(v > 0 for v in values["loss_d_consistency"])
