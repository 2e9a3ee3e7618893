"""Data-parallel Fisher estimation with ``torch.distributed``.

Each process (launched by ``torchrun`` or ``accelerate launch``) takes its own shard of the batches; the
per-layer sums are then all-reduced, so every rank ends with the importances of the whole data set.
Fisher importances are sums over examples, so splitting the examples across processes changes nothing but
the order of floating-point additions.

Launch the command-line entry on 2 CPU processes (gloo) or one process per GPU (nccl)::

    torchrun --nproc_per_node=2 -m fwsvd.distributed --model DIR --data batches.safetensors --out fisher.safetensors

``DIR`` is a model saved with ``save_pretrained``; ``batches.safetensors`` holds the tokenised examples as
tensors with one row per example (``input_ids``, ``attention_mask``, ``labels``, ...). Library users call
:func:`shard_batches` and :func:`fwsvd.fisher.estimate_fisher` from their own script instead.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
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


def init_from_env() -> torch.device:
    """Join the process group described by torchrun's environment variables; returns this rank's device.

    One GPU per process (nccl) when CUDA is present, otherwise CPU processes over gloo.
    """
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def iter_example_batches(examples: dict[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Cut tensors holding one row per example into consecutive batches of ``batch_size`` rows."""
    counts = {len(tensor) for tensor in examples.values()}
    if len(counts) != 1:
        raise ValueError(f"every tensor needs one row per example; got row counts {sorted(counts)}")
    (count,) = counts
    for start in range(0, count, batch_size):
        yield {name: tensor[start:start + batch_size] for name, tensor in examples.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: Fisher importances of a saved model over saved examples, data-parallel."""
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m fwsvd.distributed", description=main.__doc__)
    parser.add_argument("--model", required=True, help="directory written by save_pretrained")
    parser.add_argument("--data", required=True,
                        help="safetensors file: one row per example (input_ids, attention_mask, labels, ...)")
    parser.add_argument("--out", required=True, help="safetensors file the importances are written to (rank 0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", choices=("per_example", "batch"), default="per_example")
    args = parser.parse_args(argv)

    # Imported here so that `import fwsvd.distributed` stays light for library users.
    import transformers
    from safetensors.torch import load_file, save_file

    from fwsvd.fisher import estimate_fisher

    device = init_from_env()
    rank, world_size = rank_and_world_size()
    config = transformers.AutoConfig.from_pretrained(args.model)
    if not config.architectures:
        raise ValueError(f"{args.model}/config.json names no architecture; save the model with save_pretrained")
    model_class = getattr(transformers, config.architectures[0])
    model = model_class.from_pretrained(args.model).to(device)
    examples = load_file(args.data)
    batches = shard_batches(iter_example_batches(examples, args.batch_size), rank, world_size)
    importances = estimate_fisher(model, batches, mode=args.mode, show_progress=rank == 0)
    if rank == 0:
        save_file({name: tensor.contiguous() for name, tensor in importances.items()}, args.out)
        print(f"wrote the {args.mode} Fisher of {len(importances)} layers over {world_size} processes to {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
