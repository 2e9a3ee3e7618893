"""Per-layer rank allocation for a parameter budget (fwsvd.view.allocation), on fake analyses: numpy only.

The reference is a brute-force solver that enumerates every combination of choices (each layer: a rank
min_rank ≤ r with r·(m+n) < m·n, or dense). Measured outside these tests over 28,000 random instance/budget
pairs of 3–4 layers like the ones here (half convex, half non-convex curves), the allocation matched it every
time: worst gap 0. Steps 1–2 alone (Lagrangian + greedy fill, no exact refinement) missed the optimum in 22% of
them, by up to 6.7× on such tiny instances; so the tests below demand equality, not a tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import fwsvd.view.allocation as allocation_module
from fwsvd.view.allocation import DEFAULT_FLOOR, OBJECTIVES, Allocation, allocate_ranks, budget_params, floor_rank

SHAPES = ((6, 4), (5, 7), (8, 8), (12, 10), (16, 12), (10, 20), (9, 9))


@dataclass(frozen=True)
class Curves:
    plain: Any
    weighted: Any
    weight_norm: float
    weighted_norm: float | None


@dataclass(frozen=True)
class Layer:
    name: str
    out_features: int
    in_features: int
    singular_values: dict
    curves: dict


def layer(name: str, shape: tuple[int, int], weighted: np.ndarray | None, plain: np.ndarray | None = None,
          method: str = "fwsvd") -> Layer:
    plain = weighted if plain is None else plain
    curves = Curves(plain, weighted, float(plain[0]), None if weighted is None else float(weighted[0]))
    return Layer(name, shape[0], shape[1], {method: np.sort(plain)[::-1]}, {method: curves})


def random_curve(rng: np.random.Generator, k: int, convex: bool) -> np.ndarray:
    """Errors at ranks 0..k, decreasing to 0. Convex: the decrements of the squared error never grow with
    rank; otherwise they are drawn independently (long flat stretches, then drops)."""
    decrements = rng.gamma(1.0 if convex else 0.3, 1.0, k) * rng.uniform(0.1, 10.0)
    if convex:
        decrements = np.sort(decrements)[::-1]
    squared = np.concatenate([np.cumsum(decrements[::-1])[::-1], [0.0]])
    return np.sqrt(squared)


def random_analyses(rng: np.random.Generator, convex: bool, layers: int) -> dict[str, Layer]:
    analyses = {}
    for index in range(layers):
        shape = SHAPES[rng.integers(len(SHAPES))]
        k = min(shape)
        name = f"block.{index}"
        analyses[name] = layer(name, shape, random_curve(rng, k, convex), random_curve(rng, k, convex))
    return analyses


def choices(analysis: Layer, objective: str, min_rank: int) -> list[tuple[int, float, int | None]]:
    """(parameters, squared error, rank or None for dense) of every choice of one layer."""
    m, n = analysis.out_features, analysis.in_features
    curves = analysis.curves["fwsvd"]
    curve = np.asarray(curves.weighted if objective == "fisher" else curves.plain)
    factorized = [(r * (m + n), float(curve[r]) ** 2, r) for r in range(min_rank, min(m, n) + 1) if r * (m + n) < m * n]
    return factorized + [(m * n, 0.0, None)]


class BruteForce:
    """Every combination of every layer's choices, enumerated once; the optimum for any budget is a lookup."""

    def __init__(self, analyses: dict[str, Layer], objective: str = "fisher", min_rank: int = 1):
        options = [choices(a, objective, min_rank) for a in analyses.values()]
        grids = np.meshgrid(*[np.arange(len(o)) for o in options], indexing="ij")
        self.costs = sum(np.array([c for c, _, _ in o])[g] for o, g in zip(options, grids)).ravel()
        self.errors = sum(np.array([e for _, e, _ in o])[g] for o, g in zip(options, grids)).ravel()

    def optimum(self, budget: int) -> float:
        return float(self.errors[self.costs <= budget].min())

    @property
    def minimum_budget(self) -> int:
        return int(self.costs.min())


def dense_total(analyses: dict[str, Layer]) -> int:
    return sum(a.out_features * a.in_features for a in analyses.values())


def check_valid(allocation: Allocation, analyses: dict[str, Layer], min_rank: int = 1) -> None:
    """Budget respected, min_rank respected, no factorization at/above break-even, dense layers only in
    ``dense``, kept parameters counted right, in the analyses' order."""
    assert allocation.kept_params <= allocation.budget
    assert set(allocation.ranks).isdisjoint(allocation.dense)
    assert set(allocation.ranks) | set(allocation.dense) == set(analyses)
    assert list(allocation.ranks) == [name for name in analyses if name in allocation.ranks]
    assert list(allocation.dense) == [name for name in analyses if name in allocation.dense]
    kept = 0
    for name, analysis in analyses.items():
        m, n = analysis.out_features, analysis.in_features
        if name in allocation.ranks:
            rank = allocation.ranks[name]
            assert isinstance(rank, int) and rank >= min_rank
            assert rank * (m + n) < m * n, f"{name}: rank {rank} is at/above break-even {m * n / (m + n):.2f}"
            kept += rank * (m + n)
        else:
            kept += m * n
    assert allocation.kept_params == kept


@pytest.mark.parametrize("convex", [True, False], ids=["convex", "non-convex"])
@pytest.mark.parametrize("objective", ["fisher", "plain"])
def test_matches_brute_force(convex: bool, objective: str) -> None:
    rng = np.random.default_rng(1 if convex else 2)
    for _ in range(60):
        analyses = random_analyses(rng, convex, int(rng.integers(3, 5)))
        reference = BruteForce(analyses, objective)
        for budget in rng.integers(reference.minimum_budget, dense_total(analyses) + 1, 8).tolist():
            allocation = allocate_ranks(analyses, budget, objective=objective)
            check_valid(allocation, analyses)
            assert allocation.error == pytest.approx(reference.optimum(budget), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("min_rank", [2, 3])
def test_matches_brute_force_with_min_rank(min_rank: int) -> None:
    rng = np.random.default_rng(10 + min_rank)
    for _ in range(40):
        analyses = random_analyses(rng, False, int(rng.integers(3, 5)))
        reference = BruteForce(analyses, min_rank=min_rank)
        for budget in rng.integers(reference.minimum_budget, dense_total(analyses) + 1, 6).tolist():
            allocation = allocate_ranks(analyses, budget, min_rank=min_rank)
            check_valid(allocation, analyses, min_rank)
            assert allocation.error == pytest.approx(reference.optimum(budget), rel=1e-9, abs=1e-12)


def lagrangian_solution(analyses: dict[str, Layer], multiplier: float) -> tuple[int, float]:
    """(parameters, squared error) of every layer taking its cheapest minimiser of e² + λ·params."""
    cost = error = 0
    for analysis in analyses.values():
        c, e, _ = min(choices(analysis, "fisher", 1),
                      key=lambda option: (option[1] + multiplier * option[0], option[0]))
        cost, error = cost + c, error + e
    return cost, error


def test_bisection_alone_is_exact_at_the_budgets_lagrangian_solutions_hit(monkeypatch) -> None:
    """Step 1 alone (no greedy fill, no DP): at a budget a Lagrangian solution keeps exactly, the cheapest
    minimiser within the budget the bisection finds is optimal."""
    monkeypatch.setattr(allocation_module, "_MAX_DP_CELLS", 0)
    monkeypatch.setattr(allocation_module, "_greedy_fill", lambda table, choice, budget: choice)
    rng = np.random.default_rng(3)
    for _ in range(40):
        analyses = random_analyses(rng, bool(rng.integers(2)), int(rng.integers(3, 5)))
        reference = BruteForce(analyses)
        for multiplier in np.geomspace(1e-4, 1e2, 30):
            cost, error = lagrangian_solution(analyses, multiplier)
            assert allocate_ranks(analyses, cost).error == pytest.approx(reference.optimum(cost), rel=1e-9, abs=1e-12)
            assert reference.optimum(cost) == pytest.approx(error, rel=1e-9, abs=1e-12)


def test_without_the_dp_the_greedy_fill_leaves_no_affordable_upgrade(monkeypatch) -> None:
    """Steps 1–2 (the DP disabled): no better than optimal, no worse than the best Lagrangian solution within
    the budget, and no single layer can still move to a dearer choice that fits and lowers the error."""
    monkeypatch.setattr(allocation_module, "_MAX_DP_CELLS", 0)
    rng = np.random.default_rng(19)
    for _ in range(40):
        analyses = random_analyses(rng, bool(rng.integers(2)), int(rng.integers(3, 5)))
        reference = BruteForce(analyses)
        hull = [lagrangian_solution(analyses, multiplier) for multiplier in np.geomspace(1e-4, 1e2, 60)]
        for budget in rng.integers(reference.minimum_budget, dense_total(analyses) + 1, 6).tolist():
            allocation = allocate_ranks(analyses, budget)
            check_valid(allocation, analyses)
            assert allocation.error >= reference.optimum(budget) * (1 - 1e-9)
            assert allocation.error <= min(error for cost, error in hull if cost <= budget) * (1 + 1e-9) + 1e-12
            slack = budget - allocation.kept_params
            for name, analysis in analyses.items():
                options = choices(analysis, "fisher", 1)
                current = next(option for option in options if option[2] == allocation.ranks.get(name))
                assert not [option for option in options
                            if 0 < option[0] - current[0] <= slack and option[1] < current[1]], name


def test_bert_sized_allocation_is_valid_and_no_worse_than_the_greedy_alone(monkeypatch) -> None:
    rng = np.random.default_rng(4)
    analyses = {}
    for index, shape in enumerate([(96, 96)] * 8 + [(384, 96)] * 2 + [(96, 384)] * 2):
        k = min(shape)
        curve = random_curve(rng, k, False) * 10.0 ** rng.uniform(-1.5, 1.5)
        analyses[f"layer.{index}"] = layer(f"layer.{index}", shape, curve, random_curve(rng, k, True))
    for share in (0.5, 0.33, 0.25, 0.15):
        for objective in ("fisher", "plain"):
            exact = allocate_ranks(analyses, share, objective=objective)
            check_valid(exact, analyses)
            with monkeypatch.context() as patch:
                patch.setattr(allocation_module, "_MAX_DP_CELLS", 0)
                greedy = allocate_ranks(analyses, share, objective=objective)
            assert exact.error <= greedy.error * (1 + 1e-12)


def test_layer_with_larger_errors_gets_more_rank() -> None:
    rng = np.random.default_rng(5)
    curve = random_curve(rng, 24, True)
    analyses = {"quiet": layer("quiet", (24, 24), curve), "loud": layer("loud", (24, 24), 10.0 * curve)}
    allocation = allocate_ranks(analyses, 0.3)
    assert allocation.ranks["loud"] > allocation.ranks["quiet"]


def test_objective_chooses_which_curves_count() -> None:
    """Layer a matters more under Fisher, layer b in plain Frobenius error: each objective favours its own."""
    rng = np.random.default_rng(6)
    curve = random_curve(rng, 24, True)
    analyses = {"a": layer("a", (24, 24), weighted=10.0 * curve, plain=curve),
                "b": layer("b", (24, 24), weighted=curve, plain=10.0 * curve)}
    fisher = allocate_ranks(analyses, 0.3, objective="fisher")
    plain = allocate_ranks(analyses, 0.3, objective="plain")
    assert fisher.ranks["a"] > fisher.ranks["b"]
    assert plain.ranks["b"] > plain.ranks["a"]


def test_identical_layers_tie_in_layer_order() -> None:
    curve = random_curve(np.random.default_rng(7), 8, True)
    analyses = {name: layer(name, (8, 8), curve) for name in ("first", "second", "third")}
    allocation = allocate_ranks(analyses, 3 * 16 + 16)  # every layer at rank 1, and one rank more somewhere
    assert allocation.ranks == {"first": 2, "second": 1, "third": 1}
    assert allocate_ranks(analyses, 3 * 16 + 16) == allocation


def uniform_ratio_interval(allocation: Allocation, analyses: dict[str, Layer],
                           min_rank: int = 1) -> tuple[float, float]:
    """The ratios consistent with every layer's uniform choice (rank = max(min_rank, round(ratio·k)), dense
    where that reaches break-even): (lowest, highest), empty when lowest > highest."""
    low, high = 0.0, 1.0
    for name, analysis in analyses.items():
        m, n = analysis.out_features, analysis.in_features
        k, top = min(m, n), (m * n - 1) // (m + n)
        if name in allocation.ranks:
            rank = allocation.ranks[name]
            if rank > min_rank:
                low = max(low, (rank - 0.5) / k)
            high = min(high, (rank + 0.5) / k)
        elif top >= min_rank:
            low = max(low, (top + 0.5) / k)
    return low, high


def test_uniform_shares_one_ratio_and_fisher_beats_it_at_its_parameters() -> None:
    rng = np.random.default_rng(8)
    for _ in range(20):
        analyses = {}
        for index in range(6):
            shape = ((32, 32), (64, 16), (16, 64), (48, 24))[rng.integers(4)]
            curve = random_curve(rng, min(shape), bool(rng.integers(2))) * 10.0 ** rng.uniform(-1.5, 1.5)
            analyses[f"layer.{index}"] = layer(f"layer.{index}", shape, curve, random_curve(rng, min(shape), True))
        for share in (0.6, 0.4, 0.25, 0.15):
            uniform = allocate_ranks(analyses, share, objective="uniform")
            check_valid(uniform, analyses)
            low, high = uniform_ratio_interval(uniform, analyses)
            assert low <= high + 1e-12, "the ranks share no rank ratio"
            weighted = sum(float(analyses[name].curves["fwsvd"].weighted[rank]) ** 2
                           for name, rank in uniform.ranks.items())
            assert uniform.error == pytest.approx(weighted)
            fisher = allocate_ranks(analyses, uniform.kept_params, objective="fisher")
            assert fisher.error <= uniform.error * (1 + 1e-12)


def uniform_reference(analyses: dict[str, Layer], budget: int, min_rank: int = 1) -> dict[str, int | None]:
    """{layer: rank or None (dense)} at the largest ratio whose parameters fit: the ranks only change where
    ratio·k crosses j + 0.5, so ratios just either side of those points (and 0, 1) visit every setting."""
    ks = {min(a.out_features, a.in_features) for a in analyses.values()}
    points = {(j + 0.5) / k + nudge for k in ks for j in range(k) for nudge in (-1e-9, 1e-9)}
    best: dict[str, int | None] = {}
    for ratio in sorted(points | {0.0, 1.0}):
        setting, cost = {}, 0
        for name, analysis in analyses.items():
            m, n = analysis.out_features, analysis.in_features
            rank = max(min_rank, round(ratio * min(m, n)))
            setting[name] = rank if rank * (m + n) < m * n else None
            cost += rank * (m + n) if setting[name] else m * n
        if cost <= budget:
            best = setting
    return best


def test_uniform_takes_the_largest_ratio_that_fits() -> None:
    rng = np.random.default_rng(20)
    for _ in range(30):
        analyses = {f"layer.{index}": layer(f"layer.{index}", shape, random_curve(rng, min(shape), True))
                    for index, shape in enumerate(((40, 40), (10, 10), (30, 12), (7, 21))[:rng.integers(2, 5)])}
        for budget in rng.integers(BruteForce(analyses).minimum_budget, dense_total(analyses) + 1, 5).tolist():
            allocation = allocate_ranks(analyses, budget, objective="uniform")
            reference = uniform_reference(analyses, budget)
            assert allocation.ranks == {name: rank for name, rank in reference.items() if rank is not None}
            assert allocation.dense == tuple(name for name, rank in reference.items() if rank is None)
    assert allocate_ranks(analyses, 1.0, objective="uniform").dense == tuple(analyses)


def test_break_even_rank_is_never_a_factorization() -> None:
    """At rank m·n/(m+n) (8×8: 4, 12×4: 3) the factors are as large as the layer: dense instead, even where the
    curve already reaches 0 there (a rank-deficient weight) and for the uniform ratio that lands on it."""
    curve8, curve4 = np.array([4.0, 3.0, 2.0, 1.0, 0, 0, 0, 0, 0]), np.array([3.0, 2.0, 1.0, 0, 0])
    analyses = {"square": layer("square", (8, 8), curve8), "tall": layer("tall", (12, 4), curve4)}
    for budget in range(32, 64 + 48 + 1):
        for objective in OBJECTIVES:
            check_valid(allocate_ranks(analyses, budget, objective=objective), analyses)
    uniform = allocate_ranks(analyses, 64 + 48, objective="uniform")
    assert uniform.dense == ("square", "tall")


def test_uniform_without_fisher_reports_the_plain_error() -> None:
    curve = random_curve(np.random.default_rng(9), 16, True)
    analyses = {name: layer(name, (16, 16), None, plain=curve) for name in ("a", "b")}
    uniform = allocate_ranks(analyses, 0.3, objective="uniform")
    assert uniform.error == pytest.approx(sum(float(curve[rank]) ** 2 for rank in uniform.ranks.values()))
    assert allocate_ranks(analyses, 0.3, objective="plain").error <= uniform.error


def test_generous_budget_keeps_everything_dense_and_accessors() -> None:
    analyses = random_analyses(np.random.default_rng(11), True, 3)
    total = dense_total(analyses)
    for budget in (total, 10 * total, 1.0):
        allocation = allocate_ranks(analyses, budget)
        assert allocation.ranks == {} and allocation.dense == tuple(analyses)
        assert allocation.error == 0.0 and allocation.kept_params == total
    allocation = allocate_ranks(analyses, 0.4)
    full = allocation.rank_or_full(analyses)
    assert list(full) == list(analyses)
    for name, analysis in analyses.items():
        expected = allocation.ranks.get(name, min(analysis.out_features, analysis.in_features))
        assert full[name] == expected
    document = allocation.to_dict()
    assert document == {"ranks": allocation.ranks, "dense": list(allocation.dense),
                        "kept_params": allocation.kept_params, "budget": budget_params(analyses, 0.4),
                        "objective": "fisher", "method": "fwsvd", "error": allocation.error}


def test_layer_too_small_for_min_rank_stays_dense() -> None:
    rng = np.random.default_rng(12)
    analyses = {"small": layer("small", (6, 4), random_curve(rng, 4, True)),  # break-even 2.4: ranks 1, 2
                "large": layer("large", (16, 16), random_curve(rng, 16, True))}
    allocation = allocate_ranks(analyses, 24 + 3 * 32, min_rank=3)
    assert allocation.dense == ("small",) and allocation.ranks == {"large": 3}


def test_budget_params() -> None:
    analyses = random_analyses(np.random.default_rng(13), True, 3)
    total = dense_total(analyses)
    assert budget_params(analyses, 1.0) == total
    assert budget_params(analyses, 0.25) == math.floor(0.25 * total)
    assert budget_params(analyses, 123) == 123
    assert budget_params(analyses, np.int64(5 * total)) == 5 * total


@pytest.mark.parametrize("budget", [0, -5, 1.5, float("nan"), True, "abc", 0.0, None])
def test_bad_budget_is_named(budget: Any) -> None:
    analyses = random_analyses(np.random.default_rng(14), True, 3)
    with pytest.raises(ValueError, match=r"budget must be a positive int .* or a float in \(0, 1\].*got"):
        allocate_ranks(analyses, budget)
    with pytest.raises(ValueError, match=str(budget) if budget != "abc" else "'abc'"):
        budget_params(analyses, budget)


def test_unknown_method_objective_and_min_rank() -> None:
    analyses = random_analyses(np.random.default_rng(15), True, 3)
    with pytest.raises(ValueError, match=r"method must be one with error curves in every layer \(fwsvd\), got 'kfac'"):
        allocate_ranks(analyses, 0.5, method="kfac")
    with pytest.raises(ValueError, match=r"objective must be one of fisher, plain, uniform, got 'loss'"):
        allocate_ranks(analyses, 0.5, objective="loss")
    for min_rank in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="min_rank must be an int >= 1"):
            allocate_ranks(analyses, 0.5, min_rank=min_rank)
    with pytest.raises(ValueError, match="no layers"):
        allocate_ranks({}, 10)
    assert OBJECTIVES == ("fisher", "plain", "uniform")


def test_fisher_objective_needs_weighted_curves() -> None:
    curve = random_curve(np.random.default_rng(16), 8, True)
    analyses = {"a": layer("a", (8, 8), curve), "b": layer("b", (8, 8), None, plain=curve)}
    with pytest.raises(ValueError, match="objective 'fisher' needs Fisher-weighted curves.*objective='plain'"):
        allocate_ranks(analyses, 0.5)
    assert allocate_ranks(analyses, 0.5, objective="plain").ranks


def test_infeasible_budget_names_the_minimum() -> None:
    analyses = random_analyses(np.random.default_rng(17), True, 4)
    minimum = BruteForce(analyses).minimum_budget
    assert allocate_ranks(analyses, minimum).kept_params == minimum
    with pytest.raises(ValueError, match=f"below the minimum feasible budget of {minimum:,} parameters"):
        allocate_ranks(analyses, minimum - 1)
    with pytest.raises(ValueError, match=f"feasible budget of {BruteForce(analyses, min_rank=2).minimum_budget:,}"):
        allocate_ranks(analyses, minimum, min_rank=2)


def test_bad_curves_are_named() -> None:
    short = layer("short", (8, 8), np.linspace(1.0, 0.0, 5))
    with pytest.raises(ValueError, match=r"error curve of 'short' \(fwsvd\) has shape \(5,\), expected \(9,\)"):
        allocate_ranks({"short": short}, 0.5)
    broken = layer("broken", (8, 8), np.array([1.0, np.nan, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        allocate_ranks({"broken": broken}, 0.5)


def test_torch_tensors_as_curves() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    analyses = random_analyses(rng, False, 4)
    as_tensors = {}
    for name, analysis in analyses.items():
        curves = analysis.curves["fwsvd"]
        tensors = Curves(torch.tensor(curves.plain, dtype=torch.float32, requires_grad=True),
                         torch.tensor(curves.weighted, dtype=torch.float32), curves.weight_norm, curves.weighted_norm)
        as_tensors[name] = Layer(name, analysis.out_features, analysis.in_features, {}, {"fwsvd": tensors})
    as_float32 = {name: layer(name, (a.out_features, a.in_features),
                              np.asarray(a.curves["fwsvd"].weighted, dtype=np.float32),
                              np.asarray(a.curves["fwsvd"].plain, dtype=np.float32)) for name, a in analyses.items()}
    for objective in OBJECTIVES:
        expected = allocate_ranks(as_float32, 0.4, objective=objective)
        assert allocate_ranks(as_tensors, 0.4, objective=objective) == expected


@pytest.mark.parametrize(("floor", "expected"), [(0.5, 29), (0.0, 1), (1.0, 58), (0.01, 1)])
def test_floor_rank_is_a_share_of_the_smallest_uniform_rank(floor: float, expected: int) -> None:
    assert floor_rank({"a": 127, "b": 58, "c": 96}, floor) == expected


def test_floor_rank_default_and_bad_floors() -> None:
    assert DEFAULT_FLOOR == 0.5 and floor_rank({"a": 64}) == 32
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"allocation floor must be a share in \[0, 1\]"):
            floor_rank({"a": 64}, bad)
    with pytest.raises(ValueError, match="uniform ranks are empty"):
        floor_rank({}, 0.5)
