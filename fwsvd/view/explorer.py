"""What the rank explorer draws, and where it comes from without loading the model.

A :class:`Source` names a model and a task; an :class:`ExplorerView` holds every target layer's analyses with
facts about the model, task and Fisher they came from. A view is saved as an analysis snapshot
(:mod:`fwsvd.view.snapshot`) under :func:`snapshot_key`: the source, the Fisher settings and the model's (and
local data file's) names, sizes and times, all known without torch. The dashboard opens the explorer from it
in seconds; benchmarks find the same file the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwsvd.storage.locations import demo_model_dir, key_digest
from fwsvd.view import snapshot
from fwsvd.view.analysis import LayerAnalysis, shapes_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """The model and task the dashboard works on (hashable: it keys the caches)."""

    model: str = "demo"  # "demo", a model directory or a hub id
    task: str = "demo"  # a task name, or "local" for ``data_file``
    data_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    #: ((label in the data, the model's label name or id), ...) for labels the model names otherwise
    label_map: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environment(cls) -> Source:
        """The dashboard's default: ``FWSVD_APP_MODEL`` ("demo", a model directory or a hub id) and
        ``FWSVD_APP_TASK`` (a task name, or a local CSV / TSV / JSON(L) / parquet file whose columns are
        ``FWSVD_APP_TEXT_COLUMN``, ``FWSVD_APP_LABEL_COLUMN`` and optionally ``FWSVD_APP_PAIR_COLUMN``),
        else the demo on its task."""
        task = os.environ.get("FWSVD_APP_TASK", "demo")
        common = dict(text_column=os.environ.get("FWSVD_APP_TEXT_COLUMN", "text"),
                      label_column=os.environ.get("FWSVD_APP_LABEL_COLUMN", "label"),
                      pair_column=os.environ.get("FWSVD_APP_PAIR_COLUMN") or None)
        model = os.environ.get("FWSVD_APP_MODEL", "demo")
        if Path(task).suffix:
            return cls(model=model, task="local", data_file=task, **common)
        return cls(model=model, task=task, **common)

    @property
    def key(self) -> str:
        data = f"{self.data_file}:{self.text_column}:{self.label_column}:{self.pair_column}" if self.data_file else ""
        labels = "|" + ",".join(f"{data}={model}" for data, model in self.label_map) if self.label_map else ""
        return f"{self.model}|{self.task}|{data}{labels}"

    @property
    def task_label(self) -> str:
        return f"local file {Path(self.data_file).name}" if self.task == "local" and self.data_file else self.task


@dataclass(frozen=True)
class ExplorerView:
    """What the rank explorer draws: every target layer's analyses, and facts about the model, task and
    Fisher they came from. Read from a snapshot (no model loaded) or computed from the loaded model."""

    source_key: str
    analyses: dict[str, LayerAnalysis]
    blocks: list[str]
    fisher_key: str
    validation_size: int
    metric: str
    #: every parameter of the dense model (embeddings and heads included): the whole-model share's base
    #: (:func:`fwsvd.view.analysis.totals`); None from a snapshot written without it
    model_params: int | None = None

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return shapes_of(self.analyses)


def fisher_identity(provenance: Mapping[str, Any]) -> str:
    """A short identity of a Fisher estimate from its provenance (model, data and every Fisher setting),
    for keys of results remembered per Fisher."""
    return f"{provenance['model_digest'][:12]}:{key_digest(dict(provenance))[:12]}"


def snapshot_key(source: Source, fisher_config: Any) -> dict[str, Any] | None:
    """What identifies the explorer's data without loading anything: the source, the Fisher settings
    (``fisher_config``: a :class:`fwsvd.config.FisherConfig`, keyed by its ``key()`` as every Fisher lookup is)
    and the model's (and local data file's) names, sizes and times. None for a model that is not a local
    directory (a hub id): its files are only known once it is loaded."""
    model_files = snapshot.files_identity(demo_model_dir() if source.model == "demo" else source.model)
    if model_files is None:
        return None
    return {"kind": "rank-explorer", "source": source.key, "fisher": fisher_config.key(), "model_files": model_files,
            "data_file": snapshot.files_identity(source.data_file) if source.data_file else None}


def load_view(key: Mapping[str, Any]) -> ExplorerView | None:
    """The view saved under ``key`` (:func:`snapshot_key`), or None when there is none or it lacks what the
    explorer needs (written by another version: logged, to be recomputed)."""
    found = snapshot.load_snapshot(key)
    if found is None:
        return None
    try:
        model_params = found.info.get("model_params")
        return ExplorerView(str(key["source"]), found.analyses, found.blocks, str(found.info["fisher_key"]),
                            int(found.info["validation_size"]), str(found.info["metric"]),
                            None if model_params is None else int(model_params))
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("the rank explorer's snapshot lacks %s; it will be recomputed", error)
        return None


def save_view(key: Mapping[str, Any], view: ExplorerView) -> Path:
    """Save ``view`` as the snapshot under ``key``; returns its path."""
    return snapshot.save_snapshot(key, view.analyses, view.blocks, {"fisher_key": view.fisher_key,
                                                                    "validation_size": view.validation_size,
                                                                    "metric": view.metric,
                                                                    "model_params": view.model_params})
