"""The intensity normalisation (scripts.transforms): a background anchor and percentiles over the foreground."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForeground, ScaleIntensityRangePercentiles

from scripts.data.phantom import make_subject
from scripts.transforms import ForegroundPercentileScaled, foreground, otsu_threshold


def _scale(image):
    return ForegroundPercentileScaled("image")({"image": image})["image"]


def test_background_anchor_and_foreground_percentile_by_hand():
    """Skull-stripped 4^3 volume: 56 voxels 0, a 2^3 brain of 10, 20, ..., 80. The 99.5th percentile of the brain
    lies at rank 0.995 x 7 = 6.965: 70 + 0.965 x 10 = 79.65; so 0 -> -1 and x -> -1 + 2 x / 79.65, clipped at 1.
    A -500 voxel in the background changes nothing but itself (-1); today's minimum anchor moves all others."""
    image = torch.zeros(1, 4, 4, 4)
    image[0, 1:3, 1:3, 1:3] = torch.arange(10.0, 90.0, 10.0).reshape(2, 2, 2)
    expected = torch.clamp(-1 + 2 * image / 79.65, max=1.0)
    scaled = _scale(MetaTensor(image))
    torch.testing.assert_close(scaled.as_tensor(), expected, atol=1e-5, rtol=0)
    assert float(scaled[0, 2, 2, 2]) == 1.0 and float(scaled[0, 0, 0, 0]) == -1.0  # 80 clipped; background

    negative = image.clone()
    negative[0, 0, 0, 0] = -500.0
    torch.testing.assert_close(_scale(negative), scaled.as_tensor(), atol=1e-6, rtol=0)  # that voxel was -1 already
    today = ScaleIntensityRangePercentiles(0, 99.5, -1, 1, clip=True, channel_wise=True)(negative)
    assert float(today[0, 3, 3, 3]) > -0.2  # the background far from -1: what the transform replaces


def test_noisy_head_background_maps_to_minus_one_and_is_cropped_away():
    """Head phantom in Rician air with a negative offset (values below 0): the air lands at -1 (median) and just
    above it, the brain well above; the crop keeps the head, where MONAI's default keeps the whole field of view."""
    subject = make_subject((48, 56, 56), head=True, seed=0)
    image = torch.from_numpy(np.stack([subject["images"][m] for m in ("t1", "t2")]))
    air = torch.from_numpy((subject["structures"] == 0) & (subject["head"] == 0))
    brain = torch.from_numpy(subject["structures"] > 0)
    assert image.min() < 0 and air.float().mean() > 0.6
    scaled = _scale(image)
    for channel in scaled:
        assert float(channel[air].median()) == pytest.approx(-1.0, abs=1e-3)
        assert float(channel[air].quantile(0.95)) < -0.8
        assert float(channel[brain].median()) > -0.2
    head_box = [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(~air.numpy())]
    start, end = CropForeground(select_fn=foreground, allow_smaller=True).compute_bounding_box(image)
    np.testing.assert_allclose(np.stack([start, end], 1), head_box, atol=1)
    start, end = CropForeground(allow_smaller=True).compute_bounding_box(image)  # MONAI's default: > 0
    assert tuple(end - start) == tuple(image.shape[1:])


def test_skull_stripped_phantom_keeps_todays_scaling():
    """A training phantom (brain, background exactly 0), head-cropped: the background is -1 as today, and the brain
    is today's scaling stretched by the ratio of the 99.5th percentiles of the box (today's) and of the brain."""
    subject = make_subject((48, 56, 64), seed=0)
    image = torch.from_numpy(np.stack([subject["images"][m] for m in ("t1", "t2")]))
    image = CropForeground(select_fn=foreground, margin=4, allow_smaller=True)(image).as_tensor()
    brain = image[0] > 0
    assert 0.2 < brain.float().mean() < 0.8 and (image[:, ~brain] == 0).all()
    scaled = _scale(image)
    today = ScaleIntensityRangePercentiles(0, 99.5, -1, 1, clip=True, channel_wise=True)(image)
    assert (scaled[:, ~brain] == -1).all() and (today[:, ~brain] == -1).all()
    assert float((scaled - today)[:, brain].abs().max()) < 0.1
    for c, channel in enumerate(image.numpy()):
        ratio = np.percentile(channel, 99.5) / np.percentile(channel[brain.numpy()], 99.5)
        inside = brain & (scaled[c] < 1) & (today[c] < 1)
        torch.testing.assert_close(scaled[c][inside] + 1, (today[c][inside] + 1) * float(ratio), atol=1e-4, rtol=0)


def test_otsu_agrees_with_itk_and_ignores_an_outlier_that_moves_itk():
    """Why ``otsu_threshold`` is not ITK's ``OtsuThresholdImageFilter``: on a head in noisy air both find about the
    same threshold, but one voxel at 50 times the maximum moves ITK's (its histogram spans min to max) and not ours."""
    import itk

    def itk_otsu(x):
        otsu_filter = itk.OtsuThresholdImageFilter[itk.Image[itk.F, 3], itk.Image[itk.UC, 3]]
        otsu = otsu_filter.New(Input=itk.image_from_array(x))
        otsu.SetNumberOfHistogramBins(256)
        otsu.Update()
        return otsu.GetThreshold()

    image = make_subject((48, 56, 56), head=True, seed=0)["images"]["t1"].astype(np.float32)
    ours, theirs = otsu_threshold(torch.from_numpy(image)), itk_otsu(image)
    assert ours == pytest.approx(theirs, rel=0.03)
    image.flat[0] = 50 * image.max()
    assert otsu_threshold(torch.from_numpy(image)) == pytest.approx(ours, rel=0.01)
    assert itk_otsu(image) > 1.2 * theirs


def test_gap_lifts_the_foreground_above_the_background_by_hand():
    """The 4^3 volume above with gap 0.5: the brain's line ends at 1 - 0.5 and every brain voxel is lifted by 0.5,
    x -> -1 + 0.5 + 1.5 x / 79.65 (80 clipped at 1); the background stays -1. A brain voxel as dark as the background
    (0.01) lands 0.5 above it. A gap as wide as the range is refused."""
    image = torch.zeros(1, 4, 4, 4)
    image[0, 1:3, 1:3, 1:3] = torch.arange(10.0, 90.0, 10.0).reshape(2, 2, 2)
    image[0, 1, 1, 1] = 0.01
    brain = image > 0
    scaled = ForegroundPercentileScaled("image", gap=0.5)({"image": image})["image"]
    top = 70 + 0.965 * 10  # the 99.5th percentile of 0.01, 20, ..., 80 (the ranks as in the first test)
    expected = torch.where(brain, torch.clamp(-0.5 + 1.5 * image / top, max=1.0), torch.tensor(-1.0))
    torch.testing.assert_close(scaled, expected, atol=1e-5, rtol=0)
    assert float(scaled[0, 1, 1, 1]) == pytest.approx(-0.5, abs=1e-3) and float(scaled[0, 0, 0, 0]) == -1.0
    with pytest.raises(ValueError, match="gap"):
        ForegroundPercentileScaled("image", gap=2.0)


def test_gap_on_a_noisy_head_keeps_the_air_at_minus_one_and_the_head_above_the_gap():
    """Head phantom in noisy air with gap 0.5: the air's median still lands at -1, and the darkest head voxel lies at
    least 0.5 above the brightest air voxel (one line, the head lifted by the gap)."""
    subject = make_subject((48, 56, 56), head=True, seed=0)
    image = torch.from_numpy(np.stack([subject["images"][m] for m in ("t1", "t2")]))
    air = torch.from_numpy((subject["structures"] == 0) & (subject["head"] == 0))
    head = foreground(image)
    scaled = ForegroundPercentileScaled("image", gap=0.5)({"image": image})["image"]
    for channel, inside in zip(scaled, head):
        assert float(channel[air].median()) == pytest.approx(-1.0, abs=1e-3)
        assert float(channel[inside].min()) - float(channel[~inside].max()) >= 0.5 - 1e-5  # the gap at the threshold
