"""Other ways to run a factorized Linear on the CPU, against the two products LowRankLinear takes.

docs/BENCH_INFERENCE.md finds the pair slower than its share of the multiply-adds (median 1.19 over MiniLM's
layer shapes), the kernels' rate on 96–192-wide products. This script measures what else could run the same
function faster, each against the dense layer in the same interleaved rounds (fwsvd.evaluate.latency):

- ``pair``: ``F.linear(F.linear(x, A), B, bias)`` — what LowRankLinear does at an aligned rank;
- ``pair, oneDNN``: the same two products through oneDNN (``torch.ops.mkldnn._linear_pointwise``) instead of MKL;
- ``pair, rows by 256``: rows in chunks of 256, the rank-wide intermediate of each chunk staying in cache
  (``addmm`` into the preallocated output); ``dense, rows by 256`` is the control: the same chunking of the
  dense product, so that a gain of the pair's that the dense layer gets too is not mistaken for the pair's;
- ``q, k, v stacked`` (384×384 only): three layers that read the same input (attention's query, key and value)
  with their first factors stacked into one product, three second products on its column slices; against the
  three dense layers.

Ratios are time / dense time / ideal, ideal = r·(m+n)/(m·n): 1 means the variant runs at the dense product's rate
of multiply-adds. Random weights: GEMM time does not depend on the values.

Run:  python bench/bench_gemm_variants.py [--threads 1] [--rounds 15] [--rows 64 512 2048]
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from fwsvd.evaluate.latency import measure_latency

SHAPES = ((384, 384), (1536, 384), (384, 1536))  # MiniLM-L6's target layers, (out, in)
CHUNK = 256
#: Each timed call runs its batch this many times, so that 64-row products (tenths of a millisecond) are timed
#: over more than the timer's and the loop's own cost.
REPEATS = 8


class _Call(nn.Module):
    """A function of the input as a module, so fwsvd.evaluate.latency can time it like a model."""

    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def _by_rows(product, out_features: int):
    def run(x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(x.shape[0], out_features)
        for start in range(0, x.shape[0], CHUNK):
            product(x[start:start + CHUNK], out[start:start + CHUNK])
        return out
    return run


def variants(out_features: int, in_features: int, rank: int) -> dict[str, nn.Module]:
    """{name: module} for one layer shape and rank."""
    dense_w, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    first, second = torch.randn(rank, in_features), torch.randn(out_features, rank)
    first_t, second_t = first.t(), second.t()
    dnn = torch.ops.mkldnn._linear_pointwise
    found = {
        "dense": lambda x: F.linear(x, dense_w, bias),
        "pair": lambda x: F.linear(F.linear(x, first), second, bias),
        "pair, oneDNN": lambda x: dnn(dnn(x, first, None, "none", [], ""), second, bias, "none", [], ""),
        "pair, rows by 256": _by_rows(lambda x, out: torch.addmm(bias, x @ first_t, second_t, out=out),
                                      out_features),
        "dense, rows by 256": _by_rows(lambda x, out: torch.addmm(bias, x, dense_w.t(), out=out), out_features),
    }
    return {name: _Call(function) for name, function in found.items()}


def stacked_variants(features: int, rank: int) -> dict[str, nn.Module]:
    """Three features×features layers on one input: dense, three pairs, and the pairs with stacked first factors."""
    dense = [(torch.randn(features, features), torch.randn(features)) for _ in range(3)]
    pairs = [(torch.randn(rank, features), torch.randn(features, rank), bias) for _, bias in dense]
    stacked = torch.cat([first for first, _, _ in pairs])

    def stacked_pairs(x: torch.Tensor) -> list[torch.Tensor]:
        inner = F.linear(x, stacked)
        return [F.linear(inner[:, k * rank:(k + 1) * rank], second, bias) for k, (_, second, bias) in enumerate(pairs)]

    found = {"dense": lambda x: [F.linear(x, weight, bias) for weight, bias in dense],
             "pair": lambda x: [F.linear(F.linear(x, first), second, bias) for first, second, bias in pairs],
             "q, k, v stacked": stacked_pairs}
    return {name: _Call(function) for name, function in found.items()}


def ratios(models: dict[str, nn.Module], rows: int, in_features: int, rounds: int, ideal: float) -> dict[str, float]:
    batches = [{"x": torch.randn(rows, in_features)}] * REPEATS
    report = measure_latency(models, batches, rounds=rounds, reference="dense")
    return {name: report.time_ratio(name).median / ideal for name in models if name != "dense"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--ranks", type=int, nargs="+", default=[96, 128, 192])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds after a warm-up, {REPEATS} calls per timing\n")
    names = ["pair", "pair, oneDNN", "pair, rows by 256", "dense, rows by 256"]
    # the dense control is a ratio to the dense layer itself: the pair's ideal does not apply to it
    headers = [f"{name} / ideal" for name in names[:-1]] + [f"{names[-1]} / dense"]
    print("| layer (out × in) | rank | rows | ideal × | " + " | ".join(headers) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    summary: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for out_features, in_features in SHAPES:
            for rank in args.ranks:
                ideal = rank * (out_features + in_features) / (out_features * in_features)
                models = variants(out_features, in_features, rank)
                for rows in args.rows:
                    found = ratios(models, rows, in_features, args.rounds, ideal)
                    found["dense, rows by 256"] *= ideal
                    for name in names:
                        summary[name].append(found[name])
                    print(f"| {out_features} × {in_features} | {rank} | {rows} | {ideal:.3f} | "
                          + " | ".join(f"{found[name]:.3f}" for name in names) + " |", flush=True)
        print("\nmedian over the rows: " + ", ".join(f"{header} {statistics.median(values):.3f}"
                                                     for header, values in zip(headers, summary.values())))
        print("\n| three 384 × 384 layers, one input | rank | rows | ideal × | pair / ideal | stacked / ideal |")
        print("|---|---|---|---|---|---|")
        for rank in args.ranks:
            ideal = 2 * rank / 384
            models = stacked_variants(384, rank)
            for rows in args.rows:
                found = ratios(models, rows, 384, args.rounds, ideal)
                print(f"| q, k, v | {rank} | {rows} | {ideal:.3f} | {found['pair']:.3f} | "
                      f"{found['q, k, v stacked']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
