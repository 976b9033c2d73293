"""MLflow tracking of a training run (`--tracking configs/mlflow.yaml`) into a local SQLite store."""

import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

EPOCHS, EPOCH_LENGTH, WARMUP = 2, 3, 1
TINY = [
    "--dataset_format", "phantom",
    "--data#phantom#shape", "[48,56,64]", "--data#phantom#num_labeled", "3", "--data#phantom#num_unlabeled", "1",
    "--num_labeled", "1", "--num_val", "1", "--num_test", "-1", "--patch_size", "[16,16,16]",
    "--patches#samples_per_volume", "2", "--runtime#num_workers", "0", "--segmenter#features", "[4,8,16,32]",
    "--gan#generator_features", "[4,8,16]",
]  # fmt: skip


@pytest.fixture(scope="module")
def tracked(bundle_root, tmp_path_factory):
    """Train 2 epochs of 3 iterations with MLflow tracking; return the run's output folder and the MLflow run."""
    tmp = tmp_path_factory.mktemp("tracking")
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
        "--tracking", "configs/mlflow.yaml", "--schedule#epochs", str(EPOCHS),
        "--schedule#epoch_length", str(EPOCH_LENGTH), "--schedule#val_interval", "1",
        "--gan#warmup_iterations", str(WARMUP), *TINY, "--dataset_dir", str(tmp / "phantom"),
        "--output_dir", str(tmp / "runs"), "--ckpt_dir", str(tmp / "models"), "--run_name", "tiny",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)  # it would take precedence over the settings' tracking_uri
    proc = subprocess.run(cmd, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    uri = f"sqlite:///{tmp / 'runs' / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mri_gan")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["tiny"]
    return tmp / "runs", uri, client, runs[0]


def _steps(client, run, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_every_loss_term_and_tissue_dice_is_recorded(tracked):
    _, _, client, run = tracked
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == str(EPOCHS) and run.data.params["epoch_length"] == str(EPOCH_LENGTH)
    iterations = list(range(1, EPOCHS * EPOCH_LENGTH + 1))
    for key in ("loss", "loss_d_total", "loss_d_labelled"):
        assert [s for s, _ in _steps(client, run, key)] == iterations, key
    for key in ("loss_d_synthetic",):  # the GAN terms start after the warm-up
        assert [s for s, _ in _steps(client, run, key)] == iterations[WARMUP:], key
    generator = ["loss_g_total", "loss_g_feature_matching", "loss_g_segmentation", "loss_g_appearance",
                 "loss_g_boundary", "loss_g_reconstruction"]  # fmt: skip
    for key in generator:  # G idle in the warm-up, then updated every second iteration
        assert [s for s, _ in _steps(client, run, key)] == [i for i in iterations[WARMUP:] if i % 2 == 0], key
    for key in ("val_mean_dice", "val_dice_CSF", "val_dice_GM", "val_dice_WM"):  # one validation per epoch
        history = _steps(client, run, key)
        assert [s for s, _ in history] == list(range(1, EPOCHS + 1)), key
        assert all(0.0 <= v <= 1.0 for _, v in history)


def test_mlflow_and_tensorboard_record_the_same_values(tracked):
    run_dir, _, client, run = tracked
    tensorboard = {}
    for f in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tensorboard.update({t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]})
    for key in ("loss_d_total", "loss_d_synthetic", "loss_g_total", "val_dice_WM"):
        assert _steps(client, run, key) == [(s, pytest.approx(v, rel=1e-6)) for s, v in tensorboard[key]], key


def test_curves_figure_from_the_mlflow_store(tracked, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from tools import figures

    _, uri, _, _ = tracked
    out = figures.curves(tracking_uri=uri, run_name="tiny", smooth=2, out=tmp_path / "curves.png", dpi=20)
    assert imread(out).shape == (4.5 * 20, 15 * 20, 4)
    with pytest.raises(ValueError, match="has no run named 'other'"):
        figures.curves(tracking_uri=uri, run_name="other", out=tmp_path / "c2.png")


def test_monai_default_mlflow_tracking(bundle_root, tmp_path):
    """`--tracking mlflow`, MONAI's own settings, records the discriminator loss of every iteration."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
        "--tracking", "mlflow", "--schedule#epochs", "1", "--schedule#epoch_length", "2",
        "--schedule#val_interval", "1",
        "--gan#warmup_iterations", "1", *TINY, "--dataset_dir", str(tmp_path / "phantom"),
        "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("monai_experiment").experiment_id])
    assert [s for s, _ in _steps(client, run, "train_loss")] == [1, 2]
    assert [s for s, _ in _steps(client, run, "val_mean_dice")] == [1]
