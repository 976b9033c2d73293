"""Benchmark scripts: command lines that fail fast, and the helpers their numbers come from."""

from pathlib import Path

import pytest

from tools.benchmark_training import profile


def test_training_profile_refuses_unknown_options_before_running():
    """``python -m tools.benchmark_training run --help`` once trained for minutes: fire passes ``help`` on as an
    override. Unknown keys now stop it before anything is built."""
    with pytest.raises(ValueError, match=r"\['help'\] are not keys"):
        profile(help=True)


def test_weights_benchmark_dice_leaves_out_ignored_voxels_and_reports(tmp_path):
    """``tools.benchmark_weights``: Dice per tissue by hand (an ignored voxel counts nowhere), a Gaussian mixture that
    finds three intensity classes and names them by the labels, and the report's table."""
    import json

    import numpy as np

    from tools import benchmark_weights

    seg, label = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    seg[:2], label[:1] = 1, 1  # CSF: 32 voxels against 16, 16 shared: Dice 2*16/48
    seg[2:, :2], label[2:, :1] = 2, 2  # GM: 16 against 8, 8 shared
    label[3, 3, 3] = 3  # WM missed: Dice 0
    seg[3, 3, 2], label[3, 3, 2] = 1, 255  # ignored: not a CSF error
    np.testing.assert_allclose(benchmark_weights.tissue_dice(seg, label), [2 / 3, 2 / 3, 0.0], atol=1e-9)

    rng = np.random.default_rng(0)
    label = np.repeat(np.array([1, 2, 3, 0], np.uint8), 1000).reshape(4, 10, 100)
    image = np.choose(label, [0.0, 0.2, 0.5, 0.8])[None] + rng.normal(0, 0.02, (1, *label.shape))
    pred = benchmark_weights.gmm_segment(image, label > 0, label)
    np.testing.assert_array_equal(pred, label)

    results = {"t1": {"t1": {"modalities": ["t1"], "dice": {"CSF": 0.5, "GM": 0.6, "WM": 0.7}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    table = benchmark_weights.report(str(tmp_path / "results.json")).splitlines()
    assert table[0] == "| set | t1 |" and table[2] == "| t1 | 0.500 / 0.600 / 0.700 (0.600) |" and len(table) == 3

def test_atropos_markov_field_beats_the_voxelwise_mixture_on_noisy_slabs():
    """``atropos_segment``: three tissue slabs in noise that blurs their intensity classes (standard deviation 0.1
    against means 0.3 apart); Atropos's Markov random field (neighbours vote) beats the voxel-wise Gaussian mixture
    on every tissue, and with two channels (T1 and a reversed T2) it names every tissue nearly perfectly."""
    import numpy as np

    from tools import benchmark_weights

    rng = np.random.default_rng(0)
    label = np.zeros((20, 20, 24), np.uint8)
    label[2:18, 2:18, 2:8], label[2:18, 2:18, 8:15], label[2:18, 2:18, 15:22] = 1, 2, 3
    t1 = np.choose(label, [0.0, 0.2, 0.5, 0.8])
    image = t1[None] + rng.normal(0, 0.1, (1, *label.shape))
    gmm = benchmark_weights.tissue_dice(benchmark_weights.gmm_segment(image, label > 0, label), label)
    atropos = benchmark_weights.tissue_dice(benchmark_weights.atropos_segment(image, label > 0, label), label)
    assert all(a > g + 0.02 for a, g in zip(atropos, gmm)), (atropos, gmm)
    image = np.stack([t1, np.choose(label, [0.0, 0.8, 0.5, 0.2])]) + rng.normal(0, 0.1, (2, *label.shape))
    both = benchmark_weights.atropos_segment(image, label > 0, label, spacing=(1.0, 1.0, 1.0))
    assert min(benchmark_weights.tissue_dice(both, label)) > 0.97


def test_weights_benchmark_renders_each_test_map_once_as_the_anatomy_dataset_does(tmp_path):
    """``tools.benchmark_weights.write_scenario``: the held-out maps rendered by ``scripts.data.anatomy``'s
    ``render_subject`` with the benchmark's seeds, absolute paths, and kept when there."""
    import nibabel as nib
    import numpy as np
    from label_maps import write_label_maps

    from scripts.data import anatomy
    from tools import benchmark_weights

    maps = write_label_maps(tmp_path / "maps", anatomy.TEST_MAPS)
    entries = benchmark_weights.write_scenario(tmp_path / "data", "whole_head", anatomy_dir=maps)
    assert [e["subject"] for e in entries] == [f"m{i:02d}_whole_head" for i in anatomy.TEST_MAPS]
    assert all(Path(e[key]).is_absolute() and Path(e[key]).is_file() for e in entries for key in e if key != "subject")
    index = anatomy.TEST_MAPS[0]
    labels = anatomy.read_label_map(anatomy.map_path(index, maps))
    rendered = anatomy.render_subject(labels, anatomy.fixed_render("whole_head"), strip=False,
                                      seed=benchmark_weights.SEED + index)
    # the same render to float rounding (the benchmark renders in worker processes, whose thread count may differ)
    np.testing.assert_allclose(np.asarray(nib.load(entries[0]["t2"]).dataobj), rendered["image"][1], atol=1e-5, rtol=0)
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "data").iterdir()}
    assert benchmark_weights.write_scenario(tmp_path / "data", "whole_head", anatomy_dir=maps) == entries
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "data").iterdir()} == written


def test_cluster_benchmark_names_the_layers_of_a_ball_and_scores_a_phantom(tmp_path):
    """``tools.benchmark_clusters``: the alternatives name CSF, GM and WM of a layered ball (bright WM core, GM shell,
    dark CSF rim) as ``tissue_clusters`` does; ``run`` scores every labelled phantom subject, means by hand."""
    import json

    import numpy as np
    import torch

    from scripts.data.phantom import write_iseg
    from tools import benchmark_clusters

    grid = torch.stack(torch.meshgrid(*[torch.arange(40.0)] * 3, indexing="ij")) - 19.5
    radius = grid.norm(dim=0)
    truth = torch.zeros(radius.shape, dtype=torch.uint8)
    truth[radius < 16], truth[radius < 13], truth[radius < 8] = 1, 2, 3
    image = torch.tensor([-1.0, -0.4, 0.2, 0.8])[truth.long()][None]
    for method in (benchmark_clusters.pure_clusters, benchmark_clusters.four_clusters):
        _, gm, wm = benchmark_clusters.scores(method(image)[0], truth)
        assert wm > 0.9, method.__name__
        assert gm > 0.5, method.__name__

    write_iseg(tmp_path / "data", num_labeled=2, num_unlabeled=0, shape=(40, 48, 56), seed=3)
    benchmark_clusters.run(str(tmp_path / "data"), out=str(tmp_path / "clusters.json"))
    saved = json.loads((tmp_path / "clusters.json").read_text())
    assert [s["subject"] for s in saved["subjects"]] == ["subject-1", "subject-2"]
    for method in ("kmeans", "pure", "four"):
        rows = np.array([s[method] for s in saved["subjects"]])
        assert rows.shape == (2, 3) and ((rows >= 0) & (rows <= 1)).all()
        np.testing.assert_allclose(saved["mean"][method], rows.mean(0).round(3))


def test_card_commands_reads_the_commands_a_user_would_type():
    """``tools.card_commands``: continuation lines joined, comments dropped but ``gan#...`` kept, placeholders
    replaced, and only training commands shortened."""
    from tools.card_commands import RESUMED_TRAINING, SHORT_TRAINING, bash_commands, prepare

    markdown = (
        "text\n```bash\n# a comment line\npython -m monai.bundle run training --config_file configs/train.yaml \\\n"
        "    --gan#fake_weight 2.0   # the K+1 term\n"
        "python -m monai.bundle run inference --config_file configs/inference.yaml --dataset_dir /data/scans\n```\n"
        "```python\nprint('not bash')\n```\n"
    )
    training, inference = bash_commands(markdown)
    assert training == "python -m monai.bundle run training --config_file configs/train.yaml --gan#fake_weight 2.0"
    assert prepare(training, {}) == training.split() + SHORT_TRAINING
    resumed = training + " --resume true"  # continues the finished short run: a longer schedule
    assert prepare(resumed, {}) == resumed.split() + RESUMED_TRAINING and int(RESUMED_TRAINING[1]) > int(SHORT_TRAINING[1])
    assert prepare(inference, {"/data/scans": "/tmp/s"})[-2:] == ["--dataset_dir", "/tmp/s"]
    nested = {"/data/scans": "/work/bundle/data/scans", "/data/": "/work/bundle/data/phantom/"}
    assert prepare(inference, nested)[-1] == "/work/bundle/data/scans"  # replaced once, not again by "/data/"
    evaluating = "python -m monai.bundle run evaluating --config_file \"['configs/train.yaml','configs/evaluate.yaml']\""
    assert prepare(evaluating, {})[-1] == "['configs/train.yaml','configs/evaluate.yaml']"
    assert "--nproc_per_node=2" in prepare("torchrun --standalone --nproc_per_node=N -m monai.bundle run training", {})


def test_bn_recalibration_averages_the_statistics_of_every_volume_and_keeps_the_weights():
    """``tools.bn_recalibration.recalibrate``: the running statistics become the plain average over the volumes of
    their batch statistics (means 1 and 3; unbiased variances 0 and 16 / 5 of [1, 1, 3, 3, 5, 5]), whatever they were
    before; the affine weights stay, and the network is left in evaluation mode."""
    import torch

    from tools.bn_recalibration import recalibrate

    network = torch.nn.Sequential(torch.nn.BatchNorm3d(1))
    network[0].running_mean.fill_(10.0)
    weight = network[0].weight.detach().clone()
    first = torch.ones(1, 1, 2, 2)  # (C, D, H, W)
    second = torch.tensor([1.0, 1.0, 3.0, 3.0, 5.0, 5.0]).view(1, 1, 2, 3)
    assert recalibrate(network, [first, second]) == 2
    assert torch.allclose(network[0].running_mean, torch.tensor([2.0]))
    assert torch.allclose(network[0].running_var, torch.tensor([(0.0 + 16 / 5) / 2]))
    assert torch.equal(network[0].weight, weight) and not network.training


def test_tissue_contrast_places_gm_between_csf_and_wm_in_every_channel_of_a_4d_file(tmp_path):
    """GM's place (GM - CSF) / (WM - CSF), hand-computed: T1 0.2 / 0.5 / 0.8 gives 0.5, T2 0.9 / 0.5 / 0.3 gives 2/3,
    whatever linear rescaling the file has (the fake's [-1, 1] range)."""
    import nibabel as nib
    import numpy as np

    from tools.tissue_contrast import main

    label = np.zeros((4, 4, 3), np.uint8)
    label[..., 0], label[..., 1], label[..., 2] = 1, 2, 3
    t1 = np.choose(label, [0.0, 0.2, 0.5, 0.8]).astype(np.float32)
    t2 = np.choose(label, [0.0, 0.9, 0.5, 0.3]).astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([4 * t1 - 1, t2], -1), np.eye(4)), tmp_path / "fake.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "label.nii.gz")
    rows = main([str(tmp_path / "fake.nii.gz")], str(tmp_path / "label.nii.gz"))
    assert [r["place"] for r in rows] == [0.5, 0.667]
    assert np.allclose(rows[0]["means"], [-0.2, 1.0, 2.2]) and np.allclose(rows[1]["means"], [0.9, 0.5, 0.3])
