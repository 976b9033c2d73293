"""Oracle weights for inference tests: a 1x1x1 convolution that segments by the scaled T1 intensity.

With logits ``l_k = 2 c_k x - c_k^2`` the argmax is the class whose centre ``c_k`` is nearest to the voxel's
scaled T1 value ``x``, so a correct pipeline reproduces the tissue map exactly, up to interpolation at borders.
"""

from pathlib import Path

import torch
import yaml

GAP = yaml.safe_load((Path(__file__).parents[1] / "bundle" / "configs" / "inference.yaml").read_text())["intensity_gap"]
# background, CSF, GM, WM: the brain's scaled T1 line (-1 + gap to 1) at T1 = 0, 1, 2, 3 x a constant. The background
# (-1) lies below it and is nearest to class 0; interpolated border voxels split at half CSF's raw intensity.
CENTRES = [-1 + GAP + (2 - GAP) * k / 3 for k in range(4)]
ORACLE_NET = {"_target_": "torch.nn.Conv3d", "in_channels": 2, "out_channels": 4, "kernel_size": 1}


def write_oracle_checkpoint(path) -> None:
    """Save the oracle convolution's state_dict (the network ``ORACLE_NET``) to ``path``."""
    conv = torch.nn.Conv3d(2, 4, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 0, 0, 0] = torch.tensor([2 * c for c in CENTRES])
        conv.bias.copy_(torch.tensor([-(c**2) for c in CENTRES]))
    torch.save(conv.state_dict(), path)
