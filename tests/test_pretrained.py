"""The shipped weights: models/model.pt (T1+T2) and models/model_t1.pt (T1 only) load into their networks,
inference picks them by `modalities`, `evaluate` on their runs' test subjects measures the eval_metrics recorded in
configs/metadata.json, and a full head with its brain mask gets nothing labelled outside the brain."""

import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.checks import MissingInputError
from scripts.data.phantom import _write_iseg_subject, make_subject
from scripts.networks import Segmenter

pytestmark = pytest.mark.slow

# Each shipped weights file: the recipe config it was trained with (its modalities and phantom dataset), its split
# (the run's split.json) and its eval_metrics' key prefix.
SHIPPED = {
    "model.pt": {"recipe": "shipped_t1t2.yaml", "split": "pretrained_split.json", "prefix": "test_"},
    "model_t1.pt": {"recipe": "shipped_t1.yaml", "split": "pretrained_t1_split.json", "prefix": "t1_only_test_"},
}


def _recipe(bundle_root, name):
    """``(modalities, phantom)`` of the training command that made ``models/<name>``."""
    parser = ConfigParser()
    configs = ("train.yaml", "supervised.yaml", SHIPPED[name]["recipe"])
    parser.read_config([str(bundle_root / "configs" / config) for config in configs])
    return parser["modalities"], parser["phantom"]


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_weights_are_small_plain_state_dicts_of_the_default_network(bundle_root, name):
    path = bundle_root / "models" / name
    assert path.stat().st_size < 25 * 2**20
    modalities = _recipe(bundle_root, name)[0]
    Segmenter(len(modalities), 4).load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _inference_parser(bundle_root, **overrides):
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle_root), **overrides})
    return parser


@pytest.mark.parametrize("modalities, name", [(["t1", "t2"], "model.pt"), (["t1"], "model_t1.pt"), (["T1"], "model_t1.pt")])
def test_inference_picks_the_shipped_weights_of_its_modalities(bundle_root, modalities, name):
    parser = _inference_parser(bundle_root, modalities=modalities)
    assert parser.get_parsed_content("ckpt_path") == str(bundle_root / "models" / name)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(parser.get_parsed_content("ckpt_path"), map_location="cpu", weights_only=True))


def test_modalities_without_shipped_weights_ask_for_a_checkpoint(bundle_root):
    with pytest.raises(RuntimeError) as raised:  # the bundle's parser wraps it; the excepthook prints the cause
        _inference_parser(bundle_root, modalities=["t1", "flair"]).get_parsed_content("ckpt_path")
    error = raised.value.__cause__
    assert isinstance(error, MissingInputError)
    assert re.match(r"no shipped weights for modalities \['t1', 'flair'\].*--ckpt_path", str(error))
    given = _inference_parser(bundle_root, modalities=["t1", "flair"], ckpt_path="/data/mine.pt")
    assert given.get_parsed_content("ckpt_path") == "/data/mine.pt"

def _write_test_subjects(folder, split, modalities, phantom):
    """The training run's test subjects, written exactly as its phantom dataset (``write_iseg``) wrote them."""
    folder.mkdir()
    options = {k: bool(phantom.get(k, False)) for k in ("cohort", "head", "randomize", "folded")}
    entries = []
    for entry in split["testing"]:
        name = entry["subject"]
        index = int(name.split("-")[1])
        _write_iseg_subject(index, folder, phantom["num_labeled"], phantom["shape"], phantom["seed"],
                            phantom.get("preset", "infant"), options)  # fmt: skip
        entries.append({"subject": name, "label": str(folder / f"{name}-label.hdr"),
                        **{m: str(folder / f"{name}-{m.upper()}.hdr") for m in modalities}})  # fmt: skip
    return entries


@pytest.mark.parametrize("name", list(SHIPPED))
def test_evaluate_reproduces_the_metadata_eval_metrics(bundle_root, tmp_path, name):
    shipped = SHIPPED[name]
    modalities, phantom = _recipe(bundle_root, name)
    split = json.loads((bundle_root / "docs" / "benchmarks" / shipped["split"]).read_text())
    testing = _write_test_subjects(tmp_path / "phantom", split, modalities, phantom)
    datalist = {"training": [], "validation": [], "testing": testing, "unlabeled": []}
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "evaluating",
        "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", "--datalist", repr(datalist),
        "--modalities", repr(modalities), "--ckpt_path", f"models/{name}",
        "--eval_dir", str(tmp_path / "eval"), "--output_dir", str(tmp_path / "runs"), "--num_workers", "0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]
    recorded = json.loads((bundle_root / "configs" / "metadata.json").read_text())["eval_metrics"]
    prefix = shipped["prefix"]
    for tissue in ("CSF", "GM", "WM"):
        assert measured["val_dice"][tissue]["mean"] == pytest.approx(recorded[f"{prefix}dice_{tissue.lower()}"], abs=1e-3)
        assert measured["val_hd95"][tissue]["mean"] == pytest.approx(recorded[f"{prefix}hd95_{tissue.lower()}_mm"], abs=1e-3)
    mean = np.mean([measured["val_dice"][t]["mean"] for t in ("CSF", "GM", "WM")])
    assert mean == pytest.approx(recorded[f"{prefix}mean_dice"], abs=1e-3)


@pytest.mark.parametrize(
    "name, preset, shape, modalities",
    [("model.pt", "infant", (144, 192, 256), ["t1", "t2"]), ("model_t1.pt", "adult", (192, 240, 256), ["t1"])],
)
def test_shipped_weights_segment_a_full_head_with_its_brain_mask(
    bundle_root, tmp_path, monkeypatch, name, preset, shape, modalities
):
    """A phantom head never seen in training (skull, scalp, eyes, neck; Rician background with an offset, so
    negative voxels) with its brain mask, as a user's folder of NIfTI scans: the head and the air come out
    background, the brain segmented. `modalities` alone picks the weights."""
    from monai.bundle import run

    subject = make_subject(shape, preset, seed=12345, head=True, modalities=modalities)
    label, head = subject["label"], subject["head"]
    data = tmp_path / "data"
    data.mkdir()
    files = {m: subject["images"][m] for m in modalities} | {"mask": (subject["structures"] > 0).astype(np.uint8)}
    for key, volume in files.items():
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(data / f"head_{key}.nii.gz"))
    monkeypatch.chdir(bundle_root)
    run("inference", config_file="configs/inference.yaml", dataset_dir=str(data), dataset_format="folder",
        modalities=modalities, suffixes={k: f"_{k}.nii.gz" for k in files}, output_dir=str(tmp_path / "out"))
    seg = np.asarray(nib.load(str(tmp_path / "out" / "head_seg.nii.gz")).dataobj)
    assert (head > 0).sum() > (label > 0).sum() / 2 and subject["images"][modalities[0]].min() < 0  # a real head
    assert not (seg[(label == 0)] > 0).any()  # skull, scalp, eyes, neck and air: background
    dice = [2 * ((seg == c) & (label == c)).sum() / ((seg == c).sum() + (label == c).sum()) for c in (1, 2, 3)]
    assert min(dice) > 0.55, dice  # model.pt: 0.82 / 0.63 / 0.75; a map of one tissue scores 0 on the others
