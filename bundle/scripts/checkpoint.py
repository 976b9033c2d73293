"""Checkpoint helpers: weights are stored on the CPU as ``{"model": state_dict}``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """Return the network inside a ``DistributedDataParallel``/``DataParallel`` wrapper, or the module itself."""
    return getattr(module, "module", module)


class CPUStateDict:
    """Give a network to MONAI's ``CheckpointSaver``/``CheckpointLoader`` so its weights are saved on the CPU.

    Saved tensors are moved to the CPU and lose any DDP ``module.`` prefix, so a checkpoint written on a GPU,
    or by several processes, loads anywhere.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in unwrap(self.module).state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Any:
        return unwrap(self.module).load_state_dict(state_dict, strict=strict)
