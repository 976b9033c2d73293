"""Seeded procedural brain-MRI phantoms (SynthSeg-style): ``make_subject`` draws one, ``write_iseg`` and
``write_mrbrains13`` write datasets of them in the iSEG-2017 and MRBrainS13 layouts (once, ``scripts.data.writing``).

A subject is a random brain (``scripts.data.phantom_anatomy``) imaged by a random scanner
(``scripts.data.phantom_scanner``); every seed gives a different one, and the same arguments identical arrays.

``cohort=True`` (infant preset only) makes subjects differ like a 0-12 month cohort: an age drives the WM contrast
from neonatal (WM darker than GM in T1, brighter in T2) through isointense to adult-like, and scanner (scale, noise,
bias, slice thickness) and anatomy (size, ventricles, cortex, sulci) vary over wider ranges. Cohort parameters come
from their own generator, so the default subjects stay exactly as they are.

Opt-in options (each draws from its own generator too; the default outputs are unchanged and the dataset marker
records an option only when it is set):

* ``head=True``: a full head around a smaller brain (60-70 % of the field of view left-right and front-back, set
  higher up so that a neck reaches the inferior edge): scalp skin and muscle, subcutaneous fat, skull tables with
  marrow (diploe) between them, eyes in orbital fat, a face, and in the neck the spinal cord in CSF inside the
  vertebral canal and vertebral bodies (``phantom_anatomy.HEAD_TISSUES``). Both presets then have a cerebellum
  (code 7) and a brainstem (code 8). Head tissues have their own intensities per modality, the bias field covers the
  whole head, the background is Rician noise (Rayleigh, not 0), half the subjects get a Nyquist ghost and half a small
  negative offset (values below 0). Labels keep everything outside the brain as background (0).
  As the brain fills 60-70 % of the field of view, pick one that suits the age: the iSEG grid at 1 mm (144 x 192 mm)
  for infants, about 190-240 mm for adults (the MRBrainS13 default is 230 mm); in a small one an adult brain is
  child-sized and its sulci and CSF spaces, which are sized in mm, take a larger share of it.
* ``randomize=True``: SynthSeg-style domain randomisation of the intensities (``draw_randomized``): per subject and
  modality random tissue means (half the subjects around the preset, half anywhere in [0.02, 1], so any order of
  CSF/GM/WM), standard deviations, bias strength, noise, gamma and overall scale; blur and, for 60 % of subjects, thick
  slices (1.5-6 voxels) along a random axis. The anatomy (labels) is that of the subject without the option.
* ``folded=True``: curved, folded gyri (as in the cohort) instead of radial sulcal sheets, for either preset. The
  adult preset already has adult proportions: wider (half-width 0.7-1.4 mm vs 0.4-0.8) and deeper sulci, a wider
  fissure, ventricles 1.7 times as wide, a cerebellum under a CSF tentorium, a brainstem and WM lesions.
* ``preset="adult"`` for ``write_iseg``: adult anatomy with T1 and T2 images (``MEAN_INTENSITY["adult"]["t2"]``).
  iSEG has no cerebellum or brainstem label: the label file stores them as tissue like every other structure
  (``STRUCTURE_TO_TISSUE``: cerebellum -> GM 150, brainstem -> WM 250), which ``label_mapping("iseg")`` maps to GM
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

import functools
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from ..checks import as_bool
from .phantom_anatomy import STRUCTURE_TO_TISSUE, draw_structures
from .phantom_scanner import MEAN_INTENSITY, PRESETS, draw_cohort, draw_randomized, synthesize_images
from .writing import map_in_processes, save_nifti, write_once

FLAGS = ("cohort", "head", "randomize", "folded")  # write_dataset's on/off options
_STRUCTURE_TO_TESTING_LABEL = np.array([0, 2, 2, 3, 3, 1, 1, 0, 0], np.uint8)  # MRBrainS13 LabelsForTesting
_ISEG_LABEL_VALUES = np.array([0, 10, 150, 250], np.uint8)


def make_subject(shape=(144, 192, 256), preset="infant", seed=0, spacing=(1.0, 1.0, 1.0), cohort=False,
                 head=False, randomize=False, folded=False, modalities=None) -> dict:
    """Draw one phantom subject.

    Returns ``{"images": {modality: float32 array of shape}, "label": uint8 (0 bg, 1 CSF, 2 GM, 3 WM),
    "structures": uint8 MRBrainS13 codes (0 bg, 1 cortical GM, 2 basal ganglia, 3 WM, 4 WM lesions,
    5 extracerebral CSF, 6 ventricles, 7 cerebellum, 8 brainstem)}``. Modalities are ``PRESETS[preset]``;
    axis 0 runs left-right, axis 1 posterior-anterior, axis 2 inferior-superior; ``spacing`` is in mm.
    The same arguments give identical arrays. ``cohort=True`` (infant only) draws a subject of a varied infant
    cohort (``phantom_scanner.draw_cohort``) and adds its parameters as ``"cohort"``. Cerebellum and brainstem map to
    GM and WM in ``"label"`` (the iSEG layout stores that label; MRBrainS13 keeps codes 7 and 8, ignored there).

    Options (module docstring): ``head=True`` adds ``"head"`` (uint8 codes of ``phantom_anatomy.HEAD_TISSUES``, 0 in
    the brain and the air) and renders the head with a noisy, possibly negative background; ``randomize=True``
    randomises the intensities and adds their parameters as ``"randomized"``; ``folded=True`` folds the cortex.
    ``modalities``: names from ``MEAN_INTENSITY[preset]`` (default ``PRESETS[preset]``; the adult preset also has
    ``"t2"``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if cohort and preset != "infant":
        raise ValueError("cohort=True needs the infant preset")
    modalities = PRESETS[preset] if modalities is None else tuple(modalities)
    unknown = [m for m in modalities if m not in MEAN_INTENSITY[preset]]
    if unknown or not modalities:
        raise ValueError(f"modalities {unknown or modalities} not available for preset {preset!r}; "
                         f"choose from {sorted(MEAN_INTENSITY[preset])}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    rng = np.random.default_rng(seed)
    parameters = draw_cohort(seed) if cohort else None
    head_rng = np.random.default_rng([int(seed), 2]) if head else None
    fold_seed = int(np.random.default_rng([int(seed), 4]).integers(2**31)) if folded else None
    randomized = draw_randomized(seed, preset, modalities) if randomize else None
    structures, head_map = draw_structures(rng, shape, spacing, preset, parameters, fold_seed, head_rng)
    images = synthesize_images(rng, structures, spacing, preset, modalities, parameters, head_map, head_rng,
                               randomized)
    subject = {"images": images, "label": STRUCTURE_TO_TISSUE[structures], "structures": structures}
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
    return write_once(out_dir, "phantom iseg", arguments,
                      functools.partial(_write_subjects, _write_iseg_subject, arguments))


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
    return write_once(out_dir, "phantom mrbrains13", arguments,
                      functools.partial(_write_subjects, _write_mrbrains13_subject, arguments))


def write_dataset(out_dir, layout="iseg", **kwargs) -> list[str]:
    """Write a phantom dataset with ``layout`` "iseg" (``write_iseg``: ``cohort``, ``head``, ``randomize``,
    ``folded``, ``preset`` too) or "mrbrains13" (``write_mrbrains13``: ``head``, ``randomize``, ``folded`` too).

    Written once (``writing.write_once``): a complete dataset written with the same arguments is kept as it is, one
    with other arguments is replaced, and a non-empty folder that holds no dataset the bundle wrote is refused with a
    ValueError. The flags may be ``true``/``false`` strings, as a ``--data#phantom "{cohort: false}"`` override passes them
    (not truthy).
    """
    writers = {"iseg": write_iseg, "mrbrains13": write_mrbrains13}
    if layout not in writers:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(writers)}")
    kwargs = {k: as_bool(v) if k in FLAGS else v for k, v in kwargs.items()}
    return writers[layout](out_dir, **kwargs)


def _options(**options):
    """The options that are set, as ``{name: True}`` (for the marker: unset options are not recorded)."""
    return {name: True for name, value in options.items() if value}


def subject_seed(seed, index):
    """Seed of subject ``index`` in a dataset drawn with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_subjects(write_subject, arguments, folder):
    """``write_subject(index, folder, arguments)`` for the subjects 1, 2, ... of a dataset written with
    ``arguments``, one process per CPU core (each subject has its own seed, so the files are the same however many
    processes write them); the results in index order."""
    count = arguments["num_labeled"] + arguments["num_unlabeled"]
    write = functools.partial(write_subject, folder=folder, arguments=arguments)
    return map_in_processes(write, range(1, count + 1), "fork")  # fork: the workers run numpy and scipy, never torch


def _flags(arguments):
    """``make_subject``'s on/off options from a dataset's ``arguments``."""
    return {name: arguments.get(name, False) for name in FLAGS}


def _to_int16(image, signed=False):
    """Round a float image to int16: non-negative (brain voxels stay >= 1, background 0) unless ``signed`` (a head's
    background may be negative)."""
    return np.clip(np.rint(image), np.iinfo(np.int16).min if signed else 0, np.iinfo(np.int16).max).astype(np.int16)


def _write_iseg_subject(index, folder, arguments):
    """Write subject ``index`` of an iSEG-layout dataset into ``folder``; its id."""
    preset = arguments.get("preset", "infant")
    seed = subject_seed(arguments["seed"], index)
    subject = make_subject(arguments["shape"], preset, seed, modalities=("t1", "t2"), **_flags(arguments))
    name = f"subject-{index}"
    head = arguments.get("head", False)
    volumes = {"T1": _to_int16(subject["images"]["t1"], head), "T2": _to_int16(subject["images"]["t2"], head)}
    if index <= arguments["num_labeled"]:
        volumes["label"] = _ISEG_LABEL_VALUES[subject["label"]]
    for suffix, volume in volumes.items():
        nib.save(nib.AnalyzeImage(volume, np.eye(4)), folder / f"{name}-{suffix}.hdr")
    return name


def _write_mrbrains13_subject(index, folder, arguments):
    """Write subject ``index`` of a MRBrainS13-layout dataset into ``folder``; its folder."""
    seed, spacing = subject_seed(arguments["seed"], index), arguments["spacing"]
    subject = make_subject(arguments["shape"], "adult", seed, spacing, **_flags(arguments))
    labeled = index <= arguments["num_labeled"]
    subject_dir = Path("TrainingData" if labeled else "TestData") / str(index)
    volumes = {name: _to_int16(subject["images"][modality], arguments.get("head", False))
               for name, modality in (("T1", "t1"), ("T1_IR", "t1_ir"), ("T2_FLAIR", "flair"))}
    if labeled:
        volumes["LabelsForTraining"] = subject["structures"]
        volumes["LabelsForTesting"] = _STRUCTURE_TO_TESTING_LABEL[subject["structures"]]
    (folder / subject_dir).mkdir(parents=True)
    affine = np.diag([*spacing, 1.0])
    for name, volume in volumes.items():
        save_nifti(volume, affine, folder / subject_dir / f"{name}.nii")
    return subject_dir.as_posix()


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
            save_nifti(volume, affine, folder / f"{name}.nii.gz")
        return [f"{name}.nii.gz" for name in volumes]

    return write_once(out_dir, "phantom subject", arguments, write)


if __name__ == "__main__":
    fire.Fire({"iseg": write_iseg, "mrbrains13": write_mrbrains13, "subject": _write_subject})
