"""Real anatomy: SynthSeg's 16 label maps of real heads (``bundle/anatomy/``, Billot et al. 2023), their labels
merged to CSF / GM / WM, and datasets of scans rendered from them (``scripts.data.rendering``).

``write_dataset`` renders training subjects (random contrast, affine and smooth deformation, bias, blur, thick
slices, noise; whole heads and skull-stripped brains) from every map but the held-out ones, validation and test
subjects with fixed realistic contrasts (``SCENARIOS``), and a MONAI datalist ``datalist.json`` that keeps renders of
one map in one split. Maps ``TEST_MAPS`` never reach training or validation: they are the real-anatomy test.
``cohort=True`` makes the training renders a cohort (train.yaml's default data): each subject's T1/T2 contrast is
its own age, spread evenly over the subjects from newborn (T1 WM darker than GM) through isointense to adult
(``cohort_ages``), with its own scanner (bias, noise, blur, slice thickness, skull stripping).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    LoadImage,
    RandAffined,
    RandBiasFieldd,
    RandGaussianSmoothd,
    RandRicianNoised,
    RandSmoothDeformd,
)

from ..atomic import write_json
from ..checks import InputError, as_bool
from .datasets import CSF, GM, IGNORE_LABEL, WM
from .rendering import MODALITIES, RandLabelContrastd, RandThickSlicesd
from .writing import map_in_processes, save_nifti, write_once

ANATOMY_DIR = Path(__file__).resolve().parents[2] / "anatomy"
TEST_MAPS = (4, 11, 16)  # the real-anatomy test: never trained or tuned on
VALIDATION_MAPS = (1,)
RENDERER_VERSION = 2  # in the dataset's marker: a dataset rendered by an older renderer is rendered again
HEAD_CODES = 500  # FreeSurfer codes from here on are extra-cerebral head tissues (SynthSeg's 502-530): background

# Targets. Cerebellum is mapped (its cortex is GM and its white matter WM, with the cerebrum's contrast, as iSEG
# labels it); the brain stem and ventral DC, mixtures of grey nuclei and white tracts, and the small unnamed or
# vascular labels are ignored in the loss and the metrics (as MRBrainS ignores the brain stem).
TISSUE_OF_CODE: dict[int, int] = {
    **dict.fromkeys((4, 5, 14, 15, 24, 43, 44, 72), CSF),
    **dict.fromkeys((3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58), GM),
    **dict.fromkeys((2, 41, 7, 46, 25, 57), WM),
    **dict.fromkeys((16, 28, 60, 30, 62, 85, 136, 137, 163, 164), IGNORE_LABEL),
}

# Fixed realistic contrasts of validation, test and the benchmark (tools.benchmark_weights): (CSF, GM, WM) means per
# modality, skull stripping, partial-volume blur (Gaussian sigma, voxels), bias coefficients, Rician noise std (WM is
# about 0.75: SNR 25 at 0.03), slice thickness (voxels; 0: 1 mm).
_ADULT = {"t1": (0.2, 0.5, 0.75), "t2": (0.9, 0.55, 0.4)}
_ISOINTENSE = {"t1": (0.15, 0.5, 0.47), "t2": (0.9, 0.5, 0.53)}  # infant of about 6 months (age 0.425)
_NEWBORN = {"t1": (0.15, 0.5, 0.3), "t2": (0.9, 0.5, 0.7)}  # T1 WM darker than GM, T2 brighter (age 0)
_SCANNER = {"strip": True, "blur": 0.6, "bias": 0.15, "noise": 0.03, "slices": 0}
SCENARIOS: dict[str, dict] = {
    "adult": {"means": _ADULT, **_SCANNER},
    "infant_isointense": {"means": _ISOINTENSE, **_SCANNER},
    "whole_head": {"means": _ADULT, **_SCANNER, "strip": False},
    "strong_bias": {"means": _ADULT, **_SCANNER, "bias": 0.5},
    "noisy_head": {"means": _ADULT, **_SCANNER, "strip": False, "noise": 0.08},
    "thick_slices": {"means": _ADULT, **_SCANNER, "slices": 4.0},
    "infant_newborn": {"means": _NEWBORN, **_SCANNER},
}


def map_path(index: int, anatomy_dir=ANATOMY_DIR) -> Path:
    """Path of label map ``index`` (1..16)."""
    return Path(anatomy_dir) / f"seg_{int(index):02d}.nii.gz"


def map_indices(anatomy_dir=ANATOMY_DIR) -> list[int]:
    """The indices of the label maps in ``anatomy_dir``."""
    return sorted(int(p.name[4:6]) for p in Path(anatomy_dir).glob("seg_[0-9][0-9].nii.gz"))


def read_label_map(path) -> torch.Tensor:
    """A label map as a (1, X, Y, Z) float32 MetaTensor of integer FreeSurfer codes (rounded: some maps store floats).

    Raises an ``InputError`` naming the file when it is missing, holds non-integer or negative values, or brain codes
    (below ``HEAD_CODES``) that ``TISSUE_OF_CODE`` does not know."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label map not found: {path}")
    labels = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))
    values = np.asarray(labels)
    rounded = np.rint(values)
    if np.abs(values - rounded).max() > 1e-3 or rounded.min() < 0:
        raise InputError(f"label map {path} holds non-integer or negative values: not a label map")
    unknown = sorted(int(c) for c in np.unique(rounded) if 0 < c < HEAD_CODES and int(c) not in TISSUE_OF_CODE)
    if unknown:
        raise InputError(f"label map {path} holds brain codes {unknown} that scripts.data.anatomy does not know")
    return MetaTensor(torch.as_tensor(rounded, dtype=torch.float32), meta=labels.meta)


def merge_labels(codes) -> np.ndarray:
    """FreeSurfer codes -> 0 background, 1 CSF, 2 GM, 3 WM, ``IGNORE_LABEL`` (uint8). Unknown codes and the head's
    tissues are background. A lookup table: ``MapLabelValued`` would compare the volume once per code."""
    codes = np.asarray(codes).astype(np.int64)
    table = np.zeros(max(int(codes.max()) + 1, HEAD_CODES), dtype=np.uint8)
    for code, tissue in TISSUE_OF_CODE.items():
        table[code] = tissue
    return table[codes]


def brain_mask(codes) -> np.ndarray:
    """Voxels of brain labels (every code in 1..``HEAD_CODES``-1): the mask of a skull-stripped scan."""
    codes = np.asarray(codes)
    return (codes > 0) & (codes < HEAD_CODES)


def random_render(shape, modalities=MODALITIES, contrast="plausible", infant_prob=0.0, head_prob=0.5,
                  age: float | None = None) -> Compose:
    """The training render of a label map of ``shape`` under key ``label``: affine and smooth deformation, a
    Gaussian intensity per label and channel (``RandLabelContrastd``; ``age`` fixes an infant's age, else
    ``infant_prob`` draws one), partial-volume blur, thick slices, bias field and Rician noise into ``image``."""
    return Compose([
        RandAffined("label", prob=1.0, rotate_range=(0.26,) * 3, scale_range=(0.12,) * 3, shear_range=(0.02,) * 6,
                    mode="nearest", padding_mode="zeros"),
        RandSmoothDeformd("label", spatial_size=shape, rand_size=(8, 8, 8), prob=1.0, def_range=0.03,
                          grid_mode="nearest", field_mode="trilinear"),
        RandLabelContrastd("label", modalities=modalities, contrast=contrast, infant_prob=infant_prob, age=age,
                           head_prob=head_prob),
        RandGaussianSmoothd("image", sigma_x=(0.0, 1.0), sigma_y=(0.0, 1.0), sigma_z=(0.0, 1.0), prob=0.5),
        RandThickSlicesd("image", thickness=(2.0, 5.0), prob=0.2),
        RandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.8),
        RandRicianNoised("image", std=0.06, prob=0.8, sample_std=True, channel_wise=True),
    ])


def fixed_render(scenario: str, modalities=MODALITIES) -> Compose:
    """The render of one of ``SCENARIOS``: fixed tissue means, no deformation; the bias field's shape, the labels'
    jitter and the noise still drawn."""
    s = SCENARIOS[scenario]
    sigma = (s["blur"], s["blur"])
    transforms = [RandLabelContrastd("label", modalities=modalities, means=[s["means"][m] for m in modalities],
                                     std=(0.03, 0.03), jitter=0.02),
                  RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=1.0)]
    if s["slices"]:
        transforms.append(RandThickSlicesd("image", thickness=(s["slices"], s["slices"]), prob=1.0))
    transforms += [RandBiasFieldd("image", degree=3, coeff_range=(s["bias"], s["bias"]), prob=1.0),
                   RandRicianNoised("image", std=s["noise"], prob=1.0, sample_std=False, channel_wise=True)]
    return Compose(transforms)


def render_subject(labels: torch.Tensor, render: Compose, strip: bool, seed: int) -> dict:
    """``render`` the label map ``labels`` with ``seed``; ``strip``: zero outside the brain (after the noise, as a
    skull-stripping tool leaves it). Returns ``image`` (C, ...), ``label`` (merged targets), ``mask`` (brain), all
    cropped to the head (or the brain) with an 8-voxel margin, and ``affine``: the map's (the random affine is
    augmentation, not a move) shifted to the crop by ``CropForegroundd``."""
    render.set_random_state(seed=seed)
    d = render({"label": labels})
    codes = np.asarray(d["label"][0])
    mask = brain_mask(codes)
    image = np.asarray(d["image"], dtype=np.float32).clip(min=0.0) * (mask if strip else 1.0)
    affine = getattr(labels, "affine", torch.eye(4))
    out = {key: MetaTensor(value, affine=affine) for key, value in
           (("image", image), ("label", merge_labels(codes)[None]), ("mask", mask[None].astype(np.uint8)))}
    out["head"] = (codes > 0)[None]
    out = CropForegroundd(["image", "label", "mask"], source_key="head", margin=8, allow_smaller=True)(out)
    return {"image": out["image"].numpy(), "label": out["label"][0].numpy(), "mask": out["mask"][0].numpy(),
            "affine": out["image"].affine.numpy()}


def subject_entry(subject: str, modalities=MODALITIES) -> dict:
    """The datalist entry of a saved subject (file names): ``<subject>_<MODALITY>.nii`` per modality, ``_label`` and
    ``_mask`` (.nii.gz)."""
    return {"subject": subject, **{m: f"{subject}_{m.upper()}.nii" for m in modalities},
            "label": f"{subject}_label.nii.gz", "mask": f"{subject}_mask.nii.gz"}


def save_subject(folder: Path, subject: str, rendered: dict, modalities=MODALITIES) -> dict:
    """Write a rendered subject into ``folder`` (images float32, label and mask uint8); its ``subject_entry``."""
    entry = subject_entry(subject, modalities)
    for c, modality in enumerate(modalities):
        save_nifti(rendered["image"][c], rendered["affine"], folder / entry[modality])
    for key in ("label", "mask"):
        save_nifti(rendered[key].astype(np.uint8), rendered["affine"], folder / entry[key])
    return entry


def cohort_ages(count: int, infant_fraction: float = 0.8, seed: int = 0) -> list[float | None]:
    """The contrast ages of ``count`` cohort subjects, in a random order (``seed``): ``RandLabelContrastd``'s infant
    age (0 newborn, 0.5 isointense, 1 adult-like) or ``None`` (an adult). The centres of ``count`` equal strata of
    [0, 1): one below ``infant_fraction`` is an infant of that value / ``infant_fraction``, the others adults, so the
    ages are evenly spread, and a cohort of 3 or more (with a fraction of 0.8) holds an infant whose T1 WM is darker
    than its GM and an adult. The tissue intensities of each age are still drawn per subject (``tissue_means``)."""
    fraction = float(infant_fraction)
    values = (np.arange(count) + 0.5) / max(count, 1)
    ages = [float(v / fraction) if v < fraction else None for v in values]
    return [ages[i] for i in np.random.default_rng([int(seed), 25]).permutation(count)]


def cohort_subject(index: int, render: int, age: float | None) -> str:
    """A cohort subject's id: its map and render, then ``age`` in hundredths (``m02r0_age035``) or ``adult``."""
    return f"m{index:02d}r{render}_" + ("adult" if age is None else f"age{round(100 * age):03d}")


def render_jobs(
    maps,
    renders_per_map: int = 4,
    validation: tuple[str, ...] = ("adult", "whole_head"),
    testing: tuple[str, ...] = ("adult", "whole_head"),
    seed: int = 0,
    cohort: bool = False,
    infant_prob: float = 0.0,
) -> list[tuple]:
    """The subjects of a dataset rendered from the label maps ``maps`` (indices), as ``(split, subject, map index,
    scenario, render seed)``: ``renders_per_map`` random renders (scenario ``random``) of every map but ``TEST_MAPS``
    and ``VALIDATION_MAPS`` for training, the validation and test maps in each of the named ``SCENARIOS``. With
    ``cohort``, the training renders are ``(split, subject, map index, "cohort", render seed, age)``, their ages
    ``cohort_ages`` (a fraction ``infant_prob`` of infants) in map order."""
    train_maps = [i for i in maps if i not in TEST_MAPS and i not in VALIDATION_MAPS]
    renders = [(i, r, seed * 1000 + i * 10 + r) for i in train_maps for r in range(renders_per_map)]
    if cohort:
        ages = cohort_ages(len(renders), infant_prob, seed)
        jobs = [("training", cohort_subject(i, r, age), i, "cohort", render_seed, age)
                for (i, r, render_seed), age in zip(renders, ages)]
    else:
        jobs = [("training", f"m{i:02d}r{r}", i, "random", render_seed) for i, r, render_seed in renders]
    jobs += [(split, f"m{i:02d}_{name}", i, name, seed * 1000 + 500 + i)
             for split, held, names in (("validation", VALIDATION_MAPS, validation), ("testing", TEST_MAPS, testing))
             for i in held if i in maps for name in names]
    return jobs


def write_job(job: tuple, folder, anatomy_dir=ANATOMY_DIR, contrast="plausible", infant_prob=0.0,
              strip_prob=0.5, head_prob=0.5) -> dict:
    """Render and save one subject of ``render_jobs`` into ``folder``; its datalist entry. Random and cohort renders
    use ``random_render`` (a cohort subject with its age; skull-stripped with probability ``strip_prob``), the others
    ``fixed_render``."""
    torch.set_num_threads(1)  # one subject per process
    _, subject, index, scenario, seed, *age = job
    labels = read_label_map(map_path(index, anatomy_dir))
    if scenario in ("random", "cohort"):
        ages = {"age": age[0], "infant_prob": 0.0} if scenario == "cohort" else {"infant_prob": infant_prob}
        render = random_render(labels.shape[1:], contrast=contrast, head_prob=head_prob, **ages)
        strip = bool(np.random.default_rng(seed).uniform() < strip_prob)
    else:
        render, strip = fixed_render(scenario), SCENARIOS[scenario]["strip"]
    return save_subject(Path(folder), subject, render_subject(labels, render, strip, seed))


def write_jobs(jobs, folder, **options) -> list[dict]:
    """``write_job`` (with ``options``) for each of ``jobs`` into ``folder``, one process per CPU core; the datalist
    entries in order."""
    return map_in_processes(functools.partial(write_job, folder=str(folder), **options), jobs, "spawn")


def write_dataset(
    out_dir,
    renders_per_map: int = 4,
    contrast: str = "plausible",
    infant_prob: float = 0.0,
    strip_prob: float = 0.5,
    validation: tuple[str, ...] = ("adult", "whole_head"),
    testing: tuple[str, ...] = ("adult", "whole_head"),
    seed: int = 0,
    anatomy_dir=ANATOMY_DIR,
    head_prob: float = 0.5,
    cohort: bool = False,
) -> str:
    """Render a dataset from the label maps into ``out_dir`` (once: an identical complete one is kept) and return
    the path of its MONAI datalist ``datalist.json`` (training, validation and testing lists), one process per core.

    The subjects are ``render_jobs``'; both modalities, the label and the brain mask are written for every subject
    and a run reads what it needs. ``contrast``, ``infant_prob``, ``head_prob``: ``RandLabelContrastd``'s.
    ``cohort`` (a flag, or ``"true"``/``"false"`` as a command line passes it): the training renders' ages spread
    evenly from newborn to adult, ``infant_prob`` of them infants (``cohort_ages``), instead of drawn at random.
    """
    cohort = as_bool(cohort)
    indices = map_indices(anatomy_dir)
    if not indices:
        raise InputError(f"no label maps seg_NN.nii.gz in {anatomy_dir}")
    jobs = render_jobs(indices, renders_per_map, validation, testing, seed, cohort, infant_prob)
    arguments = {"renders_per_map": renders_per_map, "contrast": contrast, "infant_prob": infant_prob,
                 "strip_prob": strip_prob, "validation": list(validation), "testing": list(testing), "seed": seed,
                 "maps": indices, "head_prob": head_prob, "renderer": RENDERER_VERSION,
                 **({"cohort": True} if cohort else {})}  # recorded only when set: earlier datasets stay complete

    def write(folder):
        entries = write_jobs(jobs, folder, anatomy_dir=str(anatomy_dir), contrast=contrast, infant_prob=infant_prob,
                             strip_prob=strip_prob, head_prob=head_prob)
        lists = {"training": [], "validation": [], "testing": []}
        for (split, *_), entry in zip(jobs, entries):
            lists[split].append(entry)
        write_json(Path(folder) / "datalist.json", lists)
        return [e["subject"] for e in entries]

    write_once(out_dir, "anatomy", arguments, write)
    return str(Path(out_dir) / "datalist.json")


__all__ = ["ANATOMY_DIR", "SCENARIOS", "TEST_MAPS", "TISSUE_OF_CODE", "VALIDATION_MAPS", "brain_mask", "cohort_ages",
           "cohort_subject", "fixed_render", "map_path", "merge_labels", "random_render", "read_label_map",
           "render_jobs", "render_subject", "save_subject", "subject_entry", "write_dataset", "write_job", "write_jobs"]
