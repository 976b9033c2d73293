"""Checkpoint helpers: the bundle's weights files (plain state_dicts on the CPU) and resumable last checkpoints."""

from __future__ import annotations

import itertools
import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from .atomic import atomic_path
from .checks import InputError, MissingInputError

logger = logging.getLogger(__name__)


def unwrap(module: nn.Module) -> nn.Module:
    """Return the network inside a ``DistributedDataParallel``/``DataParallel`` wrapper or an ``AveragedModel`` (the
    mean teacher), or the module itself. MONAI's ``get_state_dict`` unwraps the first two only: a teacher saved
    through it would keep ``module.`` prefixes and ``n_averaged``, and load into no plain network."""
    return getattr(module, "module", module)


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity in a (nested) state_dict."""
    if isinstance(state, Mapping):
        return [name for k, v in state.items() for name in nonfinite_tensors(v, f"{prefix}{k}.")]
    if isinstance(state, torch.Tensor) and state.is_floating_point() and not torch.isfinite(state).all():
        return [prefix.rstrip(".")]
    return []


def _save_if_finite(state: dict, path, what: str) -> bool:
    """Write ``state`` to ``path`` atomically unless a tensor is non-finite; then log an error and keep the old file."""
    bad = nonfinite_tensors(state)
    if bad:
        logger.error(f"not saving {what} to {path}: non-finite values in {', '.join(bad[:3])}{' ...' * (len(bad) > 3)}")
        return False
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return True


class BundleWeights:
    """A network's weights as a bundle weights file: ``state_dict()`` gives the state_dict on the CPU, or
    ``{key: state_dict}`` when ``key`` is given.

    Tensors are moved to the CPU and lose any DDP ``module.`` prefix: a checkpoint written on a GPU, or by several
    processes, loads anywhere. ``models/model.pt`` is a plain state_dict (``key=None``), the format the model zoo's
    ``ckpt_export`` and MONAI Label expect and MONAI's ``CheckpointLoader`` reads.
    """

    def __init__(self, module: nn.Module, key: str | None = None):
        self.module = module
        self.key = key

    def state_dict(self) -> dict[str, Any]:
        state = {k: v.detach().cpu() for k, v in unwrap(self.module).state_dict().items()}
        return state if self.key is None else {self.key: state}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Any:
        state = state_dict if self.key is None else state_dict.get(self.key, state_dict)
        return unwrap(self.module).load_state_dict(state, strict=strict)


class LastCheckpoint:
    """Ignite handler that saves everything a run needs to resume into one file, atomically.

    ``save_dict`` maps names to objects with ``state_dict()`` (networks, optimisers, schedulers; ``None`` values
    are skipped); networks are saved unwrapped from DDP, and the engine the handler is attached to is saved as
    ``trainer``. The file is written at the end of every epoch and every ``interval`` iterations (0: epochs only),
    through a temporary file and a rename, so a run killed while saving keeps the previous checkpoint. Weights with
    NaN or infinity are not saved (an error is logged and the previous checkpoint stays). ``resume`` restores it.
    """

    def __init__(self, save_dict: dict[str, Any], path, interval: int = 0):
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        self.path, self.interval = path, int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        state = {
            name: (unwrap(obj) if isinstance(obj, nn.Module) else obj).state_dict()
            for name, obj in {**self.save_dict, "trainer": engine}.items()
        }
        _save_if_finite(state, self.path, f"the last checkpoint of iteration {engine.state.iteration}")


def resume(trainer: Engine, save_dict: dict[str, Any], path) -> int:
    """Load a ``LastCheckpoint`` file into the objects of ``save_dict`` and the trainer; return the iteration.

    The trainer then continues from the recorded epoch and iteration when it is run. A finished run is refused:
    ignite's ``Engine.run`` would silently start it again from iteration 0.
    """
    checkpoint = _read_last(path)
    objects = {k: (unwrap(v) if isinstance(v, nn.Module) else v) for k, v in save_dict.items() if v is not None}
    missing = sorted(set(objects) - set(checkpoint))
    if missing:
        raise InputError(f"{path}: the checkpoint has no {', '.join(missing)}; was it written by this configuration?")
    max_epochs = trainer.state.max_epochs
    Checkpoint.load_objects({**objects, "trainer": trainer}, checkpoint)
    _check_unfinished(path, trainer.state.iteration, trainer.state.epoch_length, max_epochs)
    trainer.state.max_epochs = max_epochs  # the configured length, not the stopped run's
    return trainer.state.iteration


def check_resumable(path, max_epochs: int) -> None:
    """The errors ``resume`` raises about the file itself (missing, unreadable, a finished run), from the file alone:
    train.yaml's ``run`` checks them before it caches the datasets (about 40 s on the default cohort)."""
    state = _read_last(path).get("trainer") or {}
    if "iteration" in state and "epoch_length" in state:
        _check_unfinished(path, int(state["iteration"]), int(state["epoch_length"]), int(max_epochs))


def _read_last(path) -> dict:
    if not Path(path).is_file():
        raise MissingInputError(f"{path} not found: nothing to resume; train without --resume true first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"{path} cannot be read ({type(e).__name__}): the file is corrupt; train without --resume") from e


def _check_unfinished(path, iteration: int, epoch_length: int, max_epochs: int) -> None:
    """Refuse a checkpoint at or beyond the end of a ``max_epochs`` schedule (ignite would start it from scratch)."""
    epoch = iteration // epoch_length
    if epoch > max_epochs:
        raise InputError(f"{path} is at epoch {epoch}, beyond --schedule#epochs {max_epochs}")
    if iteration >= epoch_length * max_epochs:
        raise InputError(
            f"{path} is a finished run (all {max_epochs} epochs, iteration {iteration}): nothing to resume; raise "
            "--iterations (or --schedule#epochs) to train on, or train without --resume true to start again"
        )


class BestCheckpoint:
    """Evaluator handler: save ``obj.state_dict()`` to ``path`` whenever the key metric reaches a new best.

    MONAI workflows record the best key metric (``state.best_metric_epoch``) before user handlers run. The file is
    written to a temporary file and renamed over the previous one, so a run killed while saving keeps the previous
    best; MONAI's ``CheckpointSaver`` instead removes the old file first and writes the new one non-atomically.
    Weights with NaN or infinity are never saved as the best: an error is logged and the previous best stays.
    """

    def __init__(self, obj: Any, path):
        self.obj, self.path = obj, path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch == engine.state.epoch:
            _save_if_finite(self.obj.state_dict(), self.path, f"the best weights of epoch {engine.state.epoch}")


def pretrained_path(models_dir, weights: Mapping[str, str], modalities) -> str:
    """The shipped weights file in ``models_dir`` for input ``modalities``: ``weights`` maps modality names joined
    by ``+`` (``"t1+t2"``, ``"t1"``) to file names. Other modalities: a ``MissingInputError`` that says how to get a
    model for them (MONAI's bundle tooling has one ``ckpt_path`` per config, not one per input set)."""
    name = "+".join(str(m).lower() for m in modalities)
    if name not in weights:
        raise MissingInputError(
            f"no shipped weights for modalities {list(modalities)} (shipped: {', '.join(sorted(weights))}): train a "
            f"model with --modalities and pass its model.pt as --ckpt_path"
        )
    return str(Path(models_dir) / weights[name])


def network_features(path, default: Sequence[int] = (16, 32, 64, 128)) -> list[int]:
    """The ``features`` of the ``Segmenter`` whose weights are in ``path`` (a state dict, or ``{"model": ...}``), read
    from its encoder's convolution shapes, so that inference and evaluation build the network a checkpoint was
    trained with. ``default`` when the file is missing or holds no segmenter (the checkpoint loader then says why)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError):
        return list(default)
    state = state.get("model", state) if isinstance(state, Mapping) else {}
    keys = ["stem.conv_0.conv.weight"] + [f"down.{i}.convs.conv_0.conv.weight" for i in range(len(state))]
    features = [int(state[k].shape[0]) for k in itertools.takewhile(lambda k: k in state, keys)]
    return features if len(features) >= 2 else list(default)
