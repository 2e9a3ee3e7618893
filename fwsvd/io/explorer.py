"""The rank explorer's data from a loaded model: one builder for the dashboard and the CLI.

The dashboard computes an :class:`~fwsvd.view.explorer.ExplorerView` when no snapshot matches; ``fwsvd demo``
computes the same view ahead of time (with the default Fisher), so that the first page a new user sees opens
from the snapshot. Both go through :func:`explorer_view_of`, so what the CLI writes is what the app would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fwsvd.config import FisherConfig
from fwsvd.data.batches import example_count
from fwsvd.data.language_modeling import is_language_modeling
from fwsvd.data.tasks import Task, task_of
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_for_task
from fwsvd.surgery.analyze import cached_analyses
from fwsvd.surgery.modules import count_parameters
from fwsvd.surgery.targets import find_blocks
from fwsvd.view.analysis import LayerAnalysis
from fwsvd.view.explorer import ExplorerView, Source, fisher_identity, load_view, save_view, snapshot_key
from fwsvd.view.snapshot import snapshot_path


def explorer_view_of(source: Source, model: Any, task: Task, fisher: Any, *, tokenizer: Any = None,
                     analyses: Mapping[str, LayerAnalysis] | None = None,
                     store: DecompositionStore | None = None) -> ExplorerView:
    """The rank explorer's view of ``model`` on ``task`` with ``fisher`` (a FisherResult): every target layer's
    analyses (``analyses`` when the caller has them already, else from the analysis cache) and the facts the
    page shows (blocks, Fisher identity, validation size, headline metric). The validation size is what an
    evaluation's limit counts: for language modelling the blocks at the Fisher's length (``tokenizer`` needed),
    not the split's texts."""
    if analyses is None:
        analyses = cached_analyses(model, fisher.importances, store=store)
    if is_language_modeling(task):
        if tokenizer is None:
            raise ValueError("the rank explorer's view of a language model needs its tokenizer to count its blocks")
        validation_size = example_count(task, tokenizer, "validation", fisher.provenance["max_length"])
    else:
        validation_size = len(task.load_split("validation"))
    return ExplorerView(source.key, dict(analyses), find_blocks(model), fisher_identity(fisher.provenance),
                        validation_size, task.metric_names[0], count_parameters(model))


def prepare_explorer(source: Source | None = None, config: FisherConfig | None = None,
                     progress: Callable[[int, int], None] | None = None, *, statistics: bool = False) -> Path:
    """Cache the Fisher for ``config`` (default: the dashboard's default settings) and save the rank explorer's
    snapshot for ``source`` (default: the demo), so the dashboard opens on the full explorer; returns the
    snapshot's path. ``statistics`` also caches the token statistics asvd, whiten and kfac need (in the same
    pass). Nothing is recomputed when the snapshot (and the statistics, if asked for) are there already.

    Raises ValueError for a source whose model is not a local directory (a hub id has no files to key a
    snapshot by until it is downloaded)."""
    source = source if source is not None else Source()
    config = config if config is not None else FisherConfig.for_model(source.model)
    key = snapshot_key(source, config)
    if key is None:
        raise ValueError(f"the rank explorer's snapshot needs a local model directory; {source.model!r} is not one")
    missing = load_view(key) is None
    # Whether the statistics are cached is known only from the model's weights: load it to look them up.
    if missing or statistics:
        task = task_of(source)
        model, tokenizer, task, _ = load_for_task(source.model, task, label_map=dict(source.label_map))
        fisher = task_fisher(model, tokenizer, task, config, progress=progress, statistics=statistics)
        if missing:
            save_view(key, explorer_view_of(source, model, task, fisher, tokenizer=tokenizer))
    return snapshot_path(key)
