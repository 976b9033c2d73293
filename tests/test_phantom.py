"""Tests of the procedural brain phantoms (``scripts.data.phantom`` and its anatomy and scanner modules; small
volumes, fast on 2 CPU cores). Writing a dataset once: ``test_writing.py``."""

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

import scripts.data.phantom as phantom
from scripts.data.phantom_anatomy import HEAD_TISSUES
from scripts.data.phantom_scanner import PRESETS
from scripts.data.smooth_fields import resize_linear
from scripts.data.writing import MARKER

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
    assert set(subject["images"]) == set(PRESETS[preset])
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
    resized = resize_linear(coarse, (11, 20, 30))
    np.testing.assert_allclose(resized, ndimage.zoom(coarse, (11 / 5, 20 / 7, 30 / 9), order=1), atol=1e-5)


def test_unknown_preset_and_layout_are_refused(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        phantom.make_subject(SMALL, "elderly")
    with pytest.raises(ValueError, match="layout"):
        phantom.write_dataset(tmp_path, layout="brats")


def test_write_dataset_reads_flag_strings_as_booleans(tmp_path, monkeypatch):
    """``--phantom "{cohort: false}"`` passes the string 'false', which Python counts as true."""
    received = {}
    monkeypatch.setattr(phantom, "write_iseg", lambda out_dir, **kwargs: received.update(kwargs) or [])
    phantom.write_dataset(tmp_path, cohort="false", head="True", randomize=False, folded="0", num_labeled=2)
    assert received == {"cohort": False, "head": True, "randomize": False, "folded": False, "num_labeled": 2}
    with pytest.raises(ValueError, match="true or false"):
        phantom.write_dataset(tmp_path, cohort="sometimes")


def test_write_iseg_layout_and_formats(iseg_dir):
    names = {f"subject-{n}-{kind}.{ext}" for n in (1, 2, 3) for kind in ("T1", "T2") for ext in ("hdr", "img")}
    names |= {f"subject-{n}-label.{ext}" for n in (1, 2) for ext in ("hdr", "img")}
    assert {path.name for path in iseg_dir.iterdir()} == names | {MARKER}
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


def test_cli_writes_iseg_files(bundle_root, tmp_path):
    out_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "scripts.data.phantom", "iseg", "--out_dir", str(out_dir),
               "--num_labeled", "1", "--num_unlabeled", "1", "--shape", "[32,40,48]"]
    subprocess.run(command, cwd=bundle_root, check=True, capture_output=True)
    assert (out_dir / "subject-1-label.img").is_file() and (out_dir / "subject-2-T2.hdr").is_file()
    assert not (out_dir / "subject-2-label.hdr").exists()
    assert np.asarray(nib.load(out_dir / "subject-2-T1.hdr").dataobj).shape == (32, 40, 48)


# ---- cohort (opt-in) --------------------------------------------------------------------------------------------

COHORT_SEEDS = [phantom.subject_seed(0, index) for index in range(1, 9)]  # subjects 1-8 of write_iseg(seed=0)


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
    assert "cohort" not in json.loads((default_dir / MARKER).read_text())["arguments"]
    assert phantom.write_dataset(cohort_dir, layout="iseg", cohort=True, **ISEG_ARGS) == [
        "subject-1", "subject-2", "subject-3"]
    assert json.loads((cohort_dir / MARKER).read_text())["arguments"]["cohort"] is True
    for n in (1, 2, 3):
        t1 = np.asarray(nib.load(cohort_dir / f"subject-{n}-T1.hdr").dataobj)
        t2 = np.asarray(nib.load(cohort_dir / f"subject-{n}-T2.hdr").dataobj)
        assert t1.shape == t2.shape == ISEG_ARGS["shape"] and t1.dtype == np.int16 and t1.max() > 0
    label = np.asarray(nib.load(cohort_dir / "subject-1-label.hdr").dataobj)
    assert set(np.unique(label)) == {0, 10, 150, 250}
    expected = phantom.make_subject(ISEG_ARGS["shape"], "infant", phantom.subject_seed(0, 1), cohort=True)
    np.testing.assert_array_equal(label, phantom._ISEG_LABEL_VALUES[expected["label"]])
    assert file_hashes(default_dir)["subject-1-T1.img"] != file_hashes(cohort_dir)["subject-1-T1.img"]


def test_cohort_figure(tmp_path):
    """A column per subject (2 inches wide) of T1, T2 (grey levels) and label (CSF, GM and WM in their colours)."""
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread
    from tools.cohort_figure import LABEL_COLOURS, draw

    out = tmp_path / "figures" / "cohort.png"
    assert draw(out, num_subjects=2, shape=(32, 40, 48)) == str(out)
    png = imread(out)[..., :3]
    assert png.shape[:2] == (790, 400)  # 100 dpi: 2 x 2 inches wide, 3 rows of 2 x 40/32 inches + 0.4 high
    for colour in LABEL_COLOURS[1:]:
        assert (np.abs(png - to_rgb(colour)).max(-1) < 2 / 255).any(), colour
    grey = png[(png[..., 0] == png[..., 1]) & (png[..., 1] == png[..., 2])]
    assert len(np.unique(grey[:, 0])) > 100  # the T1 and T2 panels' grey levels


# ---- head, randomize, folded, adult iSEG (opt-in, issue 11) -------------------------------------------------------

SKIN, FAT, BONE, MARROW, EYE, CORD, SPINAL_CSF = range(1, 8)


@pytest.fixture(scope="module")
def infant_head():
    return phantom.make_subject(SMALL, "infant", seed=0, head=True)


@pytest.fixture(scope="module")
def adult_head():
    return phantom.make_subject(ADULT_SMALL, "adult", seed=0, spacing=ADULT_SPACING, head=True, randomize=True)


def extent_fraction(mask, axis):
    """Fraction of the volume's length along ``axis`` that ``mask`` spans."""
    other = tuple(k for k in range(3) if k != axis)
    index = np.nonzero(mask.any(axis=other))[0]
    return (index[-1] - index[0] + 1) / mask.shape[axis]


@pytest.mark.parametrize("preset", ["infant", "adult"])
def test_head_surrounds_the_brain_and_is_labelled_background(preset, infant_head, adult_head):
    subject = {"infant": infant_head, "adult": adult_head}[preset]
    label, structures, head = subject["label"], subject["structures"], subject["head"]
    brain = structures > 0
    assert head.dtype == np.uint8 and head.shape == label.shape
    assert set(np.unique(head)) <= set(range(len(HEAD_TISSUES)))
    assert {SKIN, FAT, BONE} <= set(np.unique(head)), "scalp, fat and skull must be there"
    assert not head[brain].any() and np.all(label[~brain] == 0), "everything outside the brain is background"
    assert {7, 8} <= set(np.unique(structures)), "with a head both presets have cerebellum and brainstem"
    assert (head > 0).sum() > 0.5 * brain.sum(), "the head must be more than a thin shell"
    # the skull encloses the brain: scanning down from the top, the first tissue met is head, not brain
    column = (brain | (head > 0))[label.shape[0] // 2, label.shape[1] // 2]
    top = np.nonzero(column)[0][-1]
    assert head[label.shape[0] // 2, label.shape[1] // 2, top] > 0
    assert head[:, :, 0].any() and not brain[:, :, 0].any(), "the neck reaches the inferior edge"
    pial = np.isin(structures, (1, 2, 3, 4, 6, 7, 8))  # the brain without its CSF shell
    for axis in (0, 1):
        assert 0.5 < extent_fraction(pial, axis) < 0.75, "brain about 60-70 % of the field of view"
    air = ~brain & (head == 0)
    assert air.sum() > 0.05 * air.size
    for modality, image in subject["images"].items():
        assert image.dtype == np.float32 and np.all(np.isfinite(image))
        assert np.count_nonzero(image[air]) == air.sum() and image[air].std() > 0, "noisy, not zero, background"
        assert np.abs(image[air]).mean() < 0.3 * np.abs(image[brain]).mean()


def test_head_tissues_have_their_own_intensities():
    subject = phantom.make_subject((72, 88, 104), "infant", seed=0, head=True)  # layers of a few voxels
    head = subject["head"]
    t1, t2 = ({code: float(subject["images"][m][head == code].mean()) for code in (SKIN, FAT, BONE, EYE)}
              for m in ("t1", "t2"))
    assert t1[FAT] > 1.2 * t1[SKIN] and t1[SKIN] > 1.2 * t1[BONE], t1
    assert t2[EYE] > 1.5 * t2[SKIN], "the eyes are fluid, bright in T2"


def test_head_writers_keep_negative_values_and_label_the_head_background(tmp_path):
    args = {**ISEG_ARGS, "shape": SMALL, "num_labeled": 2, "num_unlabeled": 0}
    assert phantom.write_dataset(tmp_path, layout="iseg", head=True, **args) == ["subject-1", "subject-2"]
    marker = json.loads((tmp_path / MARKER).read_text())["arguments"]
    assert marker["head"] is True and not {"randomize", "folded", "cohort", "preset"} & set(marker)
    minimum = np.inf
    for n in (1, 2):
        expected = phantom.make_subject(SMALL, "infant", phantom.subject_seed(0, n), head=True)
        label = np.asarray(nib.load(tmp_path / f"subject-{n}-label.hdr").dataobj)
        np.testing.assert_array_equal(label, phantom._ISEG_LABEL_VALUES[expected["label"]])
        for kind in ("T1", "T2"):
            image = np.asarray(nib.load(tmp_path / f"subject-{n}-{kind}.hdr").dataobj)
            assert image.dtype == np.int16
            np.testing.assert_array_equal(image, phantom._to_int16(expected["images"][kind.lower()], signed=True))
            assert np.count_nonzero(image[label == 0]) > 0.5 * (label == 0).sum()
            minimum = min(minimum, int(image.min()))
    assert minimum < 0, "an offset background must keep its negative values"


def test_randomize_varies_contrast_but_not_anatomy():
    orders, ratios = set(), []
    for seed in range(6):
        subject = phantom.make_subject(SMALL, "infant", seed, randomize=True)
        label = subject["label"]
        assert set(np.unique(label)) == {0, 1, 2, 3}
        for image in subject["images"].values():
            assert np.all(image[label == 0] == 0) and np.all(image[label > 0] > 0)
        for modality in ("t1", "t2"):
            csf, gm, wm = tissue_means(subject, modality)
            orders.add(tuple(np.argsort([csf, gm, wm])))
            ratios.append(wm / gm)
        if seed == 0:
            default = phantom.make_subject(SMALL, "infant", 0)
            np.testing.assert_array_equal(subject["structures"], default["structures"])  # intensities only
            assert not np.array_equal(subject["images"]["t1"], default["images"]["t1"])
            json.dumps(subject["randomized"])
    assert len(orders) >= 3, orders
    assert max(ratios) / min(ratios) > 1.6, ratios  # about 1.25 without randomize


def test_randomize_is_deterministic_and_works_with_the_adult_head(adult_head):
    again = phantom.make_subject(ADULT_SMALL, "adult", seed=0, spacing=ADULT_SPACING, head=True, randomize=True)
    assert again["randomized"] == adult_head["randomized"]
    assert set(adult_head["images"]) == set(PRESETS["adult"])
    for modality, image in adult_head["images"].items():
        assert image.tobytes() == again["images"][modality].tobytes()
    plain = phantom.make_subject(ADULT_SMALL, "adult", seed=0, spacing=ADULT_SPACING, head=True)
    np.testing.assert_array_equal(plain["head"], adult_head["head"])
    assert not np.array_equal(plain["images"]["t1"], adult_head["images"]["t1"])


def test_adult_anatomy_folded_with_wider_csf_spaces_than_infants():
    adult = phantom.make_subject(SMALL, "adult", 0)
    infant = phantom.make_subject(SMALL, "infant", 0)
    folded = phantom.make_subject(SMALL, "adult", 0, folded=True)
    assert {7, 8} <= set(np.unique(adult["structures"])) and {7, 8} <= set(np.unique(folded["structures"]))
    assert not np.array_equal(folded["structures"], adult["structures"])
    np.testing.assert_array_equal(folded["structures"] == 0, adult["structures"] == 0)  # same envelope
    cortex = [np.mean(s["structures"] == 1) for s in (adult, folded)]
    assert 0.5 < cortex[1] / cortex[0] < 2

    def fraction(subject, code):
        structures = subject["structures"]
        return np.mean(structures[structures > 0] == code)

    assert fraction(adult, 6) > 1.3 * fraction(infant, 6), "adult ventricles are larger"
    assert fraction(adult, 5) > fraction(infant, 5), "adult sulci are wider"


def test_hindbrain_is_ignored_in_mrbrains13_and_tissue_in_the_iseg_layout(tmp_path):
    from monai.transforms import MapLabelValue

    from scripts.data.datasets import IGNORE_LABEL, label_mapping

    phantom.write_mrbrains13(tmp_path / "mrbrains13", **{**MRBRAINS_ARGS, "num_unlabeled": 0}, folded=True)
    training = np.asarray(nib.load(tmp_path / "mrbrains13/TrainingData/1/LabelsForTraining.nii").dataobj)
    assert {7, 8} <= set(np.unique(training))
    mapped = np.asarray(MapLabelValue(*label_mapping("mrbrains13"), dtype=np.uint8)(training))
    hindbrain = (training == 7) | (training == 8)
    assert np.all(mapped[hindbrain] == IGNORE_LABEL) and not np.any(mapped[~hindbrain] == IGNORE_LABEL)

    args = {**ISEG_ARGS, "shape": SMALL, "num_labeled": 1, "num_unlabeled": 0}
    assert phantom.write_iseg(tmp_path / "iseg", preset="adult", **args) == ["subject-1"]
    assert json.loads((tmp_path / "iseg" / MARKER).read_text())["arguments"]["preset"] == "adult"
    subject = phantom.make_subject(SMALL, "adult", phantom.subject_seed(0, 1), modalities=("t1", "t2"))
    label = np.asarray(nib.load(tmp_path / "iseg/subject-1-label.hdr").dataobj)
    np.testing.assert_array_equal(label, phantom._ISEG_LABEL_VALUES[subject["label"]])
    mapped = np.asarray(MapLabelValue(*label_mapping("iseg"), dtype=np.uint8)(label))
    structures = subject["structures"]
    assert (structures == 7).any() and (structures == 8).any()
    assert np.all(mapped[structures == 7] == GM) and np.all(mapped[structures == 8] == WM)
    t2 = np.asarray(nib.load(tmp_path / "iseg/subject-1-T2.hdr").dataobj)
    csf, gm, wm = (t2[mapped == code].mean() for code in (CSF, GM, WM))
    assert csf > gm > wm, "adult T2 contrast"
    with pytest.raises(ValueError, match="modalities"):
        phantom.make_subject(SMALL, "infant", 0, modalities=("flair",))


def test_new_options_leave_default_markers_and_adult_subjects_alone(iseg_dir, mrbrains_dir, adult):
    """Markers of default datasets record no new option, and the default adult subject matches checksums computed
    before ``head``, ``randomize`` and ``folded`` existed (the infant one: ``test_default_subject_is_unchanged...``)."""
    assert json.loads((iseg_dir / MARKER).read_text())["arguments"] == {
        **ISEG_ARGS, "shape": list(ISEG_ARGS["shape"])}
    assert set(json.loads((mrbrains_dir / MARKER).read_text())["arguments"]) == {
        "num_labeled", "num_unlabeled", "shape", "seed", "spacing"}
    assert not {"head", "randomized"} & set(adult)
    structures_sha256 = "81506ad15ab3c7047701f94b2b4b56515fbf8b875a80aee6a4d5937081b57c01"
    assert hashlib.sha256(adult["structures"].tobytes()).hexdigest() == structures_sha256
    expected = {"t1": (7405943.077079773, 3658731.583921384, 3200207798.679175),
                "t1_ir": (5568235.146808863, 2817717.723791805, 2381040316.243065),
                "flair": (4512103.580335617, 2241050.1028916305, 1333750298.006383)}
    ramp = np.arange(adult["label"].size, dtype=np.float64).reshape(ADULT_SMALL) / adult["label"].size
    for modality, sums in expected.items():
        image = adult["images"][modality].astype(np.float64)
        np.testing.assert_allclose((image.sum(), (image * ramp).sum(), (image * image).sum()), sums, rtol=1e-9)


def test_heads_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from tools.cohort_figure import HEAD_COLOURS, heads

    assert len(HEAD_COLOURS) == len(HEAD_TISSUES) - 1
    out = tmp_path / "heads.png"
    assert heads(out, shape=(40, 48, 56), dpi=40) == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_heads_with_the_new_options(bundle_root, tmp_path):
    out_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "scripts.data.phantom", "iseg", "--out_dir", str(out_dir), "--num_labeled", "1",
               "--num_unlabeled", "0", "--shape", "[40,48,56]", "--head", "--randomize", "--folded",
               "--preset", "adult"]
    subprocess.run(command, cwd=bundle_root, check=True, capture_output=True)
    assert json.loads((out_dir / MARKER).read_text())["arguments"] == {
        "num_labeled": 1, "num_unlabeled": 0, "shape": [40, 48, 56], "seed": 0, "head": True, "randomize": True,
        "folded": True, "preset": "adult"}
    label = np.asarray(nib.load(out_dir / "subject-1-label.hdr").dataobj)
    t1 = np.asarray(nib.load(out_dir / "subject-1-T1.hdr").dataobj)
    assert np.count_nonzero(t1[label == 0]) > 0.5 * (label == 0).sum()
