"""Evaluation metrics and reports on hand-made masks with known Dice and distances."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, run
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.networks.utils import one_hot

from oracle import ORACLE_NET, write_oracle_checkpoint
from scripts.data.datasets import IGNORE_LABEL, build_datalist
from scripts.evaluation import check_split, write_report
from scripts.transforms import ChannelArgmaxd, MaskIgnoredd

CONFIGS = ["configs/train.yaml", "configs/evaluate.yaml"]


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


def _run_metrics(bundle_root, pred, label, spacing, eval_dir=None, subject="s1"):
    """evaluate.yaml's metrics (key and additional) and, given ``eval_dir``, its ``MetricsSaver`` on one batch."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / c) for c in CONFIGS])
    metrics = {**parser.get_parsed_content("validate#key_metric")}
    metrics.update(parser.get_parsed_content("validate#additional_metrics"))
    affine = torch.diag(torch.tensor([*spacing, 1.0]))
    output = {k: MetaTensor(one_hot(v, 4)[0], affine=affine) for k, v in {"pred": pred, "label": label}.items()}
    image = MetaTensor(torch.zeros(2, *pred.shape[2:]), meta={"filename_or_obj": "/data/s1_t1.nii.gz"})
    engine = Engine(lambda e, b: [output])
    for name, metric in metrics.items():
        metric.attach(engine, name)
    if eval_dir is not None:
        parser["eval_dir"] = str(eval_dir)
        (i,) = [i for i, h in enumerate(parser["validate#handlers"]) if h["_target_"] == "MetricsSaver"]
        parser.get_parsed_content(f"validate#handlers#{i}").attach(engine)
        # the evaluator's batch as MetricsSaver sees it: decollated, with the datalist's subject id where it has one
        engine.add_event_handler(Events.ITERATION_STARTED, lambda e: setattr(e.state, "batch", [e.state.batch]))
    batch = {"image": image, **({"subject": subject} if subject else {})}
    engine.run([batch], max_epochs=1)
    return engine


def _read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("evaluate", [False, True])
@pytest.mark.parametrize("bf16", [True, False])
def test_evaluator_autocasts_to_the_trainers_dtype(bundle_root, monkeypatch, evaluate, bf16):
    """One ``runtime#amp_dtype`` for training and validation (evaluate.yaml: the test split): bfloat16 where the GPU has
    it, else float16; a command-line override changes both."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ["train.yaml"] + ["evaluate.yaml"] * evaluate])

    def autocast_dtypes():
        engines = ("train#trainer", "validate#evaluator")
        return [parser.get_parsed_content(f"{e}#amp_kwargs", lazy=False) for e in engines]

    assert autocast_dtypes() == [{"dtype": torch.bfloat16 if bf16 else torch.float16}] * 2
    parser["runtime#amp_dtype"] = "float16" if bf16 else "bfloat16"  # --runtime#amp_dtype
    assert autocast_dtypes() == [{"dtype": torch.float16 if bf16 else torch.bfloat16}] * 2


def test_evaluation_scores_the_checkpoint_as_saved_with_ema_momentum(bundle_root):
    """A training run's overrides, segmenter#ema_momentum included, passed to evaluate.yaml: the evaluator scores the
    network the checkpoint is loaded into (model.pt already holds the average), not a fresh average of random
    weights (0.17.0's bug: Dice 0)."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / f) for f in ["train.yaml", "evaluate.yaml"]])
    parser.update({"bundle_root": str(bundle_root), "device": "cpu", "segmenter#ema_momentum": 0.01,
                   "segmenter#features": [4, 8, 16, 32]})  # fmt: skip
    loader = next(i for i, h in enumerate(parser["validate"]["handlers"]) if "load_dict" in h)
    network = parser.get_parsed_content("network")
    assert parser.get_parsed_content("ema") is None
    assert parser.get_parsed_content("validate#network") is network
    assert parser.get_parsed_content(f"validate#handlers#{loader}#load_dict#model") is network


def test_dice_and_distances_match_hand_computation(bundle_root, tmp_path):
    pred, label = _masks()
    engine = _run_metrics(bundle_root, pred, label, spacing=[2.0, 2.0, 2.0], eval_dir=tmp_path)
    summary = write_report(engine, str(tmp_path))
    dice = [summary["val_dice"][t]["mean"] for t in ("CSF", "GM", "WM")]
    assert dice == pytest.approx([1.0, 2 * 4 / 16, 2 * 32 / 96])
    # CSF is perfect: zero distances. GM is shifted by one voxel (2 mm at this spacing): HD95 = 2 mm.
    assert summary["val_hd95"]["CSF"]["mean"] == pytest.approx(0.0)
    assert summary["val_hd95"]["GM"]["mean"] == pytest.approx(2.0)
    assert json.loads((tmp_path / "summary.json").read_text())["subjects"] == 1
    assert "| Dice | 1.0000 ± 0.0000 | 0.5000 ± 0.0000 |" in (tmp_path / "summary.md").read_text()


def test_monai_writes_the_per_subject_metrics(bundle_root, tmp_path):
    """MetricsSaver (evaluate.yaml): per-subject values named by the subject id, per-tissue summaries, overall Dice."""
    pred, label = _masks()
    _run_metrics(bundle_root, pred, label, spacing=[2.0, 2.0, 2.0], eval_dir=tmp_path)
    dice = [1.0, 2 * 4 / 16, 2 * 32 / 96]  # CSF exact, GM overlap 4 of 8 + 8, WM 32 of 64 + 32
    rows = _read_csv(tmp_path / "val_dice_raw.csv")
    assert rows[0] == ["filename", "class0", "class1", "class2", "mean"]  # class0..2: CSF, GM, WM
    assert len(rows) == 2 and rows[1][0] == "s1"
    assert [float(v) for v in rows[1][1:]] == pytest.approx([*dice, np.mean(dice)], abs=1e-4)
    hd95 = _read_csv(tmp_path / "val_hd95_raw.csv")
    assert [float(v) for v in hd95[1][1:3]] == pytest.approx([0.0, 2.0])  # mm at 2 mm spacing
    summary = {r[0]: r[1:] for r in _read_csv(tmp_path / "val_dice_summary.csv")}
    assert summary["class"] == ["mean", "std", "median", "min", "max"]
    assert [float(summary[f"class{t}"][0]) for t in range(3)] == pytest.approx(dice, abs=1e-4)
    assert _read_csv(tmp_path / "metrics.csv")[0][0] == "val_mean_dice"
    assert float(_read_csv(tmp_path / "metrics.csv")[0][1]) == pytest.approx(np.mean(dice))


def test_without_a_subject_id_the_image_file_names_the_row(bundle_root, tmp_path):
    pred, label = _masks()
    _run_metrics(bundle_root, pred, label, spacing=[1.0, 1.0, 1.0], eval_dir=tmp_path, subject=None)
    assert _read_csv(tmp_path / "val_asd_raw.csv")[1][0] == "/data/s1_t1.nii.gz"


def test_ignored_voxels_count_neither_way():
    pred, label = _masks()
    label[..., 7, 7, 7] = IGNORE_LABEL
    pred[..., 7, 7, 7] = 3  # would be a false positive for WM if not ignored
    out = MaskIgnoredd(keys=["pred", "label"])({"pred": pred[0], "label": label[0]})
    assert out["pred"][0, 7, 7, 7] == 0 and out["label"][0, 7, 7, 7] == 0
    assert torch.equal(out["pred"][0, :7], pred[0, 0, :7])


def test_channel_argmax_gives_monai_s_argmax_labels_ties_and_meta_data():
    from monai.transforms import AsDiscreted

    probs = torch.randint(0, 3, (4, 6, 5, 7)).float()  # many ties: the first largest channel wins
    probs[:, 0, 0, 0] = torch.tensor([0.0, 2.0, 2.0, 1.0])  # channels 1 and 2 tie: label 1
    pred = MetaTensor(probs, affine=torch.diag(torch.tensor([2.0, 1.0, 1.5, 1.0])), meta={"filename_or_obj": "s1"})
    ours = ChannelArgmaxd(keys="pred")({"pred": pred})["pred"]
    monai = AsDiscreted(keys="pred", argmax=True)({"pred": pred.clone()})["pred"]
    assert ours.shape == (1, 6, 5, 7) and ours.dtype == monai.dtype == torch.float32
    assert torch.equal(ours.as_tensor(), monai.as_tensor()) and ours[0, 0, 0, 0] == 1
    assert torch.equal(ours.affine, pred.affine) and ours.meta["filename_or_obj"] == "s1"


def test_empty_split_is_reported():
    with pytest.raises(ValueError, match="'testing' split is empty"):
        check_split([], "testing")


def _anisotropic_subject(folder):
    """A label on a 1 x 1 x 3 mm grid and images whose T1 makes the oracle network predict ``pred``: GM one slice
    (3 mm) too high, WM one voxel (1 mm) too wide."""
    label = np.zeros((32, 32, 12), np.uint8)
    label[4:28, 4:28, 2:10] = 1
    label[8:24, 8:24, 3:9] = 2
    label[10:20, 10:22, 4:8] = 3
    pred = label.copy()
    pred[8:24, 8:24, 3] = 1
    pred[8:24, 8:24, 9] = 2
    pred[10:21, 10:22, 4:8] = 3
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    volumes = {"t1": pred * 100.0, "t2": (pred > 0) * 50.0, "label": label}
    for name, volume in volumes.items():
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(folder / f"s1_{name}.nii.gz"))
    return pred, label, {"subject": "s1", **{k: str(folder / f"s1_{k}.nii.gz") for k in volumes}}


def test_metrics_on_the_label_grid(bundle_root, tmp_path, monkeypatch):
    """The prediction is inverted to the label's anisotropic grid and scored there, distances at its spacing."""
    pred, label, subject = _anisotropic_subject(tmp_path)
    write_oracle_checkpoint(tmp_path / "oracle.pt")
    monkeypatch.chdir(bundle_root)
    run(
        "evaluating", config_file=CONFIGS, dataset_format="datalist",
        **{"data#datalist": {"training": [], "testing": [subject]}}, eval_dir=str(tmp_path / "eval"),
        ckpt_path=str(tmp_path / "oracle.pt"), network_def=ORACLE_NET,
        **{"segmenter#val_roi_size": [32, 32, 32], "runtime#num_workers": 0},
    )  # fmt: skip
    measured = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]
    p, y = (one_hot(torch.as_tensor(v[None, None]), 4) for v in (pred, label))
    expected = {
        "val_dice": DiceMetric(include_background=False)(p, y),
        "val_hd95": HausdorffDistanceMetric(include_background=False, percentile=95)(p, y, spacing=[1.0, 1.0, 3.0]),
        "val_asd": SurfaceDistanceMetric(include_background=False, symmetric=True)(p, y, spacing=[1.0, 1.0, 3.0]),
    }
    for name, values in expected.items():
        got = [measured[name][t]["mean"] for t in ("CSF", "GM", "WM")]
        assert got == pytest.approx(values[0].tolist(), abs=1e-5), name
    assert measured["val_hd95"]["CSF"]["mean"] == pytest.approx(3.0)  # GM's inner surface one slice off: 3 mm
    assert measured["val_hd95"]["WM"]["mean"] == pytest.approx(1.0)  # one voxel wider in-plane: 1 mm
    for name, values in expected.items():  # MetricsSaver's per-subject rows, named by the datalist's subject id
        (row,) = _read_csv(tmp_path / "eval" / f"{name}_raw.csv")[1:]
        assert row[0] == "s1" and [float(v) for v in row[1:4]] == pytest.approx(values[0].tolist(), abs=1e-4), name


def _folder_dataset(folder, n=8):
    """Subjects of the folder format (empty files: splitting only lists them)."""
    folder.mkdir()
    for i in range(n):
        for suffix in ("_T1.nii.gz", "_T2.nii.gz", "_label.nii.gz"):
            (folder / f"s{i}{suffix}").touch()


def _evaluation_parser(bundle_root, tmp_path, **overrides):
    parser = ConfigParser()
    parser.read_config([str(bundle_root / c) for c in CONFIGS])
    parser.update({"bundle_root": str(bundle_root), "dataset_format": "folder", "dataset_dir": str(tmp_path / "data"),
                   "output_dir": str(tmp_path / "runs"), "eval_dir": str(tmp_path / "eval"), **overrides})  # fmt: skip
    return parser


def test_test_subjects_come_from_the_runs_split(bundle_root, tmp_path, capsys):
    """Other --num_labeled/--num_val at evaluation neither change the test subjects nor leak training ones."""
    _folder_dataset(tmp_path / "data")
    split = build_datalist(tmp_path / "data", "folder", ["t1", "t2"], 4, 2, split_file=tmp_path / "runs" / "split.json")
    parser = _evaluation_parser(bundle_root, tmp_path, num_labeled=2, num_val=1)
    tested = parser.get_parsed_content("validate#dataset#data")
    assert [s["subject"] for s in tested] == [s["subject"] for s in split["testing"]]
    assert f"Evaluating the split of {tmp_path / 'runs' / 'split.json'}" in capsys.readouterr().out


def test_without_a_split_file_the_dataset_is_split_again(bundle_root, tmp_path, capsys):
    _folder_dataset(tmp_path / "data")
    parser = _evaluation_parser(bundle_root, tmp_path, num_labeled=4, num_val=2)
    tested = parser.get_parsed_content("validate#dataset#data")
    assert len(tested) == 2 and "No split file" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "split.json").read_text())["testing"] == tested


def test_monai_label_studies_are_checked_as_class_indices(bundle_root, tmp_path):
    """Evaluating MONAI Label studies (validate#dataset#data, labels 0..3): the label codes and the input check
    follow the evaluated data, not --dataset_format, and the dataset folder is never read."""
    label = np.zeros((24, 24, 12), np.uint8)
    label[4:20, 4:20, 2:10] = 1
    label[8:16, 8:16, 4:8] = 3
    image = np.stack([label * 100.0, label * 50.0], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "case.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "case_label.nii.gz"))
    studies = [{"image": str(tmp_path / "case.nii.gz"), "label": str(tmp_path / "case_label.nii.gz")}]
    parser = _evaluation_parser(bundle_root, tmp_path, dataset_format="phantom", **{"validate#dataset#data": studies})
    assert parser.get_parsed_content("data#label_map") == ([0, 1, 2, 3, 255], [0, 1, 2, 3, 255])
    parser.get_parsed_content("run#1")  # check_datalist: labels 1 and 3 are valid class indices
    assert not (tmp_path / "data").exists()
