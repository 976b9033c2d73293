"""configs/multi_gpu_train.yaml: DistributedDataParallel training, 2 processes on the CPU (gloo) started by torchrun."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

TINY = [
    "--dataset_format", "phantom",
    "--data#phantom#shape", "[48,56,64]", "--data#phantom#num_labeled", "4", "--data#phantom#num_unlabeled", "1",
    "--num_labeled", "2", "--num_val", "2", "--num_test", "-1", "--patch_size", "[16,16,16]",
    "--patches#samples_per_volume", "2", "--batch_size", "1", "--runtime#num_workers", "0",
    "--segmenter#features", "[4,8,16,32]", "--gan#generator_features", "[4,8,16]",
    "--gan#warmup_iterations", "0", "--schedule#val_interval", "1", "--schedule#epoch_length", "1",
    "--gan#generator_interval", "1",  # G updates in both iterations: every parameter of both networks trains
]  # fmt: skip

# Imported by every process: saves what the test compares across ranks (appended to initialize, run and finalize).
PROBE = '''
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scripts.checkpoint import unwrap


def save(path, trainer, train_handlers, val_handlers, validated):
    """Unwrapped weights (``validated``: the validated network's), wrappers, handlers, data and last loss of this
    rank, to ``path-<rank>.pt``."""
    nets = {"network": trainer.network, "generator": trainer.generator, "validated": validated}
    output = trainer.state.output
    torch.save({
        "pid": os.getpid(),
        "wrapped": {k: isinstance(m, DistributedDataParallel) for k, m in nets.items()
                    if m is not None and k != "validated"},
        "state": {k: unwrap(m).state_dict() for k, m in nets.items() if m is not None},
        "train_handlers": [type(h).__name__ for h in train_handlers],
        "val_handlers": [type(h).__name__ for h in val_handlers or []],
        "subjects": [d["subject"] for d in trainer.data_loader.dataset.data],
        "loss": None if output is None else float(output[0]["loss"]),
    }, f"{path}-{dist.get_rank()}.pt")


def mark_finalized(path):
    with open(f"{path}-{os.getpid()}.txt", "w") as f:
        f.write(str(dist.is_initialized()))
'''


def _torchrun(bundle_root, tmp, configs, *args):
    """Train with 2 processes on the CPU; return the probes of both ranks (initial, final) and the printed output."""
    (tmp / "ddp_probe.py").write_text(PROBE)
    probe = tmp / "probe.yaml"
    save = ("$ddp_probe.save('{}', @train#trainer, @train#trainer#train_handlers, @validate#evaluator#val_handlers, "
            "@validate#network)")
    probe.write_text(textwrap.dedent(f"""\
        +initialize: ["$import ddp_probe", "{save.format(tmp / 'initial')}"]
        +run: ["{save.format(tmp / 'final')}"]
        +finalize: ["$ddp_probe.mark_finalized('{tmp / 'finalized'}')"]
        """))  # fmt: skip
    config_files = str([f"configs/{c}.yaml" for c in configs] + [str(probe)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bundle_root), str(tmp)]), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
         "run", "training", "--config_file", config_files, *TINY, *args],
        cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probes = {
        name: [torch.load(tmp / f"{name}-{rank}.pt", weights_only=False) for rank in (0, 1)]
        for name in ("initial", "final")
    }
    return probes, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom")


@pytest.fixture(scope="module")
def gan_run(bundle_root, data_dir, tmp_path_factory):
    """Two epochs of MRI-GAN training with 2 processes."""
    tmp = tmp_path_factory.mktemp("ddp_gan")
    dirs = ["--dataset_dir", str(data_dir), "--output_dir", str(tmp / "runs"), "--ckpt_dir", str(tmp / "models")]
    probes, out = _torchrun(bundle_root, tmp, ["train", "multi_gpu_train"], "--schedule#epochs", "2", *dirs)
    return tmp, probes, out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ across ranks: {different[:5]}"


def _parameters(state: dict) -> dict:
    """A segmenter's or generator's state_dict without its batch-norm running statistics."""
    return {k: t for k, t in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _assert_trained(initial: dict, final: dict) -> None:
    """Training moved (nearly) every floating-point tensor of the state_dict."""
    floats = [k for k, t in final.items() if t.is_floating_point()]
    unchanged = [k for k in floats if torch.equal(initial[k], final[k])]
    assert len(unchanged) < 0.1 * len(floats), f"not trained: {unchanged[:5]}"


def test_both_networks_are_wrapped_and_stay_identical(gan_run):
    _, probes, _ = gan_run
    first, last = probes["initial"], probes["final"]
    for rank in (0, 1):
        assert last[rank]["wrapped"] == {"network": True, "generator": True}
    # different data on each rank: its own training subject and its own random patches, hence other losses ...
    assert set(last[0]["subjects"]).isdisjoint(last[1]["subjects"])
    assert last[0]["loss"] != pytest.approx(last[1]["loss"], rel=1e-4)
    # ... yet bitwise identical parameters (DDP broadcasts each rank's batch-norm statistics at the next forward pass
    # only), and one validated network (the weight average, its statistics averaged over the ranks)
    for net in ("network", "generator"):
        _assert_same(_parameters(last[0]["state"][net]), _parameters(last[1]["state"][net]))
        _assert_same(first[0]["state"][net], first[1]["state"][net])  # DDP broadcast rank 0's initial weights
        _assert_trained(first[0]["state"][net], last[0]["state"][net])
    _assert_same(last[0]["state"]["validated"], last[1]["state"]["validated"])
    _assert_trained(first[0]["state"]["network"], last[0]["state"]["validated"])


def test_only_rank_zero_writes_and_logs(gan_run):
    tmp, probes, out = gan_run
    rank0, rank1 = probes["final"]
    assert {"LastCheckpoint", "TensorBoardStatsHandler", "TensorBoardImageHandler", "LossProgressBar"} <= set(
        rank0["train_handlers"]
    )
    assert rank1["train_handlers"] == ["LrScheduleHandler", "LrScheduleHandler", "FinalValidation"]
    assert "BestCheckpoint" in rank0["val_handlers"] and rank1["val_handlers"] == []
    events = list((tmp / "runs").glob("events.out.tfevents.*"))
    assert events and all(f.name.split(".")[-2] == str(rank0["pid"]) for f in events)
    assert {p.name for p in (tmp / "models").iterdir()} == {"model.pt", "generator.pt", "last.pt"}
    last = torch.load(tmp / "models" / "last.pt", map_location="cpu", weights_only=False)
    _assert_same(last["network"], rank0["state"]["network"])
    assert last["trainer"]["iteration"] == 2  # one labelled subject per rank and epoch
    assert out.count("Validation Dice per tissue") == 1  # printed by rank 0 only


def test_process_group_is_destroyed(gan_run):
    tmp, _, _ = gan_run
    marks = [p.read_text() for p in tmp.glob("finalized-*.txt")]
    assert marks == ["False", "False"]


def test_supervised_baseline(bundle_root, data_dir, tmp_path):
    """The override also goes on top of supervised.yaml, whose generator is null."""
    dirs = ["--dataset_dir", str(data_dir), "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "m")]
    configs = ["train", "supervised", "multi_gpu_train"]
    probes, _ = _torchrun(bundle_root, tmp_path, configs, "--schedule#epochs", "1", *dirs)
    last = probes["final"]
    assert last[0]["wrapped"] == last[1]["wrapped"] == {"network": True}
    _assert_same(_parameters(last[0]["state"]["network"]), _parameters(last[1]["state"]["network"]))
    _assert_same(last[0]["state"]["validated"], last[1]["state"]["validated"])
    _assert_trained(probes["initial"][0]["state"]["network"], last[0]["state"]["network"])
