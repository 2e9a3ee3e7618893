"""LowRankLinear built from Linear and GPT-2's Conv1D, and turned back into dense layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fwsvd import LowRankLinear


def _conv1d(in_features: int, out_features: int) -> Conv1D:
    torch.manual_seed(0)
    layer = Conv1D(out_features, in_features)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_linear_parity_and_parameter_count(bias):
    torch.manual_seed(0)
    dense = nn.Linear(12, 8, bias=bias)
    x = torch.randn(5, 12)
    for importance in (None, torch.rand(12) + 0.1):
        low_rank = LowRankLinear.from_linear(dense, 8, importance)
        torch.testing.assert_close(low_rank(x), dense(x), rtol=1e-4, atol=1e-5)
    low_rank = LowRankLinear.from_linear(dense, 3)
    assert low_rank.rank == 3 and low_rank.first.bias is None
    assert sum(p.numel() for p in low_rank.parameters()) == 3 * (12 + 8) + (8 if bias else 0)


def test_conv1d_parity_and_round_trip():
    conv = _conv1d(in_features=10, out_features=6)
    x = torch.randn(2, 4, 10)
    low_rank = LowRankLinear.from_linear(conv, 6, torch.rand(10) + 0.1)
    assert low_rank.source_kind == "conv1d"
    torch.testing.assert_close(low_rank(x), conv(x), rtol=1e-4, atol=1e-4)
    back = low_rank.to_original()
    assert isinstance(back, Conv1D) and back.weight.shape == conv.weight.shape
    torch.testing.assert_close(back(x), conv(x), rtol=1e-4, atol=1e-4)


def test_to_dense_multiplies_the_factors_back():
    torch.manual_seed(1)
    dense = nn.Linear(9, 7)
    low_rank = LowRankLinear.from_linear(dense, 2)
    restored = low_rank.to_original()
    assert isinstance(restored, nn.Linear)
    torch.testing.assert_close(restored.weight, low_rank.second.weight @ low_rank.first.weight)
    x = torch.randn(3, 9)
    torch.testing.assert_close(restored(x), low_rank(x), rtol=1e-5, atol=1e-6)


def test_keeps_dtype():
    dense = nn.Linear(6, 4).to(torch.float64)
    low_rank = LowRankLinear.from_linear(dense, 2)
    assert low_rank.first.weight.dtype == torch.float64 and low_rank.second.bias.dtype == torch.float64


def test_mismatched_factors_raise():
    with pytest.raises(ValueError, match="do not chain"):
        LowRankLinear.from_factors(torch.randn(3, 5), torch.randn(4, 2), None)


def test_rank_out_of_range_raises():
    with pytest.raises(ValueError, match="from 1 to 4"):
        LowRankLinear.from_linear(nn.Linear(6, 4), 5)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_built_from_a_decomposition_matches_one_built_by_the_constructor(bias):
    torch.manual_seed(2)
    dense = nn.Linear(10, 6, bias=bias)
    built = LowRankLinear.from_linear(dense, 3)
    reference = LowRankLinear(10, 6, 3, bias=bias)
    assert repr(built) == repr(reference)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert list(built.first._parameters) == list(reference.first._parameters)  # "bias" registered as None
    assert all(p.requires_grad for p in built.parameters())
    reference.load_state_dict(built.state_dict())
    x = torch.randn(4, 10)
    torch.testing.assert_close(built(x), reference(x))


def test_from_decomposition_places_the_factors_where_asked():
    from fwsvd import decompose

    dense = nn.Linear(8, 5, bias=False)
    decomposition = decompose(dense.weight)
    layer = LowRankLinear.from_decomposition(decomposition, 2, None, dtype=torch.float64)
    assert layer.first.weight.dtype == torch.float64 and layer.second.weight.dtype == torch.float64
    assert LowRankLinear.from_decomposition(decomposition, 2, None).first.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="source_kind"):
        LowRankLinear.from_decomposition(decomposition, 2, None, "conv2d")


def test_set_factors_changes_the_rank_in_place_and_refuses_misfits():
    torch.manual_seed(3)
    dense = nn.Linear(9, 5)
    layer = LowRankLinear.from_linear(dense, 2)
    bias = layer.second.bias
    layer.set_factors_(torch.randn(4, 9), torch.randn(5, 4))
    assert layer.rank == 4 and layer.second.in_features == 4 and layer.second.bias is bias
    assert layer(torch.randn(2, 9)).shape == (2, 5)
    with pytest.raises(ValueError, match="do not fit"):
        layer.set_factors_(torch.randn(3, 9), torch.randn(5, 2))


def test_unaligned_rank_runs_on_zero_padded_copies_without_autograd():
    from fwsvd.surgery.lowrank import ALIGNMENT

    torch.manual_seed(0)
    layer = LowRankLinear.from_linear(nn.Linear(24, 20), 5)
    x = torch.randn(3, 7, 24)
    expected = x @ layer.first.weight.T @ layer.second.weight.T + layer.second.bias
    with torch.inference_mode():
        assert torch.allclose(layer(x), expected, atol=1e-6)
    first, second = layer._aligned[1]
    assert first.shape == (ALIGNMENT, 24) and second.shape == (20, ALIGNMENT)
    assert not first[5:].any() and not second[:, 5:].any()
    assert sum(p.numel() for p in layer.parameters()) == 5 * 44 + 20  # the parameters are those of rank 5
    assert set(layer.state_dict()) == {"first.weight", "second.weight", "second.bias"}
    # changed in place (an optimizer step): the copies are remade
    with torch.no_grad():
        layer.first.weight.mul_(2)
        assert torch.allclose(layer(x), x @ layer.first.weight.T @ layer.second.weight.T + layer.second.bias,
                              atol=1e-5)
    # new factors, another rank: remade at that rank
    layer.set_factors_(torch.randn(9, 24), torch.randn(20, 9))
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ layer.first.weight.T @ layer.second.weight.T + layer.second.bias,
                              atol=1e-4)
    assert layer._aligned[1][0].shape == (16, 24)
    # moved to another dtype: remade from the moved parameters
    layer.double()
    with torch.no_grad():
        assert layer(x.double()).dtype == torch.float64 and layer._aligned[1][0].dtype == torch.float64


def test_training_uses_the_parameters_and_aligned_ranks_need_no_copies():
    torch.manual_seed(0)
    layer = LowRankLinear.from_linear(nn.Linear(24, 20), 5)
    layer(torch.randn(4, 24)).sum().backward()
    assert layer.first.weight.grad is not None and layer.second.weight.grad is not None
    assert "_aligned" not in layer.__dict__
    aligned = LowRankLinear.from_linear(nn.Linear(24, 20), 8)
    with torch.no_grad():
        aligned(torch.randn(4, 24))
    assert "_aligned" not in aligned.__dict__
