"""The Fisher of a task: importances over the task's *train* split (never the examples a model is scored
on), from the cache when the same model, data and settings were seen before."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import Task
from fwsvd.fisher.estimate import FisherResult, load_or_estimate_fisher

Progress = Callable[[int, int], None]


def task_fisher(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    num_examples: int = 1024,
    seed: int = 0,
    max_length: int = 128,
    batch_size: int = 32,
    mode: str = "per_example",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> FisherResult:
    """Fisher importances of ``model``'s target layers over ``num_examples`` shuffled (``seed``) examples of
    the task's **train** split, from the cache when the same model, data and settings were seen before."""
    if num_examples < 1:
        raise ValueError(f"the Fisher needs at least 1 example, got num_examples={num_examples}")
    # The cache key records the examples actually used: a small train split caps the request.
    used = min(num_examples, len(task.load_split("train")))

    def batches() -> list[dict[str, torch.Tensor]]:
        return make_batches(task, tokenizer, "train", batch_size=batch_size, max_length=max_length,
                            limit=used, seed=seed, shuffle=True)

    return load_or_estimate_fisher(
        model, batches, data_id=task.data_id("train"), num_examples=used, seed=seed, max_length=max_length,
        mode=mode, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
    )


class _NotCached(LookupError):
    """Raised by the batch factory of a cache-only lookup: the importances were not in the cache."""


def cached_task_fisher(model: nn.Module, task: Any, *, num_examples: int, seed: int, max_length: int,
                       mode: str, batch_size: int = 32, cache_dir: str | Path | None = None) -> Any:
    """The Fisher :func:`task_fisher` would return (a ``FisherResult``) if the disk cache
    holds it, else None. Never estimates, so opening the dashboard stays fast.

    ``load_or_estimate_fisher`` builds the data only on a miss, and the factory given here refuses to, so a
    miss costs one digest of the model's weights. The cache key is task_fisher's: the same data identity,
    the example count capped at the train split's size, and (batch mode) task_fisher's default batch size.
    """
    def refuse() -> list[dict[str, torch.Tensor]]:
        raise _NotCached

    used = min(num_examples, len(task.load_split("train")))
    try:
        return load_or_estimate_fisher(model, refuse, data_id=task.data_id("train"), num_examples=used,
                                       seed=seed, max_length=max_length, mode=mode, batch_size=batch_size,
                                       cache_dir=cache_dir)
    except _NotCached:
        return None
