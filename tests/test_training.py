"""End-to-end runs of the training and evaluation workflows on tiny phantom data, as a user runs them."""

import collections
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scripts.networks import MRIGANGenerator, Segmenter, StandardGANGenerator

pytestmark = pytest.mark.slow

TINY = [
    "--dataset_format", "phantom",  # the tiny procedural phantoms (the default data, the anatomy cohort, is large)
    "--data#phantom#shape", "[48,56,64]", "--data#phantom#num_labeled", "3", "--data#phantom#num_unlabeled", "1",
    "--num_labeled", "1", "--num_val", "1", "--num_test", "-1", "--patch_size", "[16,16,16]",
    "--patches#samples_per_volume", "2", "--runtime#num_workers", "0",
]  # fmt: skip


def _bundle(bundle_root, *args):
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")  # pytest -n 2 already fills 2 cores
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=bundle_root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(bundle_root, tmp_path_factory):
    """Train for two epochs with the user's command; return the run's folders and its printed output."""
    tmp = tmp_path_factory.mktemp("train")
    dirs = {"dataset_dir": tmp / "phantom", "output_dir": tmp / "runs", "ckpt_dir": tmp / "models"}
    out = _bundle(
        bundle_root, "training", "--config_file", "configs/train.yaml", "--schedule#epochs", "2",
        "--schedule#epoch_length", "1", "--schedule#val_interval", "1",
        "--gan#warmup_iterations", "1", *TINY, *[a for k, v in dirs.items() for a in (f"--{k}", str(v))],
    )  # fmt: skip
    return dirs, out


def test_training_writes_cpu_checkpoint_and_reports_dice(trained):
    dirs, out = trained
    ckpt = torch.load(dirs["ckpt_dir"] / "model.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt.values())  # a plain state_dict, as the model zoo expects
    Segmenter(2, 4).load_state_dict(ckpt)  # the default architecture
    generator = torch.load(dirs["ckpt_dir"] / "generator.pt", map_location="cpu", weights_only=True)
    MRIGANGenerator(2, 4, noise_dim=8, source_statistics=True).load_state_dict(generator["generator"])  # the default
    assert "Validation Dice per tissue" in out and "CSF" in out and "WM" in out
    assert "lr_scheduler.step()" not in out  # G's schedule steps through the warm-up by design: no torch warning
    tags = {name: _tags(dirs["output_dir"] / name) for name in ("", "patches", "segmentations")}
    # MONAI's TensorBoardImageHandler: the patch, its label and the fake; the segmentation, as GIFs through the volume
    assert {"input_0_HWD", "input_1_HWD", "output_HWD"} <= {t.split("/")[0] for t in tags["patches"]}
    assert {t.split("/")[0] for t in tags["segmentations"]} == {"output_HWD"}
    tags = tags[""]
    assert {"loss_d_synthetic", "loss_g_feature_matching", "loss_g_boundary", "loss_g_segmentation",
            "loss_g_appearance", "loss_g_reconstruction"} <= tags  # tissue transfer is the default


def test_split_is_written_and_reproducible(trained, bundle_root):
    dirs, _ = trained
    split = json.loads((dirs["output_dir"] / "split.json").read_text())
    assert len(split["training"]) == 1 and len(split["validation"]) == 1 and len(split["testing"]) == 1
    assert len(split["unlabeled"]) == 1 and "label" not in split["unlabeled"][0]
    assert split["training"][0]["t1"].endswith("-T1.hdr")


def test_evaluation_on_test_split(trained, bundle_root, tmp_path):
    dirs, _ = trained
    out = _bundle(
        bundle_root, "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", *TINY,
        *[a for k, v in dirs.items() for a in (f"--{k}", str(v))], "--eval_dir", str(tmp_path),
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["subjects"] == 1 and set(summary["metrics"]) == {"val_dice", "val_hd95", "val_asd"}
    assert "| Dice |" in out and f"Evaluating the split of {dirs['output_dir'] / 'split.json'}" in out


def test_monai_label_run_id(bundle_root, tmp_path):
    """MONAI Label trains through the default `run` id and overrides train#trainer#max_epochs only: the GAN's schedule
    follows it (warm-up a quarter of the 4 iterations, not of `schedule#epochs`' 600) and the generator trains."""
    _bundle(
        bundle_root, "--config_file", "configs/train.yaml", "--train#trainer#max_epochs", "1",
        "--schedule#epoch_length", "4",
        *TINY, "--dataset_dir", str(tmp_path / "phantom"), "--output_dir", str(tmp_path / "runs"),
        "--ckpt_dir", str(tmp_path / "models"), "--schedule#val_interval", "1",
    )  # fmt: skip
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 4
    # G idle through the warm-up (iteration 1), then updated every generator_interval (2): iterations 2 and 4
    assert float(last["g_optimizer"]["state"][0]["step"]) == 2
    assert last["lr_scheduler"]["T_max"] == last["g_lr_scheduler"]["T_max"] == 1
    Segmenter(2, 4).load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    generator = torch.load(tmp_path / "models" / "generator.pt", weights_only=True)["generator"]
    assert all(torch.equal(v, last["generator"][k]) for k, v in generator.items())  # the trained G, saved with D


@pytest.mark.parametrize("variant", ["supervised", "standard_gan"])
def test_baselines_train_from_the_command_line(bundle_root, tmp_path, variant):
    out = _bundle(
        bundle_root, "training", "--config_file", f"['configs/train.yaml','configs/{variant}.yaml']",
        "--schedule#epochs", "1", "--schedule#epoch_length", "1", "--schedule#val_interval", "1", *TINY,
        "--dataset_dir", str(tmp_path / "phantom"), "--output_dir", str(tmp_path / "runs"),
        "--ckpt_dir", str(tmp_path / "models"),
    )  # fmt: skip
    assert "Validation Dice per tissue" in out
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert (tmp_path / "models" / "model.pt").exists()
    if variant == "supervised":
        assert not (tmp_path / "models" / "generator.pt").exists() and "generator" not in last
    else:
        StandardGANGenerator(2, (16, 16, 16)).load_state_dict(last["generator"])
        assert (tmp_path / "models" / "generator.pt").exists()


def test_resume_continues_from_the_last_checkpoint(bundle_root, tmp_path):
    """A run stopped after 1 epoch continues with --resume from its recorded iteration, optimisers included."""
    args = [
        *TINY, "--dataset_dir", str(tmp_path / "phantom"), "--output_dir", str(tmp_path / "runs"),
        "--ckpt_dir", str(tmp_path / "models"), "--schedule#val_interval", "5", "--schedule#epoch_length", "2",
    ]  # fmt: skip
    _bundle(bundle_root, "training", "--config_file", "configs/train.yaml", "--schedule#epochs", "1", *args)
    first = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert first["trainer"]["iteration"] == 2 and first["g_optimizer"]["state"]
    resumed = ["--config_file", "configs/train.yaml", "--schedule#epochs", "3", "--resume", "true"]
    out = _bundle(bundle_root, "training", *resumed, *args)
    assert "resuming from iteration 2, epoch 1" in out
    second = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert second["trainer"]["iteration"] == 6 and second["trainer"]["max_epochs"] == 3
    step = second["optimizer"]["state"][0]["step"]
    assert float(step) == 6  # Adam's step count went on from the first run's 2


def _tags(run_dir):
    """Image and scalar tags of the TensorBoard files in ``run_dir``."""
    tags = set()
    for f in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    return tags


def _scalars(run_dir):
    values = {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("loss"):
                values[tag] = [round(e.value, 6) for e in acc.Scalars(tag)]
    return values


def test_same_seed_same_losses_on_cpu(bundle_root, tmp_path):
    """Two runs with the same seed log the same losses, iteration by iteration, GAN terms included."""
    runs = []
    for name in ("a", "b"):
        _bundle(
            bundle_root, "training", "--config_file", "configs/train.yaml", "--schedule#epochs", "1",
            "--schedule#epoch_length", "3", "--gan#warmup_iterations", "1", "--schedule#val_interval", "5", *TINY,
            "--dataset_dir", str(tmp_path / "phantom"),
            "--output_dir", str(tmp_path / name / "runs"), "--ckpt_dir", str(tmp_path / name / "models"),
        )  # fmt: skip
        runs.append(_scalars(tmp_path / name / "runs"))
    assert runs[0]["loss_d_synthetic"] and runs[0]["loss_g_appearance"] and len(runs[0]["loss_d_total"]) == 3
    assert runs[0] == runs[1]


@pytest.mark.parametrize("crop_sampling", ["random", "balanced"])
def test_batches_of_two_volumes(bundle_root, tmp_path, crop_sampling):
    """The default batch_size 2 collates patches of two labelled volumes with either patches#sampling."""
    tiny = [a for a in TINY]
    tiny[tiny.index("--num_labeled") + 1] = "2"
    tiny[tiny.index("--data#phantom#num_labeled") + 1] = "4"
    probe = tmp_path / "probe.yaml"  # saves the last labelled batch: its shape and the file of every patch
    image = "@train#trainer.state.output[0]['image']"
    save = f"{{'shape': tuple({image}.shape), 'files': {image}.meta['filename_or_obj']}}, '{tmp_path / 'batch.pt'}'"
    probe.write_text(f'+run: ["$torch.save({save})"]\n')
    _bundle(
        bundle_root, "training", "--config_file", f"['configs/train.yaml','{probe}']", "--schedule#epochs", "1",
        "--schedule#epoch_length", "2", "--gan#warmup_iterations", "1", "--schedule#val_interval", "5",
        "--batch_size", "2",
        "--patches#sampling", crop_sampling, *tiny, "--dataset_dir", str(tmp_path / "phantom"),
        "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models"),
    )  # fmt: skip
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 2
    batch = torch.load(tmp_path / "batch.pt", weights_only=False)
    assert batch["shape"] == (4, 2, 16, 16, 16)  # 2 volumes x patches#samples_per_volume (2) patches, T1 and T2
    training = [e["subject"] for e in json.loads((tmp_path / "runs" / "split.json").read_text())["training"]]
    patches = collections.Counter(re.search(r"subject-\d+", f).group() for f in batch["files"])
    assert len(training) == 2 and patches == {subject: 2 for subject in training}


@pytest.mark.parametrize("variant, start", [(None, 150), ("supervised", 0), ("mean_teacher", 0)])
def test_schedule_in_iterations_and_no_best_model_from_the_warmup(bundle_root, variant, start):
    """600 iterations whatever num_labeled is; a GAN run validates (and saves a best model) only after its warm-up."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [bundle_root / "configs" / "train.yaml"] + ([bundle_root / "configs" / f"{variant}.yaml"] if variant else [])
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(bundle_root)
    for num_labeled in (2, 8):
        parser["num_labeled"] = num_labeled
        assert parser.get_parsed_content("schedule#epochs", lazy=False) * parser["schedule#epoch_length"] == 600
    assert parser.get_parsed_content("gan#warmup_iterations", lazy=False) == 150
    validation = next(h for h in parser["train"]["handlers"] if h["_target_"].endswith("FinalValidation"))
    assert parser.get_parsed_content(f"train#handlers#{parser['train']['handlers'].index(validation)}#start_iteration",
                                     lazy=False) == start  # fmt: skip


@pytest.mark.parametrize("extra, paper", [([], False), (["fast.yaml"], False), (["paper_gan.yaml"], True)])
def test_generator_idles_through_the_warmup_and_renders_two_fakes(bundle_root, extra, paper):
    """The default: G idle until the end of the warm-up (150 of 600 iterations), then updated every second
    iteration, rendering 2 augmented fakes and reconstructing 2 patches per iteration; configs/fast.yaml validates
    every 3 epochs instead of 2; configs/paper_gan.yaml keeps one fake per labelled patch."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ["train.yaml", *extra]])
    parser["bundle_root"] = str(bundle_root)
    assert parser.get_parsed_content("train#trainer#generator_start", lazy=False) == 150
    assert parser.get_parsed_content("train#trainer#generator_interval", lazy=False) == 2
    assert parser.get_parsed_content("train#trainer#reconstruction_patches", lazy=False) == 2
    assert parser.get_parsed_content("train#trainer#fake_patches", lazy=False) == (None if paper else 2)
    assert parser.get_parsed_content("train#trainer#fake_transform", lazy=False) is not None
    assert parser.get_parsed_content("schedule#val_interval", lazy=False) == (3 if extra == ["fast.yaml"] else 2)


def test_null_from_the_command_line_means_one_fake_per_patch_and_every_reconstruction(bundle_root):
    """``--gan#fake_patches null --gan#reconstruction_patches null``, which fire passes as strings, mean None."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(bundle_root), "gan#fake_patches": "null", "gan#reconstruction_patches": "null"})
    assert parser.get_parsed_content("train#trainer#fake_patches", lazy=False) is None
    assert parser.get_parsed_content("train#trainer#reconstruction_patches", lazy=False) is None


@pytest.mark.parametrize("augment", [False, True])
def test_fake_augmentation_biases_the_signal_above_the_background(bundle_root, augment):
    """gan#fake_augmentation: the trainer's fake_transform multiplies the signal above the background (-1) by a smooth
    field, then runs its own copies of the real patches' intensity augmentation (the default); off, no transform."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser["bundle_root"] = str(bundle_root)
    parser["gan#fake_augmentation"] = augment
    transform = parser.get_parsed_content("train#trainer#fake_transform", lazy=False)
    if not augment:
        assert transform is None
        return
    real = parser.get_parsed_content("train#intensity_augmentation", lazy=False)
    copies = transform.transforms[-1].transforms
    assert [type(t) for t in copies] == [type(t) for t in real] and not set(map(id, copies)) & set(map(id, real))
    fake = torch.full((1, 16, 16, 16), -1.0)
    fake[:, 4:12] = 0.2  # a brain slab of signal 1.2 above the background
    transform.set_random_state(0)
    biased = Compose(transform.transforms[:-1])({"image": fake})["image"]
    field = (biased[:, 4:12] + 1) / 1.2
    assert torch.equal(biased[:, :4], fake[:, :4]) and torch.equal(biased[:, 12:], fake[:, 12:])
    assert 0.5 < field.min() < field.max() < 2.0 and field.std() > 1e-3


@pytest.mark.parametrize("momentum", [None, "null", 0.5, 0.01])
def test_ema_is_what_validation_and_model_pt_see(bundle_root, momentum):
    """segmenter#ema_momentum (0.01, the default): ignite's EMAHandler's average is the validated network, the best
    checkpoint's and a part of last.pt; off (null, or ``--segmenter#ema_momentum null``, which fire passes as the
    string), the trained network is, and there is no average."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(bundle_root), "device": "cpu"})
    if momentum != 0.01:  # 0.01: train.yaml's own
        parser["segmenter#ema_momentum"] = momentum
    network, ema = parser.get_parsed_content("network"), parser.get_parsed_content("ema")
    validated = parser.get_parsed_content("validate#network")
    best = next(i for i, h in enumerate(parser["validate"]["handlers"]) if h.get("path", "").endswith("model.pt'"))
    saved = parser.get_parsed_content(f"validate#handlers#{best}#obj").module
    kept = parser.get_parsed_content("checkpoint#objects#ema")
    if momentum in (None, "null"):
        assert ema is None and kept is None and validated is network and saved is network
    else:
        assert validated is ema.ema_model and saved is validated and kept is validated and validated is not network
        assert ema.momentum == momentum and ema.handle_buffers == "update"


def test_ema_run_saves_the_average_as_model_pt(bundle_root, tmp_path):
    """A run with segmenter#ema_momentum validated once, at its end: model.pt holds the average (last.pt's ``ema``),
    not the trained weights (last.pt's ``network``)."""
    _bundle(
        bundle_root, "training", "--config_file", "configs/train.yaml", "--schedule#epochs", "2",
        "--schedule#epoch_length", "2", "--gan#warmup_iterations", "1", "--schedule#val_interval", "5", *TINY,
        "--segmenter#ema_momentum", "0.5", "--dataset_dir", str(tmp_path / "phantom"),
        "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models"),
    )  # fmt: skip
    last = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(model) == set(last["ema"]) == set(last["network"])
    assert all(torch.equal(model[k], last["ema"][k]) for k in model)
    assert not all(torch.equal(model[k], last["network"][k]) for k in model)


def test_init_ckpt_starts_the_segmenter_from_given_weights(bundle_root, tmp_path):
    """--init_ckpt loads a model.pt into the segmenter before training, and before the weight average copies it:
    with a learning rate of 0 the saved average's convolutions come out as they went in, up to rounding (batch-norm
    running statistics still move)."""
    start = Segmenter(2, 4, features=(8, 16))
    torch.save(start.state_dict(), tmp_path / "start.pt")
    _bundle(
        bundle_root, "training", "--config_file", "['configs/train.yaml','configs/supervised.yaml']",
        "--init_ckpt", str(tmp_path / "start.pt"), "--segmenter#features", "[8,16]", "--learning_rate", "0",
        "--schedule#epochs", "1", "--schedule#epoch_length", "1", "--schedule#val_interval", "1", *TINY,
        "--dataset_dir", str(tmp_path / "phantom"),
        "--output_dir", str(tmp_path / "runs"), "--ckpt_dir", str(tmp_path / "models"),
    )  # fmt: skip
    saved = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    convolutions = [k for k in saved if k.endswith("conv.weight")]
    assert convolutions and all(torch.allclose(saved[k], start.state_dict()[k], rtol=0, atol=1e-6) for k in convolutions)
    assert not torch.equal(saved["stem.conv_0.adn.N.running_mean"], start.state_dict()["stem.conv_0.adn.N.running_mean"])
