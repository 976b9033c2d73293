"""What inference writes beside the label maps: tissue volumes in mL (one CSV per run) and overlay PNGs.

``TissueVolumesd`` counts the tissues of each subject's label map (class indices, on the input's own voxel grid,
after ``Invertd``) and puts them in the data; ``TissueVolumeWriter`` collects them over the run and writes
``tissue_volumes.csv`` once the run completes. ``SaveOverlayd`` writes ``<subject>_overlay.png`` for a quick look.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform
from monai.utils import convert_to_numpy, convert_to_tensor

from .atomic import atomic_path, write_text
from .transforms import subject_name_formatter

TISSUES = ("csf", "gm", "wm")  # class 1, 2, 3; 0 is background
VOLUMES_KEY = "tissue_volumes"
# overlay colours (RGB in [0, 1]) of CSF, GM and WM: blue, red, yellow
TISSUE_COLOURS = ((0.0, 0.5, 1.0), (1.0, 0.15, 0.15), (1.0, 1.0, 0.2))


def volume_columns(tissues: Sequence[str] = TISSUES) -> list[str]:
    """The CSV header: ``subject``, one ``<tissue>_ml`` per tissue, then ``brain_ml`` (their sum)."""
    return ["subject", *(f"{t}_ml" for t in tissues), "brain_ml"]


def voxel_volume_ml(affine) -> float:
    """Volume of one voxel in mL: ``|det|`` of the affine's 3x3 part (mm^3) / 1000."""
    affine = torch.as_tensor(affine, dtype=torch.float64)
    return abs(float(torch.linalg.det(affine[:3, :3]))) / 1000.0


def subject_of(label, data: Mapping) -> str:
    """The subject id the label file is named after (``subject_name_formatter``), else the datalist's."""
    meta = getattr(label, "meta", {})
    if "subject" in meta:
        return subject_name_formatter(meta, None)["subject"]
    return str(data.get("subject", meta.get("filename_or_obj", "")))


def tissue_volumes(label, affine, tissues: Sequence[str] = TISSUES) -> dict[str, float]:
    """Volumes in mL of ``tissues`` (classes 1, 2, ...) in a class-index label map, and their sum ``brain_ml``.

    ``label``: class indices 0..len(tissues), any shape (a channel of 1 included); ``affine``: its voxel-to-world
    matrix. Raises ``ValueError`` for other values, e.g. a map already relabelled to 0/10/150/250.
    """
    values = convert_to_tensor(label, track_meta=False).detach().flatten()
    classes = values.round().long()
    integral = torch.equal(classes.to(values.dtype), values)
    if values.numel() and (not integral or classes.min() < 0 or classes.max() > len(tissues)):
        found = sorted({float(v) for v in torch.unique(values)[:10]})
        raise ValueError(
            f"tissue volumes need class indices 0..{len(tissues)}, got values {found} (count before MapLabelValued)"
        )
    counts = torch.bincount(classes.cpu(), minlength=len(tissues) + 1)
    voxel_ml = voxel_volume_ml(affine)
    volumes = {f"{t}_ml": float(counts[i + 1]) * voxel_ml for i, t in enumerate(tissues)}
    volumes["brain_ml"] = sum(volumes.values())
    return volumes


class TissueVolumesd(MapTransform):
    """Put the tissue volumes (mL) of the class-index label map ``keys`` into the data as ``volumes_key``.

    ``data[volumes_key]``: ``{"subject": ..., "csf_ml": ..., "gm_ml": ..., "wm_ml": ..., "brain_ml": ...}``, the
    subject named as in the label files, the voxel volume from the label's own affine (after ``Invertd``: the
    input's grid, so the input's voxel size). Place it after ``ChannelArgmaxd`` and before
    ``MapLabelValued``. One key (the last one wins). MONAI has no transform that turns a label map into physical
    volumes per class.
    """

    def __init__(
        self,
        keys: KeysCollection,
        tissues: Sequence[str] = TISSUES,
        volumes_key: str = VOLUMES_KEY,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.tissues = tuple(tissues)
        self.volumes_key = volumes_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if not isinstance(label, MetaTensor):
                raise TypeError(f"TissueVolumesd needs a MetaTensor (with its affine) in {key!r}, got {type(label).__name__}")
            d[self.volumes_key] = {"subject": subject_of(label, d), **tissue_volumes(label, label.affine, self.tissues)}
        return d


class TissueVolumeWriter:
    """Ignite handler: write the rows ``TissueVolumesd`` put in each output to ``<output_dir>/<filename>``.

    One row per subject, columns ``subject,<tissue>_ml...,brain_ml`` (mL, 4 decimals), in the order processed.
    The file is written once, atomically, when the run completes: a failed or interrupted run writes nothing and
    leaves an existing file as it was. MONAI's ``ClassificationSaver``/``CSVSaver`` do not fit: they write no
    header, key the rows by input file name, delete an existing file when created and append to it in place.
    """

    def __init__(
        self,
        output_dir,
        filename: str = "tissue_volumes.csv",
        volumes_key: str = VOLUMES_KEY,
        tissues: Sequence[str] = TISSUES,
    ):
        self.path = Path(output_dir) / filename
        self.volumes_key = volumes_key
        self.columns = volume_columns(tissues)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(item, Mapping) and self.volumes_key in item:
                self.rows.append(item[self.volumes_key])

    def _write(self, _engine: Engine) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([row["subject"], *(f"{float(row[c]):.4f}" for c in self.columns[1:])])
        write_text(self.path, text.getvalue())


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (3D) reordered and flipped to RAS axes, and its voxel sizes along those axes."""
    ornt = nib.orientations.io_orientation(affine)
    sizes = np.empty(3)
    sizes[ornt[:, 0].astype(int)] = nib.affines.voxel_sizes(affine)
    return nib.orientations.apply_orientation(volume, ornt), sizes


def _panel(image: np.ndarray, label: np.ndarray, pixel: tuple[float, float], mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One 2D view (rows, cols) as (1, H, W) tensors, resized so that a pixel is ``mm`` wide in both directions."""
    size = [max(1, round(n * s / mm)) for n, s in zip(image.shape, pixel)]
    image = torch.as_tensor(image.copy(), dtype=torch.float32)[None, None]
    label = torch.as_tensor(label.copy(), dtype=torch.float32)[None, None]
    image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
    label = torch.nn.functional.interpolate(label, size=size, mode="nearest")
    return image[0], label[0].round().long()


def blend_tissues(image: torch.Tensor, label: torch.Tensor, alpha: float = 0.5, colours=TISSUE_COLOURS) -> torch.Tensor:
    """RGB (3, H, W) in [0, 1]: grey ``image`` (1, H, W, in [0, 1]) with class ``k`` of ``label`` in ``colours[k-1]``.

    The blend of ``monai.visualize.blend_images`` (``(1 - alpha) * image + alpha * colour``, background left
    transparent) with a fixed palette: ``blend_images`` looks its colours up in matplotlib's colormaps, which are not
    among the bundle's install requirements.
    """
    palette = torch.tensor([(0.0, 0.0, 0.0), *colours], dtype=image.dtype)
    colour = palette[label[0].clamp(0, len(colours))].permute(2, 0, 1)
    weight = torch.where(label > 0, torch.full_like(image, alpha), torch.zeros_like(image))
    return (1 - weight) * image.expand(3, -1, -1) + weight * colour


def overlay_rgb(image, label, affine, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB (H, W, 3): the middle axial, coronal and sagittal slices of ``image`` with ``label`` blended in.

    ``image`` and ``label``: 3D arrays on the same voxel grid, ``affine`` its voxel-to-world matrix. The slices are
    the middle ones of the volume reoriented to RAS: axial with anterior up, coronal and sagittal with superior up,
    the subject's right on the right (neurological), anterior on the right of the sagittal view. Pixels are square
    (the smallest voxel size); intensity is scaled from the minimum (0) to the 99.5th percentile (1), clipped.
    """
    image, sizes = _to_ras(np.asarray(image, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    label, _ = _to_ras(np.asarray(label), np.asarray(affine, dtype=np.float64))
    low, high = float(image.min()), float(np.percentile(image, 99.5))
    image = np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)
    x, y, z = (n // 2 for n in image.shape)
    mm = float(sizes.min())
    views = [  # (rows, cols) of each view: flipped so that anterior / superior is up
        (image[:, :, z].T[::-1], label[:, :, z].T[::-1], (sizes[1], sizes[0])),  # axial
        (image[:, y, :].T[::-1], label[:, y, :].T[::-1], (sizes[2], sizes[0])),  # coronal
        (image[x, :, :].T[::-1], label[x, :, :].T[::-1], (sizes[2], sizes[1])),  # sagittal
    ]
    panels = [blend_tissues(*_panel(i, l, p, mm), alpha=alpha) for i, l, p in views]
    height = max(p.shape[1] for p in panels)
    padded = []
    for p in panels:  # centred vertically on black
        top = (height - p.shape[1]) // 2
        padded.append(torch.nn.functional.pad(p, (0, 0, top, height - p.shape[1] - top)))
    rgb = torch.cat(padded, dim=2).permute(1, 2, 0)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_png(path, rgb: np.ndarray) -> None:
    """Write a uint8 RGB array (H, W, 3) as a PNG with ITK, atomically."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(rgb, dtype=np.uint8), is_vector=True)
    with atomic_path(path) as tmp:
        itk.imwrite(image, str(tmp), imageio=itk.PNGImageIO.New())


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<subject>_<postfix>.png``: the label map ``keys`` over the first modality.

    The label (class indices, on the input's own voxel grid: after ``Invertd`` and ``ChannelArgmaxd``, before
    ``MapLabelValued``) is blended over the first channel of the input file it came from (its
    ``filename_or_obj``: the first modality's file, or the 4D file holding all modalities), read again with
    ``reader``; see ``overlay_rgb`` for the views. MONAI writes 2D PNGs through PIL (not an install requirement
    here) and blends through matplotlib; ITK writes the RGB PNG.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir,
        postfix: str = "overlay",
        alpha: float = 0.5,
        reader: str = "NibabelReader",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.postfix = postfix
        self.alpha = alpha
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            source = label.meta["filename_or_obj"]
            image = self.loader(source)[0]
            if tuple(image.shape) != tuple(label.shape[1:]):
                raise ValueError(f"overlay: {source} has shape {tuple(image.shape)}, the label map {tuple(label.shape[1:])}")
            affine = convert_to_numpy(label.affine)
            rgb = overlay_rgb(convert_to_numpy(image), convert_to_numpy(label[0]), affine, self.alpha)
            write_png(self.output_dir / f"{subject_of(label, d)}_{self.postfix}.png", rgb)
        return d
