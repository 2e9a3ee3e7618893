"""Benchmark: exact per-example Fisher against a plain forward+backward, the batch shortcut and a batch-size-1
loop; its peak memory; a cache hit against computing.

    python bench/bench_fisher.py                      # MiniLM-L6 and BERT-base shapes, batch 32, length 64
    python bench/bench_fisher.py --shapes minilm --repeats 3 --batches 2

Models have random weights of the real shapes (speed and memory do not depend on the values). Batches are
ragged like tokenised text: lengths drawn from [16, 64], right-padded to 64.

Time: all methods run in this process over the same batches, repeats interleaved (the order rotates each
repeat), median seconds per batch of 32. "plain" is what training costs: ``model(**batch).loss.backward()``
in eval mode with every weight's gradient computed (then freed). The batch-size-1 loop runs on fewer
batches (it is the slow reference) and is scaled to a batch of 32.

Peak memory: torch's CPU allocator is invisible to tracemalloc, so a child process measures resident memory
(RSS) with glibc told to ``mmap`` every allocation above 64 KiB (``MALLOC_MMAP_THRESHOLD_``): a freed tensor
then goes back to the OS at once, and RSS follows the live tensors. Before each method the child trims the
heap, resets the kernel's RSS high-water mark (``/proc/self/clear_refs``) and notes RSS; the method's peak is
the high-water mark after it minus that baseline — what the method itself adds above the loaded model and data.

Cache: ``load_or_estimate_fisher`` over ``--cache-examples`` examples of the MiniLM-L6 shape (the demo's
1,024 by default), once computed (a miss, written to a temporary cache), then read back (median of 5 hits).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fwsvd.fisher.estimate import estimate_fisher, load_or_estimate_fisher  # noqa: E402
from fwsvd.surgery.targets import find_targets  # noqa: E402

transformers.logging.set_verbosity_error()

SHAPES = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
BATCH_SIZE, LENGTH = 32, 64
Batch = dict[str, torch.Tensor]


def make_model(shape: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**SHAPES[shape], num_labels=2)).eval()


def make_batches(count: int, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(16, LENGTH + 1, (BATCH_SIZE,), generator=generator)
        mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
        input_ids = torch.randint(1000, 30000, (BATCH_SIZE, LENGTH), generator=generator) * mask
        labels = torch.randint(0, 2, (BATCH_SIZE,), generator=generator)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def plain(model: BertForSequenceClassification, batches: list[Batch]) -> None:
    """What a training step's gradient costs: forward + backward, all weight gradients (eval mode)."""
    for batch in batches:
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)


def exact(model: BertForSequenceClassification, batches: list[Batch]) -> None:
    estimate_fisher(model, batches, show_progress=False)


def shortcut(model: BertForSequenceClassification, batches: list[Batch]) -> None:
    estimate_fisher(model, batches, mode="batch", show_progress=False)


def single_example_loop(model: BertForSequenceClassification, batches: list[Batch]) -> None:
    """The naive exact Fisher: one example at a time, its squared weight gradients summed."""
    targets = find_targets(model)
    sums = {name: torch.zeros(module.in_features) for name, module in targets.items()}
    for batch in batches:
        for row in range(len(batch["labels"])):
            model(**{key: value[row:row + 1] for key, value in batch.items()}).loss.backward()
            for name, module in targets.items():
                sums[name] += module.weight.grad.pow(2).sum(0)
            model.zero_grad(set_to_none=True)


METHODS: dict[str, Callable[[BertForSequenceClassification, list[Batch]], None]] = {
    "plain": plain, "exact": exact, "batch": shortcut, "loop": single_example_loop}


def time_methods(shape: str, batches: int, loop_batches: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch of 32 for each method, repeats interleaved."""
    model = make_model(shape)
    data = make_batches(batches)
    runs = {name: (data[:loop_batches] if name == "loop" else data) for name in METHODS}
    names = [name for name in METHODS if name != "loop" or loop_batches > 0]
    for name in names:  # warm-up: first-call allocations and kernel selection
        METHODS[name](model, runs[name][:1])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            METHODS[name](model, runs[name])
            seconds[name].append((time.perf_counter() - start) / len(runs[name]))
        print(f"  {shape} repeat {repeat + 1}/{repeats}: "
              + ", ".join(f"{name} {seconds[name][-1]:.3f}s" for name in names), flush=True)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_probe(shape: str, batches: int, repeats: int) -> dict[str, float]:
    """Peak RSS each method adds above the loaded model and data, MiB (runs in the child process)."""
    libc = ctypes.CDLL("libc.so.6")
    model = make_model(shape)
    data = make_batches(batches)
    names = ["plain", "exact", "batch"]
    for name in names:
        METHODS[name](model, data[:1])
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            gc.collect()
            libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset the high-water mark VmHWM to the current RSS
            baseline = _status_mib("VmRSS")
            METHODS[name](model, data)
            peaks[name].append(_status_mib("VmHWM") - baseline)
    return {name: statistics.median(values) for name, values in peaks.items()}


def measure_memory(shape: str, batches: int, repeats: int, threads: int) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [sys.executable, __file__, "--memory-probe", shape, "--batches", str(batches),
               "--repeats", str(repeats), "--threads", str(threads)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def measure_cache(examples: int) -> dict[str, float]:
    model = make_model("minilm")
    data = make_batches(-(-examples // BATCH_SIZE), seed=1)
    key = {"data_id": "bench/random", "num_examples": examples, "seed": 0, "max_length": LENGTH}
    with tempfile.TemporaryDirectory() as cache_dir:
        miss = load_or_estimate_fisher(model, lambda: data, cache_dir=cache_dir, show_progress=False, **key)
        assert not miss.from_cache
        hits = [load_or_estimate_fisher(model, lambda: data, cache_dir=cache_dir, **key) for _ in range(5)]
        assert all(hit.from_cache for hit in hits)
    return {"compute": miss.seconds, "hit": statistics.median(hit.seconds for hit in hits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--batches", type=int, default=3, help="batches of 32 per timed run")
    parser.add_argument("--loop-batches", type=int, default=1, help="batches for the batch-size-1 loop (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--cache-examples", type=int, default=1024, help="0 skips the cache measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-probe", choices=list(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batches, args.repeats)))
        return

    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    for shape in args.shapes:
        seconds = time_methods(shape, args.batches, args.loop_batches, args.repeats)
        memory = measure_memory(shape, args.batches, args.memory_repeats, args.threads)
        rows.append((shape, seconds, memory))
    cache = measure_cache(args.cache_examples) if args.cache_examples else None
    print(f"load average {os.getloadavg()[0]:.1f} at end\n")

    print("| shape | plain fwd+bwd s/batch | exact s/batch (× plain) | batch mode s/batch (× plain) | "
          "bs-1 loop s/batch (× plain) | peak MiB plain | peak MiB exact (× plain) | peak MiB batch (× plain) |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, seconds, memory in rows:
        base = seconds["plain"]
        timed = [f"{seconds[name]:.3f} ({seconds[name] / base:.2f}×)" if name in seconds else "—"
                 for name in ("exact", "batch", "loop")]
        peaks = [f"{memory[name]:.0f} ({memory[name] / memory['plain']:.2f}×)" for name in ("exact", "batch")]
        print(f"| {shape} | {base:.3f} | " + " | ".join(timed) + f" | {memory['plain']:.0f} | "
              + " | ".join(peaks) + " |")
    if cache:
        print(f"\ncache, MiniLM-L6 shape, {args.cache_examples} examples: compute {cache['compute']:.2f} s, "
              f"hit {cache['hit']:.3f} s ({100 * cache['hit'] / cache['compute']:.1f}% of computing)")


if __name__ == "__main__":
    main()
