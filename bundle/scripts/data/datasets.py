"""Turn a dataset folder (iSEG, MRBrainS13/18, a NIfTI folder or a MONAI datalist JSON) into MONAI datalists.

Every entry is a dict ``{"subject": id, <modality>: path, ..., "label": path, "mask": path}`` (``label`` and the
brain ``mask`` only when the subject has one; masks come from the ``folder``, ``datalist`` and ``anatomy`` formats);
paths are absolute strings. Labels keep their dataset codes: map them with
``monai.transforms.MapLabelValued(keys="label", *label_mapping(format))`` to 0 bg, 1 CSF, 2 GM, 3 WM and
``IGNORE_LABEL`` (voxels excluded from loss and metrics).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..checks import InputError, MissingInputError

IGNORE_LABEL = 255
CSF, GM, WM = 1, 2, 3  # class indices of the tissues (0: background)
FORMATS = ("iseg", "mrbrains13", "mrbrains18", "datalist", "folder", "phantom", "anatomy")
SPLITS = ("training", "validation", "testing", "unlabeled")

# MRBrainS codes: 1 cortical GM, 2 basal ganglia, 3 WM, 4 WM lesions, 5 extracerebral CSF, 6 ventricles,
# 7 cerebellum, 8 brainstem (, MRBrainS18 only: 9 infarction, 10 other).
_MRBRAINS_TARGETS = [0, 2, 2, 3, 3, 1, 1, IGNORE_LABEL, IGNORE_LABEL]
_ISEG_NAMES = {"t1": "T1", "t2": "T2", "label": "label"}
_ISEG_RE = re.compile(r"^subject-(\d+)-(T1|T2|label)\.(hdr|nii|nii\.gz)$", re.IGNORECASE)
_NIFTI_EXTS = (".nii", ".nii.gz")
_MRBRAINS13_FILES = {"t1": "T1", "t1_ir": "T1_IR", "flair": "T2_FLAIR", "label": "LabelsForTraining"}
_MRBRAINS18_FILES = {"t1": "pre/reg_T1", "t1_ir": "pre/reg_IR", "flair": "pre/FLAIR", "label": "segm"}
_RESERVED_KEYS = ("subject", "label", "mask")


def label_mapping(dataset_format: str) -> tuple[list[int], list[int]]:
    """``(orig_labels, target_labels)`` for ``MapLabelValued``: dataset codes -> 0 bg, 1 CSF, 2 GM, 3 WM, IGNORE_LABEL.

    iseg/phantom: 0, 10, 150, 250 -> 0..3; mrbrains13: 1,2 -> GM, 3,4 -> WM, 5,6 -> CSF, 7,8 -> ignore;
    mrbrains18: the same plus 9,10 -> ignore; datalist/folder/anatomy: identity on 0..3 and IGNORE_LABEL (MONAI Label
    studies written by ``tools.monailabel_studies``, the merged targets of ``scripts.data.anatomy``).
    """
    fmt = _check_format(dataset_format)
    if fmt in ("iseg", "phantom"):
        return [0, 10, 150, 250], [0, 1, 2, 3]
    if fmt == "mrbrains13":
        return list(range(9)), list(_MRBRAINS_TARGETS)
    if fmt == "mrbrains18":
        return list(range(11)), _MRBRAINS_TARGETS + [IGNORE_LABEL, IGNORE_LABEL]
    return [0, 1, 2, 3, IGNORE_LABEL], [0, 1, 2, 3, IGNORE_LABEL]


def modality_names(dataset_format: str) -> tuple[str, ...] | None:
    """Modalities a format provides; ``None`` for datalist/folder, whose entries may use any key."""
    fmt = _check_format(dataset_format)
    if fmt in ("iseg", "phantom", "anatomy"):
        return ("t1", "t2")
    if fmt in ("mrbrains13", "mrbrains18"):
        return ("t1", "t1_ir", "flair")
    return None


def find_subjects(dataset_dir, dataset_format: str, modalities, suffixes: dict | None = None) -> list[dict]:
    """One entry per subject found under ``dataset_dir``, sorted by subject id (natural order: 2 before 10).

    ``suffixes`` (``{modality, "label" or "mask": file name ending}``) applies to the ``folder`` format only; its
    default is ``_<MODALITY>.nii.gz`` per modality and ``_label.nii.gz`` (no mask). For ``datalist`` all lists of the
    JSON are merged; an entry may name a brain ``mask``.
    """
    fmt = _check_format(dataset_format)
    modalities = _check_modalities(fmt, modalities)
    if fmt in ("datalist", "anatomy"):
        lists = load_datalist(_datalist_file(dataset_dir), modalities)
        return sorted((e for name in SPLITS for e in lists[name]), key=_subject_key)
    root = _existing_dir(dataset_dir)
    if fmt in ("iseg", "phantom"):
        subjects = _find_iseg(root, modalities)
    elif fmt == "mrbrains13":
        subjects = _find_by_folder(modalities, _MRBRAINS13_FILES, _mrbrains13_dirs(root))
    elif fmt == "mrbrains18":
        dirs = [d.parent for d, _ in _walk(root) if d.name == "pre" and d != root]
        subjects = _find_by_folder(modalities, _MRBRAINS18_FILES, dirs)
    else:
        subjects = _find_folder(root, modalities, suffixes)
    if not subjects:
        raise InputError(f"No {fmt} subjects found in {root}: expected {_expected_pattern(fmt, modalities, suffixes)}")
    return sorted(subjects, key=_subject_key)


def split_subjects(
    subjects: list[dict], num_labeled: int | None, num_val: int, seed: int = 0, num_test: int | None = None
) -> dict:
    """Deterministic split into ``training``/``validation``/``testing``/``unlabeled`` lists.

    Labelled subjects (sorted by id, then shuffled with ``numpy.random.default_rng(seed)``): the first ``num_val``
    go to validation, the next ``num_labeled`` to training (``-1``/``None``: all the rest). With ``num_test=None``
    (or ``-1``, which a command line can pass: ``monai.bundle run`` drops ``None`` overrides) the remaining ones go
    to testing; with a number, the last ``num_test`` go to testing (the same subjects whatever
    ``num_labeled`` is) and those left between training and testing join the unlabelled subjects without their
    label (the few-shot setting). Subjects without a ``label`` go to unlabeled. Lists are sorted by subject id.
    """
    if num_test == -1:
        num_test = None
    if num_val < 0 or (num_test is not None and num_test < 0):
        raise InputError(f"num_val must be >= 0 and num_test >= -1, got {num_val} and {num_test}")
    labeled = sorted((dict(s) for s in subjects if "label" in s), key=_subject_key)
    unlabeled = [dict(s) for s in subjects if "label" not in s]
    all_rest = num_labeled is None or num_labeled < 0
    n_test = num_test or 0
    needed = num_val + n_test + (0 if all_rest else num_labeled)
    if needed > len(labeled):
        wanted = f"{num_val} validation" + ("" if all_rest else f" + {num_labeled} training") + (
            f" + {n_test} testing" if n_test else ""
        )
        raise InputError(
            f"need {wanted} = {needed} labelled subjects, but only {len(labeled)} of {len(subjects)} have a label"
        )
    order = np.random.default_rng(seed).permutation(len(labeled))
    shuffled = [labeled[i] for i in order]
    n_train = len(labeled) - num_val - n_test if all_rest else num_labeled
    train_end = num_val + n_train
    if num_test is None:
        testing, unused = shuffled[train_end:], []
    else:
        testing, unused = shuffled[len(shuffled) - n_test :], shuffled[train_end : len(shuffled) - n_test]
    unlabeled += [{k: v for k, v in entry.items() if k != "label"} for entry in unused]
    return {
        "training": sorted(shuffled[num_val:train_end], key=_subject_key),
        "validation": sorted(shuffled[:num_val], key=_subject_key),
        "testing": sorted(testing, key=_subject_key),
        "unlabeled": sorted(unlabeled, key=_subject_key),
    }


def build_datalist(
    dataset_dir,
    dataset_format: str,
    modalities,
    num_labeled: int | None,
    num_val: int,
    seed: int = 0,
    suffixes: dict | None = None,
    split_file=None,
    phantom: dict | None = None,
    num_test: int | None = None,
    anatomy: dict | None = None,
) -> dict:
    """Find the subjects of ``dataset_dir`` and split them (see ``find_subjects`` and ``split_subjects``).

    ``phantom``: first write (idempotently) a seeded phantom dataset in the iSEG layout into ``dataset_dir``,
    with ``phantom`` as keyword arguments of ``scripts.data.phantom.write_dataset``, then read it as ``iseg``.
    ``anatomy``: first render (idempotently) scans from the real label maps into ``dataset_dir``, with ``anatomy`` as
    keyword arguments of ``scripts.data.anatomy.write_dataset``, then read its ``datalist.json`` (whose split keeps the
    renders of one map together and the test maps out of training).
    ``datalist``: a split with a non-empty ``validation`` list is kept as is (``num_labeled >= 0`` keeps the first
    ``num_labeled`` training entries; with ``num_test`` a number, as ``split_subjects``, the last ``num_test`` of the
    others join its testing list and those left join the unlabelled ones without their label, else they are left
    out); otherwise its ``training`` entries are split and its ``testing`` and ``unlabeled`` entries added.
    ``num_test``: see ``split_subjects``. ``split_file``: also write the split there as a MONAI datalist JSON (feed it
    back with the ``datalist`` format to reproduce the run).
    """
    fmt = _check_format(dataset_format)
    modalities = _check_modalities(fmt, modalities)
    if fmt == "phantom":
        from .phantom import write_dataset

        write_dataset(dataset_dir, layout="iseg", **(phantom or {}))
        fmt = "iseg"
    elif fmt == "anatomy":
        from .anatomy import write_dataset as write_anatomy

        write_anatomy(dataset_dir, **(anatomy or {}))
        fmt = "datalist"
    try:
        if fmt == "datalist":
            split = _split_datalist(_datalist_file(dataset_dir), modalities, num_labeled, num_val, seed, num_test)
        else:
            subjects = find_subjects(dataset_dir, fmt, modalities, suffixes)
            split = split_subjects(subjects, num_labeled, num_val, seed, num_test)
    except ValueError as e:
        raise (type(e) if isinstance(e, InputError) else InputError)(f"{dataset_dir} ({fmt}): {e}") from None
    if split_file is not None:
        write_json(split_file, split)
    return split


def split_on_first_use(**kwargs) -> Callable[[], dict]:
    """``build_datalist(**kwargs)`` as a function of no arguments that builds the split on its first call and returns
    the same dict after (configs/train.yaml's ``data#split``): a config that never needs the split (MONAI Label's
    studies) never reads the dataset folder."""
    return functools.cache(functools.partial(build_datalist, **kwargs))


def load_datalist(path, modalities) -> dict:
    """Read a MONAI datalist JSON into the four lists (missing ones are empty).

    Paths under the modality keys, ``label`` and ``mask`` resolve against the JSON's folder and must exist; other
    keys are kept as they are. A missing ``subject`` is derived from the first modality's file name.
    """
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if not path.is_file():
        raise MissingInputError(f"Datalist JSON not found: {path}")
    modalities = _as_tuple(modalities)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}): fix the datalist file") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with lists {SPLITS}")
    out = {}
    for name in SPLITS:
        entries = data.get(name) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"{path}: '{name}' must be a list of objects")
        out[name] = [_resolve_entry(e, modalities, path, name, i) for i, e in enumerate(entries)]
    return out


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _check_format(dataset_format: str) -> str:
    if dataset_format not in FORMATS:
        raise InputError(f"Unknown dataset format {dataset_format!r}; valid formats: {', '.join(FORMATS)}")
    return dataset_format


def _as_tuple(modalities) -> tuple[str, ...]:
    return (modalities,) if isinstance(modalities, str) else tuple(modalities)


def _check_modalities(fmt: str, modalities) -> tuple[str, ...]:
    modalities = _as_tuple(modalities)
    if not modalities:
        raise InputError("At least one modality is required")
    valid = modality_names(fmt)
    bad = [m for m in modalities if (m not in valid if valid else m in _RESERVED_KEYS)]
    if bad:
        names = f"valid names: {', '.join(valid)}" if valid else f"{', '.join(_RESERVED_KEYS)} are reserved keys"
        raise InputError(f"Modalities {bad} not available in format {fmt!r} ({names})")
    if len(set(modalities)) != len(modalities):
        raise InputError(f"Duplicate modalities in {list(modalities)}")
    return modalities


def _subject_key(entry: dict) -> list:
    """Natural sort key of an entry's subject id (``subject-2`` before ``subject-10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(entry.get("subject", "")))]


def _existing_dir(dataset_dir) -> Path:
    root = Path(os.path.abspath(os.path.expanduser(dataset_dir)))
    if not root.is_dir():
        raise MissingInputError(f"Dataset folder not found: {root}")
    return root


def _walk(root: Path):
    """``(folder, file names)`` under ``root`` (itself included), skipping hidden and ``__MACOSX`` entries."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        yield Path(dirpath), sorted(f for f in filenames if not f.startswith("."))


def _add_file(subjects: dict, subject: str, key: str, path: Path) -> None:
    entry = subjects.setdefault(subject, {"subject": subject})
    if key in entry:
        raise InputError(f"Subject {subject} has two {key} files: {entry[key]} and {path}")
    entry[key] = str(path)


def _complete(subjects: dict, modalities: tuple[str, ...], expected) -> list[dict]:
    """Entries ordered subject, modalities, label, mask; ValueError if a modality is missing (``expected(sid, m)``)."""
    out = []
    for sid, entry in subjects.items():
        missing = [m for m in modalities if m not in entry]
        if missing:
            raise InputError(f"Subject {sid} is missing {missing[0]}: expected {expected(sid, missing[0])}")
        keys = ("subject", *modalities, "label", "mask")
        out.append({k: entry[k] for k in keys if k in entry})
    return out


def _find_iseg(root: Path, modalities: tuple[str, ...]) -> list[dict]:
    wanted = {_ISEG_NAMES[k].lower(): k for k in (*modalities, "label")}
    subjects, folders = {}, {}
    for folder, files in _walk(root):
        for name in files:
            match = _ISEG_RE.match(name)
            if not match:
                continue
            sid, key = f"subject-{int(match.group(1))}", match.group(2).lower()
            folders.setdefault(sid, folder)
            subjects.setdefault(sid, {"subject": sid})
            if key not in wanted:
                continue
            path = folder / name
            if match.group(3).lower() == "hdr" and not any(path.with_suffix(s).is_file() for s in (".img", ".IMG")):
                raise InputError(f"Analyze header {path} has no {path.with_suffix('.img').name} beside it")
            _add_file(subjects, sid, wanted[key], path)
    return _complete(
        subjects, modalities, lambda sid, m: f"{folders[sid] / f'{sid}-{_ISEG_NAMES[m]}.hdr'} (or .nii, .nii.gz)"
    )


def _nifti(base: Path) -> Path | None:
    """``base.nii`` or ``base.nii.gz``, whichever exists."""
    return next((p for p in (Path(f"{base}{e}") for e in _NIFTI_EXTS) if p.is_file()), None)


def _mrbrains13_dirs(root: Path) -> list[Path]:
    return [d for d, files in _walk(root) if any(f"{_MRBRAINS13_FILES['t1']}{e}" in files for e in _NIFTI_EXTS)]


def _dir_ids(dirs: list[Path]) -> list[str]:
    """Ids ``<parent>-<folder>`` (``TrainingData-1``), or the whole relative path if those collide."""
    ids = [f"{d.parent.name}-{d.name}" for d in dirs]
    if len(set(ids)) < len(ids):
        base = Path(os.path.commonpath(dirs)).parent
        ids = ["-".join(d.relative_to(base).parts) for d in dirs]
    return ids


def _find_by_folder(modalities: tuple[str, ...], files: dict, dirs: list[Path]) -> list[dict]:
    """MRBrainS layouts: one folder per subject, fixed file names (``files``: key -> path without extension)."""
    folders = dict(zip(_dir_ids(dirs), dirs))
    subjects = {}
    for sid, d in folders.items():
        subjects[sid] = {"subject": sid}
        for key in (*modalities, "label"):
            path = _nifti(d / files[key])
            if path is not None:
                subjects[sid][key] = str(path)
    return _complete(subjects, modalities, lambda sid, m: f"{folders[sid] / files[m]}.nii (or .nii.gz)")


def _folder_suffixes(modalities: tuple[str, ...], suffixes: dict | str | None) -> dict:
    """``suffixes`` as a dict; a string is read as YAML (fire leaves ``--suffixes "{t1: _T1.nii.gz}"`` a string:
    the dots stop it from parsing the unquoted names)."""
    if suffixes is None:
        return {**{m: f"_{m.upper()}.nii.gz" for m in modalities}, "label": "_label.nii.gz"}
    if isinstance(suffixes, str):
        import yaml

        try:
            parsed = yaml.safe_load(suffixes)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InputError(f"--suffixes {suffixes!r} is not a mapping: write it as \"{{t1: _T1.nii.gz, t2: _T2.nii.gz}}\"")
        suffixes = {str(k): str(v) for k, v in parsed.items()}
    missing = [m for m in modalities if m not in suffixes]
    if missing:
        raise InputError(f"suffixes {dict(suffixes)} have no entry for modalities {missing}")
    return {k: suffixes[k] for k in (*modalities, "label", "mask") if suffixes.get(k)}


def _find_folder(root: Path, modalities: tuple[str, ...], suffixes: dict | None) -> list[dict]:
    suffixes = _folder_suffixes(modalities, suffixes)
    by_length = sorted(suffixes.items(), key=lambda kv: -len(kv[1]))
    subjects, folders = {}, {}
    for folder, files in _walk(root):
        for name in files:
            key, suffix = next(((k, s) for k, s in by_length if name.endswith(s) and len(name) > len(s)), (None, ""))
            if key is not None:
                sid = name[: -len(suffix)]
                folders.setdefault(sid, folder)
                _add_file(subjects, sid, key, folder / name)
    return _complete(subjects, modalities, lambda sid, m: str(folders[sid] / f"{sid}{suffixes[m]}"))


def _expected_pattern(fmt: str, modalities: tuple[str, ...], suffixes: dict | None) -> str:
    if fmt in ("iseg", "phantom"):
        return "files subject-<N>-T1.hdr/.img (or .nii, .nii.gz), searched recursively"
    if fmt == "mrbrains13":
        return "folders <root>/TrainingData/<i>/ holding T1.nii, T1_IR.nii, T2_FLAIR.nii [, LabelsForTraining.nii]"
    if fmt == "mrbrains18":
        return "folders <root>/training/<id>/pre/ holding reg_T1.nii.gz, reg_IR.nii.gz, FLAIR.nii.gz"
    return f"files <subject><suffix> with suffixes {_folder_suffixes(modalities, suffixes)}"


def _datalist_file(dataset_dir) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(dataset_dir)))
    return path / "datalist.json" if path.is_dir() else path


def _resolve_entry(entry: dict, modalities: tuple[str, ...], path: Path, name: str, index: int) -> dict:
    missing = [m for m in modalities if m not in entry]
    if missing:
        who = entry.get("subject", f"entry {index}")
        raise InputError(f"{path}: '{name}' {who} has no {missing[0]!r} (keys: {sorted(entry)})")
    out = dict(entry)
    for key in (*modalities, "label", "mask"):
        if key in out:
            value = out[key]
            out[key] = [_resolve_path(v, path, name) for v in value] if isinstance(value, list) else _resolve_path(
                value, path, name
            )
    if "subject" not in out:
        first = out[modalities[0]]
        file_name = Path(first[0] if isinstance(first, list) else first).name
        out["subject"] = re.sub(r"(\.nii\.gz|\.[^.]*)$", "", file_name)
    return {"subject": out.pop("subject"), **out}


def _resolve_path(value: str, path: Path, name: str) -> str:
    resolved = os.path.normpath(os.path.join(path.parent, os.path.expanduser(value)))
    if not os.path.exists(resolved):
        raise MissingInputError(f"{path}: '{name}' lists {value}, which does not exist ({resolved})")
    return resolved


def _split_datalist(
    path: Path, modalities: tuple[str, ...], num_labeled, num_val: int, seed: int, num_test: int | None = None
) -> dict:
    lists = load_datalist(path, modalities)
    if lists["validation"]:
        for name in ("training", "validation"):
            if any("label" not in e for e in lists[name]):
                raise InputError(f"{path}: every '{name}' entry needs a 'label'")
        if num_labeled is not None and num_labeled >= 0:
            training = lists["training"]
            n_test = 0 if num_test is None or num_test < 0 else num_test
            if num_labeled + n_test > len(training):
                wanted = f"{num_labeled} training" + (f" + {n_test} testing" if n_test else "")
                raise InputError(f"need {wanted} subjects, {path} lists {len(training)} training subjects")
            lists["training"] = training[:num_labeled]
            if num_test is not None and num_test >= 0:  # the few-shot setting: the rest without their labels
                rest = training[num_labeled:]
                unused, held = rest[: len(rest) - n_test], rest[len(rest) - n_test :]
                lists["testing"] = lists["testing"] + held
                unused = [{k: v for k, v in entry.items() if k != "label"} for entry in unused]
                lists["unlabeled"] = sorted(lists["unlabeled"] + unused, key=_subject_key)
        return lists
    split = split_subjects(lists["training"], num_labeled, num_val, seed, num_test)
    for name in ("testing", "unlabeled"):
        split[name] = sorted(split[name] + lists[name], key=_subject_key)
    return split

