"""The paper's comparison on phantom data: supervised, Standard-GAN and MRI-GAN at 1, 2 and 8 labelled subjects.

Every run uses the bundle's own commands (``run training`` with the variant's override, then ``run evaluating``)
with the same data split, seed and number of iterations. Validation and test subjects are fixed (``num_test``);
labelled subjects not used for training join the unlabelled ones. Run from the bundle root:

    python -m scripts.benchmark_comparison run --profile cpu      # about 80 minutes on 2 quiet CPU cores
    python -m scripts.benchmark_comparison run --profile gpu      # the default network and patches, longer

Results are appended to ``<work_dir>/results.json`` as each run finishes (an interrupted benchmark resumes where it
stopped); ``report`` writes ``comparison_<profile>.md`` and ``comparison_<profile>.png`` into ``docs_dir``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import fire

from .atomic import write_json, write_text
from .evaluation import TISSUES

VARIANTS = {
    "supervised": ["configs/supervised.yaml"],
    "standard_gan": ["configs/standard_gan.yaml"],
    "mri_gan": [],
}
LABELS = {"supervised": "Supervised", "standard_gan": "Standard-GAN", "mri_gan": "MRI-GAN"}
PROFILES = {
    # 600 iterations of 8 labelled + 8 unlabelled + 8 fake 24^3 patches with a half-width network
    "cpu": {
        "epochs": 60, "epoch_length": 10, "val_interval": 10, "batch_size": 1, "unlabeled_batch_size": 1,
        "samples_per_volume": 8, "patch_size": [24, 24, 24], "network_features": [8, 16, 32, 64],
        "generator_features": [8, 16, 32],
    },
    # 3000 iterations of the default configuration (network, patches, batches)
    "gpu": {"epochs": 150, "epoch_length": 20, "val_interval": 15},
}  # fmt: skip
COMMON = {"num_val": 2, "num_test": 2, "seed": 0, "num_workers": 2}


def _overrides(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k}", json.dumps(v))]


def _bundle(bundle_root: Path, run_id: str, configs: list[str], args: list[str], log: Path) -> float:
    """Run ``python -m monai.bundle run`` in the bundle root, logging to ``log``; return the wall time in seconds."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(configs), *args]
    env = dict(os.environ, PYTHONPATH=str(bundle_root))
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=bundle_root, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{run_id} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def run(
    profile: str = "cpu",
    labelled=(1, 2, 8),
    variants=tuple(VARIANTS),
    work_dir: str = "runs/comparison",
    dataset_dir: str = "data/phantom",
    docs_dir: str = "docs",
) -> list[dict]:
    """Train and evaluate every (variant, labelled) pair not yet in ``<work_dir>/<profile>/results.json``."""
    bundle_root = Path(__file__).resolve().parents[1]
    work = Path(work_dir).resolve() / profile
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["variant"], r["num_labeled"]) for r in results}
    settings = {**COMMON, **PROFILES[profile], "dataset_dir": str(Path(dataset_dir).resolve())}
    for n in labelled:
        for variant in variants:
            if (variant, n) in done:
                continue
            run_dir = work / f"{variant}_{n}"
            run_dir.mkdir(exist_ok=True)
            configs = ["configs/train.yaml", *VARIANTS[variant]]
            args = _overrides({**settings, "num_labeled": n, "output_dir": str(run_dir / "runs"), "ckpt_dir": str(run_dir / "models")})
            print(f"[{profile}] {variant}, {n} labelled: training", flush=True)
            train_s = _bundle(bundle_root, "training", configs, args, run_dir / "train.log")
            print(f"[{profile}] {variant}, {n} labelled: evaluating ({train_s:.0f} s training)", flush=True)
            _bundle(
                bundle_root, "evaluating", [*configs, "configs/evaluate.yaml"],
                [*args, "--eval_dir", json.dumps(str(run_dir / "eval"))], run_dir / "eval.log",
            )  # fmt: skip
            summary = json.loads((run_dir / "eval" / "summary.json").read_text())
            iterations = PROFILES[profile]["epochs"] * PROFILES[profile]["epoch_length"]
            results.append(
                {
                    "variant": variant, "num_labeled": n, "train_seconds": round(train_s, 1), "iterations": iterations,
                    "dice": {t: summary["metrics"]["val_dice"][t]["mean"] for t in TISSUES},
                    "hd95": {t: summary["metrics"]["val_hd95"][t]["mean"] for t in TISSUES},
                    "test_subjects": summary["subjects"],
                }
            )  # fmt: skip
            write_json(results_path, results)
    report(profile, work_dir, docs_dir)
    return results


def best_epoch(train_log: Path) -> int | None:
    """Epoch of the best validation (the checkpoint evaluated), from a training log."""
    found = re.findall(r"best value: [0-9.]+ at epoch: (\d+)", train_log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def report(profile: str = "cpu", work_dir: str = "runs/comparison", docs_dir: str = "docs") -> str:
    """Write the Markdown table and the Dice-versus-labelled-subjects plot of a profile's results."""
    work = Path(work_dir).resolve() / profile
    results = json.loads((work / "results.json").read_text())
    order = {v: i for i, v in enumerate(VARIANTS)}
    results.sort(key=lambda r: (r["num_labeled"], order[r["variant"]]))
    lines = [
        "| labelled subjects | method | Dice CSF | Dice GM | Dice WM | HD95 CSF | HD95 GM | HD95 WM "
        "| training time | iterations | best checkpoint at iteration |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    epoch_length = PROFILES[profile]["epoch_length"]
    for r in results:
        dice = " | ".join(f"{r['dice'][t]:.3f}" for t in TISSUES)
        hd95 = " | ".join(f"{r['hd95'][t]:.2f}" for t in TISSUES)
        minutes = r["train_seconds"] / 60
        log = work / f"{r['variant']}_{r['num_labeled']}" / "train.log"
        best = best_epoch(log) if log.exists() else None
        best = "" if best is None else str(best * epoch_length)
        lines.append(
            f"| {r['num_labeled']} | {LABELS[r['variant']]} | {dice} | {hd95} | {minutes:.1f} min | {r['iterations']} "
            f"| {best} |"
        )
    table = "\n".join(lines) + "\n"
    docs = Path(docs_dir).resolve()
    write_text(docs / f"comparison_{profile}.md", table)
    _plot(results, docs / f"comparison_{profile}.png", profile)
    print(table)
    return table


def _plot(results: list[dict], path: Path, profile: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TISSUES), figsize=(4 * len(TISSUES), 3.4), sharey=True)
    for ax, tissue in zip(axes, TISSUES):
        for variant, label in LABELS.items():
            rows = [r for r in results if r["variant"] == variant]
            if rows:
                ax.plot([r["num_labeled"] for r in rows], [r["dice"][tissue] for r in rows], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["num_labeled"] for r in results}), [str(n) for n in sorted({r["num_labeled"] for r in results})])
        ax.set_title(tissue)
        ax.set_xlabel("labelled training subjects")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice")
    axes[-1].legend(loc="lower right")
    fig.suptitle(f"Phantom test Dice, {profile} profile")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
