"""Inference writes label maps on the input's own voxel grid, whatever its orientation and spacing."""

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run

from oracle import ORACLE_NET, write_oracle_checkpoint


def _lps_volume(folder):
    """An asymmetric 3-tissue volume stored in LPS orientation with anisotropic spacing."""
    shape = (40, 36, 18)
    label = np.zeros(shape, np.uint8)
    label[4:36, 4:32, 3:15] = 1
    label[8:30, 8:24, 5:13] = 2
    label[10:20, 10:18, 6:11] = 3  # off-centre: a flip or a shift would show
    t1 = (label.astype(np.float32) * 100.0)
    t2 = np.where(label > 0, 50.0, 0.0).astype(np.float32)
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])  # LPS, anisotropic
    affine[:3, 3] = [30.0, 20.0, -10.0]
    for name, data in {"T1": t1, "T2": t2, "label": label}.items():
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"case01_{name}.nii.gz"))
    return label, affine


@pytest.mark.parametrize("output_labels", [[0, 1, 2, 3], [0, 10, 150, 250]])
def test_labels_land_on_input_grid(bundle_root, tmp_path, monkeypatch, output_labels):
    data = tmp_path / "data"
    data.mkdir()
    label, affine = _lps_volume(data)
    write_oracle_checkpoint(tmp_path / "oracle.pt")
    monkeypatch.chdir(bundle_root)
    run(
        "inference",
        config_file="configs/inference.yaml",
        dataset_dir=str(data),
        dataset_format="folder",
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "oracle.pt"),
        network_def=ORACLE_NET,
        roi_size=[32, 32, 32],
        output_labels=output_labels,
        save_probabilities=True,
    )
    seg = nib.load(str(tmp_path / "out" / "case01_seg.nii.gz"))
    assert seg.shape == label.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)
    expected = np.take(output_labels, label)
    agreement = (np.asarray(seg.dataobj) == expected).mean()
    assert agreement > 0.99, agreement  # a flipped map scores 0.95, a 2-voxel shift 0.92
    prob = nib.load(str(tmp_path / "out" / "case01_prob.nii.gz"))
    assert prob.shape == (*label.shape, 4)
    assert sorted(p.name for p in data.iterdir()) == ["case01_T1.nii.gz", "case01_T2.nii.gz", "case01_label.nii.gz"]


def test_analyze_input_keeps_nibabel_grid(bundle_root, tmp_path, monkeypatch):
    """iSEG Analyze files: the segmentation has the shape and the (nibabel) affine of the input."""
    from scripts.data.phantom import write_iseg

    write_iseg(tmp_path / "iseg", num_labeled=1, num_unlabeled=0, shape=(40, 48, 56), seed=3)
    write_oracle_checkpoint(tmp_path / "oracle.pt")
    monkeypatch.chdir(bundle_root)
    run(
        "inference",
        config_file="configs/inference.yaml",
        dataset_dir=str(tmp_path / "iseg"),
        dataset_format="iseg",
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "oracle.pt"),
        network_def=ORACLE_NET,
    )
    source = nib.load(str(tmp_path / "iseg" / "subject-1-T1.hdr"))
    seg = nib.load(str(tmp_path / "out" / "subject-1_seg.nii.gz"))
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)


def _causes(error: BaseException) -> str:
    """The messages of an exception and of its chain of causes."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def test_existing_outputs_and_input_folder_are_refused(bundle_root, tmp_path, monkeypatch):
    """A second run stops before any work unless --overwrite; outputs never go into the input folder."""
    data = tmp_path / "data"
    data.mkdir()
    _lps_volume(data)
    write_oracle_checkpoint(tmp_path / "oracle.pt")
    monkeypatch.chdir(bundle_root)
    args = dict(
        config_file="configs/inference.yaml", dataset_dir=str(data), dataset_format="folder",
        ckpt_path=str(tmp_path / "oracle.pt"), roi_size=[32, 32, 32],
        network_def=ORACLE_NET,
    )  # fmt: skip
    out = tmp_path / "out"
    run("inference", output_dir=str(out), **args)
    seg = out / "case01_seg.nii.gz"
    before = seg.read_bytes()
    with pytest.raises(Exception) as error:
        run("inference", output_dir=str(out), **args)
    assert "case01_seg.nii.gz already exists" in _causes(error.value)  # MONAI wraps the error raised in the config
    assert seg.read_bytes() == before
    with pytest.raises(Exception) as error:
        run("inference", output_dir=str(data), overwrite=True, **args)
    assert "holds input files" in _causes(error.value)
    assert sorted(p.name for p in data.iterdir()) == ["case01_T1.nii.gz", "case01_T2.nii.gz", "case01_label.nii.gz"]
    run("inference", output_dir=str(out), overwrite="true", **args)
    assert seg.exists()


# --- tissue volumes (tissue_volumes.csv) and overlays (save_overlay) ---------------------------------------------

_FIXTURE_VOXELS = {"csf": 32 * 28 * 12 - 22 * 16 * 8, "gm": 22 * 16 * 8 - 10 * 8 * 5, "wm": 10 * 8 * 5}  # _lps_volume


def _second_subject(data, spacing=(0.8, 0.8, 1.0)):
    """``case02``: case01's images and label again, with other voxel sizes (RAS)."""
    for name in ("T1", "T2", "label"):
        image = nib.load(str(data / f"case01_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([*spacing, 1.0])), str(data / f"case02_{name}.nii.gz"))


def _inference(bundle_root, monkeypatch, tmp_path, data, out, **overrides):
    write_oracle_checkpoint(tmp_path / "oracle.pt")
    monkeypatch.chdir(bundle_root)
    run(
        "inference", config_file="configs/inference.yaml", dataset_dir=str(data), dataset_format="folder",
        output_dir=str(out), ckpt_path=str(tmp_path / "oracle.pt"), network_def=ORACLE_NET, roi_size=[32, 32, 32],
        **overrides,
    )  # fmt: skip


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_tissue_volumes_use_voxel_size_and_class_indices():
    """Hand-counted: a rotated affine with 0.5 x 0.8 x 1.5 mm voxels (0.6 mm^3); relabelled maps are refused."""
    from monai.data import MetaTensor
    from scripts.tissue_outputs import TissueVolumesd

    label = torch.zeros(1, 10, 8, 6)
    label[0, :5, :, :] = 1  # 240 voxels of CSF
    label[0, 5:8, :4, :] = 2  # 72 of GM
    label[0, 8:, :1, :1] = 3  # 2 of WM
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[c, -s, 0, 10], [s, c, 0, -5], [0, 0, 1, 3], [0, 0, 0, 1]]) @ np.diag([0.5, 0.8, 1.5, 1.0])
    out = TissueVolumesd("pred")({"pred": MetaTensor(label, affine=affine, meta={"subject": "s1"})})["tissue_volumes"]
    assert out["subject"] == "s1"
    np.testing.assert_allclose([out["csf_ml"], out["gm_ml"], out["wm_ml"], out["brain_ml"]],
                               [0.144, 0.0432, 0.0012, 0.1884], rtol=1e-9)  # fmt: skip
    mapped = MetaTensor(torch.where(label == 3, 250.0, label), affine=affine, meta={"subject": "s1"})
    with pytest.raises(ValueError, match="class indices 0..3"):
        TissueVolumesd("pred")({"pred": mapped})


def test_volume_csv_matches_written_labels(bundle_root, tmp_path, monkeypatch):
    """One row per subject; the mL of each tissue recounted on the written label file with its affine."""
    data = tmp_path / "data"
    data.mkdir()
    _lps_volume(data)  # 1.2 x 0.9 x 2.0 mm voxels
    _second_subject(data)  # 0.8 x 0.8 x 1.0 mm
    output_labels = [0, 10, 150, 250]  # counting must not see these values
    out = tmp_path / "out"
    _inference(bundle_root, monkeypatch, tmp_path, data, out, output_labels=output_labels)
    header, rows = _read_csv(out / "tissue_volumes.csv")
    assert header == ["subject", "csf_ml", "gm_ml", "wm_ml", "brain_ml"]
    assert [r["subject"] for r in rows] == ["case01", "case02"]
    for row, voxel_mm3 in zip(rows, (1.2 * 0.9 * 2.0, 0.8 * 0.8 * 1.0)):
        seg = nib.load(str(out / f"{row['subject']}_seg.nii.gz"))
        assert abs(np.linalg.det(seg.affine[:3, :3])) == pytest.approx(voxel_mm3)
        classes = np.searchsorted(output_labels, np.asarray(seg.dataobj))
        for k, tissue in enumerate(("csf", "gm", "wm"), start=1):
            assert float(row[f"{tissue}_ml"]) == pytest.approx((classes == k).sum() * voxel_mm3 / 1000, abs=1e-4)
            assert float(row[f"{tissue}_ml"]) == pytest.approx(_FIXTURE_VOXELS[tissue] * voxel_mm3 / 1000, rel=0.05)
        brain = sum(float(row[f"{t}_ml"]) for t in ("csf", "gm", "wm"))
        assert float(row["brain_ml"]) == pytest.approx(brain, abs=2e-4)
        assert float(row["brain_ml"]) == pytest.approx(sum(_FIXTURE_VOXELS.values()) * voxel_mm3 / 1000, rel=0.01)
    assert not list(out.glob("*.png"))  # overlays only on request


def test_overlay_png_on_request(bundle_root, tmp_path, monkeypatch):
    """Three views side by side, 0.9 mm pixels: RAS 40 x 36 x 18 voxels of 1.2 x 0.9 x 2.0 mm are 53 x 36 x 40
    pixels, so axial 36 x 53, coronal 40 x 53, sagittal 40 x 36: a 40 x 142 RGB image, tissues in colour."""
    import itk

    data = tmp_path / "data"
    data.mkdir()
    _lps_volume(data)
    out = tmp_path / "out"
    _inference(bundle_root, monkeypatch, tmp_path, data, out, save_overlay=True)
    png = out / "case01_overlay.png"
    rgb = np.asarray(itk.imread(str(png)))
    assert rgb.shape == (40, 142, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == rgb[0, 0, 0]).all()  # background: grey (black), not coloured
    coloured = (rgb.max(-1).astype(int) - rgb.min(-1)) > 40
    assert [coloured[:, a:b].mean() > 0.2 for a, b in ((0, 53), (53, 106), (106, 142))] == [True, True, True]
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 180))[:, :53].any()  # yellow over bright WM
    assert ((rgb[..., 2].astype(int) - rgb[..., 0]) > 60).any()  # blue CSF
    assert (out / "tissue_volumes.csv").exists() and not list(data.glob("*.png"))


def test_existing_volumes_and_overlays_are_refused(bundle_root, tmp_path, monkeypatch):
    """The overwrite guard covers tissue_volumes.csv and, when requested, the overlays."""
    data = tmp_path / "data"
    data.mkdir()
    _lps_volume(data)
    out = tmp_path / "out"
    _inference(bundle_root, monkeypatch, tmp_path, data, out, save_overlay=True)
    csv_file, overlay = out / "tissue_volumes.csv", out / "case01_overlay.png"
    before = csv_file.read_bytes()
    (out / "case01_seg.nii.gz").unlink()
    with pytest.raises(Exception) as error:
        _inference(bundle_root, monkeypatch, tmp_path, data, out, save_overlay=True)
    assert "tissue_volumes.csv already exists (and 1 more); pass --overwrite true" in _causes(error.value)
    assert csv_file.read_bytes() == before and not (out / "case01_seg.nii.gz").exists()
    csv_file.unlink()
    with pytest.raises(Exception) as error:
        _inference(bundle_root, monkeypatch, tmp_path, data, out, save_overlay="true")
    assert "case01_overlay.png already exists" in _causes(error.value)
    _inference(bundle_root, monkeypatch, tmp_path, data, out)  # overlays not requested: not in the way
    overlay.unlink()
    (out / "case01_seg.nii.gz").unlink()
    _inference(bundle_root, monkeypatch, tmp_path, data, out, save_overlay=True, overwrite="true")
    assert csv_file.exists() and overlay.exists()


def test_failed_run_leaves_volume_csv_as_it_was(bundle_root, tmp_path, monkeypatch):
    """The CSV is written once, at the end: a run that fails on its second subject neither truncates nor appends."""
    data = tmp_path / "data"
    data.mkdir()
    _lps_volume(data)
    out = tmp_path / "out"
    _inference(bundle_root, monkeypatch, tmp_path, data, out)
    before = b"subject,csf_ml,gm_ml,wm_ml,brain_ml\nearlier,1,2,3,6\n"  # what a partial rewrite would not give back
    (out / "tissue_volumes.csv").write_bytes(before)
    seg_time = (out / "case01_seg.nii.gz").stat().st_mtime_ns
    _second_subject(data)
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 17), np.float32), np.eye(4)), str(data / "case02_T2.nii.gz"))
    with pytest.raises(Exception):  # T1 and T2 of case02 differ in shape: fails after case01 is done
        _inference(bundle_root, monkeypatch, tmp_path, data, out, overwrite=True, check_inputs=False)
    assert (out / "case01_seg.nii.gz").stat().st_mtime_ns != seg_time  # the run got past case01
    assert (out / "tissue_volumes.csv").read_bytes() == before
    assert not list(out.glob(".tissue_volumes.csv.*"))  # no temporary file left


def test_brain_mask_sets_the_outside_to_background(bundle_root, tmp_path, monkeypatch, caplog):
    """case01's mask (a folder suffix) leaves out a slab holding CSF, GM and bright "scalp" (T1 1000): the scalp
    must not set the scaling (it would turn WM into CSF) and the slab is background in the label map and the tissue
    volumes; case02 has no mask. A network that calls every voxel CSF shows that the written map itself is masked
    (the head box, cropped with a margin, reaches beyond the mask).
    The tiny brains get an out-of-distribution warning naming them."""
    data = tmp_path / "data"
    data.mkdir()
    label, affine = _lps_volume(data)
    _second_subject(data)
    mask = np.ones(label.shape, np.uint8)
    mask[24:] = 0  # WM (10:20) stays inside
    nib.save(nib.Nifti1Image(mask, affine), str(data / "case01_mask.nii.gz"))
    t1 = np.asarray(nib.load(str(data / "case01_T1.nii.gz")).dataobj).copy()
    t1[36:] = 1000.0
    nib.save(nib.Nifti1Image(t1, affine), str(data / "case01_T1.nii.gz"))
    monkeypatch.setattr(logging.getLogger("scripts.ood"), "handlers", [caplog.handler])  # run() resets the root's
    suffixes = {"t1": "_T1.nii.gz", "t2": "_T2.nii.gz", "mask": "_mask.nii.gz"}
    out = tmp_path / "out"
    _inference(bundle_root, monkeypatch, tmp_path, data, out, suffixes=suffixes)
    seg = np.asarray(nib.load(str(out / "case01_seg.nii.gz")).dataobj)
    outside = mask == 0
    assert (label[outside] > 0).sum() > 1000 and (seg[outside] == 0).all()
    assert (seg[~outside] == label[~outside]).mean() > 0.99
    assert (np.asarray(nib.load(str(out / "case02_seg.nii.gz")).dataobj) == label).mean() > 0.99
    _, rows = _read_csv(out / "tissue_volumes.csv")
    assert float(rows[0]["brain_ml"]) == pytest.approx((seg > 0).sum() * 1.2 * 0.9 * 2.0 / 1000, abs=1e-3)
    warnings = [r.getMessage() for r in caplog.records if r.name == "scripts.ood"]
    assert [w.split(" looks unlike")[0] for w in warnings] == ["subject case01", "subject case02"]
    assert all("mL (outside 150-2500 mL)" in w for w in warnings)

    csf = torch.nn.Conv3d(2, 4, kernel_size=1)
    torch.nn.init.zeros_(csf.weight)
    csf.bias.data = torch.tensor([0.0, 1.0, 0.0, 0.0])
    torch.save(csf.state_dict(), tmp_path / "csf.pt")
    run(
        "inference", config_file="configs/inference.yaml", dataset_dir=str(data), dataset_format="folder",
        output_dir=str(tmp_path / "csf"), ckpt_path=str(tmp_path / "csf.pt"), network_def=ORACLE_NET,
        roi_size=[32, 32, 32], suffixes=suffixes,
    )  # fmt: skip
    seg = np.asarray(nib.load(str(tmp_path / "csf" / "case01_seg.nii.gz")).dataobj)
    assert (seg[outside] == 0).all() and (seg[~outside & (label > 0)] == 1).all()  # (beyond the head box: 0)
    assert (np.asarray(nib.load(str(tmp_path / "csf" / "case02_seg.nii.gz")).dataobj)[label > 0] == 1).all()


def test_inference_benchmark_repeats_into_its_output_folder(bundle_root, tmp_path, monkeypatch):
    """The benchmark runs the workflow several times into one temporary folder; the overwrite guard must let it."""
    from scripts.networks import Segmenter
    from tools.benchmark_inference import _write_volume, measure

    data = tmp_path / "data"
    data.mkdir()
    _write_volume(data, (32, 40, 48), seed=0)
    torch.save(Segmenter(2, 4).state_dict(), tmp_path / "net.pt")
    monkeypatch.chdir(bundle_root)
    result = measure(str(data), str(tmp_path / "out"), str(tmp_path / "net.pt"), "cpu", repeats=1)
    assert len(result["seconds_all"]) == 2 and (tmp_path / "out" / "bench_seg.nii.gz").exists()


def test_inference_autocasts_with_trainings_dtype(bundle_root):
    """On a GPU, inference autocasts to the dtype training uses (bfloat16 where the GPU has it), not float16."""
    from monai.bundle import ConfigParser

    configs = {}
    for name in ("train.yaml", "inference.yaml"):
        parser = ConfigParser()
        parser.read_config(str(bundle_root / "configs" / name))
        configs[name] = parser
    assert configs["inference.yaml"]["amp_dtype"] == configs["train.yaml"]["runtime#amp_dtype"]
    assert configs["inference.yaml"]["evaluator"]["amp_kwargs"] == {"dtype": "$getattr(torch, @amp_dtype)"}
