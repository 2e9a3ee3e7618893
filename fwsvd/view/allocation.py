"""Per-layer ranks for a parameter budget: the allocation that loses least, and the uniform-ratio baseline.

One rank ratio everywhere spends parameters where they buy little: layers differ in how fast their error falls
with rank. Every layer's error at every rank is already known (its :class:`~fwsvd.view.analysis.ErrorCurves`,
in loss units comparable across layers), so choosing the ranks is a multiple-choice knapsack over those curves:
minimise ``Σ_l e_l(r_l)²`` subject to ``Σ_l params_l ≤ budget``, each layer taking a rank whose factors are
smaller than the layer (``r·(m+n) < m·n``) or staying dense (``m·n`` parameters, no error).

Solved in three steps, each vectorised over all layers and ranks:

1. Lagrangian relaxation: for a multiplier λ every layer independently takes the choice minimising
   ``e² + λ·params``; bisecting λ gives the cheapest such solution within the budget, optimal for the
   parameters it keeps (a point of the lower convex hull).
2. Greedy fill: the slack left to the budget goes to the upgrades that buy the most error per parameter.
3. Exact refinement: the Lagrangian bound proves that only a few choices per layer (those whose excess
   ``e² + λ·params`` over the layer's minimum is below the remaining gap) can appear in a better allocation;
   a DP over those choices' parameter counts finds the optimum. When that DP would be too large (more than
   ``_MAX_DP_CELLS`` cells) it searches the space of a narrower gap instead: no longer a proof, but on 64
   BERT-base-shaped cases (bench/bench_allocation.py curves, 8 seeds × 4 budgets × 2 objectives) 63 came out
   optimal and one 2e-4 above it (steps 1–2 alone: 51 were off, by up to 1.2%).

No torch here (the arrays may be torch tensors or numpy arrays), so the dashboard can allocate from a snapshot.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from fwsvd.view.analysis import LayerAnalysis

OBJECTIVES = ("fisher", "plain", "uniform")

#: Geometric bisection steps on λ: from 2^200 down to a relative width of about 1e-13.
_BISECTION_STEPS = 52
_LAMBDA_OCTAVES = 200.0
#: Most cells (candidate choices × cost states) the exact refinement may fill, ~10 ms; above it, it searches a
#: narrower space (no longer a proof of optimality).
_MAX_DP_CELLS = 4_000_000


#: What a layer keeps at least, as a share of the rank the uniform rule gives it, unless it stays dense. The
#: Fisher-weighted error is a second-order estimate of the loss, faithful for small changes only: without a
#: floor, layers whose Fisher is small (the last blocks of the demo) are cut to rank 1 or 2 and the model
#: collapses to the majority class (docs/RESULTS.md, section 4). Half the uniform rank kept the gains there.
DEFAULT_FLOOR = 0.5


def floor_rank(uniform_ranks: Mapping[str, int], floor: float = DEFAULT_FLOOR) -> int:
    """The ``min_rank`` of :func:`allocate_ranks` for a ``floor`` share of the ``uniform_ranks`` (every layer's
    rank under the uniform rule at the same budget): ``floor`` times the smallest of them, at least 1."""
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"the allocation floor must be a share in [0, 1] of the uniform rank, got {floor!r}")
    if not uniform_ranks:
        raise ValueError("no layers to allocate ranks to: the uniform ranks are empty")
    return max(1, math.floor(floor * min(uniform_ranks.values())))


@dataclass(frozen=True)
class Allocation:
    """Per-layer ranks solved for one budget, with what they keep and lose."""

    ranks: dict[str, int]  # factorized layers only, {layer name: rank >= 1}, in the analyses' order
    dense: tuple[str, ...]  # layers left dense
    kept_params: int  # weight parameters kept over all layers (dense layers count m·n)
    budget: int  # the budget in parameters it was solved for
    objective: str
    method: str
    error: float  # Σ_l e_l(r_l)² (0 for dense layers); for "uniform" the Fisher-weighted sum if available

    def rank_or_full(self, analyses: Mapping[str, LayerAnalysis]) -> dict[str, int]:
        """Every layer's rank, min(m, n) for dense layers: what a per-layer rank slider can show."""
        return {name: self.ranks.get(name, min(a.out_features, a.in_features)) for name, a in analyses.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": dict(self.ranks), "dense": list(self.dense), "kept_params": self.kept_params,
                "budget": self.budget, "objective": self.objective, "method": self.method, "error": self.error}


@dataclass(frozen=True)
class _Table:
    """Every layer's choices as padded arrays, cheapest first: column j is rank ``min_rank + j`` for
    ``j < counts[l]``; the remaining columns are all the dense layer, so no padding value is ever special."""

    names: tuple[str, ...]
    errors: np.ndarray  # (layers, columns) squared errors, 0 in the dense columns
    costs: np.ndarray  # (layers, columns) int64 weight parameters
    counts: np.ndarray  # (layers,) factorization choices per layer
    min_rank: int

    def cost_of(self, choice: np.ndarray) -> int:
        return int(self.costs[np.arange(len(choice)), choice].sum())

    def error_of(self, choice: np.ndarray) -> float:
        return float(self.errors[np.arange(len(choice)), choice].sum())


def _as_numpy(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu().numpy()) if hasattr(values, "detach") else np.asarray(values)


def _dense_total(analyses: Mapping[str, LayerAnalysis]) -> int:
    return sum(int(a.out_features) * int(a.in_features) for a in analyses.values())


def budget_params(analyses: Mapping[str, LayerAnalysis], budget: int | float) -> int:
    """The budget in weight parameters: an int as is, a float in (0, 1] as that share (rounded down) of the
    layers' dense weight parameters. An int above the dense total is valid: everything can stay dense."""
    total = _dense_total(analyses)
    allowed = f"a positive int (weight parameters) or a float in (0, 1] (share of the {total:,} dense weight " \
              f"parameters of these {len(analyses)} layers)"
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be {allowed}, got {budget!r} ({type(budget).__name__})")
    if isinstance(budget, numbers.Integral):
        if budget <= 0:
            raise ValueError(f"budget must be {allowed}, got {budget}")
        return int(budget)
    if not 0.0 < budget <= 1.0:  # NaN fails this too
        raise ValueError(f"budget must be {allowed}, got {budget}")
    return math.floor(float(budget) * total)


def _checked_arguments(analyses: Mapping[str, LayerAnalysis], method: str, objective: str, min_rank: int) -> None:
    if not analyses:
        raise ValueError("no layers to allocate ranks to: the analyses are empty")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    shared = sorted(set.intersection(*(set(a.curves) for a in analyses.values())))
    if method not in shared:
        raise ValueError(f"method must be one with error curves in every layer ({', '.join(shared) or 'none'}), "
                         f"got {method!r}")
    if isinstance(min_rank, bool) or not isinstance(min_rank, numbers.Integral) or min_rank < 1:
        raise ValueError(f"min_rank must be an int >= 1, got {min_rank!r}")
    if objective == "fisher" and any(a.curves[method].weighted is None for a in analyses.values()):
        raise ValueError(f"objective 'fisher' needs Fisher-weighted curves for method {method!r}; "
                         "estimate Fisher or use objective='plain'")


def _top_rank(out_features: int, in_features: int) -> int:
    """The largest rank whose factors r·(m+n) are strictly fewer than the dense m·n weights."""
    return (out_features * in_features - 1) // (out_features + in_features)


def _table(analyses: Mapping[str, LayerAnalysis], method: str, weighted: bool, min_rank: int) -> _Table:
    """Stack every layer's choices once, so each λ is one vectorised argmin over all layers and ranks."""
    shapes = [(int(a.out_features), int(a.in_features)) for a in analyses.values()]
    counts = np.array([max(0, _top_rank(m, n) - min_rank + 1) for m, n in shapes], dtype=np.int64)
    columns = int(counts.max()) + 1  # at least one dense column per layer
    errors = np.zeros((len(shapes), columns))
    costs = np.empty((len(shapes), columns), dtype=np.int64)
    for row, (name, analysis) in enumerate(analyses.items()):
        m, n = shapes[row]
        count, curves = int(counts[row]), analysis.curves[method]
        curve = _as_numpy(curves.weighted if weighted else curves.plain).astype(np.float64, copy=False)
        if curve.ndim != 1 or len(curve) < min(m, n) + 1:
            raise ValueError(f"error curve of {name!r} ({method}) has shape {curve.shape}, expected "
                             f"({min(m, n) + 1},): one error per rank 0..{min(m, n)}")
        if not np.isfinite(curve).all():
            raise ValueError(f"error curve of {name!r} ({method}) holds non-finite values")
        errors[row, :count] = np.square(curve[min_rank:min_rank + count])
        costs[row, :count] = np.arange(min_rank, min_rank + count) * (m + n)
        costs[row, count:] = m * n
    return _Table(tuple(analyses), errors, costs, counts, min_rank)


def _check_feasible(table: _Table, budget: int, given: int | float) -> None:
    minimum = table.cost_of(np.zeros(len(table.names), dtype=np.int64))
    if budget < minimum:
        raise ValueError(f"budget {given!r} ({budget:,} parameters) is below the minimum feasible budget of "
                         f"{minimum:,} parameters: every layer at rank {table.min_rank}, or dense where that "
                         "is not smaller")


def _lagrangian_choice(table: _Table, budget: int) -> tuple[np.ndarray, float]:
    """The cheapest minimiser of Σ e² + λ·params that fits the budget, and its λ (geometric bisection).

    λ above the steepest step makes every layer take its cheapest choice (feasible, checked before); the
    bisection keeps ``high`` feasible and narrows onto the multiplier at which the budget is crossed.
    """
    free = _pick(table, 0.0)
    if table.cost_of(free) <= budget:
        return free, 0.0
    steps = np.diff(table.costs, axis=1)
    slopes = np.divide(-np.diff(table.errors, axis=1), steps, out=np.zeros(steps.shape), where=steps > 0)
    high = 2.0 * max(float(slopes.max()), np.finfo(np.float64).tiny)
    low, fitting = high * 2.0 ** -_LAMBDA_OCTAVES, np.zeros(len(table.names), dtype=np.int64)
    for _ in range(_BISECTION_STEPS):
        middle = math.sqrt(low * high)
        choice = _pick(table, middle)
        if table.cost_of(choice) <= budget:
            high, fitting = middle, choice
        else:
            low = middle
    return fitting, high


def _pick(table: _Table, multiplier: float) -> np.ndarray:
    """Every layer's choice minimising e² + λ·params; the first, i.e. cheapest, among ties."""
    return np.argmin(table.errors + multiplier * table.costs, axis=1)


def _greedy_fill(table: _Table, choice: np.ndarray, budget: int) -> np.ndarray:
    """Spend the slack left to the budget on upgrades that buy the most error per parameter, in rounds: each
    layer's best upgrade (to any dearer choice that fits) is found at once, then applied in order of that
    ratio (ties: the earlier layer) while it still fits; until no upgrade fits.

    A round per vectorised pass, not a move per pass: filling a large slack takes hundreds of one-rank moves,
    and the exact refinement after it only needs the result close to optimal. Ends: every round spends slack.
    """
    choice = choice.copy()
    slack = budget - table.cost_of(choice)
    while True:
        ratios, columns, extras = _best_upgrades(table, choice, slack)
        order = np.argsort(-ratios, kind="stable")
        order = order[ratios[order] > 0.0]
        if order.size == 0:
            return choice
        for layer, column, extra in zip(order.tolist(), columns[order].tolist(), extras[order].tolist()):
            if extra <= slack:
                slack -= extra
                choice[layer] = column


def _best_upgrades(table: _Table, choice: np.ndarray, slack: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every layer's best error decrease per parameter among dearer choices that fit the slack, its column
    and its extra parameters (ratio 0 where none helps)."""
    rows = np.arange(len(choice))
    extra = table.costs - table.costs[rows, choice][:, None]
    gain = table.errors[rows, choice][:, None] - table.errors
    fits = (extra > 0) & (extra <= slack) & (gain > 0)
    ratio = np.where(fits, gain / np.where(fits, extra, 1), 0.0)
    best = np.argmax(ratio, axis=1)  # the cheapest among equal ratios
    return ratio[rows, best], best, extra[rows, best]


class _Search(NamedTuple):
    """A DP's search space: the layers with a choice to make (``active``), their candidate columns, every
    column's parameter deviation from the layer's minimiser in units, the states kept after each layer, and
    the cells the DP would fill."""

    active: np.ndarray
    candidates: np.ndarray
    units: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    cells: int


def _exact_refinement(table: _Table, multiplier: float, incumbent: np.ndarray, budget: int) -> np.ndarray:
    """The optimum, by a DP over the few choices that could still beat ``incumbent``.

    Why it is exact: with ``m_l = min_j e² + λ·params`` and ``ρ ≥ 0`` a choice's excess over ``m_l``, every
    allocation x has ``Σ e² = Σ m_l + Σ ρ − λ·params(x)``, so within the budget ``Σ e² ≥ Σ m_l + Σ ρ −
    λ·budget``. With ``gap = Σ e²(incumbent) − (Σ m_l − λ·budget)``, a better allocation uses no choice with
    ρ ≥ gap and keeps more than ``budget − gap/λ`` parameters: a few choices per layer near its tangent point
    and a narrow window of totals, over which a DP on the parameter deviations from the minimisers is exact.

    When that DP would fill more than ``_MAX_DP_CELLS`` cells, it searches the space of a narrower gap
    instead (cells grow about as gap²): the best allocation there, or ``incumbent``, no longer a proof.
    """
    lagrangian = table.errors + multiplier * table.costs
    floor = lagrangian.min(axis=1)
    tolerance = 1e-9 * (float(np.abs(floor).sum()) + multiplier * budget)  # float noise in ρ and in the sums
    gap = table.error_of(incumbent) - (float(floor.sum()) - multiplier * budget) + tolerance
    if gap <= 2 * tolerance:
        return incumbent  # proven optimal (up to float noise)
    search = _search_space(table, lagrangian, multiplier, budget, gap)
    while search.cells > _MAX_DP_CELLS:
        gap *= 0.9 * math.sqrt(_MAX_DP_CELLS / search.cells)
        if gap <= tolerance:
            return incumbent
        search = _search_space(table, lagrangian, multiplier, budget, gap)
    if search.active.size == 0:
        return incumbent
    columns = _cost_dp(table.errors[search.active], search.candidates, search.units, search.starts, search.stops)
    if columns is None:
        return incumbent
    choice = np.argmin(lagrangian, axis=1)
    choice[search.active] = columns
    better = table.cost_of(choice) <= budget and table.error_of(choice) < table.error_of(incumbent)
    return choice if better else incumbent


def _search_space(table: _Table, lagrangian: np.ndarray, multiplier: float, budget: int, gap: float) -> _Search:
    """The choices with ρ < ``gap`` and the totals above ``budget − gap/λ``, as a DP's search space."""
    base, floor = np.argmin(lagrangian, axis=1), lagrangian.min(axis=1)
    candidates = (lagrangian - floor[:, None] < gap) & (np.arange(lagrangian.shape[1]) <= table.counts[:, None])
    active = np.flatnonzero(candidates.sum(axis=1) > 1)
    candidates = candidates[active]
    deviations = (table.costs - table.costs[np.arange(len(base)), base][:, None])[active]
    if active.size == 0:
        return _Search(active, candidates, deviations, np.zeros(0), np.zeros(0), 0)
    unit = int(np.gcd.reduce(np.abs(deviations[candidates])))
    units = deviations // unit
    slack = (budget - table.cost_of(base)) // unit
    lows = np.where(candidates, units, 0).min(axis=1)
    reach = gap / (multiplier * unit)
    first = math.floor(slack - reach) if reach < slack - lows.sum() else int(lows.sum())
    starts, stops = _state_ranges(lows, np.where(candidates, units, 0).max(axis=1), first, slack)
    cells = int((np.maximum(stops - starts + 1, 0) * candidates.sum(axis=1)).sum())
    return _Search(active, candidates, units, starts, stops, cells)


def _state_ranges(lows: np.ndarray, highs: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """After each layer, the summed deviations that can still end in ``[first, last]``: reachable from the
    layers before it and within reach of the window through the layers after it."""
    prefix_low, prefix_high = np.cumsum(lows), np.cumsum(highs)
    suffix_low, suffix_high = lows.sum() - prefix_low, highs.sum() - prefix_high
    return np.maximum(prefix_low, first - suffix_high), np.minimum(prefix_high, last - suffix_low)


def _cost_dp(errors: np.ndarray, candidates: np.ndarray, units: np.ndarray, starts: np.ndarray,
             stops: np.ndarray) -> np.ndarray | None:
    """Exact multiple-choice knapsack over the candidate choices: after layer i the state is the summed
    deviation d in ``[starts[i], stops[i]]`` (parameter units), the value the least summed squared error to
    reach it. Returns each layer's column on the best path, None when no state stays in range.

    Only each layer's incoming values are kept (a min over rows is several times faster than an argmin
    across them); the path is recovered backwards by redoing the one sum per candidate that won."""
    values, start = np.zeros(1), 0  # before any layer: deviation 0, no error
    history = []
    # One buffer for every layer's options: fresh arrays would page-fault their memory in at each layer.
    buffer = np.empty(int((candidates.sum(axis=1) * np.maximum(stops - starts + 1, 0)).max()))
    for layer, (low, high) in enumerate(zip(starts.tolist(), stops.tolist())):
        if high < low:
            return None
        chosen = np.flatnonzero(candidates[layer])
        options = buffer[:len(chosen) * (high - low + 1)].reshape(len(chosen), high - low + 1)
        options.fill(np.inf)
        for row, (shift, error) in enumerate(zip(units[layer, chosen].tolist(), errors[layer, chosen].tolist())):
            begin, end = max(low, start + shift), min(high, start + len(values) - 1 + shift)
            if begin <= end:
                np.add(values[begin - shift - start:end - shift - start + 1], error,
                       out=options[row, begin - low:end - low + 1])
        history.append((values, start))
        values, start = options.min(axis=0), low
    if not np.isfinite(values).any():
        return None
    deviation, columns = start + int(np.argmin(values)), np.empty(len(history), dtype=np.int64)
    for layer in reversed(range(len(history))):
        previous, previous_start = history[layer]
        chosen = np.flatnonzero(candidates[layer])
        sources = deviation - units[layer, chosen] - previous_start
        inside = (sources >= 0) & (sources < len(previous))
        totals = np.where(inside, previous[np.clip(sources, 0, len(previous) - 1)] + errors[layer, chosen], np.inf)
        columns[layer] = chosen[int(np.argmin(totals))]  # the cheapest choice among equal errors
        deviation -= int(units[layer, columns[layer]])
    return columns


def _uniform_choice(table: _Table, full_ranks: np.ndarray, budget: int) -> np.ndarray:
    """The largest shared rank ratio whose kept parameters fit (bisection: kept parameters never fall as the
    ratio grows); layers whose rank reaches break-even stay dense."""
    def choice_at(ratio: float) -> np.ndarray:
        ranks = np.maximum(table.min_rank, np.rint(ratio * full_ranks)).astype(np.int64)
        column = ranks - table.min_rank
        return np.where(column < table.counts, column, table.counts)

    if table.cost_of(choice_at(1.0)) <= budget:
        return choice_at(1.0)
    low, high = 0.0, 1.0  # choice_at(0) is every layer at min_rank: feasible, checked before
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if table.cost_of(choice_at(middle)) <= budget:
            low = middle
        else:
            high = middle
    return choice_at(low)


def _allocation(table: _Table, choice: np.ndarray, budget: int, objective: str, method: str) -> Allocation:
    factorized = choice < table.counts
    ranks = {name: int(column) + table.min_rank
             for name, column, kept in zip(table.names, choice, factorized) if kept}
    dense = tuple(name for name, kept in zip(table.names, factorized) if not kept)
    return Allocation(ranks=ranks, dense=dense, kept_params=table.cost_of(choice), budget=budget,
                      objective=objective, method=method, error=table.error_of(choice))


def allocate_ranks(analyses: Mapping[str, LayerAnalysis], budget: int | float, *, method: str = "fwsvd",
                   objective: str = "fisher", min_rank: int = 1) -> Allocation:
    """Per-layer ranks (or dense) that keep at most ``budget`` weight parameters.

    ``objective="fisher"`` minimises the summed squared Fisher-weighted errors of ``method``'s curves,
    ``"plain"`` the plain Frobenius errors; ``"uniform"`` is the baseline: one rank ratio for every layer, the
    largest that fits. ``budget`` is as in :func:`budget_params`. Every layer keeps at least ``min_rank`` or
    stays dense. Raises ValueError on a bad budget, method, objective or a budget below the feasible minimum.
    """
    _checked_arguments(analyses, method, objective, min_rank)
    params = budget_params(analyses, budget)
    weighted = objective == "fisher" or (
        objective == "uniform" and all(a.curves[method].weighted is not None for a in analyses.values()))
    table = _table(analyses, method, weighted, int(min_rank))
    _check_feasible(table, params, budget)
    if objective == "uniform":
        full_ranks = np.array([min(a.out_features, a.in_features) for a in analyses.values()], dtype=np.float64)
        choice = _uniform_choice(table, full_ranks, params)
    else:
        fitting, multiplier = _lagrangian_choice(table, params)
        choice = _exact_refinement(table, multiplier, _greedy_fill(table, fitting, params), params)
    return _allocation(table, choice, params, objective, method)
