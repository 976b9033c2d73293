"""The comparison benchmark's summary over seeds (hand-computed) and the tissue-transfer figure."""

import math

import nibabel as nib
import numpy as np
import pytest

from tools.benchmark_comparison import summarise


def _result(variant, n, seed, csf, gm, wm, seconds=60.0):
    return {"variant": variant, "num_labeled": n, "seed": seed, "train_seconds": seconds,
            "dice": {"CSF": csf, "GM": gm, "WM": wm}}  # fmt: skip


def test_mean_and_spread_over_seeds_by_hand():
    rows = summarise([
        _result("mri_gan", 2, 0, 0.8, 0.7, 0.9, 120), _result("mri_gan", 2, 1, 0.6, 0.7, 0.8, 60),
        _result("supervised", 2, 0, 0.5, 0.5, 0.5), _result("supervised", 8, 0, 0.9, 0.9, 0.9),
    ])  # fmt: skip
    assert [(r["num_labeled"], r["variant"]) for r in rows] == [(2, "supervised"), (2, "mri_gan"), (8, "supervised")]
    gan = rows[1]
    assert gan["seeds"] == [0, 1] and math.isclose(gan["minutes"], 1.5)
    # sample sd (ddof 1) of 0.8 and 0.6: sqrt((0.1^2 + 0.1^2) / 1) = 0.1 * sqrt(2)
    assert math.isclose(gan["dice_mean"]["CSF"], 0.7) and math.isclose(gan["dice_std"]["CSF"], 0.1 * math.sqrt(2))
    assert math.isclose(gan["dice_std"]["GM"], 0.0, abs_tol=1e-12)
    # per-seed means over tissues: 0.8 and 0.7 -> 0.75 +- 0.05 * sqrt(2)
    assert math.isclose(gan["mean"], 0.75) and math.isclose(gan["mean_std"], 0.05 * math.sqrt(2))
    assert rows[0]["dice_std"]["CSF"] == 0.0  # one seed: no spread, not NaN


def test_transfer_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from tools.transfer_figure import draw

    def save(name, data):
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(tmp_path / name))
        return str(tmp_path / name)

    rng = np.random.default_rng(0)
    images = [save(f"{n}.nii.gz", rng.random((8, 9, 10))) for n in ("s1", "s2", "t1", "t2")]
    label = save("label.nii.gz", rng.integers(0, 4, (8, 9, 10)))
    synthetic = save("synth.nii.gz", rng.random((8, 9, 10, 2)))
    out = draw(images[:2], label, images[2:], synthetic, out=str(tmp_path / "fig.png"))
    assert (tmp_path / "fig.png").stat().st_size > 1000 and out.endswith("fig.png")


def test_plain_baselines_train_for_the_time_of_their_reference_run(tmp_path, monkeypatch):
    """plain_unet takes the supervised run's wall time, plain_unet_gan_time the default MRI-GAN's (same labelled
    count and seed), plain_minutes when that run is missing."""
    import json

    import tools.benchmark_comparison as bc

    work = tmp_path / "cpu"
    work.mkdir()
    (work / "results.json").write_text(json.dumps([
        _result("supervised", 2, 0, 0.5, 0.5, 0.5, seconds=90), _result("mri_gan_clusters_shift_cheap", 2, 0, 0.6, 0.6, 0.6, seconds=300),
    ]))  # fmt: skip
    minutes = {}

    def fake_plain(run_dir, settings, n, seed, m):
        minutes[(run_dir.name, seed)] = m
        return {"train_seconds": 60 * m, "dice": {"CSF": 0.1, "GM": 0.2, "WM": 0.3}}

    monkeypatch.setattr(bc, "_run_plain", fake_plain)
    monkeypatch.setattr(bc, "report", lambda *args, **kwargs: None)
    bc.run(labelled=[2], seeds=[0, 1], variants=["plain_unet", "plain_unet_gan_time"], work_dir=str(tmp_path),
           plain_minutes=7.0)  # fmt: skip
    assert minutes == {("plain_unet_2_seed0", 0): 1.5, ("plain_unet_gan_time_2_seed0", 0): 5.0,
                       ("plain_unet_2_seed1", 1): 7.0, ("plain_unet_gan_time_2_seed1", 1): 7.0}  # fmt: skip
