"""The model card's figures: each command writes a PNG of the expected size from tiny inputs."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from tools import figures  # noqa: E402


def _png(path) -> np.ndarray:
    """The decoded RGBA pixels of a PNG file (fails on anything else)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _texts(monkeypatch) -> list[str]:
    """Capture the text drawn on the next figure a command saves (the command still writes its PNG)."""
    texts: list[str] = []
    save = figures._save

    def capture(fig, out, dpi):
        texts.extend(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
        return save(fig, out, dpi)

    monkeypatch.setattr(figures, "_save", capture)
    return texts


def test_architecture_reads_the_networks_of_the_config(bundle_root, tmp_path, monkeypatch):
    override = tmp_path / "tiny.yaml"
    override.write_text("segmenter#features: [4, 8, 16, 32]\ngan#generator_features: [4, 8, 16]\n"
                        "gan#fake_weight: 0.5\n")
    texts = _texts(monkeypatch)
    out = figures.architecture([str(bundle_root / "configs/train.yaml"), str(override)], tmp_path / "a.png", dpi=20)
    assert _png(out).shape == (7 * 20, 20 * 20, 4)
    joined = "\n".join(texts)
    assert "conv 16\n1/4" in joined and "32\n1/8" in joined  # generator's and segmenter's deepest levels
    assert "0.5 x fake" in joined and "4 logits" in joined and "T1, T2" in joined


def test_architecture_command_refuses_a_config_without_mri_gan(bundle_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    configs = "['bundle/configs/train.yaml','bundle/configs/standard_gan.yaml']"
    out = tmp_path / "a.png"
    cmd = [sys.executable, "-m", "tools.figures", "architecture", "--config_file", configs, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=bundle_root.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "generator_def is StandardGANGenerator, not MRIGANGenerator" in proc.stderr
    assert not out.exists()


def _nifti(path, data, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return str(path)


@pytest.fixture
def subject(tmp_path):
    """A 20x24x28 two-modality subject, its 0-3 segmentation and the same labels in iSEG values (0/10/150/250)."""
    rng = np.random.default_rng(0)
    seg = np.zeros((20, 24, 28), np.uint8)
    seg[4:16, 4:20, 4:24] = 1
    seg[6:14, 6:18, 6:22] = 2
    seg[8:12, 8:16, 8:20] = 3
    contrast = {"T1": 30.0, "T2": -20.0}
    images = [_nifti(tmp_path / f"s-{m}.nii.gz", (seg * k + rng.normal(0, 1, seg.shape)).astype(np.float32))
              for m, k in contrast.items()]  # fmt: skip
    iseg = np.array([0, 10, 150, 250], np.uint8)[seg]
    return images, _nifti(tmp_path / "s_seg.nii.gz", seg), _nifti(tmp_path / "s-label.nii.gz", iseg)


def test_overlay_with_ground_truth(subject, tmp_path, monkeypatch):
    images, seg, label = subject
    texts = _texts(monkeypatch)
    out = figures.overlay(images, seg, label, names=["T1", "T2"], label_format="iseg", out=tmp_path / "o.png", dpi=20)
    pixels = _png(out)
    rows = 3  # T1 and T2 with the segmentation, T1 with the ground truth
    assert pixels.shape == ((rows * figures.CELL_INCHES + figures.LEGEND_INCHES) * 20, 3 * figures.CELL_INCHES * 20, 4)
    assert pixels[..., :3].std() > 0.05  # not blank
    assert "T1 with the ground truth (segmentation Dice CSF 1.000, GM 1.000, WM 1.000)" in texts


def test_overlay_dice_leaves_ignored_voxels_out(subject, tmp_path, monkeypatch):
    """Voxels the truth ignores (255, e.g. the rendered anatomy's cerebellum) count for no tissue in the Dice, as in
    the evaluation. By hand: the segmentation's WM is 4x8x12 = 384 voxels; the truth ignores 4x8x6 = 192 of them and
    calls 4x8x2 = 64 GM: WM 2*128 / (192 + 128) = 0.800 (0.500 with the ignored voxels counted), GM (1152 voxels)
    2*1152 / (1152 + 1216) = 0.973."""
    images, seg, _ = subject
    truth = np.asarray(nib.load(seg).dataobj).copy()
    truth[8:12, 8:16, 8:14] = 255
    truth[8:12, 8:16, 14:16] = 2
    texts = _texts(monkeypatch)
    figures.overlay(images[:1], seg, _nifti(tmp_path / "s-truth.nii.gz", truth), names=["T1"], out=tmp_path / "o.png",
                    dpi=20)  # fmt: skip
    assert "T1 with the ground truth (segmentation Dice CSF 1.000, GM 0.973, WM 0.800)" in texts


def test_overlay_refuses_mismatched_shapes_and_labels(subject, tmp_path):
    images, seg, _ = subject
    small = _nifti(tmp_path / "small_seg.nii.gz", np.zeros((20, 24, 27), np.uint8))
    mismatch = r"small_seg\.nii\.gz: shape \(20, 24, 27\) differs from .*s-T1\.nii\.gz's \(20, 24, 28\)"
    with pytest.raises(ValueError, match=mismatch):
        figures.overlay(images, small, out=tmp_path / "o.png")
    iseg_as_0_to_3 = r"s-label\.nii\.gz: label values \[10, 150, 250\] are not among \[0, 1, 2, 3, 255\]"
    with pytest.raises(ValueError, match=iseg_as_0_to_3):  # iSEG values read with the default label format
        figures.overlay(images, seg, str(tmp_path / "s-label.nii.gz"), out=tmp_path / "o.png")
    with pytest.raises(FileNotFoundError, match="missing.nii.gz: no such file"):
        figures.overlay(images, str(tmp_path / "missing.nii.gz"), out=tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_curves_from_tensorboard_logs(tmp_path, monkeypatch):
    run = tmp_path / "runs"
    with SummaryWriter(log_dir=str(run)) as train:  # the trainer's losses, GAN terms from iteration 5
        for it in range(1, 31):
            train.add_scalar("loss_d_total", 2.0 / it, it)
            train.add_scalar("loss_d_labelled", 1.0 / it, it)
            train.add_scalar("loss_g_total", 1.0 + 0.1 * np.sin(it), it)
            if it >= 5:
                train.add_scalar("loss_d_fake", 0.5, it)
    with SummaryWriter(log_dir=str(run), filename_suffix=".val") as val:  # the evaluator's file
        for epoch, dice in ((2, 0.5), (4, 0.7)):
            for tissue in ("CSF", "GM", "WM"):
                val.add_scalar(f"val_dice_{tissue}", dice, epoch)
            val.add_scalar("val_mean_dice", dice, epoch)
    scalars = figures._tensorboard_scalars(run)
    assert len(scalars["loss_d_total"]) == 30 and scalars["loss_d_fake"][0] == (5, 0.5)
    assert scalars["val_dice_GM"] == [(2, 0.5), (4, pytest.approx(0.7))]
    texts = _texts(monkeypatch)
    pixels = _png(figures.curves(str(run), smooth=5, out=tmp_path / "c.png", dpi=20))
    assert pixels.shape == (4.5 * 20, 15 * 20, 4)
    assert {"loss_d_fake", "loss_g_total", "GM", "mean", " GAN terms on"} <= set(texts)
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        figures.curves(str(tmp_path / "empty"), out=tmp_path / "c2.png")


def test_smooth_is_a_trailing_moving_average():
    np.testing.assert_allclose(figures._smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
