"""The SVD / FWSVD closed forms against independent references, and the closed-form error curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fwsvd import Decomposition, decompose, error_curves, low_rank_factors
from fwsvd.factorize.weighted import IMPORTANCE_FLOOR, importance_scale

SHAPES = [(12, 20), (20, 12), (16, 16)]


def _weight_and_importance(shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator, dtype=torch.float64)
    # Skewed importances, as Fisher is in practice: a few input features matter most.
    importance = torch.rand(shape[1], generator=generator, dtype=torch.float64).pow(4) + 1e-3
    return weight, importance


def _numpy_fwsvd(weight: np.ndarray, importance: np.ndarray, rank: int) -> np.ndarray:
    """The paper's recipe, written independently with numpy: svd(W·D), truncate, undo D."""
    d = np.sqrt(importance)
    u, s, vt = np.linalg.svd(weight * d[None, :], full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank] / d[None, :]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 3, 7])
def test_fwsvd_matches_independent_numpy_reference(shape, rank):
    weight, importance = _weight_and_importance(shape, seed=rank)
    first, second = low_rank_factors(weight, rank, importance)
    assert first.shape == (rank, shape[1]) and second.shape == (shape[0], rank)
    expected = _numpy_fwsvd(weight.numpy(), importance.numpy(), rank)
    np.testing.assert_allclose((second @ first).numpy(), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_plain_svd_is_eckart_young(shape):
    weight, _ = _weight_and_importance(shape, seed=1)
    singular_values = np.linalg.svd(weight.numpy(), compute_uv=False)
    for rank in range(1, min(shape) + 1):
        first, second = low_rank_factors(weight, rank)
        error = torch.linalg.norm(weight - second @ first).item()
        assert error == pytest.approx(np.sqrt((singular_values[rank:] ** 2).sum()), abs=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_fwsvd_minimizes_the_weighted_error(shape):
    """Eckart–Young on W·D: no rank-r matrix has a smaller weighted error; perturbations only add error."""
    weight, importance = _weight_and_importance(shape, seed=2)
    d = importance.sqrt()
    singular_values = np.linalg.svd((weight * d).numpy(), compute_uv=False)
    rank = 4
    first, second = low_rank_factors(weight, rank, importance)
    optimum = torch.linalg.norm((weight - second @ first) * d).item()
    assert optimum == pytest.approx(np.sqrt((singular_values[rank:] ** 2).sum()), abs=1e-9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        other_second = second + 0.01 * torch.randn(second.shape, generator=generator, dtype=second.dtype)
        other_first = first + 0.01 * torch.randn(first.shape, generator=generator, dtype=first.dtype)
        assert torch.linalg.norm((weight - other_second @ other_first) * d).item() >= optimum - 1e-12


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(5))
def test_each_method_wins_on_its_own_objective_at_every_rank(shape, seed):
    weight, importance = _weight_and_importance(shape, seed)
    svd = error_curves(decompose(weight), importance)
    fwsvd = error_curves(decompose(weight, importance), importance)
    assert (fwsvd.weighted <= svd.weighted + 1e-9).all()
    assert (svd.plain <= fwsvd.plain + 1e-9).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_importance", [False, True])
def test_closed_form_curves_equal_explicit_reconstruction_errors(shape, use_importance):
    weight, importance = _weight_and_importance(shape, seed=3)
    decomposition = decompose(weight, importance if use_importance else None)
    curves = error_curves(decomposition, importance)
    d = importance.sqrt()
    assert curves.plain[0].item() == pytest.approx(torch.linalg.norm(weight).item(), rel=1e-6)
    for rank in range(1, min(shape) + 1):
        residual = weight - decomposition.reconstruct(rank).double()
        assert curves.plain[rank].item() == pytest.approx(torch.linalg.norm(residual).item(), rel=1e-4, abs=1e-5)
        assert curves.weighted[rank].item() == pytest.approx(
            torch.linalg.norm(residual * d).item(), rel=1e-4, abs=1e-5)
    assert curves.plain[-1].item() == pytest.approx(0.0, abs=1e-4)


def test_full_rank_reproduces_the_weight():
    weight, importance = _weight_and_importance((10, 14), seed=4)
    for imp in (None, importance):
        first, second = low_rank_factors(weight, 10, imp)
        torch.testing.assert_close(second @ first, weight, rtol=1e-9, atol=1e-9)


def test_factors_keep_the_weight_dtype():
    weight = torch.randn(8, 6)
    first, second = low_rank_factors(weight, 3, torch.rand(6) + 0.1)
    assert first.dtype == second.dtype == torch.float32


def test_importance_is_scale_invariant():
    weight, importance = _weight_and_importance((9, 11), seed=5)
    small = low_rank_factors(weight, 3, importance)
    large = low_rank_factors(weight, 3, importance * 1e4)
    torch.testing.assert_close(small[1] @ small[0], large[1] @ large[0])


def test_zero_importances_are_floored_and_all_zero_means_plain_svd():
    weight, importance = _weight_and_importance((9, 11), seed=6)
    importance[[0, 5]] = 0.0
    first, second = low_rank_factors(weight, 3, importance)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    scale = importance_scale(importance, 11)
    assert scale.min().item() == pytest.approx(np.sqrt(importance.max().item() * IMPORTANCE_FLOOR))
    zero = low_rank_factors(weight, 3, torch.zeros(11, dtype=torch.float64))
    plain = low_rank_factors(weight, 3)
    torch.testing.assert_close(zero[1] @ zero[0], plain[1] @ plain[0])


@pytest.mark.parametrize(
    ("importance", "message"),
    [
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "NaN"),
        (torch.tensor([1.0, -0.5, 1.0, 1.0]), "non-negative"),
        (torch.ones(5), "one value per input feature \\(4\\)"),
        (torch.ones(4, 1), "1-D"),
    ],
)
def test_bad_importance_raises(importance, message):
    with pytest.raises(ValueError, match=message):
        low_rank_factors(torch.randn(3, 4), 2, importance)


@pytest.mark.parametrize("rank", [0, 4, -1, 2.5, True])
def test_rank_out_of_range_names_the_valid_range(rank):
    with pytest.raises(ValueError, match="from 1 to 3"):
        low_rank_factors(torch.randn(3, 4), rank)


def test_bad_weight_raises():
    with pytest.raises(ValueError, match="2-D"):
        low_rank_factors(torch.randn(3), 1)
    with pytest.raises(ValueError, match="NaN"):
        low_rank_factors(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_kept_factors_are_row_major_and_cut_into_fresh_tensors(shape):
    weight, importance = _weight_and_importance(shape, seed=4)
    decomposition = decompose(weight, importance)
    # Row-major storage is what makes a rank cut a copy of whole rows (the wide case goes through a transpose).
    assert decomposition.left.is_contiguous() and decomposition.right.is_contiguous()
    first, second = decomposition.factors(5)
    assert first.is_contiguous() and second.is_contiguous()
    assert first.data_ptr() != decomposition.right.data_ptr() and second.data_ptr() != decomposition.left.data_ptr()
    full_first, full_second = decomposition.factors(min(shape))
    assert full_first.data_ptr() != decomposition.right.data_ptr()
    assert full_second.data_ptr() != decomposition.left.data_ptr()
    torch.testing.assert_close(full_second @ full_first, weight)


def test_decomposition_tensors_round_trip_and_misfits_raise():
    weight, importance = _weight_and_importance((10, 14), seed=5)
    decomposition = decompose(weight, importance)
    again = Decomposition.from_tensors(decomposition.to_tensors(), "fwsvd")
    assert again.method == "fwsvd" and again.left_orthogonal
    torch.testing.assert_close(again.reconstruct(4), decomposition.reconstruct(4))
    tensors = decomposition.to_tensors()
    with pytest.raises(ValueError, match="missing"):
        Decomposition.from_tensors({"s": tensors["s"]}, "fwsvd")
    with pytest.raises(ValueError, match="method must be one of svd, fwsvd, asvd, whiten, kfac"):
        Decomposition.from_tensors(tensors, "pca")
    with pytest.raises(ValueError, match="do not fit"):
        Decomposition.from_tensors({**tensors, "right": tensors["right"][:3]}, "fwsvd")
