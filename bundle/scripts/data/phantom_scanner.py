"""The phantoms' contrast and scanner model: images of a structure map (``scripts.data.phantom_anatomy``).

Intensities follow SynthSeg: per-structure Gaussians per modality around preset means (``MEAN_INTENSITY``), a smooth
intensity modulation of WM (myelination), a multiplicative bias field, partial-volume blur with random per-axis
resolution, Rician noise, and a background of exactly 0 (with a head: its own tissue intensities, a Rician
background, maybe a Nyquist ghost and a negative offset). ``draw_cohort`` draws the parameters of a varied infant
cohort (age-driven WM contrast, scanner and anatomy sizes), ``draw_randomized`` SynthSeg-style domain-randomised
intensities; each from its own generator.
"""

import numpy as np
from scipy import ndimage

from .phantom_anatomy import BRAINSTEM, CORTEX, OUTER_CSF, VENTRICLE, WM
from .smooth_fields import extent_mm, resize_axis, smooth_noise

PRESETS = {"infant": ("t1", "t2"), "adult": ("t1", "t1_ir", "flair")}  # each preset's modalities


# Preset mean intensity per structure code:
#   (bg, cortical GM, deep GM, WM, WM lesion, extracerebral CSF, ventricle, cerebellum, brainstem)
MEAN_INTENSITY = {
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


def synthesize_images(rng, structures, spacing, preset, modalities, cohort=None, head=None, head_rng=None,
                      randomized=None):
    """One float32 image per modality of ``modalities`` (names in ``MEAN_INTENSITY[preset]``) of the structure map
    ``structures`` (voxels ``spacing`` mm): Gaussian tissue intensities, WM modulation, bias, blur, noise.

    ``cohort``: parameters of ``draw_cohort`` (tissue means, scanner) or None. There the modulation pulls WM towards
    its neonatal (unmyelinated) intensity instead of towards cortical GM. ``head``: head map
    (``phantom_anatomy.draw_structures``) or None; with one, head tissues get their own intensities
    (``_head_means``, drawn from ``head_rng``), nothing is masked (Rician background), and ``head_rng`` decides on a
    Nyquist ghost and a negative offset. ``randomized``: parameters of ``draw_randomized``, which replace the preset's
    (and the cohort's) intensities and scanner, with thick slices resampled and a gamma.
    """
    shape = structures.shape
    extent = extent_mm(shape, spacing)
    brain = structures > 0
    # intensity classes: structure codes 0..8, then head tissues 9..15
    tissue = structures if head is None else np.where(head > 0, head + BRAINSTEM, structures).astype(np.uint8)
    myelination = np.clip(0.5 + 0.5 * smooth_noise(rng, shape, extent, 40.0), 0, 1)
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
    for modality in modalities:
        if randomized is not None:
            parameters = randomized["modalities"][modality]
            means, stds = np.array(parameters["means"], np.float32), np.array(parameters["stds"], np.float32)
        else:
            if cohort is None:
                means = np.array(MEAN_INTENSITY[preset][modality], np.float32)
                means *= rng.uniform(0.85, 1.15) * (1 + 0.03 * rng.standard_normal(len(means))).astype(np.float32)
            else:
                means = np.array(cohort["means"][modality], np.float32)
                means *= (1 + 0.03 * rng.standard_normal(len(means))).astype(np.float32)
            if head is not None:
                means = np.concatenate([means, _head_means(head_rng, means, preset, modality)])
            stds = means * rng.uniform(0.04, 0.10, len(means)).astype(np.float32)
        pull = np.zeros_like(means)
        towards = means[CORTEX] if cohort is None or randomized else cohort["neonatal_wm"][modality]
        pull[WM] = wm_pull * (towards - means[WM])
        image = means[tissue] + stds[tissue] * rng.standard_normal(shape, np.float32)
        image += myelination * pull[tissue]
        if randomized is None:
            bias = rng.uniform(0.02, 0.08) if cohort is None else cohort["bias"]
        else:
            bias = parameters["bias"]
        image *= np.exp(bias * smooth_noise(rng, shape, extent, 80.0))  # bias field
        image = ndimage.gaussian_filter(image, blur_sigma)
        if randomized is None:
            noise = rng.uniform(0.01, 0.04) if cohort is None else cohort["noise"]
            noise_std = noise * (means[CORTEX] + means[WM]) / 2
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
    """Mean intensities of the head tissues (codes 1..7 of ``phantom_anatomy.HEAD_TISSUES``) from the structure
    means ``means``: ``_HEAD_INTENSITY`` times the cortical GM mean, each jittered by up to 15 %; eyes and spinal CSF
    like CSF, the cord like the brainstem."""
    soft_fat_bone_marrow = np.array(_HEAD_INTENSITY[preset][modality]) * means[CORTEX] * rng.uniform(0.85, 1.15, 4)
    fluids = [means[OUTER_CSF], means[BRAINSTEM], means[OUTER_CSF]]
    return np.array([*soft_fat_bone_marrow, *fluids], np.float32)


def _thick_slices(image, axis, step):
    """Resample ``image`` along ``axis`` to slices ``step`` voxels apart and back (linear): thick-slice look."""
    size = image.shape[axis]
    slices = max(2, int(round((size - 1) / step)) + 1)
    return resize_axis(resize_axis(image, slices, axis), size, axis) if slices < size else image


def draw_randomized(seed, preset, modalities):
    """Domain-randomised intensity and scanner parameters (``randomize=True``), from their own generator.

    Per modality, half the subjects take the preset's relative means (``MEAN_INTENSITY``, ``_HEAD_INTENSITY``) each
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
            relative = np.array(MEAN_INTENSITY[preset][modality], float)
            relative = relative / relative.max() * np.exp(rng.uniform(-0.4, 0.4, len(relative)))
            relative[VENTRICLE] = relative[OUTER_CSF]
            head = (np.array(_HEAD_INTENSITY[preset][modality]) * relative[CORTEX]
                    * np.exp(rng.uniform(-0.4, 0.4, 4)))
        else:
            csf, gm, wm, lesion = rng.uniform(0.02, 1.0, 4)
            relative = np.array([0.0, gm, gm + rng.uniform(0.0, 0.7) * (wm - gm), wm, lesion, csf, csf,
                                 gm + rng.uniform(-0.2, 0.5) * (wm - gm), wm + rng.uniform(-0.4, 0.0) * (wm - gm)])
            head = np.array([*rng.uniform(0.05, 1.0, 2), rng.uniform(0.0, 0.25), rng.uniform(0.05, 1.0)])
        relative[0] = 0.0
        means = np.concatenate([relative, head, relative[[OUTER_CSF, BRAINSTEM, OUTER_CSF]]])
        scale = np.exp(rng.uniform(np.log(100.0), np.log(3000.0)))
        stds = rng.uniform(0.01, 0.08, len(means)) * scale
        stds[0] = 0.0
        parameters["modalities"][modality] = {
            "preset_like": preset_like, "scale": scale, "means": means * scale, "stds": stds,
            "bias": rng.uniform(0.0, 0.35), "noise": rng.uniform(0.005, 0.06), "gamma": np.exp(rng.uniform(-0.4, 0.4))}
    return _to_builtin(parameters)


def draw_cohort(seed):
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
        gm = MEAN_INTENSITY["infant"][modality][CORTEX] * np.exp(rng.uniform(-np.log(2), np.log(2)))
        neonatal, grown = _COHORT_WM_RATIO[modality]
        wm = gm * (neonatal + (grown - neonatal) * age)
        csf = gm * rng.uniform(*_COHORT_CSF_RATIO[modality])
        deep = gm + deep_fraction * (wm - gm)
        means[modality] = [0.0, gm, deep, wm, wm, csf, csf, gm, wm]  # structure codes, see MEAN_INTENSITY
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

