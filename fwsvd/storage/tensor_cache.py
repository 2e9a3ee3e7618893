"""A content-addressed disk cache of tensors under ``cache/``.

Entries are safetensors files named by a digest of everything that determines their content (for a
decomposition: the weight, the importance and the method; for Fisher: the model's weights, the data, the
sample count, the seed ...). Each file also records its key and a checksum of its tensors, so a file that
is truncated, corrupted or written for another key is detected, reported and recomputed — never used.
Writes go to a temporary file in the same folder and are renamed into place, so a crash never leaves a
half-written entry under the real name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors.torch import load_file, save_file
from torch import nn

from fwsvd.storage.atomic import atomic_path
from fwsvd.storage.locations import default_cache_dir, key_digest

logger = logging.getLogger(__name__)

_KEY_FIELD = "fwsvd_key"
_CHECKSUM_FIELD = "fwsvd_checksum"


def _new_digest() -> "xxhash.xxh3_128":
    # XXH3-128: a non-cryptographic 128-bit hash at memory speed (about 20x blake2b here). Keys only have
    # to tell contents apart, with no adversary, and hashing every weight is on the decomposition's path.
    return xxhash.xxh3_128()


def _update_with_tensor(digest: "xxhash.xxh3_128", tensor: torch.Tensor) -> None:
    tensor = tensor.detach().contiguous().cpu()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    # Hash the raw bytes (through uint8) so every dtype, bfloat16 included, hashes without conversion;
    # the numpy view is passed as a buffer, so nothing is copied.
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


def tensor_digest(tensor: torch.Tensor) -> str:
    """A hex digest of a tensor's dtype, shape and exact values."""
    digest = _new_digest()
    _update_with_tensor(digest, tensor)
    return digest.hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hex digest of named tensors (order-independent: names are sorted)."""
    digest = _new_digest()
    for name in sorted(tensors):
        digest.update(name.encode())
        _update_with_tensor(digest, tensors[name])
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """A hex digest of every parameter and buffer of a model: changes when any weight changes."""
    return tensors_digest(dict(model.state_dict()))


class TensorCache:
    """Named groups of tensors on disk, one safetensors file per key."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, namespace: str = "") -> None:
        root = Path(directory) if directory is not None else default_cache_dir()
        self.directory = root / namespace if namespace else root

    def path_for(self, key: Mapping[str, Any]) -> Path:
        return self.directory / f"{key_digest(key)}.safetensors"

    def get(self, key: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key``, or None when absent or unusable (a warning says why)."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
            metadata = _read_metadata(path)
        except Exception as error:  # safetensors raises several types for truncated/garbled files
            logger.warning("cache file %s is corrupt (%s); it will be recomputed", path, error)
            return None
        if metadata.get(_KEY_FIELD) != json.dumps(key, sort_keys=True):
            logger.warning("cache file %s was written for another key; it will be recomputed", path)
            return None
        if metadata.get(_CHECKSUM_FIELD) != tensors_digest(tensors):
            logger.warning("cache file %s fails its checksum; it will be recomputed", path)
            return None
        return tensors

    def put(self, key: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
        """Store ``tensors`` under ``key`` atomically; returns the file's path."""
        path = self.path_for(key)
        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        metadata = {
            _KEY_FIELD: json.dumps(key, sort_keys=True),
            _CHECKSUM_FIELD: tensors_digest(contiguous),
        }
        with atomic_path(path) as temporary:
            save_file(contiguous, str(temporary), metadata=metadata)
        return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
