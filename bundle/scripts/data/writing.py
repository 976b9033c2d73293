"""Writing a generated dataset (phantoms, renders of the real label maps) once: staged, marked complete when done,
kept while its arguments stay the same; NIfTI files and one process per CPU core for its subjects."""

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib

from ..atomic import write_json

MARKER = "dataset_marker.json"
_GENERATOR, _VERSION = "scripts.data.writing", 1
_STAGING = ".dataset-staging"
# the phantom marker of earlier releases (its datasets, phantoms and renders alike, are replaced once)
_OLD_MARKER, _OLD_GENERATOR = "phantom.json", "scripts.phantom"


def write_once(out_dir, dataset: str, arguments: dict, write_files) -> list[str]:
    """Write ``dataset`` (a name, such as ``"phantom iseg"``) made with ``arguments`` into ``out_dir`` unless it is
    complete there already; return its ids.

    ``write_files(folder)`` writes every file into a staging folder inside ``out_dir`` and returns the ids; the files
    are then renamed into place. The marker ``out_dir/dataset_marker.json`` records the dataset, its arguments, ids and
    files, and says complete only once every file is in place, so an interrupted write is replaced by the next call.
    A complete dataset with the same name and arguments is kept as it is (nothing is rewritten); another one written
    here is replaced (its listed files deleted); a non-empty folder without the marker is refused with a ValueError.
    """
    out_dir = Path(out_dir)
    marker_path = out_dir / MARKER
    request = {"generator": _GENERATOR, "version": _VERSION, "dataset": dataset, "arguments": arguments}
    previous = _read_marker(marker_path, _GENERATOR)
    if previous is None and (old := _read_marker(out_dir / _OLD_MARKER, _OLD_GENERATOR)) is not None:
        previous = {**old, "files": [*old.get("files", []), _OLD_MARKER]}
    if previous is None:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ValueError(f"{out_dir} is not empty and holds no dataset that this bundle wrote ({MARKER}); "
                             "not writing there")
    elif _is_complete(out_dir, previous, request):
        return previous["ids"]
    else:
        _remove_listed_files(out_dir, previous.get("files", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker_path, {**request, "complete": False, "ids": [], "files": []})
    staging = out_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        ids = write_files(staging)
        files = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
        # listed before they move, so that a move cut off halfway leaves nothing the next write does not remove
        write_json(marker_path, {**request, "complete": False, "ids": ids, "files": files})
        for name in files:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(marker_path, {**request, "complete": True, "ids": ids, "files": files})
    return ids


def save_nifti(volume, affine, path) -> None:
    """Save ``volume`` as NIfTI-1 with ``affine`` (mm) in both qform and sform."""
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def map_in_processes(function, items, start_method: str) -> list:
    """``function(item)`` for each of ``items`` in a pool of one process per CPU core (at most one per item); the
    results in order. ``start_method``: "fork" where the workers run numpy only, "spawn" where they run torch."""
    items = list(items)
    workers = max(1, min(len(items), len(os.sched_getaffinity(0))))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method)) as pool:
        return list(pool.map(function, items))


def _read_marker(path, generator):
    """Contents of the marker file ``path`` if ``generator`` wrote it, else None."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == generator else None


def _is_complete(out_dir, marker, request):
    """Whether ``marker`` records a complete dataset for ``request`` whose files are all present."""
    return (marker.get("complete") is True and all(marker.get(key) == value for key, value in request.items())
            and all((out_dir / name).is_file() for name in marker.get("files", [])))


def _remove_listed_files(out_dir, names):
    """Delete files of an earlier dataset (only inside ``out_dir``) and the folders they leave empty."""
    root = out_dir.resolve()
    for name in names:
        path = (out_dir / name).resolve()
        if path.is_relative_to(root) and path != root:
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == root or any(parent.iterdir()):
                    break
                parent.rmdir()
