"""The explorer's ranks: the one place they are kept, and every read and write of them.

The session stores one :class:`RankState`: the rank of every target layer of the model that owns it (a layer
at full rank is kept dense, see :mod:`fwsvd.view.rank_plan`) and the global control's rule (rank ratio or
parameter budget, and its value). Every widget that shows a rank (the global control, each per-layer slider,
the table) is drawn from it on every run and writes back to it in its callback. None keeps a value of its own:
a widget's key carries the store's revision, bumped on every write, so after any change — by that widget,
another one, the optimizer, an uploaded file — each is a new widget whose value is the stored one. (A keyed
Streamlit widget otherwise keeps the value it last held and ignores ``value=``, or, remounted after being
hidden, shows its default: how a slider came to show rank 1 while the layer was at 250.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from fwsvd.config import DEFAULT_RANK_RATIO, CompressionConfig, FisherConfig
from fwsvd.view.analysis import LayerAnalysis
from fwsvd.view.rank_plan import compressed_ranks, uniform_ranks

RANK_STATE = "rank_state"
NOTHING_TO_COMPRESS = ("every layer is kept dense at the current ranks (each at or past its break-even rank, where "
                       "its two factors would hold as many weights as the layer): there is nothing to compress; "
                       "lower a rank on the Rank explorer")
#: The global control's rules: CompressionConfig fields, each with its own value.
RULES = ("rank_ratio", "param_budget")


@dataclass
class RankState:
    """Every target layer's rank for the model ``owner`` names, and the rule of the global control."""

    owner: str
    ranks: dict[str, int]
    rule: str = "rank_ratio"
    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RULES, DEFAULT_RANK_RATIO))
    revision: int = 0


def _state() -> RankState:
    return st.session_state[RANK_STATE]


def ranks(source_key: str, analyses: dict[str, LayerAnalysis]) -> dict[str, int]:
    """The current rank of every target layer of the model ``source_key`` names (the paper's 0.33 rank
    ratio until changed); a copy: change them with the writers below."""
    state = st.session_state.get(RANK_STATE)
    if state is None or state.owner != source_key:
        state = RankState(source_key, {})
        state.ranks = uniform_ranks(analyses, state.rule, state.values[state.rule])
        st.session_state[RANK_STATE] = state
    return dict(state.ranks)


def rule() -> tuple[str, float]:
    """The global control's rule and its value."""
    state = _state()
    return state.rule, state.values[state.rule]


def rule_value(name: str) -> float:
    """The value the global control holds for the rule ``name`` (each rule keeps its own)."""
    return _state().values[name]


def rule_ranks(analyses: dict[str, LayerAnalysis]) -> dict[str, int]:
    """Every layer's rank under the global control's rule as it stands."""
    name, value = rule()
    return uniform_ranks(analyses, name, value)


def key(name: str) -> str:
    """The key of the widget ``name`` (e.g. ``rank::<layer>``) at the store's revision, bumped on every write:
    no widget outlives the value it was drawn with."""
    return f"{name}@{_state().revision}"


def set_ranks(new: dict[str, int]) -> None:
    """Replace every layer's rank."""
    state = _state()
    state.ranks = {name: int(new[name]) for name in state.ranks}
    state.revision += 1


def update(changes: dict[str, int]) -> None:
    """Set the rank of the layers in ``changes`` (the others keep theirs). With no change the revision is still
    bumped: the widget that asked is drawn afresh with the stored value (e.g. a cleared table cell)."""
    state = _state()
    unknown = set(changes) - set(state.ranks)
    if unknown:
        raise KeyError(f"no target layer named {sorted(unknown)}")
    state.ranks = {**state.ranks, **{name: int(rank) for name, rank in changes.items()}}
    state.revision += 1


def apply_rule(name: str, value: float, analyses: dict[str, LayerAnalysis]) -> None:
    """Make ``name`` (a rank ratio or parameter budget) at ``value`` the global rule, and set every layer's
    rank by it."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}: one of {', '.join(RULES)}")
    state = _state()
    state.rule = name
    state.values = {**state.values, name: float(value)}
    set_ranks(uniform_ranks(analyses, name, value))


def forget() -> None:
    """Drop the ranks (the model they belong to is no longer the session's)."""
    st.session_state.pop(RANK_STATE, None)


def compression_config(method: str, analyses: dict[str, LayerAnalysis], fisher: FisherConfig) -> CompressionConfig:
    """The session's compression with ``method``: the explorer's ranks, every factorized layer pinned and the
    layers kept dense left out (of rank_pattern and target_modules alike), and the Fisher settings ``fisher``.
    What the Export page downloads and records in the model it builds."""
    pinned = compressed_ranks(_state().ranks, analyses)
    if not pinned:
        raise ValueError(NOTHING_TO_COMPRESS)
    return CompressionConfig(method=method, fisher=fisher).with_ranks(pinned)
