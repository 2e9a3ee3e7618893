"""Data-parallel Fisher estimation from the command line, one process per CPU worker (gloo) or GPU (nccl)::

    torchrun --nproc_per_node=2 -m fwsvd.fisher.launch --model DIR --data batches.safetensors --out fisher.safetensors

``DIR`` is a model saved with ``save_pretrained``; ``batches.safetensors`` holds the tokenised examples as
tensors with one row per example (``input_ids``, ``attention_mask``, ``labels``, ...). With ``--statistics``
the output file also holds each layer's token statistics, all-reduced in the same pass, as
:func:`fwsvd.fisher.statistics.statistics_to_tensors` lays them out (read back with ``split_statistics``).
Library users call
:func:`fwsvd.fisher.distributed.shard_batches` and :func:`fwsvd.estimate_fisher` from their own script.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from fwsvd.fisher.distributed import rank_and_world_size, shard_batches
from fwsvd.fisher.estimate import estimate_fisher
from fwsvd.fisher.statistics import statistics_to_tensors


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
        prog="torchrun --nproc_per_node=N -m fwsvd.fisher.launch", description=main.__doc__)
    parser.add_argument("--model", required=True, help="directory written by save_pretrained")
    parser.add_argument("--data", required=True,
                        help="safetensors file: one row per example (input_ids, attention_mask, labels, ...)")
    parser.add_argument("--out", required=True, help="safetensors file the importances are written to (rank 0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", choices=("per_example", "batch"), default="per_example")
    parser.add_argument("--statistics", action="store_true",
                        help="also write each layer's token statistics (input/output second moments, |x| sums)")
    args = parser.parse_args(argv)

    import transformers
    from safetensors.torch import load_file, save_file

    device = init_from_env()
    rank, world_size = rank_and_world_size()
    config = transformers.AutoConfig.from_pretrained(args.model)
    if not config.architectures:
        raise ValueError(f"{args.model}/config.json names no architecture; save the model with save_pretrained")
    model_class = getattr(transformers, config.architectures[0])
    model = model_class.from_pretrained(args.model).to(device)
    examples = load_file(args.data)
    batches = shard_batches(iter_example_batches(examples, args.batch_size), rank, world_size)
    result = estimate_fisher(model, batches, mode=args.mode, show_progress=rank == 0, statistics=args.statistics)
    importances, layer_statistics = result if args.statistics else (result, {})
    tensors = {**importances, **statistics_to_tensors(layer_statistics)}
    if rank == 0:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, args.out)
        print(f"wrote the {args.mode} Fisher of {len(importances)} layers over {world_size} processes to {args.out}"
              + (" with their token statistics" if args.statistics else ""))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
