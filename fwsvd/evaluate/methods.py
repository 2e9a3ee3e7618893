"""Evaluate compressed copies of one model, one per method, on the same tokenised data: each metric with its
interval, each method's difference from SVD and from the dense model with a paired interval (same examples),
and latencies measured together, interleaved, with each copy's speed-up over the dense model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from fwsvd.evaluate.latency import ROUNDS, latency_columns
from fwsvd.evaluate.uncertainty import metric_columns
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.inputs import Statistics, check_inputs, importances_of, statistics_of
from fwsvd.surgery.targets import find_targets
from fwsvd.view.analysis import DEFAULT_METHODS

Progress = Callable[[int, int], None]


#: What every method is compared with, when it was evaluated on the same examples.
BASELINES = ("svd", "dense")


def evaluate_methods(model: nn.Module, tokenizer: Any, task: Any, ranks: Mapping[str, int] | float, *,
                     fisher: Mapping[str, torch.Tensor] | None, methods: Sequence[str] = DEFAULT_METHODS,
                     statistics: Statistics | None = None, role: str = "validation", limit: int | None = None,
                     batch_size: int = 32, max_length: int = 128, store: DecompositionStore | None = None,
                     latency_rounds: int = ROUNDS, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate a compressed copy of ``model`` per method (and ``"dense"`` for the model itself) at ``ranks``.

    The model is never modified (:func:`fwsvd.compressed_copy`); the data is tokenised once for all. Every
    method's inputs are checked first (fwsvd: ``fisher``; asvd, whiten, kfac: token ``statistics``, or those of
    a FisherResult ``fisher``), so a missing one fails before any evaluation. Returns {method: entry}, each
    entry:

    - ``"metrics"`` {name: value}, ``"intervals"`` {name: Interval} (perplexity: bootstrap over blocks),
      ``"params"``, ``"num_examples"``;
    - ``"vs_svd"`` / ``"vs_dense"``: {name: Difference} from that baseline on the same examples, when it was
      evaluated (:func:`add_differences`; call it again after merging results of several calls);
    - ``"latency_s_per_batch"``: the median seconds per batch over ``latency_rounds`` interleaved rounds on the
      first batch, timed with the dense model (even when "dense" is not among ``methods``); ``"latency"`` its
      Spread (median, interquartile range) and, for the copies, ``"speedup"``: the dense model's time over the
      copy's, median of per-round ratios, with its Spread. ``latency_rounds=0`` skips the timing (and leaves
      ``latency_s_per_batch`` from the evaluation pass, ``latency`` and ``speedup`` None);
    - ``"evaluation"``: the EvalResult, with the per-example predictions the paired intervals need.

    ``progress(done, total)`` counts batches over all methods, then one step per latency round.
    """
    from fwsvd.data.batches import evaluation_batches
    from fwsvd.evaluate.evaluation import evaluate_model
    from fwsvd.evaluate.latency import WARMUP, measure_latency

    fisher, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    layers = list(ranks) if isinstance(ranks, Mapping) else list(find_targets(model))
    for method in methods:
        if method != "dense":
            check_inputs(method, layers, fisher, statistics)
    if latency_rounds < 0:
        raise ValueError(f"latency_rounds must be >= 0, got {latency_rounds}")
    batches = evaluation_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
    if not batches:
        raise ValueError(f"no examples to evaluate in the {role} split of task {task.name!r}")
    timing = WARMUP + latency_rounds if latency_rounds else 0
    total = len(batches) * len(methods) + timing
    results: dict[str, dict[str, Any]] = {}
    candidates: dict[str, nn.Module] = {"dense": model}
    for position, method in enumerate(methods):
        offset = position * len(batches)

        def step(done: int, _: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        if method != "dense":
            candidates[method], _ = compressed_copy(model, ranks, method=method, fisher=fisher,
                                                    statistics=statistics, store=store)
        result = evaluate_model(candidates[method], tokenizer, task, role, batches=batches, progress=step)
        results[method] = {"metrics": dict(result.metrics), "intervals": dict(result.intervals),
                           "params": result.params, "latency_s_per_batch": result.latency_s_per_batch,
                           "latency": None, "speedup": None, "num_examples": result.num_examples,
                           "evaluation": result}
    if latency_rounds:
        done = len(batches) * len(methods)
        report = measure_latency(candidates, batches[:1], rounds=latency_rounds, reference="dense",
                                 progress=None if progress is None else lambda step, _: progress(done + step, total))
        for method, entry in results.items():
            entry["latency"] = report.latency(method)
            entry["latency_s_per_batch"] = entry["latency"].median
            entry["speedup"] = None if method == "dense" else report.speedup(method)
    return add_differences(task, results)


def add_differences(task: Any, results: Mapping[str, Mapping[str, Any]],
                    baselines: Sequence[str] = BASELINES) -> dict[str, dict[str, Any]]:
    """``results`` (of :func:`evaluate_methods`, possibly merged from several calls on the same examples) with
    each entry's ``"vs_{baseline}"``: {metric: Difference} against each baseline present, paired on the same
    examples; None for the baseline itself, for a missing baseline, or for entries without an evaluation."""
    from fwsvd.evaluate.evaluation import difference

    updated = {}
    for method, entry in results.items():
        entry = dict(entry)
        for baseline in baselines:
            theirs = results.get(baseline, {}).get("evaluation")
            ours = entry.get("evaluation")
            entry[f"vs_{baseline}"] = (difference(task, ours, theirs)
                                       if method != baseline and ours is not None and theirs is not None else None)
        updated[method] = entry
    return updated


def evaluations_frame(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]]) -> pd.DataFrame:
    """One row per (rank setting, method) from ``[(context, {method: result of evaluate_methods})]``:
    the context's columns (e.g. ranks digest, subset size), method, parameters, examples, latency (median
    seconds per batch, its quartiles, the speed-up over dense and its quartiles:
    :func:`fwsvd.evaluate.latency.latency_columns`), then per metric its value, interval and the paired
    differences from SVD and dense (:func:`fwsvd.evaluate.uncertainty.metric_columns`)."""
    rows = []
    for context, results in entries:
        for method, result in results.items():
            rows.append({**context, "method": method, "params": result["params"],
                         "num_examples": result["num_examples"],
                         "latency_s_per_batch": result["latency_s_per_batch"],
                         **latency_columns(result.get("latency"), result.get("speedup")),
                         **metric_columns(result["metrics"], result.get("intervals", {}),
                                          {baseline: result.get(f"vs_{baseline}") for baseline in BASELINES})})
    return pd.DataFrame(rows)
