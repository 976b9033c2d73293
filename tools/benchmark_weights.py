"""Test Dice of weights files on held-out phantom sets, through the user's inference command: infant and adult
brains, skull-stripped with the phantom's contrast, or domain-randomised (tissue intensities per modality in any
order, resolution, thick slices, bias, noise, gamma), skull-stripped or full heads in noisy air with their brain mask.

The sets are written with phantom seed 100 (the shipped weights were trained on seeds 1 and 2) by
``scripts.data.phantom.write_dataset`` in the iSEG layout, 8 labelled subjects each. Each subject goes through
``run inference`` (configs/inference.yaml) as a datalist entry; a full head comes with its brain mask (the phantom's
brain outline, what a skull-stripping tool gives), as ``--suffixes``/``mask`` users pass one. The written label maps
are scored against the labels with MONAI's ``DiceMetric``. Run from the repository root:

    python -m tools.benchmark_weights run --ckpt bundle/models/model.pt --modalities "[t1,t2]" --tag t1t2
    python -m tools.benchmark_weights run --ckpt bundle/models/model_t1.pt --modalities "[t1]" --tag t1
    python -m tools.benchmark_weights report

Results go to ``<work_dir>/results.json`` (one entry per tag and set, replaced when run again); ``report`` prints
them as a markdown table (0.7.0's: ``--results_file bundle/docs/benchmarks/weights_results.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import MapLabelValue

from scripts.atomic import write_json
from scripts.data.datasets import label_mapping
from scripts.data.phantom import write_dataset
from scripts.evaluation import TISSUES
from tools import BUNDLE_ROOT, subprocess_env

# grids at 1 mm: the iSEG one for infants; for adults one that gives a skull-stripped brain an adult volume (about
# 1.5 L: the brain fills about 80 % of the grid) and one that leaves room for the head (the brain fills 60-70 %)
INFANT, ADULT, ADULT_HEAD = [144, 192, 256], [176, 216, 160], [192, 240, 256]
RANDOM = {"randomize": True, "folded": True}
SETS = {  # write_dataset options of each held-out set (8 labelled subjects, phantom seed 100)
    "infant": {"shape": INFANT},
    "infant_random": {"shape": INFANT, "cohort": True, **RANDOM},
    "infant_head_random": {"shape": INFANT, "cohort": True, "head": True, **RANDOM},
    "adult": {"shape": ADULT, "preset": "adult"},
    "adult_random": {"shape": ADULT, "preset": "adult", **RANDOM},
    "adult_head_random": {"shape": ADULT_HEAD, "preset": "adult", "head": True, **RANDOM},
}
WORK_DIR = str(BUNDLE_ROOT / "runs" / "benchmark_weights")


def _write_set(data: Path, name: str) -> list[dict]:
    """Write set ``name`` into ``data`` (idempotent); its datalist, with brain masks for full heads."""
    subjects = write_dataset(str(data), layout="iseg", num_labeled=8, num_unlabeled=0, seed=100, **SETS[name])
    entries = []
    for subject in subjects:
        entry = {"subject": subject, "label": str(data / f"{subject}-label.hdr"),
                 **{m: str(data / f"{subject}-{m.upper()}.hdr") for m in ("t1", "t2")}}  # fmt: skip
        if SETS[name].get("head"):
            mask = data.parent / f"{name}_masks" / f"{subject}-mask.nii.gz"
            if not mask.is_file():
                label = nib.load(entry["label"])
                mask.parent.mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.uint8), label.affine), str(mask))
            entry["mask"] = str(mask)
        entries.append(entry)
    return entries


def _dice(seg_path: str, label_path: str) -> list[float]:
    """Dice of CSF, GM and WM between a written label map (0..3) and an iSEG label (0/10/150/250)."""
    seg = torch.as_tensor(np.asarray(nib.load(seg_path).dataobj).astype(np.int64))
    label = MapLabelValue(*label_mapping("iseg"), dtype=np.int64)(np.asarray(nib.load(label_path).dataobj))
    label = torch.as_tensor(label)
    return compute_dice(one_hot(seg[None, None], 4), one_hot(label[None, None], 4), include_background=False)[0].tolist()


def run(ckpt: str = str(BUNDLE_ROOT / "models" / "model.pt"), modalities=("t1", "t2"), tag: str = "t1t2", sets=None,
        work_dir: str = WORK_DIR) -> None:
    """Score ``ckpt`` (a model of ``modalities``) on ``sets`` (default: all of ``SETS``) under ``tag``."""
    work = Path(work_dir).resolve()
    results_path = work / "results.json"
    for name in sets or list(SETS):
        entries = _write_set(work / "data" / name, name)
        datalist = [{k: v for k, v in e.items() if k in (*modalities, "subject", "mask")} for e in entries]
        out = work / tag / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
            "--datalist", repr(datalist), "--modalities", json.dumps(list(modalities)),
            "--ckpt_path", str(Path(ckpt).resolve()), "--output_dir", str(out / "seg"), "--overwrite", "true",
        ]  # fmt: skip
        with open(out / "inference.log", "w") as log:
            proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise RuntimeError(f"inference of {ckpt} on {name} failed (exit {proc.returncode}); see {out / 'inference.log'}")
        dice = np.array([_dice(str(out / "seg" / f"{e['subject']}_seg.nii.gz"), e["label"]) for e in entries])
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # other runs' too
        results.setdefault(tag, {})[name] = {
            "ckpt": str(ckpt), "modalities": list(modalities), "subjects": len(entries),
            "dice": {t: round(float(dice[:, i].mean()), 4) for i, t in enumerate(TISSUES)},
            "dice_std": {t: round(float(dice[:, i].std()), 4) for i, t in enumerate(TISSUES)},
        }  # fmt: skip
        write_json(results_path, results)
        print(tag, name, results[tag][name]["dice"], flush=True)


def report(results_file: str = f"{WORK_DIR}/results.json") -> str:
    """The results as a markdown table: test Dice CSF / GM / WM (mean) per weights tag and set."""
    results = json.loads(Path(results_file).read_text())
    lines = ["| weights | modalities | " + " | ".join(SETS) + " |", "|---|---|" + "---|" * len(SETS)]
    for tag, by_set in results.items():
        cells = []
        for name in SETS:
            dice = by_set.get(name, {}).get("dice")
            cells.append(" / ".join(f"{dice[t]:.3f}" for t in TISSUES) + f" ({np.mean(list(dice.values())):.3f})"
                         if dice else "")  # fmt: skip
        modalities = next(iter(by_set.values()))["modalities"]
        lines.append(f"| {tag} | {'+'.join(modalities)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
