"""Speed of per-layer rank allocation for a parameter budget (fwsvd.view.allocation), on BERT-base shapes.

Target: ``allocate_ranks`` under 50 ms for the 72 block Linears of BERT-base (48 of 768×768, 12 of 3072×768,
12 of 768×3072; full rank 768), after a warm-up, for every objective.

The error curves are synthetic (the solver's work does not depend on where they come from): singular values
decay as a power law with a random exponent, with noise; the Fisher-weighted curve reweights each component by
a random positive factor (so its squared decrements are not monotone: a non-convex curve) and is scaled per
layer by 10^U(-1.5, 1.5), three orders of magnitude between layers. Each objective and budget runs ``--runs``
times after one warm-up call; the last column is the summed Fisher-weighted squared error of the allocation
relative to the uniform-ratio baseline at the same budget.

Run:  python bench/bench_allocation.py [--runs 30] [--seed 0] [--write PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fwsvd.view.allocation import OBJECTIVES, Allocation, allocate_ranks  # noqa: E402
from fwsvd.view.analysis import ErrorCurves, LayerAnalysis  # noqa: E402

SHARES = (0.5, 0.33, 0.25, 0.15)


def bert_base_shapes() -> dict[str, tuple[int, int]]:
    """The 72 target Linears of BERT-base: per block four 768×768 (q, k, v, attention output), 3072×768 and
    768×3072."""
    shapes = {}
    for block in range(12):
        for name in ("query", "key", "value", "attention.output"):
            shapes[f"encoder.layer.{block}.{name}"] = (768, 768)
        shapes[f"encoder.layer.{block}.intermediate"] = (3072, 768)
        shapes[f"encoder.layer.{block}.output"] = (768, 3072)
    return shapes


def tail_norms(energies: np.ndarray) -> np.ndarray:
    """sqrt(Σ_{i>r} energy_i) for r = 0..k: the error curve of dropping every component past rank r."""
    tail = np.concatenate([np.cumsum(energies[::-1])[::-1], [0.0]])
    return np.sqrt(tail)


def synthetic_analyses(seed: int) -> dict[str, LayerAnalysis]:
    rng = np.random.default_rng(seed)
    analyses = {}
    for name, (out_features, in_features) in bert_base_shapes().items():
        k = min(out_features, in_features)
        singular = np.arange(1, k + 1) ** -rng.uniform(0.3, 1.0) * rng.lognormal(0.0, 0.1, k)
        singular = np.sort(singular)[::-1]
        weighted_energies = singular ** 2 * rng.lognormal(0.0, 0.5, k) * 10.0 ** rng.uniform(-1.5, 1.5)
        plain, weighted = tail_norms(singular ** 2), tail_norms(weighted_energies)
        curves = {"fwsvd": ErrorCurves(plain=plain, weighted=weighted, weight_norm=float(plain[0]),
                                       weighted_norm=float(weighted[0]))}
        analyses[name] = LayerAnalysis(name, out_features, in_features, {"fwsvd": singular}, curves)
    return analyses


def weighted_error(analyses: dict[str, LayerAnalysis], allocation: Allocation) -> float:
    """Σ weighted error² over the factorized layers, whatever objective the allocation minimised."""
    return sum(float(analyses[name].curves["fwsvd"].weighted[rank]) ** 2 for name, rank in allocation.ranks.items())


def time_allocation(analyses: dict[str, LayerAnalysis], share: float, objective: str, runs: int) -> dict:
    allocate_ranks(analyses, share, objective=objective)  # warm-up
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        allocation = allocate_ranks(analyses, share, objective=objective)
        seconds.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(seconds), "max_ms": 1e3 * max(seconds), "allocation": allocation}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per objective and budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="write the results as markdown to this file")
    args = parser.parse_args(argv)

    analyses = synthetic_analyses(args.seed)
    load_before = os.getloadavg()
    results = {(share, objective): time_allocation(analyses, share, objective, args.runs)
               for share in SHARES for objective in OBJECTIVES}
    load_after = os.getloadavg()

    lines = [
        "# Rank allocation benchmark",
        "",
        f"Command: `python bench/bench_allocation.py --runs {args.runs} --seed {args.seed}"
        f"{' --write ' + str(args.write) if args.write else ''}` ({len(analyses)} BERT-base-shaped layers, "
        "synthetic curves).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, numpy "
        f"{np.__version__}; 1-minute load average {load_before[0]:.1f} before and {load_after[0]:.1f} after.",
        "",
        "| budget (share of dense) | objective | median ms | max ms | kept / budget | dense layers "
        "| Fisher-weighted error / uniform's |",
        "|---|---|---|---|---|---|---|",
    ]
    for share in SHARES:
        uniform_error = weighted_error(analyses, results[share, "uniform"]["allocation"])
        for objective in OBJECTIVES:
            result = results[share, objective]
            allocation = result["allocation"]
            lines.append(
                f"| {share} | {objective} | {result['median_ms']:.1f} | {result['max_ms']:.1f} | "
                f"{allocation.kept_params / allocation.budget:.5f} | {len(allocation.dense)} | "
                f"{weighted_error(analyses, allocation) / uniform_error:.3f} |")
    lines += ["", "Target: under 50 ms per call (median and max) for every objective and budget.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
