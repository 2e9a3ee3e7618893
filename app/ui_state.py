"""What the dashboard's pages share: session-state keys, the cached model / analyses, error boxes.

State lives in ``st.session_state`` under the keys below, so it survives moving between pages. Models are
loaded once per process (``st.cache_resource``) and never modified: every compression works on a copy.
Nothing here imports torch at module level: the rank explorer draws from an analysis snapshot
(:mod:`fwsvd.view.snapshot`) when one matches the model's files, and only loads the model when it must.
The default model and task come from the environment so tests can point the app at a tiny model:

* ``FWSVD_APP_MODEL``: "demo" (default), a model directory or a hub id;
* ``FWSVD_APP_TASK``: a task name (default "demo") or a local CSV / TSV / JSON(L) / parquet file, whose
  columns are ``FWSVD_APP_TEXT_COLUMN`` (default "text"), ``FWSVD_APP_LABEL_COLUMN`` (default "label") and
  optionally ``FWSVD_APP_PAIR_COLUMN``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from fwsvd.view import rank_config, snapshot
from fwsvd.view.analysis import LayerAnalysis, shapes_of
from fwsvd.storage.locations import demo_is_built, demo_model_dir

if TYPE_CHECKING:
    from fwsvd import DecompositionStore

logger = logging.getLogger(__name__)

# Session-state keys (widget keys are named where the widget is drawn).
SOURCE = "source"
FISHER_SETTINGS = "fisher_settings"
FISHER_RESULTS = "fisher_results"
RANKS = "ranks"
RANKS_OWNER = "ranks_owner"
EVALUATIONS = "evaluations"
SWEEPS = "sweeps"
RANK_WIDGET_PREFIX = "rank::"

DEFAULT_RANK_RATIO = 0.33  # the paper's setting: a third of each layer's rank
PAGES = {
    "model": "pages/1_model_and_task.py",
    "fisher": "pages/2_fisher.py",
    "ranks": "pages/3_rank_explorer.py",
    "compare": "pages/4_compare.py",
    "export": "pages/5_export.py",
}


@dataclass(frozen=True)
class Source:
    """The model and task the dashboard works on (hashable: it keys the caches)."""

    model: str = "demo"
    task: str = "demo"  # a task name, or "local" for ``data_file``
    data_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None

    @property
    def key(self) -> str:
        data = f"{self.data_file}:{self.text_column}:{self.label_column}:{self.pair_column}" if self.data_file else ""
        return f"{self.model}|{self.task}|{data}"

    @property
    def task_label(self) -> str:
        return f"local file {Path(self.data_file).name}" if self.task == "local" and self.data_file else self.task


@dataclass(frozen=True)
class FisherSettings:
    """How the Fisher importances are estimated (all part of their cache key)."""

    mode: str = "per_example"
    num_examples: int = 1024
    seed: int = 0
    max_length: int = 128

    def key(self, source: Source) -> tuple:
        return (source.key, self.mode, self.num_examples, self.seed, self.max_length)


@dataclass
class Loaded:
    """A loaded model with its tokenizer and task; ``model`` must never be modified."""

    source: Source
    model: Any
    tokenizer: Any
    task: Any
    blocks: list[str] = field(default_factory=list)


def default_source() -> Source:
    """The model and task named by the environment (see the module docstring), else the demo."""
    task = os.environ.get("FWSVD_APP_TASK", "demo")
    common = dict(text_column=os.environ.get("FWSVD_APP_TEXT_COLUMN", "text"),
                  label_column=os.environ.get("FWSVD_APP_LABEL_COLUMN", "label"),
                  pair_column=os.environ.get("FWSVD_APP_PAIR_COLUMN") or None)
    model = os.environ.get("FWSVD_APP_MODEL", "demo")
    if Path(task).suffix:
        return Source(model=model, task="local", data_file=task, **common)
    return Source(model=model, task=task, **common)


def source() -> Source:
    return st.session_state.setdefault(SOURCE, default_source())


def set_source(new: Source) -> None:
    """Switch model or task: the ranks and Fisher of the old one no longer apply."""
    if new != st.session_state.get(SOURCE):
        st.session_state[SOURCE] = new
        for key in (RANKS, RANKS_OWNER):
            st.session_state.pop(key, None)
        for key in [key for key in st.session_state if str(key).startswith(RANK_WIDGET_PREFIX)]:
            del st.session_state[key]


def fisher_settings() -> FisherSettings:
    return st.session_state.setdefault(FISHER_SETTINGS, FisherSettings())


def set_fisher_settings(**changes: Any) -> None:
    st.session_state[FISHER_SETTINGS] = replace(fisher_settings(), **changes)


# --------------------------------------------------------------------------------------------------
# Errors


@contextlib.contextmanager
def error_box() -> Iterator[None]:
    """Show errors as a message on the page, never as a traceback.

    The library raises ValueError / FileNotFoundError with a message meant for the user; other errors
    (a torch shape mismatch, a broken file) get their type named and the traceback goes to the server log.
    Streamlit's st.stop / st.rerun are BaseExceptions and pass through.
    """
    try:
        yield
    except (ValueError, FileNotFoundError, ModuleNotFoundError, ConnectionError) as error:
        st.error(str(error), icon=":material/error:")
    except Exception as error:  # the last line of defence: the page must explain, not crash
        logger.exception("dashboard error")
        st.error(f"Something went wrong ({type(error).__name__}): {error}", icon=":material/error:")


# --------------------------------------------------------------------------------------------------
# Cached resources


@st.cache_resource(show_spinner=False)
def decomposition_store() -> DecompositionStore:
    """One store for the process: a decomposition computed once serves every rank and every session."""
    from fwsvd import DecompositionStore

    return DecompositionStore()


@st.cache_resource(show_spinner=False)
def task_for(current: Source) -> Any:
    from fwsvd.data.tasks import get_task, local_task

    if current.task == "local":
        if not current.data_file:
            raise ValueError("choose a local data file for the task")
        return local_task(current.data_file, text_column=current.text_column, label_column=current.label_column,
                          text_pair_column=current.pair_column)
    return get_task(current.task)


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(current: Source) -> Loaded:
    from fwsvd.io.models import load_any_model
    from fwsvd.surgery.targets import find_blocks

    task = task_for(current)
    model, tokenizer, _ = load_any_model(current.model, task)
    return Loaded(current, model, tokenizer, task, find_blocks(model))


def model_is_ready(current: Source) -> bool:
    """False only for the demo before it is built (building takes minutes, so it is never implicit)."""
    return current.model != "demo" or demo_is_built()


def require_ready(current: Source) -> None:
    """Nothing if the model can be loaded now; otherwise a message pointing to the Model & task page, and stop."""
    if not model_is_ready(current):
        st.info("The demo model is not built yet. Build it on the **Model & task** page (about 6 minutes, once).",
                icon=":material/info:")
        st.page_link(PAGES["model"], label="Go to Model & task", icon=":material/arrow_forward:")
        st.stop()


def require_model() -> Loaded:
    """The current model, loaded; otherwise a message pointing to the Model & task page, and stop."""
    current = source()
    require_ready(current)
    with st.spinner(f"Loading {current.model} …"):
        return _load(current)


def require_fisher(loaded: Loaded, why: str) -> Any:
    """The cached Fisher for the current settings; otherwise ``why`` and a link to the Fisher page, and stop."""
    fisher = fisher_for(loaded)
    if fisher is None:
        st.warning(why, icon=":material/warning:")
        st.page_link(PAGES["fisher"], label="Go to the Fisher page", icon=":material/arrow_forward:")
        st.stop()
    return fisher


def build_demo(progress: Callable[[int, int], None] | None) -> Path:
    from fwsvd.io.demo import ensure_demo_model

    return ensure_demo_model(progress=progress)


def progress_bar(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """An st.progress bar and a ``progress(done, total)`` callback that moves it."""
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total else 0.0
        bar.progress(fraction, text=f"{text} ({done}/{total})" if total else text)

    return bar, update


# --------------------------------------------------------------------------------------------------
# Fisher


def fisher_for(loaded: Loaded, settings: FisherSettings | None = None) -> Any:
    """The FisherResult for these settings if this session has it or the disk cache holds it, else None."""
    from fwsvd.surgery.analyze import cached_analyses
    from fwsvd.fisher.task import cached_task_fisher

    settings = settings or fisher_settings()
    results = st.session_state.setdefault(FISHER_RESULTS, {})
    key = settings.key(loaded.source)
    if key not in results:
        cached = cached_task_fisher(loaded.model, loaded.task, num_examples=settings.num_examples,
                                            seed=settings.seed, max_length=settings.max_length, mode=settings.mode)
        if cached is None:
            return None
        results[key] = cached
    return results[key]


def compute_fisher(loaded: Loaded, settings: FisherSettings, progress: Callable[[int, int], None]) -> Any:
    from fwsvd.fisher.task import task_fisher

    result = task_fisher(loaded.model, loaded.tokenizer, loaded.task, num_examples=settings.num_examples,
                         seed=settings.seed, max_length=settings.max_length, mode=settings.mode, progress=progress)
    st.session_state.setdefault(FISHER_RESULTS, {})[settings.key(loaded.source)] = result
    if settings == fisher_settings():  # the explorer's Fisher (not a comparison's): analyse it now, so
        view_from_model(loaded, result, settings)  # the rank explorer opens from its snapshot
    return result


def fisher_key(fisher: Any) -> str:
    """A short identity of a FisherResult (its provenance), for keys of remembered results."""
    provenance = fisher.provenance
    return f"{provenance['model_digest'][:12]}:{provenance['mode']}:{provenance['num_examples']}:{provenance['seed']}"


# --------------------------------------------------------------------------------------------------
# Analyses and ranks


@st.cache_resource(show_spinner=False, max_entries=4)
def _analyses(_loaded: Loaded, _fisher: Any, key: tuple) -> dict:
    from fwsvd.surgery.analyze import cached_analyses
    from fwsvd.fisher.task import cached_task_fisher

    # ``key`` (source and Fisher identity) stands for the unhashable model and importances.
    return cached_analyses(_loaded.model, _fisher.importances, store=decomposition_store())


def analyses_for(loaded: Loaded, fisher: Any) -> dict:
    """Singular values and error curves of every target layer for SVD and FWSVD (computed once)."""
    with st.spinner("Decomposing every target layer (once) …"):
        return _analyses(loaded, fisher, (loaded.source.key, fisher_key(fisher)))


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

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return shapes_of(self.analyses)


class _NoSnapshot(LookupError):
    """No usable snapshot: raised, not returned, so that st.cache_resource does not remember the miss."""


def snapshot_key(current: Source, settings: FisherSettings) -> dict[str, Any] | None:
    """What identifies the explorer's data without loading anything: the source, the Fisher settings and
    the model's (and local data file's) names, sizes and times. None for a model that is not a local
    directory (a hub id): its files are only known once it is loaded."""
    model_files = snapshot.files_identity(demo_model_dir() if current.model == "demo" else current.model)
    if model_files is None:
        return None
    return {"kind": "rank-explorer", "source": current.key, "fisher": list(settings.key(current)[1:]),
            "model_files": model_files,
            "data_file": snapshot.files_identity(current.data_file) if current.data_file else None}


@st.cache_resource(show_spinner=False, max_entries=8)
def _view_from_snapshot(key_text: str) -> ExplorerView:
    key = json.loads(key_text)
    found = snapshot.load_snapshot(key)
    if found is None:
        raise _NoSnapshot
    try:
        return ExplorerView(key["source"], found.analyses, found.blocks, str(found.info["fisher_key"]),
                            int(found.info["validation_size"]), str(found.info["metric"]))
    except (KeyError, TypeError, ValueError) as error:  # written by another version of this page
        logger.warning("the rank explorer's snapshot lacks %s; it will be recomputed", error)
        raise _NoSnapshot from error


@st.cache_resource(show_spinner=False, max_entries=8)
def _save_snapshot(key_text: str, _view: ExplorerView) -> None:
    """Write the snapshot once per key and process; a failure (a read-only cache) only costs speed."""
    try:
        snapshot.save_snapshot(json.loads(key_text), _view.analyses, _view.blocks,
                               {"fisher_key": _view.fisher_key, "validation_size": _view.validation_size,
                                "metric": _view.metric})
    except OSError as error:
        logger.warning("could not save the rank explorer's snapshot: %s", error)


def explorer_view() -> ExplorerView | None:
    """The rank explorer's data for the current model, task and Fisher settings; None when the Fisher is
    not cached yet. Stops with a message when the model is not ready.

    From the snapshot when one matches the model's files (no torch, no model load); otherwise from the
    loaded model and cached Fisher, saving a snapshot for the next start.
    """
    current, settings = source(), fisher_settings()
    require_ready(current)
    key = snapshot_key(current, settings)
    if key is not None:
        with contextlib.suppress(_NoSnapshot):
            return _view_from_snapshot(json.dumps(key, sort_keys=True))
    loaded = require_model()
    fisher = fisher_for(loaded, settings)
    return None if fisher is None else view_from_model(loaded, fisher, settings)


def view_from_model(loaded: Loaded, fisher: Any, settings: FisherSettings) -> ExplorerView:
    """The rank explorer's data computed from the loaded model and its Fisher; saved as a snapshot when
    the model is a local directory."""
    view = ExplorerView(loaded.source.key, analyses_for(loaded, fisher), loaded.blocks, fisher_key(fisher),
                        len(loaded.task.load_split("validation")), metric_of(loaded))
    key = snapshot_key(loaded.source, settings)
    if key is not None:
        _save_snapshot(json.dumps(key, sort_keys=True), view)
    return view


def ranks(source_key: str, analyses: dict[str, LayerAnalysis]) -> dict[str, int]:
    """The current rank of every target layer of the model ``source_key`` names (the paper's 0.33 rank
    ratio until changed)."""
    if st.session_state.get(RANKS_OWNER) != source_key or RANKS not in st.session_state:
        st.session_state[RANKS] = rank_config.global_ranks(shapes_of(analyses), "rank_ratio", DEFAULT_RANK_RATIO)
        st.session_state[RANKS_OWNER] = source_key
    return st.session_state[RANKS]


def ranks_in_session() -> dict[str, int]:
    """The current ranks as stored (for widget callbacks, which run before the page)."""
    return st.session_state[RANKS]


def sync_rank_widgets(current: dict[str, int]) -> None:
    """Give every per-layer slider the current rank before it is drawn (its own state is dropped while
    another page is shown, and the global control, the table or a loaded file may have moved it)."""
    for name, rank in current.items():
        key = RANK_WIDGET_PREFIX + name
        if st.session_state.get(key) != rank:
            st.session_state[key] = int(rank)


def set_ranks(new: dict[str, int]) -> None:
    """Replace the current ranks and move every per-layer slider to match (call from a widget callback)."""
    st.session_state[RANKS] = dict(new)
    for name, rank in new.items():
        st.session_state[RANK_WIDGET_PREFIX + name] = int(rank)


def evaluations() -> dict:
    """Remembered evaluations: {(source, fisher, ranks digest, subset size): {method: result}}."""
    return st.session_state.setdefault(EVALUATIONS, {})


def sweeps() -> dict:
    """Remembered sweeps: {(source, fisher, ratios, subset size): SweepResult}."""
    return st.session_state.setdefault(SWEEPS, {})


def count(value: float) -> str:
    """A parameter count for people: 812, 12.3 k, 4.56 M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f} M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def metric_of(loaded: Loaded) -> str:
    """The task's headline metric (accuracy for the demo)."""
    return loaded.task.metric_names[0]
