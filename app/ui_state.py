"""What the dashboard's pages share: session-state keys, the cached model / analyses, error boxes.

State lives in ``st.session_state`` under the keys below, so it survives moving between pages. Models are
loaded once per process (``st.cache_resource``) and never modified: every compression works on a copy.
Nothing here imports torch at module level: the rank explorer draws from an analysis snapshot
(:mod:`fwsvd.view.explorer`) when one matches the model's files, and only loads the model when it must.
The default model and task come from the environment (:meth:`fwsvd.view.explorer.Source.from_environment`),
so tests can point the app at a tiny model. The session holds one compression: the explorer's Fisher settings
(a :class:`~fwsvd.config.FisherConfig`), its ranks (a layer at full rank is kept dense, see :mod:`fwsvd.view.rank_plan`),
and the method chosen on the Export page; and the methods compared on every page (the sidebar's choice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from fwsvd.config import DEFAULT_RANK_RATIO, CompressionConfig, FisherConfig
from fwsvd.storage.locations import demo_is_built
from fwsvd.view.analysis import DEFAULT_METHODS, METHOD_LABELS, METHODS, LayerAnalysis, needs_statistics, shapes_of
from fwsvd.view.explorer import ExplorerView, Source, fisher_identity, load_view, save_view, snapshot_key
from fwsvd.view.rank_plan import compressed_ranks

if TYPE_CHECKING:
    from fwsvd import DecompositionStore

logger = logging.getLogger(__name__)

# Session-state keys (widget keys are named where the widget is drawn).
SOURCE = "source"
FISHER_CONFIG = "fisher_config"
FISHER_RESULTS = "fisher_results"
RANKS = "ranks"
RANKS_OWNER = "ranks_owner"
EVALUATIONS = "evaluations"
SWEEPS = "sweeps"
RANK_WIDGET_PREFIX = "rank::"
CHOSEN_METHODS = "methods"  # the sidebar widget's key on each page
METHODS_CHOICE = "methods_choice"  # the choice itself, carried from page to page

PAGES = {
    "model": "pages/1_model_and_task.py",
    "fisher": "pages/2_fisher.py",
    "ranks": "pages/3_rank_explorer.py",
    "compare": "pages/4_compare.py",
    "export": "pages/5_export.py",
}


@dataclass
class Loaded:
    """A loaded model with its tokenizer and task; ``model`` must never be modified."""

    source: Source
    model: Any
    tokenizer: Any
    task: Any
    blocks: list[str] = field(default_factory=list)


def source() -> Source:
    return st.session_state.setdefault(SOURCE, Source.from_environment())


def set_source(new: Source) -> None:
    """Switch model or task: the ranks and Fisher of the old one no longer apply."""
    if new != st.session_state.get(SOURCE):
        st.session_state[SOURCE] = new
        for key in (RANKS, RANKS_OWNER):
            st.session_state.pop(key, None)
        for key in [key for key in st.session_state if str(key).startswith(RANK_WIDGET_PREFIX)]:
            del st.session_state[key]


def fisher_config() -> FisherConfig:
    """The explorer's Fisher settings (chosen on the Fisher page)."""
    return st.session_state.setdefault(FISHER_CONFIG, FisherConfig())


def set_fisher_config(config: FisherConfig) -> None:
    st.session_state[FISHER_CONFIG] = config


def compression_config(method: str, analyses: dict[str, LayerAnalysis]) -> CompressionConfig:
    """The session's compression with ``method``: the explorer's ranks, every factorized layer pinned and the
    layers kept dense left out (of rank_pattern and target_modules alike), and its Fisher settings. What the
    Export page downloads and records in the model it builds."""
    ranks = compressed_ranks(st.session_state[RANKS], analyses)
    if not ranks:
        raise ValueError("every layer is kept dense at the current ranks (each at its full rank): there is nothing "
                         "to compress; lower a rank on the Rank explorer")
    return CompressionConfig(method=method, fisher=fisher_config()).with_ranks(ranks)


# --------------------------------------------------------------------------------------------------
# Methods


def method_label(method: str) -> str:
    """A method's display name (SVD, FWSVD, …); ``dense`` is the uncompressed model."""
    return "dense model" if method == "dense" else METHOD_LABELS.get(method, method)


def methods_text(methods: Sequence[str]) -> str:
    """Methods for a sentence: "SVD", "SVD and FWSVD", "SVD, FWSVD and ASVD"."""
    labels = [method_label(method) for method in methods]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def chosen_methods() -> tuple[str, ...]:
    """The methods to compare, chosen in the sidebar (drawn here; the choice is the session's, shared by every
    page that calls this), in the library's order; with none chosen, a message and stop.

    Each page draws its own widget (one drawn by the router is lost on reruns under AppTest) and a widget of
    the same key on another page is another widget, so the choice is kept apart and given as its default."""
    chosen = st.sidebar.multiselect("Methods to compare", METHODS,
                                    default=st.session_state.get(METHODS_CHOICE, list(DEFAULT_METHODS)),
                                    format_func=method_label, key=CHOSEN_METHODS,
                                    help="Every error plot, spectrum, evaluation and sweep shows these methods. "
                                         "Methods weighted by token statistics compute them (once) with the Fisher.")
    st.session_state[METHODS_CHOICE] = chosen
    if not chosen:
        st.info("Choose at least one method to compare in the sidebar.", icon=":material/info:")
        st.stop()
    return tuple(method for method in METHODS if method in chosen)


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
    from fwsvd.data.tasks import task_of

    return task_of(current)


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


def _results_key(current: Source, config: FisherConfig, statistics: bool) -> tuple[str, str, bool]:
    return current.key, json.dumps(config.key(), sort_keys=True), statistics


def _statistics_flag(statistics: bool) -> dict[str, bool]:
    """The library's ``statistics=`` argument, passed only when asked (the plain Fisher is its default)."""
    return {"statistics": True} if statistics else {}


def fisher_for(loaded: Loaded, config: FisherConfig | None = None, *, statistics: bool = False) -> Any:
    """The FisherResult for ``config`` (default: the explorer's), with the token statistics when
    ``statistics``, if this session has it or the disk cache holds it, else None."""
    from fwsvd.fisher.task import cached_task_fisher

    config = config or fisher_config()
    results = st.session_state.setdefault(FISHER_RESULTS, {})
    key = _results_key(loaded.source, config, statistics)
    if key not in results:
        cached = cached_task_fisher(loaded.model, loaded.task, config, **_statistics_flag(statistics))
        if cached is None:
            return None
        results[key] = cached
    return results[key]


def compute_fisher(loaded: Loaded, config: FisherConfig, progress: Callable[[int, int], None], *,
                   statistics: bool = False) -> Any:
    from fwsvd.fisher.task import task_fisher

    result = task_fisher(loaded.model, loaded.tokenizer, loaded.task, config, progress=progress,
                         **_statistics_flag(statistics))
    st.session_state.setdefault(FISHER_RESULTS, {})[_results_key(loaded.source, config, statistics)] = result
    if config.key() == fisher_config().key() and not statistics:  # the explorer's Fisher (not a comparison's):
        view_from_model(loaded, result, config)  # analyse it now, so the rank explorer opens from its snapshot
    return result


def fisher_key(fisher: Any) -> str:
    """A short identity of a FisherResult (its provenance), for keys of remembered results."""
    return fisher_identity(fisher.provenance)


# --------------------------------------------------------------------------------------------------
# Analyses and ranks


@st.cache_resource(show_spinner=False, max_entries=4)
def _analyses(_loaded: Loaded, _fisher: Any, key: tuple) -> dict:
    from fwsvd.surgery.analyze import cached_analyses

    # ``key`` (source and Fisher identity) stands for the unhashable model and importances.
    return cached_analyses(_loaded.model, _fisher.importances, store=decomposition_store())


def analyses_for(loaded: Loaded, fisher: Any) -> dict:
    """Singular values and error curves of every target layer for SVD and FWSVD (computed once)."""
    with st.spinner("Decomposing every target layer (once) …"):
        return _analyses(loaded, fisher, (loaded.source.key, fisher_key(fisher)))


class _NoSnapshot(LookupError):
    """No usable snapshot: raised, not returned, so that st.cache_resource does not remember the miss."""


@st.cache_resource(show_spinner=False, max_entries=8)
def _view_from_snapshot(key_text: str) -> ExplorerView:
    view = load_view(json.loads(key_text))
    if view is None:
        raise _NoSnapshot
    return view


@st.cache_resource(show_spinner=False, max_entries=8)
def _save_snapshot(key_text: str, _view: ExplorerView) -> None:
    """Write the snapshot once per key and process; a failure (a read-only cache) only costs speed."""
    try:
        save_view(json.loads(key_text), _view)
    except OSError as error:
        logger.warning("could not save the rank explorer's snapshot: %s", error)


def explorer_view() -> ExplorerView | None:
    """The rank explorer's data for the current model, task and Fisher settings; None when the Fisher is
    not cached yet. Stops with a message when the model is not ready.

    From the snapshot when one matches the model's files (no torch, no model load); otherwise from the
    loaded model and cached Fisher, saving a snapshot for the next start.
    """
    current, config = source(), fisher_config()
    require_ready(current)
    key = snapshot_key(current, config)
    if key is not None:
        with contextlib.suppress(_NoSnapshot):
            return _view_from_snapshot(json.dumps(key, sort_keys=True))
    loaded = require_model()
    fisher = fisher_for(loaded, config)
    return None if fisher is None else view_from_model(loaded, fisher, config)


def view_from_model(loaded: Loaded, fisher: Any, config: FisherConfig) -> ExplorerView:
    """The rank explorer's data computed from the loaded model and its Fisher; saved as a snapshot when
    the model is a local directory. Built as ``fwsvd demo`` builds it ahead of time."""
    from fwsvd.io.explorer import explorer_view_of

    view = explorer_view_of(loaded.source, loaded.model, loaded.task, fisher, analyses=analyses_for(loaded, fisher))
    key = snapshot_key(loaded.source, config)
    if key is not None:
        _save_snapshot(json.dumps(key, sort_keys=True), view)
    return view


def fisher_for_methods(loaded: Loaded, methods: Sequence[str], why: str) -> Any:
    """The explorer's FisherResult, with the token statistics when a method in ``methods`` needs them: those
    are gathered in one more pass over the Fisher's examples (a progress bar, once; then cached on disk)."""
    fisher = require_fisher(loaded, why)
    if not any(needs_statistics(method) for method in methods) or fisher.statistics:
        return fisher
    config = fisher_config()
    with_statistics = fisher_for(loaded, config, statistics=True)
    if with_statistics is None:
        bar, progress = progress_bar("Gathering the token statistics of "
                                     + methods_text([method for method in methods if needs_statistics(method)])
                                     + " (once)")
        with_statistics = compute_fisher(loaded, config, progress, statistics=True)
        bar.empty()
    return with_statistics


def with_methods(view: ExplorerView, methods: Sequence[str]) -> ExplorerView:
    """``view`` with the analyses of every method in ``methods``: those it lacks are computed once (loading
    the model, and the token statistics a method needs) and saved into the explorer's snapshot."""
    missing = tuple(method for method in methods if any(method not in layer.curves
                                                        for layer in view.analyses.values()))
    if not missing:
        return view
    loaded = require_model()
    fisher = fisher_for_methods(loaded, missing, "Analysing these methods needs the Fisher importances: compute "
                                                 "them on the Fisher page.")
    with st.spinner(f"Decomposing every target layer for {methods_text(missing)} (once) …"):
        return _extended_view(view, loaded, fisher, missing, (view.source_key, view.fisher_key, missing))


@st.cache_resource(show_spinner=False, max_entries=8)
def _extended_view(_view: ExplorerView, _loaded: Loaded, _fisher: Any, missing: tuple[str, ...],
                   key: tuple) -> ExplorerView:
    from fwsvd.surgery.analyze import analyze_layers

    # ``key`` (source, Fisher identity and the methods added) stands for the unhashable view, model and Fisher.
    added = analyze_layers(_loaded.model, methods=missing, store=decomposition_store(),
                           fisher=_fisher)
    merged = {name: dataclasses.replace(layer, singular_values={**layer.singular_values,
                                                               **added[name].singular_values},
                                        curves={**layer.curves, **added[name].curves})
              for name, layer in _view.analyses.items()}
    view = dataclasses.replace(_view, analyses=merged)
    key_now = snapshot_key(_loaded.source, fisher_config())
    if key_now is not None:
        try:  # the next start, and the next read of the snapshot here, have these methods too
            save_view(key_now, view)
            _view_from_snapshot.clear()
        except OSError as error:
            logger.warning("could not save the rank explorer's snapshot: %s", error)
    return view


def ranks(source_key: str, analyses: dict[str, LayerAnalysis]) -> dict[str, int]:
    """The current rank of every target layer of the model ``source_key`` names (the paper's 0.33 rank
    ratio until changed)."""
    if st.session_state.get(RANKS_OWNER) != source_key or RANKS not in st.session_state:
        st.session_state[RANKS] = CompressionConfig(rank_ratio=DEFAULT_RANK_RATIO).resolve_ranks(shapes_of(analyses))
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
