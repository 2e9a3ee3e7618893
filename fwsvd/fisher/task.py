"""The Fisher of a task: importances over the task's *train* split (never the examples a model is scored
on), from the cache when the same model, data and settings were seen before."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.config import FisherConfig
from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import Task
from fwsvd.fisher.estimate import FisherResult, load_or_estimate_fisher

Progress = Callable[[int, int], None]


def task_fisher(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    config: FisherConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    statistics: bool = False,
) -> FisherResult:
    """Fisher importances of ``model``'s target layers over ``config.num_examples`` shuffled (``config.seed``)
    examples of the task's **train** split (``config``: a :class:`~fwsvd.config.FisherConfig`, default the
    paper's exact per-example Fisher over 1024 examples), from the cache when the same model, data and
    settings were seen before. ``statistics=True`` also gives each layer's token statistics over the same
    examples (``result.statistics[name]``, a LayerStatistics; see :mod:`fwsvd.fisher.statistics`)."""
    config = config if config is not None else FisherConfig()
    return load_or_estimate_fisher(
        model, partial(fisher_batches, task, tokenizer, config), data_id=task.data_id("train"),
        num_examples=fisher_example_count(task, config), seed=config.seed,
        max_length=config.max_length, mode=config.mode, batch_size=config.batch_size, cache_dir=cache_dir,
        progress=progress, statistics=statistics,
    )


def fisher_example_count(task: Task, config: FisherConfig) -> int:
    """How many train examples the Fisher of ``config`` uses: ``config.num_examples``, capped at the train
    split's size. The cache key records this count, the examples actually used."""
    return min(config.num_examples, len(task.load_split("train")))


def fisher_batches(task: Task, tokenizer: PreTrainedTokenizerBase,
                   config: FisherConfig) -> list[dict[str, torch.Tensor]]:
    """The batches :func:`task_fisher` estimates over: the first :func:`fisher_example_count` examples of the
    train split shuffled with ``config.seed``, ``config.batch_size`` at a time, padded to each batch's longest.

    The exact per-example Fisher and the token statistics are sums over examples (and their tokens): how the
    examples are grouped into batches changes only the order of summation, i.e. rounding. So in that mode the
    same examples are grouped by length (:func:`grouped_by_length`), which on the demo's reviews removes most
    of the padding a forward and backward pass would otherwise spend time on; the cache key, which records
    the examples and never the batching, stays valid. The batch shortcut squares each batch's gradient, so
    its result depends on the grouping: it keeps the shuffled order its key (``batch_size``) stands for.
    """
    return make_batches(task, tokenizer, "train", batch_size=config.batch_size, max_length=config.max_length,
                        limit=fisher_example_count(task, config), seed=config.seed, shuffle=True,
                        group_by_length=grouped_by_length(config))


def grouped_by_length(config: FisherConfig) -> bool:
    """Whether :func:`fisher_batches` groups the examples by length: in the exact mode, whose sums do not
    depend on the grouping. Fixed-length inputs (packed language-model blocks) are unaffected either way."""
    return config.mode == "per_example"


class _NotCached(LookupError):
    """Raised by the batch factory of a cache-only lookup: the importances were not in the cache."""


def cached_task_fisher(model: nn.Module, task: Any, config: FisherConfig | None = None, *,
                       cache_dir: str | Path | None = None, statistics: bool = False) -> FisherResult | None:
    """The Fisher :func:`task_fisher` would return for ``config`` (and ``statistics``) if the disk cache
    holds it, else None. Never estimates, so opening the dashboard stays fast.

    ``load_or_estimate_fisher`` builds the data only on a miss, and the factory given here refuses to, so a
    miss costs one digest of the model's weights. The cache key is task_fisher's: the same data identity and
    settings, the example count capped at the train split's size.
    """
    def refuse() -> list[dict[str, torch.Tensor]]:
        raise _NotCached

    config = config if config is not None else FisherConfig()
    try:
        return load_or_estimate_fisher(model, refuse, data_id=task.data_id("train"),
                                       num_examples=fisher_example_count(task, config),
                                       seed=config.seed, max_length=config.max_length, mode=config.mode,
                                       batch_size=config.batch_size, cache_dir=cache_dir, statistics=statistics)
    except _NotCached:
        return None
