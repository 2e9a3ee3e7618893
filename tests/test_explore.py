"""The dashboard's computations (fwsvd.view.analysis, fwsvd.view.rank_config, fwsvd.config and the model-side
helpers), checked without a browser."""

from __future__ import annotations

import io
import math
import zipfile

import pytest
import torch

from app_support import save_tiny_classifier, write_review_csv
from conftest import tiny_bert
from fwsvd import DecompositionStore, analyze_layers, compressed_copy, find_targets
from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.view import analysis, rank_config
from fwsvd.surgery.architecture import architecture_frame, model_summary
from fwsvd.surgery.analyze import cached_analyses
from fwsvd.fisher.task import cached_task_fisher
from fwsvd.fisher.summary import compare_fisher, concentration, cumulative_share, fisher_frame, importance_matrix
from fwsvd.io.archive import compressed_archive
from fwsvd.data.files import data_file_columns
from fwsvd.evaluate.methods import add_differences, evaluate_methods, evaluations_frame
from fwsvd.storage.locations import DEMO_INFO_FILE, demo_is_built, demo_model_dir
from fwsvd.surgery.targets import target_shapes


def _global_ranks(model: torch.nn.Module, mode: str, value: float) -> dict[str, int]:
    # Every layer's rule rank, as the explorer holds them (layers past break-even included).
    config = CompressionConfig(**{mode: value}, keep_dense_past_break_even=False)
    return config.resolve_ranks(target_shapes(find_targets(model)))


def _fisher(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(module.weight.shape[1], generator=generator).pow(4) + 1e-4
            for name, module in find_targets(model).items()}


@pytest.fixture
def analysed():
    model = tiny_bert()
    fisher = _fisher(model)
    store = DecompositionStore(use_disk=False)
    return model, fisher, analyze_layers(model, fisher, store=store), store


def test_architecture_frame_lists_every_target_by_block():
    model = tiny_bert()
    frame = architecture_frame(model)
    assert list(frame["layer"]) == list(find_targets(model))
    groups = analysis.layers_by_block(frame)
    assert list(groups) == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert all(len(names) == 6 for names in groups.values())
    query = frame.set_index("layer").loc["bert.encoder.layer.0.attention.self.query"]
    assert (query["out_features"], query["in_features"], query["full_rank"]) == (32, 32, 32)
    assert query["name_in_block"] == "attention.self.query"
    assert query["break_even_rank"] == pytest.approx(16.0)
    summary = model_summary(model)
    assert summary["target_layers"] == 12 and summary["blocks"] == 2
    assert 0 < summary["target_share"] < 1


def test_global_ranks_by_ratio_and_budget():
    model = tiny_bert()
    by_ratio = _global_ranks(model, "rank_ratio", 0.5)
    assert by_ratio["bert.encoder.layer.0.attention.self.query"] == 16
    by_budget = _global_ranks(model, "param_budget", 0.5)
    assert by_budget["bert.encoder.layer.0.attention.self.query"] == 8  # half of break-even 16
    with pytest.raises(ValueError, match="one global rank rule"):
        CompressionConfig(rank_ratio=0.5, param_budget=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _global_ranks(model, "rank_ratio", 1.5)


def test_layer_frame_is_a_lookup_into_the_curves(analysed):
    model, fisher, analyses, store = analysed
    ranks = _global_ranks(model, "rank_ratio", 0.25)
    computed = store.computed
    frame = analysis.layer_frame(analyses, ranks)
    assert store.computed == computed  # no decomposition recomputed for a rank change
    name = "bert.encoder.layer.1.intermediate.dense"
    row = frame.set_index("layer").loc[name]
    _, report = compressed_copy(model, ranks, method="fwsvd", fisher=fisher, store=store)
    layer = next(layer for layer in report.layers if layer.name == name)
    assert row["fwsvd_error"] == pytest.approx(layer.relative_error)
    assert row["fwsvd_weighted_error"] == pytest.approx(layer.relative_weighted_error)
    assert row["kept_params"] == ranks[name] * (48 + 32)
    assert row["removed_params"] == 48 * 32 - row["kept_params"]
    # SVD is optimal for the plain error, FWSVD for the Fisher-weighted one.
    assert (frame["svd_error"] <= frame["fwsvd_error"] + 1e-9).all()
    assert (frame["fwsvd_weighted_error"] <= frame["svd_weighted_error"] + 1e-9).all()


def test_totals_flag_layers_past_break_even(analysed):
    model, _, analyses, _ = analysed
    ranks = _global_ranks(model, "rank_ratio", 0.25)
    name = "bert.encoder.layer.0.attention.self.key"
    ranks[name] = 20  # break-even of a 32×32 layer is 16
    frame = analysis.layer_frame(analyses, ranks)
    summary = analysis.totals(frame)
    assert summary["above_break_even"] == [name]
    assert summary["dense_params"] == summary["kept_params"] + summary["removed_params"]
    assert frame.set_index("layer").loc[name, "removed_params"] < 0
    assert 0 < summary["kept_share"] < 1


def test_full_rank_errors_vanish(analysed):
    model, _, analyses, _ = analysed
    frame = analysis.layer_frame(analyses, _global_ranks(model, "rank_ratio", 1.0))
    assert frame["svd_error"].max() < 1e-4 and frame["fwsvd_weighted_error"].max() < 1e-4


def test_spectrum_frame_is_normalised(analysed):
    _, _, analyses, _ = analysed
    frame = analysis.spectrum_frame(next(iter(analyses.values())))
    assert set(frame["method"]) == {"svd", "fwsvd"}
    for _, part in frame.groupby("method"):
        assert part["value"].iloc[0] == pytest.approx(1.0)
        assert part["value"].is_monotonic_decreasing
        assert list(part["index"]) == list(range(1, 33))


def test_ranks_digest_ignores_order(analysed):
    model, _, _, _ = analysed
    ranks = _global_ranks(model, "rank_ratio", 0.5)
    assert rank_config.ranks_digest(ranks) == rank_config.ranks_digest(dict(reversed(list(ranks.items()))))
    assert rank_config.ranks_digest(ranks) != rank_config.ranks_digest({**ranks, next(iter(ranks)): 3})


def test_concentration_extremes():
    uniform = concentration(torch.ones(100))
    assert uniform["gini"] == pytest.approx(0.0, abs=1e-9)
    assert uniform["effective_share"] == pytest.approx(1.0)
    assert uniform["top10_share"] == pytest.approx(0.1)
    spike = torch.zeros(100)
    spike[7] = 5.0
    peaked = concentration(spike)
    assert peaked["top1_share"] == pytest.approx(1.0)
    assert peaked["gini"] == pytest.approx(0.99)
    assert peaked["effective_share"] == pytest.approx(0.01)
    assert math.isnan(concentration(torch.zeros(5))["gini"])


def test_fisher_frame_heatmap_and_cumulative_share():
    model = tiny_bert()
    fisher = _fisher(model)
    frame = fisher_frame(fisher)
    assert frame["share_of_model"].sum() == pytest.approx(1.0)
    names = [name for name in fisher if fisher[name].numel() == 32]
    matrix = importance_matrix(fisher, names)
    assert matrix.shape == (len(names), 32)
    assert (10 ** matrix).mean(axis=1) == pytest.approx([1.0] * len(names))
    with pytest.raises(ValueError, match="input width"):
        importance_matrix(fisher, list(fisher))
    curve = cumulative_share(fisher[names[0]])
    assert curve["importance_share"].iloc[0] == 0 and curve["importance_share"].iloc[-1] == pytest.approx(1.0)
    assert curve["importance_share"].is_monotonic_increasing


def test_compare_fisher():
    model = tiny_bert()
    exact = _fisher(model, seed=0)
    same = compare_fisher(exact, {name: 3 * value for name, value in exact.items()})
    assert same["cosine"].min() == pytest.approx(1.0)
    assert same["spearman"].min() == pytest.approx(1.0)
    assert same["top10_overlap"].min() == pytest.approx(1.0)
    other = compare_fisher(exact, _fisher(model, seed=1))
    assert other["spearman"].abs().max() < 0.9
    with pytest.raises(ValueError, match="share no layer"):
        compare_fisher(exact, {"elsewhere": torch.ones(3)})


def test_data_file_columns(tmp_path):
    csv = write_review_csv(tmp_path / "reviews.csv", rows=10)
    assert data_file_columns(csv) == ["review", "sentiment"]
    (tmp_path / "rows.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    assert data_file_columns(tmp_path / "rows.jsonl") == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        data_file_columns(tmp_path / "missing.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported"):
        data_file_columns(tmp_path / "notes.txt")


def test_demo_is_built_follows_the_cache(tmp_path):
    assert not demo_is_built(tmp_path)
    demo_model_dir(tmp_path).mkdir(parents=True)
    (demo_model_dir(tmp_path) / DEMO_INFO_FILE).write_text("{}")
    assert demo_is_built(tmp_path)


@pytest.fixture
def tiny_task(tmp_path, cache_dir):
    from fwsvd.io.models import load_model
    from fwsvd.data.tasks import local_task

    directory = save_tiny_classifier(tmp_path / "model")
    task = local_task(write_review_csv(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")
    model, tokenizer = load_model(directory, task)
    return model, tokenizer, task


def test_cached_task_fisher_finds_what_task_fisher_computed(tiny_task):
    from fwsvd.fisher.task import task_fisher

    model, tokenizer, task = tiny_task
    settings = FisherConfig(num_examples=5000, seed=0, max_length=32, mode="per_example")  # capped at the split
    assert cached_task_fisher(model, task, settings) is None
    computed = task_fisher(model, tokenizer, task, settings)
    cached = cached_task_fisher(model, task, settings)
    assert cached is not None and cached.from_cache
    assert all(torch.equal(cached.importances[name], computed.importances[name]) for name in computed.importances)


def test_evaluate_methods_and_archive(tiny_task, tmp_path):
    from fwsvd.io.persistence import load_compressed, read_compressed_info
    from fwsvd.fisher.task import task_fisher

    model, tokenizer, task = tiny_task
    before = {name: value.clone() for name, value in model.state_dict().items()}
    fisher = task_fisher(model, tokenizer, task, FisherConfig(num_examples=32, max_length=32)).importances
    calls = []
    results = evaluate_methods(model, tokenizer, task, 0.5, fisher=fisher,
                                       methods=("dense", "svd", "fwsvd"), limit=10, batch_size=4, max_length=32,
                                       progress=lambda done, total: calls.append((done, total)))
    assert set(results) == {"dense", "svd", "fwsvd"}
    assert results["svd"]["params"] < results["dense"]["params"]
    assert results["fwsvd"]["num_examples"] == 10 and "accuracy" in results["fwsvd"]["metrics"]
    assert calls[-1] == (15, 15)  # 3 × 3 batches, then a warm-up and 5 interleaved latency rounds
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    assert results["dense"]["speedup"] is None and results["svd"]["speedup"].median > 0
    assert results["svd"]["latency_s_per_batch"] == results["svd"]["latency"].median
    assert results["dense"]["vs_dense"] is None and results["svd"]["vs_svd"] is None
    paired = results["fwsvd"]["vs_svd"]["accuracy"]
    assert paired.value == pytest.approx(results["fwsvd"]["metrics"]["accuracy"] - results["svd"]["metrics"]["accuracy"])
    assert results["svd"]["intervals"]["accuracy"].contains(results["svd"]["metrics"]["accuracy"])
    table = evaluations_frame([({"setting": "half", "examples": 10}, results)])
    assert list(table["method"]) == ["dense", "svd", "fwsvd"]
    assert {"setting", "examples", "params", "accuracy", "accuracy_low", "accuracy_vs_svd_verdict",
            "speedup_low"} <= set(table.columns)
    assert table["accuracy_vs_svd_verdict"].iloc[2] == paired.verdict
    # results merged from another call on the same examples are compared again
    later = evaluate_methods(model, tokenizer, task, 0.5, fisher=fisher, methods=("svd",), limit=10, batch_size=4,
                             max_length=32, latency_rounds=0)
    assert later["svd"]["vs_dense"] is None and later["svd"]["latency"] is None
    merged = add_differences(task, {"dense": results["dense"], **later})
    assert merged["svd"]["vs_dense"]["accuracy"].value == pytest.approx(
        results["svd"]["metrics"]["accuracy"] - results["dense"]["metrics"]["accuracy"])

    config = CompressionConfig(rank_ratio=0.5)
    archive = compressed_archive(model, config, fisher=fisher, tokenizer=tokenizer)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        names = opened.namelist()
        assert any(name.endswith("config.json") for name in names)
        opened.extractall(tmp_path / "unzipped")
    reloaded = load_compressed(tmp_path / "unzipped" / "model")
    assert sum(p.numel() for p in reloaded.parameters()) == results["fwsvd"]["params"]
    recorded = CompressionConfig.from_dict(read_compressed_info(tmp_path / "unzipped" / "model")["config"])
    assert recorded == config.with_ranks(recorded.rank_pattern) and set(recorded.rank_pattern.values()) == {16}


def test_cached_analyses_round_trip_and_follow_the_weights(cache_dir):
    model = tiny_bert()
    fisher = _fisher(model)
    store = DecompositionStore(use_disk=False)
    first = cached_analyses(model, fisher, store=store)
    computed = store.computed
    again = cached_analyses(model, fisher, store=store)
    assert store.computed == computed  # read back, nothing decomposed
    for name, layer in first.items():
        other = again[name]
        assert (other.out_features, other.in_features) == (layer.out_features, layer.in_features)
        for method in ("svd", "fwsvd"):
            assert torch.equal(other.singular_values[method], layer.singular_values[method])
            assert torch.equal(other.curves[method].weighted, layer.curves[method].weighted)
            assert other.curves[method].weight_norm == layer.curves[method].weight_norm
    ranks = _global_ranks(model, "rank_ratio", 0.3)
    assert analysis.layer_frame(first, ranks).equals(analysis.layer_frame(again, ranks))
    with torch.no_grad():
        next(iter(find_targets(model).values())).weight.mul_(2)
    changed = cached_analyses(model, fisher, store=store)
    assert store.computed > computed
    name = next(iter(first))
    assert changed[name].curves["svd"].weight_norm == pytest.approx(2 * first[name].curves["svd"].weight_norm)
