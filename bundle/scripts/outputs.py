"""Checks that a workflow's outputs lose nothing, run before any long work starts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .cli import as_bool
from .checks import InputError


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
