"""Every method × uniform and allocated ranks on an offline demo, without fine-tuning: docs/RESULTS.md §4–5 (the
sentiment demo) and §6 (the language-modelling demo).

For each rank ratio r the budget is the parameter count that ratio keeps in the compressed layers (with
``--param-budgets``, the share b of the compressed layers' weights); "uniform" gives every layer rank
round(r · full rank) (or the rank that keeps b of its weights), "allocated" spreads the same number of parameters over the layers
where they lose least (``CompressionConfig(allocation="fisher")``: minimum summed Fisher-weighted error of that
method's own factorization; an allocation may leave a layer dense). SVD is also allocated on its plain error
(the Fisher-free baseline). One exact per-example Fisher pass on the train split gives the importances and the
token statistics the other methods need; every model is scored on the same tokenised test split.

    python bench/results_methods.py --json docs/results/methods_allocation.json
    python bench/results_methods.py --model demo-lm --task demo-lm --param-budgets 0.95,0.9,0.8 \
        --fisher-examples 32 --max-length 256 --batch-size 4 --limit 16 --json docs/results/lm_methods.json

(``--methods svd,fwsvd`` for the methods of the paper only; ``--rules allocated --allocation-floor 0`` for the
allocations alone, without the floor; ``--limit N`` scores N test examples — blocks, for language modelling.)
Each row holds the task's headline metric (accuracy, or perplexity: lower is better) and its 95% interval where
the metric has one, and the seconds its compression and evaluation took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import get_task
from fwsvd.evaluate.evaluation import evaluate_model
from fwsvd.evaluate.uncertainty import Interval
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_any_model
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.targets import find_targets
from fwsvd.view.allocation import DEFAULT_FLOOR
from fwsvd.view.analysis import METHODS, needs_statistics

transformers.logging.set_verbosity_error()


def _runs(methods: list[str], ratios: list[float], rules: list[str]) -> list[tuple[str, float, str | None]]:
    """(method, ratio or budget, allocation objective or None for uniform): per ratio, every method uniform,
    then every method allocated; SVD allocated on its plain error last — so that a long run stopped early has
    whole comparisons."""
    runs = []
    for ratio in ratios:
        runs += [(method, ratio, None) for method in methods] if "uniform" in rules else []
        runs += [(method, ratio, "fisher") for method in methods] if "allocated" in rules else []
    if "allocated" in rules and "svd" in methods:
        runs += [("svd", ratio, "plain") for ratio in ratios]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo, demo-lm or a model directory")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--methods", default=",".join(METHODS))
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--rank-ratios", default="0.5,0.33,0.25,0.15")
    rules.add_argument("--param-budgets", help="shares of the compressed layers' weights, instead of rank ratios")
    parser.add_argument("--fisher-examples", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="of the Fisher pass and of evaluation")
    parser.add_argument("--rules", default="uniform,allocated", help="uniform, allocated or both")
    parser.add_argument("--allocation-floor", type=float, default=DEFAULT_FLOOR,
                        help="share of the uniform rank every allocated layer keeps at least")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = [method for method in args.methods.split(",") if method]
    rule = "param_budget" if args.param_budgets else "rank_ratio"
    values = [float(value) for value in (args.param_budgets or args.rank_ratios).split(",")]

    started = time.perf_counter()
    task = get_task(args.task)
    model, tokenizer, _ = load_any_model(args.model, task)
    metric = task.metric_names[0]
    fisher_config = FisherConfig(num_examples=args.fisher_examples, max_length=args.max_length,
                                 batch_size=args.batch_size)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fisher = task_fisher(model, tokenizer, task, fisher_config,
                         statistics=any(needs_statistics(method) for method in methods))
    fisher_seconds = time.perf_counter() - started
    print(f"Fisher{' and statistics' if fisher.statistics else ''}: "
          f"{'cached' if fisher.from_cache else f'{fisher_seconds:.0f} s'}", flush=True)
    batches = make_batches(task, tokenizer, "test", batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit)
    started = time.perf_counter()
    dense = evaluate_model(model, tokenizer, task, "test", batches=batches)
    rows = [{"method": "dense", rule: None, "allocation": None, "params": dense.params,
             metric: dense.metrics[metric], "interval": _bounds(dense.intervals.get(metric)),
             "seconds": time.perf_counter() - started, "block_losses": dense.block_losses}]
    print(f"dense: {metric} {dense.metrics[metric]:.4f}{_interval_text(rows[0]['interval'])}, "
          f"{dense.params:,} parameters", flush=True)
    store = DecompositionStore()
    targets = find_targets(model)
    for method, value, allocation in _runs(methods, values, args.rules.split(",")):
        started = time.perf_counter()
        config = CompressionConfig(method=method, allocation=allocation, allocation_floor=args.allocation_floor,
                                   fisher=fisher_config, **{rule: value})
        compressed, report = compressed_copy(model, config, fisher=fisher.importances, statistics=fisher.statistics,
                                             store=store)
        result = evaluate_model(compressed, tokenizer, task, "test", batches=batches)
        row = {"method": method, rule: value, "allocation": allocation,
               "allocation_floor": args.allocation_floor if allocation else None, "params": result.params,
               metric: result.metrics[metric], "interval": _bounds(result.intervals.get(metric)),
               "dense_layers": len(targets) - len(report.layers), "seconds": time.perf_counter() - started,
               "block_losses": result.block_losses}
        rows.append(row)
        print(f"{method:6s} {rule}={value:<5} {allocation or 'uniform':8s} {metric} {row[metric]:.4f}"
              f"{_interval_text(row['interval'])} params {row['params']:,} dense layers {row['dense_layers']} "
              f"({row['seconds']:.0f} s)", flush=True)
        if args.json:  # after every row, so that a long run stopped early keeps what it measured
            cost = {"load_seconds": load_seconds, "fisher_seconds": None if fisher.from_cache else fisher_seconds,
                    "torch_threads": torch.get_num_threads()}
            args.json.write_text(json.dumps({"model": args.model, "task": task.name, "metric": metric,
                                             "fisher": fisher.provenance, "cost": cost, "rows": rows}, indent=2))


def _bounds(interval: Interval | None) -> tuple[float, float] | None:
    """[low, high] for the JSON rows (their format since the first results)."""
    return None if interval is None else (interval.low, interval.high)


def _interval_text(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.4f}, {interval[1]:.4f}]"


if __name__ == "__main__":
    main()
