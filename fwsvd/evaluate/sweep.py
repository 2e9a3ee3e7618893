"""Accuracy against size: compress fresh copies over methods × rank ratios and evaluate each.

The paper's main figure. The evaluation split is tokenised once for every run, each run compresses a copy
of the dense model (the decompositions come from the store, so a method's SVDs run once for all ratios)
and, optionally, fine-tunes the copy before scoring it. The dense model itself is never modified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.config import CompressionConfig
from fwsvd.surgery.compress import compressed_copy
from fwsvd.data.batches import make_batches
from fwsvd.evaluate.evaluation import EvalResult, evaluate_model
from fwsvd.evaluate.finetune import finetune_
from fwsvd.fisher.estimate import FisherResult
from fwsvd.factorize.store import DecompositionStore
from fwsvd.data.tasks import Role, Task
from fwsvd.surgery.inputs import Statistics, check_inputs, importances_of, statistics_of
from fwsvd.surgery.targets import find_targets
from fwsvd.view.analysis import DEFAULT_METHODS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SweepRun:
    """One compressed model of a sweep: how it was made and what it scored."""

    method: str
    rank_ratio: float
    params: int
    metrics: dict[str, float]
    latency_s_per_batch: float
    finetuned: bool
    #: {metric: (low, high)} 95% intervals where the metric has one (perplexity)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class SweepResult:
    """The dense model's evaluation and one run per (method, rank ratio), in sweep order."""

    dense: EvalResult
    runs: list[SweepRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"dense": {...}, "runs": [{"method", "rank_ratio", "params", "metrics", ...}, ...]}``."""
        return {"dense": self.dense.to_dict(), "runs": [asdict(run) for run in self.runs]}

    def to_dataframe(self):  # -> pandas.DataFrame; imported lazily to keep import time low
        """One row per model, the dense one first: method, rank_ratio, params, params_fraction,
        latency_s_per_batch, finetuned, then one column per metric."""
        import pandas as pd

        rows = [{"method": "dense", "rank_ratio": 1.0, "params": self.dense.params, "params_fraction": 1.0,
                 "latency_s_per_batch": self.dense.latency_s_per_batch, "finetuned": False, **self.dense.metrics}]
        rows += [{"method": run.method, "rank_ratio": run.rank_ratio, "params": run.params,
                  "params_fraction": run.params / self.dense.params,
                  "latency_s_per_batch": run.latency_s_per_batch, "finetuned": run.finetuned, **run.metrics}
                 for run in self.runs]
        return pd.DataFrame(rows)


def run_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    methods: Iterable[str] = DEFAULT_METHODS,
    rank_ratios: Iterable[float] = (0.5, 0.33, 0.25),
    fisher: Mapping[str, torch.Tensor] | FisherResult | None = None,
    statistics: Statistics | FisherResult | None = None,
    config: CompressionConfig | None = None,
    role: Role = "test",
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    finetune_epochs: int = 0,
    finetune_kwargs: Mapping[str, Any] | None = None,
    store: DecompositionStore | None = None,
    progress: Progress | None = None,
    on_run: Callable[[SweepRun], None] | None = None,
) -> SweepResult:
    """Evaluate the dense ``model``, then for each method and rank ratio a compressed copy of it.

    ``fisher`` ({layer: importance} or a FisherResult) is needed for "fwsvd"; estimate it on the train split
    (``task_fisher``). "asvd", "whiten" and "kfac" need token ``statistics`` ({layer: LayerStatistics}, or a
    FisherResult from ``task_fisher(..., statistics=True)``; by default those of a FisherResult ``fisher``);
    every method's inputs are checked before anything is evaluated. ``finetune_epochs`` > 0 fine-tunes each
    copy on the train split first (the paper's recipe — Adam, lr 2e-5, batch 32 — unless ``finetune_kwargs``
    says otherwise). ``config`` gives the rest of every run's recipe (target_modules, allocation); each run
    replaces its method and rank rule, so it must pin no layer (rank_pattern).
    ``progress(done, total)`` counts models evaluated (dense included); ``on_run(run)`` sees each run as it
    finishes, for live tables.
    """
    base = config if config is not None else CompressionConfig()
    if base.rank_pattern:
        raise ValueError(f"a sweep sets every layer by rank ratio, but the config pins {len(base.rank_pattern)} "
                         "layer(s) in rank_pattern: leave it empty")
    configs = [dataclasses.replace(base, method=method, rank_ratio=ratio, param_budget=None)
               for method in methods for ratio in rank_ratios]  # checks every method and ratio first
    if not configs:
        raise ValueError("give at least one method and one rank ratio")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    importances, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    layers = [name for name in find_targets(model) if base.selects(name)]
    for method in dict.fromkeys(run.method for run in configs):
        check_inputs(method, layers, importances, statistics)

    batches = make_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
    total = 1 + len(configs)
    result = SweepResult(dense=evaluate_model(model, tokenizer, task, role, batches=batches))
    if progress is not None:
        progress(1, total)
    tuning = {"max_length": max_length, **(finetune_kwargs or {})}
    for run_config in configs:
        compressed, _ = compressed_copy(model, run_config, fisher=importances, statistics=statistics, store=store)
        if finetune_epochs:
            finetune_(compressed, tokenizer, task, epochs=finetune_epochs, **tuning)
        evaluation = evaluate_model(compressed, tokenizer, task, role, batches=batches)
        run = SweepRun(method=run_config.method, rank_ratio=run_config.rank_ratio, params=evaluation.params,
                       metrics=evaluation.metrics, latency_s_per_batch=evaluation.latency_s_per_batch,
                       finetuned=finetune_epochs > 0, intervals=evaluation.intervals)
        result.runs.append(run)
        if on_run is not None:
            on_run(run)
        if progress is not None:
            progress(1 + len(result.runs), total)
    return result
