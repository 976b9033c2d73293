"""Inference lands on the input's own grid whatever its orientation, obliquity, spacing, data type and file format,
and the sliding window stitches on ``stitch_device`` (the CPU when the network runs on a GPU)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from scipy import ndimage

from oracle import ORACLE_NET, write_oracle_checkpoint

SHAPE = (40, 36, 24)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(axes: np.ndarray, spacing, origin=(25.0, -18.0, 7.0)) -> np.ndarray:
    """Affine whose voxel axes point along the columns of ``axes``, scaled by ``spacing`` (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


PIR = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # voxel axes run posterior, inferior, right
# name -> (affine, its nearest axis codes)
GEOMETRIES = {
    "pir": (_affine(PIR, (1.0, 1.1, 0.9)), "PIR"),
    "oblique": (_affine(_rotation(0, 17) @ _rotation(2, -20), (1.0, 1.0, 1.2)), "RAS"),
    "anisotropic": (_affine(np.eye(3), (0.8, 0.8, 3.0)), "RAS"),
}
DTYPES = ["uint8", "int16", "int32", "float32", "float64"]
# subject id -> (affine, stored data type, file extension); Analyze (.hdr/.img) keeps only the spacing of the affine
SUBJECTS = {
    **{name: (affine, "int16", ".nii.gz") for name, (affine, _) in GEOMETRIES.items()},
    **{f"nifti-{dtype}": (_affine(np.eye(3), (1.0, 1.0, 1.0)), dtype, ".nii.gz") for dtype in DTYPES},
    **{f"analyze-{dtype}": (np.diag([1.2, 0.9, 2.0, 1.0]), dtype, ".hdr") for dtype in DTYPES},
}


def _tissue_map() -> np.ndarray:
    """Nested, off-centre boxes of CSF, GM and WM: a flip, a transpose or a shift would show."""
    label = np.zeros(SHAPE, np.uint8)
    label[4:36, 4:32, 3:21] = 1
    label[8:30, 8:26, 5:18] = 2
    label[10:20, 10:19, 7:13] = 3
    return label


def _write_subject(folder, subject, affine, dtype, ext, label) -> dict:
    """Write T1 (tissue-coded: 0/80/160/240, fits uint8) and T2 images; return the datalist entry."""
    images = {"t1": label * 80, "t2": np.where(label > 0, 50 + 10 * label, 0)}
    entry = {"subject": subject}
    for name, data in images.items():
        path = folder / f"{subject}_{name.upper()}{ext}"
        image_class = nib.AnalyzeImage if ext == ".hdr" else nib.Nifti1Image
        nib.save(image_class(data.astype(dtype), affine), str(path))
        entry[name] = str(path)
    return entry


@pytest.fixture(scope="module")
def segmented(bundle_root, tmp_path_factory):
    """Segment all ``SUBJECTS`` in one inference run; return the input folder and the output folder."""
    tmp = tmp_path_factory.mktemp("geometry")
    data = tmp / "data"
    data.mkdir()
    label = _tissue_map()
    entries = [_write_subject(data, s, affine, dtype, ext, label) for s, (affine, dtype, ext) in SUBJECTS.items()]
    (data / "datalist.json").write_text(json.dumps({"testing": entries}))
    write_oracle_checkpoint(tmp / "oracle.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(bundle_root)
        run(
            "inference",
            config_file="configs/inference.yaml",
            dataset_dir=str(data / "datalist.json"),
            dataset_format="datalist",
            output_dir=str(tmp / "out"),
            ckpt_path=str(tmp / "oracle.pt"),
            network_def=ORACLE_NET,
        )
    return data, tmp / "out"


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_segmentation_lands_on_input_grid(segmented, subject):
    data, out = segmented
    ext = SUBJECTS[subject][2]
    source = nib.load(str(data / f"{subject}_T1{ext}"))
    seg = nib.load(str(out / f"{subject}_seg.nii.gz"))
    assert seg.shape == source.shape == SHAPE
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-5)
    if subject in GEOMETRIES:  # the input really has the geometry under test
        affine, axcodes = GEOMETRIES[subject]
        np.testing.assert_allclose(source.affine, affine, atol=1e-5)
        assert "".join(nib.aff2axcodes(source.affine)) == axcodes
    label, predicted = _tissue_map(), np.asarray(seg.dataobj)
    interior = ndimage.minimum_filter(label, size=3) == ndimage.maximum_filter(label, size=3)
    assert (predicted[interior] == label[interior]).all(), f"{subject}: wrong labels away from tissue borders"
    agreement = (predicted == label).mean()
    assert agreement > 0.99, f"{subject}: {agreement:.4f} of voxels agree"  # 1-voxel shift: 0.92-0.95, flip: 0.94-0.96


def test_windows_run_on_input_device_and_stitch_on_stitch_device(bundle_root):
    """The config's inferer runs each window on the input's device and stitches on ``stitch_device``.

    No GPU is needed: with inputs on the CPU and ``stitch_device: meta`` the output must land on ``meta``; on a GPU
    machine the same wiring keeps the windows on the GPU and the whole-volume buffer on the CPU
    (``stitch_device: cpu``).
    """
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs/inference.yaml"))
    assert parser["stitch_device"] == "cpu"
    parser["stitch_device"] = "meta"
    parser["roi_size"] = [16, 16, 16]
    parser["one_window_voxels"] = None  # tiled, as an image over the one-window budget is
    inferer = parser.get_parsed_content("inferer")
    window_devices = []

    def network(window):
        window_devices.append(window.device.type)
        return window.repeat(1, 2, 1, 1, 1)

    out = inferer(torch.rand(1, 2, 24, 20, 18), network)
    assert out.device.type == "meta" and out.shape == (1, 4, 24, 20, 18)
    assert len(window_devices) > 1 and set(window_devices) == {"cpu"}
