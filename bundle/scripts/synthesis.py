"""MRI and tissues transfer (configs/synthesize.yaml): what the config cannot express on its own.

``synthesis_pairs`` checks the user's label maps and source MRIs and builds the datalist, ``load_generator`` loads
the trained generator with clear errors, ``FitToReferenced`` brings the source onto the label map's grid,
``SynthesisNetwork`` feeds ``[source, one-hot tissues]`` windows to the generator and ``SynthesisInputs`` gives all
windows of a volume one noise vector and, for a ``source_statistics`` generator, the class-wise statistics of the whole
source under the segmenter's probabilities (``load_segmenter``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.engines.utils import PrepareBatch
from monai.inferers import sliding_window_inference
from monai.transforms import MapTransform, ResizeWithPadOrCrop
from torch import Tensor, nn

from .checks import InputError, MissingInputError, OutputExistsError, OutputInInputFolderError, as_bool, check_weights
from .networks.generators import class_intensity_statistics, tissue_onehot
from .transforms import TissueClustersd

_RESERVED_KEYS = ("subject", "label", "source", "tissues", "image", "pred", "mask")
_EXTENSIONS = (".nii.gz", ".nii", ".hdr", ".img", ".mha", ".mhd", ".nrrd", ".gz")
# file-name endings naming a modality or a label map (iSEG, MRBrainS13/18), stripped to get the subject id
_ROLE_NAMES = ("label", "labels", "seg", "segm", "labelsfortraining", "labelsfortesting", "t1", "t2", "t1_ir",
               "ir", "flair", "t2_flair", "reg_t1", "reg_ir")  # fmt: skip


def synthesis_pairs(
    label_files, source_files, modalities: Sequence[str], output_dir, overwrite=False, postfix: str = "synth",
    ext: str = ".nii.gz", mask_files=None,
) -> list[dict]:  # fmt: skip
    """Datalist ``{"subject": "<label subject>_from_<source subject>", "label": path, <modality>: path, ...}``.

    ``label_files``: label map paths; ``source_files``: one list of ``len(modalities)`` files (in the order of
    ``modalities``) per label map, or a single one used for every label map; ``mask_files`` (optional): one brain
    mask per source, in their order, added as ``"mask"``. Raises a one-line error naming the file on a missing
    input, a count mismatch, two pairs with the same output, an output that is an input, or an existing output when
    ``overwrite`` is false. Outputs are ``<output_dir>/<subject>_<postfix><ext>``.
    """
    modalities = [str(m) for m in modalities]
    clash = sorted(set(modalities) & set(_RESERVED_KEYS))
    if clash:
        raise InputError(f"modalities {clash} clash with keys the workflow uses ({', '.join(_RESERVED_KEYS)})")
    overwrite = as_bool(overwrite)
    labels = _as_paths(label_files, "--label_files", "['/data/subject-1-label.hdr']")
    sources = _as_sources(source_files, len(modalities))
    if len(sources) not in (1, len(labels)):
        raise InputError(
            f"got {len(labels)} label maps but {len(sources)} sources: give one source per label map "
            "(--source_files \"[[t1, t2], ...]\"), or a single source for all of them"
        )
    for i, source in enumerate(sources):
        if len(source) != len(modalities):
            raise InputError(
                f"source {i + 1} {[str(p) for p in source]} has {len(source)} files but modalities {modalities} "
                f"need {len(modalities)}, in that order"
            )
    masks = None
    if mask_files is not None and mask_files != []:
        masks = _as_paths(mask_files, "--mask_files", "['/data/subject-12-brainmask.nii.gz']")
        if len(masks) != len(sources):
            raise InputError(f"got {len(sources)} sources but {len(masks)} brain masks: give one mask per source, "
                             "in the order of --source_files")
    inputs = [*labels, *(p for s in sources for p in s), *(masks or [])]
    for path in inputs:
        _check_readable(path)
    out_dir = Path(output_dir).expanduser().absolute()
    entries, outputs = [], {}
    for i, label in enumerate(labels):
        j = 0 if len(sources) == 1 else i
        source = sources[j]
        subject = f"{subject_id(label)}_from_{subject_id(source[0])}"
        out = out_dir / f"{subject}_{postfix}{ext}"
        if out in outputs:
            raise InputError(f"label maps {outputs[out]} and {label} would both be written to {out}")
        outputs[out] = label
        if any(out.resolve() == p.resolve() for p in inputs):
            raise OutputInInputFolderError(f"output {out} would overwrite an input file; choose another --output_dir")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite true to replace it, or another --output_dir")
        entries.append({"subject": subject, "label": str(label), **{m: str(p) for m, p in zip(modalities, source)},
                        **({"mask": str(masks[j])} if masks else {})})  # fmt: skip
    return entries


def subject_id(path) -> str:
    """Subject id of an input file: its name without extension and a trailing modality/label word
    (``subject-12-T1.hdr`` -> ``subject-12``), or ``<parent>-<folder>`` for files named after a modality alone
    (MRBrainS ``TrainingData/1/T1.nii`` -> ``TrainingData-1``; a ``pre`` folder is skipped)."""
    path = Path(path)
    name = path.name
    for e in _EXTENSIONS:
        if name.lower().endswith(e):
            name = name[: -len(e)]
            break
    words = "|".join(sorted(_ROLE_NAMES, key=len, reverse=True))
    stem = re.sub(rf"(^|[-_.])({words})$", "", name, flags=re.IGNORECASE)
    if stem:
        return stem
    folder = path.absolute().parent
    folder = folder.parent if folder.name.lower() == "pre" else folder
    return "-".join(p for p in (folder.parent.name, folder.name) if p) or name


def load_generator(generator: nn.Module, path, device=None) -> nn.Module:
    """Load ``{"generator": state_dict}`` (``models/generator.pt``, written by training) into ``generator``;
    return it on ``device`` in eval mode. One-line errors name the file when it is missing or does not fit."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"generator checkpoint {path} not found: train with configs/train.yaml (it writes models/generator.pt) "
            "or pass --ckpt_path"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = next(iter(str(e).strip().splitlines()), "")
        raise InputError(f"cannot read generator checkpoint {path}: {type(e).__name__}: {reason}") from e
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("generator"), Mapping):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise InputError(f"{path} is not a generator checkpoint: expected {{'generator': state_dict}}, found {keys}")
    state, own = checkpoint["generator"], generator.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or resized:
        example = (resized or missing or unexpected)[0]
        raise InputError(
            f"{path} does not fit the generator of this config ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(resized)} resized tensors, e.g. {example}): set modalities, num_classes and gan#generator_features, "
            "gan#tissue_code_dim, gan#noise_dim, gan#source_code_dim and gan#source_statistics as in training"
        )
    generator.load_state_dict(state)
    return generator.to(device).eval()


class FitToReferenced(MapTransform):
    """Centre-crop or pad ``keys`` (padding with ``value``) to the spatial shape of ``ref_key``.

    With both cropped to their foreground first, this lays the source brain's box centred on the label map's box.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "label", value: float = -1.0, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.value = ref_key, value

    def __call__(self, data: Mapping[Hashable, Tensor]) -> dict[Hashable, Tensor]:
        d = dict(data)
        shape = d[self.ref_key].shape[1:]
        for key in self.key_iterator(d):
            d[key] = ResizeWithPadOrCrop(shape, value=self.value)(d[key])
        return d


class SynthesisNetwork(nn.Module):
    """The generator as a one-input network for ``SlidingWindowInferer``.

    Input: ``[source MRI (in_channels), one-hot tissues (num_classes)]`` concatenated on the channel axis;
    output: the synthetic MRI (in_channels, values in (-1, 1)). ``noise`` (1 or B, noise_dim) and ``source_stats``
    (``(mean, std)``, (1, K, C) each, for a ``source_statistics`` generator), passed by the inferer to every window,
    are shared by the windows of a volume.
    """

    def __init__(self, generator: nn.Module, in_channels: int):
        super().__init__()
        self.generator, self.in_channels = generator, int(in_channels)

    def forward(self, x: Tensor, noise: Tensor | None = None, source_stats: tuple | None = None) -> Tensor:
        if noise is not None:
            noise = noise.to(x.device, x.dtype).expand(x.shape[0], -1)
        if source_stats is not None:
            source_stats = tuple(t.to(x.device).expand(x.shape[0], -1, -1) for t in source_stats)
        fake, _ = self.generator(x[:, : self.in_channels], x[:, self.in_channels :], noise, source_stats=source_stats)
        return fake


def load_segmenter(network: nn.Module, path, device=None) -> nn.Module:
    """The trained segmenter (``models/model.pt``, a plain state_dict) on ``device`` in eval mode; one-line errors
    name the file when it is missing or does not fit."""
    network.load_state_dict(check_weights(path, network))
    return network.to(device).eval()


class SynthesisInputs(PrepareBatch):
    """``prepare_batch`` for the evaluator: ``image`` as input, ``label`` as target (``Invertd`` needs it), and as
    keyword arguments for every window ``noise``, one N(0, 1) vector of ``noise_dim`` per volume drawn on the CPU
    with torch's seeded generator, and for a ``source_statistics`` generator the ``source_stats`` of the whole source
    volume: the class-wise intensity statistics under a ``segmenter``'s probabilities, or with ``clusters`` under
    its ``TissueClustersd`` classes (what training pools over a subject's patches, ``gan#source_classes``; refined
    by ``refine`` and ``depth`` as ``gan#clusters_refine`` and ``gan#clusters_depth``), inside the batch's brain
    ``mask`` when it has one."""

    def __init__(self, noise_dim: int, segmenter: nn.Module | None = None, in_channels: int = 1,
                 roi_size=(96, 96, 96), clusters: bool = False, refine: bool = False, depth: float | None = None):  # fmt: skip
        self.noise_dim, self.segmenter, self.in_channels, self.roi_size = int(noise_dim), segmenter, in_channels, roi_size
        self.clusters = TissueClustersd("image", refine=refine, depth=depth) if clusters else None

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking, **kwargs)
        noise = torch.randn(image.shape[0], self.noise_dim).to(device) if self.noise_dim > 0 else None
        stats = None
        if self.clusters is not None:
            source = image[:, : self.in_channels]
            masks = batchdata.get("mask", [None] * len(source))
            classes = torch.stack([
                torch.as_tensor(self.clusters({"image": s.cpu(), "mask": None if m is None else torch.as_tensor(m).cpu()})["clusters"])
                for s, m in zip(source, masks)
            ]).to(source.device)  # fmt: skip
            stats = class_intensity_statistics(source, tissue_onehot(classes))[:2]
        elif self.segmenter is not None:
            source = image[:, : self.in_channels]
            with torch.no_grad():
                roi = [min(r, size) for r, size in zip(self.roi_size, source.shape[2:])]  # no padding: as trained
                logits = sliding_window_inference(source, roi, 1, self.segmenter, overlap=0.25)
            stats = class_intensity_statistics(source, torch.softmax(logits.float(), dim=1))[:2]
        return image, label, (), {"noise": noise, "source_stats": stats}


def _as_paths(value, option: str, example: str) -> list[Path]:
    """A path or a list of paths as Paths; an empty value is an error."""
    if value is None or value == "" or value == []:
        raise InputError(f"{option}: no files given, e.g. {option} \"{example}\"")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in values if not isinstance(v, (str, Path))]
    if bad:
        raise InputError(f"{option} must hold file paths, got {bad[0]!r}")
    return [Path(v).expanduser() for v in values]


def _as_sources(value, num_modalities: int) -> list[list[Path]]:
    """Sources as lists of paths; a flat list of paths is one source (or, with one modality, one per path)."""
    example = "[['/data/subject-12-T1.hdr', '/data/subject-12-T2.hdr']]"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, Path)) for v in value):
        value = [[v] for v in value] if num_modalities == 1 else [value]
    return [_as_paths(v, "--source_files", example) for v in _as_paths_list(value, example)]


def _as_paths_list(value, example: str) -> list:
    if value is None or value == "" or value == []:
        raise InputError(f"--source_files: no files given, e.g. --source_files \"{example}\"")
    return [[value]] if isinstance(value, (str, Path)) else list(value)


def _check_readable(path: Path) -> None:
    if not path.is_file():
        raise MissingInputError(f"input file {path} not found")
    if path.suffix.lower() == ".hdr" and not any(path.with_suffix(s).is_file() for s in (".img", ".IMG")):
        raise MissingInputError(f"Analyze header {path} has no {path.with_suffix('.img').name} beside it")
