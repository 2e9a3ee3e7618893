"""Every method × uniform and allocated ranks on the offline demo, without fine-tuning: docs/RESULTS.md §4–5.

For each rank ratio r the budget is the parameter count that ratio keeps in the compressed layers; "uniform"
gives every layer rank round(r · full rank), "allocated" spreads the same number of parameters over the layers
where they lose least (``CompressionConfig(allocation="fisher")``: minimum summed Fisher-weighted error of that
method's own factorization; an allocation may leave a layer dense). SVD is also allocated on its plain error
(the Fisher-free baseline). One exact per-example Fisher pass on the train split gives the importances and the
token statistics the other methods need; every model is scored on the same tokenised test split.

    python bench/results_methods.py --json docs/results/methods_allocation.json

(``--methods svd,fwsvd`` for the methods of the paper only; ``--rules allocated --allocation-floor 0`` for the
allocations alone, without the floor; ``--limit N`` scores N test examples.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import transformers

from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import get_task
from fwsvd.evaluate.evaluation import evaluate_model
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_any_model
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.targets import find_targets
from fwsvd.view.allocation import DEFAULT_FLOOR
from fwsvd.view.analysis import METHODS, needs_statistics

transformers.logging.set_verbosity_error()


def _runs(methods: list[str], ratios: list[float], rules: list[str]) -> list[tuple[str, float, str | None]]:
    """(method, ratio, allocation objective or None for uniform), in table order."""
    runs = []
    for ratio in ratios:
        for method in methods:
            if "uniform" in rules:
                runs.append((method, ratio, None))
            if "allocated" in rules:
                runs.append((method, ratio, "fisher"))
                if method == "svd":
                    runs.append((method, ratio, "plain"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rank-ratios", default="0.5,0.33,0.25,0.15")
    parser.add_argument("--fisher-examples", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rules", default="uniform,allocated", help="uniform, allocated or both")
    parser.add_argument("--allocation-floor", type=float, default=DEFAULT_FLOOR,
                        help="share of the uniform rank every allocated layer keeps at least")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = [method for method in args.methods.split(",") if method]
    ratios = [float(ratio) for ratio in args.rank_ratios.split(",")]

    task = get_task("demo")
    model, tokenizer, _ = load_any_model("demo", task)
    fisher_config = FisherConfig(num_examples=args.fisher_examples, max_length=args.max_length)
    started = time.perf_counter()
    fisher = task_fisher(model, tokenizer, task, fisher_config,
                         statistics=any(needs_statistics(method) for method in methods))
    print(f"Fisher{' and statistics' if fisher.statistics else ''}: "
          f"{'cached' if fisher.from_cache else f'{time.perf_counter() - started:.0f} s'}", flush=True)
    batches = make_batches(task, tokenizer, "test", max_length=args.max_length, limit=args.limit)
    dense = evaluate_model(model, tokenizer, task, "test", batches=batches)
    rows = [{"method": "dense", "rank_ratio": None, "allocation": None, "params": dense.params,
             "accuracy": dense.metrics["accuracy"]}]
    print(f"dense: {dense.metrics['accuracy']:.4f}, {dense.params:,} parameters", flush=True)
    store = DecompositionStore()
    targets = find_targets(model)
    for method, ratio, allocation in _runs(methods, ratios, args.rules.split(",")):
        config = CompressionConfig(method=method, rank_ratio=ratio, allocation=allocation,
                                   allocation_floor=args.allocation_floor, fisher=fisher_config)
        compressed, report = compressed_copy(model, config, fisher=fisher.importances, statistics=fisher.statistics,
                                             store=store)
        result = evaluate_model(compressed, tokenizer, task, "test", batches=batches)
        row = {"method": method, "rank_ratio": ratio, "allocation": allocation,
               "allocation_floor": args.allocation_floor if allocation else None, "params": result.params,
               "accuracy": result.metrics["accuracy"], "dense_layers": len(targets) - len(report.layers)}
        rows.append(row)
        print(f"{method:6s} r={ratio:<5} {allocation or 'uniform':8s} acc {row['accuracy']:.4f} "
              f"params {row['params']:,} dense layers {row['dense_layers']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"fisher": fisher.provenance, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
