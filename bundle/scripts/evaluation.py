"""Per-subject and summary reports of Dice, HD95 and average surface distance per tissue."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ignite.engine import Engine

from .atomic import write_text

TISSUES = ("CSF", "GM", "WM")
METRICS = {"val_dice": "Dice", "val_hd95": "HD95 (mm)", "val_asd": "ASD (mm)"}


def check_split(datalist: dict, split: str) -> None:
    """Fail early, with the split's name, when there is nothing labelled to evaluate."""
    if not datalist.get(split):
        raise ValueError(
            f"The '{split}' split is empty: nothing to evaluate. Hold out more labelled subjects "
            f"(e.g. a smaller --num_labeled) or choose another split with --eval_split validation."
        )


def _voxel_to_mm(spacing: Sequence[float]) -> float:
    spacing = [float(s) for s in spacing]
    if not np.allclose(spacing, spacing[0]):
        raise ValueError(f"distances need an isotropic working resolution, got pixdim {spacing}")
    return spacing[0]


def summarize(per_subject: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation per metric and tissue, ignoring NaN (tissue absent in a subject)."""
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


def write_report(evaluator: Engine, subjects: Sequence[dict], eval_dir: str, spacing: Sequence[float]) -> dict:
    """Write ``metrics_per_subject.csv``, ``summary.json`` and ``summary.md`` into ``eval_dir``; return the summary."""
    out = Path(eval_dir)
    out.mkdir(parents=True, exist_ok=True)
    mm = _voxel_to_mm(spacing)
    per_subject = {}
    for key in METRICS:
        if key in evaluator.state.metric_details:
            values = np.asarray(evaluator.state.metric_details[key].cpu(), dtype=np.float64).reshape(len(subjects), -1)
            per_subject[key] = values if key == "val_dice" else values * mm
    rows = [["subject", *[f"{METRICS[k]} {t}" for k in per_subject for t in TISSUES]]]
    for i, subject in enumerate(subjects):
        rows.append([subject.get("subject", str(i)), *[f"{per_subject[k][i, t]:.6g}" for k in per_subject for t in range(3)]])
    table_csv = io.StringIO()
    csv.writer(table_csv).writerows(rows)
    write_text(out / "metrics_per_subject.csv", table_csv.getvalue())
    summary = summarize(per_subject)
    write_text(out / "summary.json", json.dumps({"subjects": len(subjects), "metrics": summary}, indent=2))
    table = markdown_table(summary, len(subjects))
    write_text(out / "summary.md", table)
    print(table)
    return summary
