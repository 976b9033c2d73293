"""Tests of scripts.data.datasets on tiny fake datasets written in the real iSEG / MRBrainS / NIfTI / datalist layouts."""

import importlib.util
import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import MapLabelValued

from scripts.checks import InputError
from scripts.data import datasets as ds


def _nii(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, np.int16), np.eye(4)), str(path))
    return str(path)


def _analyze(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(path))
    return str(path)


def _iseg(root, labeled=(1, 2, 3), unlabeled=(10, 11)):
    for n in (*labeled, *unlabeled):
        for mod in ("T1", "T2"):
            _analyze(root / f"subject-{n}-{mod}.hdr")
        if n in labeled:
            _analyze(root / f"subject-{n}-label.hdr")
    return root


def _mrbrains13(root, train=(1, 2, 3), test=(1, 2)):
    for kind, ids in (("TrainingData", train), ("TestData", test)):
        for i in ids:
            for name in ("T1", "T1_IR", "T2_FLAIR", "T1_1mm"):
                _nii(root / kind / str(i) / f"{name}.nii")
            if kind == "TrainingData":
                _nii(root / kind / str(i) / "LabelsForTraining.nii")
                _nii(root / kind / str(i) / "LabelsForTesting.nii")
    return root


def _mrbrains18(root, train=("1", "14", "4"), test=("2",)):
    for i in (*train, *test):
        for name in ("reg_T1", "reg_IR", "FLAIR", "T1", "IR"):
            _nii(root / "training" / i / "pre" / f"{name}.nii.gz")
        if i in train:
            _nii(root / "training" / i / "segm.nii.gz")
    return root


def _subjects(entries):
    return [e["subject"] for e in entries]


# ---------------------------------------------------------------------------------------------------- label maps


@pytest.mark.parametrize(
    "fmt, values, expected",
    [
        ("iseg", [0, 10, 150, 250], [0, 1, 2, 3]),
        ("phantom", [250, 10, 0], [3, 1, 0]),
        ("mrbrains13", list(range(9)), [0, 2, 2, 3, 3, 1, 1, 255, 255]),
        ("mrbrains18", list(range(11)), [0, 2, 2, 3, 3, 1, 1, 255, 255, 255, 255]),
        ("folder", [0, 1, 2, 3, 255], [0, 1, 2, 3, 255]),
        ("datalist", [3, 2, 1, 0], [3, 2, 1, 0]),
    ],
)
def test_label_mapping_with_maplabelvalued(fmt, values, expected):
    orig, target = ds.label_mapping(fmt)
    out = MapLabelValued(keys="label", orig_labels=orig, target_labels=target)({"label": np.array(values)})
    np.testing.assert_array_equal(np.asarray(out["label"]), expected)
    assert ds.IGNORE_LABEL == 255


def test_modality_names_and_unknown_format():
    assert ds.modality_names("iseg") == ("t1", "t2")
    assert ds.modality_names("mrbrains18") == ("t1", "t1_ir", "flair")
    assert ds.modality_names("folder") is None
    with pytest.raises(ValueError, match="valid formats"):
        ds.label_mapping("brats")


# ---------------------------------------------------------------------------------------------------- discovery


def test_iseg_discovery_natural_order_and_paths(tmp_path):
    root = _iseg(tmp_path / "iSeg-2017")
    subjects = ds.find_subjects(root, "iseg", ["t1", "t2"])
    assert _subjects(subjects) == ["subject-1", "subject-2", "subject-3", "subject-10", "subject-11"]
    assert subjects[0] == {
        "subject": "subject-1",
        "t1": str(root / "subject-1-T1.hdr"),
        "t2": str(root / "subject-1-T2.hdr"),
        "label": str(root / "subject-1-label.hdr"),
    }
    assert "label" not in subjects[3] and list(subjects[3]) == ["subject", "t1", "t2"]
    assert list(ds.find_subjects(root, "iseg", "t2")[0]) == ["subject", "t2", "label"]


def test_iseg_2019_nested_folders_and_nifti(tmp_path):
    root = tmp_path / "iSEG-2019"
    _iseg(root / "iSeg-2019-Training", labeled=(1, 2), unlabeled=())
    _iseg(root / "iSeg-2019-Validation", labeled=(), unlabeled=(11,))
    for mod in ("T1", "T2"):  # a converted test subject, and macOS junk that must be skipped
        _nii(root / "iSeg-2019-Testing" / f"subject-24-{mod}.nii.gz")
        _nii(root / "__MACOSX" / "iSeg-2019-Testing" / f"subject-30-{mod}.nii.gz")
    subjects = ds.find_subjects(root, "iseg", ("t1", "t2"))
    assert _subjects(subjects) == ["subject-1", "subject-2", "subject-11", "subject-24"]
    assert subjects[2]["t2"] == str(root / "iSeg-2019-Validation" / "subject-11-T2.hdr")
    assert subjects[3]["t1"] == str(root / "iSeg-2019-Testing" / "subject-24-T1.nii.gz")
    assert [("label" in s) for s in subjects] == [True, True, False, False]


def test_mrbrains13_layout(tmp_path):
    root = _mrbrains13(tmp_path / "MRBrainS13DataNii")
    subjects = ds.find_subjects(root, "mrbrains13", ["t1", "t1_ir", "flair"])
    assert _subjects(subjects) == ["TestData-1", "TestData-2", "TrainingData-1", "TrainingData-2", "TrainingData-3"]
    assert subjects[2] == {
        "subject": "TrainingData-1",
        "t1": str(root / "TrainingData/1/T1.nii"),
        "t1_ir": str(root / "TrainingData/1/T1_IR.nii"),
        "flair": str(root / "TrainingData/1/T2_FLAIR.nii"),
        "label": str(root / "TrainingData/1/LabelsForTraining.nii"),
    }
    assert all("label" not in s for s in subjects[:2])
    # the TrainingData folder alone works too
    assert _subjects(ds.find_subjects(root / "TrainingData", "mrbrains13", ["t1"]))[0] == "TrainingData-1"


def test_mrbrains18_layout(tmp_path):
    root = _mrbrains18(tmp_path / "MRBrainS18")
    subjects = ds.find_subjects(root, "mrbrains18", ["flair", "t1"])
    assert _subjects(subjects) == ["training-1", "training-2", "training-4", "training-14"]
    sub = root / "training" / "14"
    assert subjects[3] == {
        "subject": "training-14",
        "flair": str(sub / "pre/FLAIR.nii.gz"),
        "t1": str(sub / "pre/reg_T1.nii.gz"),
        "label": str(sub / "segm.nii.gz"),
    }
    assert "label" not in subjects[1]
    assert ds.find_subjects(root, "mrbrains18", ["t1_ir"])[0]["t1_ir"].endswith("pre/reg_IR.nii.gz")


def test_folder_default_and_custom_suffixes(tmp_path):
    for s in ("a2", "a10"):
        _nii(tmp_path / "d" / f"{s}_T1.nii.gz")
        _nii(tmp_path / "d" / f"{s}_FLAIR.nii.gz")
    _nii(tmp_path / "d" / "a10_label.nii.gz")
    subjects = ds.find_subjects(tmp_path / "d", "folder", ["t1", "flair"])
    assert _subjects(subjects) == ["a2", "a10"]
    assert subjects[1] == {
        "subject": "a10",
        "t1": str(tmp_path / "d/a10_T1.nii.gz"),
        "flair": str(tmp_path / "d/a10_FLAIR.nii.gz"),
        "label": str(tmp_path / "d/a10_label.nii.gz"),
    }
    assert "label" not in subjects[0]

    for s in ("case1", "case2"):  # overlapping suffixes: the longest one wins
        _nii(tmp_path / "c" / f"{s}-t1.nii")
        _nii(tmp_path / "c" / f"{s}-ir-t1.nii")
        _nii(tmp_path / "c" / f"{s}.seg.nii")
    _nii(tmp_path / "c" / "case2_mask.nii")  # a brain mask for one subject only
    suffixes = {"t1": "-t1.nii", "ir": "-ir-t1.nii", "label": ".seg.nii", "mask": "_mask.nii"}
    subjects = ds.find_subjects(tmp_path / "c", "folder", ["t1", "ir"], suffixes=suffixes)
    assert subjects == [
        {
            "subject": "case1",
            "t1": str(tmp_path / "c/case1-t1.nii"),
            "ir": str(tmp_path / "c/case1-ir-t1.nii"),
            "label": str(tmp_path / "c/case1.seg.nii"),
        },
        {
            "subject": "case2",
            "t1": str(tmp_path / "c/case2-t1.nii"),
            "ir": str(tmp_path / "c/case2-ir-t1.nii"),
            "label": str(tmp_path / "c/case2.seg.nii"),
            "mask": str(tmp_path / "c/case2_mask.nii"),
        },
    ]

    # as the command line leaves it: --suffixes "{t1: -t1.nii, ...}" reaches the config as a string (YAML)
    as_typed = "{t1: -t1.nii, ir: -ir-t1.nii, label: .seg.nii, mask: _mask.nii}"
    assert ds.find_subjects(tmp_path / "c", "folder", ["t1", "ir"], suffixes=as_typed) == subjects
    with pytest.raises(InputError, match=r"--suffixes '_T1.nii.gz' is not a mapping"):
        ds.find_subjects(tmp_path / "c", "folder", ["t1"], suffixes="_T1.nii.gz")


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ds.find_subjects(tmp_path / "nowhere", "iseg", ["t1"])
    (tmp_path / "empty").mkdir()
    for fmt, pattern in (("iseg", "subject-<N>-T1.hdr"), ("mrbrains13", "T1_IR.nii"), ("folder", "_T1.nii.gz")):
        with pytest.raises(ValueError, match="empty") as err:
            ds.find_subjects(tmp_path / "empty", fmt, ["t1"])
        assert fmt in str(err.value) and pattern in str(err.value)


def test_missing_modality_file_is_an_error(tmp_path):
    root = _iseg(tmp_path / "iseg", labeled=(1, 2), unlabeled=())
    (root / "subject-2-T2.hdr").unlink()
    with pytest.raises(ValueError, match="subject-2.*subject-2-T2.hdr"):
        ds.find_subjects(root, "iseg", ["t1", "t2"])
    assert len(ds.find_subjects(root, "iseg", ["t1"])) == 2

    root = _mrbrains13(tmp_path / "mrb", train=(1,), test=(1,))
    (root / "TestData/1/T2_FLAIR.nii").unlink()
    with pytest.raises(ValueError, match="TestData-1.*T2_FLAIR.nii"):
        ds.find_subjects(root, "mrbrains13", ["t1", "flair"])

    _nii(tmp_path / "f" / "x_T1.nii.gz")
    with pytest.raises(ValueError, match="x.*x_T2.nii.gz"):
        ds.find_subjects(tmp_path / "f", "folder", ["t1", "t2"])


def test_analyze_header_without_image(tmp_path):
    root = _iseg(tmp_path, labeled=(1,), unlabeled=())
    (tmp_path / "subject-1-T1.img").unlink()
    with pytest.raises(ValueError, match="subject-1-T1.img"):
        ds.find_subjects(root, "iseg", ["t1"])


def test_unknown_modality(tmp_path):
    with pytest.raises(ValueError, match="'iseg'.*t1, t2"):
        ds.find_subjects(tmp_path, "iseg", ["flair"])
    with pytest.raises(ValueError, match="mrbrains13.*t1, t1_ir, flair"):
        ds.build_datalist(tmp_path, "mrbrains13", ["t2"], -1, 0)


def test_too_few_labelled_names_folder_and_counts(tmp_path):
    root = _iseg(tmp_path / "iseg", labeled=(1, 2, 3), unlabeled=(4,))
    with pytest.raises(ValueError, match=r"iseg.*1 validation \+ 3 training = 4.*only 3 of 4"):
        ds.build_datalist(root, "iseg", ["t1"], num_labeled=3, num_val=1)
    with pytest.raises(ValueError, match="4 validation"):
        ds.build_datalist(root, "iseg", ["t1"], num_labeled=-1, num_val=4)


# ---------------------------------------------------------------------------------------------------- splitting


def _fake_subjects(n_labeled=10, n_unlabeled=3):
    out = [{"subject": f"s{i}", "t1": f"/d/s{i}_T1", "label": f"/d/s{i}_L"} for i in range(n_labeled)]
    return out + [{"subject": f"u{i}", "t1": f"/d/u{i}_T1"} for i in range(n_unlabeled)]


def test_split_counts_disjoint_and_deterministic():
    subjects = _fake_subjects()
    split = ds.split_subjects(subjects, num_labeled=3, num_val=2, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"training": 3, "validation": 2, "testing": 5, "unlabeled": 3}
    names = [set(_subjects(split[k])) for k in ds.SPLITS]
    assert sum(len(n) for n in names) == len(set().union(*names)) == 13
    assert all("label" not in e for e in split["unlabeled"])
    assert all("label" in e for k in ("training", "validation", "testing") for e in split[k])
    assert ds.split_subjects(subjects, 3, 2, seed=0) == split
    assert ds.split_subjects(list(reversed(subjects)), 3, 2, seed=0) == split  # input order does not matter
    assert ds.split_subjects(subjects, 3, 2, seed=1) != split
    split["training"][0]["t1"] = "changed"  # entries are copies
    assert subjects[int(split["training"][0]["subject"][1:])]["t1"] != "changed"


@pytest.mark.parametrize("all_rest", [-1, None])
def test_split_num_labeled_all(all_rest):
    split = ds.split_subjects(_fake_subjects(), all_rest, num_val=2, seed=3)
    assert (len(split["training"]), len(split["validation"]), len(split["testing"])) == (8, 2, 0)
    assert ds.split_subjects(_fake_subjects(), 8, 2, seed=3) == split



def test_split_num_test_fixes_test_set_and_unused_labelled_become_unlabelled():
    subjects = _fake_subjects()
    few = {n: ds.split_subjects(subjects, n, num_val=2, seed=0, num_test=2) for n in (1, 2, 6)}
    for n, split in few.items():
        assert len(split["training"]) == n and len(split["testing"]) == 2
        assert len(split["unlabeled"]) == 3 + (10 - 2 - 2 - n)
        assert all("label" not in e for e in split["unlabeled"])
        names = [set(_subjects(split[k])) for k in ds.SPLITS]
        assert sum(len(x) for x in names) == len(set().union(*names)) == 13
    assert few[1]["testing"] == few[2]["testing"] == few[6]["testing"]
    assert few[1]["validation"] == few[6]["validation"]
    assert set(_subjects(few[1]["training"])) < set(_subjects(few[2]["training"]))  # nested training sets
    # the last num_test of the shuffled order are the test subjects of the num_test=None split with 6 training
    assert few[6]["testing"] == ds.split_subjects(subjects, 6, 2, seed=0)["testing"]
    with pytest.raises(ValueError, match="2 testing"):
        ds.split_subjects(subjects, 7, num_val=2, seed=0, num_test=2)


def test_num_test_minus_one_tests_all_the_rest_and_lower_values_fail():
    """-1 is None's spelling on a command line (monai.bundle run drops None overrides)."""
    subjects = _fake_subjects()
    assert ds.split_subjects(subjects, 3, 2, seed=0, num_test=-1) == ds.split_subjects(subjects, 3, 2, seed=0)
    assert len(ds.split_subjects(subjects, 3, 2, seed=0, num_test=-1)["testing"]) == 10 - 2 - 3
    with pytest.raises(ValueError, match="num_test >= -1"):
        ds.split_subjects(subjects, 3, 2, seed=0, num_test=-2)


def test_train_config_holds_out_four_phantoms_for_testing_and_all_the_rest_of_a_dataset(bundle_root):
    """With --dataset_format phantom the split (2 labelled, 2 validation, 4 test of the phantom cohort) is the
    comparison's; the default data, the anatomy cohort, keep their own test renders and use the rest unlabelled
    (num_test 0); a real dataset's leftover labelled subjects all go to testing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    assert parser.get_parsed_content("num_test") == 0 and parser.get_parsed_content("num_labeled") == 2
    parser["dataset_format"] = "phantom"
    assert parser.get_parsed_content("num_test") == 4
    from tools.benchmark_comparison import COMMON, PHANTOM, PROFILES  # the main profile measures this very run

    assert parser.get_parsed_content("data#phantom") == PHANTOM
    for key, value in {**COMMON, **PROFILES["main"]}.items():
        assert parser.get_parsed_content(key) == value, key
    parser["dataset_format"] = "iseg"
    assert parser.get_parsed_content("num_test") == -1

# ---------------------------------------------------------------------------------------------------- datalists


def test_load_datalist_resolves_relative_paths(tmp_path):
    data = tmp_path / "data"
    _nii(data / "img" / "p1_t1.nii.gz")
    _nii(data / "img" / "p2_t1.nii.gz")
    _nii(data / "seg" / "p1.nii.gz")
    abs_t1 = _nii(tmp_path / "elsewhere" / "p3_t1.nii")
    _nii(data / "seg" / "p1_mask.nii.gz")
    spec = {
        "name": "x",
        "training": [{"t1": "img/p1_t1.nii.gz", "label": "seg/p1.nii.gz", "mask": "seg/p1_mask.nii.gz", "age": 3}],
        "unlabeled": [{"subject": "two", "t1": "./img/../img/p2_t1.nii.gz"}, {"t1": abs_t1}],
    }
    (data / "list.json").write_text(json.dumps(spec))
    lists = ds.load_datalist(data / "list.json", ["t1"])
    assert lists["validation"] == [] and lists["testing"] == []
    assert lists["training"] == [
        {"subject": "p1_t1", "t1": str(data / "img/p1_t1.nii.gz"), "label": str(data / "seg/p1.nii.gz"),
         "mask": str(data / "seg/p1_mask.nii.gz"), "age": 3}
    ]  # fmt: skip
    assert lists["unlabeled"] == [
        {"subject": "two", "t1": str(data / "img/p2_t1.nii.gz")},
        {"subject": "p3_t1", "t1": abs_t1},
    ]
    with pytest.raises(ValueError, match="'flair'"):
        ds.load_datalist(data / "list.json", ["t1", "flair"])
    for key in ("mask", "label"):
        spec["training"][0][key] = "seg/missing.nii.gz"
        (data / "list.json").write_text(json.dumps(spec))
        with pytest.raises(FileNotFoundError, match="'training' lists seg/missing.nii.gz, which does not exist"):
            ds.load_datalist(data / "list.json", ["t1"])


@pytest.mark.parametrize("num_val", [2, 0])
def test_split_file_round_trip(tmp_path, num_val):
    root = _iseg(tmp_path / "iseg", labeled=tuple(range(1, 9)), unlabeled=(11, 12))
    split_file = tmp_path / "runs" / "a" / "datalist.json"
    split = ds.build_datalist(root, "iseg", ["t1", "t2"], 3, num_val, seed=5, split_file=split_file)
    assert [len(split[k]) for k in ds.SPLITS] == [3, num_val, 5 - num_val, 2]
    assert json.loads(split_file.read_text()) == split
    assert os.listdir(split_file.parent) == ["datalist.json"]  # no temp file left behind
    for source in (split_file, split_file.parent):  # the JSON itself or the folder holding datalist.json
        assert ds.build_datalist(source, "datalist", ["t1", "t2"], 3, num_val, seed=99) == split
    assert ds.build_datalist(split_file, "datalist", ["t1", "t2"], -1, num_val) == split
    if num_val:  # a given validation list is kept; num_labeled truncates training
        kept = ds.build_datalist(split_file, "datalist", ["t1"], 1, 0)
        assert kept["validation"] == split["validation"]  # other keys (here t2) are kept as they are
        assert _subjects(kept["training"]) == _subjects(split["training"])[:1]
        assert kept["testing"] == split["testing"] and kept["unlabeled"] == split["unlabeled"]  # the rest left out
        with pytest.raises(ValueError, match="need 4 training"):
            ds.build_datalist(split_file, "datalist", ["t1"], 4, 0)
        # with num_test a number (the few-shot setting), the rest are held out for testing from the end, or unlabelled
        few = ds.build_datalist(split_file, "datalist", ["t1", "t2"], 1, 0, num_test=1)
        assert few["validation"] == split["validation"] and few["training"] == split["training"][:1]
        assert few["testing"] == split["testing"] + split["training"][2:]
        unused = [{k: v for k, v in e.items() if k != "label"} for e in split["training"][1:2]]
        assert few["unlabeled"] == sorted(split["unlabeled"] + unused, key=ds._subject_key)
        assert all("label" not in e for e in few["unlabeled"])
        with pytest.raises(ValueError, match="need 2 training \\+ 2 testing"):
            ds.build_datalist(split_file, "datalist", ["t1"], 2, 0, num_test=2)


def test_datalist_without_validation_is_split(tmp_path):
    entries = [
        {"subject": f"s{i}", "t1": _nii(tmp_path / f"s{i}.nii"), "label": _nii(tmp_path / f"l{i}.nii")}
        for i in range(6)
    ]
    spec = {
        "training": entries,
        "testing": [{"t1": _nii(tmp_path / "t0.nii")}],
        "unlabeled": [{"t1": _nii(tmp_path / "u0.nii")}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(spec))
    split = ds.build_datalist(tmp_path, "datalist", ["t1"], num_labeled=2, num_val=1, seed=7)
    expected = ds.split_subjects(entries, 2, 1, seed=7)
    assert [len(v) for v in expected.values()] == [2, 1, 3, 0]
    expected["testing"].append({"subject": "t0", "t1": str(tmp_path / "t0.nii")})
    expected["unlabeled"] = [{"subject": "u0", "t1": str(tmp_path / "u0.nii")}]
    assert split == expected
    with pytest.raises(FileNotFoundError, match="nothere"):
        ds.build_datalist(tmp_path / "nothere", "datalist", ["t1"], -1, 0)


@pytest.mark.skipif(importlib.util.find_spec("scripts.data.phantom") is None, reason="scripts.data.phantom not available")
def test_phantom_branch_writes_and_reads_iseg_layout(tmp_path):
    small = {"num_labeled": 3, "num_unlabeled": 1, "shape": [40, 48, 56]}
    first = ds.build_datalist(tmp_path / "ph", "phantom", ["t1", "t2"], num_labeled=-1, num_val=1, phantom=small)
    assert len(first["validation"]) == 1 and len(first["training"]) == 2 and len(first["unlabeled"]) == 1
    assert all(e["t1"].startswith(str(tmp_path / "ph")) for e in first["training"])
    assert ds.build_datalist(tmp_path / "ph", "phantom", ["t1", "t2"], num_labeled=-1, num_val=1, phantom=small) == first


@pytest.mark.parametrize(
    "size, world_size, pad, shares",
    [
        (5, 2, True, [[0, 2, 4], [1, 3, 0]]),  # strided; the short share padded from the start: as many iterations
        (5, 2, False, [[0, 2, 4], [1, 3]]),  # validation: each entry in one share
        (4, 2, True, [[0, 2], [1, 3]]),
        (1, 3, False, [[0], [0], [0]]),  # fewer entries than processes: padded anyway, no process left empty
        (0, 2, True, [[], []]),
    ],
)
def test_rank_share_strides_and_pads_the_datalist(size, world_size, pad, shares):
    from scripts.data.partition import rank_share

    data = [{"subject": str(i)} for i in range(size)]
    found = [rank_share(data, pad, rank=r, world_size=world_size) for r in range(world_size)]
    assert found == [[data[i] for i in share] for share in shares]
