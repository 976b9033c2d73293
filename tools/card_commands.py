"""Check (not a test): run every command of the model card and the README in a checkout, as a user would.

Run from the repository root of a fresh clone::

    python -m tools.card_commands run --out card_commands.json

Every ``bash`` block of ``bundle/docs/README.md`` (the model card) and ``README.md`` is read; continuation lines are
joined, comments dropped, and each command runs from ``bundle/`` in the order written, so later commands see what
earlier ones wrote (evaluation reads the training run's split, export reads ``models/model.pt``). What a user would
replace is replaced: ``/data/...`` paths by phantom subjects (iSEG layout; train.yaml's ``data#phantom``, written into
``data/phantom`` as ``--dataset_format phantom`` does) and NIfTI copies of them (folder layout, with brain masks),
``nproc_per_node=N`` by 2. Training commands get ``--iterations 4
--schedule#epoch_length 2 --schedule#val_interval 1`` so that each finishes in about a minute on 2 cores, and a
``--resume true`` command ``--iterations 6`` (the run it continues has finished its 4, and a finished run is not
resumed); nothing else is changed. Set-up lines (``python3 -m venv``, ``cd``) and the benchmarks of ``tools/`` (hours) are skipped: CI
and the README's main job run the former, the docs give the latter's results. The result is one line per command
with its exit status and time, and the last lines of its output where it failed. Run it in a fresh clone: the
commands write where a user's would (``runs/``, ``models/``, ``eval/``, ``synthetic/`` of the bundle), and before
the second document these are put back as committed (the phantom data in ``data/`` is kept), as for a user who
reads only that document.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import fire

from tools import BUNDLE_ROOT, REPO_ROOT, subprocess_env

DOCS = ("bundle/docs/README.md", "README.md")
SHORT_TRAINING = ["--iterations", "4", "--schedule#epoch_length", "2", "--schedule#val_interval", "1"]
# --resume true continues the run before it, which has finished its 4 iterations: 2 more, as an interrupted run goes on
RESUMED_TRAINING = ["--iterations", "6", "--schedule#epoch_length", "2", "--schedule#val_interval", "1"]
SKIPPED_PREFIXES = ("python3 -m venv", "cd ", "python -m tools.")
OUTPUTS = ("runs", "eval", "synthetic")  # the bundle's default output folders; models/ is restored from git


def bash_commands(markdown: str) -> list[str]:
    """The commands of a markdown text's ``bash`` blocks: continuation lines joined, comment lines and trailing
    comments (`` # ...``, a ``#`` after a space) dropped; ``gan#fake_weight`` stays whole."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = re.sub(r"\s*\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"(^|\s)#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def _write_inputs(work: Path) -> dict[str, str]:
    """Inputs for the documented placeholders, from the phantom dataset of train.yaml (written once, as
    ``--dataset_format phantom`` writes it; the main job's default data are the anatomy cohort, not phantoms)."""
    import nibabel as nib
    import numpy as np
    import yaml

    from scripts.data.phantom import write_dataset

    phantom = BUNDLE_ROOT / "data" / "phantom"
    settings = yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())["data"]["phantom"]
    write_dataset(phantom, layout="iseg", **settings)
    iseg = work / "iseg_scans"
    scans = work / "new_scans"
    iseg.mkdir(parents=True, exist_ok=True)
    scans.mkdir(parents=True, exist_ok=True)
    for sid in (1, 2):  # labelled subjects: their labels give the brain masks
        for name in ("T1", "T2"):
            for ext in ("hdr", "img"):
                target = iseg / f"subject-{sid}-{name}.{ext}"
                if not target.exists():
                    target.symlink_to(phantom / f"subject-{sid}-{name}.{ext}")
            image = nib.load(str(phantom / f"subject-{sid}-{name}.hdr"))
            nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine), str(scans / f"s{sid}_{name}.nii.gz"))
        label = nib.load(str(phantom / f"subject-{sid}-label.hdr"))
        mask = (np.asanyarray(label.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, label.affine), str(scans / f"s{sid}_brainmask.nii.gz"))
    return {
        "/data/iSeg-2017-Training": str(phantom),
        "/data/iSeg-2017-Testing": str(iseg),
        "/data/new_scans": str(scans),
        "/data/scans": str(scans),
        "/data/segmentations": str(work / "segmentations"),
        "/data/seg": str(work / "seg"),
        "/data/": str(phantom) + "/",
    }


def prepare(command: str, replacements: dict[str, str]) -> list[str]:
    """The argument list a user's shell would run, with the placeholders replaced and training shortened."""
    if replacements:  # one pass, longest placeholder first: a replaced path is not replaced again
        pattern = "|".join(re.escape(p) for p in sorted(replacements, key=len, reverse=True))
        command = re.sub(pattern, lambda match: replacements[match.group(0)], command)
    argv = shlex.split(command.replace("nproc_per_node=N", "nproc_per_node=2"))
    other_run_ids = {"evaluating", "inference", "synthesize"}
    is_training = "run" in argv and any("train.yaml" in a for a in argv) and not other_run_ids & set(argv)
    if not is_training:
        return argv
    return argv + (RESUMED_TRAINING if "--resume" in argv else SHORT_TRAINING)


def _restore_outputs() -> None:
    """Remove what earlier commands wrote into the bundle (not ``data/``) and restore ``models/`` as committed."""
    for name in OUTPUTS:
        shutil.rmtree(BUNDLE_ROOT / name, ignore_errors=True)
    subprocess.run(["git", "checkout", "--", "bundle/models"], cwd=REPO_ROOT, check=True)
    subprocess.run(["git", "clean", "-fdqx", "bundle/models"], cwd=REPO_ROOT, check=True)


def run(out: str = "card_commands.json", work_dir: str = "card_inputs", timeout: int = 900) -> None:
    """Run the documented commands in order from ``bundle/``; write ``out`` (JSON) and print one line each."""
    work = Path(work_dir).resolve()
    replacements: dict[str, str] | None = None
    results = []
    for index, doc in enumerate(DOCS):
        if index:
            _restore_outputs()
        for command in bash_commands((REPO_ROOT / doc).read_text()):
            if command.startswith(SKIPPED_PREFIXES):
                continue
            if replacements is None and "/data/" in command:
                replacements = _write_inputs(work)
            argv = prepare(command, replacements or {})
            start = time.perf_counter()
            try:
                proc = subprocess.run(argv, cwd=BUNDLE_ROOT, env=subprocess_env(), capture_output=True, text=True,
                                      timeout=timeout)
                rc, output = proc.returncode, proc.stdout + proc.stderr
            except FileNotFoundError as error:  # the program itself, e.g. torchrun outside the environment
                rc, output = 127, str(error)
            result = {"doc": doc, "command": command, "rc": rc, "seconds": round(time.perf_counter() - start, 1)}
            if rc:
                result["output_tail"] = output[-2000:]
            results.append(result)
            print(f"rc {result['rc']:>3}  {result['seconds']:>6.1f} s  {doc}: {command[:110]}", flush=True)
            Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    fire.Fire({"run": run})
