"""The explorer's ranks: one per target layer of the model that owns them (a layer at full rank is kept
dense, see :mod:`fwsvd.view.rank_plan`). Every read and write of them goes through here."""

from __future__ import annotations

import streamlit as st

from fwsvd.config import DEFAULT_RANK_RATIO, CompressionConfig, FisherConfig
from fwsvd.view.analysis import LayerAnalysis, shapes_of
from fwsvd.view.rank_plan import compressed_ranks

RANKS = "ranks"
RANKS_OWNER = "ranks_owner"
RANK_WIDGET_PREFIX = "rank::"


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


def forget() -> None:
    """Drop the ranks (the model they belong to is no longer the session's)."""
    for key in (RANKS, RANKS_OWNER):
        st.session_state.pop(key, None)
    for key in [key for key in st.session_state if str(key).startswith(RANK_WIDGET_PREFIX)]:
        del st.session_state[key]


def compression_config(method: str, analyses: dict[str, LayerAnalysis], fisher: FisherConfig) -> CompressionConfig:
    """The session's compression with ``method``: the explorer's ranks, every factorized layer pinned and the
    layers kept dense left out (of rank_pattern and target_modules alike), and the Fisher settings ``fisher``.
    What the Export page downloads and records in the model it builds."""
    pinned = compressed_ranks(st.session_state[RANKS], analyses)
    if not pinned:
        raise ValueError("every layer is kept dense at the current ranks (each at its full rank): there is nothing "
                         "to compress; lower a rank on the Rank explorer")
    return CompressionConfig(method=method, fisher=fisher).with_ranks(pinned)
