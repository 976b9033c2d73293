"""The bundle's own transforms checked against hand computations."""

import torch
from monai.bundle import ConfigParser

from scripts.transforms import RandTissueShiftd


def test_tissue_shift_adds_one_offset_per_tissue_and_channel():
    label = torch.tensor([0, 1, 1, 2, 2, 3, 255, 0]).view(1, 8, 1, 1)
    image = torch.arange(16, dtype=torch.float32).view(2, 8, 1, 1) / 16
    shift = RandTissueShiftd("image", offset=0.5, prob=1.0)
    shift.set_random_state(0)
    out = shift({"image": image, "label": label})["image"]
    delta = (out - image)[..., 0, 0]
    assert torch.equal(delta[:, [0, 6, 7]], torch.zeros(2, 3))  # background and excluded voxels unchanged
    for tissue, (a, b) in {1: (1, 2), 2: (3, 4), 3: (5, 5)}.items():
        assert torch.allclose(delta[:, a], delta[:, b]) and (delta[:, a].abs() <= 0.5).all()  # one offset per tissue
    assert not torch.allclose(delta[:, 1], delta[:, 3])  # tissues move apart
    assert torch.equal(RandTissueShiftd("image", prob=0.0)({"image": image, "label": label})["image"], image)


def test_tissue_shift_joins_labelled_training_only_when_asked(bundle_root):
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "train.yaml"))
    parser["bundle_root"] = str(bundle_root)
    assert parser.get_parsed_content("train#tissue_shift") == []  # default: the transform chain is unchanged
    parser["tissue_shift_prob"] = 0.5
    (shift,) = parser.get_parsed_content("train#tissue_shift")
    assert isinstance(shift, RandTissueShiftd) and shift.prob == 0.5 and shift.offset == 0.5

