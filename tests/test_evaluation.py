"""Evaluation metrics and reports on hand-made masks with known Dice and distances."""

import csv
import json

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.networks.utils import one_hot

from scripts.datasets import IGNORE_LABEL
from scripts.evaluation import check_split, write_report
from scripts.transforms import MaskIgnoredd


def _masks():
    """Label and prediction (4x4x4... 8^3 grid) with a known overlap per tissue."""
    label = torch.zeros(1, 1, 8, 8, 8)
    pred = torch.zeros(1, 1, 8, 8, 8)
    label[..., 0:2, 0:2, 0:2] = 1  # CSF: 8 voxels, predicted exactly
    pred[..., 0:2, 0:2, 0:2] = 1
    label[..., 4:6, 0:2, 0:2] = 2  # GM: 8 voxels, prediction shifted by one voxel along x: overlap 4
    pred[..., 5:7, 0:2, 0:2] = 2
    label[..., 0:4, 4:8, 4:8] = 3  # WM: 64 voxels, predicted half (32)
    pred[..., 0:2, 4:8, 4:8] = 3
    return pred, label


def _run_metrics(bundle_root, pred, label):
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs/train.yaml"), str(bundle_root / "configs/evaluate.yaml")])
    metrics = parser.get_parsed_content("validate#additional_metrics")
    output = {"pred": one_hot(pred, 4)[0], "label": one_hot(label, 4)[0]}
    engine = Engine(lambda e, b: [output])
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run([0], max_epochs=1)
    return engine


@pytest.mark.parametrize("evaluate", [False, True])
@pytest.mark.parametrize("bf16", [True, False])
def test_evaluator_autocasts_to_the_trainers_dtype(bundle_root, monkeypatch, evaluate, bf16):
    """One ``amp_dtype`` for training and validation (evaluate.yaml: the test split): bfloat16 where the GPU has
    it, else float16; a command-line override changes both."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ["train.yaml"] + ["evaluate.yaml"] * evaluate])

    def autocast_dtypes():
        engines = ("train#trainer", "validate#evaluator")
        return [parser.get_parsed_content(f"{e}#amp_kwargs", lazy=False) for e in engines]

    assert autocast_dtypes() == [{"dtype": torch.bfloat16 if bf16 else torch.float16}] * 2
    parser["amp_dtype"] = "float16" if bf16 else "bfloat16"  # --amp_dtype
    assert autocast_dtypes() == [{"dtype": torch.float16 if bf16 else torch.bfloat16}] * 2


def test_dice_and_distances_match_hand_computation(bundle_root, tmp_path):
    pred, label = _masks()
    engine = _run_metrics(bundle_root, pred, label)
    summary = write_report(engine, [{"subject": "s1"}], str(tmp_path), spacing=[2.0, 2.0, 2.0])
    dice = [summary["val_dice"][t]["mean"] for t in ("CSF", "GM", "WM")]
    assert dice == pytest.approx([1.0, 2 * 4 / 16, 2 * 32 / 96])
    # CSF is perfect: zero distances. GM is shifted by one voxel (2 mm at this spacing): HD95 = 2 mm.
    assert summary["val_hd95"]["CSF"]["mean"] == pytest.approx(0.0)
    assert summary["val_hd95"]["GM"]["mean"] == pytest.approx(2.0)
    with open(tmp_path / "metrics_per_subject.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["subject", "Dice CSF", "Dice GM", "Dice WM"]
    assert rows[1][0] == "s1" and float(rows[1][2]) == pytest.approx(0.5)
    assert json.loads((tmp_path / "summary.json").read_text())["subjects"] == 1
    assert "| Dice | 1.0000 ± 0.0000 | 0.5000 ± 0.0000 |" in (tmp_path / "summary.md").read_text()


def test_ignored_voxels_count_neither_way():
    pred, label = _masks()
    label[..., 7, 7, 7] = IGNORE_LABEL
    pred[..., 7, 7, 7] = 3  # would be a false positive for WM if not ignored
    out = MaskIgnoredd(keys=["pred", "label"])({"pred": pred[0], "label": label[0]})
    assert out["pred"][0, 7, 7, 7] == 0 and out["label"][0, 7, 7, 7] == 0
    assert torch.equal(out["pred"][0, :7], pred[0, 0, :7])


def test_anisotropic_spacing_is_refused(bundle_root, tmp_path):
    pred, label = _masks()
    engine = _run_metrics(bundle_root, pred, label)
    with pytest.raises(ValueError, match="isotropic"):
        write_report(engine, [{"subject": "s1"}], str(tmp_path), spacing=[1.0, 1.0, 3.0])


def test_empty_split_is_reported():
    with pytest.raises(ValueError, match="'testing' split is empty"):
        check_split({"testing": []}, "testing")
