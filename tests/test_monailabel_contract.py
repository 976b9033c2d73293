"""What MONAI Label's BundleInferTask and BundleTrainTask read from the bundle, checked without monailabel installed.

The tasks (monailabel 0.8.5, monailabel/tasks/{infer,train}/bundle.py) parse configs/inference.yaml and
configs/train.yaml with ``monai.bundle.ConfigParser`` after setting ``bundle_root``; inference instantiates
``network_def``, ``preprocessing`` (every top-level ``LoadImaged`` is wrapped in a loader that indexes all of its keys
in the request ``{"image": path}``), ``inferer`` and ``postprocessing`` (``SaveImaged`` filtered out), loads
``models/model.pt`` with ``checkpoint.get("model", checkpoint)`` and takes the label names from metadata.json.
Training runs ``monai.bundle.run("run", ...)`` overriding ``bundle_root``, ``device`` (a string),
``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data`` (``{"image", "label"}`` lists) and
``train#handlers`` (with a ``CheckpointLoader`` of ``{"model": "$@network"}``, strict False, inserted first).
tests/test_monailabel_tasks.py drives the real classes where monailabel is installed.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from monai.transforms import Compose, LoadImaged, SaveImaged

from scripts.checks import InputError
from scripts.networks import Segmenter

from oracle import ORACLE_NET, write_oracle_checkpoint

TINY = {"network_features": [4, 8, 16, 32]}  # inference.yaml's; train.yaml's segmenter#features


def _parser(bundle_root, config, **overrides):
    """The bundle config parsed as MONAI Label parses it: ``bundle_root`` set to the bundle folder."""
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / config))
    parser.config.update({"bundle_root": str(bundle_root), **overrides})
    return parser


def _study(folder, name, shape=(40, 36, 18), channels=2):
    """A MONAI Label study: a 4D NIfTI (T1, T2 on the 4th axis, LPS, anisotropic) and its label of class indices."""
    label = np.zeros(shape, np.uint8)
    label[4 : shape[0] - 4, 4 : shape[1] - 4, 3 : shape[2] - 3] = 1
    label[8 : shape[0] - 10, 8 : shape[1] - 12, 5 : shape[2] - 5] = 2
    label[10:20, 10:18, 6:11] = 3  # off-centre: a flip or a shift would show
    t1 = label.astype(np.float32) * 100.0
    t2 = np.where(label > 0, 50.0, 0.0).astype(np.float32)
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])
    affine[:3, 3] = [30.0, 20.0, -10.0]
    image = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([t1, t2, t2][:channels], axis=-1), affine), str(image))
    label_file = folder / "labels" / f"{name}.nii.gz"
    label_file.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(label, affine), str(label_file))
    return {"image": str(image), "label": str(label_file)}, label


def test_ids_the_tasks_read_exist(bundle_root):
    infer = _parser(bundle_root, "inference.yaml", **TINY)
    network = infer.get_parsed_content("network_def")
    with torch.no_grad():
        assert network(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 4, 16, 16, 16)  # T1+T2 in, 4 classes out
    assert isinstance(infer.get_parsed_content("preprocessing"), Compose)
    assert callable(infer.get_parsed_content("inferer"))
    assert isinstance(infer.get_parsed_content("postprocessing"), Compose)
    assert infer.get("device") is not None and not infer.get("pre_transforms") and not infer.get("post_transforms")
    train = _parser(bundle_root, "train.yaml")
    for key in ("run", "device", "network", "train#trainer#max_epochs", "train#dataset#data", "validate#dataset#data"):
        assert train.get(key) is not None, key
    handlers = train.get("train#handlers")  # raw dicts: MONAI Label inserts its CheckpointLoader unless one is there
    assert all(isinstance(h, dict) for h in handlers)
    assert not [h for h in handlers if "CheckpointLoader" in h["_target_"]]
    assert train.get("ckpt_dir") == "$@bundle_root + '/models'"  # MONAI Label's infer task reloads models/model.pt


def test_label_names_come_from_metadata(bundle_root):
    metadata = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
    key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
    assert (key_image, key_pred) == ("image", "pred")  # the keys the infer task reads and writes
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}  # its rule
    assert labels == {"csf": 1, "gm": 2, "wm": 3}
    assert len(image["spatial_shape"]) == 3  # the task's `dimension`
    infer = _parser(bundle_root, "inference.yaml")
    assert len(image["channel_def"]) == len(infer.get_parsed_content("modalities")) == image["num_channels"]
    assert infer.get_parsed_content("output_labels") == sorted(int(k) for k in pred["channel_def"])  # written values
    train = _parser(bundle_root, "train.yaml")
    train.update({"train#dataset#data": [{"image": "a.nii.gz", "label": "a_label.nii.gz"}]})
    assert train.get_parsed_content("data#label_map") == ([0, 1, 2, 3, 255], [0, 1, 2, 3, 255])  # MONAI Label labels: indices


def test_plain_state_dict_model_loads_into_network_def(bundle_root, tmp_path):
    network = _parser(bundle_root, "inference.yaml", **TINY).get_parsed_content("network_def")
    trained = Segmenter(2, 4, features=TINY["network_features"])
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    checkpoint = torch.load(tmp_path / "model.pt", map_location="cpu")  # BasicInferTask._get_network
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    for name, value in trained.state_dict().items():
        assert torch.equal(network.state_dict()[name], value), name
    shipped = bundle_root / "models" / "model.pt"
    if shipped.exists():  # the bundle's own weights fit its default network_def
        checkpoint = torch.load(shipped, map_location="cpu")
        default = _parser(bundle_root, "inference.yaml").get_parsed_content("network_def")
        default.load_state_dict(checkpoint, strict=True)


def test_infers_a_4d_study_as_monailabel_does(bundle_root, tmp_path):
    entry, label = _study(tmp_path, "case01")
    write_oracle_checkpoint(tmp_path / "model.pt")
    parser = _parser(bundle_root, "inference.yaml", network_def=ORACLE_NET, roi_size=[32, 32, 32], device="cpu")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "model.pt"))
    pre = list(parser.get_parsed_content("preprocessing").transforms)
    loaders = [t for t in pre if isinstance(t, LoadImaged)]
    assert loaders and all(tuple(t.keys) == ("image",) for t in loaders)  # MONAI Label indexes every key it loads
    for t in loaders:
        t._loader.image_only = False  # as BundleInferTask.pre_transforms sets it
    data = {"image": entry["image"], "image_path": entry["image"], "model": "mri_gan", "device": "cpu"}
    for t in pre:
        data = t(data)
    assert data["image"].shape[0] == 2 and data["subject"] == "case01"
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
    for t in parser.get_parsed_content("postprocessing").transforms:
        if not isinstance(t, SaveImaged):
            data = t(data)
    pred = np.asarray(data["pred"])[0]
    assert pred.shape == label.shape
    assert (pred == label).mean() > 0.99  # on the study's own grid: a flip scores 0.95, a 2-voxel shift 0.92
    np.testing.assert_allclose(data["pred"].affine, nib.load(entry["image"]).affine, atol=1e-4)


def test_wrong_channel_count_names_the_file(bundle_root, tmp_path):
    entry, _ = _study(tmp_path, "three", channels=3)
    data = {"image": entry["image"]}
    with pytest.raises(InputError, match=r"three\.nii\.gz has shape \(3, 40, 36, 18\) .*needs 2 channels"):
        for t in _parser(bundle_root, "inference.yaml", **TINY).get_parsed_content("preprocessing").transforms:
            data = t(data)  # one by one, as MONAI Label runs them


def test_trains_one_epoch_with_monailabel_overrides(bundle_root, tmp_path, capsys):
    studies = [_study(tmp_path, f"case{i}", shape=(32, 32, 24))[0] for i in range(3)]
    pretrained = Segmenter(2, 4, features=TINY["network_features"])
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    handlers = _parser(bundle_root, "train.yaml").get("train#handlers")
    loader = {"_target_": "CheckpointLoader", "load_path": str(tmp_path / "pretrained.pt"),
              "load_dict": {"model": "$@network"}, "strict": False}  # fmt: skip
    dataset_dir = tmp_path / "never_read"
    run(
        "run",
        config_file=str(bundle_root / "configs" / "train.yaml"),
        meta_file=str(bundle_root / "configs" / "metadata.json"),
        # what BundleTrainTask overrides
        bundle_root=str(bundle_root), device="cpu", **{"train#trainer#max_epochs": 1},
        **{"train#dataset#data": studies[:2], "validate#dataset#data": studies[2:]},
        **{"train#handlers": [loader, *handlers]},
        # tiny and CI-sized; outputs outside the bundle
        output_dir=str(tmp_path / "runs"), ckpt_dir=str(tmp_path / "models"), dataset_dir=str(dataset_dir),
        **{"segmenter#features": TINY["network_features"], "gan#generator_features": [4, 8, 16]},
        patch_size=[16, 16, 16], batch_size=1, **{"patches#samples_per_volume": 1, "runtime#num_workers": 0},
        **{"schedule#val_interval": 1, "segmenter#val_roi_size": [32, 32, 32], "gan#warmup_iterations": 0},
        **{"schedule#epoch_length": 1},
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "Validation Dice per tissue" in out  # validated on MONAI Label's validation study
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    Segmenter(2, 4, features=TINY["network_features"]).load_state_dict(state)  # plain state_dict, reloadable
    assert not dataset_dir.exists() and not (tmp_path / "runs" / "split.json").exists()  # the dataset was never read
    parser = _parser(bundle_root, "train.yaml")
    parser.update({"train#dataset#data": studies[:2]})
    assert parser.get_parsed_content("train#unlabeled#dataset#data") == [{"image": s["image"]} for s in studies[:2]]


@pytest.mark.parametrize("max_epochs, warmup", [(1, 12), (3, 37), (50, 625)])  # int(0.25 * max_epochs * 50)
def test_schedules_follow_monailabel_max_epochs(bundle_root, max_epochs, warmup):
    """MONAI Label overrides train#trainer#max_epochs only: the GAN's warm-up and ramp (a quarter of the run each at
    schedule#epoch_length 50) and the cosine T_max follow it, not the 600 iterations (12 epochs) of
    `schedule#epochs`."""
    parser = _parser(bundle_root, "train.yaml")
    parser.update({"train#trainer#max_epochs": max_epochs})
    schedule = ("gan#warmup_iterations", "gan#rampup_iterations", "gan#generator_start_iterations")
    assert [parser.get_parsed_content(k) for k in schedule] == [warmup] * 3
    assert [parser.get_parsed_content(f"{s}#T_max") for s in ("lr_scheduler", "g_lr_scheduler")] == [max_epochs] * 2
    teacher = ConfigParser()
    teacher.read_config([str(bundle_root / "configs" / c) for c in ("train.yaml", "mean_teacher.yaml")])
    teacher.update({"bundle_root": str(bundle_root), "train#trainer#max_epochs": max_epochs})
    assert teacher.get_parsed_content("train#trainer#rampup_iterations") == int(0.4 * max_epochs * 50)


def test_dataset_folder_becomes_monailabel_studies(tmp_path):
    from scripts.data.phantom import write_iseg
    from tools.monailabel_studies import write_studies

    write_iseg(tmp_path / "iseg", num_labeled=1, num_unlabeled=1, shape=(24, 32, 40), seed=1)
    write_studies(tmp_path / "iseg", "iseg", tmp_path / "studies")
    t1, t2, codes = (nib.load(str(tmp_path / "iseg" / f"subject-1-{m}.hdr")) for m in ("T1", "T2", "label"))
    image = nib.load(str(tmp_path / "studies" / "subject-1.nii.gz"))
    assert image.shape == (24, 32, 40, 2)  # T1, T2 on the 4th axis
    np.testing.assert_array_equal(np.asarray(image.dataobj)[..., 1], np.asarray(t2.dataobj))
    np.testing.assert_allclose(image.affine, t1.affine)
    label = np.asarray(nib.load(str(tmp_path / "studies" / "labels" / "final" / "subject-1.nii.gz")).dataobj)
    np.testing.assert_array_equal(label, np.searchsorted([0, 10, 150, 250], np.asarray(codes.dataobj)))  # 0..3
    assert (tmp_path / "studies" / "subject-2.nii.gz").exists()
    assert not (tmp_path / "studies" / "labels" / "final" / "subject-2.nii.gz").exists()  # unlabelled
    with pytest.raises(FileExistsError, match="subject-1.nii.gz already exists"):
        write_studies(tmp_path / "iseg", "iseg", tmp_path / "studies")


def test_excluded_structures_stay_excluded_in_studies(tmp_path):
    """MRBrainS13 cerebellum and brainstem (codes 7, 8), left out of training and metrics, become 255 in the studies'
    labels, which training on studies leaves out of the loss too; tissues become 0..3."""
    from scripts.data.phantom import write_mrbrains13
    from tools.monailabel_studies import write_studies

    write_mrbrains13(tmp_path / "mrb", num_labeled=1, num_unlabeled=0, shape=(96, 96, 32), seed=1)
    write_studies(tmp_path / "mrb", "mrbrains13", tmp_path / "studies", modalities=("t1", "t1_ir", "flair"))
    codes = np.asarray(nib.load(str(next((tmp_path / "mrb").rglob("LabelsForTraining.nii*")))).dataobj)
    label = np.asarray(nib.load(str(next((tmp_path / "studies" / "labels" / "final").iterdir()))).dataobj)
    assert np.isin(codes, [7, 8]).any()
    np.testing.assert_array_equal(label == 255, np.isin(codes, [7, 8]))
    np.testing.assert_array_equal(label[np.isin(codes, [5, 6])], 1)  # CSF
    assert set(np.unique(label)) <= {0, 1, 2, 3, 255}


def test_monai_label_studies_have_class_index_labels(bundle_root, tmp_path):
    """MONAI Label's labels are class indices 0..3: the label format (and the input check's message) follow the
    training data, not --dataset_format."""
    parser = _parser(bundle_root, "train.yaml")
    parser["train#dataset#data"] = [{"image": str(tmp_path / "s.nii.gz"), "label": str(tmp_path / "l.nii.gz")}]
    parser.parse()
    assert parser.get_parsed_content("data#label_format") == "datalist"
    assert parser.get_parsed_content("data#label_map") == ([0, 1, 2, 3, 255], [0, 1, 2, 3, 255])
