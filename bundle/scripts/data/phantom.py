"""Seeded procedural brain-MRI phantoms (SynthSeg-style), written in the iSEG-2017 and MRBrainS13 layouts.

A subject is drawn in a "template space" measured in mm: an ellipsoidal brain under a shell of extracerebral CSF,
a folded cortical ribbon (sulci are the zero sheets of random band-limited noise on the brain surface), a WM core,
deep GM nuclei, curved lateral ventricles and, for adults, cerebellum, brainstem and small periventricular WM lesions.
The voxel grid maps into that space through a small random rotation and a smooth random elastic displacement, so every
seed gives a different brain. Smooth fields are computed on a coarse grid (``_COARSE_MM``) and upsampled linearly;
tissue boundaries are thresholded at full resolution. Intensities follow SynthSeg: per-structure Gaussians per
modality around preset means, a smooth intensity modulation of WM (myelination), a multiplicative bias field,
partial-volume blur with random per-axis resolution, Rician noise, and a background of exactly 0.

``cohort=True`` (infant preset only) makes subjects differ like a 0-12 month cohort: an age drives the WM contrast
from neonatal (WM darker than GM in T1, brighter in T2) through isointense to adult-like, and scanner (scale, noise,
bias, slice thickness) and anatomy (size, ventricles, cortex, sulci) vary over wider ranges. Cohort parameters come
from their own generator, so the default subjects stay exactly as they are.

Opt-in options (each draws from its own generator too; the default outputs are unchanged and the dataset marker
records an option only when it is set):

* ``head=True``: a full head around a smaller brain (60-70 % of the field of view left-right and front-back, set
  higher up so that a neck reaches the inferior edge): scalp skin and muscle, subcutaneous fat, skull tables with
  marrow (diploe) between them, eyes in orbital fat, a face, and in the neck the spinal cord in CSF inside the
  vertebral canal and vertebral bodies (``HEAD_TISSUES``). Both presets then have a cerebellum (code 7) and a
  brainstem (code 8). Head tissues have their own intensities per modality (``_HEAD_INTENSITY``), the bias field
  covers the whole head, the background is Rician noise (Rayleigh, not 0), half the subjects get a Nyquist ghost and
  half a small negative offset (values below 0). Labels keep everything outside the brain as background (0).
  As the brain fills 60-70 % of the field of view, pick one that suits the age: the iSEG grid at 1 mm (144 x 192 mm)
  for infants, about 190-240 mm for adults (the MRBrainS13 default is 230 mm); in a small one an adult brain is
  child-sized and its sulci and CSF spaces, which are sized in mm, take a larger share of it.
* ``randomize=True``: SynthSeg-style domain randomisation of the intensities (``_draw_randomized``): per subject and
  modality random tissue means (half the subjects around the preset, half anywhere in [0.02, 1], so any order of
  CSF/GM/WM), standard deviations, bias strength, noise, gamma and overall scale; blur and, for 60 % of subjects, thick
  slices (1.5-6 voxels) along a random axis. The anatomy (labels) is that of the subject without the option.
* ``folded=True``: curved, folded gyri (as in the cohort) instead of radial sulcal sheets, for either preset. The
  adult preset already has adult proportions: wider (half-width 0.7-1.4 mm vs 0.4-0.8) and deeper sulci, a wider
  fissure, ventricles 1.7 times as wide, a cerebellum under a CSF tentorium, a brainstem and WM lesions.
* ``preset="adult"`` for ``write_iseg``: adult anatomy with T1 and T2 images (``_MEAN_INTENSITY["adult"]["t2"]``).
  iSEG has no cerebellum or brainstem label: the label file stores them as tissue like every other structure
  (``_STRUCTURE_TO_TISSUE``: cerebellum -> GM 150, brainstem -> WM 250), which ``label_mapping("iseg")`` maps to GM
  and WM; they are not excluded. In the MRBrainS13 layout they keep codes 7 and 8, which
  ``label_mapping("mrbrains13")`` maps to the ignore value.

CLI (from the bundle root)::

    python -m scripts.data.phantom iseg --out_dir data/iseg --num_labeled 2 --num_unlabeled 1 --shape "[64,64,64]"
    python -m scripts.data.phantom iseg --out_dir data/iseg_cohort --num_labeled 2 --num_unlabeled 6 --cohort
    python -m scripts.data.phantom mrbrains13 --out_dir data/mrbrains13
    python -m scripts.data.phantom subject --out_dir /tmp/subject --preset adult --seed 3
    python -m scripts.data.phantom iseg --out_dir data/iseg_heads --head --randomize --folded
    python -m scripts.data.phantom iseg --out_dir data/iseg_adult --preset adult --head --randomize
    python -m scripts.data.phantom mrbrains13 --out_dir data/mrbrains13_heads --head --folded
"""

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from scipy import ndimage

from ..atomic import write_json
from ..checks import as_bool

TISSUES = ("background", "CSF", "GM", "WM")
PRESETS = {"infant": ("t1", "t2"), "adult": ("t1", "t1_ir", "flair")}
FLAGS = ("cohort", "head", "randomize", "folded")  # write_dataset's on/off options

# MRBrainS13 structure codes (0 is background).
_CORTEX, _DEEP_GM, _WM, _LESION, _OUTER_CSF, _VENTRICLE, _CEREBELLUM, _BRAINSTEM = range(1, 9)
_STRUCTURE_TO_TISSUE = np.array([0, 2, 2, 3, 3, 1, 1, 2, 3], np.uint8)
_STRUCTURE_TO_TESTING_LABEL = np.array([0, 2, 2, 3, 3, 1, 1, 0, 0], np.uint8)  # MRBrainS13 LabelsForTesting
_ISEG_LABEL_VALUES = np.array([0, 10, 150, 250], np.uint8)

# Preset mean intensity per structure code:
#   (bg, cortical GM, deep GM, WM, WM lesion, extracerebral CSF, ventricle, cerebellum, brainstem)
_MEAN_INTENSITY = {
    "infant": {  # 6-month isointense phase, iSEG-2017-like
        "t1": (0, 400, 420, 450, 450, 180, 180, 400, 450),
        "t2": (0, 620, 600, 570, 570, 1000, 1000, 620, 570),
    },
    "adult": {  # elderly adults, MRBrainS13-like
        "t1": (0, 600, 680, 850, 650, 250, 250, 640, 800),
        "t1_ir": (0, 450, 620, 1000, 500, 60, 60, 520, 900),
        "flair": (0, 540, 490, 430, 900, 80, 80, 520, 440),
        "t2": (0, 620, 560, 480, 900, 1400, 1400, 600, 500),  # not in PRESETS: for the iSEG layout (T1, T2)
    },
}
# Head tissues (``head=True``), codes 1..7 of ``make_subject(...)["head"]``.
HEAD_TISSUES = ("none", "skin", "fat", "bone", "marrow", "eye", "cord", "spinal_csf")
_SKIN, _FAT, _BONE, _MARROW, _EYE, _CORD, _SPINAL_CSF = range(1, 8)
# Mean intensity of skin/muscle, fat, cortical bone and marrow as multiples of the cortical GM mean; the eyes take
# the CSF mean, the spinal cord the brainstem mean and the spinal CSF the CSF mean. Infant marrow is red (darker).
_HEAD_INTENSITY = {
    "infant": {"t1": (0.8, 1.5, 0.08, 0.7), "t2": (0.6, 1.1, 0.06, 0.7)},
    "adult": {"t1": (0.7, 1.6, 0.06, 1.3), "t1_ir": (0.6, 1.2, 0.05, 1.0), "flair": (0.7, 1.4, 0.08, 1.1),
              "t2": (0.55, 1.3, 0.06, 1.0)},
}
# Largest pull of WM towards cortical GM intensity by the smooth modulation field (unmyelinated WM in infants).
_WM_MODULATION = {"infant": 0.4, "adult": 0.2}
# Cohort: T1 and T2 WM/GM mean ratios at age 0 (neonatal) and 1 (~12 months); about isointense at age 0.4.
_COHORT_WM_RATIO = {"t1": (0.72, 1.42), "t2": (1.20, 0.70)}
_COHORT_CSF_RATIO = {"t1": (0.3, 0.6), "t2": (1.3, 2.0)}  # range of the CSF/GM mean ratio

# Inner structures as (centre, semi-axes) in fractions of the brain semi-axes (LR, PA, IS); nuclei are mirrored.
_DEEP_GM_NUCLEI = (((0.30, 0.05, -0.05), (0.09, 0.20, 0.15)),  # lentiform nucleus
                   ((0.16, 0.26, 0.10), (0.06, 0.16, 0.09)),  # caudate head
                   ((0.10, -0.15, -0.02), (0.085, 0.14, 0.11)))  # thalamus
_CEREBELLUM_ELLIPSOID = ((0.0, -0.55, -0.6), (0.62, 0.38, 0.36))
_BRAINSTEM_ELLIPSOID = ((0.0, -0.1, -0.6), (0.14, 0.16, 0.5))

_COARSE_MM = 2.0  # spacing of the coarse grid that carries smooth fields
_MARKER = "phantom.json"
# the marker's "generator": the module's name before it moved into scripts.data, kept so that datasets written
# before the move are still recognised (and not refused as foreign folders)
_GENERATOR = "scripts.phantom"
_STAGING = ".phantom-staging"
_FORMAT_VERSION = 1


def make_subject(shape=(144, 192, 256), preset="infant", seed=0, spacing=(1.0, 1.0, 1.0), cohort=False,
                 head=False, randomize=False, folded=False, modalities=None) -> dict:
    """Draw one phantom subject.

    Returns ``{"images": {modality: float32 array of shape}, "label": uint8 (0 bg, 1 CSF, 2 GM, 3 WM),
    "structures": uint8 MRBrainS13 codes (0 bg, 1 cortical GM, 2 basal ganglia, 3 WM, 4 WM lesions,
    5 extracerebral CSF, 6 ventricles, 7 cerebellum, 8 brainstem)}``. Modalities are ``PRESETS[preset]``;
    axis 0 runs left-right, axis 1 posterior-anterior, axis 2 inferior-superior; ``spacing`` is in mm.
    The same arguments give identical arrays. ``cohort=True`` (infant only) draws a subject of a varied infant
    cohort (see ``_draw_cohort``) and adds its parameters as ``"cohort"``. Cerebellum and brainstem map to GM and WM
    in ``"label"`` (the iSEG layout stores that label; MRBrainS13 keeps codes 7 and 8, which are ignored there).

    Options (module docstring): ``head=True`` adds ``"head"`` (uint8 codes of ``HEAD_TISSUES``, 0 in the brain and
    the air) and renders the head with a noisy, possibly negative background; ``randomize=True`` randomises the
    intensities and adds their parameters as ``"randomized"``; ``folded=True`` folds the cortex. ``modalities``:
    names from ``_MEAN_INTENSITY[preset]`` (default ``PRESETS[preset]``; the adult preset also has ``"t2"``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if cohort and preset != "infant":
        raise ValueError("cohort=True needs the infant preset")
    modalities = PRESETS[preset] if modalities is None else tuple(modalities)
    unknown = [m for m in modalities if m not in _MEAN_INTENSITY[preset]]
    if unknown or not modalities:
        raise ValueError(f"modalities {unknown or modalities} not available for preset {preset!r}; "
                         f"choose from {sorted(_MEAN_INTENSITY[preset])}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    parameters = _draw_cohort(seed) if cohort else None
    head_rng = np.random.default_rng([int(seed), 2]) if head else None
    fold_seed = int(np.random.default_rng([int(seed), 4]).integers(2**31)) if folded else None
    randomized = _draw_randomized(seed, preset, modalities) if randomize else None
    structures, head_map = _draw_structures(rng, shape, spacing, preset, parameters, fold_seed, head_rng)
    images = _synthesize_images(rng, structures, spacing, preset, parameters, modalities, head_map, head_rng,
                                randomized)
    subject = {"images": images, "label": _STRUCTURE_TO_TISSUE[structures], "structures": structures}
    if cohort:
        subject["cohort"] = parameters
    if head:
        subject["head"] = head_map
    if randomize:
        subject["randomized"] = randomized
    return subject


def write_iseg(out_dir, num_labeled=10, num_unlabeled=13, shape=(144, 192, 256), seed=0, cohort=False, head=False,
               randomize=False, folded=False, preset="infant") -> list[str]:
    """Write phantoms in the iSEG-2017 layout and return the subject ids (``subject-N``).

    Files: ``subject-N-T1.hdr/.img`` and ``subject-N-T2.hdr/.img`` (Analyze 7.5, int16, background 0, 1 mm) for
    N in 1..num_labeled+num_unlabeled, and ``subject-N-label.hdr/.img`` (uint8, 0/10/150/250) for N <= num_labeled.
    ``cohort=True`` draws a varied infant cohort; ``head``, ``randomize``, ``folded``: see ``make_subject`` (with
    ``head`` the images have a noisy background and may hold negative values; the head is label 0).
    ``preset="adult"``: adult anatomy with adult T1 and T2 contrast; cerebellum and brainstem are written as GM (150)
    and WM (250), as the label has no code for them (with ``head``, use an adult-sized grid such as 192x240x256).
    Idempotent and safe, like ``write_dataset``.
    """
    arguments = {"num_labeled": int(num_labeled), "num_unlabeled": int(num_unlabeled),
                 "shape": [int(n) for n in shape], "seed": int(seed)}
    # options are recorded only when set, so default markers stay as they were
    arguments.update(_options(cohort=cohort, head=head, randomize=randomize, folded=folded))
    if preset != "infant":
        arguments["preset"] = str(preset)
    return _write_once(out_dir, "iseg", arguments, lambda staging: _write_iseg_files(staging, **arguments))


def write_mrbrains13(out_dir, num_labeled=5, num_unlabeled=15, shape=(240, 240, 48), seed=0,
                     spacing=(0.958, 0.958, 3.0), head=False, randomize=False, folded=False) -> list[str]:
    """Write adult phantoms in the MRBrainS13 layout and return the subject folders (``TrainingData/1``, ...).

    ``TrainingData/<i>/{T1, T1_IR, T2_FLAIR, LabelsForTraining, LabelsForTesting}.nii`` for i in 1..num_labeled
    (LabelsForTraining: codes 0..8; LabelsForTesting: 0 bg, 1 CSF, 2 GM, 3 WM with cerebellum and brainstem 0) and
    ``TestData/<i>/{T1, T1_IR, T2_FLAIR}.nii`` for the unlabelled ones, numbered after the labelled ones.
    Images are int16 NIfTI whose affine carries ``spacing``. ``head``, ``randomize``, ``folded``: see
    ``make_subject``. Idempotent and safe, like ``write_dataset``.
    """
    arguments = {"num_labeled": int(num_labeled), "num_unlabeled": int(num_unlabeled),
                 "shape": [int(n) for n in shape], "seed": int(seed), "spacing": [float(s) for s in spacing]}
    arguments.update(_options(head=head, randomize=randomize, folded=folded))
    return _write_once(out_dir, "mrbrains13", arguments, lambda staging: _write_mrbrains13_files(staging, **arguments))


def write_dataset(out_dir, layout="iseg", **kwargs) -> list[str]:
    """Write a phantom dataset with ``layout`` "iseg" (``write_iseg``: ``cohort``, ``head``, ``randomize``,
    ``folded``, ``preset`` too) or "mrbrains13" (``write_mrbrains13``: ``head``, ``randomize``, ``folded`` too).

    ``out_dir/phantom.json`` records the arguments: a complete dataset written with the same arguments is kept as
    it is (nothing is rewritten), a phantom dataset with other arguments is replaced, and a non-empty folder without
    the marker is refused with a ValueError. Files are written to a staging folder and renamed into place. The
    flags may be ``true``/``false`` strings, as a ``--phantom "{cohort: false}"`` override passes them (not truthy).
    """
    writers = {"iseg": write_iseg, "mrbrains13": write_mrbrains13}
    if layout not in writers:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(writers)}")
    kwargs = {k: as_bool(v) if k in FLAGS else v for k, v in kwargs.items()}
    return writers[layout](out_dir, **kwargs)


def _options(**options):
    """The options that are set, as ``{name: True}`` (for the marker: unset options are not recorded)."""
    return {name: True for name, value in options.items() if value}


# ----------------------------------------------------------------------------------------------------------------
# Anatomy


def _draw_structures(rng, shape, spacing, preset, cohort=None, fold_seed=None, head_rng=None):
    """Structure-code map (uint8, MRBrainS13 codes) of one random brain on the voxel grid and its head map (uint8
    ``HEAD_TISSUES`` codes, or None without ``head_rng``). ``cohort``: parameters of ``_draw_cohort`` or None;
    ``fold_seed``: seed of the cortical folding or None; ``head_rng``: generator of the head (``head=True``)."""
    extent = _extent_mm(shape, spacing)
    coarse_shape = tuple(min(n, int(np.ceil(e / _COARSE_MM)) + 1) for n, e in zip(shape, extent))
    if head_rng is None:
        room = np.maximum(extent / 2 - 6.0, extent / 4)  # keep >= 6 mm for the CSF shell and the deformation
        semi_axes = room * (rng.uniform(0.80, 0.88, 3) if cohort is None else np.array(cohort["size"]))
    else:
        layout = _head_layout(head_rng, extent, spacing, preset, cohort)
        semi_axes = layout["brain_axes"]
    q = _template_coordinates(rng, coarse_shape, extent, semi_axes.min())
    if head_rng is not None:  # the brain sits higher up in the head, the neck below it
        q = q - np.array([0.0, 0.0, layout["lift"]], q.dtype).reshape(3, 1, 1, 1)
    fields, widths = _anatomy_fields(rng, q, semi_axes, extent, preset == "adult", cohort, fold_seed, head_rng)
    if head_rng is not None:
        fields.update(_head_fields(q, fields["skull_depth"], layout))
    fields = {name: _resize_linear(field, shape) for name, field in fields.items()}
    structures = _threshold_fields(fields, widths)
    if head_rng is None:
        return structures, None
    head = _threshold_head(fields, layout)
    head[structures > 0] = 0
    return structures, head


def _extent_mm(shape, spacing):
    """Distance (mm) between the centres of the first and last voxels along each axis."""
    return np.array([(n - 1) * s for n, s in zip(shape, spacing)])


def _template_coordinates(rng, coarse_shape, extent, brain_size):
    """Template-space mm coordinates (3, *coarse_shape) of the coarse grid: small rotation + elastic displacement
    (standard deviation 2-4 % of ``brain_size``, the smallest semi-axis in mm)."""
    axes = [np.linspace(-e / 2, e / 2, n, dtype=np.float32) for n, e in zip(coarse_shape, extent)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    rotation = _rotation_matrix(rng.uniform(-np.pi / 36, np.pi / 36, 3)).astype(np.float32)
    noise = np.stack([_smooth_noise(rng, coarse_shape, extent, 25.0) for _ in range(3)])
    displacement = rng.uniform(0.02, 0.04) * brain_size * noise
    return np.einsum("ij,j...->i...", rotation, points) + displacement


def _rotation_matrix(angles):
    """Rotation matrix from three Euler angles (radians)."""
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        plane = np.eye(3)
        plane[[i, i, j, j], [i, j, i, j]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        rotation = rotation @ plane
    return rotation


def _anatomy_fields(rng, q, brain_axes, extent, adult, cohort=None, fold_seed=None, hindbrain_rng=None):
    """Smooth coarse fields (mm) and CSF cleft half-widths (mm) whose thresholds define the structures.

    ``q``: template coordinates of the coarse grid; ``brain_axes``: semi-axes of the pial envelope; ``extent``: grid
    size (mm). Positions and sizes of inner structures are fractions of ``brain_axes``. ``cohort``: parameters of
    ``_draw_cohort`` (sulcal depth, cortical thickness, ventricle scale) or None. ``fold_seed``: fold the sulci
    (``folded=True``; the cohort's own seed wins). ``hindbrain_rng``: draws a cerebellum and a brainstem for the
    infant preset too (``head=True``).
    """
    coarse_shape = q.shape[1:]
    steps = [e / max(n - 1, 1) for e, n in zip(extent, coarse_shape)]

    def varying(mean, relative_spread, lowest):  # smooth positive field around ``mean``
        return np.maximum(mean * (1 + relative_spread * _smooth_noise(rng, coarse_shape, extent, 30.0)), lowest)

    depth = -_ellipsoid_distance(q, (0, 0, 0), brain_axes)  # below the pial envelope
    shell = varying(rng.uniform(2.5, 5.0) if adult else rng.uniform(2.0, 4.5), 0.4, 0.8)
    if cohort is None:
        sulcus_depth = varying(rng.uniform(14.0, 24.0) if adult else rng.uniform(12.0, 20.0), 0.4, 3.0)
    else:
        sulcus_depth = varying(cohort["sulcus_depth"], 0.5, 3.0)
    ventricle_scale = 1.0 if cohort is None else cohort["ventricle_scale"]
    ventricle, ventricle_centres, ventricle_semi_axes, curvature = _ventricles(rng, q, brain_axes, adult,
                                                                               ventricle_scale)
    fields = {
        "depth": depth,
        "skull_depth": depth + shell,
        "sulcus_offset": _sulcus_offset(rng, q, brain_axes, steps, (cohort["fold_seed"], extent) if cohort
                                        else None if fold_seed is None else (fold_seed, extent)),
        "below_sulcus": depth - sulcus_depth,
        "midline_offset": q[0] - brain_axes[0] * rng.uniform(-0.02, 0.02),
        "below_fissure": depth - rng.uniform(0.35, 0.5) * brain_axes.min(),
        "thickness": varying(cohort["thickness"] if cohort else rng.uniform(2.4, 3.2) if adult
                             else rng.uniform(2.4, 3.4), 0.25, 1.5),
        "deep_gm": _deep_gm_distance(rng, q, brain_axes),
        "ventricle": ventricle,
    }
    widths = {"sulcus": rng.uniform(0.7, 1.4) if adult else rng.uniform(0.4, 0.8),
              "fissure": rng.uniform(0.8, 1.6) if adult else rng.uniform(0.5, 1.0)}
    if adult:
        fields["lesion"] = _lesion_distance(rng, q, brain_axes, ventricle_centres, ventricle_semi_axes, curvature)
        fields["cerebellum"] = _random_ellipsoid_distance(rng, q, brain_axes, *_CEREBELLUM_ELLIPSOID, size_jitter=0.1)
        fields["brainstem"] = _random_ellipsoid_distance(rng, q, brain_axes, *_BRAINSTEM_ELLIPSOID, size_jitter=0.1)
        widths["tentorium"] = rng.uniform(0.5, 1.0)
    elif hindbrain_rng is not None:
        fields["cerebellum"] = _random_ellipsoid_distance(hindbrain_rng, q, brain_axes, *_CEREBELLUM_ELLIPSOID,
                                                          size_jitter=0.1)
        fields["brainstem"] = _random_ellipsoid_distance(hindbrain_rng, q, brain_axes, *_BRAINSTEM_ELLIPSOID,
                                                         size_jitter=0.1)
        widths["tentorium"] = hindbrain_rng.uniform(0.3, 0.7)
    return {name: field.astype(np.float32) for name, field in fields.items()}, widths


def _ellipsoid_distance(q, centre, semi_axes):
    """Approximate signed distance (mm, negative inside) from points q (3, ...) to an axis-aligned ellipsoid."""
    centre, semi_axes = np.asarray(centre, np.float32), np.asarray(semi_axes, np.float32)
    scaled = [(q[k] - centre[k]) / semi_axes[k] for k in range(3)]
    radius = np.sqrt(sum(s * s for s in scaled))
    gradient = np.sqrt(sum((s / semi_axes[k]) ** 2 for k, s in enumerate(scaled)))
    return (radius - 1) * radius / np.maximum(gradient, 1e-6)


def _sulcus_offset(rng, q, brain_axes, steps, folding=None):
    """Signed distance (mm) to the sulcal sheets: zero set of band-limited noise over the directions from the centre.

    The noise is a sum of random plane waves evaluated at the point of the pial envelope above each voxel, so the
    sheets stand radially, cut the cortex from the surface inwards and lie about half a wavelength apart.
    ``steps``: coarse grid spacing (mm) for the gradient that turns noise values into distances. ``folding``:
    (seed, extent) or None; then the sampling point drifts with depth along a smooth random field, so the sheets
    tilt and curve (folded gyri rather than radial spokes).
    """
    radius = np.sqrt(sum((q[k] / brain_axes[k]) ** 2 for k in range(3)))
    surface_point = q / np.maximum(radius, 1e-3)
    if folding:
        seed, extent = folding
        fold_rng = np.random.default_rng(seed)
        depth = np.maximum(1 - radius, 0) * float(np.mean(brain_axes))  # about mm below the envelope
        drift = np.stack([_smooth_noise(fold_rng, q.shape[1:], extent, 20.0) for _ in range(3)])
        surface_point = surface_point + fold_rng.uniform(0.3, 0.7) * depth * drift
    wavelength = rng.uniform(15.0, 20.0)
    directions = rng.standard_normal((48, 3))
    waves = directions / np.linalg.norm(directions, axis=1, keepdims=True) * (2 * np.pi / wavelength)
    phases = rng.uniform(0, 2 * np.pi, len(waves))
    noise = np.zeros(q.shape[1:], np.float32)
    for (w0, w1, w2), phase in zip(waves.astype(np.float32), phases.astype(np.float32)):
        noise += np.cos(w0 * surface_point[0] + w1 * surface_point[1] + w2 * surface_point[2] + phase)
    slope = np.sqrt(sum(g * g for g in np.gradient(noise, *steps)))
    return noise / np.maximum(slope, 0.25 * float(slope.mean()))


def _random_ellipsoid_distance(rng, q, brain_axes, centre, semi_axes, size_jitter, shift=0.0):
    """Distance to an ellipsoid given in fractions of ``brain_axes``, its size and position randomly jittered."""
    centre_mm = (np.asarray(centre) + rng.normal(0, shift, 3)) * brain_axes
    semi_axes_mm = np.asarray(semi_axes) * brain_axes * rng.uniform(1 - size_jitter, 1 + size_jitter, 3)
    return _ellipsoid_distance(q, centre_mm, semi_axes_mm)


def _deep_gm_distance(rng, q, brain_axes):
    """Distance to the union of basal ganglia and thalami (left and right ellipsoids near the centre)."""
    distance = np.full(q.shape[1:], np.inf, np.float32)
    for centre, semi_axes in _DEEP_GM_NUCLEI:
        for side in (-1, 1):
            mirrored = np.multiply(centre, (side, 1, 1))
            nucleus = _random_ellipsoid_distance(rng, q, brain_axes, mirrored, semi_axes, size_jitter=0.15, shift=0.015)
            distance = np.minimum(distance, nucleus)
    return distance


def _ventricles(rng, q, brain_axes, adult, scale=1.0):
    """Distance to two lateral ventricles arched in the sagittal plane, with their centres, semi-axes (mm) and
    arch curvature (SI drop in mm per squared AP mm). ``scale`` widens (LR, IS) and, by its square root, lengthens
    them."""
    semi_axes = np.array([rng.uniform(0.06, 0.10) if adult else rng.uniform(0.035, 0.06),
                          rng.uniform(0.30, 0.40), rng.uniform(0.07, 0.11)]) * brain_axes
    if scale != 1.0:
        semi_axes *= (scale, np.sqrt(scale), scale)
    curvature = rng.uniform(0.6, 1.0) * brain_axes[2] / brain_axes[1] ** 2
    centres = [np.array([side * rng.uniform(0.08, 0.11), rng.uniform(-0.05, 0.05), rng.uniform(0.12, 0.18)])
               * brain_axes for side in (-1, 1)]
    distance = np.full(q.shape[1:], np.inf, np.float32)
    for centre in centres:
        arched = np.stack([q[0], q[1], q[2] + curvature * (q[1] - centre[1]) ** 2])
        distance = np.minimum(distance, _ellipsoid_distance(arched, centre, semi_axes))
    return distance, centres, semi_axes, curvature


def _lesion_distance(rng, q, brain_axes, ventricle_centres, ventricle_semi_axes, curvature):
    """Distance to a few small WM lesions (spheres of 1.5-4 mm radius) just outside the ventricles."""
    distance = np.full(q.shape[1:], np.inf, np.float32)
    for _ in range(rng.integers(3, 9)):
        ventricle = ventricle_centres[rng.integers(2)]
        along = rng.uniform(-0.8, 0.8) * ventricle_semi_axes[1]
        lateral = np.sign(ventricle[0]) * (ventricle_semi_axes[0] + rng.uniform(0.03, 0.10) * brain_axes[0])
        above = -curvature * along ** 2 + rng.uniform(-0.3, 1.0) * ventricle_semi_axes[2]
        radius = rng.uniform(1.5, 4.0)
        distance = np.minimum(distance, _ellipsoid_distance(q, ventricle + (lateral, along, above), (radius,) * 3))
    return distance


def _cleft_distance(offset, below_fundus, half_width):
    """Distance (mm) to a CSF cleft of ``half_width`` around a sheet, reaching from the surface to its fundus."""
    return np.hypot(np.maximum(np.abs(offset) - half_width, 0), np.maximum(below_fundus, 0))


def _threshold_fields(fields, widths):
    """Structure map from the full-resolution fields and cleft half-widths of ``_anatomy_fields`` (later rules win)."""
    structures = np.zeros(fields["depth"].shape, np.uint8)
    inside_skull = fields["skull_depth"] >= 0
    structures[inside_skull] = _OUTER_CSF
    brain = fields["depth"] >= 0
    inner_csf_distance = np.minimum(
        _cleft_distance(fields["sulcus_offset"], fields["below_sulcus"], widths["sulcus"]),
        _cleft_distance(fields["midline_offset"], fields["below_fissure"], widths["fissure"]))
    hindbrain = "cerebellum" in fields  # adults, and infants with a head
    if hindbrain:  # tentorium: a CSF cleft around the cerebellum
        tentorium = np.abs(fields["cerebellum"] - widths["tentorium"]) - widths["tentorium"]
        inner_csf_distance = np.minimum(inner_csf_distance, tentorium)
    structures[brain] = _WM
    structures[brain & (np.minimum(fields["depth"], inner_csf_distance) < fields["thickness"])] = _CORTEX
    structures[brain & (inner_csf_distance <= 0)] = _OUTER_CSF
    structures[brain & (fields["deep_gm"] < 0)] = _DEEP_GM
    structures[brain & (fields["ventricle"] < 0)] = _VENTRICLE
    if "lesion" in fields:
        structures[(structures == _WM) & (fields["lesion"] < 0)] = _LESION
    if hindbrain:
        structures[brain & (fields["cerebellum"] < 0)] = _CEREBELLUM
        structures[inside_skull & (fields["brainstem"] < 0)] = _BRAINSTEM
    return structures


def _head_layout(rng, extent, spacing, preset, cohort=None):
    """Random geometry (mm) of a head (``head=True``) in a field of view of ``extent`` mm.

    The brain's semi-axes are 60-70 % of the half field of view left-right and front-back (the cohort's size rescaled
    to that range) and at most 0.72-0.85 of the front-back one inferior-superior, so a tall field of view gets neck
    rather than a tall brain. ``lift``: how far the brain centre sits above the volume centre so that the top of the
    head fits. Layers (skull, fat, skin; thinner skull and more fat for infants) and the sizes and places of face,
    eyes, neck and spine are fractions of the brain size, at least one voxel thick.
    """
    fraction = rng.uniform(0.60, 0.70, 3)
    if cohort is not None:  # the cohort's brain size (0.72-0.90 of the room) rescaled to the head's field of view
        fraction = 0.65 * np.array(cohort["size"]) / 0.81
    axes = extent / 2 * fraction
    axes[2] = min(axes[2], axes[1] * rng.uniform(0.72, 0.85))
    size, voxel, adult = float(np.mean(axes[:2])), min(spacing), preset == "adult"
    skull = max(size * (rng.uniform(0.06, 0.10) if adult else rng.uniform(0.03, 0.05)), voxel)
    fat = max(size * (rng.uniform(0.03, 0.06) if adult else rng.uniform(0.04, 0.08)), voxel)
    skin = max(size * rng.uniform(0.02, 0.035), voxel)
    top = axes[2] + 5.0 + skull + fat + skin + 2 * spacing[2]  # top of the head above the brain centre
    cord = rng.uniform(0.45, 0.6) * _BRAINSTEM_ELLIPSOID[1][0] * axes[0]
    canal = cord * rng.uniform(1.5, 1.8)
    arch = canal + max(cord * rng.uniform(0.4, 0.6), voxel)
    body = cord * rng.uniform(1.3, 1.7)
    canal_y = _BRAINSTEM_ELLIPSOID[0][1] * axes[1]
    eye_radius = rng.uniform(0.14, 0.18) * axes[0]
    return {
        "brain_axes": axes, "lift": max(extent[2] / 2 - top, 0.0), "skull": skull, "fat": fat, "skin": skin,
        "face_centre": (0.0, rng.uniform(0.37, 0.43) * axes[1], -rng.uniform(1.0, 1.1) * axes[2]),
        "face_axes": tuple(rng.uniform((0.58, 0.8, 0.9), (0.66, 0.9, 1.0)) * axes),
        "neck_centre": (0.0, rng.uniform(-0.15, 0.05) * axes[1], 0.0),
        "neck_axes": (rng.uniform(0.55, 0.7) * axes[0], rng.uniform(0.6, 0.75) * axes[1], 1.0),
        "neck_top": -0.5 * axes[2],
        "eye_radius": eye_radius,
        "eye_centre": (rng.uniform(0.28, 0.36) * axes[0], rng.uniform(0.95, 1.03) * axes[1],
                       -rng.uniform(0.55, 0.65) * axes[2]),
        "cord": cord, "canal": canal, "arch": arch, "canal_y": canal_y,
        "canal_top": _BRAINSTEM_ELLIPSOID[0][2] * axes[2],
        "body": body, "body_y": canal_y + arch + body, "vertebra_top": -1.1 * axes[2] - skull,
    }


def _head_fields(q, skull_depth, layout):
    """Coarse distance fields (mm) of the head (``_head_layout``) on template coordinates ``q``; ``skull_depth``:
    the field whose positive part is the brain with its CSF shell."""
    outside = -skull_depth  # mm outside the CSF shell
    flat = np.stack([q[0], q[1], np.zeros_like(q[0])])  # for cylinders along the inferior-superior axis
    cranium = outside - (layout["skull"] + layout["fat"] + layout["skin"])
    face = _ellipsoid_distance(q, layout["face_centre"], layout["face_axes"])
    neck = np.maximum(_ellipsoid_distance(flat, layout["neck_centre"], layout["neck_axes"]), q[2] - layout["neck_top"])
    x, y, z = layout["eye_centre"]
    eyes = np.minimum(*(_ellipsoid_distance(q, (side * x, y, z), (layout["eye_radius"],) * 3) for side in (-1, 1)))
    body = layout["body"]
    vertebra = _ellipsoid_distance(flat, (0.0, layout["body_y"], 0.0), (body, 0.8 * body, 1.0))
    fields = {
        "head_outer": np.minimum(np.minimum(cranium, face), neck),
        "eyes": eyes,
        "canal": np.hypot(q[0], q[1] - layout["canal_y"]),
        "below_stem": q[2] - layout["canal_top"],
        "vertebra": np.maximum(vertebra, q[2] - layout["vertebra_top"]),
    }
    return {name: field.astype(np.float32) for name, field in fields.items()}


def _threshold_head(fields, layout):
    """Head map (uint8 ``HEAD_TISSUES`` codes) from the full-resolution fields (later rules win); the caller clears
    it inside the brain and its CSF shell."""
    outer = fields["head_outer"]
    inside = outer <= 0
    head = np.zeros(outer.shape, np.uint8)
    head[inside] = _SKIN  # skin, muscle and the other soft tissue
    head[inside & (outer > -(layout["skin"] + layout["fat"])) & (outer <= -layout["skin"])] = _FAT  # subcutaneous
    outside = -fields["skull_depth"]
    canal, below = fields["canal"], fields["below_stem"] < 0
    bone = (outside > 0) & (outside <= layout["skull"]) & ~(below & (canal < layout["canal"]))  # foramen magnum
    head[bone] = _BONE
    head[bone & (np.abs(outside - layout["skull"] / 2) < 0.2 * layout["skull"])] = _MARROW  # diploe
    head[fields["eyes"] < 0.35 * layout["eye_radius"]] = _FAT  # orbital fat
    head[fields["eyes"] < 0] = _EYE
    spine = below & (outside > 0)
    head[spine & (canal < layout["arch"])] = _BONE
    head[spine & (canal < layout["canal"])] = _SPINAL_CSF
    head[spine & (canal < layout["cord"])] = _CORD
    head[fields["vertebra"] < 0] = _BONE
    head[fields["vertebra"] < -max(1.0, 0.2 * layout["body"])] = _MARROW
    head[~inside] = 0
    return head


# ----------------------------------------------------------------------------------------------------------------
# Smooth fields


def _resize_linear(array, shape):
    """Linear 3D resize with aligned corners, equal to ``scipy.ndimage.zoom(order=1)`` and about ten times faster
    (one axis at a time, smallest outputs first; no BLAS, so no thread oversubscription on busy machines)."""
    out = np.asarray(array, np.float32)
    for axis in (2, 1, 0):
        out = _resize_axis(out, shape[axis], axis)
    return out


def _resize_axis(array, size, axis):
    """Linear resize of one axis of ``array`` to ``size`` samples, end samples aligned."""
    if array.shape[axis] == 1:
        return np.repeat(array, size, axis)
    position = np.arange(size) * ((array.shape[axis] - 1) / max(size - 1, 1))
    below = np.minimum(position.astype(np.int64), array.shape[axis] - 2)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = size
    weight = (position - below).astype(np.float32).reshape(weight_shape)
    low, high = np.take(array, below, axis), np.take(array, below + 1, axis)
    return low + weight * (high - low)


def _smooth_noise(rng, shape, extent, correlation_mm):
    """Zero-mean unit-variance random field on a grid of ``shape`` spanning ``extent`` mm, smooth over about
    ``correlation_mm``."""
    control_shape = tuple(max(2, int(np.ceil(3 * e / correlation_mm)) + 1) for e in extent)
    control = ndimage.gaussian_filter(rng.standard_normal(control_shape), sigma=1.0, mode="nearest")
    field = _resize_linear(control, shape)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Intensities


def _synthesize_images(rng, structures, spacing, preset, cohort=None, modalities=None, head=None, head_rng=None,
                       randomized=None):
    """One float32 image per modality: Gaussian tissue intensities, WM modulation, bias, blur, noise.

    ``cohort``: parameters of ``_draw_cohort`` (tissue means, scanner) or None. There the modulation pulls WM towards
    its neonatal (unmyelinated) intensity instead of towards cortical GM. ``modalities``: default ``PRESETS[preset]``.
    ``head``: head map (``_threshold_head``) or None; with one, head tissues get their own intensities
    (``_head_means``, drawn from ``head_rng``), nothing is masked (Rician background), and ``head_rng`` decides on a
    Nyquist ghost and a negative offset. ``randomized``: parameters of ``_draw_randomized``, which replace the preset's
    (and the cohort's) intensities and scanner, with thick slices resampled and a gamma.
    """
    shape = structures.shape
    extent = _extent_mm(shape, spacing)
    brain = structures > 0
    # intensity classes: structure codes 0..8, then head tissues 9..15
    tissue = structures if head is None else np.where(head > 0, head + _BRAINSTEM, structures).astype(np.uint8)
    myelination = np.clip(0.5 + 0.5 * _smooth_noise(rng, shape, extent, 40.0), 0, 1)
    if randomized is None:
        wm_pull = rng.uniform(0.2, 1.0) * _WM_MODULATION[preset]
        blur_sigma = rng.uniform(0.5, 1.0, 3)  # partial volume, voxels
        if cohort is not None and cohort["thick_axis"] is not None:
            blur_sigma[cohort["thick_axis"]] = cohort["thick_sigma"]
        elif cohort is None and rng.random() < 0.5:  # resolution randomisation: one thick-slice axis
            blur_sigma[rng.integers(3)] = rng.uniform(1.0, 1.8)
    else:
        wm_pull, blur_sigma = randomized["wm_pull"], np.array(randomized["blur_sigma"])
    if head is not None:
        ghost = head_rng.uniform(0.01, 0.05) if head_rng.random() < 0.5 else 0.0  # relative amplitude
        ghost_axis = int(head_rng.integers(2))  # phase encoding left-right or front-back
        offset = head_rng.uniform(0.5, 3.0) if head_rng.random() < 0.5 else 0.0  # in noise standard deviations
    images = {}
    for modality in PRESETS[preset] if modalities is None else modalities:
        if randomized is not None:
            parameters = randomized["modalities"][modality]
            means, stds = np.array(parameters["means"], np.float32), np.array(parameters["stds"], np.float32)
        else:
            if cohort is None:
                means = np.array(_MEAN_INTENSITY[preset][modality], np.float32)
                means *= rng.uniform(0.85, 1.15) * (1 + 0.03 * rng.standard_normal(len(means))).astype(np.float32)
            else:
                means = np.array(cohort["means"][modality], np.float32)
                means *= (1 + 0.03 * rng.standard_normal(len(means))).astype(np.float32)
            if head is not None:
                means = np.concatenate([means, _head_means(head_rng, means, preset, modality)])
            stds = means * rng.uniform(0.04, 0.10, len(means)).astype(np.float32)
        pull = np.zeros_like(means)
        towards = means[_CORTEX] if cohort is None or randomized else cohort["neonatal_wm"][modality]
        pull[_WM] = wm_pull * (towards - means[_WM])
        image = means[tissue] + stds[tissue] * rng.standard_normal(shape, np.float32)
        image += myelination * pull[tissue]
        if randomized is None:
            bias = rng.uniform(0.02, 0.08) if cohort is None else cohort["bias"]
        else:
            bias = parameters["bias"]
        image *= np.exp(bias * _smooth_noise(rng, shape, extent, 80.0))  # bias field
        image = ndimage.gaussian_filter(image, blur_sigma)
        if randomized is None:
            noise = rng.uniform(0.01, 0.04) if cohort is None else cohort["noise"]
            noise_std = noise * (means[_CORTEX] + means[_WM]) / 2
        else:
            if randomized["thick_axis"] is not None:
                image = _thick_slices(image, randomized["thick_axis"], randomized["slice_step"])
            scale = parameters["scale"]
            image = scale * (np.maximum(image, 0) / scale) ** np.float32(parameters["gamma"])
            noise_std = parameters["noise"] * scale
        if head is not None and ghost:
            image = image + ghost * np.roll(image, shape[ghost_axis] // 2, ghost_axis)
        image = np.hypot(image + noise_std * rng.standard_normal(shape, np.float32),
                         noise_std * rng.standard_normal(shape, np.float32))
        if head is None:
            images[modality] = np.where(brain, np.maximum(image, 1), 0).astype(np.float32)
        else:
            images[modality] = (image - offset * noise_std).astype(np.float32)
    return images


def _head_means(rng, means, preset, modality):
    """Mean intensities of the head tissues (codes 1..7 of ``HEAD_TISSUES``) from the structure means ``means``:
    ``_HEAD_INTENSITY`` times the cortical GM mean, each jittered by up to 15 %; eyes and spinal CSF like CSF, the
    cord like the brainstem."""
    soft_fat_bone_marrow = np.array(_HEAD_INTENSITY[preset][modality]) * means[_CORTEX] * rng.uniform(0.85, 1.15, 4)
    fluids = [means[_OUTER_CSF], means[_BRAINSTEM], means[_OUTER_CSF]]
    return np.array([*soft_fat_bone_marrow, *fluids], np.float32)


def _thick_slices(image, axis, step):
    """Resample ``image`` along ``axis`` to slices ``step`` voxels apart and back (linear): thick-slice look."""
    size = image.shape[axis]
    slices = max(2, int(round((size - 1) / step)) + 1)
    return _resize_axis(_resize_axis(image, slices, axis), size, axis) if slices < size else image


def _draw_randomized(seed, preset, modalities):
    """Domain-randomised intensity and scanner parameters (``randomize=True``), from their own generator.

    Per modality, half the subjects take the preset's relative means (``_MEAN_INTENSITY``, ``_HEAD_INTENSITY``) each
    scaled by exp(U(-0.4, 0.4)); the other half draw CSF, GM, WM and lesion means anywhere in U(0.02, 1) (any order),
    deep GM between GM and WM, cerebellum near GM, brainstem near WM, and head tissues in U(0.05, 1) (bone U(0, 0.25)).
    Means are then multiplied by a log-uniform scale of 100-3000; standard deviations 1-8 % of the scale, bias
    strength U(0, 0.35), Rician noise 0.5-6 % of the scale, gamma exp(U(-0.4, 0.4)). Shared across modalities:
    WM modulation U(0, 0.4) of the way to GM, partial-volume blur 0.3-1.2 voxels and, with probability 0.6, thick
    slices along a random axis (FWHM 1.5-6 voxels, spaced 0.6-1 FWHM). JSON-friendly values.
    """
    rng = np.random.default_rng([int(seed), 3])
    blur_sigma = rng.uniform(0.3, 1.2, 3)
    thick, axis, thickness = rng.random() < 0.6, int(rng.integers(3)), rng.uniform(1.5, 6.0)
    if thick:
        blur_sigma[axis] = thickness / 2.355
    parameters = {"wm_pull": rng.uniform(0.0, 0.4), "blur_sigma": blur_sigma, "thick_axis": axis if thick else None,
                  "slice_step": thickness * rng.uniform(0.6, 1.0), "modalities": {}}
    for modality in modalities:
        preset_like = bool(rng.random() < 0.5)
        if preset_like:
            relative = np.array(_MEAN_INTENSITY[preset][modality], float)
            relative = relative / relative.max() * np.exp(rng.uniform(-0.4, 0.4, len(relative)))
            relative[_VENTRICLE] = relative[_OUTER_CSF]
            head = (np.array(_HEAD_INTENSITY[preset][modality]) * relative[_CORTEX]
                    * np.exp(rng.uniform(-0.4, 0.4, 4)))
        else:
            csf, gm, wm, lesion = rng.uniform(0.02, 1.0, 4)
            relative = np.array([0.0, gm, gm + rng.uniform(0.0, 0.7) * (wm - gm), wm, lesion, csf, csf,
                                 gm + rng.uniform(-0.2, 0.5) * (wm - gm), wm + rng.uniform(-0.4, 0.0) * (wm - gm)])
            head = np.array([*rng.uniform(0.05, 1.0, 2), rng.uniform(0.0, 0.25), rng.uniform(0.05, 1.0)])
        relative[0] = 0.0
        means = np.concatenate([relative, head, relative[[_OUTER_CSF, _BRAINSTEM, _OUTER_CSF]]])
        scale = np.exp(rng.uniform(np.log(100.0), np.log(3000.0)))
        stds = rng.uniform(0.01, 0.08, len(means)) * scale
        stds[0] = 0.0
        parameters["modalities"][modality] = {
            "preset_like": preset_like, "scale": scale, "means": means * scale, "stds": stds,
            "bias": rng.uniform(0.0, 0.35), "noise": rng.uniform(0.005, 0.06), "gamma": np.exp(rng.uniform(-0.4, 0.4))}
    return _to_builtin(parameters)


def _draw_cohort(seed):
    """Parameters of cohort subject ``seed``, from their own generator (the default stream is left as it is).

    Age a ~ U(0, 1) (birth to ~12 months) sets the WM/GM ratios (``_COHORT_WM_RATIO``, linear in a) and, loosely,
    brain size; deep GM lies between GM and WM, CSF/GM ratios span ``_COHORT_CSF_RATIO``. Scanner: per-modality scale
    0.5-2, noise 1-6 %, bias 2-20 %, and with probability 0.7 one thick-slice axis (blur 1-2.5 voxels). Anatomy:
    ventricles x0.6-2, cortex 1.8-4 mm, sulci 8-26 mm deep and folded (``fold_seed``). Scale, bias and ventricles
    are log-uniform. JSON-friendly values.
    """
    rng = np.random.default_rng([int(seed), 1])
    age = float(rng.uniform(0, 1))
    size = np.clip(0.74 + 0.12 * age + rng.normal(0, 0.03), 0.72, 0.90) * rng.uniform(0.97, 1.03, 3)
    deep_fraction = rng.uniform(0.3, 0.7)
    means, neonatal_wm = {}, {}
    for modality in PRESETS["infant"]:
        gm = _MEAN_INTENSITY["infant"][modality][_CORTEX] * np.exp(rng.uniform(-np.log(2), np.log(2)))
        neonatal, grown = _COHORT_WM_RATIO[modality]
        wm = gm * (neonatal + (grown - neonatal) * age)
        csf = gm * rng.uniform(*_COHORT_CSF_RATIO[modality])
        deep = gm + deep_fraction * (wm - gm)
        means[modality] = [0.0, gm, deep, wm, wm, csf, csf, gm, wm]  # structure codes, see _MEAN_INTENSITY
        neonatal_wm[modality] = gm * neonatal
    fold_seed = int(rng.integers(2**31))
    thick = rng.random() < 0.7
    thick_axis, thick_sigma = int(rng.integers(3)), rng.uniform(1.0, 2.5)
    parameters = {"age": age, "size": size.tolist(), "ventricle_scale": np.exp(rng.uniform(np.log(0.6), np.log(2.0))),
                  "thickness": rng.uniform(1.8, 4.0), "sulcus_depth": rng.uniform(8.0, 26.0),
                  "means": means, "neonatal_wm": neonatal_wm, "noise": rng.uniform(0.01, 0.06),
                  "bias": np.exp(rng.uniform(np.log(0.02), np.log(0.20))), "thick_axis": thick_axis if thick else None,
                  "thick_sigma": thick_sigma, "fold_seed": fold_seed}
    return _to_builtin(parameters)


def _to_builtin(value):
    """``value`` with numpy scalars turned into Python numbers (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {key: _to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_to_builtin(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------------------------
# Writers


def _subject_seed(seed, index):
    """Seed of subject ``index`` in a dataset drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _to_int16(image, signed=False):
    """Round a float image to int16: non-negative (brain voxels stay >= 1, background 0) unless ``signed`` (a head's
    background may be negative)."""
    return np.clip(np.rint(image), np.iinfo(np.int16).min if signed else 0, np.iinfo(np.int16).max).astype(np.int16)


def _write_iseg_files(folder, num_labeled, num_unlabeled, shape, seed, cohort=False, head=False, randomize=False,
                      folded=False, preset="infant"):
    """Write the iSEG-2017 files of all subjects into ``folder``; returns the subject ids."""
    options = {"cohort": cohort, "head": head, "randomize": randomize, "folded": folded}
    return _map_subjects(_write_iseg_subject, num_labeled + num_unlabeled, folder, num_labeled, shape, seed, preset,
                         options)  # fmt: skip


def _write_iseg_subject(index, folder, num_labeled, shape, seed, preset, options):
    subject = make_subject(shape, preset, _subject_seed(seed, index), modalities=("t1", "t2"), **options)
    name = f"subject-{index}"
    head = options["head"]
    volumes = {"T1": _to_int16(subject["images"]["t1"], head), "T2": _to_int16(subject["images"]["t2"], head)}
    if index <= num_labeled:
        volumes["label"] = _ISEG_LABEL_VALUES[subject["label"]]
    for suffix, volume in volumes.items():
        nib.save(nib.AnalyzeImage(volume, np.eye(4)), folder / f"{name}-{suffix}.hdr")
    return name


def _write_mrbrains13_files(folder, num_labeled, num_unlabeled, shape, seed, spacing, head=False, randomize=False,
                            folded=False):
    """Write the MRBrainS13 files of all subjects into ``folder``; returns the subject folders."""
    options = {"head": head, "randomize": randomize, "folded": folded}
    return _map_subjects(_write_mrbrains13_subject, num_labeled + num_unlabeled, folder, num_labeled, shape, seed,
                         spacing, options)  # fmt: skip


def _write_mrbrains13_subject(index, folder, num_labeled, shape, seed, spacing, options):
    subject = make_subject(shape, "adult", _subject_seed(seed, index), spacing, **options)
    labeled = index <= num_labeled
    subject_dir = Path("TrainingData" if labeled else "TestData") / str(index)
    volumes = {name: _to_int16(subject["images"][modality], options["head"])
               for name, modality in (("T1", "t1"), ("T1_IR", "t1_ir"), ("T2_FLAIR", "flair"))}
    if labeled:
        volumes["LabelsForTraining"] = subject["structures"]
        volumes["LabelsForTesting"] = _STRUCTURE_TO_TESTING_LABEL[subject["structures"]]
    (folder / subject_dir).mkdir(parents=True)
    affine = np.diag([*spacing, 1.0])
    for name, volume in volumes.items():
        _save_nifti(volume, affine, folder / subject_dir / f"{name}.nii")
    return subject_dir.as_posix()


def _map_subjects(write_subject, count, *args):
    """``write_subject(index, *args)`` for index 1..count, in one process per CPU core (each subject has its own
    seed, so the files are the same however many processes write them); returns the results in index order."""
    workers = min(count, len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [write_subject(index, *args) for index in range(1, count + 1)]
    # fork: the children need nothing re-imported; they run numpy and scipy only, never torch
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(write_subject, range(1, count + 1), *([a] * count for a in args)))


def _save_nifti(volume, affine, path):
    """Save ``volume`` as NIfTI-1 with ``affine`` (mm) in both qform and sform."""
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _write_subject(out_dir, shape=(144, 192, 256), preset="infant", seed=0, spacing=(1.0, 1.0, 1.0), cohort=False,
                   head=False, randomize=False, folded=False) -> list[str]:
    """CLI helper: write one subject's images, label and structures (and head map) as NIfTI into ``out_dir``."""
    arguments = {"shape": [int(n) for n in shape], "preset": preset, "seed": int(seed),
                 "spacing": [float(s) for s in spacing]}
    arguments.update(_options(cohort=cohort, head=head, randomize=randomize, folded=folded))

    def write(folder):
        subject = make_subject(**arguments)
        affine = np.diag([*arguments["spacing"], 1.0])
        volumes = {**subject["images"], "label": subject["label"], "structures": subject["structures"]}
        if "head" in subject:
            volumes["head"] = subject["head"]
        for name, volume in volumes.items():
            _save_nifti(volume, affine, folder / f"{name}.nii.gz")
        return [f"{name}.nii.gz" for name in volumes]

    return _write_once(out_dir, "subject", arguments, write)


def _write_once(out_dir, layout, arguments, write_files):
    """Write a phantom dataset into ``out_dir`` unless the same one is already complete there.

    ``write_files(folder)`` writes everything into a staging folder and returns the ids; the files are then renamed
    into ``out_dir`` and the marker ``phantom.json`` is written last (atomically). Refuses a non-empty foreign folder.
    """
    out_dir = Path(out_dir)
    marker_path = out_dir / _MARKER
    request = {"generator": _GENERATOR, "version": _FORMAT_VERSION, "layout": layout, "arguments": arguments}
    previous = _read_marker(marker_path)
    if previous is None:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ValueError(f"{out_dir} is not empty and holds no phantom dataset ({_MARKER}); not writing there")
    elif _is_complete(out_dir, previous, request):
        return previous["ids"]
    else:
        _remove_listed_files(out_dir, previous.get("files", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker_path, {**request, "complete": False, "ids": [], "files": []})
    staging = out_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        ids = write_files(staging)
        files = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
        for name in files:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(marker_path, {**request, "complete": True, "ids": ids, "files": files})
    return ids


def _read_marker(path):
    """Contents of a phantom marker file, or None when there is none (or it is not ours)."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == _GENERATOR else None


def _is_complete(out_dir, marker, request):
    """Whether ``marker`` records a complete dataset for ``request`` whose files are all present."""
    return (marker.get("complete") is True and all(marker.get(key) == value for key, value in request.items())
            and all((out_dir / name).is_file() for name in marker.get("files", [])))


def _remove_listed_files(out_dir, names):
    """Delete files of an earlier phantom dataset (only inside ``out_dir``) and the folders they leave empty."""
    root = out_dir.resolve()
    for name in names:
        path = (out_dir / name).resolve()
        if path.is_relative_to(root) and path != root:
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == root or any(parent.iterdir()):
                    break
                parent.rmdir()


if __name__ == "__main__":
    fire.Fire({"iseg": write_iseg, "mrbrains13": write_mrbrains13, "subject": _write_subject})
