"""The content-addressed tensor cache: round trip, and bad files detected instead of used."""

from __future__ import annotations

import logging

import torch

from fwsvd.storage.tensor_cache import TensorCache, model_digest, tensor_digest
from fwsvd.storage.locations import key_digest


def test_round_trip_and_miss(tmp_path):
    cache = TensorCache(tmp_path, namespace="x")
    key = {"a": 1, "b": "two"}
    assert cache.get(key) is None
    tensors = {"u": torch.randn(3, 2), "s": torch.arange(4.0)}
    path = cache.put(key, tensors)
    assert path.parent == tmp_path / "x" and not list(path.parent.glob(".tmp-*"))
    loaded = cache.get(key)
    assert loaded is not None and set(loaded) == {"u", "s"}
    torch.testing.assert_close(loaded["u"], tensors["u"])
    assert cache.get({"a": 1, "b": "three"}) is None


def test_truncated_file_is_reported_not_used(tmp_path, caplog):
    cache = TensorCache(tmp_path)
    key = {"k": 1}
    path = cache.put(key, {"t": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:-50])
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "corrupt" in caplog.text


def test_flipped_byte_fails_the_checksum(tmp_path, caplog):
    cache = TensorCache(tmp_path)
    key = {"k": 2}
    path = cache.put(key, {"t": torch.zeros(100)})
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "checksum" in caplog.text


def test_file_for_another_key_is_not_used(tmp_path, caplog):
    cache = TensorCache(tmp_path)
    first, second = {"k": 1}, {"k": 2}
    cache.put(first, {"t": torch.ones(3)})
    cache.path_for(first).rename(cache.path_for(second))
    with caplog.at_level(logging.WARNING):
        assert cache.get(second) is None
    assert "another key" in caplog.text


def test_digests_track_content():
    a = torch.arange(6.0).reshape(2, 3)
    assert tensor_digest(a) == tensor_digest(a.clone())
    assert tensor_digest(a) != tensor_digest(a.reshape(3, 2))
    assert tensor_digest(a) != tensor_digest(a.double())
    b = a.clone()
    b[0, 0] += 1e-6
    assert tensor_digest(a) != tensor_digest(b)
    assert key_digest({"x": 1, "y": 2}) == key_digest({"y": 2, "x": 1})
    model = torch.nn.Linear(3, 2)
    before = model_digest(model)
    with torch.no_grad():
        model.bias.add_(1)
    assert model_digest(model) != before
