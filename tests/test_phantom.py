"""Tests of the procedural brain phantom generator ``scripts.phantom`` (small volumes, fast on 2 CPU cores)."""

import hashlib
import json
import subprocess
import sys

import itk
import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from scipy import ndimage

import scripts.phantom as phantom

SMALL = (48, 56, 64)
ADULT_SMALL, ADULT_SPACING = (64, 64, 20), (0.958, 0.958, 3.0)
ISEG_ARGS = {"num_labeled": 2, "num_unlabeled": 1, "shape": (32, 40, 48), "seed": 0}
MRBRAINS_ARGS = {"num_labeled": 2, "num_unlabeled": 1, "shape": (48, 48, 16), "seed": 0}
CSF, GM, WM = 1, 2, 3

itk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns that Analyze 7.5 is deprecated on every read


@pytest.fixture(scope="module")
def infant():
    return phantom.make_subject(SMALL, "infant", seed=0)


@pytest.fixture(scope="module")
def adult():
    return phantom.make_subject(ADULT_SMALL, "adult", seed=0, spacing=ADULT_SPACING)


@pytest.fixture(scope="module")
def iseg_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("iseg")
    phantom.write_iseg(out_dir, **ISEG_ARGS)
    return out_dir


@pytest.fixture(scope="module")
def mrbrains_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mrbrains13")
    phantom.write_mrbrains13(out_dir, **MRBRAINS_ARGS)
    return out_dir


def file_hashes(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_same_seed_gives_identical_subjects_and_other_seeds_differ(infant):
    again = phantom.make_subject(SMALL, "infant", seed=0)
    other = phantom.make_subject(SMALL, "infant", seed=1)
    for key in ("label", "structures"):
        np.testing.assert_array_equal(infant[key], again[key])
    for modality, image in infant["images"].items():
        assert image.tobytes() == again["images"][modality].tobytes()
        assert not np.array_equal(image, other["images"][modality])
    assert not np.array_equal(infant["label"], other["label"])


@pytest.mark.parametrize("preset", ["infant", "adult"])
def test_label_structures_and_background(preset, infant, adult):
    subject = {"infant": infant, "adult": adult}[preset]
    label, structures = subject["label"], subject["structures"]
    assert set(subject["images"]) == set(phantom.PRESETS[preset])
    assert label.dtype == structures.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2, 3}
    brain = label > 0
    fractions = np.bincount(label[brain], minlength=4)[1:] / brain.sum()
    assert np.all((fractions > 0.05) & (fractions < 0.85)), fractions
    assert 0.1 < brain.mean() < 0.7
    border = np.ones(label.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not brain[border].any(), "the brain must leave a margin of background"
    codes = {0: 0, 1: GM, 2: GM, 3: WM, 4: WM, 5: CSF, 6: CSF, 7: GM, 8: WM}
    expected_codes = {0, 1, 2, 3, 5, 6} | ({4, 7, 8} if preset == "adult" else set())
    assert set(np.unique(structures)) == expected_codes
    for code, tissue in codes.items():
        assert np.all(label[structures == code] == tissue)
    for image in subject["images"].values():
        assert image.dtype == np.float32 and image.shape == label.shape
        assert np.all(image[~brain] == 0) and np.all(image[brain] > 0)


def tissue_means(subject, modality, codes=(CSF, GM, WM)):
    """Mean intensity per tissue over voxels whose 6 neighbours share their tissue (little partial volume)."""
    label = subject["label"]
    return [float(subject["images"][modality][ndimage.binary_erosion(label == code)].mean()) for code in codes]


def test_infant_contrast(infant):
    csf, gm, wm = tissue_means(infant, "t2")
    assert csf > gm > wm
    csf, gm, wm = tissue_means(infant, "t1")
    assert wm > gm > csf
    assert wm - gm < 0.5 * (gm - csf), "T1 GM/WM contrast should be weak (isointense phase)"


def test_adult_contrast(adult):
    for modality in ("t1", "t1_ir"):
        csf, gm, wm = tissue_means(adult, modality)
        assert wm > gm > csf
    csf, gm, wm = tissue_means(adult, "flair")
    assert gm > wm > csf
    lesion = adult["images"]["flair"][adult["structures"] == 4].mean()
    assert lesion > gm


def test_single_intensity_threshold_does_not_separate_gm_and_wm():
    subject = phantom.make_subject((72, 88, 104), "infant", seed=2)
    label = subject["label"]
    tissue = (label == GM) | (label == WM)
    best = 0.0
    for image in subject["images"].values():
        values, is_wm = image[tissue], label[tissue] == WM
        for threshold in np.quantile(values, np.linspace(0.02, 0.98, 49)):
            for wm_side in (values > threshold, values <= threshold):
                best = max(best, (dice(wm_side, is_wm) + dice(~wm_side, ~is_wm)) / 2)
    assert 0.6 < best < 0.95, "GM/WM should be separable by intensity, but not trivially"


def test_resize_linear_equals_zoom():
    coarse = np.random.default_rng(0).random((5, 7, 9), dtype=np.float32)
    resized = phantom._resize_linear(coarse, (11, 20, 30))
    np.testing.assert_allclose(resized, ndimage.zoom(coarse, (11 / 5, 20 / 7, 30 / 9), order=1), atol=1e-5)


def test_unknown_preset_and_layout_are_refused(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        phantom.make_subject(SMALL, "elderly")
    with pytest.raises(ValueError, match="layout"):
        phantom.write_dataset(tmp_path, layout="brats")


def test_write_iseg_layout_and_formats(iseg_dir):
    names = {f"subject-{n}-{kind}.{ext}" for n in (1, 2, 3) for kind in ("T1", "T2") for ext in ("hdr", "img")}
    names |= {f"subject-{n}-label.{ext}" for n in (1, 2) for ext in ("hdr", "img")}
    assert {path.name for path in iseg_dir.iterdir()} == names | {"phantom.json"}
    loader = LoadImage(image_only=True)
    for n in (1, 2, 3):
        for kind in ("T1", "T2", "label") if n <= 2 else ("T1", "T2"):
            path = iseg_dir / f"subject-{n}-{kind}.hdr"
            image = nib.load(path)
            assert isinstance(image, nib.AnalyzeImage) and not isinstance(image, nib.Nifti1Pair)
            assert image.header.get_zooms() == (1.0, 1.0, 1.0)
            data = np.asarray(image.dataobj)
            assert data.shape == ISEG_ARGS["shape"]
            assert data.dtype == (np.uint8 if kind == "label" else np.int16)
            np.testing.assert_array_equal(itk.GetArrayFromImage(itk.imread(str(path))).transpose(), data)
            np.testing.assert_array_equal(np.asarray(loader(str(path))), data)
        label = np.asarray(nib.load(iseg_dir / f"subject-{n}-label.hdr").dataobj) if n <= 2 else None
        if label is not None:
            assert set(np.unique(label)) <= {0, 10, 150, 250}
            t1 = np.asarray(nib.load(iseg_dir / f"subject-{n}-T1.hdr").dataobj)
            assert np.all(t1[label == 0] == 0) and np.all(t1[label > 0] > 0)


def test_write_iseg_is_byte_identical_for_the_same_seed(iseg_dir, tmp_path):
    assert phantom.write_iseg(tmp_path, **ISEG_ARGS) == ["subject-1", "subject-2", "subject-3"]
    assert file_hashes(tmp_path) == file_hashes(iseg_dir)


def test_write_mrbrains13_layout_labels_and_spacing(mrbrains_dir):
    images = {"T1.nii", "T1_IR.nii", "T2_FLAIR.nii"}
    labels = {"LabelsForTraining.nii", "LabelsForTesting.nii"}
    assert {path.name for path in (mrbrains_dir / "TrainingData").iterdir()} == {"1", "2"}
    assert {path.name for path in (mrbrains_dir / "TestData").iterdir()} == {"3"}
    for folder in ("TrainingData/1", "TrainingData/2"):
        assert {path.name for path in (mrbrains_dir / folder).iterdir()} == images | labels
    assert {path.name for path in (mrbrains_dir / "TestData/3").iterdir()} == images
    for path in (mrbrains_dir / "TrainingData/1").iterdir():
        image = nib.load(path)
        assert image.shape == MRBRAINS_ARGS["shape"]
        np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), (0.958, 0.958, 3.0), rtol=1e-6)
    training = np.asarray(nib.load(mrbrains_dir / "TrainingData/1/LabelsForTraining.nii").dataobj)
    testing = np.asarray(nib.load(mrbrains_dir / "TrainingData/1/LabelsForTesting.nii").dataobj)
    assert set(np.unique(training)) <= set(range(9)) and {7, 8} <= set(np.unique(training))
    assert set(np.unique(testing)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(testing, np.array([0, 2, 2, 3, 3, 1, 1, 0, 0])[training])


def test_write_dataset_is_idempotent_and_replaces_other_phantoms(tmp_path):
    ids = phantom.write_dataset(tmp_path, layout="iseg", **ISEG_ARGS)
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert phantom.write_dataset(tmp_path, layout="iseg", **ISEG_ARGS) == ids
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == mtimes
    fewer = {**ISEG_ARGS, "num_labeled": 1, "num_unlabeled": 0}
    assert phantom.write_dataset(tmp_path, layout="iseg", **fewer) == ["subject-1"]
    assert {path.name for path in tmp_path.iterdir()} == {
        "phantom.json", "subject-1-T1.hdr", "subject-1-T1.img", "subject-1-T2.hdr", "subject-1-T2.img",
        "subject-1-label.hdr", "subject-1-label.img"}


def test_write_dataset_refuses_a_foreign_folder(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a phantom")
    with pytest.raises(ValueError, match=str(tmp_path)):
        phantom.write_dataset(tmp_path, layout="mrbrains13", **MRBRAINS_ARGS)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert notes.read_text() == "not a phantom"


def test_cli_writes_iseg_files(bundle_root, tmp_path):
    out_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "scripts.phantom", "iseg", "--out_dir", str(out_dir),
               "--num_labeled", "1", "--num_unlabeled", "1", "--shape", "[32,40,48]"]
    subprocess.run(command, cwd=bundle_root, check=True, capture_output=True)
    assert (out_dir / "subject-1-label.img").is_file() and (out_dir / "subject-2-T2.hdr").is_file()
    assert not (out_dir / "subject-2-label.hdr").exists()
    assert np.asarray(nib.load(out_dir / "subject-2-T1.hdr").dataobj).shape == (32, 40, 48)


# ---- cohort (opt-in) --------------------------------------------------------------------------------------------

COHORT_SEEDS = [phantom._subject_seed(0, index) for index in range(1, 9)]  # subjects 1-8 of write_iseg(seed=0)


def test_default_subject_is_unchanged_by_the_cohort_option():
    """Checksums of ``make_subject(SMALL, "infant", 0)`` computed before ``cohort`` existed (the RNG stream and the
    arrays of default subjects must not move)."""
    subject = phantom.make_subject(SMALL, "infant", 0)
    assert "cohort" not in subject
    structures_sha256 = "081233df2ca36808a4ad1eb3fd5d276fc4dfa4a219457ca2b54b0def624cd618"
    assert hashlib.sha256(subject["structures"].tobytes()).hexdigest() == structures_sha256
    expected = {"t1": (9280873.912506104, 4671145.983304923, 2951234197.7873287),
                "t2": (20087125.368988037, 10310825.013506342, 12831955666.70493)}
    ramp = np.arange(subject["label"].size, dtype=np.float64).reshape(SMALL) / subject["label"].size
    for modality, sums in expected.items():
        image = subject["images"][modality].astype(np.float64)
        np.testing.assert_allclose((image.sum(), (image * ramp).sum(), (image * image).sum()), sums, rtol=1e-9)


def test_cohort_subjects_are_deterministic_and_valid():
    subject = phantom.make_subject(SMALL, "infant", 5, cohort=True)
    again = phantom.make_subject(SMALL, "infant", 5, cohort=True)
    default = phantom.make_subject(SMALL, "infant", 5)
    assert subject["cohort"] == again["cohort"] and 0 <= subject["cohort"]["age"] <= 1
    np.testing.assert_array_equal(subject["structures"], again["structures"])
    for modality, image in subject["images"].items():
        assert image.tobytes() == again["images"][modality].tobytes()
        assert not np.array_equal(image, default["images"][modality])
    label = subject["label"]
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert all(np.all(image[label == 0] == 0) and np.all(image[label > 0] > 0) for image in subject["images"].values())
    with pytest.raises(ValueError, match="infant"):
        phantom.make_subject(SMALL, "adult", 0, cohort=True)


def test_cohort_contrast_follows_age_across_isointensity():
    """T1 WM/GM goes from below GM (neonatal) to clearly above (~12 months) with age; T2 the other way round."""
    ages, t1_ratios, t2_ratios = [], [], []
    for seed in COHORT_SEEDS:
        subject = phantom.make_subject(SMALL, "infant", seed, cohort=True)
        ages.append(subject["cohort"]["age"])
        for modality, ratios in (("t1", t1_ratios), ("t2", t2_ratios)):
            gm, wm = tissue_means(subject, modality, codes=(GM, WM))
            ratios.append(wm / gm)
    assert min(t1_ratios) < 0.95 and max(t1_ratios) > 1.1, t1_ratios
    assert np.corrcoef(ages, t1_ratios)[0, 1] > 0.8 and np.corrcoef(ages, t2_ratios)[0, 1] < -0.5


def test_write_iseg_cohort_records_the_option(tmp_path):
    default_dir, cohort_dir = tmp_path / "default", tmp_path / "cohort"
    phantom.write_iseg(default_dir, **ISEG_ARGS)
    assert "cohort" not in json.loads((default_dir / "phantom.json").read_text())["arguments"]
    assert phantom.write_dataset(cohort_dir, layout="iseg", cohort=True, **ISEG_ARGS) == [
        "subject-1", "subject-2", "subject-3"]
    assert json.loads((cohort_dir / "phantom.json").read_text())["arguments"]["cohort"] is True
    for n in (1, 2, 3):
        t1 = np.asarray(nib.load(cohort_dir / f"subject-{n}-T1.hdr").dataobj)
        t2 = np.asarray(nib.load(cohort_dir / f"subject-{n}-T2.hdr").dataobj)
        assert t1.shape == t2.shape == ISEG_ARGS["shape"] and t1.dtype == np.int16 and t1.max() > 0
    label = np.asarray(nib.load(cohort_dir / "subject-1-label.hdr").dataobj)
    assert set(np.unique(label)) == {0, 10, 150, 250}
    expected = phantom.make_subject(ISEG_ARGS["shape"], "infant", phantom._subject_seed(0, 1), cohort=True)
    np.testing.assert_array_equal(label, phantom._ISEG_LABEL_VALUES[expected["label"]])
    assert file_hashes(default_dir)["subject-1-T1.img"] != file_hashes(cohort_dir)["subject-1-T1.img"]


def test_cohort_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from scripts.cohort_figure import draw

    out = tmp_path / "figures" / "cohort.png"
    assert draw(out, num_subjects=2, shape=(32, 40, 48)) == str(out)
    assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
