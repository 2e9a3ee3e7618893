"""Every closed-form method through the pipeline: compress_ at full rank, error curves against the rank-r
products compress_ builds, allocation, the store's keys, the analyses cache, evaluation, the sweep and the CLI,
on a tiny random BERT with Fisher importances and token statistics from a real Fisher pass."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import random_batch, tiny_bert
from fwsvd import (
    DecompositionStore,
    LowRankLinear,
    analyze_layers,
    compress_,
    compressed_copy,
    dense_weight,
    find_targets,
    set_ranks_,
)
from fwsvd.cli import main
from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.evaluate.methods import evaluate_methods
from fwsvd.evaluate.sweep import run_sweep
from fwsvd.fisher.estimate import FisherResult, estimate_fisher
from fwsvd.fisher.task import task_fisher
from fwsvd.data.tasks import local_task
from fwsvd.io.persistence import read_compressed_info
from fwsvd.surgery.analyze import cached_analyses
from fwsvd.view.analysis import METHODS, STATISTICS_METHODS
from tiny_task import minilm_tokenizer, save_tiny_classifier, tiny_text_classifier, write_reviews


@dataclasses.dataclass(frozen=True)
class Inputs:
    model: torch.nn.Module
    fisher: dict[str, torch.Tensor]
    statistics: dict


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    """A tiny BERT, and its Fisher and token statistics over 4 batches (≈ 300 tokens, more than the 48 inputs
    of the widest layer, so that no eigenvalue floor hides a wrong statistic)."""
    model = tiny_bert()
    batches = [random_batch(batch_size=8, length=12, seed=seed) for seed in range(4)]
    fisher, statistics = estimate_fisher(model, batches, statistics=True)
    return Inputs(model, fisher, statistics)


@pytest.fixture
def store() -> DecompositionStore:
    return DecompositionStore(use_disk=False)


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _fisher_weighting(importance: torch.Tensor) -> torch.Tensor:
    """sqrt(I) with the importance floor (1e-6 of the largest), written out here."""
    importance = importance.to(torch.float64)
    return importance.clamp_min(importance.max() * 1e-6).sqrt()


@pytest.mark.parametrize("method", METHODS)
def test_full_rank_reproduces_the_model_for_every_method(inputs, store, method):
    model = copy.deepcopy(inputs.model)
    batch = random_batch(batch_size=4, length=12, seed=9)
    expected = _logits(model, batch)
    full = CompressionConfig(method=method, rank_ratio=1.0, keep_dense_past_break_even=False)  # asked for
    report = compress_(model, full, fisher=inputs.fisher, statistics=inputs.statistics, store=store)
    layers = [module for module in model.modules() if isinstance(module, LowRankLinear)]
    assert len(layers) == len(report.layers) == 12 and report.method == method
    assert all(layer.method == method for layer in report.layers)
    torch.testing.assert_close(_logits(model, batch), expected, rtol=1e-4, atol=1e-4)
    assert max(layer.relative_error for layer in report.layers) < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_curves_equal_explicit_errors_of_the_products_compress_builds(inputs, store, method):
    analyses = analyze_layers(inputs.model, inputs.fisher, methods=(method,), statistics=inputs.statistics,
                              store=store)
    targets = find_targets(inputs.model)
    assert set(analyses) == set(targets)
    for rank in (1, 5, 17):
        compressed, report = compressed_copy(inputs.model, rank, method=method, fisher=inputs.fisher,
                                             statistics=inputs.statistics, store=store)
        modules = dict(compressed.named_modules())
        for layer in report.layers:
            weight = dense_weight(targets[layer.name]).to(torch.float64)
            low_rank = modules[layer.name]
            product = (low_rank.second.weight @ low_rank.first.weight).to(torch.float64)
            plain = torch.linalg.norm(weight - product).item()
            weighted = torch.linalg.norm((weight - product) * _fisher_weighting(inputs.fisher[layer.name])).item()
            curves = analyses[layer.name].curves[method]
            assert float(curves.plain[rank]) == pytest.approx(plain, rel=1e-4, abs=1e-5)
            assert float(curves.weighted[rank]) == pytest.approx(weighted, rel=1e-4, abs=1e-5)
            assert layer.error == pytest.approx(plain, rel=1e-4, abs=1e-5)
            assert layer.weighted_error == pytest.approx(weighted, rel=1e-4, abs=1e-5)


def test_each_method_minimises_its_own_objective_among_the_methods(inputs, store):
    """The methods really differ inside compress_: each has the least error among the five in its own
    objective, written out here from the statistics — svd plain, fwsvd Fisher-weighted, asvd scaled by
    sqrt(mean |x|), whiten the output error tr(ΔW A ΔWᵀ), kfac tr(ΔWᵀ G ΔW A)."""
    name = "bert.encoder.layer.0.intermediate.dense"
    weight = dense_weight(find_targets(inputs.model)[name]).to(torch.float64)
    statistics = inputs.statistics[name]
    input_moment, output_moment = (moment.to(torch.float64)
                                   for moment in (statistics.input_moment, statistics.output_moment))
    objectives = {
        "svd": lambda delta: delta.square().sum(),
        "fwsvd": lambda delta: (delta * _fisher_weighting(inputs.fisher[name])).square().sum(),
        "asvd": lambda delta: (delta * (statistics.input_abs_sum.to(torch.float64) / statistics.tokens).sqrt())
        .square().sum(),
        "whiten": lambda delta: torch.trace(delta @ input_moment @ delta.T),
        "kfac": lambda delta: torch.trace(delta.T @ output_moment @ delta @ input_moment),
    }
    deltas = {}
    for method in METHODS:
        compressed, _ = compressed_copy(inputs.model, {name: 6}, method=method, fisher=inputs.fisher,
                                        statistics=inputs.statistics, store=store)
        layer = dict(compressed.named_modules())[name]
        deltas[method] = weight - (layer.second.weight @ layer.first.weight).to(torch.float64)
    for objective, error in objectives.items():
        values = {method: error(delta).item() for method, delta in deltas.items()}
        assert min(values, key=values.get) == objective, (objective, values)
        assert sorted(values.values())[1] > values[objective] * (1 + 1e-3)  # a clear winner, not a tie


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("allocation", ["fisher", "plain"])
def test_allocation_works_with_every_method(inputs, store, method, allocation):
    config = CompressionConfig(method=method, param_budget=0.4, allocation=allocation)
    compressed, report = compressed_copy(inputs.model, config, fisher=inputs.fisher, statistics=inputs.statistics,
                                         store=store)
    dense_params = sum(out * inp for out, inp in
                       (dense_weight(module).shape for module in find_targets(inputs.model).values()))
    kept = sum(layer.params_after - (layer.params_before - layer.out_features * layer.in_features)
               for layer in report.layers)
    assert 0 < kept <= 0.4 * dense_params
    assert report.config.method == method and len(set(report.ranks.values())) > 1  # not the uniform cut
    again, _ = compressed_copy(inputs.model, report.config, fisher=inputs.fisher, statistics=inputs.statistics,
                               store=store)
    assert {name: module.rank for name, module in again.named_modules() if isinstance(module, LowRankLinear)} \
        == report.ranks


def test_store_keys_follow_the_method_and_what_it_reads(inputs, tmp_path):
    name, module = next(iter(find_targets(inputs.model).items()))
    statistics = inputs.statistics[name]
    store = DecompositionStore(tmp_path / "cache")
    found = {method: store.get(module, inputs.fisher[name], method=method, statistics=statistics)
             for method in METHODS}
    assert store.computed == len(METHODS)
    assert len({id(decomposition) for decomposition in found.values()}) == len(METHODS)
    assert all(decomposition.method == method for method, decomposition in found.items())
    assert not found["kfac"].left_orthogonal and found["whiten"].left_orthogonal
    # The same inputs again: no SVD. Statistics without the output moment still serve asvd and whiten.
    forward_only = dataclasses.replace(statistics, output_moment=None)
    for method in ("asvd", "whiten"):
        assert store.get(module, method=method, statistics=forward_only) is found[method]
    assert store.computed == len(METHODS)
    # Other statistics: new decompositions for the methods that read them, none for svd / fwsvd.
    other = dataclasses.replace(statistics, input_moment=statistics.input_moment * 2 + torch.eye(32),
                                input_abs_sum=statistics.input_abs_sum + 1)
    for method in METHODS:
        store.get(module, inputs.fisher[name], method=method, statistics=other)
    assert store.computed == len(METHODS) + len(STATISTICS_METHODS)
    # A fresh store reads every method's decomposition back from the disk cache, equal and unrecomputed.
    store.flush()
    fresh = DecompositionStore(tmp_path / "cache")
    for method, decomposition in found.items():
        again = fresh.get(module, inputs.fisher[name], method=method, statistics=statistics)
        assert again.method == method and again.left_orthogonal == decomposition.left_orthogonal
        torch.testing.assert_close(again.reconstruct(3), decomposition.reconstruct(3))
    assert fresh.computed == 0


def test_missing_inputs_raise_naming_what_to_pass(inputs, store):
    model = inputs.model
    with pytest.raises(ValueError, match=r"method 'kfac' needs token statistics: pass "
                                         r"statistics=task_fisher\(\.\.\., statistics=True\)"):
        compressed_copy(model, 0.5, method="kfac", fisher=inputs.fisher, store=store)
    with pytest.raises(ValueError, match=r"method 'fwsvd' needs Fisher importances"):
        compressed_copy(model, 0.5, method="fwsvd", statistics=inputs.statistics, store=store)
    forward_only = {name: dataclasses.replace(value, output_moment=None) for name, value in inputs.statistics.items()}
    with pytest.raises(ValueError, match=r"'kfac' needs the output-gradient moment .* 12 layer\(s\)"):
        compressed_copy(model, 0.5, method="kfac", statistics=forward_only, store=store)
    compressed_copy(model, 0.5, method="whiten", statistics=forward_only, store=store)  # forward-only is enough
    partial = dict(list(inputs.statistics.items())[:3])
    with pytest.raises(ValueError, match=r"statistics have no entry for 9 layer\(s\)"):
        analyze_layers(model, methods=("asvd",), statistics=partial, store=store)
    with pytest.raises(ValueError, match=r"method must be one of svd, fwsvd, asvd, whiten, kfac, got 'pca'"):
        analyze_layers(model, inputs.fisher, methods=("pca",), store=store)
    empty = FisherResult(inputs.fisher, from_cache=False, path=None, seconds=0.0, provenance={})
    with pytest.raises(ValueError, match=r"holds none: estimate it with task_fisher\(\.\.\., statistics=True\)"):
        compressed_copy(model, 0.5, method="asvd", statistics=empty, store=store)


def test_a_fisher_result_carries_its_statistics(inputs, store):
    result = FisherResult(inputs.fisher, from_cache=False, path=None, seconds=0.0, provenance={},
                          statistics=inputs.statistics)
    by_result, report = compressed_copy(inputs.model, 0.5, method="kfac", fisher=result, store=store)
    by_mappings, _ = compressed_copy(inputs.model, 0.5, method="kfac", fisher=inputs.fisher,
                                     statistics=inputs.statistics, store=store)
    assert report.layers[0].weighted_error is not None
    for left, right in zip(by_result.state_dict().values(), by_mappings.state_dict().values()):
        assert torch.equal(left, right)
    analyses = analyze_layers(inputs.model, result, methods=("svd", "asvd"), store=store)
    assert set(next(iter(analyses.values())).curves) == {"svd", "asvd"}


def test_set_ranks_recuts_any_method(inputs, store):
    compressed, _ = compressed_copy(inputs.model, 4, method="kfac", fisher=inputs.fisher,
                                    statistics=inputs.statistics, store=store)
    reference, _ = compressed_copy(inputs.model, 9, method="kfac", fisher=inputs.fisher,
                                   statistics=inputs.statistics, store=store)
    computed = store.computed
    report = set_ranks_(compressed, 9)
    assert store.computed == computed and report.method == "kfac"
    for left, right in zip(compressed.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(left, right)


@pytest.mark.parametrize("method", METHODS)
def test_low_rank_linear_from_any_method_at_full_rank_is_the_layer(inputs, method):
    name, module = next(iter(find_targets(inputs.model).items()))
    layer = LowRankLinear.from_linear(module, min(module.weight.shape), inputs.fisher[name], method=method,
                                      statistics=inputs.statistics[name])
    x = torch.randn(5, module.in_features)
    torch.testing.assert_close(layer(x), module(x), rtol=1e-4, atol=1e-5)


def test_cached_analyses_key_on_methods_and_statistics(inputs, store, tmp_path):
    methods = ("svd", "whiten", "kfac")
    first = cached_analyses(inputs.model, inputs.fisher, methods=methods, statistics=inputs.statistics,
                            store=store, cache_dir=tmp_path)
    computed = store.computed
    again = cached_analyses(inputs.model, inputs.fisher, methods=methods, statistics=inputs.statistics,
                            store=store, cache_dir=tmp_path)
    assert store.computed == computed
    for name, analysis in first.items():
        assert set(again[name].curves) == set(methods)
        for method in methods:
            assert torch.allclose(torch.as_tensor(again[name].curves[method].weighted),
                                  analysis.curves[method].weighted)
    scaled = {name: dataclasses.replace(value, input_moment=value.input_moment + torch.eye(value.in_features))
              for name, value in inputs.statistics.items()}
    changed = cached_analyses(inputs.model, inputs.fisher, methods=methods, statistics=scaled, store=store,
                              cache_dir=tmp_path)
    assert store.computed > computed
    layer = next(iter(first))
    assert not torch.allclose(torch.as_tensor(changed[layer].curves["whiten"].plain),
                              torch.as_tensor(first[layer].curves["whiten"].plain))


# --------------------------------------------------------------------------------------------------
# Evaluation, sweep and CLI on a tiny text task


@pytest.fixture
def task(tmp_path):
    return local_task(write_reviews(tmp_path / "reviews.csv", rows=60), text_column="review",
                      label_column="sentiment")


def test_evaluate_methods_and_sweep_with_statistics_methods(task, cache_dir):
    model, tokenizer = tiny_text_classifier(), minilm_tokenizer()
    settings = FisherConfig(num_examples=24, batch_size=12, max_length=32)
    with pytest.raises(ValueError, match=r"method 'asvd' needs token statistics"):
        evaluate_methods(model, tokenizer, task, 0.5, fisher=task_fisher(model, tokenizer, task, settings),
                         methods=("svd", "asvd"), limit=8, max_length=32)
    fisher = task_fisher(model, tokenizer, task, settings, statistics=True)
    store = DecompositionStore(use_disk=False)
    results = evaluate_methods(model, tokenizer, task, 0.5, fisher=fisher, methods=("dense", *STATISTICS_METHODS),
                               limit=8, batch_size=4, max_length=32, store=store)
    assert set(results) == {"dense", *STATISTICS_METHODS}
    assert all(results[method]["params"] < results["dense"]["params"] for method in STATISTICS_METHODS)
    factorize_all = CompressionConfig(keep_dense_past_break_even=False)  # full rank is factorized on request
    result = run_sweep(model, tokenizer, task, methods=STATISTICS_METHODS, rank_ratios=(1.0, 0.25), fisher=fisher,
                       config=factorize_all, limit=8, max_length=32, store=store)
    assert [(run.method, run.rank_ratio) for run in result.runs] == [
        (method, ratio) for method in STATISTICS_METHODS for ratio in (1.0, 0.25)]
    for run in result.runs:  # full rank reproduces the dense model's predictions
        if run.rank_ratio == 1.0:
            assert run.metrics == result.dense.metrics


def test_cli_compress_and_sweep_with_statistics_methods(tmp_path, cache_dir):
    model_dir = save_tiny_classifier(tmp_path / "tiny")
    csv = write_reviews(tmp_path / "reviews.csv", rows=60)
    common = ["--model", str(model_dir), "--data-files", str(csv), "--text-column", "review",
              "--label-column", "sentiment", "--max-length", "32", "--batch-size", "16", "--fisher-examples", "24"]
    path = tmp_path / "sweep.json"
    assert main(["sweep", *common, "--methods", "asvd,whiten,kfac", "--rank-ratios", "0.5", "--limit", "8",
                 "--json", str(path)]) == 0
    sweep = json.loads(path.read_text())
    assert [run["method"] for run in sweep["runs"]] == ["asvd", "whiten", "kfac"]
    output = tmp_path / "compressed"
    assert main(["compress", *common, "--method", "kfac", "--rank-ratio", "0.5", "--output", str(output),
                 "--json", str(path)]) == 0
    assert json.loads(path.read_text())["method"] == "kfac"
    assert read_compressed_info(output)["config"]["method"] == "kfac"
    assert Path(output / "config.json").is_file()
