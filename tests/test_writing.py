"""Tests of writing a generated dataset once (``scripts.data.writing``), through the phantom and the real-anatomy
writers alike: written once, marked, written again when the arguments change, never marked complete when cut off,
and never written into a foreign folder. Tiny volumes."""

import json
import os

import pytest
from label_maps import write_label_maps

import scripts.data.anatomy as anatomy
import scripts.data.phantom as phantom
from scripts.data import writing


def write_phantom(out_dir, variant, tmp_path):
    """A one-subject phantom dataset; variant 1 leaves the subject unlabelled (no label files)."""
    phantom.write_dataset(out_dir, layout="iseg", num_labeled=1 - variant, num_unlabeled=variant,
                          shape=(24, 28, 32), seed=variant)


def write_anatomy(out_dir, variant, tmp_path):
    """A one-subject dataset rendered from one tiny test map; variant 1 renders another scenario."""
    maps = write_label_maps(tmp_path / "maps", anatomy.TEST_MAPS[:1])
    anatomy.write_dataset(out_dir, renders_per_map=0, validation=(),
                          testing=(("adult",), ("whole_head",))[variant], anatomy_dir=maps)


WRITERS = [pytest.param(write_phantom, id="phantom"), pytest.param(write_anatomy, id="anatomy")]


def marker(out_dir):
    return json.loads((out_dir / writing.MARKER).read_text())


def files_and_times(out_dir):
    return {path.relative_to(out_dir).as_posix(): path.stat().st_mtime_ns
            for path in out_dir.rglob("*") if path.is_file()}


class CutOffOs:
    """``os`` for ``scripts.data.writing`` whose ``replace`` fails after the first file: a write cut off while the
    files are moved into place."""

    def __init__(self):
        self.moved = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, source, target):
        if self.moved:
            raise OSError("cut off")
        self.moved += 1
        os.replace(source, target)


@pytest.mark.parametrize("write", WRITERS)
def test_a_dataset_is_written_once_and_again_when_its_arguments_change(write, tmp_path, monkeypatch):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.hdr").write_text("of an earlier release")  # a dataset under the phantom marker of earlier releases
    (out / "phantom.json").write_text(json.dumps({"generator": "scripts.phantom", "complete": True,
                                                  "files": ["old.hdr"]}))
    with monkeypatch.context() as patch:
        patch.setattr(writing, "os", CutOffOs())
        with pytest.raises(OSError, match="cut off"):
            write(out, 0, tmp_path)
    cut = marker(out)
    assert cut["complete"] is False and len(files_and_times(out)) == 2  # the marker and the one file moved
    assert not {"old.hdr", "phantom.json", ".dataset-staging"} & {path.name for path in out.iterdir()}

    write(out, 0, tmp_path)
    first = marker(out)
    assert first["complete"] is True and first["ids"]
    written = files_and_times(out)
    assert set(written) == {*first["files"], writing.MARKER}

    write(out, 0, tmp_path)
    assert files_and_times(out) == written  # nothing written again

    write(out, 1, tmp_path)
    second = marker(out)
    assert second["complete"] is True and second["arguments"] != first["arguments"]
    assert set(files_and_times(out)) == {*second["files"], writing.MARKER}  # the first dataset's files are gone
    assert set(second["files"]) != set(first["files"])


@pytest.mark.parametrize("write", WRITERS)
def test_a_foreign_folder_is_refused(write, tmp_path):
    notes = tmp_path / "data" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("not a dataset")
    with pytest.raises(ValueError, match=f"{notes.parent} is not empty"):
        write(notes.parent, 0, tmp_path)
    assert [path.name for path in notes.parent.iterdir()] == ["notes.txt"]
    assert notes.read_text() == "not a dataset"
