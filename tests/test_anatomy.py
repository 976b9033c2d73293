"""Tests of the real-anatomy data: the shipped label maps and their licence, the label-map reader, the label merge,
the renderer (``scripts.data.rendering``) and the rendered datasets (``scripts.data.anatomy``); small crops only."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import scripts.data.anatomy as anatomy
from scripts.checks import InputError
from scripts.data.datasets import IGNORE_LABEL, build_datalist
from scripts.data.rendering import RandLabelContrastd, thick_slices, tissue_means, unique_codes

from label_maps import write_label_maps

CODES = [0, 2, 3, 4, 16, 24, 41, 507, 8, 10, 25, 60]
MERGED = [0, 3, 2, 1, IGNORE_LABEL, 1, 3, 0, 2, 2, 3, IGNORE_LABEL]  # by hand from the docstring's choices


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))


@pytest.fixture(scope="module")
def crop():
    """A 40^3 crop of real map 02 around the brain's centre: every tissue, head tissue and air."""
    labels = np.asarray(nib.load(str(anatomy.map_path(2))).dataobj)
    centre = np.argwhere(anatomy.brain_mask(labels)).mean(0).astype(int)
    lo = centre - [20, 20, 20]
    lo[1] = max(lo[1] - 60, 0)  # towards the top of the head (axis 1 is I-S): skull and scalp in the crop
    return labels[lo[0] : lo[0] + 40, lo[1] : lo[1] + 40, lo[2] : lo[2] + 40].astype(np.uint16)


def test_maps_travel_with_their_licence_and_citation(bundle_root):
    folder = bundle_root / "anatomy"
    assert anatomy.map_indices(folder) == list(range(1, 17))
    assert "Apache License" in (folder / "LICENSE-SynthSeg.txt").read_text()
    readme = (folder / "README.md").read_text()
    assert "Billot" in readme and "Medical Image Analysis" in readme and "LICENSE-SynthSeg.txt" in readme
    held_out = ", ".join(f"{i:02d}" for i in anatomy.TEST_MAPS[:-1]) + f" and {anatomy.TEST_MAPS[-1]:02d}"
    assert held_out in readme.replace("\n", " ")
    image = nib.load(str(anatomy.map_path(16)))
    assert image.get_data_dtype() == np.uint16 and nib.aff2axcodes(image.affine) == ("L", "I", "A")


def test_test_maps_are_never_trained_or_validated_on():
    assert not set(anatomy.TEST_MAPS) & set(anatomy.VALIDATION_MAPS)
    assert len(anatomy.TEST_MAPS) == 3


def test_merge_labels_by_hand():
    np.testing.assert_array_equal(anatomy.merge_labels(np.array(CODES)), MERGED)
    np.testing.assert_array_equal(anatomy.merge_labels(np.array([530, 999, 0])), [0, 0, 0])  # head tissue, unknown
    np.testing.assert_array_equal(anatomy.brain_mask(np.array([0, 2, 24, 507, 16])), [False, True, True, False, True])


def test_read_label_map_rounds_stored_floats(tmp_path):
    _save(tmp_path / "float.nii.gz", np.array(CODES, dtype=np.float32).reshape(2, 3, 2) + 1e-5)
    labels = anatomy.read_label_map(tmp_path / "float.nii.gz")
    assert isinstance(labels, MetaTensor) and labels.shape == (1, 2, 3, 2)
    np.testing.assert_array_equal(np.asarray(labels).ravel(), CODES)


@pytest.mark.parametrize(
    "values, message",
    [([0.0, 2.5, 3.0, 0.0], "non-integer"), ([0, -2, 3, 0], "non-integer or negative"), ([0, 2, 99, 0], "[99]")],
)
def test_read_label_map_names_the_file_and_the_problem(tmp_path, values, message):
    path = tmp_path / "bad_map.nii.gz"
    _save(path, np.array(values, dtype=np.float32).reshape(2, 2, 1))
    with pytest.raises(InputError, match="bad_map.nii.gz") as error:
        anatomy.read_label_map(path)
    assert message in str(error.value)
    with pytest.raises(InputError, match="not found"):
        anatomy.read_label_map(tmp_path / "missing.nii.gz")


def test_contrast_with_fixed_means_paints_each_label_by_its_tissue_mix():
    labels = MetaTensor(torch.tensor([[0, 24, 3, 2, 12, 507]], dtype=torch.float32).reshape(1, 6, 1, 1))
    render = RandLabelContrastd("label", modalities=["t1"], means=[(0.2, 0.5, 0.8)], std=(0.0, 0.0), jitter=0.0)
    image = np.asarray(render({"label": labels})["image"]).ravel()
    np.testing.assert_allclose(image[:5], [0.0, 0.2, 0.5, 0.8, 0.75 * 0.5 + 0.25 * 0.8], atol=1e-6)  # putamen mix
    assert 0.0 <= image[5] <= 1.0  # head tissue: anywhere


def test_plausible_contrast_keeps_each_modality_in_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        csf, gm, wm = tissue_means(rng, "t1", None)
        assert csf < gm < wm
        csf, gm, wm = tissue_means(rng, "t2", None)
        assert csf > gm > wm
        assert tissue_means(rng, "t1", 0.0)[2] < tissue_means(rng, "t1", 0.0)[1] + 0.03  # newborn: T1 WM darker
        csf, gm, wm = tissue_means(rng, "t2", 0.0)
        assert wm > gm - 0.03 and csf > gm


def test_random_contrast_breaks_the_order_sometimes():
    labels = MetaTensor(torch.tensor([[24, 3, 2]], dtype=torch.float32).reshape(1, 3, 1, 1))
    render = RandLabelContrastd("label", modalities=["t1"], contrast="random", std=(0.0, 0.0))
    render.set_random_state(0)
    ordered = [bool(np.all(np.diff(np.asarray(render({"label": labels})["image"]).ravel()) > 0)) for _ in range(60)]
    assert 0 < sum(ordered) < 30  # about 1 in 6 draws keeps CSF < GM < WM


@pytest.mark.parametrize("labels", [
    np.random.default_rng(0).integers(0, 600, (5, 6, 7)).astype(np.float32),  # FreeSurfer codes: a lookup table
    np.random.default_rng(1).integers(0, 3, (4, 4)).astype(np.uint16),
    np.array([[0.5, 1.5, 0.5]]), np.array([[-2.0, 3.0, -2.0]]),  # not small integers: np.unique itself
])  # fmt: skip
def test_unique_codes_are_numpys(labels):
    codes, index = np.unique(labels, return_inverse=True)
    fast_codes, fast_index = unique_codes(labels)
    assert fast_codes.dtype == codes.dtype and np.array_equal(fast_codes, codes)
    np.testing.assert_array_equal(fast_index, index.reshape(-1))


def test_thick_slices_average_slabs_along_one_axis():
    image = torch.zeros(1, 4, 4, 40)
    image[..., ::2] = 1.0  # alternating slices
    thick = thick_slices(image, axis=2, step=4.0)
    assert thick.shape == image.shape
    np.testing.assert_allclose(thick[..., 4:36].numpy(), 0.5, atol=1e-6)  # each 4-slice slab averages to 1/2
    np.testing.assert_array_equal(thick_slices(image, axis=0, step=4.0).numpy(), image.numpy())  # constant along x


def test_render_subject_skull_stripped_and_whole_head(crop):
    labels = MetaTensor(torch.as_tensor(crop[None].astype(np.float32)), affine=torch.eye(4))
    for strip in (True, False):
        rendered = anatomy.render_subject(labels, anatomy.random_render(crop.shape), strip=strip, seed=3)
        image, label = rendered["image"], rendered["label"]
        assert image.shape[0] == 2 and image.shape[1:] == label.shape == rendered["mask"].shape
        assert np.isfinite(image).all() and set(np.unique(label)) <= {0, 1, 2, 3, IGNORE_LABEL}
        outside = rendered["mask"] == 0
        assert (label[outside] == 0).all()
        if strip:
            assert (image[:, outside] == 0).all()
        else:
            assert (image[:, outside] > 0).mean() > 0.9  # head tissue and noisy air
    fixed = anatomy.render_subject(labels, anatomy.fixed_render("adult", ["t1"]), strip=True, seed=3)
    t1, label = fixed["image"][0], fixed["label"]
    means = [float(t1[label == tissue].mean()) for tissue in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # adult T1 contrast survives bias and noise


def test_render_subject_crops_to_the_head_and_moves_the_affine_with_the_crop(crop):
    """The crop's affine (``CropForegroundd`` on MetaTensors) is the map's moved to the crop's first voxel: by hand,
    that voxel is 8 voxels before the head's first (or 0), mapped through the map's affine."""
    padded = np.pad(crop, ((12, 3), (10, 0), (20, 5)))  # air before the head on every axis
    affine = np.array([[0.9, 0.1, 0.0, -30.5], [-0.1, 1.1, 0.05, 12.25], [0.0, -0.05, 1.3, 7.0], [0, 0, 0, 1]])
    labels = MetaTensor(torch.as_tensor(padded[None].astype(np.float32)), affine=torch.as_tensor(affine))
    rendered = anatomy.render_subject(labels, anatomy.fixed_render("whole_head", ["t1"]), strip=False, seed=3)
    head = np.argwhere(padded > 0)
    start, stop = np.maximum(head.min(0) - 8, 0), np.minimum(head.max(0) + 9, padded.shape)
    assert (start > 0).all() and rendered["image"].shape == (1, *(stop - start))
    expected = affine.copy()
    expected[:3, 3] += affine[:3, :3] @ start
    np.testing.assert_allclose(rendered["affine"], expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rendered["label"], anatomy.merge_labels(padded)[tuple(map(slice, start, stop))])


def test_write_dataset_keeps_maps_in_their_split(tmp_path, crop):
    maps = tmp_path / "maps"
    maps.mkdir()
    for index in (1, 2, 3, *anatomy.TEST_MAPS):
        _save(maps / f"seg_{index:02d}.nii.gz", crop)
    out = tmp_path / "data"
    path = anatomy.write_dataset(out, renders_per_map=2, validation=("adult",), testing=("whole_head",),
                                 anatomy_dir=maps)
    lists = json.loads(open(path).read())
    assert [e["subject"] for e in lists["training"]] == ["m02r0", "m02r1", "m03r0", "m03r1"]
    assert [e["subject"] for e in lists["validation"]] == ["m01_adult"]
    assert [e["subject"] for e in lists["testing"]] == [f"m{i:02d}_whole_head" for i in anatomy.TEST_MAPS]
    split = build_datalist(out, "anatomy", ["t1"], num_labeled=-1, num_val=0,
                           anatomy={"renders_per_map": 2, "validation": ("adult",), "testing": ("whole_head",),
                                    "anatomy_dir": str(maps)})
    assert [e["subject"] for e in split["validation"]] == ["m01_adult"] and len(split["training"]) == 4


def test_head_tissues_plausible_or_anywhere():
    from scripts.data.rendering import HEAD_RANGES

    labels = MetaTensor(torch.tensor([[511, 515, 506, 502]], dtype=torch.float32).reshape(1, 4, 1, 1))
    fixed = RandLabelContrastd("label", modalities=["t1", "t2"], means=[(0.2, 0.5, 0.8), (0.9, 0.5, 0.4)],
                               std=(0.0, 0.0))
    image = np.asarray(fixed({"label": labels})["image"])[:, :, 0, 0]
    np.testing.assert_allclose(image[:, :3], [[0.8, 0.125, 0.15], [0.7, 0.125, 0.9]], atol=1e-6)  # range middles
    plausible = RandLabelContrastd("label", modalities=["t1"], head_prob=1.0, std=(0.0, 0.0))
    plausible.set_random_state(1)
    for _ in range(20):
        t1 = np.asarray(plausible({"label": labels})["image"]).ravel()
        for value, code in zip(t1[:3], (511, 515, 506)):
            low, high = HEAD_RANGES[code]["t1"]
            assert low <= value <= high
    anywhere = RandLabelContrastd("label", modalities=["t1"], head_prob=0.0, std=(0.0, 0.0))
    anywhere.set_random_state(1)
    scalp = [float(np.asarray(anywhere({"label": labels})["image"]).ravel()[0]) for _ in range(40)]
    assert min(scalp) < 0.6  # uniform: often outside the scalp's plausible (0.6, 1.0)


def _tissue_median(entry, modality, tissue):
    """Median intensity of ``tissue`` (merged label) in a saved subject's ``modality``, away from its borders (voxels
    whose 6 neighbours share the label): the tissue's own contrast, not partial volume."""
    image = np.asarray(nib.load(entry[modality]).dataobj)
    label = np.asarray(nib.load(entry["label"]).dataobj)
    inside = label == tissue
    for axis in range(3):
        for shift in (1, -1):
            inside &= np.roll(label, shift, axis) == tissue
    return float(np.median(image[inside]))


def test_cohort_renders_one_subject_per_training_map_each_with_its_own_contrast(tmp_path):
    """``cohort=True`` (train.yaml's default data): one T1+T2 subject per training map, never a test or the
    validation map, each with its own contrast age (an infant whose T1 WM is darker than its GM, an adult whose WM is
    brighter), labels and brain masks on disk for all; the split gives num_labeled labelled subjects and the rest
    unlabelled, validation and testing the held-out maps' fixed renders."""
    train_maps = (2, 3, 5)
    maps = write_label_maps(tmp_path / "maps", (1, *train_maps, *anatomy.TEST_MAPS), size=40, scale=2.0)
    options = {"cohort": True, "renders_per_map": 1, "infant_prob": 0.8, "validation": ("adult",),
               "testing": ("infant_newborn",), "anatomy_dir": str(maps)}
    out = tmp_path / "data"
    lists = json.loads(open(anatomy.write_dataset(out, **options)).read())
    ages = anatomy.cohort_ages(len(train_maps), 0.8, seed=0)
    subjects = [anatomy.cohort_subject(i, 0, age) for i, age in zip(train_maps, ages)]
    assert [e["subject"] for e in lists["training"]] == subjects
    assert [e["subject"] for e in lists["validation"]] == ["m01_adult"]
    assert [e["subject"] for e in lists["testing"]] == [f"m{i:02d}_infant_newborn" for i in anatomy.TEST_MAPS]
    for entry in lists["training"]:
        assert all((out / entry[key]).is_file() for key in ("t1", "t2", "label", "mask"))
    # contrasts: T1 WM darker than GM (the youngest infant), brighter (the adult); T2 the other way round
    assert min(a for a in ages if a is not None) < 0.4 and None in ages
    paths = [{k: str(out / v) for k, v in e.items() if k != "subject"} for e in lists["training"]]
    entries = dict(zip(ages, paths))
    young, adult = entries[min(a for a in ages if a is not None)], entries[None]
    assert _tissue_median(young, "t1", 3) < _tissue_median(young, "t1", 2)
    assert _tissue_median(adult, "t1", 3) > _tissue_median(adult, "t1", 2)
    assert _tissue_median(young, "t2", 3) > _tissue_median(young, "t2", 2)
    assert _tissue_median(adult, "t2", 3) < _tissue_median(adult, "t2", 2)

    split = build_datalist(out, "anatomy", ["t1", "t2"], num_labeled=2, num_val=2, num_test=0, anatomy=options)
    assert [e["subject"] for e in split["training"]] == subjects[:2] and all("label" in e for e in split["training"])
    assert [e["subject"] for e in split["unlabeled"]] == subjects[2:]
    assert all("label" not in e and "mask" in e for e in split["unlabeled"])
    assert [e["subject"] for e in split["validation"]] == ["m01_adult"]
    held_out = {f"m{i:02d}" for i in anatomy.TEST_MAPS}
    assert {e["subject"][:3] for e in split["testing"]} == held_out
    assert not held_out & {e["subject"][:3] for name in ("training", "unlabeled", "validation") for e in split[name]}
    one = build_datalist(out, "anatomy", ["t1"], num_labeled=1, num_val=0, num_test=1, anatomy=options)
    assert [len(one[k]) for k in ("training", "unlabeled", "testing")] == [1, 1, 4]  # the last one held out too
    everything = build_datalist(out, "anatomy", ["t1"], num_labeled=-1, num_val=0, num_test=0, anatomy=options)
    assert len(everything["training"]) == 3 and everything["unlabeled"] == []


def test_cohort_ages_span_newborn_to_adult():
    for count in (3, 12, 40):
        ages = anatomy.cohort_ages(count, 0.8, seed=1)
        infants = sorted(a for a in ages if a is not None)
        assert len(ages) == count and 0 < infants[0] < 0.4 and infants[-1] > 0.6 and max(infants) < 1
        assert ages.count(None) == count - len(infants) >= 1
        assert abs(len(infants) / count - 0.8) <= 1 / count  # the fraction of infants
    assert anatomy.cohort_ages(12, 0.8, seed=1) != anatomy.cohort_ages(12, 0.8, seed=2)  # the order only
    assert sorted(map(str, anatomy.cohort_ages(12, 0.8, 1))) == sorted(map(str, anatomy.cohort_ages(12, 0.8, 2)))


def test_train_config_defaults_to_the_anatomy_cohort(bundle_root, tmp_path):
    """The README's main job trains on the cohort (dataset_format anatomy, data#anatomy#cohort) with 2 labelled
    subjects, the other 10 training maps' subjects unlabelled and the test maps' renders for testing; the procedural
    phantom is one override away, in its own folder."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    assert parser.get_parsed_content("dataset_format") == "anatomy"
    assert parser.get_parsed_content("data#anatomy")["cohort"] is True and parser.get_parsed_content("num_test") == 0
    assert parser.get_parsed_content("dataset_dir").endswith("/data/anatomy_cohort")
    maps = write_label_maps(tmp_path / "maps", range(1, 17), size=20)
    parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(tmp_path / "cohort"),
                   "data#anatomy#anatomy_dir": str(maps), "data#split_file": str(tmp_path / "split.json")})
    split = parser.get_parsed_content("data#datalist")
    assert [len(split[k]) for k in ("training", "validation", "testing", "unlabeled")] == [2, 2, 9, 10]
    assert all("label" not in e and "mask" in e for e in split["unlabeled"])
    assert {e["subject"][:3] for e in split["testing"]} == {f"m{i:02d}" for i in anatomy.TEST_MAPS}
    phantom = ConfigParser()
    phantom.read_config(str(bundle_root / "configs" / "train.yaml"))
    phantom["dataset_format"] = "phantom"
    assert phantom.get_parsed_content("dataset_dir").endswith("/data/phantom")
    assert phantom.get_parsed_content("num_test") == 4
