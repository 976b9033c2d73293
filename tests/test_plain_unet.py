"""The plain supervised baseline (tools.benchmark_plain_unet): its preprocessing and a tiny end-to-end run."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from scripts.data.datasets import label_mapping
from scripts.data.phantom import write_iseg
from tools.benchmark_plain_unet import preprocessing, run


def test_zscore_brain_normalises_over_the_brain_only(tmp_path):
    rng = np.random.default_rng(0)
    t1, t2 = np.zeros((12, 10, 8), np.float32), np.zeros((12, 10, 8), np.float32)
    brain = np.zeros(t1.shape, bool)
    brain[2:10, 3:8, 1:7] = True
    t1[brain] = rng.normal(300, 40, brain.sum()).clip(1)
    t2[brain] = rng.normal(900, 120, brain.sum()).clip(1)
    label = np.where(brain, 150, 0).astype(np.uint8)
    entry = {}
    for name, volume in (("t1", t1), ("t2", t2), ("label", label)):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"{name}.nii.gz")
        entry[name] = str(tmp_path / f"{name}.nii.gz")

    d = preprocessing(("t1", "t2"), "zscore_brain", label_mapping("iseg"))(entry)

    image, mask = np.asarray(d["image"]), np.asarray(d["brain"])[0].astype(bool)
    assert image.shape == (2, 12, 10, 8)
    np.testing.assert_array_equal(mask, brain)
    for channel in image:
        assert abs(channel[mask].mean()) < 1e-4
        assert abs(channel[mask].std() - 1) < 1e-3
        assert np.all(channel[~mask] == 0)
    assert set(np.unique(np.asarray(d["label"]))) == {0, 2}


def test_percentile_scales_the_box_to_minus_one_one(tmp_path):
    volume = np.zeros((8, 8, 8), np.float32)
    volume[2:6, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4) + 1
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "t1.nii.gz")
    d = preprocessing(("t1",), "percentile")({"t1": str(tmp_path / "t1.nii.gz")})
    image = np.asarray(d["image"])
    assert image.min() == pytest.approx(-1) and image.max() == pytest.approx(1)
    assert np.all(image[0][volume == 0] == -1)
    assert "label" not in d and int(np.asarray(d["brain"]).sum()) == 64


@pytest.fixture(scope="module")
def iseg_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("iseg")
    write_iseg(data, num_labeled=3, num_unlabeled=0, shape=(48, 48, 48))
    return data


class _GreyUNet(UNet):
    """The UNet with a large GM bias on its logits: it trains and infers as usual but predicts GM everywhere, so that
    the Dice is known."""

    def forward(self, x):
        return super().forward(x) + torch.tensor([0.0, 0.0, 1e3, 0.0]).view(1, -1, 1, 1, 1)


def _tiny_run(data, out, monkeypatch, **options):
    """A tiny run whose UNet predicts GM everywhere; returns its result and the test subject's Dice computed by
    hand: GM against the brain (T1 or T2 above 0) with ``mask_output``, else against the whole volume."""
    monkeypatch.setattr("tools.benchmark_plain_unet.UNet", _GreyUNet)
    run(dataset_dir=str(data), dataset_format="iseg", num_labeled=1, num_val=1, num_test=1, patch_size=16,
        roi_size=24, channels=(4, 8), batch=2, threads=1, out=str(out), **options)
    result = json.loads(out.read_text())
    volume = {m: np.asarray(nib.load(str(data / f"{result['per_subject'][0]['subject']}-{m}.hdr")).dataobj)
              for m in ("T1", "T2", "label")}  # fmt: skip
    gm = volume["label"] == 150
    predicted = (volume["T1"] > 0) | (volume["T2"] > 0) if options.get("mask_output", True) else np.ones_like(gm)
    expected = {"CSF": 0.0, "GM": 2 * (gm & predicted).sum() / (gm.sum() + predicted.sum()), "WM": 0.0}
    return result, expected


def test_tiny_run_writes_dice_per_tissue(iseg_dir, tmp_path, monkeypatch):
    result, expected = _tiny_run(iseg_dir, tmp_path / "result.json", monkeypatch, iterations=3)
    assert result["dice"] == pytest.approx(expected) and 0.3 < expected["GM"] < 0.9
    assert {k: result["per_subject"][0][k] for k in expected} == pytest.approx(expected)
    assert result["mean_dice"] == pytest.approx(expected["GM"] / 3)
    assert result["iterations"] == 3
    assert len(result["per_subject"]) == 1 and len(result["training_subjects"]) == 1
    assert result["options"]["patch_size"] == [16, 16, 16] and result["options"]["norm"] == "zscore_brain"


def test_tiny_run_with_the_other_choices(iseg_dir, tmp_path, monkeypatch):
    """Without mask_output the GM predicted outside the brain counts against the Dice."""
    result, expected = _tiny_run(iseg_dir, tmp_path / "result.json", monkeypatch, iterations=2, norm="percentile",
                                 sampling="random", mask_output=False)  # fmt: skip
    assert result["iterations"] == 2 and result["dice"] == pytest.approx(expected) and expected["GM"] < 0.3
    assert result["options"]["sampling"] == "random" and result["options"]["mask_output"] is False
