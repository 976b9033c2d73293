"""Render MRI from label maps, SynthSeg-style (Billot et al. 2023), as MONAI transforms.

``RandLabelContrastd`` draws a Gaussian intensity per label and channel, either anywhere (``random``: SynthSeg's
contrast) or kept physically plausible per modality (``plausible``: CSF, GM and WM in the order of an adult or an
infant T1 and T2, every structure between them by its tissue mix, the head's tissues anywhere). ``RandThickSlicesd``
simulates thick slices. Spatial augmentation, bias field, blur and noise are MONAI's own transforms
(``scripts.data.anatomy.random_render`` and ``fixed_render`` chain them).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

# Each brain label's intensity as a mix of the CSF, GM and WM means (w_csf, w_gm, w_wm), FreeSurfer codes:
# deep grey nuclei sit between GM and WM in T1 and T2 (pallidum closest to WM), the brain stem and ventral DC are
# mostly white, the unnamed labels around the choroid plexus (136/137/163/164) between CSF and GM.
TISSUE_MIX: dict[int, tuple[float, float, float]] = {
    **dict.fromkeys((4, 5, 14, 15, 24, 43, 44, 72), (1.0, 0.0, 0.0)),  # ventricles, extra-cerebral CSF
    **dict.fromkeys((3, 42, 8, 47, 18, 54), (0.0, 1.0, 0.0)),  # cortex, cerebellar cortex, amygdala
    **dict.fromkeys((17, 53), (0.05, 0.95, 0.0)),  # hippocampus
    **dict.fromkeys((11, 50, 26, 58), (0.0, 0.9, 0.1)),  # caudate, accumbens
    **dict.fromkeys((12, 51), (0.0, 0.75, 0.25)),  # putamen
    **dict.fromkeys((10, 49), (0.0, 0.5, 0.5)),  # thalamus
    **dict.fromkeys((13, 52), (0.0, 0.3, 0.7)),  # pallidum
    **dict.fromkeys((28, 60), (0.0, 0.4, 0.6)),  # ventral DC
    **dict.fromkeys((2, 41, 7, 46, 85), (0.0, 0.0, 1.0)),  # cerebral and cerebellar WM, optic chiasm
    16: (0.0, 0.2, 0.8),  # brain stem
    **dict.fromkeys((25, 57), (0.0, 0.4, 0.6)),  # periventricular WM hypointensities
    **dict.fromkeys((136, 137, 163, 164), (0.5, 0.5, 0.0)),
}
MODALITIES = ("t1", "t2")

# The head's tissues (SynthSeg's unnamed labels 502-530, named here by where they lie): plausible intensity ranges
# per modality. Scalp and skin (511 on the head's surface, 509 on the face's) hold subcutaneous fat, bright in T1 and
# T2; the skull's layers (515, 516) and the meninges and sinuses next to the brain (514) are dark; muscle and other
# soft tissue (507) sit below GM in T1 and below WM in T2; eyes (506) hold water, like CSF; the spinal cord (512)
# and optic nerves (508) are white matter. 502 and 530 stay uniform.
HEAD_RANGES: dict[int, dict[str, tuple[float, float]]] = {
    **dict.fromkeys((511, 509), {"t1": (0.6, 1.0), "t2": (0.5, 0.9)}),
    **dict.fromkeys((515, 516, 514), {"t1": (0.0, 0.25), "t2": (0.0, 0.25)}),
    507: {"t1": (0.2, 0.45), "t2": (0.15, 0.35)},
    506: {"t1": (0.05, 0.25), "t2": (0.8, 1.0)},
    **dict.fromkeys((512, 508), {"t1": (0.65, 0.9), "t2": (0.3, 0.45)}),
}


def tissue_means(rng: np.random.Generator, modality: str, age: float | None) -> np.ndarray:
    """Random CSF, GM and WM means in [0, 1] of one ``modality`` (t1 or t2). ``age`` None: an adult; otherwise an
    infant's position between a newborn (0: T1 WM darker than GM, T2 WM brighter) and an adult-like brain (1), with
    GM and WM isointense in both at 0.5 (about 6 months)."""
    if modality not in MODALITIES:
        raise ValueError(f"plausible contrast knows {MODALITIES}, not {modality!r}")
    sign = 1.0 if modality == "t1" else -1.0
    if age is None:
        gm = rng.uniform(0.4, 0.6)
        csf = rng.uniform(0.05, 0.3) if modality == "t1" else rng.uniform(0.75, 1.0)
        wm = gm + sign * rng.uniform(0.15, 0.3)
    else:
        gm = rng.uniform(0.4, 0.55)
        csf = rng.uniform(0.05, 0.25) if modality == "t1" else rng.uniform(0.8, 1.0)
        wm = gm + sign * (0.4 * float(age) - 0.2) + rng.uniform(-0.02, 0.02)
    return np.array([csf, gm, wm])


def unique_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)``: the sorted codes and each voxel's index among them. Label maps of
    small non-negative integers (FreeSurfer codes) take a lookup table instead of a sort, the larger part of a
    render's time on a whole map; the result is the same."""
    flat = labels.ravel()
    small = flat.size and np.issubdtype(flat.dtype, np.number) and 0 <= flat.min() and flat.max() < 65536
    if not (small and np.array_equal(flat, np.rint(flat))):
        codes, index = np.unique(labels, return_inverse=True)
        return codes, index.reshape(-1)
    integers = flat.astype(np.int64)
    present = np.flatnonzero(np.bincount(integers))
    table = np.zeros(present[-1] + 1, dtype=np.int64)
    table[present] = np.arange(len(present))
    return present.astype(labels.dtype), table[integers]


class RandLabelContrastd(RandomizableTransform, MapTransform):
    """Render ``image_key`` (one channel per modality) from the FreeSurfer label map ``keys``: each label gets a
    Gaussian intensity, mean and standard deviation drawn per subject and channel (SynthSeg's generative model).

    ``contrast``: ``random`` (every label's mean uniform in [0, 1]) or ``plausible`` (brain labels by ``TISSUE_MIX``
    from ``tissue_means``, each label jittered by ``jitter``; air 0; head tissues (>= 500) and unknown labels uniform).
    ``infant_prob``: probability that a plausible subject is an infant of uniform age, else an adult; ``age`` fixes it
    (None with infant_prob 0: adult). ``head_prob``: probability that a plausible subject's head tissues take the
    ``HEAD_RANGES`` of their modality (else uniform). ``std``: range of the per-label standard deviation. ``means``
    fixes the (CSF, GM, WM) means per channel and the head's at the middle of their ranges (the benchmark's fixed
    contrasts). MONAI has no label-to-intensity transform.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        modalities: Sequence[str] = MODALITIES,
        contrast: str = "plausible",
        infant_prob: float = 0.0,
        age: float | None = None,
        head_prob: float = 0.5,
        std: tuple[float, float] = (0.01, 0.04),
        jitter: float = 0.03,
        means: Sequence[Sequence[float]] | None = None,
    ):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if contrast not in ("random", "plausible"):
            raise ValueError(f"contrast must be 'random' or 'plausible', got {contrast!r}")
        self.image_key, self.modalities, self.contrast = image_key, tuple(modalities), contrast
        self.infant_prob, self.age, self.std, self.jitter = infant_prob, age, std, jitter
        self.head_prob = head_prob
        self.means = None if means is None else np.asarray(means, dtype=float)

    def label_means(self, codes: np.ndarray, modality: str, age: float | None, head: bool, channel: int) -> np.ndarray:
        """The mean intensity of each label of ``codes`` in one channel; ``head``: plausible head tissues."""
        uniform = self.R.uniform(0.0, 1.0, len(codes))
        if self.contrast == "random":
            return uniform
        tissues = self.means[channel] if self.means is not None else tissue_means(self.R, modality, age)
        out = uniform
        for i, code in enumerate(int(c) for c in codes):
            if code == 0:
                out[i] = 0.0
            elif code in TISSUE_MIX:
                out[i] = np.dot(TISSUE_MIX[code], tissues) + self.R.normal(0.0, self.jitter)
            elif head and code in HEAD_RANGES and modality in HEAD_RANGES[code]:
                low, high = HEAD_RANGES[code][modality]
                out[i] = (low + high) / 2 if self.means is not None else self.R.uniform(low, high)
        return np.clip(out, 0.0, 1.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]
            codes, index = unique_codes(np.asarray(labels[0]))
            index = torch.as_tensor(index.reshape(labels.shape[1:]))
            infant = self.age is not None or self.R.uniform() < self.infant_prob
            age = (self.age if self.age is not None else self.R.uniform()) if infant else None
            head = self.means is not None or self.R.uniform() < self.head_prob
            tissue = torch.as_tensor(np.asarray(labels[0]) != 0)  # air stays 0: the scanner's noise comes later
            channels = []
            for c, modality in enumerate(self.modalities):
                means = torch.as_tensor(self.label_means(codes, modality, age, head, c), dtype=torch.float32)
                stds = torch.as_tensor(self.R.uniform(*self.std, len(codes)), dtype=torch.float32)
                generator = torch.Generator().manual_seed(int(self.R.randint(2**31)))
                noise = torch.randn(index.shape, generator=generator)
                channels.append(means[index] + stds[index] * noise * tissue)
            image = torch.stack(channels)
            d[self.image_key] = MetaTensor(image, meta=dict(labels.meta)) if isinstance(labels, MetaTensor) else image
            d[f"{self.image_key}_age"] = -1.0 if age is None else float(age)
        return d


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """With probability ``prob``, give ``keys`` slices ``thickness`` voxels thick (uniform in the range) along a
    random axis: box-averaged over each slice, then linearly interpolated back to the grid, as a thick-slice scan
    resampled to 1 mm. MONAI's ``RandSimulateLowResolution`` zooms all axes alike."""

    def __init__(self, keys: KeysCollection, thickness: tuple[float, float] = (2.0, 5.0), prob: float = 0.3):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.thickness = thickness

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        axis = int(self.R.randint(3))
        step = float(self.R.uniform(*self.thickness))
        for key in self.key_iterator(d):
            d[key] = thick_slices(d[key], axis, step)
        return d


def thick_slices(image: torch.Tensor, axis: int, step: float) -> torch.Tensor:
    """``image`` (C, X, Y, Z) averaged in slabs ``step`` voxels thick along spatial ``axis`` and interpolated back."""
    x = torch.as_tensor(image).float().movedim(axis + 1, -1)
    size = x.shape[-1]
    coarse = max(1, round(size / step))
    flat = x.reshape(1, -1, size)
    slabs = F.adaptive_avg_pool1d(flat, coarse)
    back = F.interpolate(slabs, size=size, mode="linear", align_corners=False).reshape(x.shape).movedim(-1, axis + 1)
    return back.to(image.dtype) if not isinstance(image, MetaTensor) else MetaTensor(back, meta=dict(image.meta))
