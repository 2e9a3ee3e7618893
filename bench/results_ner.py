"""Every method × uniform and allocated ranks on the NER demo (tweets), without fine-tuning: docs/RESULTS.md §NER.

The NER demo (``fwsvd demo --name ner``) compressed by each method at each rank ratio, with every layer at the
ratio's rank ("uniform") or the same parameters spread over the layers by the Fisher-weighted error of that
method's own factorization (``allocation="fisher"``); SVD also on its plain error. The Fisher and token
statistics are the demo's default ones (exact per-example Fisher, 1,024 train tweets), cached by ``fwsvd demo``.
Every model tags the same 239 test tweets; the entity F1 (seqeval) carries a 95% bootstrap interval over
sentences, and each compressed model's difference from SVD at the same ratio and rule a paired one.

    python bench/results_ner.py --json docs/results/ner_methods.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.data.batches import IGNORE_INDEX, make_batches
from fwsvd.data.tasks import get_task
from fwsvd.evaluate.evaluation import predict
from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_any_model
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.modules import count_parameters
from fwsvd.surgery.targets import find_targets
from fwsvd.view.analysis import METHODS
from fwsvd.evaluate.uncertainty import metric_intervals, paired_differences

transformers.logging.set_verbosity_error()


def _tags(model: torch.nn.Module, batches: list, names: tuple[str, ...]) -> tuple[list, list]:
    """(predicted tags, gold tags) per sentence, over the positions that carry a word's tag."""
    logits, _ = predict(model, batches)
    predicted, gold = [], []
    for batch_logits, batch in zip(logits, batches):
        for row_logits, row_labels in zip(batch_logits.argmax(-1), batch["labels"]):
            keep = row_labels != IGNORE_INDEX
            predicted.append([names[i] for i in row_logits[keep].tolist()])
            gold.append([names[i] for i in row_labels[keep].tolist()])
    return predicted, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rank-ratios", default="0.5,0.33,0.25")
    parser.add_argument("--rules", default="uniform,allocated", help="uniform, allocated or both")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = [method for method in args.methods.split(",") if method]
    rules = args.rules.split(",")
    started = time.perf_counter()
    task = get_task("demo-ner")
    model, tokenizer, _ = load_any_model("demo-ner", task)
    fisher_config = FisherConfig()
    fisher = task_fisher(model, tokenizer, task, fisher_config, statistics=True)
    print(f"Fisher and statistics: {'cached' if fisher.from_cache else f'{fisher.seconds:.0f} s'}", flush=True)
    batches = make_batches(task, tokenizer, "test", max_length=64)
    dense_tags, gold = _tags(model, batches, task.label_names)

    def _ids(sentences: list) -> list:
        return [[task.label_names.index(tag) for tag in sentence] for sentence in sentences]

    def row(name: str, ratio: float | None, allocation: str | None, tags: list, params: int,
            baseline: list | None, seconds: float) -> dict:
        ids, gold_ids = _ids(tags), _ids(gold)
        f1 = compute_metrics(task, ids, gold_ids)
        interval = metric_intervals(task, ids, gold_ids)["f1"]
        result = {"method": name, "rank_ratio": ratio, "allocation": allocation, "params": params,
                  **f1, "f1_interval": (interval.low, interval.high), "seconds": seconds}
        if baseline is not None:
            difference = paired_differences(task, ids, _ids(baseline), gold_ids)["f1"].interval
            result["minus_svd_interval"] = (difference.low, difference.high)
        print(f"{name:6s} r={ratio!s:<5} {allocation or 'uniform':8s} F1 {result['f1']:.3f} "
              f"[{result['f1_interval'][0]:.3f}, {result['f1_interval'][1]:.3f}] params {params:,} "
              f"({seconds:.0f} s)", flush=True)
        return result

    rows = [row("dense", None, None, dense_tags, count_parameters(model), None, 0.0)]
    store = DecompositionStore()
    targets = find_targets(model)
    for ratio in [float(ratio) for ratio in args.rank_ratios.split(",")]:
        for rule in rules:
            allocations = [None] if rule == "uniform" else ["fisher"]
            svd_tags = None
            for method in methods:
                for allocation in allocations + (["plain"] if rule == "allocated" and method == "svd" else []):
                    begun = time.perf_counter()
                    config = CompressionConfig(method=method, rank_ratio=ratio, allocation=allocation,
                                               fisher=fisher_config)
                    compressed, report = compressed_copy(model, config, fisher=fisher.importances,
                                                         statistics=fisher.statistics, store=store)
                    tags, _ = _tags(compressed, batches, task.label_names)
                    baseline = svd_tags if method != "svd" else None
                    result = row(method, ratio, allocation, tags, count_parameters(compressed), baseline,
                                 time.perf_counter() - begun)
                    result["dense_layers"] = len(targets) - len(report.layers)
                    rows.append(result)
                    if method == "svd" and allocation in (None, "fisher"):
                        svd_tags = tags
    total = time.perf_counter() - started
    print(f"total {total:.0f} s on {torch.get_num_threads()} thread(s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"fisher": fisher.provenance, "fisher_seconds": fisher.seconds,
                                         "fisher_from_cache": fisher.from_cache, "total_seconds": total,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
