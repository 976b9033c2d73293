"""Batch-norm statistics of a trained segmenter re-estimated on every training subject, labelled and unlabelled.

Issue 25, item 3: with ``gan#unlabelled_weight: 0`` the unlabelled patches never pass the segmenter in training mode,
so the batch-norm statistics it uses at inference come from the 2 labelled subjects alone (supervised training: the
same). This tool measures the alternative after the fact (AdaBN-style, Li et al. 2018): the running statistics are
reset and re-estimated as cumulative averages over one training-mode pass (no gradients) per head-cropped, normalised
volume of the run's training and unlabelled subjects, as inference sees them; the weights stay. Runs of
``tools.benchmark_comparison`` (variant, labelled subjects, seed) are then evaluated again with the new statistics
and their test Dice printed beside the recorded one. From the repository root:

    python -m tools.bn_recalibration run --runs "[[supervised_gap,2,0],[mri_gan_gap,2,1]]"
"""

from __future__ import annotations

import json
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser

from scripts.atomic import write_json
from scripts.evaluation import TISSUES
from tools import BUNDLE_ROOT
from tools.benchmark_comparison import WORK_DIR, bundle_arguments, evaluate, profile_settings


@torch.no_grad()
def recalibrate(network: torch.nn.Module, volumes) -> int:
    """Reset ``network``'s batch-norm running statistics and re-estimate them as the cumulative average over one
    training-mode pass per volume of ``volumes`` (C, *spatial tensors); return the number of volumes."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    network.train()
    count = 0
    for volume in volumes:
        network(volume[None])
        count += 1
    network.eval()
    return count


def run(runs, profile: str = "anatomy", work_dir: str = WORK_DIR, dataset_dir=None, out_name: str = "adabn"):
    """For each ``(variant, labelled, seed)`` of ``runs`` in ``<work_dir>/<profile>``: re-estimate the statistics of
    its ``models/model.pt`` into ``models_<out_name>/``, evaluate that into ``eval_<out_name>/``, and write the test
    Dice before and after to ``<out_name>.json`` in the run directory."""
    settings = profile_settings(profile, dataset_dir)
    rows = []
    for variant, n, seed in runs:
        run_dir = Path(work_dir).resolve() / profile / f"{variant}_{n}_seed{seed}"
        models = run_dir / f"models_{out_name}"
        configs, args = bundle_arguments(run_dir, variant, settings, n, seed, ckpt_dir=models)
        parser = ConfigParser()
        parser.read_config([str(BUNDLE_ROOT / c) for c in configs])
        parser["bundle_root"] = str(BUNDLE_ROOT)
        parser.update({k[2:]: json.loads(v) for k, v in zip(args[::2], args[1::2])})
        datalist = parser.get_parsed_content("data#datalist")
        transform = parser.get_parsed_content("validate#preprocessing")
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True))
        subjects = datalist["training"] + datalist.get("unlabeled", [])
        count = recalibrate(network, (transform(dict(s))["image"].as_tensor() for s in subjects))
        models.mkdir(exist_ok=True)
        torch.save(network.state_dict(), models / "model.pt")
        summary = evaluate(configs, args, run_dir / f"eval_{out_name}", run_dir / f"eval_{out_name}.log")
        before = json.loads((run_dir / "eval" / "summary.json").read_text())
        row = {"variant": variant, "num_labeled": n, "seed": seed, "volumes": count, **{
            name: {t: round(s["metrics"]["val_dice"][t]["mean"], 4) for t in TISSUES}
            for name, s in (("before", before), ("after", summary))}}  # fmt: skip
        print(json.dumps(row), flush=True)
        write_json(run_dir / f"{out_name}.json", row)
        rows.append(row)
    return rows


if __name__ == "__main__":
    fire.Fire({"run": run})
