"""Metrics (with their intervals), parameter count and latency of a (possibly compressed) model on a task split.

Only the model's ``logits`` are used, so any model works whose forward takes the tokenizer's batch and
returns logits — including models whose Linear layers were swapped for low-rank modules. The per-example
predictions are kept with the result, so two models scored on the same examples can be compared with a paired
interval (:func:`difference`). A causal language model is scored by perplexity
(:mod:`fwsvd.evaluate.perplexity`): its logits are reduced to each block's summed loss batch by batch, since a
vocabulary's worth of logits per token would not fit in memory; its blocks' losses are what it keeps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fwsvd.data.batches import IGNORE_INDEX, evaluation_batches
from fwsvd.data.language_modeling import PERPLEXITY, is_language_modeling
from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.evaluate.perplexity import block_losses, perplexity_difference, perplexity_metrics
from fwsvd.evaluate.uncertainty import Difference, Interval, metric_intervals, paired_differences
from fwsvd.surgery.modules import count_parameters
from fwsvd.storage.sharing import exclusive
from fwsvd.data.tasks import Role, Task

Progress = Callable[[int, int], None]


@dataclass
class EvalResult:
    """What :func:`evaluate_model` measured."""

    metrics: dict[str, float]
    params: int
    #: median wall-clock seconds of one forward pass over a batch, during this evaluation only: to compare
    #: models, measure them together (:func:`fwsvd.evaluate.latency.measure_latency`), as evaluate_methods does
    latency_s_per_batch: float
    num_examples: int
    batch_size: int
    #: {metric: 95% interval over the examples} (:func:`fwsvd.evaluate.uncertainty.metric_intervals`;
    #: perplexity: bootstrap over blocks)
    intervals: dict[str, Interval] = field(default_factory=dict)
    #: what compute_metrics was given, per example (per sentence for NER): kept for paired comparisons,
    #: left out of to_dict
    predictions: Any = field(default=None, repr=False, compare=False)
    references: Any = field(default=None, repr=False, compare=False)
    #: language modelling: (summed next-token loss, predicted tokens) of each evaluated block, in order
    block_losses: list[tuple[float, int]] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        """The figures as JSON-ready values: the per-example arrays are left out, intervals are dicts."""
        return {"metrics": dict(self.metrics), "params": self.params, "latency_s_per_batch": self.latency_s_per_batch,
                "num_examples": self.num_examples, "batch_size": self.batch_size,
                "intervals": {name: interval.to_dict() for name, interval in self.intervals.items()}}


def predict(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    progress: Progress | None = None,
    reduce: Callable[[torch.Tensor, dict[str, torch.Tensor]], Any] | None = None,
) -> tuple[list[Any], list[float]]:
    """(logits per batch, seconds per batch), in inference mode; every module's train/eval mode is restored.

    ``labels`` are not passed to the model, so no loss is computed and timed. ``reduce(logits, batch)``, when
    given, replaces each batch's logits by what it returns (outside the timed forward pass).
    """
    device = _device_of(model)
    logits, seconds = [], []
    # A shared model (the dashboard's dense one) is run by one thread at a time: another's eval/train switch
    # or Fisher hooks must not meet these forward passes. Compressed copies are other objects: not held up.
    with exclusive(model):
        training = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.inference_mode():
                for done, batch in enumerate(batches, start=1):
                    inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
                    start = time.perf_counter()
                    output = model(**inputs)
                    seconds.append(time.perf_counter() - start)
                    logits.append(reduce(output.logits, batch) if reduce else output.logits.float().cpu())
                    if progress is not None:
                        progress(done, len(batches))
        finally:
            for module, flag in training:
                module.training = flag
    return logits, seconds


def evaluate_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    task: Task,
    role: Role = "validation",
    *,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    progress: Progress | None = None,
    batches: Sequence[dict[str, torch.Tensor]] | None = None,
) -> EvalResult:
    """Score ``model`` on the ``role`` split of ``task`` (or on ready-made ``batches``, which makes the
    tokenizer unnecessary and lets a sweep tokenise once for many models).

    Latency is the median over batches, robust to the first (warm-up) batch and to a shorter last one. A
    language model takes fewer blocks than ``batch_size`` at once where their logits would pass a memory budget
    (:func:`fwsvd.data.batches.evaluation_batch_size`).
    """
    if batches is None:
        if tokenizer is None:
            raise ValueError("evaluate_model needs a tokenizer, or ready-made batches")
        batches = evaluation_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
    if not batches:
        raise ValueError(f"no examples to evaluate in the {role} split of task {task.name!r}")
    sizes = {"num_examples": sum(len(batch["labels"]) for batch in batches),
             "batch_size": max(len(batch["labels"]) for batch in batches)}
    if is_language_modeling(task):
        per_batch, seconds = predict(model, batches, progress=progress, reduce=block_losses)
        blocks = [block for batch in per_batch for block in batch]
        metrics, intervals = perplexity_metrics(blocks)
        return EvalResult(metrics=metrics, params=count_parameters(model),
                          latency_s_per_batch=statistics.median(seconds), intervals=intervals,
                          block_losses=blocks, **sizes)
    logits, seconds = predict(model, batches, progress=progress)
    predictions, references = _collect(task, logits, [batch["labels"] for batch in batches])
    return EvalResult(
        metrics=compute_metrics(task, predictions, references),
        params=count_parameters(model),
        latency_s_per_batch=statistics.median(seconds),
        intervals=metric_intervals(task, predictions, references),
        predictions=predictions,
        references=references,
        **sizes,
    )


def difference(task: Task, result: EvalResult, baseline: EvalResult) -> dict[str, Difference]:
    """``{metric: Difference}`` of ``result`` minus ``baseline``, with the paired interval; both must have been
    scored on the same examples of ``task`` (the same batches), else ValueError."""
    if result.block_losses is not None and baseline.block_losses is not None:
        return {PERPLEXITY: perplexity_difference(result.block_losses, baseline.block_losses)}
    if result.references is None or baseline.references is None:
        raise ValueError("a paired comparison needs the per-example predictions of both evaluations")
    if not _same_references(result.references, baseline.references):
        raise ValueError(f"a paired comparison needs the same examples: these evaluations were scored on "
                         f"different ones ({result.num_examples} and {baseline.num_examples} examples)")
    return paired_differences(task, result.predictions, baseline.predictions, result.references)


def _same_references(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, np.ndarray) or isinstance(theirs, np.ndarray):
        return np.array_equal(np.asarray(ours), np.asarray(theirs))
    return len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def _collect(task: Task, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[list, list]:
    """Predictions and references in the form compute_metrics takes for the task's kind."""
    if task.kind == "token_classification":
        # One sequence per sentence, without the -100 positions (padding differs between batches).
        predictions, references = [], []
        for batch_logits, batch_labels in zip(logits, labels):
            for sentence_logits, sentence_labels in zip(batch_logits.argmax(-1), batch_labels):
                keep = sentence_labels != IGNORE_INDEX
                predictions.append(sentence_logits[keep].numpy())
                references.append(sentence_labels[keep].numpy())
        return predictions, references
    stacked = torch.cat(logits).numpy()
    predictions = stacked[:, 0] if task.kind == "regression" else stacked.argmax(-1)
    return predictions, np.concatenate([label.numpy() for label in labels])


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
