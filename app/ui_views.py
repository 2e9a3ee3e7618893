"""What the rank explorer and the Compare page draw from: the analyses of every target layer (an
:class:`~fwsvd.view.explorer.ExplorerView`), from its snapshot when one matches the model's files (no torch,
no model load), else computed from the loaded model and its Fisher and saved for the next start."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st
import ui_fisher
import ui_session
from ui_format import progress_bar
from ui_methods import methods_text
from ui_session import Loaded

from fwsvd.config import FisherConfig
from fwsvd.view.analysis import needs_statistics
from fwsvd.view.explorer import ExplorerView, load_view, save_view, snapshot_key

logger = logging.getLogger(__name__)


def compute_fisher(loaded: Loaded, config: FisherConfig, progress: Callable[[int, int], None], *,
                   use: bool = True) -> Any:
    """Estimate the Fisher for ``config``; when ``use`` (not only a comparison's), it becomes the Fisher in use
    and is analysed now, so that the rank explorer opens from its snapshot."""
    result = ui_fisher.estimate_fisher(loaded, config, progress)
    if use:
        ui_fisher.set_fisher_config(config)
        view_from_model(loaded, result, config)
    return result


@st.cache_resource(show_spinner=False, max_entries=4)
def _analyses(_loaded: Loaded, _fisher: Any, key: tuple) -> dict:
    from fwsvd.surgery.analyze import cached_analyses

    # ``key`` (source and Fisher identity) stands for the unhashable model and importances.
    return cached_analyses(_loaded.model, _fisher.importances, store=ui_session.decomposition_store())


def analyses_for(loaded: Loaded, fisher: Any) -> dict:
    """Singular values and error curves of every target layer for SVD and FWSVD (computed once)."""
    with st.spinner("Decomposing every target layer (once) …"):
        return _analyses(loaded, fisher, (loaded.source.key, ui_fisher.fisher_key(fisher)))


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
    current, config = ui_session.source(), ui_fisher.fisher_config()
    ui_session.require_ready(current)
    key = snapshot_key(current, config)
    if key is not None:
        with contextlib.suppress(_NoSnapshot):
            return _view_from_snapshot(json.dumps(key, sort_keys=True))
    loaded = ui_session.require_model()
    fisher = ui_fisher.fisher_for(loaded, config)
    return None if fisher is None else view_from_model(loaded, fisher, config)


def view_from_model(loaded: Loaded, fisher: Any, config: FisherConfig) -> ExplorerView:
    """The rank explorer's data computed from the loaded model and its Fisher; saved as a snapshot when
    the model is a local directory. Built as ``fwsvd demo`` builds it ahead of time."""
    from fwsvd.io.explorer import explorer_view_of

    view = explorer_view_of(loaded.source, loaded.model, loaded.task, fisher, tokenizer=loaded.tokenizer,
                            analyses=analyses_for(loaded, fisher))
    key = snapshot_key(loaded.source, config)
    if key is not None:
        _save_snapshot(json.dumps(key, sort_keys=True), view)
    return view


def fisher_for_methods(loaded: Loaded, methods: Sequence[str], why: str) -> Any:
    """The explorer's FisherResult, with the token statistics when a method in ``methods`` needs them: those
    are gathered in one more pass over the Fisher's examples (a progress bar, once; then cached on disk)."""
    fisher = ui_fisher.require_fisher(loaded, why)
    if not any(needs_statistics(method) for method in methods) or fisher.statistics:
        return fisher
    config = ui_fisher.fisher_config()
    with_statistics = ui_fisher.fisher_for(loaded, config, statistics=True)
    if with_statistics is None:
        bar, progress = progress_bar("Gathering the token statistics of "
                                     + methods_text([method for method in methods if needs_statistics(method)])
                                     + " (once)")
        with_statistics = ui_fisher.estimate_fisher(loaded, config, progress, statistics=True)
        bar.empty()
    return with_statistics


def with_methods(view: ExplorerView, methods: Sequence[str]) -> ExplorerView:
    """``view`` with the analyses of every method in ``methods``: those it lacks are computed once (loading
    the model, and the token statistics a method needs) and saved into the explorer's snapshot."""
    missing = tuple(method for method in methods if any(method not in layer.curves
                                                        for layer in view.analyses.values()))
    if not missing:
        return view
    loaded = ui_session.require_model()
    fisher = fisher_for_methods(loaded, missing, "Analysing these methods needs the Fisher importances: compute "
                                                 "them on the Fisher page.")
    with st.spinner(f"Decomposing every target layer for {methods_text(missing)} (once) …"):
        return _extended_view(view, loaded, fisher, missing, (view.source_key, view.fisher_key, missing))


@st.cache_resource(show_spinner=False, max_entries=8)
def _extended_view(_view: ExplorerView, _loaded: Loaded, _fisher: Any, missing: tuple[str, ...],
                   key: tuple) -> ExplorerView:
    from fwsvd.surgery.analyze import analyze_layers

    # ``key`` (source, Fisher identity and the methods added) stands for the unhashable view, model and Fisher.
    added = analyze_layers(_loaded.model, methods=missing, store=ui_session.decomposition_store(),
                           fisher=_fisher)
    merged = {name: dataclasses.replace(layer, singular_values={**layer.singular_values,
                                                               **added[name].singular_values},
                                        curves={**layer.curves, **added[name].curves})
              for name, layer in _view.analyses.items()}
    view = dataclasses.replace(_view, analyses=merged)
    key_now = snapshot_key(_loaded.source, ui_fisher.fisher_config())
    if key_now is not None:
        try:  # the next start, and the next read of the snapshot here, have these methods too
            save_view(key_now, view)
            _view_from_snapshot.clear()
        except OSError as error:
            logger.warning("could not save the rank explorer's snapshot: %s", error)
    return view
