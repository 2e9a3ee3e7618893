"""Accuracy against size: compress fresh copies over methods × rank ratios and evaluate each.

The paper's main figure. The evaluation split is tokenised once for every run, each run compresses a copy
of the dense model (the decompositions come from the store, so a method's SVDs run once for all ratios)
and, optionally, fine-tunes the copy before scoring it. The dense model itself is never modified.

Every metric carries its 95% interval, every run its paired difference from the dense model and from SVD at
the same ratio (same examples), and its latency is timed interleaved with the dense model's, so its speed-up
is a median of per-round ratios with their spread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.config import CompressionConfig
from fwsvd.surgery.compress import compressed_copy
from fwsvd.data.batches import evaluation_batches
from fwsvd.evaluate.evaluation import EvalResult, difference, evaluate_model
from fwsvd.evaluate.latency import ROUNDS, Spread, latency_columns, measure_latency
from fwsvd.evaluate.uncertainty import Difference, Interval, metric_columns
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
    #: median seconds per batch, timed interleaved with the dense model (else during the evaluation pass)
    latency_s_per_batch: float
    finetuned: bool
    intervals: dict[str, Interval] = field(default_factory=dict)
    #: seconds per batch (median, quartiles) and the dense model's time over this run's, per round
    latency: Spread | None = None
    speedup: Spread | None = None
    #: {metric: Difference} from the dense model and from SVD at the same ratio, paired on the same examples
    vs_dense: dict[str, Difference] | None = None
    vs_svd: dict[str, Difference] | None = None
    #: the evaluation with its per-example predictions (not in to_dict)
    evaluation: EvalResult | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: intervals, spreads and differences as dicts, the per-example predictions left out."""
        def differences(found: dict[str, Difference] | None) -> dict[str, Any] | None:
            return None if found is None else {name: value.to_dict() for name, value in found.items()}

        return {"method": self.method, "rank_ratio": self.rank_ratio, "params": self.params,
                "metrics": dict(self.metrics), "latency_s_per_batch": self.latency_s_per_batch,
                "finetuned": self.finetuned,
                "intervals": {name: interval.to_dict() for name, interval in self.intervals.items()},
                "latency": self.latency.to_dict() if self.latency else None,
                "speedup": self.speedup.to_dict() if self.speedup else None,
                "vs_dense": differences(self.vs_dense), "vs_svd": differences(self.vs_svd)}


@dataclass
class SweepResult:
    """The dense model's evaluation and one run per (method, rank ratio), in sweep order; the dense model's
    seconds per batch from every round it was timed in beside a run."""

    dense: EvalResult
    runs: list[SweepRun] = field(default_factory=list)
    dense_seconds: list[float] = field(default_factory=list)

    @property
    def dense_latency(self) -> Spread | None:
        return Spread.of(self.dense_seconds) if self.dense_seconds else None

    def to_dict(self) -> dict[str, Any]:
        """``{"dense": {..., "latency": {...}}, "runs": [{"method", "rank_ratio", "params", "metrics", ...},
        ...]}``; the dense model's ``latency_s_per_batch`` is the median of its interleaved rounds when timed."""
        latency = self.dense_latency
        dense = {**self.dense.to_dict(), "latency": latency.to_dict() if latency else None}
        if latency:
            dense["latency_s_per_batch"] = latency.median
        return {"dense": dense, "runs": [run.to_dict() for run in self.runs]}

    def to_dataframe(self):  # -> pandas.DataFrame; imported lazily to keep import time low
        """One row per model, the dense one first: method, rank_ratio, params, params_fraction,
        latency_s_per_batch, finetuned, the latency's quartiles and the speed-up over dense with its quartiles
        (:func:`fwsvd.evaluate.latency.latency_columns`), then per metric its value, 95% interval and paired
        differences from dense and SVD (:func:`fwsvd.evaluate.uncertainty.metric_columns`)."""
        import pandas as pd

        latency = self.dense_latency
        rows = [{"method": "dense", "rank_ratio": 1.0, "params": self.dense.params, "params_fraction": 1.0,
                 "latency_s_per_batch": latency.median if latency else self.dense.latency_s_per_batch,
                 "finetuned": False, **latency_columns(latency, None),
                 **metric_columns(self.dense.metrics, self.dense.intervals, {"dense": None, "svd": None})}]
        rows += [{"method": run.method, "rank_ratio": run.rank_ratio, "params": run.params,
                  "params_fraction": run.params / self.dense.params,
                  "latency_s_per_batch": run.latency_s_per_batch, "finetuned": run.finetuned,
                  **latency_columns(run.latency, run.speedup),
                  **metric_columns(run.metrics, run.intervals, {"dense": run.vs_dense, "svd": run.vs_svd})}
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
    latency_rounds: int = ROUNDS,
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
    Each run is timed beside the dense model on the first batch, ``latency_rounds`` interleaved rounds (0: not
    timed), and compared with the dense model and with SVD at its ratio on the same examples (a run evaluated
    before its SVD run gets ``vs_svd`` when the sweep ends: ``on_run`` sees it without).
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
    if latency_rounds < 0:
        raise ValueError(f"latency_rounds must be >= 0, got {latency_rounds}")
    importances, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    layers = [name for name in find_targets(model) if base.selects(name)]
    for method in dict.fromkeys(run.method for run in configs):
        check_inputs(method, layers, importances, statistics)

    batches = evaluation_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
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
        timing: dict[str, Any] = {"latency_s_per_batch": evaluation.latency_s_per_batch}
        if latency_rounds:
            report = measure_latency({"dense": model, "run": compressed}, batches[:1], rounds=latency_rounds)
            result.dense_seconds += report.seconds["dense"]
            timing = {"latency_s_per_batch": report.latency("run").median, "latency": report.latency("run"),
                      "speedup": report.speedup("run")}
        svd = _svd_at(result.runs, run_config.rank_ratio) if run_config.method != "svd" else None
        run = SweepRun(method=run_config.method, rank_ratio=run_config.rank_ratio, params=evaluation.params,
                       metrics=evaluation.metrics, finetuned=finetune_epochs > 0, intervals=dict(evaluation.intervals),
                       vs_dense=difference(task, evaluation, result.dense),
                       vs_svd=None if svd is None else difference(task, evaluation, svd), evaluation=evaluation,
                       **timing)
        result.runs.append(run)
        if on_run is not None:
            on_run(run)
        if progress is not None:
            progress(1 + len(result.runs), total)
    # Runs evaluated before SVD at their ratio (methods listed before "svd") are compared now.
    for position, run in enumerate(result.runs):
        svd = _svd_at(result.runs, run.rank_ratio) if run.vs_svd is None and run.method != "svd" else None
        if svd is not None:
            result.runs[position] = dataclasses.replace(run, vs_svd=difference(task, run.evaluation, svd))
    return result


def _svd_at(runs: list[SweepRun], rank_ratio: float) -> EvalResult | None:
    """The evaluation of the SVD run at ``rank_ratio`` among ``runs``, if there is one."""
    return next((run.evaluation for run in runs if run.method == "svd" and run.rank_ratio == rank_ratio), None)
