"""Inference writes label maps on the input's own voxel grid, whatever its orientation and spacing."""

import nibabel as nib
import numpy as np
import pytest
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
    from scripts.phantom import write_iseg

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
