"""The out-of-distribution warning of inference (scripts.ood): odd inputs are named in the log, normal ones are not."""

import logging

import numpy as np
import torch
from monai.data import MetaTensor

from scripts.ood import OutOfDistributionWarningd


def _subject(spacing=1.0, noisy=False, confident=True):
    """A 64^3 input grid holding a 48^3 brain (110.6 mL at 1 mm, 373 mL at 1.5 mm) and the preprocessed image: a
    brain at 0.5 in a background of -1, or in noisy air at -1 and just above it."""
    probabilities = torch.zeros(4, 64, 64, 64)
    probabilities[0] = 1.0
    inside = (slice(8, 56),) * 3
    high = 0.9 if confident else 0.5
    probabilities[(1, *inside)] = high
    probabilities[(0, *inside)] = (1 - high) / 2
    probabilities[(2, *inside)] = (1 - high) / 2
    image = torch.full((2, 64, 64, 64), -1.0)
    if noisy:
        image += torch.rand(2, 64, 64, 64).lt(0.5) * torch.rand(2, 64, 64, 64) * 0.05
    image[(slice(None), *inside)] = 0.5
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return {"subject": "case7", "image": image, "pred": MetaTensor(probabilities, affine=affine)}


def _warnings(caplog, data):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scripts.ood"):
        OutOfDistributionWarningd("pred")(data)
    return [r.getMessage() for r in caplog.records if r.name == "scripts.ood"]


def test_normal_input_gets_no_warning(caplog):
    assert _warnings(caplog, _subject(spacing=1.5)) == []


def test_odd_inputs_are_named_with_what_is_odd(caplog):
    """Each oddity alone, then all together in one line naming the subject."""
    assert _warnings(caplog, _subject(spacing=1.0)) == [
        "subject case7 looks unlike the training data: a segmented brain of 111 mL (outside 150-2500 mL)"
    ]
    (message,) = _warnings(caplog, _subject(spacing=1.5, noisy=True))
    assert "case7" in message and "a background that is not 0" in message and "pass a brain mask" in message
    (message,) = _warnings(caplog, _subject(spacing=1.5, confident=False))
    assert message.endswith("a mean confidence of 0.50 over the brain (below 0.7)")
    (message,) = _warnings(caplog, _subject(spacing=4.0, noisy=True, confident=False))
    assert message.startswith("subject case7 looks unlike the training data: voxels of up to 4.0 mm (coarser than 3")
    assert message.count(";") == 3  # spacing, background, volume (7078 mL), confidence
