"""Ignite handlers and output transforms the bundle adds to MONAI's, and the summary printed at the end of a run
(``print_validation_dice``)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import ValidationHandler
from monai.utils import is_scalar

from .evaluation import TISSUES


def loss_terms(output) -> dict[str, float]:
    """Every loss value of a trainer's output dict: ``loss`` and the ``loss_d_*``/``loss_g_*`` terms, as floats."""
    item = output[0] if isinstance(output, list) else output
    return {k: float(v) for k, v in item.items() if k == "loss" or k.startswith("loss_")}


class LossProgressBar(ProgressBar):
    """Ignite progress bar showing the iteration's discriminator loss (and generator loss in GAN training).

    Where the bar's stream (tqdm's ``file``, stderr by default) is not a terminal (a log file, CI) a bar would
    write a fragment per update; there is one line per epoch instead, logged: the epoch, the iteration, the mean of
    each shown loss over the epoch and the time taken.
    """

    def __init__(self, loss_key: str = "loss", **kwargs):
        kwargs.setdefault("persist", True)
        super().__init__(**kwargs)
        self.loss_key = loss_key
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        stream = self.tqdm_kwargs.get("file") or sys.stderr
        if not getattr(stream, "isatty", lambda: False)():
            self._attach_epoch_lines(engine)
            return
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, *args, **kwargs)

    def _loss(self, output) -> dict[str, float]:
        terms = loss_terms(output)
        shown = {self.loss_key: terms[self.loss_key]}
        if "loss_g_total" in terms:
            shown["loss_g"] = terms["loss_g_total"]
        return shown

    def _attach_epoch_lines(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add_losses)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)

    def _start_epoch(self, engine: Engine) -> None:
        self._sums: dict[str, float] = {}
        self._count, self._started = 0, time.perf_counter()

    def _add_losses(self, engine: Engine) -> None:
        for name, value in self._loss(engine.state.output).items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def _log_epoch(self, engine: Engine) -> None:
        state = engine.state
        means = ", ".join(f"{name} {total / max(self._count, 1):.4f}" for name, total in self._sums.items())
        iterations = state.max_epochs * state.epoch_length
        self.logger.info(
            f"Epoch {state.epoch}/{state.max_epochs}, iteration {state.iteration}/{iterations}: {means} (epoch means), "
            f"{time.perf_counter() - self._started:.1f} s"
        )


class FinalValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` (every ``interval`` epochs) that also validates after the last epoch when the
    run's length is not a multiple of ``interval``, so that every run measures, and saves as best, its final
    weights (MONAI Label's training runs are often a few epochs long).

    ``start_iteration``: no validation (so no best checkpoint) until the trainer has passed that iteration, except
    the final one. A GAN run sets it to the end of its labelled-only warm-up, so that its saved model is one that
    trained with the GAN's terms, not a supervised model from the warm-up.

    In a distributed run the validated network's floating-point buffers are first averaged over the processes: the
    weight average (``segmenter#ema_momentum``) is no DistributedDataParallel module, so its batch-norm statistics
    are each process's own, and every process must validate (and rank 0 save) one and the same network.
    """

    def __init__(self, *args, start_iteration: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_iteration = int(start_iteration)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._after_last_epoch)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration > self.start_iteration:
            self._validate(engine)

    def _after_last_epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval or engine.state.iteration <= self.start_iteration:
            self._validate(engine)

    def _validate(self, engine: Engine) -> None:
        if idist.get_world_size() > 1:
            for buffer in self.validator.network.buffers():
                if buffer.is_floating_point():
                    buffer.copy_(idist.all_reduce(buffer) / idist.get_world_size())
        super().__call__(engine)


class BestValidation:
    """Records the validation of the best model (the one ``BestCheckpoint`` saved): the validator's best key metric
    and epoch, the trainer's iteration then and every scalar metric of that validation.

    ``attach(trainer)`` hooks it to the end of every validation, so ``train#handlers`` stays a list of plain configs
    (MONAI Label inserts its own ``CheckpointLoader`` there). It is ``state_dict``-able, so ``LastCheckpoint`` saves
    it, and ``load_state_dict`` also restores the validator's best key metric and epoch: a resumed run replaces the
    best checkpoint only with a better model (a new MONAI evaluator starts from a best of -1).
    """

    def __init__(self, validator: Engine):
        self.validator, self.trainer = validator, None
        self.iteration, self.metrics = 0, {}

    @property
    def epoch(self) -> int:
        """Epoch of the best validation (-1 before any)."""
        return self.validator.state.best_metric_epoch

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self)  # after MONAI's best-metric update

    def __call__(self, validator: Engine) -> None:
        if self.epoch == validator.state.epoch:
            self.iteration = self.trainer.state.iteration
            self.metrics = {k: float(v) for k, v in validator.state.metrics.items() if is_scalar(v)}

    def state_dict(self) -> dict:
        state = self.validator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": self.epoch, "iteration": self.iteration,
                "metrics": self.metrics}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self.validator.state.best_metric = state_dict["best_metric"]
        self.validator.state.best_metric_epoch = state_dict["best_metric_epoch"]
        self.iteration, self.metrics = state_dict["iteration"], dict(state_dict["metrics"])


def print_validation_dice(best: BestValidation, key_metric: str = "val_mean_dice") -> dict[str, float]:
    """Print the validation Dice per tissue of the best model (the saved ``model.pt``), with the epoch and iteration
    it came from; return the per-tissue values.

    In multi-process training only rank 0 prints (the metrics are gathered across processes)."""
    dice = {t: best.metrics[f"val_dice_{t}"] for t in TISSUES if f"val_dice_{t}" in best.metrics}
    if idist.get_rank() > 0:
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


class TissueCollapseWarning:
    """Warn in the log when a tissue's validation Dice falls below ``fraction`` of its best so far.

    In GAN training this is how a collapse shows (the discriminator gives up a tissue the fakes resemble, see
    docs/gan_training.md); the best checkpoint, chosen on the mean Dice, keeps the weights from before it. Attach to the
    evaluator; reads the metrics ``<prefix><tissue>``.
    """

    def __init__(self, tissues=("CSF", "GM", "WM"), prefix: str = "val_dice_", fraction: float = 0.5):
        self.tissues, self.prefix, self.fraction = tuple(tissues), prefix, float(fraction)
        self.best: dict[str, tuple[float, int]] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        for tissue in self.tissues:
            value = engine.state.metrics.get(self.prefix + tissue)
            if value is None:
                continue
            value = float(value)
            best, best_epoch = self.best.get(tissue, (float("-inf"), 0))
            if math.isnan(value) or value < self.fraction * best:
                self.logger.warning(
                    f"{self.prefix}{tissue} fell to {value:.3f} at epoch {epoch} (best {best:.3f} at epoch {best_epoch}): "
                    f"the segmenter has collapsed on {tissue}; the best checkpoint keeps the earlier weights"
                )
            elif value > best:
                self.best[tissue] = (value, epoch)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without MONAI metadata (batches of MetaTensors cannot be masked)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


class DiscriminatorHealth:
    """Warn in the log when the GAN's discriminator collapses, from the trainer's outputs of every iteration.

    Over the last ``window`` iterations it compares, on the labelled patches, the share of voxels D assigns to each
    tissue with the tissue's true share, and warns when a tissue covering at least ``min_share`` of the voxels is
    predicted on less than ``ratio`` of its true share (the collapse docs/gan_training.md describes: D gives up the tissue
    the fakes resemble). It also warns when D rejects the fakes almost perfectly (mean fake loss below
    ``fake_floor``): the generator then learns little. A warning is logged when a state starts and an info line
    when it ends; ``engine.state.gan_health`` holds the current ``{"collapsed": [tissues], "fakes_rejected": bool}``.
    Voxels labelled ``ignore_label`` are left out. Attach to the trainer.
    """

    def __init__(
        self,
        tissues=("CSF", "GM", "WM"),
        window: int = 50,
        ratio: float = 0.25,
        min_share: float = 0.01,
        fake_floor: float = 0.01,
        ignore_label: int = 255,
    ):
        self.tissues, self.window, self.ratio = tuple(tissues), int(window), float(ratio)
        self.min_share, self.fake_floor, self.ignore_label = float(min_share), float(fake_floor), ignore_label
        self.counts: deque = deque(maxlen=self.window)
        self.fake_losses: deque = deque(maxlen=self.window)
        self.collapsed: set[str] = set()
        self.fakes_rejected = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) else out
        num_classes = len(self.tissues) + 1
        label = _plain(out["label"]).long()
        valid = label != self.ignore_label
        predicted = _plain(out["pred"]).argmax(1, keepdim=True)[valid]
        self.counts.append(
            torch.stack([torch.bincount(t, minlength=num_classes)[:num_classes] for t in (predicted, label[valid])])
            .cpu()
            .double()
        )
        if "loss_d_fake" in out:
            self.fake_losses.append(float(out["loss_d_fake"]))
        if len(self.counts) == self.window:
            self._check_tissues(engine)
        if len(self.fake_losses) == self.window:
            self._check_fakes(engine)
        engine.state.gan_health = {"collapsed": sorted(self.collapsed), "fakes_rejected": self.fakes_rejected}

    def _check_tissues(self, engine: Engine) -> None:
        total = sum(self.counts)
        shares = total / total[1].sum().clamp(min=1)
        for k, tissue in enumerate(self.tissues, start=1):
            predicted, true = float(shares[0, k]), float(shares[1, k])
            collapsed = true >= self.min_share and predicted < self.ratio * true
            if collapsed and tissue not in self.collapsed:
                self.logger.warning(
                    f"discriminator collapse at iteration {engine.state.iteration}: it predicts {tissue} on "
                    f"{predicted:.1%} of the labelled voxels, {true:.1%} are {tissue} (last {self.window} iterations); "
                    "see 'Getting the GAN to train' in docs/gan_training.md"
                )
                self.collapsed.add(tissue)
            elif not collapsed and tissue in self.collapsed:
                self.logger.info(f"{tissue} recovered at iteration {engine.state.iteration}: predicted on {predicted:.1%}")
                self.collapsed.discard(tissue)

    def _check_fakes(self, engine: Engine) -> None:
        mean = sum(self.fake_losses) / len(self.fake_losses)
        rejected = mean < self.fake_floor
        if rejected and not self.fakes_rejected:
            self.logger.warning(
                f"the discriminator rejects every fake at iteration {engine.state.iteration} (mean fake loss "
                f"{mean:.4f} over {self.window} iterations): the generator learns little; lower gan#fake_weight"
            )
        elif not rejected and self.fakes_rejected:
            self.logger.info(f"fakes fool the discriminator again at iteration {engine.state.iteration}")
        self.fakes_rejected = rejected
