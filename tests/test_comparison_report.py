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


def test_transfer_figure(tmp_path, monkeypatch):
    """One row per modality of four middle axial slices: source, target tissues, the synthetic image's channel of
    that modality, target; an 11 x 6.4 inch PNG at 100 dpi with the tissues in viridis."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.axes
    import matplotlib.image
    from tools.transfer_figure import draw

    def save(name, data):
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(tmp_path / name))
        return str(tmp_path / name)

    rng = np.random.default_rng(0)
    volumes = {n: rng.random((8, 9, 10)) for n in ("s1", "s2", "t1", "t2")}
    images = [save(f"{n}.nii.gz", v) for n, v in volumes.items()]
    label_data, synthetic_data = rng.integers(0, 4, (8, 9, 10)), rng.random((8, 9, 10, 2))
    label_data[0, 0, 5] = 255  # an ignored voxel: blank, and the tissues keep the whole colour scale
    label, synthetic = save("label.nii.gz", label_data), save("synth.nii.gz", synthetic_data)
    shown, imshow = [], matplotlib.axes.Axes.imshow  # (axes, array) of every panel
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, x, **k: shown.append((ax, x)) or imshow(ax, x, **k))
    out = draw(images[:2], label, images[2:], synthetic, out=str(tmp_path / "fig.png"))
    panels = {ax.get_title(): x for ax, x in shown}
    assert [ax.get_title() for ax, _ in shown] == [
        t for m in ("T1", "T2") for t in (f"source {m}", "target tissues", f"synthetic {m}", f"target's own {m}")
    ]  # two rows of four
    expected = np.where(label_data == 255, np.nan, label_data)[:, :, 5].T  # the middle axial slice
    np.testing.assert_array_equal(panels["target tissues"], expected)
    for row, (modality, source, target) in enumerate((("T1", "s1", "t1"), ("T2", "s2", "t2"))):
        for title, expected in ((f"synthetic {modality}", synthetic_data[:, :, 5, row]),
                                (f"source {modality}", volumes[source][:, :, 5]),
                                (f"target's own {modality}", volumes[target][:, :, 5])):  # fmt: skip
            assert np.corrcoef(panels[title].ravel(), expected.T.ravel())[0, 1] > 0.95, title
    png = matplotlib.image.imread(out)
    assert out.endswith("fig.png") and png.shape[:2] == (640, 1100)
    yellow = np.abs(png[..., :3] - matplotlib.colormaps["viridis"](1.0)[:3]).max(-1) < 2 / 255  # WM, label 3
    assert yellow.sum() > 100 and len(np.unique(png[..., 0])) > 100  # the tissues and the grey-level images


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


def test_validation_history_and_its_largest_drop_by_hand(tmp_path):
    from tools.benchmark_comparison import largest_drop, validations

    log = tmp_path / "train.log"
    log.write_text(
        "INFO - Epoch[4] Metrics -- val_dice_CSF: 0.9 val_dice_GM: 0.6 val_dice_WM: 0.7 val_mean_dice: 0.7514 \n"
        "INFO - Key metric: val_mean_dice best value: 0.7514 at epoch: 4\n"
        "INFO - Epoch[6] Metrics -- val_dice_CSF: 0.9 val_mean_dice: 0.8000 \n"
        "INFO - Epoch[8] Metrics -- val_dice_CSF: 0.5 val_mean_dice: 0.7200 \n"
        "INFO - Epoch[10] Metrics -- val_mean_dice: 0.7700 \n"
    )
    history = validations(log)
    assert history == [[4, 0.7514], [6, 0.8], [8, 0.72], [10, 0.77]]
    assert math.isclose(largest_drop(history), 0.08)  # 0.80 at epoch 6, then 0.72
    assert largest_drop([[2, 0.5], [4, 0.6]]) == 0.0 and largest_drop([]) == 0.0


def test_results_of_a_parallel_run_are_kept(tmp_path, monkeypatch):
    """Two processes on one profile: each re-reads results.json before appending, so neither loses the other's."""
    import json

    import tools.benchmark_comparison as bc

    path = tmp_path / "cpu" / "results.json"

    def fake_bundle(run_dir, variant, settings, n, seed):
        if variant == "supervised":  # another process finishes a run meanwhile
            path.write_text(json.dumps([_result("mean_teacher", n, seed, 0.1, 0.1, 0.1)]))
        return {"train_seconds": 1.0, "dice": {"CSF": 0.5, "GM": 0.5, "WM": 0.5}}

    monkeypatch.setattr(bc, "_run_bundle", fake_bundle)
    monkeypatch.setattr(bc, "report", lambda *args, **kwargs: None)
    bc.run(labelled=[2], seeds=[0], variants=["supervised", "mean_teacher", "mri_gan"], work_dir=str(tmp_path))
    assert [r["variant"] for r in json.loads(path.read_text())] == ["mean_teacher", "supervised", "mri_gan"]


def test_by_render_averages_each_render_over_seeds_and_test_maps_by_hand(tmp_path):
    """subject_dice reads MONAI's val_dice_raw.csv; by_render groups a subject by its name without the map
    (m04_adult, m11_adult: adult) and averages over maps and seeds; the report's render table shows it."""
    from tools.benchmark_comparison import _render_table, by_render, subject_dice

    raw = tmp_path / "val_dice_raw.csv"
    raw.write_text("filename,class0,class1,class2,mean\nm04_adult,0.9,0.6,0.5,0.6667\nm11_adult,0.7,0.8,0.7,0.7333\n"
                   "m04_infant_newborn,0.5,0.5,0.5,0.5\n")  # fmt: skip
    seed0 = {**_result("mri_gan", 2, 0, 0, 0, 0), "subjects": subject_dice(raw)}
    assert seed0["subjects"]["m11_adult"] == [0.7, 0.8, 0.7]
    seed1 = {**_result("mri_gan", 2, 1, 0, 0, 0), "subjects": {"m04_adult": [1.0, 1.0, 0.9]}}
    plain = _result("plain_unet", 2, 0, 0, 0, 0)  # no subjects recorded: left out
    table = by_render([seed0, seed1, plain])
    assert list(table) == [(2, "mri_gan")]
    # adult: (0.9 + 0.7 + 1.0) / 3, (0.6 + 0.8 + 1.0) / 3, (0.5 + 0.7 + 0.9) / 3
    assert np.allclose(table[2, "mri_gan"]["adult"], [0.8667, 0.8, 0.7], atol=1e-4)
    assert table[2, "mri_gan"]["infant_newborn"] == [0.5, 0.5, 0.5]
    rendered = _render_table([seed0, seed1, plain])
    assert "| adult | infant_newborn |" in rendered and "0.867 / 0.800 / 0.700 (0.789)" in rendered
    assert _render_table([plain]) == ""


@pytest.mark.parametrize("variants, inches", [(1, 3.6 + 0.3 + 0.16), (25, 3.6 + 0.3 + 0.16 * 13)])
def test_comparison_plot_grows_with_its_legend_not_its_rows(tmp_path, variants, inches):
    """The panels keep 3.6 inches whatever the number of rows (variants x labelled counts); the figure grows by one
    legend line (0.16 inch) per two variants, plus 0.3 inch: 1 variant 4.06 inches, 25 variants 5.98 (at 110 dpi)."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from tools.benchmark_comparison import VARIANTS, _plot

    names = [v for v in VARIANTS if v.startswith(("mri_gan", "supervised", "mean_teacher"))][:variants]
    rows = summarise([_result(v, n, 0, 0.9, 0.7, 0.7) for v in names for n in (1, 2, 8)])
    _plot(rows, tmp_path / "plot.png", "anatomy")
    assert len(rows) == 3 * variants
    assert Image.open(tmp_path / "plot.png").size[1] == int(110 * inches)
