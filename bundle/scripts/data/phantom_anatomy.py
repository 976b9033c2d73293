"""The phantoms' procedural anatomy: a random brain (and, opt-in, a head around it) as a map of structure codes.

A subject is drawn in a "template space" measured in mm: an ellipsoidal brain under a shell of extracerebral CSF,
a folded cortical ribbon (sulci are the zero sheets of random band-limited noise on the brain surface), a WM core,
deep GM nuclei, curved lateral ventricles and, for adults, cerebellum, brainstem and small periventricular WM lesions.
The voxel grid maps into that space through a small random rotation and a smooth random elastic displacement, so every
seed gives a different brain. Smooth fields are computed on a coarse grid (``_COARSE_MM``) and upsampled linearly;
tissue boundaries are thresholded at full resolution. A head (``head_rng``) adds scalp, fat, skull with marrow, eyes,
a face and a neck with the spinal cord, as ``HEAD_TISSUES`` codes.
"""

import numpy as np

from .smooth_fields import extent_mm, resize_linear, smooth_noise

# MRBrainS13 structure codes (0 is background) and the tissue of each (0 bg, 1 CSF, 2 GM, 3 WM).
CORTEX, DEEP_GM, WM, LESION, OUTER_CSF, VENTRICLE, CEREBELLUM, BRAINSTEM = range(1, 9)
STRUCTURE_TO_TISSUE = np.array([0, 2, 2, 3, 3, 1, 1, 2, 3], np.uint8)
# Head tissues (``head=True``), codes 1..7 of the head map.
HEAD_TISSUES = ("none", "skin", "fat", "bone", "marrow", "eye", "cord", "spinal_csf")
_SKIN, _FAT, _BONE, _MARROW, _EYE, _CORD, _SPINAL_CSF = range(1, 8)

# Inner structures as (centre, semi-axes) in fractions of the brain semi-axes (LR, PA, IS); nuclei are mirrored.
_DEEP_GM_NUCLEI = (((0.30, 0.05, -0.05), (0.09, 0.20, 0.15)),  # lentiform nucleus
                   ((0.16, 0.26, 0.10), (0.06, 0.16, 0.09)),  # caudate head
                   ((0.10, -0.15, -0.02), (0.085, 0.14, 0.11)))  # thalamus
_CEREBELLUM_ELLIPSOID = ((0.0, -0.55, -0.6), (0.62, 0.38, 0.36))
_BRAINSTEM_ELLIPSOID = ((0.0, -0.1, -0.6), (0.14, 0.16, 0.5))

_COARSE_MM = 2.0  # spacing of the coarse grid that carries smooth fields


def draw_structures(rng, shape, spacing, preset, cohort=None, fold_seed=None, head_rng=None):
    """Structure-code map (uint8, MRBrainS13 codes) of one random brain on the voxel grid of ``shape`` and
    ``spacing`` (mm) and its head map (uint8 ``HEAD_TISSUES`` codes, or None without ``head_rng``). ``preset``:
    "infant" or "adult"; ``cohort``: parameters of ``phantom_scanner.draw_cohort`` or None; ``fold_seed``: seed of the
    cortical folding or None; ``head_rng``: generator of the head (``head=True``)."""
    extent = extent_mm(shape, spacing)
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
    fields = {name: resize_linear(field, shape) for name, field in fields.items()}
    structures = _threshold_fields(fields, widths)
    if head_rng is None:
        return structures, None
    head = _threshold_head(fields, layout)
    head[structures > 0] = 0
    return structures, head



def _template_coordinates(rng, coarse_shape, extent, brain_size):
    """Template-space mm coordinates (3, *coarse_shape) of the coarse grid: small rotation + elastic displacement
    (standard deviation 2-4 % of ``brain_size``, the smallest semi-axis in mm)."""
    axes = [np.linspace(-e / 2, e / 2, n, dtype=np.float32) for n, e in zip(coarse_shape, extent)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    rotation = _rotation_matrix(rng.uniform(-np.pi / 36, np.pi / 36, 3)).astype(np.float32)
    noise = np.stack([smooth_noise(rng, coarse_shape, extent, 25.0) for _ in range(3)])
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
    ``phantom_scanner.draw_cohort`` (sulcal depth, cortical thickness, ventricle scale) or None. ``fold_seed``: fold
    the sulci (``folded=True``; the cohort's own seed wins). ``hindbrain_rng``: draws a cerebellum and a brainstem
    for the infant preset too (``head=True``).
    """
    coarse_shape = q.shape[1:]
    steps = [e / max(n - 1, 1) for e, n in zip(extent, coarse_shape)]

    def varying(mean, relative_spread, lowest):  # smooth positive field around ``mean``
        return np.maximum(mean * (1 + relative_spread * smooth_noise(rng, coarse_shape, extent, 30.0)), lowest)

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
        drift = np.stack([smooth_noise(fold_rng, q.shape[1:], extent, 20.0) for _ in range(3)])
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
    structures[inside_skull] = OUTER_CSF
    brain = fields["depth"] >= 0
    inner_csf_distance = np.minimum(
        _cleft_distance(fields["sulcus_offset"], fields["below_sulcus"], widths["sulcus"]),
        _cleft_distance(fields["midline_offset"], fields["below_fissure"], widths["fissure"]))
    hindbrain = "cerebellum" in fields  # adults, and infants with a head
    if hindbrain:  # tentorium: a CSF cleft around the cerebellum
        tentorium = np.abs(fields["cerebellum"] - widths["tentorium"]) - widths["tentorium"]
        inner_csf_distance = np.minimum(inner_csf_distance, tentorium)
    structures[brain] = WM
    structures[brain & (np.minimum(fields["depth"], inner_csf_distance) < fields["thickness"])] = CORTEX
    structures[brain & (inner_csf_distance <= 0)] = OUTER_CSF
    structures[brain & (fields["deep_gm"] < 0)] = DEEP_GM
    structures[brain & (fields["ventricle"] < 0)] = VENTRICLE
    if "lesion" in fields:
        structures[(structures == WM) & (fields["lesion"] < 0)] = LESION
    if hindbrain:
        structures[brain & (fields["cerebellum"] < 0)] = CEREBELLUM
        structures[inside_skull & (fields["brainstem"] < 0)] = BRAINSTEM
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

