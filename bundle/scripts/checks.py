"""Clear errors for bad input, found before any long work starts.

``InputError`` is a problem the user can fix (a file, a folder, a checkpoint); its message is one line naming the
file, the problem and what to do. ``check_datalist`` reads every image and label of a datalist and checks what the
workflows assume (readable, 3D, one grid per subject, finite, not empty, known label values: ``check_label_codes``,
which ``scripts.transforms.CheckLabelCodesd`` runs on every label map loaded); ``check_weights`` and
``CheckedCheckpointLoader`` check a weights file against the network. ``install_excepthook`` (first item of the
configs' ``initialize`` lists) turns an uncaught ``InputError`` into one ``ERROR: ...`` line on stderr and writes
the full traceback to a log file.

``check_outputs`` refuses, before any long work starts, to write over existing outputs (``OutputExistsError``,
unless ``--overwrite true``) or into a folder that holds inputs; ``as_bool`` reads a flag of the command line.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torch, MONAI and nibabel are imported where used: scripts.data.datasets imports this module for InputError alone.

NIBABEL_EXTS = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz")
GRID_TOLERANCE = 0.01  # affines of one subject may differ by this fraction of the smallest voxel size
_SHOWN_VALUES = 10  # offending label values listed in a message


class InputError(ValueError):
    """Bad input the user can fix; ``str()`` is one line naming the file, the problem and what to do.

    ``log_in_place`` False: the configured log file must not be written (its folder holds the user's inputs)."""

    log_in_place = True

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``)."""


# ------------------------------------------------------------------------------------------------------- images


@dataclass
class Volume:
    """An image file's spatial shape and affine, for ``check_same_grid``."""

    path: str
    shape: tuple[int, ...]  # spatial shape (3D)
    affine: np.ndarray


def check_datalist(
    datalist: Sequence[Mapping],
    modalities: Sequence[str],
    label_codes: Sequence[float] | None = None,
    label_set_name: str = "allowed",
    num_workers: int | None = None,
) -> None:
    """Read every file of ``datalist`` and raise an ``InputError`` naming the first bad one.

    Entries are ``{"subject", <modality>: path, ..., "label": path, "mask": path}``, or ``{"subject", "image":
    path}`` with one 4D image holding ``len(modalities)`` channels (last axis). Each file must be fully readable
    (not truncated or corrupt), 3D (4D with one volume per modality file), free of NaN and infinity, and not all
    zero; the files of a subject, its brain ``mask`` included, must share one voxel grid (shape, and affines equal
    up to ``GRID_TOLERANCE`` of a voxel). Labels are checked only with ``label_codes`` (e.g.
    ``scripts.data.datasets.label_mapping(format)[0]``; ``label_set_name`` names that set in messages): their values must
    be in it. Without it ``label`` is ignored (inference).
    NIfTI and Analyze files are read with nibabel, others with MONAI's ``LoadImage``; ``num_workers`` threads read
    them (MONAI's convention: ``None`` is ``os.cpu_count()``, less than 1 is 1).
    """
    modalities = [modalities] if isinstance(modalities, str) else list(modalities)
    codes = None if label_codes is None else np.asarray(list(label_codes), dtype=float)
    files = []  # (entry index, path, channels, label codes or None, what the file is)
    for index, entry in enumerate(datalist):
        for key, channels in _image_keys(entry, modalities, index):
            files += [(index, p, channels, None, "image") for p in _as_paths(entry[key])]
        if codes is not None and entry.get("label") is not None:
            files += [(index, p, 1, codes, "label map") for p in _as_paths(entry["label"])]
        if entry.get("mask") is not None:
            files += [(index, p, 1, None, "brain mask") for p in _as_paths(entry["mask"])]
    workers = os.cpu_count() if num_workers is None else max(1, int(num_workers))
    subject: list[Volume] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check_inputs") as pool:
        volumes = pool.map(lambda f: _check_file(f[1], f[2], f[3], label_set_name, f[4]), files)
        for i, volume in enumerate(volumes):  # in datalist order: the first bad file is reported
            subject.append(volume)
            if i + 1 == len(files) or files[i + 1][0] != files[i][0]:
                check_same_grid(subject, datalist[files[i][0]].get("subject", f"entry {files[i][0]}"))
                subject = []


def _image_keys(entry: Mapping, modalities: list[str], index: int) -> list[tuple[str, int]]:
    """``(key, channels)`` of an entry's images: one per modality, or ``image`` with ``len(modalities)`` channels."""
    if all(m in entry for m in modalities):
        return [(m, 1) for m in modalities]
    if "image" in entry:
        return [("image", len(modalities))]
    missing = [m for m in modalities if m not in entry]
    raise InputError(
        f"subject {entry.get('subject', f'entry {index}')} has no {missing[0]} image (keys: {sorted(entry)}): "
        f"every subject needs the modalities {modalities}, or one 'image' with {len(modalities)} channels"
    )


def _as_paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _check_file(
    path: str, channels: int, label_codes: np.ndarray | None, label_set_name: str, what: str = "image"
) -> Volume:
    """Read ``path`` (``what``: image, label map, brain mask) fully and check its dimensions, values and (with
    ``label_codes``) label values."""
    shape, data, affine = _read(path)
    spatial = tuple(shape[:3])
    found = int(np.prod(shape[3:], dtype=int)) if len(shape) > 3 else 1
    if len(shape) < 3 or sum(s > 1 for s in spatial) < 3:
        raise InputError(f"{path} is a 2D {what} (shape {tuple(shape)}): a 3D volume is needed")
    if found != channels:
        if channels == 1:
            raise InputError(
                f"{path} holds {found} volumes (shape {tuple(shape)}): each {what} file must hold one 3D volume"
            )
        raise InputError(
            f"{path} has {found} channels (shape {tuple(shape)}) but the {channels} modalities need {channels}: "
            "give one channel per modality, in the order of --modalities"
        )
    if np.issubdtype(data.dtype, np.inexact) and not np.isfinite(data).all():
        nan = int(np.isnan(data).sum())
        raise InputError(
            f"{path} has {nan} NaN and {data.size - nan - int(np.isfinite(data).sum())} infinite voxels: "
            f"replace them (e.g. by 0) and run again"
        )
    if not data.any():
        raise InputError(f"{path} is empty (all voxels are 0): export or convert this {what} again")
    if label_codes is not None:
        check_label_codes(path, data, label_codes, label_set_name)
    return Volume(path, spatial, affine)


def check_label_codes(path, data, label_codes: Sequence[float], label_set_name: str = "allowed") -> None:
    """``InputError`` naming ``path`` and the values of the label map ``data`` (an array) outside ``label_codes``
    (``label_set_name`` names that set)."""
    codes = np.asarray(list(label_codes), dtype=float)
    inside = np.isin(data, codes)
    if not inside.all():
        bad = np.unique(data[~inside])
        shown = ", ".join(f"{v:g}" for v in bad[:_SHOWN_VALUES].tolist()) + (", ..." * (bad.size > _SHOWN_VALUES))
        allowed = ", ".join(f"{v:g}" for v in codes.tolist())
        raise InputError(
            f"{path} has label values [{shown}] outside the {label_set_name} set [{allowed}]: "
            "check --dataset_format and the label file"
        )


def _read(path: str) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """``(shape, data, affine)`` of an image file; ``InputError`` if it is missing, unreadable or truncated."""
    if not Path(path).is_file():
        raise MissingInputError(f"{path} not found: check the dataset folder or datalist")
    try:
        if path.lower().endswith(NIBABEL_EXTS):
            import nibabel as nib

            image = nib.load(path, mmap=False)
            return tuple(image.shape), np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=float)
        from monai.transforms import LoadImage

        image = LoadImage(image_only=True)(path)
        spatial = tuple(int(s) for s in image.meta.get("spatial_shape", image.shape))
        shape = spatial + ((image.numel() // max(1, int(np.prod(spatial))),) if image.ndim > len(spatial) else ())
        return shape, image.numpy(), image.affine.numpy().astype(float)
    except Exception as e:
        raise InputError(
            f"{path} cannot be read ({_reason(e)}): the file is truncated or corrupt; copy or export it again"
        ) from e


def _reason(error: Exception) -> str:
    """``Type: first sentence`` of an exception's message, for a one-line error."""
    first = next(iter(str(error).strip().splitlines()), "").split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def check_same_grid(volumes: list[Volume], subject) -> None:
    """All volumes of a subject on the first one's grid: same spatial shape, affines equal up to the tolerance."""
    if not volumes:
        return
    first = volumes[0]
    tolerance = GRID_TOLERANCE * float(np.linalg.norm(first.affine[:3, :3], axis=0).min())
    for other in volumes[1:]:
        if other.shape != first.shape:
            problem = f"has shape {other.shape} but {first.path} has {first.shape}"
        elif not np.allclose(other.affine, first.affine, rtol=0, atol=tolerance):
            diff = float(np.abs(other.affine - first.affine).max())
            problem = f"has another affine than {first.path} (up to {diff:.3g} mm apart)"
        else:
            continue
        raise InputError(
            f"subject {subject}: {other.path} {problem}: the modalities, label and mask of a subject must be "
            "co-registered and resampled to one voxel grid"
        )


# -------------------------------------------------------------------------------------------------- checkpoints


def check_weights(path, network, key: str = "model") -> dict:
    """The state_dict in weights file ``path`` (a plain state_dict or ``{key: state_dict}``), checked against
    ``network``: an ``InputError`` naming the file if it is missing, unreadable, not a state_dict or does not fit."""
    import torch

    from .checkpoint import unwrap

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"checkpoint {path} not found: train first (configs/train.yaml writes models/model.pt) or pass --ckpt_path"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"checkpoint {path} cannot be read ({_reason(e)}): the file is truncated or not a weights file (save "
            "network.state_dict(), not the network); copy it again or pass another --ckpt_path"
        ) from e
    state = checkpoint.get(key) if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping) else (
        checkpoint
    )
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"keys {sorted(map(str, state))[:6]}" if isinstance(state, Mapping) else type(state).__name__
        raise InputError(
            f"checkpoint {path} is not a network's weights: expected a state_dict or {{'{key}': state_dict}}, "
            f"found {found}"
        )
    own = unwrap(network).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or resized:
        if resized:
            example = f"{resized[0]} is {tuple(state[resized[0]].shape)}, not {tuple(own[resized[0]].shape)}"
        else:
            example = f"{missing[0]} is missing" if missing else f"{unexpected[0]} is unexpected"
        raise InputError(
            f"checkpoint {path} does not fit the network ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(resized)} resized tensors, e.g. {example}): was it trained with other network_features, "
            "modalities or num_classes?"
        )
    return dict(state)


class CheckedCheckpointLoader:
    """Ignite handler: MONAI's ``CheckpointLoader`` (same arguments) whose file is checked against the networks of
    ``load_dict`` when the handler is created (``check_weights``), so that a wrong checkpoint stops the run with a
    one-line ``InputError`` before the engine starts."""

    def __init__(self, load_path: str, load_dict: dict, **kwargs):
        from monai.handlers import CheckpointLoader
        from torch import nn

        self.loader = CheckpointLoader(load_path, load_dict, **kwargs)
        if self.loader.strict:
            for name, obj in load_dict.items():
                if isinstance(obj, nn.Module):
                    check_weights(load_path, obj, key=name)

    def attach(self, engine) -> None:
        self.loader.attach(engine)


# ------------------------------------------------------------------------------------------------------ outputs


class OutputExistsError(InputError, FileExistsError):
    """An output that is already there and would be overwritten (also a ``FileExistsError``)."""


class OutputInInputFolderError(InputError):
    """``output_dir`` holds input files: nothing goes there, not even the error log."""

    log_in_place = False


def check_outputs(
    subjects: Sequence[dict], output_dir, postfixes: Sequence[str], ext: str, overwrite=False, files: Sequence[str] = ()
) -> None:
    """Refuse to write ``<output_dir>/<subject>_<postfix><ext>`` and ``files`` over existing files or into an input folder.

    ``subjects``: datalist entries with a ``subject`` id and input file paths. ``files``: other names in
    ``output_dir``, one per run (``tissue_volumes.csv``) or, with ``{subject}`` in the name, one per subject
    (``{subject}_overlay.png``). Raises ``InputError`` when ``output_dir`` holds one of the input files (outputs
    never go beside the inputs), and ``OutputExistsError`` (a ``FileExistsError``) naming the first existing output
    unless ``overwrite``.
    """
    out_dir = Path(output_dir).expanduser().resolve()
    input_dirs = {Path(v).expanduser().resolve().parent for s in subjects for k, v in s.items() if k != "subject"}
    if out_dir in input_dirs:
        raise OutputInInputFolderError(f"output_dir {out_dir} holds input files: choose another --output_dir (inputs are never written)")
    if as_bool(overwrite):
        return
    existing = [out_dir / f"{s['subject']}_{p}{ext}" for s in subjects for p in postfixes]
    for name in files:
        existing += [out_dir / name.format(subject=s["subject"]) for s in subjects] if "{subject}" in name else [out_dir / name]
    existing = [p for p in existing if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]} already exists{more}; pass --overwrite true to replace, or another --output_dir")


# ------------------------------------------------------------------------------------------- command-line flags


def as_optional(value):
    """A setting whose ``null`` means "off", as given on the ``monai.bundle`` command line: ``fire`` passes
    ``--key null`` as the string ``'null'`` (``None`` only for ``--key None``), so ``null``/``none`` strings (any case,
    surrounding spaces ignored) become ``None``; other values pass unchanged."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        return None
    return value


def as_bool(value) -> bool:
    """A flag given on the ``monai.bundle`` command line, as a bool. ``fire`` passes ``--flag false`` as the string
    ``'false'``, which Python counts as true, so ``true/false/yes/no/1/0`` strings (any case, surrounding spaces
    ignored) are parsed; anything else is an error. Other values count as Python counts them.

    Not ``monai.utils.str2bool``: that one raises on the ints and the ``None`` that ``fire`` makes of ``--flag 1``,
    ``--flag 0`` and ``--flag None``, does not strip spaces, and takes ``t``/``f``/``y``/``n`` as flags too."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return word in ("true", "yes", "1")
    return bool(value)


# ------------------------------------------------------------------------------------------------ error report


_log_file: str | None = None
_previous_hook = sys.excepthook


def install_excepthook(log_file=None) -> None:
    """Report an uncaught ``InputError`` (also one wrapped by MONAI's config parser) as one line
    ``ERROR: <message> (full traceback: <log>)`` on stderr, and append the full traceback to ``log_file``
    (its folder is created; a temporary file if ``None`` or not writable). Other errors keep the previous hook.
    Calling it again only changes the log file."""
    global _log_file, _previous_hook
    _log_file = None if log_file is None else str(log_file)
    if sys.excepthook is not _report:
        _previous_hook = sys.excepthook
        sys.excepthook = _report


def find_input_error(error: BaseException | None) -> InputError | None:
    """The first ``InputError`` in ``error`` and its chain of causes and contexts, or ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _report(exc_type, error, tb) -> None:
    input_error = find_input_error(error)
    if input_error is None:
        _previous_hook(exc_type, error, tb)
        return
    text = "".join(traceback.format_exception(exc_type, error, tb))
    header = f"{datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(sys.argv)}\n"
    log = _write_log(header + text, input_error.log_in_place)
    where = f"full traceback: {log}" if log else "no log file could be written"
    print(f"ERROR: {input_error} ({where})", file=sys.stderr, flush=True)


def _write_log(text: str, in_place: bool = True) -> str | None:
    """Append ``text`` to the log file (if ``in_place``), or to a new temporary file; return its path (``None`` if
    both fail)."""
    if _log_file is not None and in_place:
        try:
            Path(_log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(_log_file, "a") as f:
                f.write(text)
            return _log_file
        except OSError:
            pass
    try:
        fd, path = tempfile.mkstemp(prefix="mri_gan_error_", suffix=".log", text=True)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return None
