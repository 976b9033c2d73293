"""MONAI Label's own BundleInferTask and BundleTrainTask on a copy of the bundle (skipped without monailabel).

monailabel needs a torch with a matching torchvision, so it lives in its own venv (docs/monailabel.md):
    . .venv-monailabel/bin/activate && OMP_NUM_THREADS=1 python -m pytest -q tests/test_monailabel_tasks.py
The copy is made tiny (network and patch sizes, validation every epoch) by editing its configs, as a user may.
"""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("monailabel")

from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: E402

from scripts.networks import Segmenter  # noqa: E402

FEATURES = [4, 8, 16, 32]
TINY = {  # inference.yaml's settings, then train.yaml's
    "network_features": FEATURES, "roi_size": [32, 32, 32], "segmenter#features": FEATURES,
    "gan#generator_features": [4, 8, 16], "patch_size": [16, 16, 16], "batch_size": 1,
    "patches#samples_per_volume": 1, "runtime#num_workers": 0, "schedule#val_interval": 1,
    "segmenter#val_roi_size": [32, 32, 32], "gan#warmup_iterations": 0, "schedule#epoch_length": 1,
}  # fmt: skip


def _tiny_copy(bundle_root, app_dir):
    """The bundle as a local MONAI Label bundle ``<app>/model/mri_gan`` with tiny settings and a tiny model.pt."""
    copy = app_dir / "model" / "mri_gan"
    shutil.copytree(bundle_root / "configs", copy / "configs")
    shutil.copytree(bundle_root / "scripts", copy / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("inference.yaml", "train.yaml"):
        path = copy / "configs" / name
        config = yaml.safe_load(path.read_text())
        for key, value in TINY.items():  # <group>#<key>: the key in the config's group, e.g. gan
            block, _, sub = key.rpartition("#")
            target = config.get(block) if block else config
            if isinstance(target, dict) and sub in target:
                target[sub] = value
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    (copy / "models").mkdir()
    torch.manual_seed(0)
    torch.save(Segmenter(2, 4, features=FEATURES).state_dict(), copy / "models" / "model.pt")
    return copy


def _studies(folder, count=3, shape=(32, 36, 24)):
    """MONAI Label studies: 4D NIfTI images (T1, T2 on the 4th axis) and their final labels (class indices)."""
    (folder / "labels" / "final").mkdir(parents=True)
    affine = np.diag([-1.2, 1.0, 1.5, 1.0])
    for i in range(count):
        label = np.zeros(shape, np.uint8)
        label[4:-4, 4:-4, 3:-3] = 1
        label[8:-8, 8:-8, 5:-5] = 2
        label[10 + i : 18 + i, 12:20, 8:14] = 3
        t1 = label * 100.0 + np.random.default_rng(i).normal(0, 5, shape)
        t2 = np.where(label > 0, 50.0, 0.0)
        nib.save(nib.Nifti1Image(np.stack([t1, t2], -1).astype(np.float32), affine), str(folder / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(folder / "labels" / "final" / f"case{i}.nii.gz"))


def test_bundle_infers_and_trains_in_monailabel(bundle_root, tmp_path):
    bundle = _tiny_copy(bundle_root, tmp_path / "app")
    _studies(tmp_path / "studies")
    conf = {"models": "mri_gan", "preload": "false"}

    infer = BundleInferTask(str(bundle), conf)
    assert infer.is_valid() and infer.labels == {"csf": 1, "gm": 2, "wm": 3} and infer.dimension == 3
    image = tmp_path / "studies" / "case0.nii.gz"
    result_file, result = infer({"image": str(image), "device": "cpu"})
    seg, source = nib.load(result_file), nib.load(str(image))
    assert seg.shape == source.shape[:3]
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
    assert result["label_names"] == {"csf": 1, "gm": 2, "wm": 3}
    print("infer:", json.dumps({"file": result_file, "shape": seg.shape, "latencies": result["latencies"]}))

    train = BundleTrainTask(str(bundle), conf)
    assert train.is_valid()
    before = torch.load(bundle / "models" / "model.pt", weights_only=True)
    datastore = LocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    assert len(datastore.datalist()) == 3
    train({"model": "mri_gan", "max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False}, datastore)
    after = torch.load(bundle / "models" / "model.pt", weights_only=True)  # the best model of the validation
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not (bundle / "data").exists()  # the bundle's own dataset (phantoms) was never built
    result_file, _ = infer({"image": str(image), "device": "cpu"})  # the infer task reloads the new model.pt
    assert nib.load(result_file).shape == source.shape[:3]
