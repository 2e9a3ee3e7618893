"""The Fisher importances of the session's model: the explorer's settings (chosen on the Fisher page) and the
results this session computed or found in the disk cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st
from ui_session import PAGES, Loaded, source

from fwsvd.config import FisherConfig
from fwsvd.storage.locations import is_demo_model
from fwsvd.view.explorer import Source, fisher_identity

FISHER_CONFIG = "fisher_config"
FISHER_CHOICE = "fisher_choice"
FISHER_RESULTS = "fisher_results"
MODES = {"per_example": "Exact (per example)", "batch": "Batch shortcut"}


def default_config(current: Source) -> FisherConfig:
    """The default settings for ``current``'s model (torch-free): a demo's are those it is prebuilt with (its
    Fisher and snapshot are cached under them, whether it was opened from the picker or named by
    ``FWSVD_APP_MODEL``); a model directory's max length is the one it was fine-tuned with, where that is
    recorded (read from its files)."""
    return FisherConfig.for_model(current.model)


def _owned(key: str) -> FisherConfig | None:
    """The settings stored under ``key`` for the session's model; None when none are, or for another model."""
    owner, config = st.session_state.get(key, (None, None))
    return config if owner == source().model else None


def fisher_config() -> FisherConfig:
    """The settings of the Fisher in use by the rank explorer and Compare: the model's defaults until another
    Fisher is computed (or found cached) on the Fisher page. Choosing settings there without computing keeps
    this one; another model starts again from its own defaults."""
    config = _owned(FISHER_CONFIG)
    if config is None:
        config = default_config(source())
        set_fisher_config(config)
    return config


def set_fisher_config(config: FisherConfig) -> None:
    """Use the Fisher of ``config`` from now on (it is computed or cached)."""
    st.session_state[FISHER_CONFIG] = (source().model, config)


def fisher_choice() -> FisherConfig:
    """The settings shown on the Fisher page: the last chosen there for this model, else those in use."""
    return _owned(FISHER_CHOICE) or fisher_config()


def choose_fisher(config: FisherConfig) -> None:
    st.session_state[FISHER_CHOICE] = (source().model, config)


def describe(config: FisherConfig) -> str:
    """E.g. "exact (per example) Fisher over 1024 training examples, seed 0" (plus "default settings")."""
    text = f"{MODES[config.mode].lower()} Fisher over {config.num_examples} training examples, seed {config.seed}"
    return text + (" (the default settings)" if config.key() == default_config(source()).key() else "")


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


def estimate_fisher(loaded: Loaded, config: FisherConfig, progress: Callable[[int, int], None], *,
                    statistics: bool = False) -> Any:
    """Estimate the Fisher for ``config`` (cached on disk by the library) and remember it in the session."""
    from fwsvd.fisher.task import task_fisher

    result = task_fisher(loaded.model, loaded.tokenizer, loaded.task, config, progress=progress,
                         **_statistics_flag(statistics))
    st.session_state.setdefault(FISHER_RESULTS, {})[_results_key(loaded.source, config, statistics)] = result
    return result


def require_fisher(loaded: Loaded, why: str) -> Any:
    """The cached Fisher for the current settings; otherwise ``why`` and a link to the Fisher page, and stop."""
    fisher = fisher_for(loaded)
    if fisher is None:
        st.warning(why, icon=":material/warning:")
        st.page_link(PAGES["fisher"], label="Go to the Fisher page", icon=":material/arrow_forward:")
        st.stop()
    return fisher


def fisher_key(fisher: Any) -> str:
    """A short identity of a FisherResult (its provenance), for keys of remembered results."""
    return fisher_identity(fisher.provenance)
