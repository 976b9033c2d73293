"""Human-readable summaries printed at the end of a run."""

from __future__ import annotations

import torch.distributed as dist
from ignite.engine import Engine

from .evaluation import TISSUES


def print_validation_dice(evaluator: Engine, key_metric: str = "val_mean_dice") -> dict[str, float]:
    """Print the last validation Dice per tissue and the best mean Dice; return the per-tissue values.

    In multi-process training only rank 0 prints (the metrics are gathered across processes)."""
    metrics = evaluator.state.metrics
    dice = {t: float(metrics[f"val_dice_{t}"]) for t in TISSUES if f"val_dice_{t}" in metrics}
    if dist.is_initialized() and dist.get_rank() > 0:
        return dice
    if not dice:
        print("No validation was run: no Dice to report.")
        return dice
    print("Validation Dice per tissue (last validation): " + ", ".join(f"{t} {v:.4f}" for t, v in dice.items()))
    print(
        f"Mean Dice {metrics.get(key_metric, float('nan')):.4f}; "
        f"best {evaluator.state.best_metric:.4f} at epoch {evaluator.state.best_metric_epoch}"
    )
    return dice
