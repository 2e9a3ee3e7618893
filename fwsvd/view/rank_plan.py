"""Rank plans as the explorer holds them: dense layers among its ranks, the ranks the "Optimize" button sets and
what they gain, and the allocated-vs-uniform error curves of the Compare page (the dashboard's and bench_app's).

The explorer keeps one rank per target layer, and a layer at or past break-even (r·(m+n) ≥ m·n; its full
rank min(m, n) among them) is *kept dense*, as :func:`fwsvd.compress_` keeps it by default: its factors would
hold at least as many weights as the layer, so nobody wants them, and
:func:`fwsvd.view.allocation.allocate_ranks` shows the layers it leaves dense at full rank
(:meth:`~fwsvd.view.allocation.Allocation.rank_or_full`). Only the other layers are compressed: evaluations
and the Export page's config get :func:`compressed_ranks`, so ``fwsvd compress --config`` builds the model
the explorer shows, and every count here is of what that model holds.

Errors are compared as ``Σ_l e_l(r_l)²`` over the layers, each ``e_l`` the layer's Fisher-weighted error
``‖(W − Ŵ)·D‖`` (the plain one without Fisher): the allocation's own objective, in loss units comparable
across layers, and the same scale for every method. No torch here: all of it works from a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fwsvd.view.allocation import allocate_ranks, floor_rank
from fwsvd.view.analysis import LayerAnalysis, shapes_of
from fwsvd.view.rank_config import GLOBAL_RULES, is_past_break_even, rule_ranks


def has_weighted(method: str, analyses: Mapping[str, LayerAnalysis]) -> bool:
    """Whether every layer has Fisher-weighted error curves for ``method`` (not without a Fisher)."""
    return all(a.curves[method].weighted is not None for a in analyses.values())


def objective_for(method: str, analyses: Mapping[str, LayerAnalysis]) -> str:
    """What the optimizer minimises for ``method``: the plain error for SVD (what SVD itself minimises), the
    Fisher-weighted error for every weighted method, and the plain error where no Fisher-weighted curves exist."""
    return "fisher" if method != "svd" and has_weighted(method, analyses) else "plain"


def is_dense(rank: int, layer: LayerAnalysis) -> bool:
    """Whether the layer is kept dense at ``rank``: at or past break-even."""
    return is_past_break_even(int(rank), layer.out_features, layer.in_features)


def compressed_ranks(ranks: Mapping[str, int], analyses: Mapping[str, LayerAnalysis]) -> dict[str, int]:
    """The ranks of the layers to factorize: every layer but those kept dense (at or past break-even)."""
    return {name: int(rank) for name, rank in ranks.items() if not is_dense(rank, analyses[name])}


def with_dense(ranks: Mapping[str, int], analyses: Mapping[str, LayerAnalysis]) -> dict[str, int]:
    """Every layer's rank for the explorer: ``ranks`` where given, full rank (dense) for the layers it leaves out."""
    return {name: int(ranks.get(name, layer.full_rank)) for name, layer in analyses.items()}


def kept_params(ranks: Mapping[str, int], analyses: Mapping[str, LayerAnalysis]) -> int:
    """Weight parameters kept at ``ranks`` (every layer named): r·(m+n) per factorized layer, m·n per dense one."""
    total = 0
    for name, rank in ranks.items():
        layer = analyses[name]
        total += layer.out_features * layer.in_features if is_dense(rank, layer) else int(rank) * sum(layer.shape)
    return total


def total_error(ranks: Mapping[str, int], analyses: Mapping[str, LayerAnalysis], method: str) -> float:
    """``Σ_l e_l(r_l)²`` of ``method`` at ``ranks``: Fisher-weighted errors when every layer has them, plain ones
    otherwise; dense layers add nothing."""
    weighted = has_weighted(method, analyses)
    total = 0.0
    for name, rank in ranks.items():
        layer = analyses[name]
        if is_dense(rank, layer):
            continue
        curves = layer.curves[method]
        total += float(np.asarray(curves.weighted if weighted else curves.plain)[int(rank)]) ** 2
    return total


def uniform_ranks(analyses: Mapping[str, LayerAnalysis], rule: str, value: float) -> dict[str, int]:
    """Every layer's rank under one global rule (``rank_ratio`` or ``param_budget``, a CompressionConfig field),
    as :meth:`fwsvd.config.CompressionConfig.resolve_ranks` applies it."""
    if rule not in GLOBAL_RULES:
        raise ValueError(f"the global rule must be one of {', '.join(GLOBAL_RULES)}, got {rule!r}")
    if not 0.0 < value <= 1.0:  # NaN fails this too
        raise ValueError(f"{rule} must be a number in (0, 1], got {value!r}")
    return rule_ranks(shapes_of(analyses), rule, value)


@dataclass(frozen=True)
class Optimized:
    """Ranks solved for the parameters a uniform rule keeps, and the summed error of both (see the module)."""

    method: str
    objective: str
    ranks: dict[str, int]  # every layer, dense ones at full rank
    dense: tuple[str, ...]  # the layers it keeps dense
    budget: int  # weight parameters the uniform ranks keep
    kept_params: int
    error: float
    uniform_error: float

    @property
    def change(self) -> float:
        """Relative change of the summed error against the uniform ranks (negative: the allocation loses less)."""
        return self.error / self.uniform_error - 1.0 if self.uniform_error > 0 else 0.0


def optimize(analyses: Mapping[str, LayerAnalysis], uniform: Mapping[str, int], method: str) -> Optimized:
    """The ranks of ``method`` that lose least (:func:`allocate_ranks`, objective :func:`objective_for`) within
    the weight parameters the ``uniform`` ranks keep, compared with those ranks on the summed error."""
    budget = kept_params(uniform, analyses)
    objective = objective_for(method, analyses)
    allocation = allocate_ranks(analyses, budget, method=method, objective=objective, min_rank=floor_rank(uniform))
    ranks = allocation.rank_or_full(analyses)
    return Optimized(method=method, objective=objective, ranks=ranks, dense=allocation.dense, budget=budget,
                     kept_params=kept_params(ranks, analyses), error=total_error(ranks, analyses, method),
                     uniform_error=total_error(uniform, analyses, method))


def allocation_curves(analyses: Mapping[str, LayerAnalysis], ratios: Sequence[float],
                      methods: Sequence[str]) -> pd.DataFrame:
    """Summed error against weight parameters kept, for each method: one row per (method, rule, rank ratio),
    rule "uniform" (every layer at the ratio) or "allocated" (:func:`optimize` at the same parameters)."""
    rows = []
    for ratio in sorted(ratios):
        uniform = uniform_ranks(analyses, "rank_ratio", ratio)
        for method in methods:
            optimized = optimize(analyses, uniform, method)
            rows.append({"method": method, "rule": "uniform", "rank_ratio": ratio, "params": optimized.budget,
                         "error": optimized.uniform_error})
            rows.append({"method": method, "rule": "allocated", "rank_ratio": ratio,
                         "params": optimized.kept_params, "error": optimized.error})
    return pd.DataFrame(rows, columns=["method", "rule", "rank_ratio", "params", "error"])


def mark_dense(frame: pd.DataFrame) -> pd.DataFrame:
    """A :func:`fwsvd.view.analysis.layer_frame` with a ``dense`` column, and the layers kept dense (at or past
    break-even, as :func:`is_dense`) counted as such: all their weights kept, none removed, no break-even
    warning. Their errors are those of the rank set; the model holds the layer itself, which loses nothing."""
    frame = frame.copy()
    dense = frame["kept_params"] >= frame["dense_params"]  # r·(m+n) ≥ m·n, as is_dense
    frame["dense"] = dense
    frame.loc[dense, "kept_params"] = frame.loc[dense, "dense_params"]
    frame.loc[dense, "removed_params"] = 0
    frame.loc[dense, "above_break_even"] = False
    return frame


def relative_error(error: float, analyses: Mapping[str, LayerAnalysis], method: str) -> float:
    """A summed squared error of ``method`` (:func:`total_error`) as a share of the whole: ``sqrt(Σ_l e_l² /
    Σ_l ‖W_l·D_l‖²)`` over every layer (‖W_l‖ where :func:`total_error` takes plain errors), a number a reader
    can follow (0: nothing lost, 1: every layer dropped) where the sum itself runs into the hundred thousands."""
    weighted = has_weighted(method, analyses)
    whole = sum((layer.curves[method].weighted_norm if weighted else layer.curves[method].weight_norm) ** 2
                for layer in analyses.values())
    return float(np.sqrt(error / whole)) if whole > 0 else 0.0
