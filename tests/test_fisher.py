"""Fisher importances: exact against a brute-force loop over single examples, model left as it was, cache."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import VOCAB, random_batch, tiny_bert, tiny_bert_token, tiny_models
from torch import nn
from transformers import AlbertConfig, AlbertForSequenceClassification

from fwsvd.fisher.estimate import (
    FisherResult,
    estimate_fisher,
    load_or_estimate_fisher,
    squared_gradient_sum,
)
from fwsvd.fisher.summary import importance_similarity
from fwsvd.factorize.layers import dense_weight
from fwsvd.surgery.targets import find_targets


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense_grad(module: nn.Module) -> torch.Tensor:
    """The weight's gradient laid out (out, in), as dense_weight lays out the weight (Conv1D stores (in, out))."""
    grad = module.weight.grad
    return grad if isinstance(module, nn.Linear) else grad.t()


def single_example_loop(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The definition: each example alone through the model, its squared weight gradient summed over outputs."""
    targets = find_targets(model)
    sums = {name: torch.zeros(dense_weight(module).shape[1], dtype=torch.float64) for name, module in targets.items()}
    for batch in batches:
        for row in range(len(batch["labels"])):
            model.zero_grad()
            model(**{key: value[row:row + 1] for key, value in batch.items()}).loss.backward()
            for name, module in targets.items():
                sums[name] += dense_grad(module).double().pow(2).sum(0)
    model.zero_grad(set_to_none=True)
    return sums


def squared_batch_gradients(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The public shortcut: the squared gradient of each batch's mean loss."""
    targets = find_targets(model)
    sums = {name: torch.zeros(dense_weight(module).shape[1], dtype=torch.float64) for name, module in targets.items()}
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for name, module in targets.items():
            sums[name] += dense_grad(module).double().pow(2).sum(0)
    model.zero_grad(set_to_none=True)
    return sums


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == torch.float32 and actual[name].device.type == "cpu"
        # Relative to the layer's largest importance: these are sums of squares, all >= 0.
        scale = expected[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(actual[name].double() / scale, expected[name] / scale, rtol=0, atol=2e-5,
                                   msg=name)


def token_batch(seed: int, batch_size: int = 4, length: int = 12, num_labels: int = 5) -> dict[str, torch.Tensor]:
    """Ragged NER batch: -100 on padding and on some real tokens (special tokens, continuation pieces)."""
    batch = random_batch(batch_size, length, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(0, num_labels, (batch_size, length), generator=generator)
    labels[batch["attention_mask"] == 0] = -100
    labels[:, 0] = -100
    labels[torch.rand(batch_size, length, generator=generator) < 0.2] = -100
    batch["labels"] = labels
    return batch


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "electra", "gpt2"])
def test_exact_matches_single_example_loop(family):
    model = tiny_models()[family]
    batches = [random_batch(4, 12, seed=1), random_batch(3, 9, seed=2)]
    assert_close(estimate_fisher(model, batches), single_example_loop(model, batches))


def test_token_classification_with_ignored_labels_and_ragged_padding():
    model = tiny_bert_token()
    batches = [token_batch(seed=3), token_batch(seed=4, batch_size=3, length=15)]
    assert_close(estimate_fisher(model, batches), single_example_loop(model, batches))


def test_regression():
    model = tiny_bert(num_labels=1)
    batches = [random_batch(4, 12, seed=5)]
    batches[0]["labels"] = torch.randn(4)
    assert_close(estimate_fisher(model, batches), single_example_loop(model, batches))


def test_multi_label_classification():
    model = tiny_bert(num_labels=3)
    batches = [random_batch(4, 12, seed=6)]
    batches[0]["labels"] = torch.randint(0, 2, (4, 3)).float()
    assert_close(estimate_fisher(model, batches), single_example_loop(model, batches))


def tiny_albert() -> AlbertForSequenceClassification:
    """ALBERT applies one block at every depth: each of its layers is called 3 times per forward pass."""
    torch.manual_seed(0)
    return AlbertForSequenceClassification(AlbertConfig(
        vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64)).eval()


def test_weights_shared_across_layers_sum_their_calls_before_squaring():
    """An example's gradient is the sum over the calls of a shared layer."""
    model = tiny_albert()
    batches = [random_batch(4, 12, seed=7)]
    assert_close(estimate_fisher(model, batches), single_example_loop(model, batches))


def test_batch_mode_is_the_squared_mini_batch_gradient():
    model = tiny_bert()
    batches = [random_batch(4, 12, seed=8), random_batch(4, 10, seed=9)]
    shortcut = estimate_fisher(model, batches, mode="batch")
    assert_close(shortcut, squared_batch_gradients(model, batches))
    # The shortcut is a different importance, not a rescaled copy of the exact one.
    similarity = importance_similarity(estimate_fisher(model, batches), shortcut)
    assert similarity.keys() == shortcut.keys()
    assert min(similarity.values()) < 0.999


def test_batch_mode_token_classification():
    model = tiny_bert_token()
    batches = [token_batch(seed=10)]
    assert_close(estimate_fisher(model, batches, mode="batch"), squared_batch_gradients(model, batches))


def test_padding_contributes_nothing():
    model = tiny_bert_token()
    batch = token_batch(seed=11, length=10)
    longer = {key: torch.cat([value, torch.full((len(value), 6), -100 if key == "labels" else 0)], dim=1)
              for key, value in batch.items()}
    assert_close(estimate_fisher(model, [longer]),
                 {name: value.double() for name, value in estimate_fisher(model, [batch]).items()})


@pytest.mark.parametrize("tokens, in_features, out_features", [(5, 8, 6), (20, 4, 3)])
def test_gram_and_direct_contractions_match_per_example_gradients(tokens, in_features, out_features):
    """(5, 8, 6) takes the T×T Gram path, (20, 4, 3) forms per-example gradients; padding is dropped."""
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(3, tokens, in_features, generator=generator, dtype=torch.float64)
    g = torch.randn(3, tokens, out_features, generator=generator, dtype=torch.float64)
    keep = torch.ones(3, tokens, dtype=torch.bool)
    keep[1, tokens - 2:] = False
    x_padded = x.masked_fill(~keep[..., None], 1e3)  # garbage that must not leak in
    expected = torch.einsum("bto,btj->boj", g, x.masked_fill(~keep[..., None], 0)).pow(2).sum((0, 1))
    torch.testing.assert_close(squared_gradient_sum(x_padded, g, keep).double(), expected, rtol=1e-5, atol=1e-6)


def test_model_is_left_as_it_was():
    model = tiny_bert()
    model.train()
    model.bert.encoder.layer[0].output.eval()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    train_mode_result = estimate_fisher(model, [random_batch(4, 12, seed=13)])

    assert {name: module.training for name, module in model.named_modules()} == modes
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == flags
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert all(not module._forward_hooks for module in model.modules())
    # It ran in eval mode: no dropout, the same as from an eval model.
    assert_close(train_mode_result, {name: value.double() for name, value in
                                     estimate_fisher(model.eval(), [random_batch(4, 12, seed=13)]).items()})


def test_hooks_removed_and_state_restored_when_a_batch_raises():
    model = tiny_bert().train()
    good = random_batch(4, 12, seed=14)
    bad = dict(good, input_ids=torch.full((4, 12), VOCAB + 50))  # out of the vocabulary
    with pytest.raises(IndexError):
        estimate_fisher(model, [good, bad])
    assert model.training and all(module.training for module in model.modules())
    assert all(parameter.requires_grad and parameter.grad is None for parameter in model.parameters())
    assert all(not module._forward_hooks for module in model.modules())


def test_targets_and_progress():
    model = tiny_bert()
    names = list(find_targets(model))[:2]
    calls = []
    batches = [random_batch(2, 8, seed=15), random_batch(2, 8, seed=16)]
    def record(done: int, total: int) -> None:
        calls.append((done, total))

    importances = estimate_fisher(model, batches, targets=names, progress=record)
    assert list(importances) == names
    assert importances[names[0]].shape == (32,)
    assert calls == [(1, 2), (2, 2)]
    # An iterator has no length: total comes from the argument.
    calls.clear()
    estimate_fisher(model, iter(batches), targets=names, total=2, progress=record)
    assert calls == [(1, 2), (2, 2)]
    # A mapping of the model's own modules works too.
    targets = {name: model.get_submodule(name) for name in names}
    assert estimate_fisher(model, batches, targets=targets).keys() == importances.keys()


@pytest.mark.parametrize("kwargs, batches, message", [
    ({"mode": "diagonal"}, [random_batch()], "unknown Fisher mode 'diagonal'"),
    ({"targets": ["bert.nope"]}, [random_batch()], "unknown target layers \\['bert.nope'\\]; the model's Linear"),
    ({"targets": ["bert.encoder.layer.0.output.LayerNorm"]}, [random_batch()], "is a LayerNorm"),
    ({"targets": []}, [random_batch()], "no target layers"),
    ({}, [], "batches is empty"),
    ({}, [{"input_ids": torch.ones(2, 4, dtype=torch.long)}], "including 'labels'; got \\['input_ids'\\]"),
])
def test_bad_input_raises_value_error(kwargs, batches, message):
    with pytest.raises(ValueError, match=message):
        estimate_fisher(tiny_bert(), batches, **kwargs)


def test_a_mapping_of_foreign_modules_is_refused():
    name = "bert.encoder.layer.0.attention.self.query"
    with pytest.raises(ValueError, match="is not the module of that name"):
        estimate_fisher(tiny_bert(), [random_batch()], targets={name: nn.Linear(32, 32)})


# --- cache -------------------------------------------------------------------------------------------------

KEY = {"data_id": "tiny/train", "num_examples": 7, "seed": 0, "max_length": 12}


class CountingBatches:
    """A batches factory that counts how often the data was built."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[dict[str, torch.Tensor]]:
        self.calls += 1
        return [random_batch(4, 12, seed=17), random_batch(3, 12, seed=18)]


def test_cache_miss_then_hit(cache_dir):
    model, batches = tiny_bert(), CountingBatches()
    first = load_or_estimate_fisher(model, batches, **KEY)
    assert isinstance(first, FisherResult) and not first.from_cache and batches.calls == 1
    assert first.path is not None and first.path.exists() and first.path.is_relative_to(cache_dir / "fisher")
    assert_close(first.importances, single_example_loop(model, batches()))
    batches.calls = 0

    second = load_or_estimate_fisher(model, batches, **KEY)
    assert second.from_cache and batches.calls == 0 and second.path == first.path
    assert all(torch.equal(second.importances[name], first.importances[name]) for name in first.importances)
    assert json.loads(json.dumps(second.provenance)) == second.provenance == first.provenance
    assert second.provenance["mode"] == "per_example" and second.provenance["data_id"] == "tiny/train"


@pytest.mark.parametrize("change", [
    {"data_id": "tiny/validation"}, {"num_examples": 8}, {"seed": 1}, {"max_length": 16},
    {"mode": "batch", "batch_size": 4},
    {"targets": ["bert.encoder.layer.0.attention.self.query"]}, "weights"])
def test_any_key_change_misses(cache_dir, change):
    model, batches = tiny_bert(), CountingBatches()
    load_or_estimate_fisher(model, batches, **KEY)
    if change == "weights":
        with torch.no_grad():
            model.classifier.weight[0, 0] += 1e-3
        change = {}
    result = load_or_estimate_fisher(model, batches, **{**KEY, **change})
    assert not result.from_cache and batches.calls == 2
    assert len(list((cache_dir / "fisher").glob("*.safetensors"))) == 2


def test_batch_size_keys_batch_mode_only(cache_dir):
    """The shortcut's result depends on how examples are grouped; the exact sum does not."""
    model, batches = tiny_bert(), CountingBatches()
    exact = load_or_estimate_fisher(model, batches, **KEY, batch_size=4)
    assert load_or_estimate_fisher(model, batches, **KEY, batch_size=8).from_cache
    assert "batch_size" not in exact.provenance
    shortcut = load_or_estimate_fisher(model, batches, **KEY, mode="batch", batch_size=4)
    assert not shortcut.from_cache and shortcut.provenance["batch_size"] == 4
    assert not load_or_estimate_fisher(model, batches, **KEY, mode="batch", batch_size=8).from_cache
    with pytest.raises(ValueError, match="pass the batch_size"):
        load_or_estimate_fisher(model, batches, **KEY, mode="batch")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other key", "flipped value"])
def test_damaged_cache_file_is_reported_and_recomputed(cache_dir, caplog, damage):
    model, batches = tiny_bert(), CountingBatches()
    path = load_or_estimate_fisher(model, batches, **KEY).path
    expected = load_or_estimate_fisher(model, batches, **KEY).importances
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "other key":
        other = load_or_estimate_fisher(model, batches, **{**KEY, "seed": 5}).path
        path.write_bytes(other.read_bytes())
    else:
        path.write_bytes(data[:-4] + bytes(b ^ 0x55 for b in data[-4:]))
    calls = batches.calls

    with caplog.at_level(logging.WARNING, logger="fwsvd"):
        result = load_or_estimate_fisher(model, batches, **KEY)
    assert not result.from_cache and batches.calls == calls + 1
    assert str(path) in caplog.text and "recomputed" in caplog.text
    assert all(torch.allclose(result.importances[name], expected[name]) for name in expected)
    # The file was overwritten with a good one.
    assert load_or_estimate_fisher(model, batches, **KEY).from_cache
