"""compress_ on every supported family: parity at full rank, targets, ranks, reports, store reuse."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from conftest import random_batch, tiny_bert, tiny_models
from fwsvd import (
    DecompositionStore,
    LowRankLinear,
    analyze_layers,
    compress_,
    compressed_copy,
    densify_,
    find_targets,
    set_ranks_,
)
from fwsvd.config import CompressionConfig
from fwsvd.surgery.targets import target_shapes

FAMILIES = ["bert", "distilbert", "roberta", "electra", "gpt2"]
#: Linear layers per transformer block: Q, K, V, attention output, two FFN (GPT-2 fuses QKV into c_attn).
LAYERS_PER_BLOCK = {"bert": 6, "distilbert": 6, "roberta": 6, "electra": 6, "gpt2": 4}


def _random_fisher(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    fisher = {}
    for name, module in find_targets(model).items():
        in_features = module.weight.shape[0] if isinstance(module, Conv1D) else module.weight.shape[1]
        fisher[name] = torch.rand(in_features, generator=generator).pow(3) + 1e-3
    return fisher


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def store():
    return DecompositionStore(use_disk=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_are_the_block_linears_only(family):
    model = tiny_models()[family]
    targets = find_targets(model)
    assert len(targets) == 2 * LAYERS_PER_BLOCK[family]
    for name in targets:
        assert not any(part in name for part in ("embeddings", "pooler", "classifier", "score", "wte", "wpe"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_full_rank_reproduces_the_dense_logits(family, method, store):
    model = tiny_models()[family]
    batch = random_batch(ragged=family != "gpt2")
    expected = _logits(model, batch)
    fisher = _random_fisher(model)
    # Factors at full rank hold more weights than their layers: asked for explicitly.
    config = CompressionConfig(method=method, rank_ratio=1.0, keep_dense_past_break_even=False)
    report = compress_(model, config, fisher=fisher, store=store)
    assert all(isinstance(module, LowRankLinear) for module in _low_rank_layers(model))
    assert len(_low_rank_layers(model)) == len(report.layers) == 2 * LAYERS_PER_BLOCK[family]
    torch.testing.assert_close(_logits(model, batch), expected, rtol=1e-4, atol=1e-4)


def _low_rank_layers(model):
    return [m for m in model.modules() if isinstance(m, LowRankLinear)]


def test_low_rank_changes_the_logits_and_counts_parameters(store):
    model = tiny_bert()
    batch = random_batch()
    dense_logits = _logits(model, batch)
    before = sum(p.numel() for p in model.parameters())
    report = compress_(model, 4, method="svd", store=store)
    after = sum(p.numel() for p in model.parameters())
    assert report.model_params_before == before and report.model_params_after == after
    for layer in report.layers:
        bias = layer.out_features
        assert layer.params_before == layer.out_features * layer.in_features + bias
        assert layer.params_after == 4 * (layer.out_features + layer.in_features) + bias
    assert before - after == report.params_before - report.params_after
    assert (_logits(model, batch) - dense_logits).abs().max() > 1e-5


def test_report_errors_equal_the_explicit_reconstruction_errors(store):
    model = tiny_bert()
    fisher = _random_fisher(model)
    dense = {name: module.weight.detach().clone() for name, module in find_targets(model).items()}
    report = compress_(model, 5, method="fwsvd", fisher=fisher, store=store)
    for layer in report.layers:
        module = model.get_submodule(layer.name)
        residual = dense[layer.name] - module.second.weight @ module.first.weight
        assert layer.error == pytest.approx(residual.norm().item(), rel=1e-3)
        assert layer.relative_error == pytest.approx(residual.norm().item() / dense[layer.name].norm().item(), rel=1e-3)
        weighted = (residual * fisher[layer.name].sqrt()).norm().item()
        assert layer.weighted_error == pytest.approx(weighted, rel=1e-3)


def test_break_even_flag():
    model = tiny_bert()  # query: 32x32 → break-even 16; FFN 48x32 → 19.2
    pins = {"bert.encoder.layer.0.attention.self.query": 16, "bert.encoder.layer.0.intermediate.dense": 19,
            "bert.encoder.layer.1.intermediate.dense": 20}
    config = CompressionConfig(method="svd", keep_dense_past_break_even=False).with_ranks(pins)
    report = compress_(model, config, store=DecompositionStore(use_disk=False))
    flags = {layer.name.split("layer.")[1]: layer.above_break_even for layer in report.layers}
    assert flags == {"0.attention.self.query": True, "0.intermediate.dense": False, "1.intermediate.dense": True}
    assert report.above_break_even == ["bert.encoder.layer.0.attention.self.query",
                                       "bert.encoder.layer.1.intermediate.dense"]
    query = next(layer for layer in report.layers if "query" in layer.name)
    assert query.params_after >= query.params_before
    assert report.kept_dense == {}


def test_layers_at_break_even_stay_dense_by_default():
    model = tiny_bert()  # query: 32x32 → break-even 16; FFN 48x32 → 19.2
    before = sum(p.numel() for p in model.parameters())
    query, ffn0, ffn1 = ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.intermediate.dense",
                         "bert.encoder.layer.1.intermediate.dense")
    report = compress_(model, {query: 16, ffn0: 19, ffn1: 20}, method="svd", store=DecompositionStore(use_disk=False))
    modules = dict(model.named_modules())
    assert type(modules[query]) is nn.Linear and type(modules[ffn1]) is nn.Linear
    assert isinstance(modules[ffn0], LowRankLinear)
    assert report.ranks == {ffn0: 19} and report.kept_dense == {query: 16, ffn1: 20}
    assert report.above_break_even == [] and report.to_dict()["kept_dense"] == {query: 16, ffn1: 20}
    assert report.config.rank_pattern == {ffn0: 19}  # the pinned config reproduces what the model holds
    after = sum(p.numel() for p in model.parameters())
    assert report.model_params_before == before and report.model_params_after == after
    assert after == before - 48 * 32 + 19 * (48 + 32)


def test_only_layers_at_break_even_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="at or past break-even.*keep_dense_past_break_even=False"):
        compress_(tiny_bert(), 1.0, method="svd", store=DecompositionStore(use_disk=False))


def test_set_ranks_keeps_a_layer_dense_past_break_even_and_cuts_it_again():
    model = tiny_bert()
    batch = random_batch()
    expected = _logits(model, batch)
    query = "bert.encoder.layer.0.attention.self.query"
    compress_(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    report = set_ranks_(model, {query: 32})
    assert type(dict(model.named_modules())[query]) is nn.Linear and report.kept_dense == {query: 32}
    assert query not in report.ranks and report.model_params_after == sum(p.numel() for p in model.parameters())
    report = set_ranks_(model, CompressionConfig(method="svd", rank_ratio=1.0, keep_dense_past_break_even=False))
    assert all(isinstance(m, LowRankLinear) for m in _low_rank_layers(model)) and report.kept_dense == {}
    assert isinstance(dict(model.named_modules())[query], LowRankLinear)
    torch.testing.assert_close(_logits(model, batch), expected, rtol=1e-4, atol=1e-4)


def test_rank_forms(store):
    model = tiny_bert()
    targets = find_targets(model)

    def ranks(config) -> dict[str, int]:
        return compressed_copy(model, config, method="svd", store=store)[1].ranks

    assert set(ranks(3).values()) == {3}
    assert set(ranks(0.33).values()) == {round(0.33 * 32)}
    full = CompressionConfig(method="svd", rank_ratio=1.0, keep_dense_past_break_even=False)
    assert compressed_copy(model, full, store=store)[1].ranks == {name: 32 for name in targets}
    name = next(iter(targets))
    assert ranks({name: 2}) == {name: 2}
    by_budget = CompressionConfig(param_budget=0.5).resolve_ranks(target_shapes(targets))
    assert by_budget["bert.encoder.layer.0.attention.self.query"] == 8  # floor(0.5 * 32*32/64)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        (0, "from 1 to 32"),
        (33, "from 1 to 32"),
        (0.0, "in \\(0, 1\\]"),
        (1.5, "in \\(0, 1\\]"),
        ({"bert.encoder.layer.0.attention.self.querry": 2}, "did you mean 'bert.encoder.layer.0.attention.self.query'"),
        ({"bert.encoder.layer.0.attention.self.query": 40}, "query of shape \\(32, 32\\).*from 1 to 32"),
        ("half", "ranks must be"),
    ],
)
def test_bad_ranks_raise(ranks, message):
    with pytest.raises(ValueError, match=message):
        compress_(tiny_bert(), ranks, method="svd", store=DecompositionStore(use_disk=False))


def test_bad_method_and_fisher_raise():
    model = tiny_bert()
    with pytest.raises(ValueError, match="method must be one of svd, fwsvd"):
        compress_(model, 2, method="pca")
    with pytest.raises(ValueError, match="needs Fisher"):
        compress_(model, 2, method="fwsvd")
    fisher = _random_fisher(model)
    fisher.pop("bert.encoder.layer.1.output.dense")
    with pytest.raises(ValueError, match="layer.1.output.dense"):
        compress_(model, 2, method="fwsvd", fisher=fisher)
    assert not _low_rank_layers(model)  # nothing was swapped before the errors


def test_already_compressed_model_is_refused(store):
    model = tiny_bert()
    compress_(model, 2, method="svd", store=store)
    with pytest.raises(ValueError, match="already low-rank"):
        compress_(model, 2, method="svd", store=store)


def test_new_ranks_reuse_the_decompositions(store):
    model = tiny_bert()
    fisher = _random_fisher(model)
    first, _ = compressed_copy(model, 4, method="fwsvd", fisher=fisher, store=store)
    computed = store.computed
    assert computed == len(find_targets(model))
    second, report = compressed_copy(model, 0.5, method="fwsvd", fisher=fisher, store=store)
    assert store.computed == computed  # a truncation, not a new SVD
    assert {layer.rank for layer in report.layers} == {16}
    compressed_copy(model, 4, method="svd", store=store)
    assert store.computed == 2 * computed  # the other method is another decomposition


def test_compressed_copy_leaves_the_original_untouched(store):
    model = tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = random_batch()
    logits = _logits(model, batch)
    copy, _ = compressed_copy(model, 2, method="svd", store=store)
    assert _low_rank_layers(copy) and not _low_rank_layers(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    torch.testing.assert_close(_logits(model, batch), logits)


def test_disk_cache_serves_a_new_store_and_survives_corruption(tmp_path, caplog):
    model = tiny_bert()
    fisher = _random_fisher(model)
    writer = DecompositionStore(tmp_path)
    expected, _ = compressed_copy(model, 3, method="fwsvd", fisher=fisher, store=writer)
    reader = DecompositionStore(tmp_path)
    reloaded, _ = compressed_copy(model, 3, method="fwsvd", fisher=fisher, store=reader)
    assert reader.computed == 0
    batch = random_batch()
    torch.testing.assert_close(_logits(reloaded, batch), _logits(expected, batch))
    files = sorted((tmp_path / "decompositions").glob("*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:100])
    recovering = DecompositionStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        recovered, _ = compressed_copy(model, 3, method="fwsvd", fisher=fisher, store=recovering)
    assert recovering.computed == 1 and "corrupt" in caplog.text
    torch.testing.assert_close(_logits(recovered, batch), _logits(expected, batch))


def test_changed_weight_gets_a_new_decomposition(store):
    model = tiny_bert()
    compressed_copy(model, 3, method="svd", store=store)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.mul_(2)
    computed = store.computed
    compressed_copy(model, 3, method="svd", store=store)
    assert store.computed == computed + 1


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_densified_model_loads_with_from_pretrained(family, tmp_path, store):
    model = tiny_models()[family]
    compress_(model, 5, method="svd", store=store)
    batch = random_batch(ragged=False)
    expected = _logits(model, batch)
    densify_(model)
    assert not _low_rank_layers(model)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=1e-4, atol=1e-4)


def test_analysis_matches_the_compression_report(store):
    model = tiny_bert()
    fisher = _random_fisher(model)
    analyses = analyze_layers(model, fisher, store=store)
    assert list(analyses) == list(find_targets(model))
    report = compress_(model, 6, method="fwsvd", fisher=fisher, store=store)
    for layer in report.layers:
        curves = analyses[layer.name].curves["fwsvd"]
        assert layer.error == pytest.approx(curves.plain[6].item())
        assert layer.weighted_error == pytest.approx(curves.weighted[6].item())
        assert (analyses[layer.name].curves["fwsvd"].weighted <= analyses[layer.name].curves["svd"].weighted + 1e-5).all()
    assert set(analyze_layers(tiny_bert(), store=store)["bert.encoder.layer.0.output.dense"].curves) == {"svd"}


def test_training_a_compressed_layer_leaves_the_kept_decomposition_alone(store):
    model = tiny_bert()
    first, _ = compressed_copy(model, 4, method="svd", store=store)
    with torch.no_grad():
        for module in _low_rank_layers(first):
            module.first.weight.add_(1.0)
            module.second.weight.mul_(3.0)
    second, _ = compressed_copy(model, 4, method="svd", store=store)
    again, _ = compressed_copy(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    batch = random_batch()
    torch.testing.assert_close(_logits(second, batch), _logits(again, batch))


def test_cached_file_that_is_not_a_decomposition_is_recomputed(tmp_path, caplog):
    import json

    from safetensors import safe_open

    from fwsvd.storage.tensor_cache import TensorCache

    model = tiny_bert()
    writer = DecompositionStore(tmp_path)
    expected, _ = compressed_copy(model, 3, method="svd", store=writer)
    writer.flush()
    path = sorted((tmp_path / "decompositions").glob("*.safetensors"))[0]
    with safe_open(str(path), framework="pt") as handle:
        key = json.loads(handle.metadata()["fwsvd_key"])
        singular_values = handle.get_tensor("s")
    # Right key, valid checksum, but not the tensors of a decomposition.
    TensorCache(tmp_path, namespace="decompositions").put(key, {"s": singular_values})
    recovering = DecompositionStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        recovered, _ = compressed_copy(model, 3, method="svd", store=recovering)
    assert recovering.computed == 1 and "unusable" in caplog.text
    batch = random_batch()
    torch.testing.assert_close(_logits(recovered, batch), _logits(expected, batch))


def test_cache_files_are_written_in_the_background_and_a_failed_write_loses_only_the_file(tmp_path, caplog):
    model = tiny_bert()
    writer = DecompositionStore(tmp_path)
    expected, _ = compressed_copy(model, 3, method="svd", store=writer)
    writer.flush()
    files = list((tmp_path / "decompositions").glob("*.safetensors"))
    assert len(files) == len(find_targets(model))
    assert not list((tmp_path / "decompositions").glob(".tmp-*"))  # every write was renamed into place
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    failing = DecompositionStore(blocked)
    with caplog.at_level(logging.WARNING):
        compressed, _ = compressed_copy(model, 3, method="svd", store=failing)
        failing.flush()
    assert "could not write the cache file" in caplog.text
    batch = random_batch()
    torch.testing.assert_close(_logits(compressed, batch), _logits(expected, batch))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_set_ranks_equals_a_fresh_compression_at_the_new_ranks(family, method, store):
    model = tiny_models()[family]
    fisher = _random_fisher(model)
    reranked, _ = compressed_copy(model, 3, method=method, fisher=fisher, store=store)
    computed = store.computed
    new_ranks = {name: 1 + i % 5 for i, name in enumerate(find_targets(model))}
    report = set_ranks_(reranked, new_ranks)
    assert store.computed == computed  # cut from the kept decompositions: no SVD
    expected, expected_report = compressed_copy(model, new_ranks, method=method, fisher=fisher, store=store)
    batch = random_batch(ragged=False)
    torch.testing.assert_close(_logits(reranked, batch), _logits(expected, batch))
    assert report.to_dict() == expected_report.to_dict()
    assert {name: module.rank for name, module in _named_low_rank(reranked).items()} == new_ranks


def test_set_ranks_accepts_every_rank_form_and_keeps_unnamed_layers(store):
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=store)
    name = "bert.encoder.layer.1.output.dense"
    report = set_ranks_(compressed, {name: 2})
    assert report.ranks[name] == 2 and set(report.ranks.values()) == {2, 4}
    assert set(set_ranks_(compressed, 0.5).ranks.values()) == {16}  # half of min(32, 48) = 32 → 16
    assert report.method == "svd"


def test_set_ranks_refuses_what_it_cannot_cut(tmp_path, store):
    model = tiny_bert()
    with pytest.raises(ValueError, match="no low-rank layers"):
        set_ranks_(model, 2)
    compressed, _ = compressed_copy(model, 4, method="svd", store=store)
    with pytest.raises(ValueError, match="from 1 to 32"):
        set_ranks_(compressed, 40)
    with pytest.raises(ValueError, match="not compression targets"):
        set_ranks_(compressed, {"bert.encoder.layer.0.attention.self.querry": 2})
    import copy

    with pytest.raises(ValueError, match="not built by compress_"):
        set_ranks_(copy.deepcopy(compressed), 2)


def _named_low_rank(model: torch.nn.Module) -> dict[str, LowRankLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LowRankLinear)}
