"""The dashboard's headline figures, measured ahead of time (:mod:`fwsvd.view.headline` holds and reads them).

``fwsvd demo`` calls :func:`prepare_headline` after the rank explorer's snapshot: it evaluates the dense model
and the default methods at the default ranks on the validation examples the explorer evaluates, with their
intervals, paired differences from SVD and speed-ups measured interleaved with the dense model, and stores the
figures next to the snapshot. The Fisher it uses carries the token statistics, so the dashboard adds ASVD,
whitened or K-FAC SVD without a pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fwsvd.config import DEFAULT_RANK_RATIO, CompressionConfig, FisherConfig
from fwsvd.data.tasks import task_of
from fwsvd.evaluate.methods import evaluate_methods
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_for_task
from fwsvd.view.analysis import DEFAULT_METHODS, LayerAnalysis
from fwsvd.view.explorer import Source, load_view, snapshot_key
from fwsvd.view.headline import (Headline, evaluation_limit, headline_key, headline_of, headline_path, load_headline,
                                 save_headline)
from fwsvd.view.rank_config import ranks_digest
from fwsvd.view.rank_plan import compressed_ranks

Progress = Callable[[int, int], None]


def default_ranks(analyses: Mapping[str, LayerAnalysis]) -> dict[str, int]:
    """Every layer's rank at the paper's rank ratio: what the rank explorer opens on."""
    return CompressionConfig(rank_ratio=DEFAULT_RANK_RATIO).resolve_ranks(
        {name: layer.shape for name, layer in analyses.items()})


def measure_headline(model: Any, tokenizer: Any, task: Any, fisher: Any, analyses: Mapping[str, LayerAnalysis],
                     ranks: Mapping[str, int], *, limit: int, methods: Sequence[str] = DEFAULT_METHODS,
                     store: DecompositionStore | None = None, progress: Progress | None = None) -> Headline:
    """Evaluate the dense model and ``methods`` at ``ranks`` on ``limit`` validation examples (the Fisher's
    token length, as the dashboard evaluates) and return the headline figures."""
    results = evaluate_methods(model, tokenizer, task, compressed_ranks(ranks, analyses),
                               methods=("dense", *methods), fisher=fisher, limit=limit,
                               max_length=fisher.provenance["max_length"], store=store, progress=progress)
    return headline_of(results, task.metric_names[0], ranks_digest(ranks))


def prepare_headline(source: Source | None = None, config: FisherConfig | None = None, *,
                     statistics_progress: Progress | None = None, progress: Progress | None = None) -> Path:
    """Measure and store the headline for ``source`` (default: the demo) at the default ranks, then cache the
    Fisher for ``config`` (default settings) with its token statistics; returns the headline's path. Nothing
    is measured or gathered again when it is stored already. ``statistics_progress`` follows the statistics pass (batches),
    ``progress`` the evaluation (batches, then latency rounds). Needs the rank explorer's snapshot
    (:func:`fwsvd.io.explorer.prepare_explorer`) first."""
    source = source if source is not None else Source()
    config = config if config is not None else FisherConfig()
    key = snapshot_key(source, config)
    view = load_view(key) if key is not None else None
    if view is None:
        raise ValueError("the headline is measured at the rank explorer's snapshot: prepare the explorer first "
                         "(a local model directory)")
    ranks = default_ranks(view.analyses)
    limit = evaluation_limit(view.validation_size, view.metric)
    stored = headline_key(key, ranks_digest(ranks), limit)
    model, tokenizer, task, _ = load_for_task(source.model, task_of(source), label_map=dict(source.label_map))
    if load_headline(stored) is None:  # the default methods need the Fisher alone: the headline comes first
        fisher = task_fisher(model, tokenizer, task, config)
        save_headline(stored, measure_headline(model, tokenizer, task, fisher, view.analyses, ranks, limit=limit,
                                               progress=progress))
    task_fisher(model, tokenizer, task, config, statistics=True, progress=statistics_progress)
    return headline_path(stored)
