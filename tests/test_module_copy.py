"""copy_sharing: copy.deepcopy's result, with chosen submodules shared."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import random_batch, tiny_models
from fwsvd import find_targets
from fwsvd.surgery.module_copy import copy_sharing


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "electra", "gpt2"])
def test_copy_equals_deepcopy_and_shares_only_what_is_asked(family):
    model = tiny_models()[family]
    targets = find_targets(model)
    duplicate = copy_sharing(model, targets.values())
    reference = copy.deepcopy(model)
    batch = random_batch(ragged=False)
    torch.testing.assert_close(_logits(duplicate, batch), _logits(reference, batch))
    assert all(duplicate.get_submodule(name) is module for name, module in targets.items())
    assert duplicate.config is not model.config
    shared = {id(p) for module in targets.values() for p in module.parameters()}
    for (name, original), (_, copied) in zip(model.named_parameters(), duplicate.named_parameters()):
        assert (id(copied) in shared) == (id(original) in shared), name
        if id(original) not in shared:
            assert copied is not original and copied.data_ptr() != original.data_ptr(), name
    assert [name for name, _ in duplicate.named_modules()] == [name for name, _ in model.named_modules()]
    assert duplicate.training == model.training


def test_copy_is_independent_and_keeps_tied_weights():
    model = tiny_models()["gpt2"]
    duplicate = copy_sharing(model)
    with torch.no_grad():
        duplicate.transformer.wte.weight.add_(1.0)
        duplicate.config.fwsvd_marker = True
    assert not hasattr(model.config, "fwsvd_marker")
    assert not torch.equal(duplicate.transformer.wte.weight, model.transformer.wte.weight)
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    copied = copy_sharing(tied)
    assert copied[1].weight is copied[0].weight and copied[0].weight is not tied[0].weight


def test_modules_with_their_own_copying_are_deep_copied_their_way():
    class Counting(nn.Linear):
        copies = 0

        def __deepcopy__(self, memo):
            Counting.copies += 1
            duplicate = Counting(self.in_features, self.out_features)
            duplicate.load_state_dict(self.state_dict())
            memo[id(self)] = duplicate
            return duplicate

    model = nn.Sequential(nn.Linear(3, 4), Counting(4, 2))
    copied = copy_sharing(model)
    assert Counting.copies == 1 and isinstance(copied[1], Counting) and copied[1] is not model[1]
    torch.testing.assert_close(copied(torch.ones(1, 3)), model(torch.ones(1, 3)))
