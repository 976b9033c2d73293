"""Evaluation on the label's own voxel grid: the test subjects, distance metrics in mm and the summary of Dice, HD95
and average surface distance per tissue. The per-subject values and per-tissue statistics are written by MONAI's
``MetricsSaver`` (configs/evaluate.yaml); ``write_report`` adds only what it lacks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler

from .atomic import write_text
from .data.datasets import load_datalist

TISSUES = ("CSF", "GM", "WM")
METRICS = {"val_dice": "Dice", "val_hd95": "HD95 (mm)", "val_asd": "ASD (mm)"}


def run_split(split_file, modalities, rebuild: Callable[[], dict]) -> dict:
    """The training run's split, read from ``split_file`` (its ``split.json``), or ``rebuild()`` when there is none
    (a split made again from the dataset folder and this command's options); prints which one is evaluated."""
    path = Path(split_file).expanduser().resolve()
    if path.is_file():
        print(f"Evaluating the split of {path}")
        return load_datalist(path, modalities)
    print(f"No split file {path}: the dataset folder is split again with this command's options")
    return rebuild()


def check_split(subjects: Sequence[dict], split: str) -> None:
    """Fail early, with the split's name, when there is nothing labelled to evaluate."""
    if not subjects:
        raise ValueError(
            f"The '{split}' split is empty: nothing to evaluate. Hold out more labelled subjects "
            f"(e.g. a smaller --num_labeled) or choose another split with --eval_split validation."
        )


class MetricInMm(IgniteMetricHandler):
    """``IgniteMetricHandler`` of a distance metric (``HausdorffDistanceMetric``, ``SurfaceDistanceMetric``) that
    passes each label's voxel spacing, read from its affine, so that distances are in mm on the label's grid."""

    def update(self, output: Sequence) -> None:
        for pred, label in zip(*output):
            self.metric_fn([pred], [label], spacing=affine_to_spacing(label.affine, r=label.ndim - 1).tolist())


def summarize(per_subject: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation per metric and tissue, ignoring NaN and inf (a tissue absent from the label or
    the prediction; MONAI's ``<metric>_summary.csv`` averages an inf distance into an inf mean)."""
    summary = {}
    for name, values in per_subject.items():
        summary[name] = {}
        for t, tissue in enumerate(TISSUES):
            column = values[:, t]
            column = column[np.isfinite(column)]
            mean = float(column.mean()) if column.size else math.nan
            std = float(column.std()) if column.size else math.nan
            summary[name][tissue] = {"mean": mean, "std": std}
    return summary


def markdown_table(summary: dict, n_subjects: int) -> str:
    """A table laid out like the paper's: one row per metric, one column per tissue, mean ± std."""
    lines = [f"Evaluation on {n_subjects} subject(s)", "", "| metric | CSF | GM | WM |", "|---|---|---|---|"]
    for key, label in METRICS.items():
        if key in summary:
            cells = [f"{summary[key][t]['mean']:.4f} ± {summary[key][t]['std']:.4f}" for t in TISSUES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(evaluator: Engine, eval_dir: str) -> dict:
    """Write ``summary.json`` and ``summary.md`` into ``eval_dir``, print the table and return the summary.

    MONAI's ``MetricsSaver`` (evaluate.yaml) writes the per-subject values (``<metric>_raw.csv``) and per-class
    statistics (``<metric>_summary.csv``); it lacks what is written here: tissue names (its columns are
    class0..class2), the paper's table layout (one row per metric, one column per tissue, mean ± std), a JSON summary
    that tests and tools/benchmark_comparison.py read, statistics over finite values only, and atomic writes."""
    out = Path(eval_dir)
    out.mkdir(parents=True, exist_ok=True)
    details = evaluator.state.metric_details
    per_subject = {k: np.asarray(details[k].cpu(), dtype=np.float64) for k in METRICS if k in details}
    per_subject = {k: v.reshape(len(v), -1) for k, v in per_subject.items()}
    n_subjects = len(next(iter(per_subject.values()))) if per_subject else 0
    summary = summarize(per_subject)
    write_text(out / "summary.json", json.dumps({"subjects": n_subjects, "metrics": summary}, indent=2))
    table = markdown_table(summary, n_subjects)
    write_text(out / "summary.md", table)
    print(table)
    return summary
