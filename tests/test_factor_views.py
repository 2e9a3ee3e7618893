"""Layers cut by compress_ / set_ranks_ hold views of their kept decomposition: a rank change copies nothing,
and nothing a user does through the library (inference, training, load_state_dict, saving) writes into it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import random_batch, tiny_bert
from fwsvd import LowRankLinear
from fwsvd.factorize.closed_form import decompose
from fwsvd.factorize.store import DecompositionStore
from fwsvd.io.persistence import load_compressed, save_compressed
from fwsvd.surgery.compress import compress_, compressed_copy, set_ranks_


def _low_rank_layers(model: nn.Module) -> dict[str, LowRankLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LowRankLinear)}


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _assert_same_outputs(model: nn.Module, other: nn.Module) -> None:
    batch = random_batch()
    torch.testing.assert_close(_logits(model, batch), _logits(other, batch))


def test_compressed_layers_view_the_store_and_a_rank_change_copies_nothing():
    store = DecompositionStore(use_disk=False)
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 6, method="svd", store=store)
    layer = compressed.bert.encoder.layer[0].attention.self.query
    kept = store.get(model.bert.encoder.layer[0].attention.self.query, method="svd")
    assert layer.views_decomposition
    assert layer.first.weight.data_ptr() == kept.right.data_ptr()
    assert layer.second.weight.data_ptr() == kept.left.data_ptr()
    set_ranks_(compressed, 11)
    assert layer.rank == 11 and layer.views_decomposition
    assert layer.first.weight.data_ptr() == kept.right.data_ptr()
    torch.testing.assert_close(layer.second.weight @ layer.first.weight, kept.reconstruct(11))
    # the same model as one built from copies
    copies, _ = compressed_copy(model, 11, method="svd", store=DecompositionStore(use_disk=False))
    for copied in _low_rank_layers(copies).values():
        copied.own_factors_()
    _assert_same_outputs(compressed, copies)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_a_layer_takes_its_own_copies_when_it_first_runs(context):
    torch.manual_seed(0)
    dense = nn.Linear(40, 32)
    decomposition = decompose(dense.weight.detach(), torch.rand(40) + 0.1, method="fwsvd")
    viewing = LowRankLinear.from_decomposition(decomposition, 13, dense.bias, views=True)
    owning = LowRankLinear.from_decomposition(decomposition, 13, dense.bias)
    assert viewing.views_decomposition and not owning.views_decomposition
    first = viewing.first.weight
    x = torch.randn(3, 7, 40)
    with context():
        torch.testing.assert_close(viewing(x), owning(x), rtol=0, atol=0)
    assert not viewing.views_decomposition and viewing.first.weight is first  # same parameter, own data
    assert viewing.first.weight.data_ptr() != decomposition.right.data_ptr()
    assert viewing.second.weight.is_contiguous() and decomposition.unchanged
    viewing(x).sum().backward()  # trainable afterwards, even when it first ran under inference_mode
    assert viewing.first.weight.grad is not None


def test_training_copies_the_factors_first_and_leaves_the_decomposition_alone():
    store = DecompositionStore(use_disk=False)
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 5, method="svd", store=store)
    decompositions = {name: store.get(model.get_submodule(name), method="svd")
                      for name in _low_rank_layers(compressed)}
    before = {name: (d.left.clone(), d.right.clone()) for name, d in decompositions.items()}
    compressed.train()
    factors = [layer.weight for low_rank in _low_rank_layers(compressed).values()
               for layer in (low_rank.first, low_rank.second)]
    optimizer = torch.optim.Adam(factors, lr=0.1)  # built before the first forward pass, as usual
    for _ in range(2):
        loss = compressed(**random_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, layer in _low_rank_layers(compressed).items():
        assert not layer.views_decomposition
        assert decompositions[name].unchanged
        assert torch.equal(decompositions[name].left, before[name][0])
        assert torch.equal(decompositions[name].right, before[name][1])
        assert not torch.equal(layer.first.weight, before[name][1][:5])  # the layer itself was trained
    # a rank change after training cuts the untouched decomposition again
    compressed.eval()
    set_ranks_(compressed, 6)
    fresh, _ = compressed_copy(model, 6, method="svd", store=DecompositionStore(use_disk=False))
    _assert_same_outputs(compressed, fresh)


def test_load_state_dict_writes_into_the_layer_not_the_decomposition():
    store = DecompositionStore(use_disk=False)
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=store)
    other, _ = compressed_copy(tiny_bert(seed=1), 4, method="svd", store=DecompositionStore(use_disk=False))
    decomposition = store.get(model.bert.encoder.layer[1].output.dense, method="svd")
    right = decomposition.right.clone()
    compressed.load_state_dict(other.state_dict())
    assert decomposition.unchanged and torch.equal(decomposition.right, right)
    _assert_same_outputs(compressed, other)


def test_a_hand_edit_without_own_factors_is_caught():
    store = DecompositionStore(use_disk=False)
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=store)
    layer = compressed.bert.encoder.layer[0].output.dense
    with torch.no_grad():
        layer.first.weight.mul_(3.0)  # writes into the decomposition the layer views
    with pytest.raises(ValueError, match="changed in place.*own_factors_"):
        set_ranks_(compressed, 6)
    # the store serves a fresh decomposition, not the edited one
    again, _ = compressed_copy(model, 4, method="svd", store=store)
    reference, _ = compressed_copy(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    _assert_same_outputs(again, reference)
    # own_factors_ first: the edit stays in the layer
    fine, _ = compressed_copy(model, 4, method="svd", store=store)
    edited = fine.bert.encoder.layer[0].output.dense
    edited.own_factors_()
    with torch.no_grad():
        edited.first.weight.mul_(3.0)
    set_ranks_(fine, 6)
    _assert_same_outputs(fine, compressed_copy(model, 6, method="svd", store=store)[0])


def test_layers_viewing_one_shared_decomposition_save_and_reload(tmp_path):
    model = tiny_bert()
    with torch.no_grad():  # two layers with the same weight share one decomposition in the store
        model.bert.encoder.layer[1].attention.self.query.weight.copy_(model.bert.encoder.layer[0].attention.self.query.weight)
    store = DecompositionStore(use_disk=False)
    report = compress_(model, 4, method="svd", store=store)
    first = model.bert.encoder.layer[0].attention.self.query
    second = model.bert.encoder.layer[1].attention.self.query
    assert first.first.weight.data_ptr() == second.first.weight.data_ptr()
    batch = random_batch()
    expected = _logits(model, batch)
    save_compressed(model, tmp_path / "saved", config=report.config)
    reloaded = load_compressed(tmp_path / "saved")
    torch.testing.assert_close(_logits(reloaded, batch), expected)
    set_ranks_(model, 6)  # still cut from the decompositions after saving
    assert first.rank == 6 and first.views_decomposition


def test_a_layer_set_dense_again_is_a_copy_of_the_live_dense_layer():
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    name = "bert.encoder.layer.0.attention.self.query"  # 32×32: break-even at rank 16
    report = set_ranks_(compressed, {name: 16})
    assert name in report.kept_dense
    layer, original = compressed.get_submodule(name), model.get_submodule(name)
    assert isinstance(layer, nn.Linear) and layer is not original
    assert torch.equal(layer.weight, original.weight) and torch.equal(layer.bias, original.bias)  # exact
    assert layer.weight.data_ptr() != original.weight.data_ptr()  # the two models never share a layer
    set_ranks_(compressed, {name: 5})  # and it is cut again from its decomposition
    assert compressed.get_submodule(name).rank == 5


def test_a_dense_layer_changed_since_compression_is_not_copied_back():
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    name = "bert.encoder.layer.1.output.dense"
    original = model.get_submodule(name)
    weight = original.weight.detach().clone()
    with torch.no_grad():
        original.weight.mul_(2.0)  # the dense model trained on: no longer what the decomposition was made of
    set_ranks_(compressed, {name: min(original.weight.shape)})
    rebuilt = compressed.get_submodule(name)
    torch.testing.assert_close(rebuilt.weight, weight, rtol=1e-4, atol=1e-5)  # from the full-rank factors
