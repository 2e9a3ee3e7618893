"""Sizes counted one way: whole model and target weights, from shapes (torch-free) and from the model itself."""

from __future__ import annotations

import pytest

from conftest import tiny_bert
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.analyze import analyze_layers
from fwsvd.surgery.architecture import architecture_frame, model_summary, size_of
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.modules import count_parameters
from fwsvd.surgery.targets import find_targets
from fwsvd.view import analysis, rank_plan
from fwsvd.view.sizes import kept_weights, size_at, target_weights

#: MiniLM-L6 (the demo): six blocks of four 384×384 attention Linears and the 1536×384 / 384×1536 FFN pair.
MINILM_SHAPES = {f"layer.{block}.{name}": shape for block in range(6)
                 for name, shape in [("query", (384, 384)), ("key", (384, 384)), ("value", (384, 384)),
                                     ("attention_output", (384, 384)), ("intermediate", (1536, 384)),
                                     ("output", (384, 1536))]}
MINILM_PARAMS = 22_713_986  # the demo's safetensors: encoder 22,713,216 plus a 2-label head


def test_minilm_at_ratio_a_third_keeps_half_the_targets_but_three_quarters_of_the_model():
    size = size_at(MINILM_PARAMS, {name: 127 for name in MINILM_SHAPES}, MINILM_SHAPES)  # rank_for_ratio(0.33, 384)
    assert size.target_weights == 10_616_832  # 10.62 M: weights only, the biases (20,736) stay
    assert size.kept_weights == 6 * (4 * 127 * 768 + 2 * 127 * 1920) == 5_266_944
    assert size.compressed_params == MINILM_PARAMS - 10_616_832 + 5_266_944 == 17_364_098
    assert size.target_share == pytest.approx(0.49610, abs=1e-5)
    assert size.model_share == pytest.approx(0.76447, abs=1e-5)


def test_full_rank_and_missing_layers_count_dense_break_even_saves_nothing():
    shapes = {"a": (384, 384), "b": (384, 384)}
    assert kept_weights({"a": 384}, shapes) == target_weights(shapes) == 2 * 384 * 384
    assert kept_weights({"a": 192, "b": 192}, shapes) == target_weights(shapes)  # break-even: 192·768 = 384²
    assert size_at(1000, {}, {}).model_share == 1.0
    # Past break-even (but below full rank) a layer is kept dense too, as compress_ keeps it: never negative.
    assert kept_weights({"a": 200, "b": 191}, shapes) == 384 * 384 + 191 * 768
    assert size_at(10**6, {"a": 300, "b": 300}, shapes).removed == 0


def test_model_summary_explorer_and_compressed_model_agree():
    model = tiny_bert()
    targets = find_targets(model)
    ranks = {name: 4 for name in targets}
    ranks[next(iter(targets))] = 32  # one layer at full rank: kept dense
    summary = model_summary(model)
    size = size_of(model, ranks)
    assert summary["parameters"] == size.model_params == count_parameters(model)
    assert summary["target_parameters"] == size.target_weights == int(architecture_frame(model)["weight_params"].sum())
    assert summary["target_biases"] == sum(module.bias.numel() for module in targets.values())
    # the explorer's table counts the same
    store = DecompositionStore(use_disk=False)
    analyses = analyze_layers(model, methods=("svd",), store=store)
    frame = rank_plan.mark_dense(analysis.layer_frame(analyses, ranks))
    totals = analysis.totals(frame, size.model_params)
    assert totals["dense_params"] == size.target_weights and totals["kept_params"] == size.kept_weights
    # and so does the compressed model the explorer evaluates (layers at full rank left dense)
    compressed, _ = compressed_copy(model, rank_plan.compressed_ranks(ranks, analyses), method="svd", store=store)
    assert count_parameters(compressed) == size.compressed_params == totals["compressed_params"]
    assert totals["model_share"] == pytest.approx(size.compressed_params / count_parameters(model))
    assert analysis.totals(frame)["model_share"] is None


def test_explorer_snapshot_carries_the_whole_model_size(cache_dir):
    from fwsvd.surgery.targets import find_blocks
    from fwsvd.view import snapshot
    from fwsvd.view.explorer import ExplorerView, load_view, save_view

    model = tiny_bert()
    analyses = analyze_layers(model, methods=("svd",), store=DecompositionStore(use_disk=False))
    view = ExplorerView("tiny", analyses, find_blocks(model), "fisher", 10, "accuracy", count_parameters(model))
    save_view({"kind": "test", "source": "tiny"}, view)
    assert load_view({"kind": "test", "source": "tiny"}).model_params == count_parameters(model)
    # a snapshot written without it reads as unknown, not as an error
    snapshot.save_snapshot({"kind": "old", "source": "tiny"}, analyses, view.blocks,
                           {"fisher_key": "fisher", "validation_size": 10, "metric": "accuracy"})
    assert load_view({"kind": "old", "source": "tiny"}).model_params is None
