"""Each process's share of the subjects in multi-process training (configs/multi_gpu_train.yaml)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from monai.data import DistributedSampler


def rank_share(data: Sequence, pad: bool, rank: int | None = None, world_size: int | None = None) -> list:
    """This process's share of a datalist: entries ``rank``, ``rank + N``, ``rank + 2N``, ... of ``N`` processes,
    strided as MONAI's ``DistributedSampler`` (without shuffling) strides them, so that ``CacheDataset`` caches only
    this share.

    With ``pad``, or with fewer entries than processes, entries from the start of the list are repeated so that every
    process gets as many (training: all processes run the same number of iterations; 5 entries on 2 processes give
    ``[0, 2, 4]`` and ``[1, 3, 0]``). Without, the shares differ by one at most and each entry is in one share
    (validation: MONAI's metrics gather all shares; ``[0, 2, 4]`` and ``[1, 3]``). ``rank`` and ``world_size``
    default to those of the initialised ``torch.distributed`` process group.
    """
    data = list(data)
    rank = dist.get_rank() if rank is None else int(rank)
    world_size = dist.get_world_size() if world_size is None else int(world_size)
    if not data:
        return []
    sampler = DistributedSampler(
        data, even_divisible=pad or len(data) < world_size, num_replicas=world_size, rank=rank, shuffle=False
    )
    return [data[i] for i in sampler]
