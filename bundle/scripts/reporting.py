"""Human-readable summaries printed at the end of a run."""

from __future__ import annotations

import torch.distributed as dist

from .evaluation import TISSUES
from .handlers import BestValidation


def print_validation_dice(best: BestValidation, key_metric: str = "val_mean_dice") -> dict[str, float]:
    """Print the validation Dice per tissue of the best model (the saved ``model.pt``), with the epoch and iteration
    it came from; return the per-tissue values.

    In multi-process training only rank 0 prints (the metrics are gathered across processes)."""
    dice = {t: best.metrics[f"val_dice_{t}"] for t in TISSUES if f"val_dice_{t}" in best.metrics}
    if dist.is_initialized() and dist.get_rank() > 0:
        return dice
    if not dice:
        print("No validation was run: no Dice to report.")
        return dice
    print(
        f"Validation Dice per tissue (best model, epoch {best.epoch}, iteration {best.iteration}): "
        + ", ".join(f"{t} {v:.4f}" for t, v in dice.items())
    )
    last = best.validator.state
    print(
        f"Mean Dice {best.metrics.get(key_metric, float('nan')):.4f} "
        f"(last validation, epoch {last.epoch}: {last.metrics.get(key_metric, float('nan')):.4f})"
    )
    return dice
