"""Speed of decomposition and of a rank change, on a BERT-base-shaped model (random weights).

Targets (issue 2):
  1. decomposing all 72 block Linears for one method costs at most 1.1x the summed time of bare
     torch.linalg.svd on those matrices as they are stored;
  2. after that, a new set of per-layer ranks gives a compressed model and all error curves in < 200 ms.

A rank change allocates hundreds of MB; THP_MEM_ALLOC_ENABLE=1 in the environment makes torch's allocator
ask for transparent huge pages for large tensors, which changes that cost (see docs/BENCH_COMPRESS.md).

Every figure is measured in this one process against its baseline, interleaved, median of --repeats.
Run:  python bench/bench_compress.py [--repeats 3] [--layers 12]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

from fwsvd import (DecompositionStore, analyze_layers, break_even_rank, compressed_copy, dense_weight, find_targets,
                   set_ranks_)

transformers.logging.set_verbosity_error()


def bert_base_shaped(layers: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=3072, num_labels=2)
    return BertForSequenceClassification(config).eval()


def random_fisher(targets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.rand(dense_weight(m).shape[1], generator=generator).pow(4) + 1e-4
            for name, m in targets.items()}


VARIANTS = (("svd", False), ("fwsvd", False), ("svd", True), ("fwsvd", True))  # (method, disk cache written)


def time_decompositions(targets: dict[str, torch.nn.Module], fisher: dict[str, torch.Tensor]) -> tuple[float, dict]:
    """Seconds to decompose every target layer: bare torch.linalg.svd on each weight exactly as nn.Linear
    stores it, (out, in) — the baseline — and each variant through a fresh DecompositionStore.

    Interleaved layer by layer, so that a slow spell of this shared machine hits every variant alike. A
    written variant waits for its file after each layer: the background write then overlaps nothing, so
    the figure is the whole cost of the cache (in use, writing one file overlaps the next SVD).
    """
    bare, totals = 0.0, dict.fromkeys(VARIANTS, 0.0)
    with tempfile.TemporaryDirectory() as directory:
        stores = {variant: DecompositionStore(Path(directory) / f"{variant[0]}-{variant[1]}", use_disk=variant[1])
                  for variant in VARIANTS}
        for name, module in targets.items():
            start = time.perf_counter()
            torch.linalg.svd(module.weight.detach(), full_matrices=False)
            bare += time.perf_counter() - start
            for (method, use_disk), store in stores.items():
                start = time.perf_counter()
                store.get(module, fisher[name] if method == "fwsvd" else None)
                store.flush()
                totals[method, use_disk] += time.perf_counter() - start
    return bare, totals


def random_ranks(targets: dict[str, torch.nn.Module], seed: int, below_break_even: bool) -> dict[str, int]:
    """Per-layer ranks drawn uniformly from 1..full rank, or from 1..break-even (settings that compress)."""
    rng = random.Random(seed)
    ranks = {}
    for name, module in targets.items():
        out_features, in_features = dense_weight(module).shape
        top = int(break_even_rank(out_features, in_features)) if below_break_even else min(out_features, in_features)
        ranks[name] = rng.randint(1, top)
    return ranks


def time_rank_change(model, fisher, store, ranks: dict[str, int], compressed=None) -> float:
    """A new per-layer rank setting → compressed FWSVD model + every layer's curves, both methods: a fresh
    compressed copy of ``model``, or (given ``compressed``) that compressed model re-cut in place."""
    start = time.perf_counter()
    if compressed is None:
        compressed_copy(model, ranks, method="fwsvd", fisher=fisher, store=store)
    else:
        set_ranks_(compressed, ranks)
    analyze_layers(model, fisher, store=store)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()

    model = bert_base_shaped(args.layers)
    targets = find_targets(model)
    fisher = random_fisher(targets)
    print(f"model: BERT-base shape, {args.layers} layers, {len(targets)} target Linears; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    bare, timings = [], {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        bare_seconds, totals = time_decompositions(targets, fisher)
        bare.append(bare_seconds)
        for variant, seconds in totals.items():
            timings[variant].append(seconds)
    bare_median = statistics.median(bare)
    print(f"\nbare torch.linalg.svd on all {len(targets)} weights as stored: {bare_median:.2f} s (median of {args.repeats})")
    print(f"{'method':<8}{'disk cache':<12}{'seconds':>9}{'ratio to bare':>15}   target <= 1.10")
    for (method, use_disk), values in timings.items():
        median = statistics.median(values)
        print(f"{method:<8}{('written' if use_disk else 'off'):<12}{median:>9.2f}{median / bare_median:>15.2f}")

    store = DecompositionStore(use_disk=False)
    analyze_layers(model, fisher, store=store)  # warm: decompositions and curves for both methods
    changes = 5 * args.repeats
    print(f"\nrank change -> compressed FWSVD model + all error curves (both methods); target < 200 ms; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    compressed, _ = compressed_copy(model, 0.33, method="fwsvd", fisher=fisher, store=store)
    for how, target in (("fresh compressed_copy", None), ("set_ranks_ in place", compressed)):
        for below_break_even in (False, True):
            drawn = "1..break-even" if below_break_even else "1..full rank"
            timings = [time_rank_change(model, fisher, store, random_ranks(targets, seed, below_break_even), target)
                       for seed in range(1 + changes)]
            first, rest = timings[0], timings[1:]
            print(f"  {how:<22} ranks from {drawn:<14} first change {1000 * first:4.0f} ms; next {len(rest)}: "
                  f"median {1000 * statistics.median(rest):.0f} ms, max {1000 * max(rest):.0f} ms")
    print(f"SVDs run during the changes: {store.computed - 2 * len(targets)} "
          f"(store computed {store.computed} = 2 x {len(targets)} up front)")


if __name__ == "__main__":
    main()
