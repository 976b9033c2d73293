"""How well the unlabelled subjects' k-means tissue classes (``scripts.transforms.tissue_clusters``, the source
statistics of the default MRI-GAN) match the labels, beside alternatives measured for isointense subjects.

Every labelled subject of ``dataset_dir`` goes through train.yaml's deterministic preprocessing; each method's
tissue map is scored against the label (Dice per tissue). Methods:

- ``kmeans``: the bundle's ``tissue_clusters`` (3 clusters over the brain, named by anatomy).
- ``pure``: k-means fitted on the brain's low-gradient ("pure") voxels only, below the ``quantile`` of the gradient
  magnitude, then every brain voxel to its nearest centre: meant to keep partial-volume voxels out of the fit.
- ``four``: 4 clusters; the one nearest the CSF cluster is taken for partial volume and its voxels go to the nearer
  of the two tissue clusters.
- ``gmm``, ``mrf_<beta>``: ``kmeans`` refined by ``refine_clusters`` (``gan#clusters_refine``): classification EM
  with a diagonal Gaussian per tissue and, for ``mrf``, a Potts prior of weight ``beta`` per 6-neighbour alike.
- ``depth_<t>``: ``kmeans`` with GM and WM re-split by their depth below CSF, GM within ``t`` voxels
  (``split_by_depth``, ``gan#clusters_depth``).

``pure`` and ``four`` lost to ``kmeans`` on the phantom cohort, ``mrf`` to ``gmm`` on the real-anatomy one
(docs/experiments.md). Run from the repository root:

    python -m tools.benchmark_clusters run --dataset_dir bundle/data/cohort --out bundle/docs/benchmarks/clusters_cohort.json
    python -m tools.benchmark_clusters run --dataset_dir bundle/data/anatomy_cohort --dataset_format anatomy \
        --only "[kmeans,gmm,mrf_0.5,mrf_1.0,mrf_2.0]" --out bundle/docs/benchmarks/clusters_anatomy_gmm.json
    python -m tools.benchmark_clusters run --dataset_dir bundle/data/anatomy_cohort --dataset_format anatomy \
        --only "[kmeans,depth_2.5,depth_3.0,depth_3.5,depth_4.0,depth_5.0]" \
        --out bundle/docs/benchmarks/clusters_anatomy_depth.json
"""

from __future__ import annotations

import fire
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from scripts.atomic import write_json
from scripts.transforms import csf_cluster, kmeans, name_clusters, refine_clusters, split_by_depth, tissue_clusters
from tools import BUNDLE_ROOT
from tools.benchmark_weights import tissue_dice


def pure_clusters(image: torch.Tensor, quantile: float = 0.5, background: float = -1.0) -> torch.Tensor:
    brain = (image > background + 1e-3).any(0)
    grads = torch.stack([g for channel in image for g in torch.gradient(channel)]).pow(2).sum(0).sqrt()
    level = torch.quantile(grads[brain][:: max(1, int(brain.sum()) // 100000)], quantile)
    fit = image[:, brain & (grads <= level)].T
    voxels = image[:, brain].T
    found = torch.full(brain.shape, -1, dtype=torch.long)
    found[brain] = torch.cdist(voxels, kmeans(fit[:: max(1, len(fit) // 200000)], 3)).argmin(1)
    csf = csf_cluster(found, brain, 3)
    return name_clusters(found, csf, [j for j in range(3) if j != csf])


def four_clusters(image: torch.Tensor, background: float = -1.0) -> torch.Tensor:
    brain = (image > background + 1e-3).any(0)
    voxels = image[:, brain].T
    centres = kmeans(voxels[:: max(1, len(voxels) // 200000)], 4)
    nearest = torch.cdist(voxels, centres).argmin(1)
    found = torch.full(brain.shape, -1, dtype=torch.long)
    found[brain] = nearest
    csf = csf_cluster(found, brain, 4)
    others = [j for j in range(4) if j != csf]
    partial = min(others, key=lambda j: float((centres[j] - centres[csf]).norm()))
    rest = [j for j in others if j != partial]
    nearer = torch.tensor(rest)[torch.cdist(voxels, centres[rest]).argmin(1)]
    found[brain] = torch.where(nearest == partial, nearer, nearest)
    return name_clusters(found, csf, rest)


def scores(found: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Dice CSF, GM, WM of a tissue map over the voxels whose label is not ignored (``tissue_dice``), 3 decimals."""
    return [round(float(d), 3) for d in tissue_dice(np.asarray(found), np.asarray(label))]


def _methods(quantile: float = 0.5, betas: tuple = (0.5, 1.0, 2.0),
             depths: tuple = (2.5, 3.0, 3.5, 4.0, 5.0)) -> dict:  # fmt: skip
    """Each method's tissue map of a normalised image (C, D, H, W) and its brain mask (or None)."""
    return {"kmeans": lambda im, mask: tissue_clusters(im, mask=mask),
            "pure": lambda im, mask: pure_clusters(im, quantile), "four": lambda im, mask: four_clusters(im),
            "gmm": lambda im, mask: refine_clusters(im, tissue_clusters(im, mask=mask)),
            **{f"mrf_{b}": lambda im, mask, b=b: refine_clusters(im, tissue_clusters(im, mask=mask), b) for b in betas},
            **{f"depth_{t}": lambda im, mask, t=t: split_by_depth(im, tissue_clusters(im, mask=mask), t) for t in depths}}


def _subjects(dataset_dir: str, dataset_format: str):
    """(name, normalised image, label (D, H, W), brain mask or None) of every labelled subject, as train.yaml's
    deterministic preprocessing gives them."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLE_ROOT), "dataset_format": dataset_format, "dataset_dir": dataset_dir,
                   "num_labeled": -1, "num_val": 0, "num_test": 0, "data#split_file": None,
                   "output_dir": str(BUNDLE_ROOT / "runs")})  # fmt: skip
    prep = Compose(parser.get_parsed_content("data#preprocessing"))
    for entry in parser.get_parsed_content("data#datalist")["training"]:
        data = prep(dict(entry))
        name = str(entry["label"]).rsplit("/", 1)[-1].split("-label")[0].split("_label")[0]
        # the brain mask where the dataset has one, as TissueClustersd (not the alternatives)
        yield name, torch.as_tensor(data["image"]).float(), torch.as_tensor(data["label"])[0], data.get("mask")


def run(dataset_dir: str = str(BUNDLE_ROOT / "data" / "cohort"), dataset_format: str = "iseg",
        out: str = str(BUNDLE_ROOT / "runs" / "clusters.json"), quantile: float = 0.5,
        betas: tuple = (0.5, 1.0, 2.0), only: list | None = None) -> None:
    """Score every method (or those in ``only``) on every labelled subject; write per-subject and mean Dice (CSF, GM,
    WM) to ``out``."""
    torch.set_num_threads(1)
    methods = {m: f for m, f in _methods(quantile, betas).items() if only is None or m in only}
    subjects = []
    for name, image, label, mask in _subjects(dataset_dir, dataset_format):
        row = {"subject": name, **{m: scores(f(image, mask)[0], label) for m, f in methods.items()}}
        print(row, flush=True)
        subjects.append(row)
    mean = {m: np.mean([s[m] for s in subjects], axis=0).round(3).tolist() for m in methods}
    result = {"dataset_dir": dataset_dir, "quantile": quantile, "mean": mean, "subjects": subjects}
    write_json(out, result)
    print({m: (v, round(float(np.mean(v)), 3)) for m, v in mean.items()})


def figure(subject: str, out: str, dataset_dir: str = str(BUNDLE_ROOT / "data" / "anatomy_cohort"),
           dataset_format: str = "anatomy", methods: tuple = ("kmeans", "gmm"), dpi: int = 80) -> None:
    """One coronal slice of ``subject``: every channel, the truth and each method's tissue map with its Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = next((s for s in _subjects(dataset_dir, dataset_format) if s[0] == subject), None)
    if found is None:
        raise SystemExit(f"benchmark_clusters figure: no labelled subject {subject} in {dataset_dir}")
    _, image, label, mask = found
    every = _methods()
    maps = {m: every[m](image, mask)[0] for m in methods}
    y = image.shape[2] // 2
    panels = [(f"channel {c}", image[c, :, y].T, "gray") for c in range(len(image))]
    panels += [("truth", label[:, y].T.clamp(max=3), "viridis")]
    panels += [(f"{m}: " + " / ".join(f"{d:.2f}" for d in scores(t, label)), t[:, y].T, "viridis") for m, t in maps.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3))
    for ax, (title, view, cmap) in zip(axes, panels):
        ax.imshow(view.numpy(), cmap=cmap, origin="lower", vmin=None if cmap == "gray" else 0, vmax=None if cmap == "gray" else 3)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{subject}: tissue classes without labels (CSF / GM / WM Dice)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    print(out)


if __name__ == "__main__":
    fire.Fire({"run": run, "figure": figure})
