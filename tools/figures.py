"""PNG figures of the model card, drawn from the bundle's own networks, outputs and logs. Run from the repository
root:

    python -m tools.figures architecture                 # MRI-GAN, from bundle/configs/train.yaml's networks
    B=bundle/data/phantom; python -m tools.figures overlay --images "['$B/subject-9-T1.hdr','$B/subject-9-T2.hdr']" \\
        --names "['T1','T2']" --segmentation bundle/eval/figures/subject-9_seg.nii.gz \\
        --label $B/subject-9-label.hdr --label_format iseg   # the segmentation: from configs/inference.yaml
    python -m tools.figures curves                       # TensorBoard event files of a training run (bundle/runs)
    python -m tools.figures curves --tracking_uri sqlite:///$PWD/bundle/runs/mlruns.db    # or an MLflow store

Every figure is written atomically, by default into ``bundle/docs/figures/``; matplotlib comes with the ``benchmark``
extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.ticker import MaxNLocator
from monai.bundle import ConfigParser
from torch import nn

from scripts.atomic import atomic_path
from scripts.data.datasets import IGNORE_LABEL, label_mapping
from scripts.evaluation import TISSUES
from scripts.networks import MRIGANGenerator
from tools import BUNDLE_ROOT
from tools.benchmark_weights import tissue_dice

FIGURES_DIR = BUNDLE_ROOT / "docs" / "figures"
TISSUE_COLOURS = ("#3b8bff", "#2ca02c", "#ffd92f")  # CSF, GM, WM
CELL_INCHES = 3.0  # overlay: one slice panel
LEGEND_INCHES = 0.5  # overlay: the legend band under the panels


def _save(fig: Figure, out, dpi: int) -> str:
    """Write ``fig`` as a PNG to ``out`` atomically; return the path."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return str(out)


# ---- architecture ---------------------------------------------------------------------------------------------------


def _out_channels(module: nn.Module) -> int:
    """Output channels (or features) of the last convolution or linear layer of ``module``."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear))]
    return layers[-1].out_channels if hasattr(layers[-1], "out_channels") else layers[-1].out_features


def _millions(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M parameters"


def _networks(config_file):
    """The parsed training config, and the segmenter and MRI-GAN generator it defines."""
    parser = ConfigParser(ConfigParser.load_config_files(config_file))
    segmenter = parser.get_parsed_content("network_def")
    generator = parser.get_parsed_content("generator_def")
    if not isinstance(generator, MRIGANGenerator):
        raise ValueError(f"{config_file}: generator_def is {type(generator).__name__}, not MRIGANGenerator")
    return parser, segmenter, generator


class _Canvas:
    """Boxes and arrows on one axis in data coordinates."""

    def __init__(self, ax):
        self.ax = ax

    def box(self, x, y, w, h, text, colour):
        """A rounded box centred at (x, y); returns ``(x, y, w / 2, h / 2)`` for arrows."""
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.25", fc=colour, ec="#333333", lw=0.8)
        self.ax.add_patch(patch)
        self.ax.text(x, y, text, ha="center", va="center", fontsize=7.5)
        return (x, y, w / 2, h / 2)

    def arrow(self, a, b, text="", colour="#333333", dashed=False, rad=0.0, side=(0, 0)):
        """Arrow from box ``a``'s edge to box ``b``'s; ``side`` (1, 0) joins the vertical edges, (0, 1) the horizontal
        ones, (0, 0) picks by the boxes' relative position."""
        (ax_, ay, aw, ah), (bx, by, bw, bh) = a, b
        dx, dy = bx - ax_, by - ay
        horizontal = abs(dx) / (aw + bw) >= abs(dy) / (ah + bh) if side == (0, 0) else side[0] != 0
        if horizontal:
            start, end = (ax_ + np.sign(dx) * (aw + 0.3), ay), (bx - np.sign(dx) * (bw + 0.3), by)
        else:
            start, end = (ax_, ay + np.sign(dy) * (ah + 0.3)), (bx, by - np.sign(dy) * (bh + 0.3))
        style = {"color": colour, "lw": 1.0, "linestyle": "--" if dashed else "-", "connectionstyle": f"arc3,rad={rad}"}
        self.ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, **style))
        if text:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            self.ax.text(mx, my + 0.9, text, ha="center", va="bottom", fontsize=6.5, color=colour)


_GREY, _BLUE, _GREEN, _ORANGE, _VIOLET, _RED = "#eeeeee", "#cfe2ff", "#d4f4dd", "#ffe0b2", "#e8dcff", "#ffd6d6"


def _draw_generator(c: _Canvas, generator: nn.Module, modalities: Sequence[str]):
    """MRI encoder (top row), tissue encoder (bottom row), GT-Layer decoder (middle); returns the fake-patch box."""
    n_mod = _out_channels(generator.final)
    n_classes = generator.tissue_encoder[0].conv.in_channels
    src = c.box(8, 56, 12, 7, f"source MRI x_src\n{n_mod} channels ({', '.join(modalities)})\nunlabelled patch", _GREY)
    tissue = c.box(8, 12, 12, 7, f"tissue map y, one-hot\n{n_classes} classes\nof a labelled patch", _GREY)
    mri_enc, tis_enc = [src], [tissue]
    for i, (m_block, t_block) in enumerate(zip(generator.mri_encoder, generator.tissue_encoder)):
        scale = f"1/{2**i}" if i else "full res."
        mri_enc.append(c.box(23 + 10 * i, 56, 7, 6, f"conv {_out_channels(m_block)}\n{scale}", _BLUE))
        tis_enc.append(c.box(23 + 10 * i, 12, 7, 6, f"conv {_out_channels(t_block)}\n{scale}", _GREEN))
        c.arrow(mri_enc[-2], mri_enc[-1])
        c.arrow(tis_enc[-2], tis_enc[-1])
    mri_enc, tis_enc = mri_enc[1:], tis_enc[1:]
    code_text = f"pool + Linear\ncode c ({generator.code_fc.out_features}) + noise z ({generator.noise_dim})"
    code = c.box(60, 12, 15, 6, code_text, _GREEN)
    c.arrow(tis_enc[-1], code)
    gt = _out_channels(generator.gt_bottleneck.r_sigma)
    prev = c.box(60, 36, 14, 7, f"GT-Layer {gt}\nR_s(c) (h - mu) / sigma\n+ R_mu(c)", _ORANGE)
    c.arrow(mri_enc[-1], prev, "h", side=(0, 1))
    c.arrow(code, prev, colour="#a05a00", side=(0, 1))
    boundary = c.box(23, 30, 11, 6, f"boundary net\n{_out_channels(generator.boundary_net)}-channel map", _RED)
    c.arrow(tis_enc[0], boundary, side=(0, 1))
    for i, (up, gt_layer) in enumerate(zip(generator.ups, generator.gts)):
        joins = " + boundary" if i == len(generator.ups) - 1 else ""
        text = f"up {_out_channels(up)}\n+ tissue skip{joins}\nGT-Layer {_out_channels(gt_layer.r_sigma)}"
        block = c.box(77 + 17 * i, 36, 15, 8, text, _VIOLET)
        c.arrow(prev, block)
        c.arrow(tis_enc[len(generator.ups) - 1 - i], block, colour="#2c7a3a", dashed=True, side=(0, 1))
        c.arrow(code, block, colour="#a05a00", dashed=True, side=(0, 1))
        prev = block
    c.arrow(boundary, prev, colour="#b03030", dashed=True, rad=0.35, side=(1, 0))
    c.ax.text(4, 2, "green dashed: tissue skips; brown: the tissue code c into every GT-Layer; red: the boundary map "
              "(trained against the morphological gradient of y)", fontsize=7)  # fmt: skip
    fake = c.box(104, 20, 11, 6, f"1x1 conv, tanh\nfake MRI patch\n{n_mod} channels", _VIOLET)
    c.arrow(prev, fake, side=(0, 1))
    return fake


def _draw_segmenter(c: _Canvas, segmenter: nn.Module, fake, weights: dict) -> None:
    """The U-Net with its three kinds of input, its K logits plus the fixed fake logit, and both losses."""
    inputs = [
        c.box(122, 58, 15, 5, "labelled real patch x\n(label y)", _GREY),
        c.box(122, 48, 15, 5, "unlabelled real patch", _GREY),
        c.box(122, 38, 15, 5, "fake patch G(x_src, y, z)", _VIOLET),
    ]
    c.arrow(fake, inputs[2], "fakes", side=(1, 0), rad=0.3)
    c.ax.text(122, 63.5, "one batch: batch norm sees all three", fontsize=7, ha="center")
    enc = []
    for i, block in enumerate([segmenter.stem, *segmenter.down]):
        scale = f"1/{2**i}" if i else "full res."
        enc.append(c.box(140 + 5 * i, 58 - 11 * i, 7, 5, f"{_out_channels(block)}\n{scale}", _BLUE))
        c.arrow(*(enc[-2:] if i else (inputs[0], enc[0])), side=(0, 1) if i else (1, 0))
    for box in inputs[1:]:
        c.arrow(box, enc[0], side=(1, 0))
    dec = {len(enc) - 1: enc[-1]}
    for i, block in enumerate(segmenter.up):
        level = len(enc) - 2 - i
        dec[level] = c.box(164 + 5 * i, 58 - 11 * level, 7, 5, f"{_out_channels(block)}\nUpCat", _VIOLET)
        c.arrow(dec[level + 1], dec[level], side=(0, 1))
        c.arrow(enc[level], dec[level], colour="#5566aa", dashed=True)
    n_classes = _out_channels(segmenter.head)
    head = c.box(186, 58, 8, 5, f"1x1 conv\n{n_classes} logits", _VIOLET)
    c.arrow(dec[0], head)
    names = ", ".join(("bg", *TISSUES)[:n_classes])
    logits_text = (f"K = {n_classes} logits l_k ({names})\n+ a fixed fake logit 0\n"
                   "Z = sum_k exp(l_k), D(x) = Z / (Z + 1)\nsegmentation: arg-max over K")  # fmt: skip
    logits = c.box(186, 41, 24, 9, logits_text, _ORANGE)
    c.arrow(head, logits, side=(0, 1))
    d_text = (f"discriminator loss (eq. 2):\n{weights['labelled_weight']} x labelled: CE + soft Dice\n"
              f"+ {weights['unlabelled_weight']} x unlabelled: -log Z/(Z+1)\n"
              f"+ {weights['fake_weight']} x fake: -log 1/(Z(G)+1)")  # fmt: skip
    c.arrow(logits, c.box(186, 24, 24, 9, d_text, _RED), side=(0, 1))
    g_text = (f"generator loss: feature matching on D's {weights['feature_layer']} features\n"
              "(per tissue of y) + adversarial + boundary + reconstruction")  # fmt: skip
    g_loss = c.box(152, 12, 32, 6, g_text, _RED)
    feature = dec[0] if weights["feature_layer"] == "last" else enc[-1]
    c.arrow(feature, g_loss, colour="#5566aa", dashed=True, rad=-0.2, side=(0, 1))
    c.arrow(g_loss, fake, "updates G", colour="#b03030", dashed=True, side=(1, 0))


def architecture(
    config_file=str(BUNDLE_ROOT / "configs" / "train.yaml"),
    out: str = str(FIGURES_DIR / "architecture.png"),
    dpi: int = 150,
):
    """Draw MRI-GAN, generator and segmenter/discriminator, with the channels of the networks ``config_file`` (a
    training config, or a list of configs merged in order) defines and its loss weights."""
    parser, segmenter, generator = _networks(config_file)
    keys = ("labelled_weight", "unlabelled_weight", "fake_weight", "feature_layer")
    weights = {k: parser.get_parsed_content(f"gan#{k}") for k in keys}
    modalities = [str(m).upper() for m in parser.get_parsed_content("modalities")]
    fig = Figure(figsize=(20, 7))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 200)
    ax.set_ylim(0, 70)
    ax.axis("off")
    c = _Canvas(ax)
    title = {"ha": "center", "fontsize": 12, "weight": "bold"}
    ax.text(50, 67, f"MRI-GAN generator G(x_src, y, z): {_millions(generator)}", **title)
    ax.text(158, 67, f"Segmenter = discriminator D: {_millions(segmenter)}", **title)
    fake = _draw_generator(c, generator, modalities)
    _draw_segmenter(c, segmenter, fake, weights)
    return _save(fig, out, dpi)


# ---- overlay --------------------------------------------------------------------------------------------------------


def _load(path) -> nib.spatialimages.SpatialImage:
    """A NIfTI or Analyze image; a missing file is a one-line error naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return nib.load(str(path))


def _tissues(path, image, orig: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """Label volume in RAS orientation mapped to 0 bg, 1 CSF, 2 GM, 3 WM and ``IGNORE_LABEL`` (ignored structures)."""
    data = np.asanyarray(nib.as_closest_canonical(image).dataobj).squeeze()
    unknown = sorted(set(np.unique(data).tolist()) - set(orig))
    if unknown:
        raise ValueError(f"{path}: label values {unknown[:5]} are not among {list(orig)} (see --label_format)")
    lut = np.zeros(int(max(orig)) + 1, dtype=np.uint8)
    for o, t in zip(orig, target):
        lut[int(o)] = t
    return lut[data.astype(np.int64)]


def _slices(volume: np.ndarray, centre: Sequence[int], box: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre`` of a RAS volume, cropped to ``box`` (first and last
    voxel per axis) and transposed for ``origin="lower"``."""
    (i, j, k), (lo, hi) = centre, box
    x, y, z = (slice(lo[d], hi[d] + 1) for d in range(3))
    return [volume[x, y, k].T, volume[x, j, z].T, volume[i, y, z].T]


def overlay(
    images,
    segmentation: str,
    label: str | None = None,
    names=None,
    output_labels=(0, 1, 2, 3),
    label_format: str = "datalist",
    out: str = str(FIGURES_DIR / "overlay.png"),
    dpi: int = 100,
):
    """Axial, coronal and sagittal slices of each image with the segmentation overlaid, and of the first image with
    the ground truth ``label`` when given, with the segmentation's Dice per tissue against it.

    ``segmentation``: a label map on the images' voxel grid, as ``configs/inference.yaml`` writes it, with
    ``output_labels`` as its bg/CSF/GM/WM values; ``label`` holds the label values of ``label_format`` (a
    ``dataset_format``: ``iseg`` for iSEG and the phantoms, ``datalist`` for 0-3). The slices pass through the
    centre of the segmented tissue's bounding box and are cropped to it.
    """
    images = [images] if isinstance(images, str) else list(images)
    names = [Path(p).name for p in images] if names is None else [str(n) for n in names]
    vols = [_load(p) for p in images]
    seg_img, label_img = _load(segmentation), (_load(label) if label else None)
    for path, img in [*zip(images, vols), (segmentation, seg_img), (label, label_img)][1:]:
        if img is not None and img.shape[:3] != vols[0].shape[:3]:
            raise ValueError(f"{path}: shape {img.shape[:3]} differs from {images[0]}'s {vols[0].shape[:3]}; "
                             "all volumes must share one voxel grid")  # fmt: skip
    seg = _tissues(segmentation, seg_img, list(output_labels), [0, 1, 2, 3])
    canon = [nib.as_closest_canonical(v) for v in vols]
    rows = [(f"{n} with the segmentation", np.asanyarray(v.dataobj).squeeze().astype(np.float32), seg)
            for n, v in zip(names, canon)]  # fmt: skip
    if label:
        gt = _tissues(label, label_img, *label_mapping(label_format))
        scores = ", ".join(f"{n} {d:.3f}" for n, d in zip(TISSUES, tissue_dice(seg, gt)))  # ignored voxels left out
        rows.append((f"{names[0]} with the ground truth (segmentation Dice {scores})", rows[0][1],
                     np.where(gt == IGNORE_LABEL, 0, gt)))
    found = np.argwhere(seg > 0) if seg.any() else np.array([[0, 0, 0], np.array(seg.shape) - 1])
    box = (np.maximum(found.min(0) - 4, 0), np.minimum(found.max(0) + 4, np.array(seg.shape) - 1))
    centre = (box[0] + box[1]) // 2
    zooms = canon[0].header.get_zooms()[:3]
    aspects = (zooms[1] / zooms[0], zooms[2] / zooms[0], zooms[2] / zooms[1])
    height = len(rows) * CELL_INCHES + LEGEND_INCHES
    fig = Figure(figsize=(3 * CELL_INCHES, height))
    cmap = ListedColormap(TISSUE_COLOURS)
    for r, (title, volume, labels) in enumerate(rows):
        top = 1 - r * CELL_INCHES / height  # figure fraction of the row's top edge
        fig.text(0.01, top - 0.06 / height, title, fontsize=8, va="top")
        lo, hi = np.percentile(volume, (0.5, 99.5))
        views = zip(("axial", "coronal", "sagittal"), _slices(volume, centre, box), _slices(labels, centre, box))
        for col, (view, img, lab) in enumerate(views):
            ax = fig.add_axes((col / 3, top - (CELL_INCHES - 0.05) / height, 1 / 3, (CELL_INCHES - 0.45) / height))
            shown = {"origin": "lower", "aspect": aspects[col], "interpolation": "nearest"}
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, **shown)
            ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=1, vmax=3, alpha=0.35, **shown)
            ax.set_axis_off()
            ax.set_title(view, fontsize=7)
    handles = [Patch(color=col, label=name) for col, name in zip(TISSUE_COLOURS, TISSUES)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return _save(fig, out, dpi)


# ---- curves ---------------------------------------------------------------------------------------------------------

Scalars = dict[str, list[tuple[int, float]]]  # {tag: [(step, value), ...]} sorted by step


def _tensorboard_scalars(run_dir) -> Scalars:
    """Every scalar of the TensorBoard event files in ``run_dir``; a step logged twice (a resumed run) keeps its
    latest value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (events.out.tfevents.*)")
    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps = merged.setdefault(tag, {})
            for e in acc.Scalars(tag):
                if e.step not in steps or e.wall_time >= steps[e.step][0]:
                    steps[e.step] = (e.wall_time, e.value)
    return {tag: sorted((s, v) for s, (_, v) in steps.items()) for tag, steps in merged.items()}


def _mlflow_scalars(tracking_uri: str, experiment_name: str, run_name: str | None) -> Scalars:
    """Every metric of an MLflow run: ``run_name``, or the newest run of ``experiment_name``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ValueError(f"{tracking_uri}: no MLflow experiment named {experiment_name!r}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if run_name is None or r.info.run_name == run_name]
    if not runs:
        raise ValueError(f"{tracking_uri}: experiment {experiment_name!r} has no run named {run_name!r}")
    run_id = runs[0].info.run_id
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in runs[0].data.metrics}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (fewer at the start)."""
    if window <= 1 or len(values) < 2:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def curves(
    run_dir: str = str(BUNDLE_ROOT / "runs"),
    tracking_uri: str | None = None,
    experiment_name: str = "mri_gan",
    run_name: str | None = None,
    smooth: int = 20,
    out: str = str(FIGURES_DIR / "training_curves.png"),
    dpi: int = 100,
):
    """Training curves: the discriminator's and generator's loss terms per iteration (moving average over ``smooth``
    iterations, raw values faint) and the validation Dice per tissue per epoch.

    Reads the TensorBoard event files in ``run_dir`` or, when ``tracking_uri`` is given, the MLflow run ``run_name``
    (default: the newest) of ``experiment_name`` (a run tracked with ``--tracking configs/mlflow.yaml``).
    """
    if tracking_uri:
        scalars, source = _mlflow_scalars(tracking_uri, experiment_name, run_name), tracking_uri
    else:
        scalars, source = _tensorboard_scalars(run_dir), run_dir
    d_tags = [t for t in ("loss_d_total", "loss_d_labelled", "loss_d_unlabelled", "loss_d_fake") if t in scalars]
    d_tags = d_tags or [t for t in ("loss", "train_loss") if t in scalars][:1]
    if not d_tags:
        raise ValueError(f"{source}: no training loss scalars (loss_d_*, loss or train_loss)")
    g_tags = sorted(t for t in scalars if t.startswith("loss_g_"))
    dice_tags = [t for t in (*(f"val_dice_{n}" for n in TISSUES), "val_mean_dice") if t in scalars]
    gan_start = scalars["loss_d_fake"][0][0] if "loss_d_fake" in scalars else None
    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    for ax, tags, title in zip(axes, (d_tags, g_tags), ("discriminator / segmenter losses", "generator losses")):
        for tag in tags:
            steps, values = (np.array(x) for x in zip(*scalars[tag]))
            (line,) = ax.plot(steps, _smooth(values, smooth), lw=1.2, label=tag)
            ax.plot(steps, values, lw=0.5, alpha=0.25, color=line.get_color())
        if gan_start is not None:
            ax.axvline(gan_start, color="grey", ls=":", lw=1)
            ax.text(gan_start, 1.0, " GAN terms on", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        if tags:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no generator (supervised run)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("iteration")
        ax.set_title(f"{title} (moving average over {smooth})", fontsize=9)
    for tag in dice_tags:
        steps, values = zip(*scalars[tag])
        name = "mean" if tag == "val_mean_dice" else tag.removeprefix("val_dice_")
        axes[2].plot(steps, values, marker="o", ms=3, lw=1.2, ls="--" if name == "mean" else "-", label=name)
    if dice_tags:
        axes[2].legend(fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_xlabel("epoch")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_ylim(0, 1)
    axes[2].set_title("validation Dice per tissue", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, dpi)


if __name__ == "__main__":
    fire.Fire({"architecture": architecture, "overlay": overlay, "curves": curves})
