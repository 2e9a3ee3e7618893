"""Benchmark: what collecting token statistics adds to the exact-Fisher pass, against a plain forward+backward.

    python bench/bench_statistics.py                       # demo model shape, batch 32, length 128, 5 repeats
    python bench/bench_statistics.py --threads 1 --repeats 5 --batches 1 --ragged
    python bench/bench_statistics.py --threads 1 --repeats 5 --batches 32 --data demo

The model is the demo's (all-MiniLM-L6 with a 2-label head: 6 blocks, hidden 384, FFN 1,536) when
``python -m fwsvd demo`` has built it, else a BERT of that shape with random weights (speed does not
depend on the values). By default every example is 128 real tokens (no padding): the statistics' worst
case, since padded tokens are skipped by the statistics but not by the matrix products of the forward and
backward. ``--ragged`` draws each example's length from [32, 128] and right-pads it to 128, as tokenised
sentences of varying length are. ``--data demo`` takes the batches the dashboard's default Fisher runs on:
the demo task's train split, shuffled (seed 0), the first ``--batches`` × 32 of its 1,024 examples,
truncated at 128 tokens and padded to each batch's longest (``fwsvd.fisher.task.task_fisher``'s batches).

Three passes over the same batches, in one process, repeats interleaved (the order rotates each repeat),
median seconds per batch of 32, both wall-clock and CPU time of this process (``time.process_time``): on a
machine shared with other jobs the wall clock also counts the time other processes held the cores, while
with ``--threads 1`` the CPU time is the pass's own work (it still feels their contention for caches and
memory bandwidth):

- **plain**: ``model(**batch).loss.backward()`` in eval mode, every weight gradient computed (then freed) —
  what a training step's gradient costs;
- **fisher**: ``estimate_fisher(model, batches)`` — the exact per-example Fisher;
- **fisher+statistics**: ``estimate_fisher(model, batches, statistics=True)`` — the same pass also summing
  every target layer's A = Σ x xᵀ, G = Σ g gᵀ and Σ |x|.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fwsvd.config import FisherConfig  # noqa: E402
from fwsvd.data.tasks import task_of  # noqa: E402
from fwsvd.fisher.estimate import estimate_fisher  # noqa: E402
from fwsvd.fisher.task import fisher_batches  # noqa: E402
from fwsvd.storage.locations import demo_is_built, demo_model_dir  # noqa: E402
from fwsvd.view.explorer import Source  # noqa: E402

transformers.logging.set_verbosity_error()

BATCH_SIZE, LENGTH = 32, 128
#: all-MiniLM-L6's shape, for when the demo model is not built.
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "num_labels": 2}
Batch = dict[str, torch.Tensor]


def make_model() -> tuple[nn.Module, str]:
    """(the demo model or a random one of its shape, which of the two)."""
    if demo_is_built():
        model = transformers.AutoModelForSequenceClassification.from_pretrained(demo_model_dir())
        return model.eval(), f"demo model ({demo_model_dir()})"
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**MINILM)).eval(), "random weights, all-MiniLM-L6 shape"


def make_batches(count: int, vocab_size: int, ragged: bool, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(LENGTH // 4, LENGTH + 1, (BATCH_SIZE,), generator=generator) if ragged \
            else torch.full((BATCH_SIZE,), LENGTH)
        mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": torch.randint(1000, vocab_size, (BATCH_SIZE, LENGTH), generator=generator) * mask,
                        "attention_mask": mask, "labels": torch.randint(0, 2, (BATCH_SIZE,), generator=generator)})
    return batches


def demo_batches(count: int) -> list[Batch]:
    """The first ``count`` batches of the dashboard's default Fisher on the demo (needs ``fwsvd demo``)."""
    if not demo_is_built():
        raise SystemExit("--data demo needs the demo: run `python -m fwsvd demo` first")
    tokenizer = transformers.AutoTokenizer.from_pretrained(demo_model_dir())
    return fisher_batches(task_of(Source()), tokenizer, FisherConfig())[:count]


def plain(model: nn.Module, batches: list[Batch]) -> None:
    for batch in batches:
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)


def fisher(model: nn.Module, batches: list[Batch]) -> None:
    estimate_fisher(model, batches, show_progress=False)


def fisher_and_statistics(model: nn.Module, batches: list[Batch]) -> None:
    estimate_fisher(model, batches, show_progress=False, statistics=True)


PASSES: dict[str, Callable[[nn.Module, list[Batch]], None]] = {
    "plain": plain, "fisher": fisher, "fisher+statistics": fisher_and_statistics}


def time_passes(model: nn.Module, batches: list[Batch], repeats: int) -> dict[str, dict[str, list[float]]]:
    """{"wall" | "cpu": {pass: seconds per batch, per repeat}}, the order rotating each repeat."""
    names = list(PASSES)
    for name in names:  # warm-up: first-call allocations and kernel selection
        PASSES[name](model, batches[:1])
    seconds: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            PASSES[name](model, batches)
            seconds["wall"][name].append((time.perf_counter() - wall) / len(batches))
            seconds["cpu"][name].append((time.process_time() - cpu) / len(batches))
        print(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{name} {seconds['wall'][name][-1]:.3f}s wall {seconds['cpu'][name][-1]:.3f}s cpu" for name in names),
            flush=True)
    return seconds


def report(clock: str, seconds: dict[str, list[float]]) -> None:
    """A markdown table of medians and ratios, and the ratios within each repeat (back to back, same load)."""
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\n{clock} time:\n")
    print("| pass | median s/batch | min–max s/batch | × plain | × fisher |")
    print("|---|---|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {median[name]:.3f} | {min(values):.3f}–{max(values):.3f} | "
              f"{median[name] / median['plain']:.2f}× | {median[name] / median['fisher']:.2f}× |")
    for base in ("plain", "fisher"):
        ratios = [s / b for s, b in zip(seconds["fisher+statistics"], seconds[base])]
        print(f"\nfisher+statistics / {base} per repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1, help="batches of 32 per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ragged", action="store_true", help="lengths drawn from [32, 128], right-padded to 128")
    parser.add_argument("--data", choices=["random", "demo"], default="random",
                        help="random token ids (default), or the demo task's Fisher batches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, source = make_model()
    batches = demo_batches(args.batches) if args.data == "demo" else \
        make_batches(args.batches, model.config.vocab_size, args.ragged)
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    padded = sum(batch["attention_mask"].numel() for batch in batches)
    lengths = [batch["attention_mask"].shape[1] for batch in batches]
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start; {source}; {len(batches)} {args.data} batch(es) of {BATCH_SIZE}, "
          f"padded to {min(lengths)}–{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), "
          f"{real / padded:.0%} of them real", flush=True)
    seconds = time_passes(model, batches, args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    for clock, values in seconds.items():
        report(clock, values)


if __name__ == "__main__":
    main()
