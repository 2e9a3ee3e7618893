"""The explorer's rank plans (fwsvd.view.rank_plan): dense layers at full rank, the optimizer and its curves."""

from __future__ import annotations

import numpy as np
import pytest

from fwsvd.view import analysis, rank_plan
from fwsvd.view.analysis import ErrorCurves, LayerAnalysis

#: name: (out, in, Fisher-weighted scale). "late" loses almost nothing Fisher-weighted at any rank.
LAYERS = {"b0.q": (32, 32, 1.0), "b0.ffn": (64, 32, 2.0), "b1.q": (32, 32, 1.0), "b1.late": (32, 32, 1e-3)}


def _analysis(name: str, out_features: int, in_features: int, scale: float) -> LayerAnalysis:
    full = min(out_features, in_features)
    curve = np.sqrt(np.linspace(1.0, 0.0, full + 1))
    curves = ErrorCurves(plain=curve, weighted=scale * curve, weight_norm=1.0, weighted_norm=scale)
    return LayerAnalysis(name, out_features, in_features, {"fwsvd": np.ones(full)}, {"fwsvd": curves})


ANALYSES = {name: _analysis(name, *spec) for name, spec in LAYERS.items()}


def test_uniform_ranks_follow_the_config_rules():
    assert rank_plan.uniform_ranks(ANALYSES, "rank_ratio", 0.25) == {"b0.q": 8, "b0.ffn": 8, "b1.q": 8, "b1.late": 8}
    # param_budget: half of the break-even rank m·n/(m+n) = 16 (21.3 for the 64×32 layer), rounded down
    assert rank_plan.uniform_ranks(ANALYSES, "param_budget", 0.5) == {"b0.q": 8, "b0.ffn": 10, "b1.q": 8,
                                                                      "b1.late": 8}
    for rule, value in (("rank", 0.5), ("rank_ratio", 0.0), ("param_budget", 1.5), ("rank_ratio", float("nan"))):
        with pytest.raises(ValueError, match="rank_ratio|param_budget|global rule"):
            rank_plan.uniform_ranks(ANALYSES, rule, value)


def test_full_rank_means_dense_and_is_left_out_of_what_is_compressed():
    ranks = {"b0.q": 32, "b0.ffn": 8, "b1.q": 5, "b1.late": 32}
    assert rank_plan.compressed_ranks(ranks, ANALYSES) == {"b0.ffn": 8, "b1.q": 5}
    assert rank_plan.with_dense({"b0.ffn": 8, "b1.q": 5}, ANALYSES) == ranks
    # dense layers keep m·n, factorized ones r·(m+n)
    assert rank_plan.kept_params(ranks, ANALYSES) == 32 * 32 + 8 * 96 + 5 * 64 + 32 * 32
    assert rank_plan.total_error(ranks, ANALYSES, "fwsvd") == pytest.approx(4.0 * (1 - 8 / 32) + (1 - 5 / 32))


def test_a_rank_at_or_past_break_even_is_dense_as_compress_keeps_it():
    # b0.q and b1.q are 32x32: break-even at rank 16 (16·64 = 32²), so 16 and 20 keep the layer dense.
    ranks = {"b0.q": 16, "b0.ffn": 8, "b1.q": 20, "b1.late": 15}
    assert rank_plan.compressed_ranks(ranks, ANALYSES) == {"b0.ffn": 8, "b1.late": 15}
    assert rank_plan.kept_params(ranks, ANALYSES) == 32 * 32 + 8 * 96 + 32 * 32 + 15 * 64
    frame = rank_plan.mark_dense(analysis.layer_frame(ANALYSES, ranks)).set_index("layer")
    assert list(frame["dense"]) == [True, False, True, False]
    assert not frame["above_break_even"].any() and (frame["removed_params"] >= 0).all()
    assert frame["kept_params"].sum() == rank_plan.kept_params(ranks, ANALYSES)


def test_optimize_keeps_the_budget_the_floor_and_lowers_the_error():
    uniform = rank_plan.uniform_ranks(ANALYSES, "rank_ratio", 0.25)
    result = rank_plan.optimize(ANALYSES, uniform, "fwsvd")
    assert result.objective == "fisher" and result.budget == rank_plan.kept_params(uniform, ANALYSES)
    assert result.kept_params <= result.budget
    assert min(result.ranks.values()) >= 4  # half the uniform rank 8 (DEFAULT_FLOOR)
    assert result.ranks["b1.late"] == 4  # the layer that loses least is cut to the floor, not below
    assert result.error < result.uniform_error and result.change < 0


def test_allocation_curves_have_both_rules_at_equal_size():
    frame = rank_plan.allocation_curves(ANALYSES, [0.25, 0.5], ["fwsvd"])
    assert list(frame["rule"]) == ["uniform", "allocated", "uniform", "allocated"]
    uniform, allocated = frame[frame.rule == "uniform"], frame[frame.rule == "allocated"]
    assert (allocated["params"].to_numpy() <= uniform["params"].to_numpy()).all()
    assert (allocated["error"].to_numpy() <= uniform["error"].to_numpy()).all()
