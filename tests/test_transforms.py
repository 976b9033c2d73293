"""The bundle's own transforms checked against hand computations."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandCropByLabelClassesd, RandSpatialCropSamplesd

from scripts.checks import InputError
from scripts.transforms import RandTissueShiftd, TissueClustersd, refine_clusters, split_by_depth, tissue_clusters


def test_tissue_shift_adds_one_offset_per_tissue_and_channel():
    label = torch.tensor([0, 1, 1, 2, 2, 3, 255, 0]).view(1, 8, 1, 1)
    image = torch.arange(16, dtype=torch.float32).view(2, 8, 1, 1) / 16
    shift = RandTissueShiftd("image", offset=0.5, prob=1.0)
    shift.set_random_state(0)
    out = shift({"image": image, "label": label})["image"]
    delta = (out - image)[..., 0, 0]
    assert torch.equal(delta[:, [0, 6, 7]], torch.zeros(2, 3))  # background and excluded voxels unchanged
    for tissue, (a, b) in {1: (1, 2), 2: (3, 4), 3: (5, 5)}.items():
        assert torch.allclose(delta[:, a], delta[:, b]) and (delta[:, a].abs() <= 0.5).all()  # one offset per tissue
    assert not torch.allclose(delta[:, 1], delta[:, 3])  # tissues move apart
    assert torch.equal(RandTissueShiftd("image", prob=0.0)({"image": image, "label": label})["image"], image)


def test_tissue_shift_joins_labelled_training_by_default_and_leaves_at_zero(bundle_root):
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser["bundle_root"] = str(bundle_root)
    (shift,) = parser.get_parsed_content("train#tissue_shift")
    assert isinstance(shift, RandTissueShiftd) and shift.prob == 0.5 and shift.offset == 0.5
    parser["patches#tissue_shift_prob"] = 0.0
    assert parser.get_parsed_content("train#tissue_shift") == []  # the transform chain without it


@pytest.mark.parametrize("gap", [None, 0.0, 0.3])
def test_every_config_normalises_with_trainings_intensity_gap(bundle_root, gap):
    """Training, inference and synthesis scale intensities with the same gap (train.yaml's data#intensity_gap, 0.5 by
    default; inference.yaml's and synthesize.yaml's intensity_gap), and shifted tissues stop at -1 + gap: a model
    meets at inference the intensities it was trained on."""
    from scripts.transforms import ForegroundPercentileScaled

    def parser_of(config):
        parser = ConfigParser()
        parser.read_config(str(bundle_root / "configs" / config))
        parser["bundle_root"] = str(bundle_root)
        if gap is not None:  # --data#intensity_gap in training, --intensity_gap in the self-contained configs
            parser["data#intensity_gap" if config == "train.yaml" else "intensity_gap"] = gap
        return parser

    def scalers(config, transforms_id):  # only the scaling transforms are built: no dataset is read or written
        parser = parser_of(config)
        ids = [f"{transforms_id}#{i}" for i, t in enumerate(parser[transforms_id])
               if str(t.get("_target_", "")).endswith("ForegroundPercentileScaled")]  # fmt: skip
        return [parser.get_parsed_content(i) for i in ids]

    expected = 0.5 if gap is None else gap
    found = scalers("train.yaml", "data#preprocessing")
    found += scalers("inference.yaml", "preprocessing#transforms") + scalers("synthesize.yaml", "preprocessing#transforms")
    assert len(found) == 3 and all(isinstance(t, ForegroundPercentileScaled) and t.gap == expected for t in found)
    (shift,) = parser_of("train.yaml").get_parsed_content("train#tissue_shift")
    assert shift.floor == pytest.approx(-1.0 + expected)



def _layered_brain(gm_value, wm_value, csf_value=(-0.6, 0.8), size=32):
    """A ball of WM (radius 9) in a GM ribbon 3 voxels thick, in a CSF layer 3 voxels thick, in background -1: two
    channels, tissue values given per channel. Returns (image (2, D, H, W), label (D, H, W))."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32) - size / 2] * 3, indexing="ij"))
    radius = grid.norm(dim=0)
    label = torch.zeros(radius.shape, dtype=torch.long)
    label[radius < 15], label[radius < 12], label[radius < 9] = 1, 2, 3
    image = torch.full((2, *radius.shape), -1.0)
    for tissue, values in {1: csf_value, 2: gm_value, 3: wm_value}.items():
        for c in range(2):
            image[c][label == tissue] = values[c]
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    return torch.where(label > 0, image + noise, image), label


@pytest.mark.parametrize("radius", [1, 2, 7])
def test_cube_dilation_matches_monai_dilate(radius):
    """The clusters' separable dilation is MONAI's (a convolution with the whole cube), edges and a radius beyond a
    side of the volume included."""
    from monai.transforms.utils_morphological_ops import dilate

    from scripts.transforms import _dilate

    mask = torch.rand(12, 9, 5, generator=torch.Generator().manual_seed(radius)) > 0.93
    mask[0, 0, 0] = mask[-1, -1, -1] = True  # corners
    expected = dilate(mask[None, None].float(), 2 * radius + 1)[0, 0] > 0
    assert torch.equal(_dilate(mask, radius), expected) and not torch.equal(expected, mask)


@pytest.mark.parametrize("order", ["wm_brighter_in_t1", "wm_darker_in_t1"])
def test_tissue_clusters_name_the_tissues_by_layout_whatever_the_contrast_order(order):
    """CSF is the layer against the background, GM the thin ribbon, WM the bulk, whichever tissue is brighter."""
    gm, wm = ((0.2, 0.3), (0.6, 0.0)) if order == "wm_brighter_in_t1" else ((0.6, 0.0), (0.2, 0.3))
    image, label = _layered_brain(gm, wm)
    clusters = tissue_clusters(image)
    assert clusters.shape == (1, *label.shape)
    assert torch.equal(clusters[0].long(), label)


def test_refined_clusters_give_a_broad_tissue_its_tail_back():
    """GM broad (sd .2 around .2), WM narrow (sd .02 around .6), CSF at -.6: k-means splits GM from WM half-way
    between the clusters' means, and GM's tail pulls WM's mean down: the fixed point is at .342, so
    P(N(.2, .2) > .342) = .239 of GM goes to WM. The Gaussian mixture's boundary with the true parameters is at
    .547 (.041 of GM); five steps of classification EM from k-means get more than half-way. WM and CSF stay."""
    image, label = _layered_brain((0.2, 0.2), (0.6, 0.6))
    gm = label == 2
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    image[:, gm] = 0.2 + 0.2 * noise[0, gm]  # one broad value in both channels
    kmeans_map = tissue_clusters(image)
    refined = refine_clusters(image, kmeans_map)
    lost = {name: float((m[0][gm] == 3).float().mean()) for name, m in (("kmeans", kmeans_map), ("refined", refined))}
    assert abs(lost["kmeans"] - 0.239) < 0.02 and lost["refined"] < 0.14, lost
    assert (refined[0][label == 3] == 3).all() and (refined[0][label == 1] == 1).float().mean() > 0.97
    assert (refined[0][label == 0] == 0).all()
    smoothed = refine_clusters(image, kmeans_map, beta=1.0)  # neighbours vote: fewer isolated GM voxels in WM
    assert (smoothed[0][gm] == 3).float().mean() < lost["refined"]
    out = TissueClustersd("image", refine=True)({"image": image})
    assert torch.equal(out["clusters"], refined)


def test_depth_split_finds_an_isointense_ribbon_and_yields_to_contrast():
    """GM and WM alike (0.4 in both channels, noise .05): intensities cannot split them, so the depth below CSF does:
    the 3-voxel ribbon is GM with thickness 3, whatever the map said before (here all WM). With the tissues apart
    in intensity (GM .2/.3, WM .6/0) the likelihood outweighs a wrong thickness (1 voxel): the truth comes back.
    CSF and the background stay as they were."""
    image, label = _layered_brain((0.4, 0.4), (0.4, 0.4))
    start = torch.where(label > 1, 3, label)[None].to(torch.uint8)
    found = split_by_depth(image, start, thickness=3.0)[0].long()
    gm, truth = found == 2, label == 2
    assert 2 * (gm & truth).sum() / (gm.sum() + truth.sum()) > 0.9
    assert torch.equal(found[label < 2], label[label < 2])
    image, label = _layered_brain((0.2, 0.3), (0.6, 0.0))
    assert torch.equal(split_by_depth(image, start, thickness=1.0)[0].long(), label)
    out = TissueClustersd("image", depth=1.0)({"image": image})
    assert torch.equal(out["clusters"][0].long(), label)


def test_tissue_clusters_transform_adds_the_map_and_keeps_the_image():
    image, label = _layered_brain((0.2, 0.3), (0.6, 0.0))
    out = TissueClustersd("image")({"image": image.clone()})
    assert torch.equal(out["image"], image) and torch.equal(out["clusters"][0].long(), label)


def test_tissue_clusters_of_a_whole_head_keep_to_the_brain_mask(tmp_path):
    """A bright scalp around the brain: with the brain mask (a ``mask`` in the data, as inference loads it) the map is
    the brain's tissues alone; without one the scalp counts as brain, and a mask not loaded is left out, with a
    warning."""
    image, label = _layered_brain((0.2, 0.3), (0.6, 0.0), size=40)
    radius = torch.stack(torch.meshgrid(*[torch.arange(40.0) - 20] * 3, indexing="ij")).norm(dim=0)
    scalp = (radius >= 17) & (radius < 19)  # outside the skull (15-17 voxels, dark)
    image[:, scalp] = 0.9
    mask = (label > 0)[None].to(torch.uint8)
    out = TissueClustersd("image")({"image": image.clone(), "mask": mask})
    assert torch.equal(out["clusters"][0].long(), label)
    unmasked = tissue_clusters(image)
    assert (unmasked[0][scalp] > 0).all()  # the scalp taken for tissue
    with pytest.warns(UserWarning, match="mask.nii.gz is not loaded"):
        out = TissueClustersd("image")({"image": image, "mask": str(tmp_path / "mask.nii.gz")})
    assert torch.equal(out["clusters"], unmasked)
    with pytest.raises(InputError, match=r"brain mask mask has shape \(1, 40, 40, 39\)"):
        TissueClustersd("image")({"image": image, "mask": mask[..., 1:]})



def _whole_head(folder):
    """A whole head on disk, as the anatomy datasets and the folder/datalist formats give it: T1 and T2 NIfTIs of
    a WM ball, a GM ribbon and CSF (radius 15) in a dark skull and a bright scalp (radius 17 to 19), its label and
    brain mask (radius 15). Returns the datalist entry and the scalp's voxel count."""
    import nibabel as nib
    import numpy as np

    radius = np.linalg.norm(np.stack(np.meshgrid(*[np.arange(44.0) - 22] * 3, indexing="ij")), axis=0)
    layers = np.digitize(radius, [9, 12, 15, 17, 19])  # WM, GM, CSF, skull, scalp, air
    images = {"t1": np.take([300, 200, 50, 5, 400, 0], layers), "t2": np.take([100, 200, 400, 5, 300, 0], layers),
              "label": np.take([250, 150, 10, 0, 0, 0], layers), "mask": radius < 15}  # fmt: skip
    entry = {"subject": "head"}
    for name, image in images.items():
        entry[name] = str(folder / f"head_{name}.nii.gz")
        dtype = np.float32 if name in ("t1", "t2") else np.uint8
        nib.save(nib.Nifti1Image(image.astype(dtype), np.eye(4)), entry[name])
    return entry, int((layers == 4).sum())


def test_training_clusters_keep_to_the_brain_mask_of_a_whole_head(bundle_root, tmp_path):
    """The unlabelled subjects' k-means tissue classes (train#unlabeled#clusters) keep to the subject's brain mask
    where the datalist entry has one: training loads it on the image's grid and passes it to TissueClustersd; without
    one the scalp is clustered too. The mask is dropped afterwards: no batch holds it, labelled or not."""
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    entry, scalp = _whole_head(tmp_path)
    parser.update({"bundle_root": str(bundle_root), "device": "cpu", "dataset_format": "phantom",
                   "train#dataset#data": [entry]})
    clusters = parser.get_parsed_content("train#unlabeled#clusters")
    clustering = Compose(parser.get_parsed_content("data#preprocessing") + clusters)
    unlabeled = {k: v for k, v in entry.items() if k != "label"}
    out = clustering(unlabeled)
    clusters, mask = out["clusters"][0], out["mask"][0] > 0  # the mask loaded, resampled and cropped with the image
    assert mask.shape == clusters.shape and (clusters[~mask] == 0).all() and (clusters[mask] > 0).float().mean() > 0.95
    unmasked = clustering({k: v for k, v in unlabeled.items() if k != "mask"})["clusters"]  # no mask: still runs
    assert (unmasked > 0).sum() > (clusters > 0).sum() + 0.9 * scalp  # the scalp taken for tissue
    patches = parser.get_parsed_content("train#unlabeled#preprocessing")(unlabeled)
    labelled = parser.get_parsed_content("train#preprocessing")(entry)
    assert all("mask" not in p and "clusters" in p for p in patches) and all("mask" not in p for p in labelled)


@pytest.mark.parametrize(
    "configs, overrides, clustered",
    [
        (["train.yaml"], {}, True),  # the default: k-means classes for the generator's source statistics
        (["train.yaml"], {"gan#clusters_refine": True}, True),  # refined by a Gaussian mixture
        (["train.yaml"], {"gan#clusters_depth": 3.0}, True),  # GM and WM re-split by depth
        (["train.yaml"], {"gan#source_classes": "segmenter"}, False),
        (["train.yaml"], {"gan#source_statistics": "false"}, False),
        (["train.yaml"], {"gan#source_statistics": "false", "gan#matching_target": "unlabelled"}, True),  # matched
        (["train.yaml", "supervised.yaml"], {"gan#matching_target": "unlabelled"}, False),
        (["train.yaml", "supervised.yaml"], {}, False),  # no generator
        (["train.yaml", "mean_teacher.yaml"], {}, False),
        (["train.yaml", "paper_gan.yaml"], {}, False),
        (["train.yaml", "mean_teacher.yaml"], {"patches#sampling": "balanced"}, True),  # centres by k-means class
        (["train.yaml", "mean_teacher.yaml"], {"patches#sampling": "balanced", "patches#unlabeled_sampling": "random"},
         False),  # the labelled patches balanced, the unlabelled ones anywhere
    ],
)
def test_tissue_clusters_reach_the_unlabelled_patches_of_a_statistics_generator(bundle_root, configs, overrides, clustered):
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in configs])
    parser["bundle_root"] = str(bundle_root)
    parser.update({"patches#sampling": "random", **overrides})  # random centres need no classes of their own
    found = parser.get_parsed_content("train#unlabeled#clusters")
    assert len(found) == int(clustered) and all(isinstance(c, TissueClustersd) for c in found)
    assert all(c.refine == overrides.get("gan#clusters_refine", False) for c in found)
    assert all(c.depth == overrides.get("gan#clusters_depth") for c in found)
    crop, flip = parser.get_parsed_content("train#unlabeled#augmentation")
    keys = ["image", "clusters"] if clustered else ["image"]
    assert list(crop.keys) == list(flip.keys) == keys  # cropped and flipped with their image
    balanced = overrides.get("patches#unlabeled_sampling", overrides.get("patches#sampling")) == "balanced"
    assert isinstance(crop, RandCropByLabelClassesd if balanced else RandSpatialCropSamplesd)
    labelled_crop = parser.get_parsed_content("train#augmentation")[0]
    labelled_balanced = overrides.get("patches#sampling") == "balanced"
    assert isinstance(labelled_crop, RandCropByLabelClassesd if labelled_balanced else RandSpatialCropSamplesd)


@pytest.mark.parametrize("configs, sampling", [(["train.yaml"], "random"), (["train.yaml", "supervised.yaml"], "balanced")])
def test_supervised_training_centres_its_patches_by_class(bundle_root, configs, sampling):
    """supervised.yaml crops its labelled patches around class-balanced centres; the GAN keeps random ones."""
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in configs])
    parser["bundle_root"] = str(bundle_root)
    crop = parser.get_parsed_content("train#augmentation")[0]
    assert parser["patches#sampling"] == sampling
    assert isinstance(crop, RandCropByLabelClassesd if sampling == "balanced" else RandSpatialCropSamplesd)
    assert sampling == "random" or list(crop.cropper.ratios) == [1, 1, 1, 1]  # background, CSF, GM, WM alike


def test_balanced_sampling_centres_unlabelled_patches_by_their_k_means_classes(bundle_root, tmp_path):
    """With patches#sampling balanced the unlabelled patches are centred like the labelled ones, equally often in
    each class, here their k-means classes inside the brain mask: 3 in 4 centres in the brain (CSF, GM, WM alike),
    where random centres on this small whole head fall in the brain about 1 time in 4."""
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))  # k-means classes either way (the generator's)
    entry, _ = _whole_head(tmp_path)
    parser.update({"bundle_root": str(bundle_root), "device": "cpu", "dataset_format": "phantom",
                   "patch_size": [9, 9, 9], "patches#samples_per_volume": 200})
    unlabeled = {k: v for k, v in entry.items() if k != "label"}
    centres = {}
    for sampling in ("balanced", "random"):
        parser["patches#sampling"] = sampling
        preprocessing = parser.get_parsed_content("train#unlabeled#preprocessing")
        preprocessing.set_random_state(seed=0)
        patches = preprocessing(unlabeled)
        assert all(p["image"].shape[1:] == p["clusters"].shape[1:] == (9, 9, 9) for p in patches)
        centres[sampling] = torch.stack([p["clusters"][0, 4, 4, 4] for p in patches]).long()
    counts = torch.bincount(centres["balanced"], minlength=4) / len(centres["balanced"])
    assert ((counts - 0.25).abs() < 0.1).all(), counts  # each class a quarter of the centres (sd .03 at 200)
    assert (centres["random"] > 0).float().mean() < 0.4


def test_tissue_shift_stops_at_the_floor():
    """Offsets as in the test above; with floor -0.5 a tissue shifted below it stops at -0.5, the others and the
    background (-1) are as without the floor."""
    label = torch.tensor([0, 1, 1, 2, 2, 3, 255, 0]).view(1, 8, 1, 1)
    image = torch.tensor([-1.0, -0.45, -0.4, 0.0, 0.1, -0.3, -1.0, -1.0]).view(1, 8, 1, 1).repeat(2, 1, 1, 1)
    free, floored = RandTissueShiftd("image", prob=1.0), RandTissueShiftd("image", prob=1.0, floor=-0.5)
    free.set_random_state(3)
    floored.set_random_state(3)
    expected = free({"image": image, "label": label})["image"]
    tissue = (label > 0) & (label < 4)
    expected = torch.where(tissue, expected.clamp(min=-0.5), expected)
    out = floored({"image": image, "label": label})["image"]
    torch.testing.assert_close(out, expected)
    assert (expected[tissue.expand_as(expected)] == -0.5).any()  # the seed pushes some tissue below the floor
    assert torch.equal(out[:, [0, 6, 7]], image[:, [0, 6, 7]])


def test_training_clusters_each_unlabelled_subject_once_across_epochs(bundle_root, tmp_path, monkeypatch):
    """k-means (TissueClustersd) runs once per unlabelled subject, when train.yaml's CacheDataset caches it, not
    each time a subject's patches are drawn: two epochs of three batches over two subjects call it twice in all, and
    every batch still carries the clusters of its patches."""
    import scripts.transforms as transforms

    calls, clusters = [], transforms.tissue_clusters

    def counted(image, *args, **kwargs):
        calls.append(1)
        return clusters(image, *args, **kwargs)

    monkeypatch.setattr(transforms, "tissue_clusters", counted)
    subjects = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        entry, _ = _whole_head(tmp_path / name)
        subjects.append(entry)
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser.update({
        "bundle_root": str(bundle_root), "device": "cpu", "dataset_format": "iseg", "runtime#num_workers": 0,
        "train#dataset#data": subjects, "schedule#epoch_length": 3, "patches#unlabeled_batch_size": 1,
        "patches#samples_per_volume": 2, "patch_size": [16, 16, 16],
        "train#unlabeled#dataset#data": [{k: v for k, v in e.items() if k != "label"} for e in subjects],
    })  # fmt: skip
    loader = parser.get_parsed_content("train#unlabeled#dataloader")
    assert len(calls) == 2  # cached with the deterministic preprocessing
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 3 and all(b["clusters"].shape == (2, 1, 16, 16, 16) for b in batches)
    assert len(calls) == 2
