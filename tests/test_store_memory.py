"""What a DecompositionStore holds in memory: factors in 16 bits on request (half the bytes, a rank-r weight
within the measured error), the exact factors kept on disk, and rank changes that never run an SVD again —
however little the store may keep in memory."""

from __future__ import annotations

import pytest
import torch

from conftest import random_batch, tiny_bert
from fwsvd import DecompositionStore, compress_, compressed_copy, find_targets, set_ranks_
from fwsvd.factorize.closed_form import Decomposition, decompose
from fwsvd.factorize.store import FACTOR_DTYPE_ENV, compact, default_factor_dtype, factor_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: module.second.weight @ module.first.weight
                for name, module in model.named_modules() if hasattr(module, "first")}


def test_float16_factors_take_half_the_memory_and_stay_within_their_rounding():
    model = tiny_bert()
    exact, half = DecompositionStore(use_disk=False), DecompositionStore(use_disk=False, factor_dtype=torch.float16)
    reference, _ = compressed_copy(model, 5, method="svd", store=exact)
    compressed, _ = compressed_copy(model, 5, method="svd", store=half)
    for module in find_targets(model).values():
        decomposition = half.get(module, method="svd")
        assert decomposition.left.dtype == decomposition.right.dtype == torch.float16
        assert decomposition.s.dtype == torch.float32
        torch.testing.assert_close(decomposition.s, exact.get(module, method="svd").s, rtol=0, atol=0)
    assert half.memory_bytes < 0.56 * exact.memory_bytes
    # The low-rank layers take the model's dtype again; their weights differ by float16 rounding only.
    expected = _weights(reference)
    for name, weight in _weights(compressed).items():
        assert weight.dtype == torch.float32
        error = float((weight - expected[name]).norm() / expected[name].norm())
        assert 0 < error < 1e-3, name
    # Same error curves: plain SVD's read the singular values alone.
    layer = next(iter(find_targets(model).values()))
    torch.testing.assert_close(half.curves(layer, method="svd").plain, exact.curves(layer, method="svd").plain)


def test_the_disk_keeps_the_exact_factors(tmp_path):
    model = tiny_bert()
    layer = next(iter(find_targets(model).values()))
    writer = DecompositionStore(tmp_path, factor_dtype=torch.bfloat16)
    assert writer.get(layer, method="svd").left.dtype == torch.bfloat16
    writer.flush()
    reader = DecompositionStore(tmp_path)
    decomposition = reader.get(layer, method="svd")
    assert reader.computed == 0 and decomposition.left.dtype == torch.float32
    torch.testing.assert_close(decomposition.left, decompose(layer.weight.detach()).left)


@pytest.mark.parametrize("factor_dtype", [None, torch.float16])
def test_rank_changes_run_no_svd_even_when_memory_keeps_nothing(tmp_path, factor_dtype):
    """A store that keeps nothing in memory spills to the disk cache: new ranks, a new copy, no new SVD."""
    model = tiny_bert()
    store = DecompositionStore(tmp_path, max_bytes=0, factor_dtype=factor_dtype)
    compressed, _ = compressed_copy(model, 4, method="svd", store=store)
    store.flush()
    layers = len(find_targets(model))
    assert store.computed == layers and store.memory_bytes == 0
    for rank in (2, 7, 1, 16):
        set_ranks_(compressed, rank)
        again, report = compressed_copy(model, rank, method="svd", store=store)
        assert set(report.ranks.values()) == {rank}
    in_place = tiny_bert()
    compress_(in_place, 3, method="svd", store=store)
    set_ranks_(in_place, 9)
    assert store.computed == layers  # every one of these read the disk cache or the model's own decomposition
    batch = {key: value for key, value in random_batch().items() if key != "labels"}
    with torch.no_grad():
        logits = in_place(**batch).logits
    assert torch.isfinite(logits).all()


def test_factors_a_narrow_dtype_cannot_hold_stay_as_they_are():
    decomposition = decompose(torch.randn(6, 8, dtype=torch.float32) * 1e5)
    assert decomposition.left.abs().max() > torch.finfo(torch.float16).max
    assert compact(decomposition, torch.float16) is decomposition
    assert compact(decomposition, torch.bfloat16).left.dtype == torch.bfloat16
    assert compact(decomposition, None) is decomposition


def test_factor_bytes_counts_the_factors_kept():
    decomposition = decompose(torch.randn(6, 8))
    assert factor_bytes(decomposition) == 6 * 14 * 4 + 6 * 4
    assert factor_bytes(decomposition, torch.float16, rank=3) == 3 * 14 * 2 + 6 * 4


def test_the_factor_dtype_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(FACTOR_DTYPE_ENV, "float16")
    assert default_factor_dtype() is torch.float16 and DecompositionStore(use_disk=False).factor_dtype is torch.float16
    monkeypatch.setenv(FACTOR_DTYPE_ENV, "")
    assert DecompositionStore(use_disk=False).factor_dtype is None
    monkeypatch.setenv(FACTOR_DTYPE_ENV, "half")
    with pytest.raises(ValueError, match="FWSVD_STORE_DTYPE must be one of float32, float16, bfloat16, got 'half'"):
        DecompositionStore(use_disk=False)


def test_singular_values_read_from_a_cache_file_do_not_keep_the_file_alive():
    # analyses keep s long after the factors are gone; a tensor loaded from a file may map all of the file
    tensors = decompose(torch.randn(12, 8)).to_tensors()
    loaded = Decomposition.from_tensors(tensors, "svd")
    assert torch.equal(loaded.s, tensors["s"])
    assert loaded.s.untyped_storage().data_ptr() != tensors["s"].untyped_storage().data_ptr()
