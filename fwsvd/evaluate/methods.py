"""Evaluate compressed copies of one model, one per method, on the same tokenised data."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.inputs import Statistics, check_inputs, importances_of, statistics_of
from fwsvd.surgery.targets import find_targets
from fwsvd.view.analysis import DEFAULT_METHODS

Progress = Callable[[int, int], None]


def evaluate_methods(model: nn.Module, tokenizer: Any, task: Any, ranks: Mapping[str, int] | float, *,
                     fisher: Mapping[str, torch.Tensor] | None, methods: Sequence[str] = DEFAULT_METHODS,
                     statistics: Statistics | None = None, role: str = "validation", limit: int | None = None,
                     batch_size: int = 32, max_length: int = 128, store: DecompositionStore | None = None,
                     progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate a compressed copy of ``model`` per method (and ``"dense"`` for the model itself) at ``ranks``.

    The model is never modified (:func:`fwsvd.compressed_copy`); the data is tokenised once for all. Every
    method's inputs are checked first (fwsvd: ``fisher``; asvd, whiten, kfac: token ``statistics``, or those of
    a FisherResult ``fisher``), so a missing one fails before any evaluation. Returns {method: {"metrics":
    {...}, "intervals": {metric: (low, high)}, "params": int, "latency_s_per_batch": float, "num_examples": int}}
    (``intervals`` empty where the metrics have none; perplexity has a bootstrap interval).
    ``progress(done, total)`` counts batches over all methods.
    """
    from fwsvd.data.batches import make_batches
    from fwsvd.evaluate.evaluation import evaluate_model

    fisher, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    layers = list(ranks) if isinstance(ranks, Mapping) else list(find_targets(model))
    for method in methods:
        if method != "dense":
            check_inputs(method, layers, fisher, statistics)
    batches = make_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
    if not batches:
        raise ValueError(f"no examples to evaluate in the {role} split of task {task.name!r}")
    total = len(batches) * len(methods)
    results: dict[str, dict[str, Any]] = {}
    for position, method in enumerate(methods):
        offset = position * len(batches)

        def step(done: int, _: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        if method == "dense":
            candidate = model
        else:
            candidate, _ = compressed_copy(model, ranks, method=method, fisher=fisher, statistics=statistics,
                                           store=store)
        result = evaluate_model(candidate, tokenizer, task, role, batches=batches, progress=step)
        results[method] = {"metrics": dict(result.metrics), "intervals": dict(result.intervals),
                           "params": result.params,
                           "latency_s_per_batch": result.latency_s_per_batch, "num_examples": result.num_examples}
    return results


def evaluations_frame(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]]) -> pd.DataFrame:
    """One row per (rank setting, method) from ``[(context, {method: result of evaluate_methods})]``:
    the context's columns (e.g. ranks digest, subset size), method, parameters, latency, then the metrics."""
    rows = []
    for context, results in entries:
        for method, result in results.items():
            rows.append({**context, "method": method, "params": result["params"],
                         "num_examples": result["num_examples"],
                         "latency_s_per_batch": result["latency_s_per_batch"], **result["metrics"]})
    return pd.DataFrame(rows)
