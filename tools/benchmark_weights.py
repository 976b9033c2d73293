"""Test Dice of weights files on the bundle's real-anatomy test, through the user's inference command, beside a
3-class Gaussian mixture on the same scans.

The test: the 3 held-out real label maps (``scripts.data.anatomy.TEST_MAPS``, never trained on) rendered with fixed
realistic contrasts (``SCENARIOS``): adult T1 and T1+T2, an isointense infant (about 6 months), whole heads without a
mask, and harder variants (strong bias field, a whole head in noisy air, 4 mm slices). Each set goes through
``run inference`` (configs/inference.yaml) as a datalist, without brain masks; the written label maps are scored on
CSF, GM and WM, leaving out the voxels the targets ignore (brain stem, ventral DC, vessels). Two classical baselines
run inside the true brain mask, their 3 classes named by the permutation with the best mean Dice (upper bounds for
intensity clustering): a Gaussian mixture (scikit-learn, full covariance over the channels) and ANTs Atropos
(antspyx: k-means initialisation, Markov random field 0.1 over the 26 neighbours, all channels). Run from the
repository root:

    python -m tools.benchmark_weights run --ckpt bundle/models/model_t1.pt --modalities "[t1]" --tag t1
    python -m tools.benchmark_weights run --ckpt bundle/models/model.pt --modalities "[t1,t2]" --tag t1t2
    python -m tools.benchmark_weights gmm
    python -m tools.benchmark_weights atropos
    python -m tools.benchmark_weights report

Results go to ``<work_dir>/results.json`` (one entry per tag and set, replaced when run again); ``report`` prints
them as a markdown table (the card's: ``--results_file bundle/docs/benchmarks/anatomy_results.json``).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from scripts.atomic import write_json
from scripts.data.anatomy import ANATOMY_DIR, TEST_MAPS, subject_entry, write_jobs
from scripts.data.datasets import IGNORE_LABEL
from scripts.evaluation import TISSUES
from tools import BUNDLE_ROOT, subprocess_env

SETS = {  # set name: (scenario of scripts.data.anatomy, modalities)
    "t1": ("adult", ("t1",)),
    "t1_whole_head": ("whole_head", ("t1",)),
    "t1_strong_bias": ("strong_bias", ("t1",)),
    "t1_noisy_head": ("noisy_head", ("t1",)),
    "t1_thick_slices": ("thick_slices", ("t1",)),
    "t1t2": ("adult", ("t1", "t2")),
    "t1t2_infant_isointense": ("infant_isointense", ("t1", "t2")),
    "t1t2_strong_bias": ("strong_bias", ("t1", "t2")),
    "t1t2_noisy_head": ("noisy_head", ("t1", "t2")),
    "t1t2_thick_slices": ("thick_slices", ("t1", "t2")),
}
SEED = 10_000  # render seeds 10_000 + map index: none of the training or validation renders
WORK_DIR = str(BUNDLE_ROOT / "runs" / "benchmark_weights")


def write_scenario(data: Path, scenario: str, anatomy_dir=ANATOMY_DIR) -> list[dict]:
    """Render the test maps of ``anatomy_dir`` in ``scenario`` into ``data`` (each once: a subject whose mask is there
    is kept); their datalist entries (both modalities, absolute paths)."""
    jobs = [("testing", f"m{index:02d}_{scenario}", index, scenario, SEED + index) for index in TEST_MAPS]
    entries = [subject_entry(subject) for _, subject, *_ in jobs]
    missing = [job for job, entry in zip(jobs, entries) if not (data / entry["mask"]).is_file()]
    if missing:
        data.mkdir(parents=True, exist_ok=True)
        write_jobs(missing, data, anatomy_dir=str(anatomy_dir))
    return [{key: name if key == "subject" else str(data / name) for key, name in entry.items()} for entry in entries]


def tissue_dice(pred: np.ndarray, label: np.ndarray) -> list[float]:
    """Dice of CSF, GM and WM between class maps ``pred`` and ``label`` (0..3), over the voxels ``label`` does not
    ignore (``IGNORE_LABEL``); 1.0 for a tissue absent from both."""
    kept = label != IGNORE_LABEL
    pred, label = pred[kept], label[kept]
    dice = []
    for tissue in (1, 2, 3):
        p, t = pred == tissue, label == tissue
        total = int(p.sum() + t.sum())
        dice.append(1.0 if total == 0 else 2.0 * int((p & t).sum()) / total)
    return dice


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _store(work: Path, tag: str, name: str, record: dict) -> None:
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # other runs' too
    results.setdefault(tag, {})[name] = record
    write_json(results_path, results)
    print(tag, name, record["dice"], flush=True)


def _record(dice: np.ndarray, **extra) -> dict:
    return {**extra, "subjects": len(dice),
            "dice": {t: round(float(dice[:, i].mean()), 4) for i, t in enumerate(TISSUES)},
            "dice_std": {t: round(float(dice[:, i].std()), 4) for i, t in enumerate(TISSUES)}}


def run(ckpt: str = str(BUNDLE_ROOT / "models" / "model.pt"), modalities=("t1", "t2"), tag: str = "t1t2", sets=None,
        work_dir: str = WORK_DIR) -> None:
    """Score ``ckpt`` (a model of ``modalities``) on ``sets`` (default: every set of ``SETS`` with those modalities)."""
    work = Path(work_dir).resolve()
    modalities = tuple(modalities)
    for name in sets or [n for n, (_, m) in SETS.items() if m == modalities]:
        scenario = SETS[name][0]
        entries = write_scenario(work / "data" / scenario, scenario)
        datalist = [{k: e[k] for k in ("subject", *modalities)} for e in entries]
        out = work / tag / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
            "--datalist", repr(datalist), "--modalities", json.dumps(list(modalities)),
            "--ckpt_path", str(Path(ckpt).resolve()), "--output_dir", str(out / "seg"), "--overwrite", "true",
        ]  # fmt: skip
        start = time.perf_counter()
        with open(out / "inference.log", "w") as log:
            proc = subprocess.run(cmd, cwd=BUNDLE_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"inference of {ckpt} on {name} failed (exit {proc.returncode}); see {out / 'inference.log'}")
        dice = np.array([tissue_dice(_load(str(out / "seg" / f"{e['subject']}_seg.nii.gz")), _load(e["label"]))
                         for e in entries])
        _store(work, tag, name, _record(dice, ckpt=str(ckpt), modalities=list(modalities),
                                        seconds_per_subject=round(seconds / len(entries), 1)))


def best_naming(classes: np.ndarray, mask: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Class map (0 outside ``mask``) naming the 3 unsupervised ``classes`` (0, 1, 2 per voxel of ``mask``) CSF, GM
    and WM by the permutation with the best mean Dice against ``label`` (class map 0..3)."""
    best, best_mean = None, -1.0
    for names in itertools.permutations((1, 2, 3)):
        pred = np.zeros(mask.shape, dtype=np.uint8)
        pred[mask > 0] = np.asarray(names, dtype=np.uint8)[classes]
        mean = float(np.mean(tissue_dice(pred, label)))
        if mean > best_mean:
            best, best_mean = pred, mean
    return best


def gmm_segment(image: np.ndarray, mask: np.ndarray, label: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 3-class Gaussian mixture of ``image`` (C, ...) inside ``mask``, named by ``best_naming``."""
    from sklearn.mixture import GaussianMixture

    voxels = image[:, mask > 0].T.astype(np.float64)
    rng = np.random.default_rng(seed)
    sample = voxels[rng.choice(len(voxels), min(len(voxels), 200_000), replace=False)]
    components = GaussianMixture(3, covariance_type="full", random_state=seed).fit(sample).predict(voxels)
    return best_naming(components, mask, label)


def atropos_segment(image: np.ndarray, mask: np.ndarray, label: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """ANTs Atropos (antspyx) of ``image`` (C, ...) inside ``mask``: 3 classes from a k-means initialisation, a Markov
    random field of weight 0.1 over the 26 neighbours, 5 iterations; named by ``best_naming``."""
    import ants

    channels = [ants.from_numpy(np.ascontiguousarray(c, dtype=np.float32), spacing=tuple(spacing)) for c in image]
    brain = ants.from_numpy((mask > 0).astype(np.float32), spacing=tuple(spacing))
    result = ants.atropos(a=channels if len(channels) > 1 else channels[0], x=brain, i="kmeans[3]",
                          m="[0.1,1x1x1]", c="[5,0]")  # fmt: skip
    classes = result["segmentation"].numpy()[mask > 0].astype(np.int64) - 1  # Atropos labels 1..3 inside the mask
    return best_naming(classes, mask, label)


def _baseline(segment, sets, work_dir: str, tag: str) -> None:
    """Score ``segment(image, mask, label, spacing)`` on ``sets`` (default: all) under ``tag``."""
    work = Path(work_dir).resolve()
    for name in sets or list(SETS):
        scenario, modalities = SETS[name]
        entries = write_scenario(work / "data" / scenario, scenario)
        dice = []
        for e in entries:
            image = np.stack([_load(e[m]) for m in modalities])
            label = _load(e["label"])
            spacing = tuple(float(z) for z in nib.load(e[modalities[0]]).header.get_zooms()[:3])
            dice.append(tissue_dice(segment(image, _load(e["mask"]), label, spacing), label))
        _store(work, tag, name, _record(np.array(dice), modalities=list(modalities)))


def gmm(sets=None, work_dir: str = WORK_DIR, tag: str = "gmm") -> None:
    """Score the 3-class Gaussian mixture (inside the true brain mask, best naming) on ``sets`` (default: all)."""
    _baseline(lambda image, mask, label, spacing: gmm_segment(image, mask, label), sets, work_dir, tag)


def atropos(sets=None, work_dir: str = WORK_DIR, tag: str = "atropos") -> None:
    """Score ANTs Atropos (inside the true brain mask, best naming; needs antspyx) on ``sets`` (default: all)."""
    _baseline(atropos_segment, sets, work_dir, tag)


def report(results_file: str = f"{WORK_DIR}/results.json") -> str:
    """The results as a markdown table: Dice CSF / GM / WM (mean) per set (rows) and weights tag (columns)."""
    results = json.loads(Path(results_file).read_text())
    tags = list(results)
    lines = ["| set | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for name in SETS:
        cells = []
        for tag in tags:
            dice = results[tag].get(name, {}).get("dice")
            cells.append(" / ".join(f"{dice[t]:.3f}" for t in TISSUES) + f" ({np.mean(list(dice.values())):.3f})"
                         if dice else "")  # fmt: skip
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire({"run": run, "gmm": gmm, "atropos": atropos, "report": report})
