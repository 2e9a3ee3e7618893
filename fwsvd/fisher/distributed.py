"""Collectives for data-parallel Fisher estimation with ``torch.distributed``.

Each process takes its own shard of the batches (:func:`shard_batches`); the per-layer sums are then
all-reduced, so every rank ends with the importances of the whole data set. Fisher importances are sums over
examples, so splitting the examples across processes changes nothing but the order of floating-point
additions. Outside an initialised process group every function here is the identity. The launcher is
:mod:`fwsvd.fisher.launch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(batches: Iterable[T], rank: int | None = None, world_size: int | None = None) -> Iterator[T]:
    """This rank's share of ``batches``: every ``world_size``-th batch, starting at ``rank``.

    Defaults to the current process group. Every rank must iterate the same batches in the same order
    (same data, same seed) for the shards to partition the data.
    """
    default_rank, default_world_size = rank_and_world_size()
    rank = default_rank if rank is None else rank
    world_size = default_world_size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return itertools.islice(batches, rank, None, world_size)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op outside a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``source``'s copy (a no-op outside a group)."""
    if is_distributed():
        dist.broadcast(tensor, src=source)
    return tensor
