"""A plain supervised baseline: a MONAI UNet trained on brain patches, measured on the bundle's own data split.

Why it exists ("no straw man"): the bundle's supervised recipe and its GAN variants are only worth something if they
at least match what a short, ordinary MONAI recipe reaches on the same subjects in the same time. This is that
recipe, kept deliberately plain: a UNet (16-32-64-128, one residual unit per level), intensities z-scored over the
brain (0 outside), 48^3 patches centred on random brain voxels, 4 patches per iteration, Dice + cross-entropy, Adam
1e-3, no augmentation, trained for a wall time (or a number of iterations); then sliding-window inference (64^3,
overlap 0.25, gaussian), argmax, predictions outside the brain set to background, and Dice per tissue (CSF, GM, WM)
per test subject, averaged. With it someone reached Dice .870/.936/.917 on real anatomy in 15 minutes on 2 cores.

The options (``norm``, ``patch_size``, ``sampling``, ``mask_output``, ``seed``, ...) are there to find out which
choices matter. Run from the repository root:

    python -m tools.benchmark_plain_unet run --minutes 15 --num_labeled 2
    python -m tools.benchmark_plain_unet run --minutes 15 --norm percentile --sampling random --mask_output False

The split is ``scripts.data.datasets.build_datalist``'s (the phantom data of ``configs/train.yaml`` by default); training
uses ``training``, the score ``testing``. The result (JSON) goes to ``out``, and one summary line is printed.
"""

from __future__ import annotations

import time

import fire
import numpy as np
import torch
import yaml
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    Lambdad,
    LoadImaged,
    MapLabelValued,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandSpatialCropSamplesd,
    ScaleIntensityRangePercentilesd,
    SelectItemsd,
)
from monai.utils import ensure_tuple_rep, set_determinism

from scripts.atomic import write_json
from scripts.data.datasets import IGNORE_LABEL, build_datalist, label_mapping
from scripts.evaluation import TISSUES
from scripts.transforms import MaskIgnoredd
from tools import BUNDLE_ROOT

NORMS = ("zscore_brain", "percentile")
SAMPLINGS = ("brain", "random")
NUM_CLASSES = 4  # background, CSF, GM, WM


def brain_mask(image: torch.Tensor) -> torch.Tensor:
    """``(1, ...)`` uint8 mask of the voxels above 0 in any channel of a ``(C, ...)`` image (background is 0)."""
    return (image > 0).any(dim=0, keepdim=True).to(torch.uint8)


def preprocessing(modalities, norm: str = "zscore_brain", label_map=None) -> Compose:
    """The deterministic chain: load, stack the modalities as ``image``, RAS, map labels, ``brain`` mask, normalise.

    ``label_map``: ``(orig, target)`` label values (``scripts.data.datasets.label_mapping``), or None for no ``label``.
    ``norm``: "zscore_brain" (per channel over its non-zero voxels, 0 outside) or "percentile" (0 and 99.5th
    percentile of the whole box to -1 and 1, clipped). The brain mask is taken before normalising.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    modalities = list(modalities)
    keys = ["image", "label"] if label_map is not None else ["image"]
    transforms = [
        LoadImaged(modalities + keys[1:], reader="NibabelReader", ensure_channel_first=True, image_only=True),
        ConcatItemsd(modalities, "image"),
        DeleteItemsd(modalities),
        Orientationd(keys, axcodes="RAS"),
    ]
    if label_map is not None:
        transforms.append(MapLabelValued("label", *label_map, dtype=np.uint8))
    transforms += [CopyItemsd("image", names="brain"), Lambdad("brain", brain_mask)]
    if norm == "zscore_brain":
        transforms.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    else:
        transforms.append(ScaleIntensityRangePercentilesd("image", lower=0, upper=99.5, b_min=-1, b_max=1,
                                                          clip=True, channel_wise=True))
    return Compose(transforms)


def _patches(patch_size, batch: int, sampling: str) -> list:
    """Random part of the training chain: ``batch`` patches per volume, centred in the brain or anywhere."""
    if sampling == "brain":
        crop = RandCropByPosNegLabeld(["image", "label"], "brain", patch_size, pos=1, neg=0, num_samples=batch,
                                      fg_indices_key="brain_fg", bg_indices_key="brain_bg")
    elif sampling == "random":
        crop = RandSpatialCropSamplesd(["image", "label"], patch_size, num_samples=batch, random_size=False)
    else:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return [crop, SelectItemsd(["image", "label"]), EnsureTyped(["image", "label"], track_meta=False)]


def _forever(loader):
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


def _bundle_phantom() -> dict:
    """The phantom data of ``configs/train.yaml``, so that this baseline sees the bundle's subjects."""
    return yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())["data"]["phantom"]


def run(
    dataset_dir=str(BUNDLE_ROOT / "data" / "phantom"), dataset_format="phantom", modalities=("t1", "t2"), num_labeled=2,
    num_val=2, num_test=4, seed=0, split_seed=None, minutes=15, iterations=None,
    out=str(BUNDLE_ROOT / "runs" / "plain_unet" / "result.json"),
    phantom=None, norm="zscore_brain", patch_size=48, sampling="brain", mask_output=True, batch=4,
    channels=(16, 32, 64, 128), roi_size=64, lr=1e-3, threads=None,
) -> None:
    """Train the plain UNet on ``training`` for ``minutes`` or ``iterations`` (whichever ends first), score ``testing``.

    Writes to ``out`` (JSON) per tissue Dice (mean over test subjects), per subject Dice, the training wall
    time, the iterations done and all options. ``phantom``: arguments of ``scripts.data.phantom.write_dataset`` (default:
    those of ``configs/train.yaml``). ``channels``: UNet features per level (strides 2). Ignored voxels
    (``IGNORE_LABEL``, e.g. MRBrainS cerebellum) are trained as background and left out of the Dice.
    """
    if minutes is None and iterations is None:
        raise ValueError("give minutes or iterations (or both)")
    threads = torch.get_num_threads() if threads is None else int(threads)
    torch.set_num_threads(threads)
    set_determinism(seed)
    modalities, channels = tuple(modalities), tuple(int(c) for c in channels)
    patch_size, roi_size = ensure_tuple_rep(patch_size, 3), ensure_tuple_rep(roi_size, 3)
    if dataset_format == "phantom" and phantom is None:
        phantom = _bundle_phantom()
    split = build_datalist(dataset_dir, dataset_format, modalities, num_labeled, num_val,
                           seed=seed if split_seed is None else split_seed, num_test=num_test, phantom=phantom)
    prep = preprocessing(modalities, norm, label_mapping(dataset_format))
    train_prep = [*prep.transforms, MaskIgnoredd("label")]
    if sampling == "brain":  # cache the brain voxel indices once; they are the patch centres
        train_prep.append(FgBgToIndicesd("brain", "_fg", "_bg"))
    train_ds = CacheDataset(split["training"], Compose(train_prep + _patches(patch_size, batch, sampling)),
                            num_workers=0, progress=False)
    loader = DataLoader(train_ds, batch_size=1, shuffle=True, num_workers=0)

    net = UNet(3, len(modalities), NUM_CLASSES, channels, (2,) * (len(channels) - 1), num_res_units=1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    done, start = 0, time.perf_counter()
    deadline = start + (float("inf") if minutes is None else minutes * 60)
    net.train()
    for data in _forever(loader):  # one volume, ``batch`` patches of it
        if done == iterations or time.perf_counter() >= deadline:
            break
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(data["image"]), data["label"]).backward()
        optimizer.step()
        done += 1
    train_seconds = time.perf_counter() - start

    net.eval()
    inferer = SlidingWindowInferer(roi_size, sw_batch_size=4, overlap=0.25, mode="gaussian")
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    start = time.perf_counter()
    with torch.no_grad():
        for entry in split["testing"]:
            d = prep(entry)
            pred = inferer(d["image"][None].as_tensor(), net).argmax(1, keepdim=True)
            label = d["label"][None].as_tensor().long()
            if mask_output:
                pred[d["brain"][None].as_tensor() == 0] = 0
            ignored = label == IGNORE_LABEL
            pred[ignored], label[ignored] = 0, 0
            metric(one_hot(pred, NUM_CLASSES), one_hot(label, NUM_CLASSES))
    dice = [float(v) for v in metric.aggregate()]
    per_subject = metric.get_buffer().cpu().numpy()
    result = {
        "dice": dict(zip(TISSUES, dice)),
        "mean_dice": float(np.nanmean(dice)),
        "per_subject": [{"subject": e.get("subject"), **dict(zip(TISSUES, map(float, row)))}
                        for e, row in zip(split["testing"], per_subject)],
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "iterations": done,
        "training_subjects": [e.get("subject") for e in split["training"]],
        "options": {
            "dataset_dir": str(dataset_dir), "dataset_format": dataset_format, "modalities": list(modalities),
            "num_labeled": num_labeled, "num_val": num_val, "num_test": num_test, "seed": seed,
            "split_seed": split_seed, "minutes": minutes, "iterations": iterations, "phantom": phantom,
            "norm": norm, "patch_size": list(patch_size), "sampling": sampling, "mask_output": bool(mask_output),
            "batch": batch, "channels": list(channels), "roi_size": list(roi_size), "lr": lr, "threads": threads,
        },
    }
    write_json(out, result)
    print(f"plain UNet: Dice CSF {dice[0]:.3f} GM {dice[1]:.3f} WM {dice[2]:.3f} (mean {result['mean_dice']:.3f}) on "
          f"{len(split['testing'])} test subject(s); {done} iterations in {train_seconds:.0f} s on {threads} "
          f"thread(s) -> {out}")


if __name__ == "__main__":
    fire.Fire({"run": run})
