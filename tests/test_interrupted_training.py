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
        "--config_file", "configs/train.yaml", "--epochs", str(EPOCHS), "--epoch_length", str(EPOCH_LENGTH),
        "--checkpoint_interval", str(INTERVAL), "--val_interval", "2", "--gan_warmup_iterations", "2", *TINY,
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
        while (_recorded_iteration(last) or 0) % EPOCH_LENGTH == 0:  # wait for a mid-epoch checkpoint (3 or 6)
            assert proc.poll() is None, "training ended before a mid-epoch checkpoint"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _recorded_iteration(last)  # the kill may land after one more save, but never leaves a broken file
    assert killed_at % EPOCH_LENGTH != 0 and killed_at < EPOCHS * EPOCH_LENGTH
    epoch = killed_at // EPOCH_LENGTH

    out = _bundle(bundle_root, "training", *args, "--resume", "true")
    assert f"resuming from iteration {killed_at}, epoch {epoch}" in out
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["trainer"]["iteration"] == EPOCHS * EPOCH_LENGTH and final["trainer"]["max_epochs"] == EPOCHS
    assert float(final["optimizer"]["state"][0]["step"]) == EPOCHS * EPOCH_LENGTH  # no step lost or repeated
    assert (tmp_path / "models" / "model.pt").exists()
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind
