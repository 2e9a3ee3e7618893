"""Decompositions kept per layer and method, so that a new set of ranks is a truncation, not a new SVD.

Kept in memory and in the disk cache, keyed by content: a digest of the weight, a digest of the importance
(None for plain SVD) and the factorization's settings. A weight that changes gets a new key, so a stale
decomposition is never used; a cache file that fails its checks is recomputed (see fwsvd.cache).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import torch
from torch import nn

from fwsvd.cache import TensorCache, tensor_digest
from fwsvd.factorize import IMPORTANCE_FLOOR, Decomposition, ErrorCurves, decompose, error_curves
from fwsvd.targets import dense_weight

logger = logging.getLogger(__name__)

#: Bump when the stored decomposition's definition changes, so that old cache files are not reused.
FORMAT_VERSION = 2  # 2: factors kept as U·S and Vᵀ·D⁻¹


class _DigestMemo:
    """Digests of tensors, remembered while the tensor lives and is not modified in place.

    Hashing every weight on each rank change would cost more than the truncation itself; a tensor's
    ``_version`` counter changes on any in-place write, so a remembered digest is never stale.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, int, str]] = {}

    def digest(self, tensor: torch.Tensor) -> str:
        entry = self._entries.get(id(tensor))
        if entry is not None:
            ref, version, digest = entry
            if ref() is tensor and version == tensor._version:
                return digest
        digest = tensor_digest(tensor)
        self._entries[id(tensor)] = (weakref.ref(tensor), tensor._version, digest)
        return digest


class DecompositionStore:
    """SVD / FWSVD decompositions and their error curves, computed once per (weight, importance).

    ``use_disk=False`` keeps everything in memory only (tests, throw-away experiments).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, use_disk: bool = True) -> None:
        self._disk = TensorCache(cache_dir, namespace="decompositions") if use_disk else None
        self._decompositions: dict[str, Decomposition] = {}
        self._curves: dict[tuple[str, str | None, str | None], ErrorCurves] = {}
        self._digests = _DigestMemo()
        self.computed = 0  # SVDs actually run by this store: lets callers and tests see cache behaviour

    def _key(self, weight_digest: str, importance_digest: str | None) -> dict[str, Any]:
        return {
            "kind": "decomposition",
            "version": FORMAT_VERSION,
            "weight": weight_digest,
            "importance": importance_digest,
            "floor": IMPORTANCE_FLOOR,
        }

    def get(self, module: nn.Module, importance: torch.Tensor | None = None) -> Decomposition:
        """The decomposition of a Linear / Conv1D layer's weight: SVD, or FWSVD given an importance."""
        weight_digest = self._digests.digest(module.weight)
        importance_digest = None if importance is None else self._digests.digest(importance)
        key = self._key(weight_digest, importance_digest)
        name = f"{weight_digest}/{importance_digest}"
        decomposition = self._decompositions.get(name)
        if decomposition is not None:
            return decomposition
        if self._disk is not None:
            tensors = self._disk.get(key)
            if tensors is not None:
                try:
                    decomposition = Decomposition.from_tensors(tensors)
                except ValueError as error:  # passed the checksum but is not a decomposition: recompute
                    logger.warning("cached decomposition for %s is unusable (%s); it will be recomputed", name, error)
        if decomposition is None:
            decomposition = decompose(dense_weight(module), importance)
            self.computed += 1
            if self._disk is not None:
                self._disk.put(key, decomposition.to_tensors())
        self._decompositions[name] = decomposition
        return decomposition

    def curves(self, module: nn.Module, importance: torch.Tensor | None,
               weighting: torch.Tensor | None) -> ErrorCurves:
        """Error curves at every rank of one layer's decomposition (SVD when ``importance`` is None, else
        FWSVD); Fisher-weighted errors use the importance ``weighting`` (None: plain errors only)."""
        decomposition = self.get(module, importance)
        name = (self._digests.digest(module.weight),
                None if importance is None else self._digests.digest(importance),
                None if weighting is None else self._digests.digest(weighting))
        curves = self._curves.get(name)
        if curves is None:
            curves = error_curves(decomposition, weighting)
            self._curves[name] = curves
        return curves

    def clear_memory(self) -> None:
        """Forget what is held in memory (the disk cache stays)."""
        self._decompositions.clear()
        self._curves.clear()
