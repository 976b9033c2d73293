"""The shipped weights: models/model.pt loads into the default network, and `evaluate` on the phantom test split
measures the eval_metrics recorded in configs/metadata.json."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.networks import Segmenter
from scripts.phantom import _ISEG_LABEL_VALUES, _subject_seed, _to_int16, make_subject

pytestmark = pytest.mark.slow

TEST_SUBJECTS = ["subject-2", "subject-9"]  # the default split's testing subjects (seed 0, 12 labelled phantoms)


def test_model_pt_is_a_small_plain_state_dict_of_the_default_network(bundle_root):
    path = bundle_root / "models" / "model.pt"
    assert path.stat().st_size < 25 * 2**20
    Segmenter(2, 4).load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _write_test_subjects(folder):
    """The phantom dataset's test subjects, exactly as `write_iseg` writes them (same per-subject seeds)."""
    folder.mkdir()
    entries = []
    for name in TEST_SUBJECTS:
        index = int(name.split("-")[1])
        subject = make_subject((144, 192, 256), "infant", _subject_seed(0, index))
        volumes = {"T1": _to_int16(subject["images"]["t1"]), "T2": _to_int16(subject["images"]["t2"]),
                   "label": _ISEG_LABEL_VALUES[subject["label"]]}  # fmt: skip
        for suffix, volume in volumes.items():
            nib.save(nib.AnalyzeImage(volume, np.eye(4)), str(folder / f"{name}-{suffix}.hdr"))
        entries.append({"subject": name, **{k.lower(): str(folder / f"{name}-{k}.hdr") for k in volumes}})
    return entries


def test_evaluate_reproduces_the_metadata_eval_metrics(bundle_root, tmp_path):
    split = json.loads((bundle_root / "docs" / "benchmarks" / "pretrained_split.json").read_text())
    assert [e["subject"] for e in split["testing"]] == TEST_SUBJECTS
    datalist = {"training": [], "validation": [], "testing": _write_test_subjects(tmp_path / "phantom"), "unlabeled": []}
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "evaluating",
        "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", "--datalist", repr(datalist),
        "--eval_dir", str(tmp_path / "eval"), "--output_dir", str(tmp_path / "runs"), "--num_workers", "0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]
    recorded = json.loads((bundle_root / "configs" / "metadata.json").read_text())["eval_metrics"]
    for tissue in ("CSF", "GM", "WM"):
        assert measured["val_dice"][tissue]["mean"] == pytest.approx(recorded[f"test_dice_{tissue.lower()}"], abs=1e-3)
        assert measured["val_hd95"][tissue]["mean"] == pytest.approx(recorded[f"test_hd95_{tissue.lower()}_mm"], abs=1e-3)
    mean = np.mean([measured["val_dice"][t]["mean"] for t in ("CSF", "GM", "WM")])
    assert mean == pytest.approx(recorded["test_mean_dice"], abs=1e-3)
