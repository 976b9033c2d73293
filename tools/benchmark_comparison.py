"""The comparison on the phantom cohort, or on the real-anatomy cohort (``--profile anatomy``): the plain UNet
baseline, supervised, Standard-GAN, MRI-GAN as the paper trains it, MRI-GAN with tissue transfer (the default) and
a mean-teacher baseline, at 1, 2 and 8 labelled subjects, over several seeds; on request (``--variants``) also
tissue transfer conditioned on the source's statistics, with GM/WM swapped at random, and supervised training with
random tissue offsets (0.6.0's experiments), and tissue transfer with statistics of k-means tissue classes (0.8.0).

Every bundle run uses the bundle's own commands (``run training`` with the variant's override, then ``run evaluating``)
with the same data split, number of iterations and seed; only the training seed changes between repeats (the split is
fixed by ``data#split_seed``). Validation and test subjects are fixed (``num_val``, ``num_test``); labelled subjects
not used for training join the unlabelled ones. The plain baseline (``tools.benchmark_plain_unet``) trains for the wall time
the supervised run of the same setting and seed took, ``plain_unet_gan_time`` for the default MRI-GAN's (or
``plain_minutes`` when there is none yet). Run from the
repository root:

    python -m tools.benchmark_comparison run --profile cpu --labelled "[2,8]" --seeds "[0,1,2]"
    python -m tools.benchmark_comparison run --profile gpu
    python -m tools.benchmark_comparison run --profile main --labelled "[2]" \
        --variants "[mri_gan_gap,plain_unet_gap_time]"
    python -m tools.benchmark_comparison run --profile anatomy --labelled "[2]" \
        --variants "[supervised_gap,plain_unet_supervised_gap_time,mri_gan_gap]"

The ``anatomy`` profile is the README's main job since 0.14.0: train.yaml's schedule, network, patches and batches on
its default data, the cohort rendered from the real label maps (``data#anatomy``: validation on map 01, testing on the
held-out maps 04, 11 and 16 in three contrasts each); ``supervised_gap_ema_balanced`` and ``mri_gan_cheap_fake_aug_ema``
are the supervised and MRI-GAN defaults since 0.19.0. The plain baseline reads the same rendered ``datalist.json``.

Results are appended to ``<work_dir>/<profile>/results.json`` as each run finishes (an interrupted benchmark resumes
where it stopped); ``report`` writes ``comparison_<profile>.md`` and ``comparison_<profile>.png`` into ``docs_dir``
(mean and standard deviation over seeds).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import fire
import numpy as np

from scripts.atomic import write_json, write_text
from scripts.evaluation import TISSUES
from tools import BUNDLE_ROOT, subprocess_env

# Every variant states the settings it was measured with, so that a later change of train.yaml's defaults does not
# change what an old variant means: no offsets, the generator from the start and at every iteration, (MRI-GAN) no
# source statistics, no intensity gap, one fake and one reconstruction per labelled patch, the fakes not augmented,
# no weight averaging and random patch centres, unless the variant says otherwise.
_BEFORE_0190 = {"patches#sampling": "random"}
_BEFORE_0170 = {**_BEFORE_0190, "gan#fake_patches": None, "gan#reconstruction_patches": None, "gan#fake_augmentation": False,
                "segmenter#ema_momentum": None}  # fmt: skip
_BEFORE_0100 = {**_BEFORE_0170, "data#intensity_gap": 0.0}
_BEFORE_080 = {**_BEFORE_0100, "patches#tissue_shift_prob": 0.0, "gan#generator_start_iterations": 0,
               "gan#generator_interval": 1}  # fmt: skip
_TRANSFER_040 = {**_BEFORE_080, "gan#source_statistics": False}
_CLUSTERS = {"gan#source_statistics": True, "gan#source_classes": "clusters"}
_SEGMENTER = {"gan#source_statistics": True, "gan#source_classes": "segmenter"}
_DEFAULT_080 = {**_BEFORE_0100, **_CLUSTERS, "patches#tissue_shift_prob": 0.5, "gan#generator_interval": 2,
                "gan#generator_start_iterations": "@gan#warmup_iterations"}  # fmt: skip
_CHEAP_GAN = {**_DEFAULT_080, "data#intensity_gap": 0.5, "gan#fake_patches": 2, "gan#reconstruction_patches": 2}
_SUPERVISED_GAP = {**_BEFORE_0170, "patches#tissue_shift_prob": 0.5, "data#intensity_gap": 0.5}
_EMA = {"segmenter#ema_momentum": 0.01}
_DEFAULT_0170 = {**_CHEAP_GAN, "gan#fake_augmentation": True, **_EMA}
VARIANTS = {  # in run order (the plain baseline takes the supervised run's time): override configs and options
    "supervised": (["configs/supervised.yaml"], {**_BEFORE_0100, "patches#tissue_shift_prob": 0.0}),
    "plain_unet": None,  # tools.benchmark_plain_unet, not a bundle config
    "mean_teacher": (["configs/mean_teacher.yaml"], {**_BEFORE_0100, "patches#tissue_shift_prob": 0.0}),
    "standard_gan": (["configs/standard_gan.yaml"], _BEFORE_080),
    "paper_gan": (["configs/paper_gan.yaml"], _BEFORE_080),
    "mri_gan": ([], _TRANSFER_040),
    "mri_gan_statistics": ([], {**_BEFORE_080, **_SEGMENTER}),
    "mri_gan_swap": ([], {**_BEFORE_080, **_SEGMENTER, "gan#contrast_swap": 0.5}),
    "supervised_shift": (["configs/supervised.yaml"], {**_BEFORE_0100, "patches#tissue_shift_prob": 0.5}),
    "mri_gan_shift": ([], {**_TRANSFER_040, "patches#tissue_shift_prob": 0.5}),
    "mri_gan_clusters": ([], {**_BEFORE_080, **_CLUSTERS}),
    "mri_gan_clusters_shift": ([], {**_BEFORE_080, **_CLUSTERS, "patches#tissue_shift_prob": 0.5}),
    "mri_gan_clusters_shift_cheap": ([], _DEFAULT_080),  # 0.8.0's default
    "mri_gan_gap": ([], {**_DEFAULT_080, "data#intensity_gap": 0.5}),  # 0.10.0's default
    # the default's baseline
    "supervised_gap": (["configs/supervised.yaml"], _SUPERVISED_GAP),
    "mean_teacher_shift": (["configs/mean_teacher.yaml"], {**_BEFORE_0100, "patches#tissue_shift_prob": 0.5}),
    "plain_unet_gan_time": None,  # the plain baseline for the default MRI-GAN's wall time
    "plain_unet_gap_time": None,  # the same for 0.10.0's default
    "plain_unet_supervised_gap_time": None,  # the plain baseline for the default supervised run's wall time
    "mri_gan_cheap": ([], _CHEAP_GAN),  # 2 fakes and 2 reconstructions per iteration instead of 8 and 8
    "mri_gan_cheap_fake_aug": ([], {**_CHEAP_GAN, "gan#fake_augmentation": True}),
    # the same two with the segmenter's exponential moving average validated and saved
    "supervised_gap_ema": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA}),
    "mri_gan_cheap_fake_aug_ema": ([], _DEFAULT_0170),
    # supervised with the EMA for about the augmented GAN's wall time (1.8x its iterations: 2029 s against 1115 s
    # per run over the 0.16.0 seeds)
    "supervised_gap_ema_gan_time": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA, "iterations": 1100}),
    # 0.17.0's default with G held to its sources' contrast: the appearance term 10x, or G without the terms that pull
    # its fakes towards what D (trained on the labelled infants) segments (feature matching, segmentation of fakes)
    "mri_gan_appearance": ([], {**_DEFAULT_0170, "gan#appearance_weight": 10.0}),
    "mri_gan_source_only": ([], {**_DEFAULT_0170, "gan#feature_matching_weight": 0.0, "gan#segmentation_weight": 0.0}),
    # G's class-wise feature matching against the unlabelled batch under its k-means clusters, not the 2 labelled
    "mri_gan_match_unlabelled": ([], {**_DEFAULT_0170, "gan#matching_target": "unlabelled"}),
    "mean_teacher_gap_ema": (["configs/mean_teacher.yaml"], {**_SUPERVISED_GAP, **_EMA}),
    "plain_unet_supervised_ema_time": None,  # the plain baseline for 0.17.0's supervised run's wall time
    "plain_unet_supervised_ema_gan_time": None,  # the same for supervised_gap_ema_gan_time's (1100 iterations)
    # 0.17.0's supervised run on 2 patches of 64^3 per iteration instead of 8 of 32^3 (2x the voxels): the context
    # to tell GM from WM by geometry where contrast cannot (T1 WM darker than GM in newborns, brighter in adults)
    "supervised_gap_ema_patch64": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA, "patch_size": [64, 64, 64],
                                                                  "patches#samples_per_volume": 1}),
    # 0.17.0's supervised run without the random per-tissue offsets of labelled patches (they can make GM and WM alike)
    "supervised_gap_ema_noshift": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA,
                                                                  "patches#tissue_shift_prob": 0.0}),
    # 0.17.0's supervised run with patch centres equally often in each class (3 in 4 in the brain), not anywhere
    "supervised_gap_ema_balanced": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA,
                                                                   "patches#sampling": "balanced"}),
    # 0.17.0's default MRI-GAN with both streams' patch centres equally often in each class: labelled patches by their
    # labels, unlabelled ones by their k-means classes (the class mix of the fakes' maps and of their sources alike)
    "mri_gan_balanced": ([], {**_DEFAULT_0170, "patches#sampling": "balanced"}),
    # 0.19.0's supervised run for about the GAN's wall time (1100 iterations, as supervised_gap_ema_gan_time)
    "supervised_gap_ema_balanced_gan_time": (["configs/supervised.yaml"], {**_SUPERVISED_GAP, **_EMA, "iterations": 1100,
                                                                            "patches#sampling": "balanced"}),
    # 0.17.0's default MRI-GAN with the labelled patches centred equally often in each class and the unlabelled ones
    # (the fakes' sources) anywhere, as before
    "mri_gan_balanced_labelled": ([], {**_DEFAULT_0170, "patches#sampling": "balanced",
                                       "patches#unlabeled_sampling": "random"}),
    # 0.17.0's default MRI-GAN with the sources' k-means classes refined by a Gaussian mixture (gan#clusters_refine)
    "mri_gan_gmm_clusters": ([], {**_DEFAULT_0170, "gan#clusters_refine": True}),
    # 0.17.0's default without one of the two terms that pull its fakes towards the labelled infants (source_only
    # drops both): which of them costs the adults and which wins the infants
    "mri_gan_no_fake_segmentation": ([], {**_DEFAULT_0170, "gan#segmentation_weight": 0.0}),
    "mri_gan_no_feature_matching": ([], {**_DEFAULT_0170, "gan#feature_matching_weight": 0.0}),
    # 0.17.0's default MRI-GAN for 1100 iterations (as supervised_gap_ema_balanced_gan_time): does it lose the newborns
    # with longer training as supervised training does
    "mri_gan_1100": ([], {**_DEFAULT_0170, "iterations": 1100}),
    # the mean teacher with 0.19.0's balanced patches (both streams, the unlabelled ones by their k-means classes)
    "mean_teacher_balanced": (["configs/mean_teacher.yaml"], {**_SUPERVISED_GAP, **_EMA,
                                                              "patches#sampling": "balanced"}),
    # mri_gan_gmm_clusters held to its sources (as mri_gan_source_only): the mixture's infant classes, not the pull
    "mri_gan_gmm_source_only": ([], {**_DEFAULT_0170, "gan#clusters_refine": True, "gan#feature_matching_weight": 0.0,
                                     "gan#segmentation_weight": 0.0}),
    # 0.17.0's default with the sources' GM and WM re-split by depth below CSF (gan#clusters_depth, GM within 3.5
    # voxels: the best of tools.benchmark_clusters on the training renders), and the same held to its sources (as
    # mri_gan_source_only): with the infants' classes right, do the fakes still need the pull towards the labelled pair
    "mri_gan_depth_clusters": ([], {**_DEFAULT_0170, "gan#clusters_depth": 3.5}),
    "mri_gan_depth_source_only": ([], {**_DEFAULT_0170, "gan#clusters_depth": 3.5, "gan#feature_matching_weight": 0.0,
                                       "gan#segmentation_weight": 0.0}),
}
# whose wall time each plain baseline gets
PLAIN_TIME_OF = {"plain_unet": "supervised", "plain_unet_gan_time": "mri_gan_clusters_shift_cheap",
                 "plain_unet_gap_time": "mri_gan_gap", "plain_unet_supervised_gap_time": "supervised_gap",
                 "plain_unet_supervised_ema_time": "supervised_gap_ema",
                 "plain_unet_supervised_ema_gan_time": "supervised_gap_ema_gan_time"}
LABELS = {
    "plain_unet": "Plain UNet (equal wall time)",
    "plain_unet_gan_time": "Plain UNet (0.8.0's default MRI-GAN's wall time)", "supervised": "Supervised", "mean_teacher": "Mean teacher",
    "standard_gan": "Standard-GAN", "paper_gan": "MRI-GAN, paper's K+1 setting", "mri_gan": "MRI-GAN, tissue transfer",
    "mri_gan_statistics": "MRI-GAN, tissue transfer with the source's statistics",
    "mri_gan_swap": "MRI-GAN, source's statistics, GM/WM swapped at random",
    "supervised_shift": "Supervised, tissue intensities shifted at random",
    "mri_gan_shift": "MRI-GAN, tissue transfer, tissue intensities shifted at random",
    "mri_gan_clusters": "MRI-GAN, tissue transfer with the source's k-means tissue statistics",
    "mri_gan_clusters_shift": "MRI-GAN, k-means tissue statistics, tissue intensities shifted at random",
    "mri_gan_clusters_shift_cheap": "MRI-GAN, 0.8.0's default (the same, G idle in the warm-up, then every second iteration)",
    "mri_gan_gap": "MRI-GAN, 0.10.0-0.16.0's default (the same, brain intensities 0.5 above the background)",
    "plain_unet_gap_time": "Plain UNet (0.16.0's default MRI-GAN's wall time)",
    "plain_unet_supervised_gap_time": "Plain UNet (0.16.0's default supervised run's wall time)",
    "supervised_gap": "Supervised, the default's preprocessing (tissue offsets, intensity gap)",
    "mean_teacher_shift": "Mean teacher, tissue intensities shifted at random",
    "mri_gan_cheap": "MRI-GAN, 0.16.0's default with 2 fakes and 2 reconstructions per iteration",
    "mri_gan_cheap_fake_aug": "MRI-GAN, the same, fakes with a bias field and the intensity augmentation",
    "supervised_gap_ema": "Supervised, 0.17.0's default: the GAN's preprocessing, weights averaged (EMA 0.01)",
    "mri_gan_cheap_fake_aug_ema": "MRI-GAN, 0.17.0's default: 2 augmented fakes, weights averaged (EMA 0.01)",
    "supervised_gap_ema_gan_time": "Supervised with weights averaged, 1100 iterations (the GAN's wall time)",
    "mri_gan_appearance": "MRI-GAN, 0.17.0's default, G's appearance term 10x",
    "mri_gan_source_only": "MRI-GAN, 0.17.0's default, G without feature matching and segmentation of its fakes",
    "mri_gan_match_unlabelled": "MRI-GAN, 0.17.0's default, fakes matched to the unlabelled patches' k-means classes",
    "mean_teacher_gap_ema": "Mean teacher, 0.17.0's supervised preprocessing, weights averaged (EMA 0.01)",
    "plain_unet_supervised_ema_time": "Plain UNet (0.17.0's supervised run's wall time)",
    "plain_unet_supervised_ema_gan_time": "Plain UNet (the 1100-iteration supervised run's wall time)",
    "supervised_gap_ema_patch64": "Supervised with weights averaged, 2 patches of 64^3 per iteration (not 8 of 32^3)",
    "supervised_gap_ema_noshift": "Supervised with weights averaged, no random tissue offsets",
    "supervised_gap_ema_balanced": "Supervised, 0.19.0's default: patches centred equally often in each class, weights averaged",
    "mri_gan_balanced": "MRI-GAN, 0.17.0's default, patches centred equally often in each (k-means) class",
    "supervised_gap_ema_balanced_gan_time": "Supervised, 0.19.0's default, 1100 iterations (the GAN's wall time)",
    "mri_gan_balanced_labelled": "MRI-GAN, 0.17.0's default, labelled patches centred equally often in each class",
    "mri_gan_gmm_clusters": "MRI-GAN, 0.17.0's default, the sources' k-means classes refined by a Gaussian mixture",
    "mri_gan_no_fake_segmentation": "MRI-GAN, 0.17.0's default, G without the segmentation of its fakes",
    "mri_gan_no_feature_matching": "MRI-GAN, 0.17.0's default, G without feature matching",
    "mri_gan_1100": "MRI-GAN, 0.17.0's default, 1100 iterations",
    "mean_teacher_balanced": "Mean teacher, 0.19.0's balanced patches, weights averaged",
    "mri_gan_gmm_source_only": "MRI-GAN, mixture classes, G without feature matching and segmentation of its fakes",
    "mri_gan_depth_clusters": "MRI-GAN, 0.17.0's default, GM and WM of the sources' classes split by depth",
    "mri_gan_depth_source_only": "MRI-GAN, classes split by depth, G without feature matching and segmentation of its fakes",
}  # fmt: skip
PROFILES = {
    # 600 iterations of 8 labelled + 8 unlabelled (+ 8 generated) 24^3 patches with a half-width network
    "cpu": {
        "iterations": 600, "schedule#epoch_length": 50, "schedule#val_interval": 2, "batch_size": 1,
        "patches#unlabeled_batch_size": 1, "patches#samples_per_volume": 8, "patch_size": [24, 24, 24],
        "segmenter#features": [8, 16, 32, 64], "gan#generator_features": [8, 16, 32],
    },
    # 3000 iterations of the default configuration (network, patches, batches)
    "gpu": {"iterations": 3000, "schedule#epoch_length": 100, "schedule#val_interval": 5},
    # the README's main job of 0.11.0-0.13.0: train.yaml's schedule, network, patches and batches on the phantom cohort
    "main": {"iterations": 600, "schedule#epoch_length": 50, "schedule#val_interval": 2},
    # the README's main job since 0.14.0: the same on the real-anatomy cohort (its own validation and test subjects)
    "anatomy": {"iterations": 600, "schedule#epoch_length": 50, "schedule#val_interval": 2},
}  # fmt: skip
# the phantom cohort (scripts.data.phantom, cohort=True): 2 validation + up to 8 training + 4 test labelled subjects
PHANTOM = {"num_labeled": 14, "num_unlabeled": 4, "shape": [144, 192, 256], "seed": 0, "cohort": True}
COMMON = {"num_val": 2, "num_test": 4, "data#split_seed": 0, "runtime#num_workers": 2}
WORK_DIR, DOCS_DIR = str(BUNDLE_ROOT / "runs" / "comparison"), str(BUNDLE_ROOT / "docs")


def _overrides(values: dict) -> list[str]:
    """``--id value`` pairs that ``monai.bundle``'s command line (``fire``) parses back to ``values``: Python literals,
    since ``fire`` reads JSON's ``null``, ``true`` and ``false`` as strings."""
    return [a for k, v in values.items() for a in (f"--{k}", repr(v))]


def _command(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` in the bundle root, logging to ``log``; return the wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{cmd[2:5]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def _bundle(run_id: str, configs: list[str], args: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(configs), *args]
    return _command(cmd, log)


def bundle_arguments(run_dir: Path, variant: str, settings: dict, n: int, seed: int, ckpt_dir=None):
    """``(config files, command-line overrides)`` of a variant's run in ``run_dir`` (its checkpoints in ``ckpt_dir``,
    default ``run_dir/models``)."""
    configs, options = VARIANTS[variant]
    args = _overrides({**settings, **options, "num_labeled": n, "seed": seed, "output_dir": str(run_dir / "runs"),
                       "ckpt_dir": str(ckpt_dir or run_dir / "models")})  # fmt: skip
    return ["configs/train.yaml", *configs], args


def evaluate(configs: list[str], args: list[str], eval_dir: Path, log: Path) -> dict:
    """``run evaluating`` of a run's checkpoint into ``eval_dir``; its summary (``summary.json``)."""
    _bundle("evaluating", [*configs, "configs/evaluate.yaml"], [*args, "--eval_dir", json.dumps(str(eval_dir))], log)
    return json.loads((eval_dir / "summary.json").read_text())


def _run_bundle(run_dir, variant, settings, n, seed) -> dict:
    configs, args = bundle_arguments(run_dir, variant, settings, n, seed)
    train_s = _bundle("training", configs, args, run_dir / "train.log")
    summary = evaluate(configs, args, run_dir / "eval", run_dir / "eval.log")
    return {
        "train_seconds": round(train_s, 1),
        "best_iteration": best_iteration(run_dir / "train.log", settings["schedule#epoch_length"]),
        "validations": validations(run_dir / "train.log"),
        "dice": {t: summary["metrics"]["val_dice"][t]["mean"] for t in TISSUES},
        "hd95": {t: summary["metrics"]["val_hd95"][t]["mean"] for t in TISSUES},
        "subjects": subject_dice(run_dir / "eval" / "val_dice_raw.csv"),
    }  # fmt: skip


def subject_dice(raw_csv: Path) -> dict[str, list[float]]:
    """Dice CSF, GM, WM of every test subject, from the evaluation's ``val_dice_raw.csv`` (MONAI's metrics saver:
    ``filename``, then one column per tissue in ``TISSUES`` order, then their mean)."""
    rows = [line.split(",") for line in raw_csv.read_text().splitlines()]
    return {row[0]: [float(v) for v in row[1 : 1 + len(TISSUES)]] for row in rows[1:] if row}


def _run_plain(run_dir, settings, n, seed, minutes) -> dict:
    out = run_dir / "result.json"
    if settings["dataset_format"] == "anatomy":  # the rendered cohort's datalist: its first n training subjects
        data = {"dataset_format": "datalist", "num_val": 0, "num_test": 0}
    else:
        data = {"dataset_format": "phantom", "phantom": PHANTOM, "num_val": COMMON["num_val"],
                "num_test": COMMON["num_test"], "split_seed": COMMON["data#split_seed"]}  # fmt: skip
    args = _overrides({"dataset_dir": settings["dataset_dir"], **data, "num_labeled": n, "seed": seed,
                       "minutes": minutes, "out": str(out)})  # fmt: skip
    _command([sys.executable, "-m", "tools.benchmark_plain_unet", "run", *args], run_dir / "train.log")
    result = json.loads(out.read_text())
    return {"train_seconds": round(result["train_seconds"], 1), "dice": {t: result["dice"][t] for t in TISSUES}}


def run(
    profile: str = "cpu",
    labelled=(1, 2, 8),
    variants=("supervised", "plain_unet", "mean_teacher", "standard_gan", "paper_gan", "mri_gan"),
    seeds=(0, 1, 2),
    work_dir: str = WORK_DIR,
    dataset_dir: str | None = None,
    docs_dir: str = DOCS_DIR,
    plain_minutes: float = 5.0,
) -> list[dict]:
    """Train and evaluate every (variant, labelled, seed) not yet in ``<work_dir>/<profile>/results.json``.

    ``dataset_dir``: default ``data/cohort`` (phantom cohort), ``data/anatomy_cohort`` for the ``anatomy`` profile.
    Two processes may share a profile when they run different variants or seeds: results are re-read before each
    run and appended, not overwritten."""
    work = Path(work_dir).resolve() / profile
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    settings = profile_settings(profile, dataset_dir)
    for seed in seeds:
        for n in labelled:
            for variant in variants:
                results = _read_results(results_path)
                done = {(r["variant"], r["num_labeled"], r["seed"]) for r in results}
                if (variant, n, seed) in done:
                    continue
                run_dir = work / f"{variant}_{n}_seed{seed}"
                run_dir.mkdir(exist_ok=True)
                print(f"[{profile}] {variant}, {n} labelled, seed {seed}", flush=True)
                if variant in PLAIN_TIME_OF:
                    key = (PLAIN_TIME_OF[variant], n, seed)
                    timed = [r for r in results if (r["variant"], r["num_labeled"], r["seed"]) == key]
                    minutes = timed[0]["train_seconds"] / 60 if timed else plain_minutes
                    result = _run_plain(run_dir, settings, n, seed, minutes)
                else:
                    result = _run_bundle(run_dir, variant, settings, n, seed)
                results = _read_results(results_path)
                results.append({"variant": variant, "num_labeled": n, "seed": seed, **result})
                write_json(results_path, results)
    report(profile, work_dir, docs_dir)
    return results


def profile_settings(profile: str, dataset_dir=None) -> dict:
    """The overrides every run of ``profile`` shares, its dataset rendered first for ``anatomy``."""
    if profile == "anatomy":
        dataset_dir = Path(dataset_dir or BUNDLE_ROOT / "data" / "anatomy_cohort").resolve()
        _render_anatomy(dataset_dir)
        return {**PROFILES[profile], "dataset_format": "anatomy", "dataset_dir": str(dataset_dir)}
    return {**COMMON, **PROFILES[profile], "dataset_format": "phantom",
            "dataset_dir": str(Path(dataset_dir or BUNDLE_ROOT / "data" / "cohort").resolve()),
            "data#phantom": PHANTOM}  # fmt: skip


def _read_results(path: Path) -> list[dict]:
    """The results recorded so far (another process may have appended since the last read)."""
    return json.loads(path.read_text()) if path.exists() else []


def _render_anatomy(dataset_dir: Path) -> None:
    """Render train.yaml's real-anatomy cohort (``data#anatomy``) into ``dataset_dir`` unless it is there already,
    so that the plain baseline finds it even before a bundle run."""
    from monai.bundle import ConfigParser

    from scripts.data.anatomy import write_dataset

    parser = ConfigParser()
    parser.read_config(BUNDLE_ROOT / "configs" / "train.yaml")
    write_dataset(dataset_dir, **parser.get_parsed_content("data#anatomy"))


def best_iteration(train_log: Path, epoch_length: int) -> int | None:
    """Iteration of the best validation (the checkpoint evaluated), from a training log."""
    found = re.findall(r"best value: [0-9.]+ at epoch: (\d+)", train_log.read_text(errors="replace"))
    return int(found[-1]) * epoch_length if found else None


def validations(train_log: Path) -> list[list]:
    """``[epoch, mean Dice]`` of every validation in a training log, in order."""
    found = re.findall(r"Epoch\[(\d+)\] Metrics -- .*?val_mean_dice: ([0-9.]+)", train_log.read_text(errors="replace"))
    return [[int(epoch), float(dice)] for epoch, dice in found]


def largest_drop(history: list[list]) -> float:
    """The largest fall of a validation's mean Dice below the best validation before it (0 if none falls)."""
    best, drop = None, 0.0
    for _, dice in history:
        if best is not None:
            drop = max(drop, best - dice)
        best = dice if best is None else max(best, dice)
    return drop


def summarise(results: list[dict]) -> list[dict]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) over seeds of each (labelled, variant): Dice
    per tissue, their mean, time."""
    order = {v: i for i, v in enumerate(VARIANTS)}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["num_labeled"], r["variant"]), []).append(r)
    rows = []
    for (n, variant), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        dice = np.array([[r["dice"][t] for t in TISSUES] for r in runs])
        ddof = 1 if len(runs) > 1 else 0
        rows.append({
            "num_labeled": n, "variant": variant, "seeds": sorted(r["seed"] for r in runs),
            "dice_mean": dict(zip(TISSUES, dice.mean(0))), "dice_std": dict(zip(TISSUES, dice.std(0, ddof=ddof))),
            "mean": float(dice.mean(1).mean()), "mean_std": float(dice.mean(1).std(ddof=ddof)),
            "minutes": float(np.mean([r["train_seconds"] for r in runs]) / 60),
            "largest_drop": max((largest_drop(r["validations"]) for r in runs if r.get("validations")), default=None),
        })  # fmt: skip
    return rows


def by_render(results: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """Mean Dice CSF, GM, WM per (labelled, variant) and render, over seeds and test maps, for the runs that recorded
    their subjects (``subject_dice``); a render is a subject's name without its map (``m04_adult``: ``adult``)."""
    groups: dict[tuple, dict[str, list]] = {}
    for r in results:
        for subject, dice in r.get("subjects", {}).items():
            render = subject.split("_", 1)[1] if re.match(r"m\d+_", subject) else subject
            groups.setdefault((r["num_labeled"], r["variant"]), {}).setdefault(render, []).append(dice)
    return {key: {render: np.mean(dice, 0).tolist() for render, dice in renders.items()}
            for key, renders in groups.items()}  # fmt: skip


def _render_table(results: list[dict]) -> str:
    """Markdown table of ``by_render`` (empty without recorded subjects): CSF / GM / WM (mean) per render."""
    table = by_render(results)
    renders = sorted({render for value in table.values() for render in value})
    if not renders:
        return ""
    order = {v: i for i, v in enumerate(VARIANTS)}
    lines = ["| labelled subjects | method | " + " | ".join(renders) + " |", "|---|---|" + "---|" * len(renders)]
    for n, variant in sorted(table, key=lambda key: (key[0], order[key[1]])):
        cells = [" / ".join(f"{d:.3f}" for d in dice) + f" ({np.mean(dice):.3f})" if dice is not None else ""
                 for dice in (table[n, variant].get(render) for render in renders)]  # fmt: skip
        lines.append(f"| {n} | {LABELS[variant]} | " + " | ".join(cells) + " |")
    return "\nBy render (CSF / GM / WM (mean), over seeds and test maps):\n\n" + "\n".join(lines) + "\n"


def report(profile: str = "cpu", work_dir: str = WORK_DIR, docs_dir: str = DOCS_DIR) -> str:
    """Write the Markdown table (mean ± standard deviation over seeds) and the Dice-versus-labelled-subjects plot."""
    work = Path(work_dir).resolve() / profile
    results = json.loads((work / "results.json").read_text())
    rows = summarise(results)
    lines = [
        "| labelled subjects | method | seeds | Dice CSF | Dice GM | Dice WM | mean Dice | training time "
        "| largest validation drop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dice = " | ".join(f"{r['dice_mean'][t]:.3f} ± {r['dice_std'][t]:.3f}" for t in TISSUES)
        lines.append(
            f"| {r['num_labeled']} | {LABELS[r['variant']]} | {len(r['seeds'])} | {dice} "
            f"| {r['mean']:.3f} ± {r['mean_std']:.3f} | {r['minutes']:.1f} min "
            f"| {'' if r['largest_drop'] is None else format(r['largest_drop'], '.3f')} |"
        )
    table = "\n".join(lines) + "\n" + _render_table(results)
    docs = Path(docs_dir).resolve()
    write_text(docs / f"comparison_{profile}.md", table)
    write_json(docs / "benchmarks" / f"comparison_{profile}_results.json", results)
    _plot(rows, docs / f"comparison_{profile}.png", profile)
    print(table)
    return table


def _plot(rows: list[dict], path: Path, profile: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = sorted({r["num_labeled"] for r in rows})
    present = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    legend_height = 0.3 + 0.16 * -(-len(present) // 2)  # inches: two columns of 7-point names below the panels
    height = 3.6 + legend_height
    fig, axes = plt.subplots(1, len(TISSUES) + 1, figsize=(4 * (len(TISSUES) + 1), height), sharey=True)
    for ax, tissue in zip(axes, [*TISSUES, "mean"]):
        for i, variant in enumerate(present):
            mine = [r for r in rows if r["variant"] == variant]
            mean = [r["mean"] if tissue == "mean" else r["dice_mean"][tissue] for r in mine]
            std = [r["mean_std"] if tissue == "mean" else r["dice_std"][tissue] for r in mine]
            x = [r["num_labeled"] * 1.04 ** (i - (len(present) - 1) / 2) for r in mine]  # side by side
            ax.errorbar(x, mean, yerr=std, fmt="-", marker="osD^v"[i % 5], color=plt.get_cmap("tab20")(i % 20),
                        capsize=3, label=LABELS[variant])  # one colour per variant, up to 20
        ax.set_xscale("log", base=2)
        ax.set_xlim(labelled[0] / 1.5, labelled[-1] * 1.5)
        ax.set_xticks(labelled, [str(n) for n in labelled])
        ax.set_title(tissue)
        ax.set_xlabel("labelled training subjects")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice (mean ± sd over seeds)")
    handles, names = axes[0].get_legend_handles_labels()  # below the panels, clear of every curve
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 2), fontsize=7)
    cohort = "Real-anatomy cohort (held-out maps)" if profile == "anatomy" else "Phantom cohort"
    fig.suptitle(f"{cohort}, test Dice, {profile} profile")
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
