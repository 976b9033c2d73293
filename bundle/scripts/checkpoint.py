"""Checkpoint helpers: the bundle's weights file is ``{"model": state_dict}`` with tensors on the CPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """Return the network inside a ``DistributedDataParallel``/``DataParallel`` wrapper, or the module itself."""
    return getattr(module, "module", module)


class BundleWeights:
    """Give a network to MONAI's ``CheckpointSaver`` so it writes ``{"model": state_dict}`` on the CPU.

    Ignite saves a lone object's ``state_dict()`` without a key, so the key is added here. Tensors are moved to
    the CPU and lose any DDP ``module.`` prefix: a checkpoint written on a GPU, or by several processes, loads
    anywhere, and MONAI's ``CheckpointLoader`` / MONAI Label read it with the key ``model``.
    """

    def __init__(self, module: nn.Module, key: str = "model"):
        self.module = module
        self.key = key

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {self.key: {k: v.detach().cpu() for k, v in unwrap(self.module).state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Any:
        return unwrap(self.module).load_state_dict(state_dict.get(self.key, state_dict), strict=strict)
