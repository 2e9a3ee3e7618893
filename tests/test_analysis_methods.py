"""fwsvd.view.analysis with any subset of the five methods: the method constants, the flat array layout,
snapshots and the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import random_batch, tiny_bert
from fwsvd import DecompositionStore, analyze_layers, find_targets
from fwsvd.factorize.weighted import method_transforms
from fwsvd.fisher.estimate import estimate_fisher
from fwsvd.surgery.targets import find_blocks, target_shapes
from fwsvd.view.analysis import (
    DEFAULT_METHODS,
    METHOD_LABELS,
    METHODS,
    STATISTICS_METHODS,
    analyses_from_arrays,
    analyses_to_arrays,
    layer_frame,
    needs_statistics,
    spectrum_frame,
    totals,
)
from fwsvd.view.snapshot import load_snapshot, save_snapshot

SUBSET = ("svd", "whiten", "kfac")


@pytest.fixture(scope="module")
def analysed():
    model = tiny_bert()
    batches = [random_batch(batch_size=8, length=12, seed=seed) for seed in range(3)]
    fisher, statistics = estimate_fisher(model, batches, statistics=True)
    analyses = analyze_layers(model, fisher, methods=SUBSET, statistics=statistics,
                              store=DecompositionStore(use_disk=False))
    return model, analyses


def test_method_constants():
    assert METHODS == ("svd", "fwsvd", "asvd", "whiten", "kfac")
    assert DEFAULT_METHODS == ("svd", "fwsvd")
    assert list(METHOD_LABELS) == list(METHODS)
    assert METHOD_LABELS["whiten"] == "Whitened SVD" and METHOD_LABELS["kfac"] == "K-FAC SVD"
    assert [method for method in METHODS if needs_statistics(method)] == list(STATISTICS_METHODS)
    with pytest.raises(ValueError, match=r"method must be one of svd, fwsvd, asvd, whiten, kfac, got 'pca'"):
        needs_statistics("pca")


def test_arrays_and_snapshots_round_trip_a_subset_of_methods(analysed, tmp_path):
    model, analyses = analysed
    layers = [(name, *analysis.shape) for name, analysis in analyses.items()]
    arrays = analyses_to_arrays(analyses)
    assert {key.split(".")[1] for key in arrays} == set(SUBSET)
    save_snapshot({"kind": "test"}, analyses, find_blocks(model), {}, cache_dir=tmp_path)
    snapshot = load_snapshot({"kind": "test"}, cache_dir=tmp_path)
    assert snapshot is not None
    for loaded in (analyses_from_arrays(arrays, layers), snapshot.analyses):
        assert list(loaded) == list(analyses)
        for name, analysis in analyses.items():
            assert set(loaded[name].curves) == set(SUBSET) == set(loaded[name].singular_values)
            for method in SUBSET:
                expected, actual = analysis.curves[method], loaded[name].curves[method]
                np.testing.assert_array_equal(np.asarray(actual.plain), expected.plain.numpy())
                np.testing.assert_array_equal(np.asarray(actual.weighted), expected.weighted.numpy())
                assert actual.weighted_norm == expected.weighted_norm
            assert spectrum_frame(loaded[name]).equals(spectrum_frame(analysis))


def test_tables_have_every_method_and_nan_for_those_not_analysed(analysed):
    model, analyses = analysed
    ranks = {name: 4 for name in analyses}
    frame = layer_frame(analyses, ranks, find_blocks(model))
    for method in METHODS:
        assert {f"{method}_error", f"{method}_weighted_error"} <= set(frame.columns)
    assert frame["fwsvd_error"].isna().all() and frame["asvd_weighted_error"].isna().all()
    name = next(iter(analyses))
    row = frame.set_index("layer").loc[name]
    curves = analyses[name].curves["kfac"]
    assert row["kfac_weighted_error"] == pytest.approx(float(curves.weighted[4] / curves.weighted_norm))
    summary = totals(frame)
    assert summary["whiten_mean_error"] == pytest.approx(frame["whiten_error"].mean())
    assert math.isnan(summary["fwsvd_mean_error"])
    assert set(target_shapes(find_targets(model))) == set(frame["layer"])
    assert set(spectrum_frame(analyses[name])["method"]) == set(SUBSET)


def test_weighted_curves_are_comparable_across_methods(analysed):
    """Every method's weighted curve is the Fisher-weighted error, which FWSVD would minimise: at rank 0 all
    equal ‖W·D‖ (up to the float32 rounding of each method's factors, which its P⁻¹ and Q⁻¹ amplify), and all
    reach 0 at full rank."""
    _, analyses = analysed
    for analysis in analyses.values():
        norms = {method: analysis.curves[method].weighted_norm for method in SUBSET}
        assert max(norms.values()) == pytest.approx(min(norms.values()), rel=1e-3)
        for method in SUBSET:
            assert float(analysis.curves[method].weighted[-1]) == 0.0
            assert torch.all(analysis.curves[method].plain[:-1] > 0)


@pytest.fixture(scope="module")
def every_method():
    model = tiny_bert()
    batches = [random_batch(batch_size=8, length=12, seed=seed) for seed in range(3)]
    fisher, statistics = estimate_fisher(model, batches, statistics=True)
    store = DecompositionStore(use_disk=False)
    analyses = analyze_layers(model, fisher, methods=METHODS, statistics=statistics, store=store)
    return model, fisher, statistics, store, analyses


def test_own_objective_curve_is_each_methods_explicit_objective(every_method):
    """‖P(W − Ŵ_r)Q‖ / ‖PWQ‖ from P and Q applied to the reconstruction error, against the curve read off
    the spectrum, at every rank of two layers; for svd and fwsvd it is their plain and weighted curve."""
    model, fisher, statistics, store, analyses = every_method
    targets = find_targets(model)
    for name in list(analyses)[:2]:
        analysis, module = analyses[name], targets[name]
        weight = module.weight.detach().double()
        for method in METHODS:
            transforms = method_transforms(method, tuple(weight.shape), importance=fisher[name],
                                           statistics=statistics[name])
            decomposition = store.get(module, fisher[name], method=method, statistics=statistics[name])
            explicit = [float(torch.linalg.matrix_norm(transforms.apply(weight)))]  # rank 0: Ŵ = 0
            for rank in range(1, analysis.full_rank + 1):
                error = weight - decomposition.reconstruct(rank).double()
                explicit.append(float(torch.linalg.matrix_norm(transforms.apply(error))))
            explicit = np.array(explicit) / explicit[0]
            curve = analysis.relative_objective(method)
            assert curve.shape == (analysis.full_rank + 1,) and curve[0] == 1.0 and curve[-1] == 0.0
            np.testing.assert_allclose(curve, explicit, rtol=2e-4, atol=2e-5, err_msg=f"{name} {method}")
        np.testing.assert_allclose(analysis.relative_objective("svd"), analysis.curves["svd"].relative_plain(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(analysis.relative_objective("fwsvd"),
                                   analysis.curves["fwsvd"].relative_weighted(), rtol=1e-5, atol=1e-6)


def test_table_holds_each_methods_own_objective(every_method):
    model, _, _, _, analyses = every_method
    frame = layer_frame(analyses, {name: 3 for name in analyses}, find_blocks(model)).set_index("layer")
    for name, analysis in analyses.items():
        for method in METHODS:
            assert frame.loc[name, f"{method}_objective_error"] == pytest.approx(
                analysis.relative_objective(method)[3])
