"""A training run killed with SIGKILL in the middle of an epoch resumes from its last checkpoint with --resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_training import TINY, _bundle

pytestmark = pytest.mark.slow

EPOCH_LENGTH, EPOCHS, INTERVAL = 4, 3, 3  # last.pt is written at iterations 3, 4, 6, 8, 9, 12


def _recorded_iteration(path):
    """The iteration in last.pt, or None while there is none (the file only ever appears complete: atomic rename)."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["trainer"]["iteration"]


def test_sigkill_mid_epoch_then_resume(bundle_root, tmp_path):
    args = [
        "--config_file", "configs/train.yaml", "--schedule#epochs", str(EPOCHS),
        "--schedule#epoch_length", str(EPOCH_LENGTH),
        "--checkpoint#interval", str(INTERVAL), "--schedule#val_interval", "2", "--gan#warmup_iterations", "2", *TINY,
        "--dataset_dir", str(tmp_path / "phantom"), "--output_dir", str(tmp_path / "runs"),
        "--ckpt_dir", str(tmp_path / "models"),
    ]  # fmt: skip
    last = tmp_path / "models" / "last.pt"
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", "run", "training", *args],
        cwd=bundle_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while True:  # look at last.pt with the run stopped, so that no later save lands before the kill
            assert proc.poll() is None, "training ended before a mid-epoch checkpoint"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            proc.send_signal(signal.SIGSTOP)
            if (_recorded_iteration(last) or 0) % EPOCH_LENGTH != 0:  # a mid-epoch checkpoint (3 or 6)
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _recorded_iteration(last)  # complete, never a broken file (atomic rename)
    assert killed_at % EPOCH_LENGTH != 0 and killed_at < EPOCHS * EPOCH_LENGTH
    epoch = killed_at // EPOCH_LENGTH

    out = _bundle(bundle_root, "training", *args, "--resume", "true")
    assert f"resuming from iteration {killed_at}, epoch {epoch}" in out
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["trainer"]["iteration"] == EPOCHS * EPOCH_LENGTH and final["trainer"]["max_epochs"] == EPOCHS
    assert float(final["optimizer"]["state"][0]["step"]) == EPOCHS * EPOCH_LENGTH  # no step lost or repeated
    assert (tmp_path / "models" / "model.pt").exists()
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_resume_keeps_the_best_model_and_reports_it(bundle_root, tmp_path):
    """last.pt holds the best validation (and the gradient scalers): a resumed run that validates worse keeps
    model.pt, and ends by reporting the best model's Dice, epoch and iteration, from before the resume."""
    models = tmp_path / "models"
    args = [
        "--config_file", "configs/train.yaml", "--schedule#epoch_length", "1", "--schedule#val_interval", "1",
        "--gan#warmup_iterations", "0", *TINY, "--dataset_dir", str(tmp_path / "phantom"),
        "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(models),
    ]  # fmt: skip
    _bundle(bundle_root, "training", *args, "--schedule#epochs", "1")
    last = torch.load(models / "last.pt", map_location="cpu", weights_only=False)
    assert {"d_scaler", "g_scaler"} <= set(last["trainer"])  # empty without float16 loss scaling
    record = last["best_validation"]
    assert (record["best_metric_epoch"], record["iteration"]) == (1, 1)
    record["best_metric"] = 1.0  # a mean Dice no model passes: epoch 2 validates worse
    torch.save(last, models / "last.pt")
    best = {name: (models / name).read_bytes() for name in ("model.pt", "generator.pt")}

    out = _bundle(bundle_root, "training", *args, "--schedule#epochs", "2", "--resume", "true")
    assert "resuming from iteration 1, epoch 1" in out and "last validation, epoch 2" in out
    assert {name: (models / name).read_bytes() for name in best} == best
    dice = ", ".join(f"{t} {record['metrics'][f'val_dice_{t}']:.4f}" for t in ("CSF", "GM", "WM"))
    assert f"Validation Dice per tissue (best model, epoch 1, iteration 1): {dice}" in out
