"""Bad input gets a one-line error naming the file and the problem, before any long work starts (issue 5).

Unit tests of ``scripts.checks`` on tiny files, and end-to-end runs of the user's commands asserting that
stderr ends with one ``ERROR: ...`` line, holds no traceback, and that the traceback is in the error log.
"""

import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.checks import (
    CheckedCheckpointLoader,
    InputError,
    MissingInputError,
    check_datalist,
    check_weights,
    find_input_error,
)
from scripts.data import datasets as ds
from scripts.networks import Segmenter

MODS = ["t1", "t2"]
ISEG = ds.label_mapping("iseg")[0]
SHAPE = (16, 16, 16)


def _save(path, data, affine=None, analyze=False):
    image_class = nib.AnalyzeImage if analyze else nib.Nifti1Image
    nib.save(image_class(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _tissues():
    """A 16^3 label map in iSEG codes: background, CSF shell, GM, WM core."""
    label = np.zeros(SHAPE, np.uint8)
    label[2:14, 2:14, 2:14] = 10
    label[4:12, 4:12, 4:12] = 150
    label[6:10, 6:10, 6:10] = 250
    return label


def _subject(folder, name="s1", **replace):
    """Files ``<name>_T1/_T2/_label.nii.gz`` of one valid subject (``replace``: key -> (data, affine) to write
    instead); returns its datalist entry."""
    folder.mkdir(parents=True, exist_ok=True)
    label = _tissues()
    files = {"t1": label.astype(np.float32), "t2": (255 - label).astype(np.float32) * (label > 0), "label": label}
    entry = {"subject": name}
    for key, data in files.items():
        data, affine = replace.get(key, (data, None))
        entry[key] = _save(folder / f"{name}_{key.upper() if key != 'label' else key}.nii.gz", data, affine)
    return entry


def _check(entries, codes=ISEG):
    check_datalist(entries, MODS, label_codes=codes, label_set_name="iseg", num_workers=2)


def _error(entries, codes=ISEG) -> str:
    with pytest.raises(InputError) as error:
        _check(entries, codes)
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- valid inputs


def test_valid_inputs_pass(tmp_path):
    """No false alarms: a valid subject, float noise in the affine, a 4D 'image' with one channel per modality,
    a 4D modality file holding one volume; a bad label is ignored without label codes (inference)."""
    noisy = np.eye(4)
    noisy[:3, 3] = 1e-5
    good = _subject(tmp_path, "a", t2=((255 - _tissues()).astype(np.float32), noisy))
    image = {"subject": "b", "image": _save(tmp_path / "b.nii.gz", np.stack([_tissues()] * 2, -1).astype(np.float32))}
    one_volume = _subject(tmp_path, "c", t1=(_tissues()[..., None].astype(np.float32), None))
    _check([good, image, one_volume])
    bad_label = _subject(tmp_path, "d", label=(np.full(SHAPE, 11, np.uint8), None))
    _check([bad_label], codes=None)
    with pytest.raises(InputError):
        _check([bad_label])


# ---------------------------------------------------------------------------------------------- dataset folders


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(MissingInputError) as error:
        ds.find_subjects(tmp_path / "nowhere", "iseg", MODS)
    assert str(error.value) == f"Dataset folder not found: {tmp_path / 'nowhere'}"
    assert isinstance(error.value, FileNotFoundError)  # existing callers catch FileNotFoundError
    with pytest.raises(MissingInputError, match="nowhere"):  # build_datalist keeps the class
        ds.build_datalist(tmp_path / "nowhere", "iseg", MODS, -1, 0)


def test_folder_without_subjects(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"No iseg subjects found in .*empty: expected files subject-<N>-T1.hdr"):
        ds.find_subjects(tmp_path / "empty", "iseg", MODS)


def test_missing_modality(tmp_path):
    _save(tmp_path / "subject-1-T1.hdr", _tissues().astype(np.int16), analyze=True)
    with pytest.raises(InputError, match=r"subject-1 is missing t2: expected .*subject-1-T2.hdr"):
        ds.find_subjects(tmp_path, "iseg", MODS)
    entry = _subject(tmp_path, "s1")
    del entry["t2"]
    assert "subject s1 has no t2 image" in _error([entry])


# ---------------------------------------------------------------------------------------------- one grid


def test_shape_mismatch(tmp_path):
    entry = _subject(tmp_path, t2=(np.ones((16, 16, 20), np.float32), None))
    message = _error([entry])
    assert message.startswith(f"subject s1: {entry['t2']} has shape (16, 16, 20) but {entry['t1']} has (16, 16, 16)")
    assert "co-registered and resampled to one voxel grid" in message


def test_affine_mismatch(tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = [2.0, 0.0, 0.0]
    entry = _subject(tmp_path, label=(_tissues(), shifted))
    message = _error([entry])
    assert f"{entry['label']} has another affine than {entry['t1']} (up to 2 mm apart)" in message


# ---------------------------------------------------------------------------------------------- unreadable files


def test_truncated_nifti(tmp_path):
    entry = _subject(tmp_path)
    data = open(entry["t2"], "rb").read()
    open(entry["t2"], "wb").write(data[: len(data) // 2])
    message = _error([entry])
    assert message.startswith(f"{entry['t2']} cannot be read (EOFError: Compressed file ended")
    assert "truncated or corrupt" in message


@pytest.mark.parametrize("damage", ["truncated image", "garbage header"])
def test_corrupt_analyze(tmp_path, damage):
    entry = _subject(tmp_path)
    entry["t1"] = _save(tmp_path / "subject-1-T1.hdr", _tissues().astype(np.int16), analyze=True)
    if damage == "truncated image":
        (tmp_path / "subject-1-T1.img").write_bytes((tmp_path / "subject-1-T1.img").read_bytes()[:1000])
        reason = f"OSError: Expected 8192 bytes, got 1000 bytes from {tmp_path / 'subject-1-T1.img'}"
    else:
        (tmp_path / "subject-1-T1.hdr").write_bytes(b"not a header" * 10)
        reason = "ImageFileError: Cannot work out file type"
    assert _error([entry]).startswith(f"{entry['t1']} cannot be read ({reason}")


# ---------------------------------------------------------------------------------------------- dimensions


def test_2d_image(tmp_path):
    entry = _subject(tmp_path, t1=(np.ones((16, 16), np.float32), None))
    assert _error([entry]) == f"{entry['t1']} is a 2D image (shape (16, 16)): a 3D volume is needed"


def test_4d_image_with_wrong_channel_count(tmp_path):
    image = _save(tmp_path / "three.nii.gz", np.stack([_tissues()] * 3, -1).astype(np.float32))
    message = _error([{"subject": "x", "image": image}])
    assert message.startswith(f"{image} has 3 channels (shape (16, 16, 16, 3)) but the 2 modalities need 2")
    entry = _subject(tmp_path, t2=(np.stack([_tissues()] * 2, -1).astype(np.float32), None))
    expected = f"{entry['t2']} holds 2 volumes (shape (16, 16, 16, 2)): each image file must hold one 3D volume"
    assert _error([entry]) == expected


# ---------------------------------------------------------------------------------------------- values


def test_label_value_outside_the_format(tmp_path):
    label = _tissues()
    label[0, 0, :3] = 11
    entry = _subject(tmp_path, label=(label, None))
    assert _error([entry]).startswith(
        f"{entry['label']} has label values [11] outside the iseg set [0, 10, 150, 250]: check --dataset_format"
    )


@pytest.mark.parametrize(
    "config, preprocessing", [("train", "data#preprocessing"), ("synthesize", "preprocessing")]
)
def test_preprocessing_stops_at_label_codes_outside_the_format(bundle_root, tmp_path, config, preprocessing):
    """MapLabelValued passes unknown codes unchanged: the preprocessing itself names the file and the codes, so that
    they do not reach the loss when ``check_inputs`` is off."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    label = _tissues()
    label[0, 0, :3] = 11
    label[0, 1, 0] = 3
    entry = _subject(tmp_path, label=(label, None))
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / f"{config}.yaml"))
    parser["dataset_format"] = "iseg"
    if "data" in parser:
        parser["data#label_format"] = "iseg"  # train.yaml derives it from the datalist
    transforms = Compose(parser.get_parsed_content(preprocessing, lazy=False))
    assert set(torch.unique(transforms(_subject(tmp_path / "valid"))["label"]).tolist()) == {0, 1, 2, 3}
    with pytest.raises(Exception) as error:
        transforms(entry)
    assert str(find_input_error(error.value)).startswith(
        f"{entry['label']} has label values [3, 11] outside the iseg set [0, 10, 150, 250]: check --dataset_format"
    )


@pytest.mark.parametrize("value, counts", [(np.nan, "3 NaN and 0 infinite"), (np.inf, "0 NaN and 3 infinite")])
def test_nan_and_infinite_voxels(tmp_path, value, counts):
    t1 = _tissues().astype(np.float32)
    t1[5, 5, 5:8] = value
    entry = _subject(tmp_path, t1=(t1, None))
    assert _error([entry]).startswith(f"{entry['t1']} has {counts} voxels: replace them")


def test_empty_volume(tmp_path):
    entry = _subject(tmp_path, "s1")
    empty = _subject(tmp_path, "s2", t2=(np.zeros(SHAPE, np.float32), None))
    assert _error([entry, empty]).startswith(f"{empty['t2']} is empty (all voxels are 0)")


def test_bad_brain_masks(tmp_path):
    """A brain mask on another grid, unreadable or empty: one line naming the mask file (inference: no label codes).
    With the checks off, the mask transform still names a mask of another shape."""
    from monai.data import MetaTensor

    from scripts.transforms import OptionalMaskIntensityd

    entry = _subject(tmp_path)
    entry["mask"] = _save(tmp_path / "s1_mask.nii.gz", np.ones((16, 16, 20), np.uint8))
    message = _error([entry], codes=None)
    assert message.startswith(f"subject s1: {entry['mask']} has shape (16, 16, 20) but {entry['t1']} has (16, 16, 16)")
    _save(entry["mask"], np.zeros(SHAPE, np.uint8))
    message = _error([entry], codes=None)
    assert message == f"{entry['mask']} is empty (all voxels are 0): export or convert this brain mask again"
    open(entry["mask"], "wb").write(b"not a NIfTI file")
    assert _error([entry], codes=None).startswith(f"{entry['mask']} cannot be read (")
    _save(entry["mask"], (_tissues() > 0).astype(np.uint8))
    _check([entry], codes=None)

    image = MetaTensor(torch.ones(2, *SHAPE))
    mask = MetaTensor(torch.ones(1, 16, 16, 20), meta={"filename_or_obj": "s1_mask.nii.gz"})
    masking = OptionalMaskIntensityd("image", mask_key="mask")
    with pytest.raises(InputError, match=r"brain mask s1_mask.nii.gz has shape \(16, 16, 20\) but the image \(16, 16"):
        masking({"image": image, "mask": mask})
    assert masking({"image": image})["image"] is image  # no mask: as it is


# ---------------------------------------------------------------------------------------------- checkpoints


def _tiny(features=(4, 8, 16, 32), in_channels=2):
    return Segmenter(in_channels, 4, features=features)


def test_checkpoint_formats_load(tmp_path):
    """A plain state_dict (models/model.pt) and the older {"model": state_dict} both load."""
    source = _tiny()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        state = check_weights(tmp_path / name, _tiny())
        assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save(_tiny(features=(4, 8, 16, 32)).state_dict(), tmp_path / "small.pt")
    with pytest.raises(InputError) as error:
        check_weights(tmp_path / "small.pt", _tiny(features=(8, 16, 32, 64)))
    message = str(error.value)
    assert message.startswith(f"checkpoint {tmp_path / 'small.pt'} does not fit the network (0 missing, 0 unexpected")
    assert "was it trained with other network_features, modalities or num_classes?" in message
    torch.save(torch.nn.Conv3d(2, 4, 1).state_dict(), tmp_path / "conv.pt")
    with pytest.raises(InputError, match=r"conv.pt does not fit the network \(\d+ missing, 2 unexpected"):
        CheckedCheckpointLoader(str(tmp_path / "conv.pt"), {"model": _tiny()})  # the configs' handler


def test_checkpoint_with_missing_keys(tmp_path):
    state = _tiny().state_dict()
    removed = next(iter(state))
    del state[removed]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(InputError, match=rf"\(1 missing, 0 unexpected, 0 resized tensors, e.g. {removed} is missing\)"):
        check_weights(tmp_path / "partial.pt", _tiny())


def test_checkpoint_missing_corrupt_or_not_weights(tmp_path):
    with pytest.raises(MissingInputError, match=r"checkpoint .*none.pt not found: train first"):
        check_weights(tmp_path / "none.pt", _tiny())
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 50)
    with pytest.raises(InputError, match=r"junk.pt cannot be read \(\w+Error: [^()]*\): the file is truncated or not"):
        check_weights(tmp_path / "junk.pt", _tiny())
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other.pt is not a network's weights: .*found keys \['epoch', 'lr'\]"):
        check_weights(tmp_path / "other.pt", _tiny())


def test_existing_output_and_output_in_the_input_folder(tmp_path):
    from scripts.checks import check_outputs

    entry = _subject(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s1_seg.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError) as err:
        check_outputs([entry], tmp_path / "out", ["seg"], ".nii.gz")
    assert isinstance(err.value, InputError) and str(err.value).startswith(f"{tmp_path / 'out' / 's1_seg.nii.gz'} already exists")
    with pytest.raises(InputError, match="holds input files"):
        check_outputs([entry], tmp_path / "in", ["seg"], ".nii.gz", overwrite=True)


def test_error_log_never_goes_into_an_input_folder(tmp_path, capsys, monkeypatch):
    """`--output_dir` pointing at the inputs: the error is reported, its log goes to a temporary file instead."""
    from scripts import checks

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test

    entry = _subject(tmp_path / "in")
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    checks.install_excepthook(tmp_path / "in" / "error.log")
    try:
        checks.check_outputs([entry], tmp_path / "in", ["seg"], ".nii.gz")
    except InputError as e:
        checks._report(type(e), e, e.__traceback__)
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"ERROR: output_dir {tmp_path / 'in'} holds input files") and "mri_gan_error_" in line
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_datalist_json_that_is_not_json(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text('{"training": [')
    with pytest.raises(InputError, match=re.escape(f"{path} is not valid JSON")):
        ds.load_datalist(path, MODS)


def test_resume_without_or_with_a_corrupt_last_checkpoint(tmp_path):
    from ignite.engine import Engine

    from scripts.checkpoint import resume

    trainer = Engine(lambda e, b: None)
    with pytest.raises(MissingInputError, match="nothing to resume"):
        resume(trainer, {}, tmp_path / "last.pt")
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="last.pt cannot be read .*: the file is corrupt"):
        resume(trainer, {}, tmp_path / "last.pt")
    torch.save({"trainer": {}}, tmp_path / "last.pt")
    with pytest.raises(InputError, match="the checkpoint has no network"):
        resume(trainer, {"network": torch.nn.Linear(1, 1)}, tmp_path / "last.pt")


def test_resume_of_a_finished_run_is_refused_and_a_longer_schedule_continues_it(tmp_path):
    from ignite.engine import Engine

    from scripts.checkpoint import check_resumable, resume

    finished = Engine(lambda e, b: None)
    finished.run(range(2), max_epochs=3)  # 3 epochs of 2 iterations
    torch.save({"trainer": finished.state_dict()}, tmp_path / "last.pt")

    def fresh(max_epochs):
        trainer = Engine(lambda e, b: None)
        trainer.state.max_epochs, trainer.state.epoch_length = max_epochs, 2
        return trainer

    with pytest.raises(InputError, match=r"finished run \(all 3 epochs, iteration 6\): nothing to resume"):
        resume(fresh(3), {}, tmp_path / "last.pt")
    with pytest.raises(InputError, match=r"finished run \(all 3 epochs, iteration 6\): nothing to resume"):
        check_resumable(tmp_path / "last.pt", 3)  # from the file alone, before any data is read
    with pytest.raises(InputError, match=r"is at epoch 3, beyond --schedule#epochs 2"):
        check_resumable(tmp_path / "last.pt", 2)
    check_resumable(tmp_path / "last.pt", 5)
    longer = fresh(5)
    assert resume(longer, {}, tmp_path / "last.pt") == 6
    assert (longer.state.epoch, longer.state.max_epochs) == (3, 5)
    with pytest.raises(MissingInputError, match="nothing to resume"):
        check_resumable(tmp_path / "other.pt", 5)


def test_training_refuses_to_resume_a_finished_run_before_reading_any_data(bundle_root, tmp_path):
    """train.yaml's run checks last.pt first: the finished run is named although the dataset folder does not exist
    (read any earlier, it would be the error)."""
    from ignite.engine import Engine

    finished = Engine(lambda e, b: None)
    finished.run(range(2), max_epochs=2)
    (tmp_path / "models").mkdir()
    torch.save({"trainer": finished.state_dict()}, tmp_path / "models" / "last.pt")
    lines = _bundle_fails(
        bundle_root, "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(tmp_path / "missing"),
        "--dataset_format", "folder", "--iterations", "4", "--schedule#epoch_length", "2", "--resume", "true",
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert "last.pt is a finished run (all 2 epochs, iteration 4): nothing to resume" in lines[-1], lines[-1]


def test_input_error_found_in_the_chain():
    """MONAI's config parser wraps errors in RuntimeError("Failed to evaluate ..."): the hook looks through it."""
    try:
        try:
            raise InputError("bad.nii.gz is empty\n(all voxels are 0)")
        except InputError as e:
            raise RuntimeError("Failed to evaluate") from e
    except RuntimeError as wrapped:
        assert str(find_input_error(wrapped)) == "bad.nii.gz is empty (all voxels are 0)"
    assert find_input_error(RuntimeError("other")) is None


# ---------------------------------------------------------------------------------------------- user's commands


def _bundle_fails(bundle_root, *args) -> list[str]:
    """Run ``python -m monai.bundle run ...``; assert it fails with one ERROR line and no traceback; return the
    lines of stderr."""
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=bundle_root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("ERROR: ") and sum(line.startswith("ERROR: ") for line in lines) == 1
    return lines


def test_inference_with_checkpoint_of_another_architecture(bundle_root, tmp_path):
    _subject(tmp_path / "data", "case01")
    torch.save(_tiny(in_channels=1).state_dict(), tmp_path / "small.pt")  # T1 weights for T1+T2 inference
    out = tmp_path / "out"
    lines = _bundle_fails(
        bundle_root, "inference", "--config_file", "configs/inference.yaml", "--dataset_dir", str(tmp_path / "data"),
        "--dataset_format", "folder", "--output_dir", str(out), "--ckpt_path", str(tmp_path / "small.pt"),
    )  # fmt: skip
    assert re.fullmatch(
        rf"ERROR: checkpoint {re.escape(str(tmp_path / 'small.pt'))} does not fit the network \(0 missing, 0 "
        r"unexpected, \d+ resized tensors, e.g. \S+ is \(4, 1, 3, 3, 3\), not \(4, 2, 3, 3, 3\)\): was it trained "
        r"with other network_features, modalities or num_classes\? "
        rf"\(full traceback: {re.escape(str(out / 'error.log'))}\)",
        lines[-1],
    ), lines[-1]
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "scripts.checks.InputError: checkpoint" in log  # and MONAI's wrapping error
    assert "RuntimeError: Failed to instantiate component 'scripts.checks.CheckedCheckpointLoader'" in log
    assert not list(out.glob("*.nii.gz"))


@pytest.mark.parametrize("check_inputs", ["true", "false"])  # false: the preprocessing finds the codes
def test_training_with_label_value_outside_the_format(bundle_root, tmp_path, check_inputs):
    data = tmp_path / "iseg"
    data.mkdir()
    for n in (1, 2, 3):  # 3: unlabelled
        label = _tissues()
        label[8, 8, 8] = 11 if n == 2 else 250
        images = {"T1": label.astype(np.int16), "T2": (255 - label).astype(np.int16), "label": label}
        images = {k: v for k, v in images.items() if n < 3 or k != "label"}
        for name, values in images.items():
            _save(data / f"subject-{n}-{name}.hdr", values, analyze=True)
    lines = _bundle_fails(
        bundle_root, "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(data),
        "--dataset_format", "iseg", "--num_labeled", "1", "--num_val", "1", "--output_dir", str(tmp_path / "runs"),
        "--ckpt_dir", str(tmp_path / "models"), "--runtime#num_workers", "0", "--data#check_inputs", check_inputs,
        "--iterations", "2", "--schedule#epoch_length", "1",
    )  # fmt: skip
    assert lines[-1] == (
        f"ERROR: {data / 'subject-2-label.hdr'} has label values [11] outside the iseg set [0, 10, 150, 250]: check "
        f"--dataset_format and the label file (full traceback: {tmp_path / 'runs' / 'error.log'})"
    )
    assert "Traceback" in (tmp_path / "runs" / "error.log").read_text()
    assert not (tmp_path / "models").exists()  # stopped before any training


def test_inference_with_missing_dataset_folder(bundle_root, tmp_path):
    """An error of scripts.data.datasets, raised while MONAI evaluates the config, reaches the user as one line."""
    torch.save(_tiny().state_dict(), tmp_path / "small.pt")
    lines = _bundle_fails(
        bundle_root, "inference", "--config_file", "configs/inference.yaml", "--dataset_dir", str(tmp_path / "nowhere"),
        "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(tmp_path / "small.pt"),
    )  # fmt: skip
    assert lines[-1] == (
        f"ERROR: Dataset folder not found: {tmp_path / 'nowhere'} (full traceback: {tmp_path / 'out' / 'error.log'})"
    )


def test_synthesis_with_a_missing_label_map(bundle_root, tmp_path):
    """configs/synthesize.yaml reports its input errors as one line too."""
    source = _subject(tmp_path / "in")
    lines = _bundle_fails(
        bundle_root, "synthesize", "--config_file", "configs/synthesize.yaml",
        "--label_files", repr([str(tmp_path / "in" / "missing_label.nii.gz")]),
        "--source_files", repr([[source["t1"], source["t2"]]]), "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert lines[-1] == (
        f"ERROR: input file {tmp_path / 'in' / 'missing_label.nii.gz'} not found "
        f"(full traceback: {tmp_path / 'out' / 'error.log'})"
    )
