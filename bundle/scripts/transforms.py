"""Transforms the bundle needs beyond MONAI's own: label masking and checks, subject ids, the intensity
normalisation that survives real scans (``ForegroundPercentileScaled``) and the head crop that goes with it
(``foreground``, ``CropForegroundd``'s ``select_fn``): a background anchor and percentiles over the foreground, for
skull-stripped scans and for heads in noisy, offset or negative air alike; random tissue shifts and k-means
tissue clusters."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, MaskIntensityd, RandomizableTransform, ScaleIntensityRange
from monai.transforms.utils import distance_transform_edt
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_dst_type, convert_to_numpy, convert_to_tensor

from .checks import InputError, check_label_codes
from .data.datasets import IGNORE_LABEL


class MaskIgnoredd(MapTransform):
    """Set ``keys`` to background (0) wherever ``label_key`` holds ``ignore_value``.

    Used before metrics so that structures a dataset excludes from evaluation (MRBrainS cerebellum,
    brainstem, ...) count neither as hits nor as errors. Expects label maps, not one-hot.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", ignore_value: int = IGNORE_LABEL):
        super().__init__(keys)
        self.label_key = label_key
        self.ignore_value = ignore_value

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ignored = d[self.label_key] == self.ignore_value
        for key in self.key_iterator(d):
            d[key] = torch.where(ignored, torch.zeros_like(d[key]), d[key])
        return d


class ChannelArgmaxd(MapTransform):
    """The index of each voxel's largest channel, ``(C, ...)`` to ``(1, ...)``: ``AsDiscreted(argmax=True)``'s
    result (the first channel on ties, float32, meta data kept), faster. MONAI's transform calls ``torch.argmax``
    over the channel dimension, which on the CPU takes 1.25 s for 4 channels of 256^3 voxels (torch 2.13, 2 idle
    threads; an eighth of the whole inference, docs/speed.md); ``torch.max``'s indices take 0.19 s."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = convert_to_tensor(d[key], track_meta=False).max(0, keepdim=True).indices
            d[key] = convert_to_dst_type(labels, d[key], dtype=torch.float32)[0]
        return d


class CheckLabelCodesd(MapTransform):
    """Raise an ``InputError`` naming the file (the MetaTensor's ``filename_or_obj``) and the values when ``keys``
    hold values outside ``codes``.

    Goes before ``MapLabelValued``, which passes codes outside its ``orig_labels`` unchanged (MONAI has no transform
    that rejects them), so that a label map in another format stops the run here, not inside the loss, also with
    ``check_inputs`` off. ``set_name`` names the set in the message (e.g. the dataset format).
    """

    def __init__(
        self, keys: KeysCollection, codes: Sequence[float], set_name: str = "allowed", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.codes, self.set_name = list(codes), set_name

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            path = label.meta.get("filename_or_obj", key) if isinstance(label, MetaTensor) else key
            check_label_codes(path, convert_to_numpy(label), self.codes, self.set_name)
        return d


class SubjectToMetad(MapTransform):
    """Copy the datalist's subject id into the metadata of ``keys`` so saved outputs are named after the subject."""

    def __init__(self, keys: KeysCollection, subject_key: str = "subject"):
        super().__init__(keys)
        self.subject_key = subject_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key].meta[self.subject_key] = d[self.subject_key]
        return d


def subject_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImaged`` name formatter: name outputs ``<subject><postfix>`` after the subject id in the metadata."""
    return {"subject": str(metadict["subject"]), "idx": metadict.get("patch_index")}


class OptionalMaskIntensityd(MaskIntensityd):
    """MONAI's ``MaskIntensityd`` (``keys`` set to 0 wherever the mask ``mask_key`` is not > 0) for data in which the
    mask is optional: an item without ``mask_key`` passes unchanged. A mask whose spatial shape differs from that of
    ``keys`` raises an ``InputError`` naming the mask file (MONAI would fail to broadcast, or crop it wrongly later)."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        if self.mask_key not in data:
            return dict(data)
        mask = data[self.mask_key]
        for key in self.key_iterator(dict(data)):
            if tuple(mask.shape[1:]) != tuple(data[key].shape[1:]):
                source = getattr(mask, "meta", {}).get("filename_or_obj", self.mask_key)
                shapes = f"{tuple(mask.shape[1:])} but the image {tuple(data[key].shape[1:])}"
                raise InputError(f"brain mask {source} has shape {shapes}: the mask must be on the image's voxel grid")
        return super().__call__(data)


# -------------------------------------------------------------------------------- intensity normalisation and head crop

DARK = 0.05  # voxels at most this fraction of the 99th percentile are dark: air, or the zero background


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the histogram split with the largest between-class variance (the values up
    to it form one class). The histogram spans the 0.1th to 99.9th percentile: a few extreme voxels do not squeeze it.
    ITK's ``OtsuThresholdImageFilter`` spans the minimum to the maximum: on head phantoms it agrees within 1 %, but
    one voxel at 50 times the maximum moves its threshold by a third or more (tests/test_normalisation.py).
    """
    low, high = (float(v) for v in percentile(values, [0.1, 99.9]))
    if high <= low:
        return low
    counts = torch.histc(values.float().clamp(low, high), bins, low, high).double()
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    below, mass = counts.cumsum(0), (counts * (edges[:-1] + edges[1:]) / 2).cumsum(0)
    between = (mass[-1] * below - mass * below[-1]) ** 2 / (below * (below[-1] - below)).clamp(min=1)
    return float(edges[int(between[:-1].argmax()) + 1])


def channel_background(channel: torch.Tensor) -> tuple[float, float]:
    """``(threshold, background level)`` of one channel: its foreground is the voxels above the threshold.

    A zero background (skull-stripped or zero-filled: most of the dark voxels, at most ``DARK`` times the 99th
    percentile, are exactly 0): threshold and level 0. Otherwise (a head in noisy air, whose dark voxels spread over
    many values, possibly negative ones): Otsu's threshold, level the median of the voxels below it.
    """
    dark = channel <= DARK * float(percentile(channel, 99))
    if 2 * int((channel == 0).sum()) >= int(dark.sum()):
        return 0.0, 0.0
    threshold = otsu_threshold(channel)
    return threshold, float(percentile(channel[channel <= threshold], 50))


def foreground(image: torch.Tensor) -> torch.Tensor:
    """The foreground (``channel_background``) of each channel of ``image`` (C, ...): ``CropForegroundd``'s
    ``select_fn`` for a head in noisy air, where MONAI's default (``> 0``) keeps the whole field of view."""
    image = convert_to_tensor(image, track_meta=False)
    return torch.stack([channel > channel_background(channel)[0] for channel in image])


class ForegroundPercentileScaled(MapTransform):
    """Scale each channel of ``keys`` linearly from its background level (to ``b_min``) to the ``upper`` percentile
    of its foreground (to ``b_max``), clipped to [b_min, b_max] with ``clip``; foreground and background level as in
    ``channel_background`` (the head, or the brain of a skull-stripped or masked scan). With ``gap`` > 0 the line
    ends at ``b_max - gap`` and every foreground voxel is lifted by ``gap``: a tissue as dark as the background
    (white matter in some T1 contrasts) stays at least ``gap`` above the background level, so that the network tells
    the brain from the background by intensity alone, as a brain-mask channel would.

    MONAI's ``ScaleIntensityRangePercentiles`` has neither a foreground for its percentiles nor a background anchor:
    it takes both ends from percentiles of the whole box, so with ``lower=0`` one negative voxel (common after bias
    correction) moves every other voxel, a noisy background sits above ``b_min``, and the upper percentile is diluted
    by the background. ``NormalizeIntensity(nonzero=True)`` takes the non-zero voxels as its foreground, which noisy
    air fills, and anchors nothing. For a skull-stripped scan (background 0) and ``gap`` 0 this transform is
    ``ScaleIntensityRangePercentiles(lower=0, upper)`` with the percentile taken over the brain; voxels below the
    background level (negative ones) clip to ``b_min`` without moving the others.
    """

    def __init__(
        self,
        keys: KeysCollection,
        upper: float = 99.5,
        b_min: float = -1.0,
        b_max: float = 1.0,
        clip: bool = True,
        gap: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not 0 <= gap < b_max - b_min:
            raise ValueError(f"gap must be in [0, b_max - b_min) = [0, {b_max - b_min}), got {gap}")
        self.upper, self.b_min, self.b_max, self.clip, self.gap = upper, b_min, b_max, clip, gap

    def scale(self, channel: torch.Tensor) -> torch.Tensor:
        threshold, level = channel_background(channel)
        mask = channel > threshold
        top = float(percentile(channel[mask], self.upper)) if mask.any() else level
        scaled = ScaleIntensityRange(level, top, self.b_min, self.b_max - self.gap, clip=False)(channel)
        scaled = convert_to_tensor(scaled, track_meta=False) + self.gap * mask
        return scaled.clamp(self.b_min, self.b_max) if self.clip else scaled

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], track_meta=False)
            d[key] = convert_to_dst_type(torch.stack([self.scale(c) for c in image]), d[key], dtype=torch.float32)[0]
        return d


class RandTissueShiftd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add to each tissue of ``keys`` (labels 1..num_classes-1 of ``label_key``) one
    random offset per channel, uniform in ``[-offset, offset]``; background and excluded voxels stay as they are.

    Contrast randomisation that keeps the scan's texture, noise and bias (SynthSeg redraws whole images from the
    labels instead): with offsets as large as the tissue contrasts, the order of GM and WM intensities flips, as it
    does in the first year of life. MONAI's intensity transforms change all voxels alike and know no labels. With
    ``floor`` (the normalisation's ``b_min + gap``) a tissue shifted down stops there instead of crossing the gap
    into the background.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", offset: float = 0.5, prob: float = 0.5,
                 num_classes: int = 4, floor: float | None = None, allow_missing_keys: bool = False):  # fmt: skip
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.offset, self.num_classes = label_key, float(offset), int(num_classes)
        self.floor = None if floor is None else float(floor)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = torch.as_tensor(d[self.label_key])[0].long()
        tissue = (label > 0) & (label < self.num_classes)  # background and excluded voxels keep their intensity
        for key in self.key_iterator(d):
            image = d[key]
            shifts = self.R.uniform(-self.offset, self.offset, (image.shape[0], self.num_classes))
            offsets = torch.as_tensor(shifts, dtype=image.dtype)[:, torch.where(tissue, label, 0)]
            shifted = image + offsets
            if self.floor is not None:
                shifted = shifted.clamp(min=self.floor)
            d[key] = torch.where(tissue, shifted, image)
        return d


def kmeans(x: torch.Tensor, k: int, iterations: int = 30) -> torch.Tensor:
    """Centres (k, C) of Lloyd's k-means on the rows of ``x`` (N, C), started at the 15th to 85th percentiles of the
    first principal component: deterministic, so that a cached transform gives the same clusters every run."""
    centred = x - x.mean(0)
    axis = torch.linalg.svd(centred[:: max(1, len(x) // 50000)], full_matrices=False)[2][0]
    projection = centred @ axis
    starts = torch.quantile(projection[:: max(1, len(x) // 100000)], torch.linspace(0.15, 0.85, k))
    centres = x[(projection[None] - starts[:, None]).abs().argmin(1)]
    for _ in range(iterations):
        nearest = torch.cdist(x, centres).argmin(1)
        centres = torch.stack([x[nearest == j].mean(0) if (nearest == j).any() else centres[j] for j in range(k)])
    return centres


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean ``mask`` (D, H, W) dilated by a cube of side ``2 * radius + 1``, outside the volume False.

    The cube is separable: shifted logical ORs along each axis. MONAI's ``dilate`` gives the same result by a float
    convolution with the whole cube, 1 s against 0.005 s for a 170 x 220 x 210 brain on one CPU core.
    """
    out = torch.as_tensor(mask, dtype=torch.bool).clone()
    for axis, n in enumerate(out.shape):
        source = out.clone()
        for shift in range(1, min(radius, n - 1) + 1):
            out.narrow(axis, shift, n - shift).logical_or_(source.narrow(axis, 0, n - shift))
            out.narrow(axis, 0, n - shift).logical_or_(source.narrow(axis, shift, n - shift))
    return out


def tissue_clusters(
    image: torch.Tensor, background: float = -1.0, num_classes: int = 4, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Tissue map (1, D, H, W) of a normalised scan (C, D, H, W; background at ``background``) from its intensities
    and the layout of the brain alone, no segmenter. The brain is the voxels above the background inside ``mask``
    (a brain mask on the image's grid, (1, D, H, W) or (D, H, W), > 0 inside); without a mask, all voxels above the
    background, which is the brain of a skull-stripped scan only: on a whole head, scalp and skull are clustered
    too. k-means clusters of the brain voxels, then CSF = the cluster with the largest share of its voxels in the
    brain's second outer layer (the extra-cerebral CSF; the first layer, partial volume, is left out) and, of the
    other two, GM = the thinner one (fewer voxels survive a one-voxel erosion: the cortical ribbon against the bulk
    of WM). Right whatever the contrast order,
    which is what the segmenter of a few labelled subjects gets wrong (docs/experiments.md). Where GM and WM are
    nearly isointense, k-means splits off the partial-volume voxels between CSF and tissue instead, which then pass
    for GM, and GM and WM share the other cluster. Labels 1, 2, 3 = CSF, GM, WM; 0 outside the brain."""
    if num_classes != 4:
        raise ValueError(f"tissue_clusters finds CSF, GM and WM: num_classes must be 4, got {num_classes}")
    image = torch.as_tensor(image).float()
    brain = (image > background + 1e-3).any(0)
    if mask is not None:
        if tuple(mask.shape) not in (tuple(brain.shape), (1, *brain.shape)):
            source = getattr(mask, "meta", {}).get("filename_or_obj", "mask")
            raise InputError(f"brain mask {source} has shape {tuple(mask.shape)} but the image {tuple(image.shape)}: "
                             "the mask must be on the image's voxel grid")
        brain &= torch.as_tensor(mask).reshape(brain.shape) > 0
    clusters = torch.zeros((1, *brain.shape), dtype=torch.uint8)
    voxels = image[:, brain].T
    if len(voxels) < 3:
        return clusters
    nearest = torch.cdist(voxels, kmeans(voxels[:: max(1, len(voxels) // 200000)], 3)).argmin(1)
    found = torch.full(brain.shape, -1, dtype=torch.long)
    found[brain] = nearest
    csf = csf_cluster(found, brain, 3)
    return name_clusters(found, csf, [j for j in range(3) if j != csf])


def _gaussian_fit(voxels: torch.Tensor, labels: torch.Tensor, tissues: tuple) -> torch.Tensor:
    """Classification EM's fit: per tissue, a diagonal Gaussian of ``voxels`` (C, N) from those labelled with it
    (all voxels for a tissue with fewer than 2), and every voxel's log-likelihood under each (len(tissues), N)."""
    members = [voxels[:, labels == t] if (labels == t).sum() > 1 else voxels for t in tissues]
    stats = [(m.mean(1, keepdim=True), m.var(1, keepdim=True) + 1e-4) for m in members]
    return torch.stack([-0.5 * ((voxels - mean) ** 2 / var + var.log()).sum(0) for mean, var in stats])


def refine_clusters(image: torch.Tensor, tissues: torch.Tensor, beta: float = 0.0, iterations: int = 5) -> torch.Tensor:
    """A tissue map (1, D, H, W; 1 CSF, 2 GM, 3 WM, 0 outside the brain) refined by classification EM: per iteration
    each tissue's mean and variance per channel of ``image`` (C, D, H, W) from its voxels, then every brain voxel to
    the tissue of the highest diagonal-Gaussian log-likelihood. k-means gives every tissue one variance; here each
    has its own, so a broad class (GM's partial volume) no longer loses its tail to a narrow one. ``beta`` > 0 adds a
    Potts prior, ``beta`` per 6-neighbour of the same tissue, updated half the voxels at a time on a checkerboard
    (iterated conditional modes; the Markov random field of FSL FAST and ANTs Atropos): measured, no better than 0 on
    the real-anatomy cohort (docs/experiments.md, 0.20.0)."""
    found = torch.as_tensor(tissues)[0].long().clone()
    brain = found > 0
    voxels = torch.as_tensor(image).float()[:, brain]
    kernel = torch.zeros(3, 1, 3, 3, 3)
    kernel[:, 0, 1, 1, [0, 2]] = kernel[:, 0, 1, [0, 2], 1] = kernel[:, 0, [0, 2], 1, 1] = 1.0
    parity = torch.stack(torch.meshgrid(*[torch.arange(n) for n in found.shape], indexing="ij")).sum(0)[brain] % 2
    for _ in range(iterations):
        labels = found[brain]
        fit = _gaussian_fit(voxels, labels, (1, 2, 3))
        for half in (0, 1) if beta else (None,):
            score = fit
            if beta:
                onehot = torch.stack([(found == t).float() for t in (1, 2, 3)])[None]
                score = fit + beta * torch.nn.functional.conv3d(onehot, kernel, padding=1, groups=3)[0][:, brain]
            best = score.argmax(0) + 1
            found[brain] = best if half is None else torch.where(parity == half, best, found[brain])
    return found[None].to(torch.uint8)


def split_by_depth(image: torch.Tensor, tissues: torch.Tensor, thickness: float, iterations: int = 5) -> torch.Tensor:
    """A tissue map (1, D, H, W; 1 CSF, 2 GM, 3 WM, 0 outside the brain) whose GM and WM are re-split by their depth
    below CSF and the brain's edge, CSF kept: classification EM over the non-CSF brain voxels with a diagonal
    Gaussian per tissue and channel of ``image`` (C, D, H, W) plus a prior that favours GM within ``thickness``
    voxels of the nearest CSF or non-brain voxel and WM deeper (log-sigmoid of the depth's distance from
    ``thickness``, 1 voxel wide), started from that depth split. Where GM and WM are isointense the intensities
    cannot tell them apart and k-means splits partial volume instead (``tissue_clusters``); the depth keeps the
    cortical ribbon GM there, and where the tissues differ in intensity the likelihood outweighs it. Deep grey
    nuclei go to WM where intensities cannot tell. MONAI's tissue-class transforms need labels; FAST and Atropos
    use a neighbourhood prior, no depth."""
    found = torch.as_tensor(tissues)[0].long().clone()
    tissue = (found > 0) & (found != 1)
    if tissue.sum() < 2:
        return found[None].to(torch.uint8)
    depth = torch.as_tensor(distance_transform_edt(tissue[None].numpy())[0], dtype=torch.float32)[tissue]
    logsigmoid = torch.nn.functional.logsigmoid
    prior = torch.stack([logsigmoid(thickness - depth), logsigmoid(depth - thickness)])
    voxels = torch.as_tensor(image).float()[:, tissue]
    labels = torch.where(depth <= thickness, 0, 1)
    for _ in range(iterations):
        fit = _gaussian_fit(voxels, labels, (0, 1))
        labels = (fit + prior).argmax(0)
    found[tissue] = labels + 2
    return found[None].to(torch.uint8)


def csf_cluster(found: torch.Tensor, brain: torch.Tensor, k: int) -> int:
    """Of the ``k`` clusters in ``found`` (cluster index per voxel, -1 outside ``brain``), the one with the largest
    share of its voxels in the brain's second outer layer of voxels (the extra-cerebral CSF)."""
    shell = _dilate(~brain, 2) & ~_dilate(~brain, 1)
    return max(range(k), key=lambda j: float((shell & (found == j)).sum()) / max(1, int((found == j).sum())))


def name_clusters(found: torch.Tensor, csf: int, rest: list[int]) -> torch.Tensor:
    """Tissue map (1, D, H, W; 1 CSF, 2 GM, 3 WM, 0 elsewhere) from cluster indices: ``csf`` is CSF and, of the two
    clusters in ``rest``, GM is the thinner one (fewer voxels survive a one-voxel erosion)."""
    masks = {j: found == j for j in (csf, *rest)}
    survival = [float((~_dilate(~masks[j], 1)).sum()) / max(1, int(masks[j].sum())) for j in rest]
    gm, wm = rest if survival[0] <= survival[1] else rest[::-1]
    tissues = torch.zeros((1, *found.shape), dtype=torch.uint8)
    for tissue, j in ((1, csf), (2, gm), (3, wm)):
        tissues[0][masks[j]] = tissue
    return tissues


class TissueClustersd(MapTransform):
    """Write ``tissue_clusters`` of ``keys`` (a normalised image) under ``output_key``: the unlabelled subjects'
    tissue classes for the statistics of the generator with ``gan#source_classes: clusters``. MONAI has no
    unsupervised tissue classifier (FSL FAST or Atropos do this with a Markov random field; this is the plain
    k-means part, and with ``refine`` the Gaussian mixture's classification EM of ``refine_clusters``).

    The brain is the subject's brain mask ``mask_key`` where the data holds it loaded on the image's grid (the
    optional ``mask`` that train.yaml's ``data#preprocessing`` and inference.yaml load); otherwise every voxel above
    the background, right for skull-stripped scans only: on a whole head k-means clusters scalp and skull too. A
    mask still a file path (not loaded) is left out with a warning. With ``depth`` (voxels), GM and WM are then
    re-split by their depth below CSF (``split_by_depth``), after the mixture's refinement where ``refine`` is set."""

    def __init__(
        self, keys: KeysCollection, output_key: str = "clusters", background: float = -1.0, mask_key: str = "mask",
        refine: bool = False, depth: float | None = None,
    ):
        super().__init__(keys)
        self.output_key, self.background, self.mask_key, self.refine = output_key, float(background), mask_key, refine
        self.depth = None if depth is None else float(depth)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        key = self.first_key(d)
        image = d[key]
        mask = d.get(self.mask_key)
        if mask is not None and not isinstance(mask, (torch.Tensor, np.ndarray)):
            warnings.warn(f"TissueClustersd: brain mask {mask} is not loaded; clustering every voxel above the "
                          "background (scalp and skull too, on a whole head)")
            mask = None
        clusters = tissue_clusters(torch.as_tensor(image), self.background, mask=mask)
        if self.refine:
            clusters = refine_clusters(torch.as_tensor(image), clusters)
        if self.depth is not None:
            clusters = split_by_depth(torch.as_tensor(image), clusters, self.depth)
        d[self.output_key] = MetaTensor(clusters, meta=dict(image.meta)) if isinstance(image, MetaTensor) else clusters
        return d
