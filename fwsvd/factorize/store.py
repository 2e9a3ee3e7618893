"""Decompositions kept per layer and method, so that a new set of ranks is a truncation, not a new SVD.

Kept in memory and in the disk cache, keyed by content: a digest of the weight, a digest of the importance
(None for plain SVD) and the factorization's settings. A weight that changes gets a new key, so a stale
decomposition is never used; a cache file that fails its checks is recomputed (see fwsvd.storage.tensor_cache).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from fwsvd.storage.tensor_cache import TensorCache, tensor_digest
from fwsvd.factorize.closed_form import IMPORTANCE_FLOOR, Decomposition, ErrorCurves, decompose, error_curves
from fwsvd.factorize.layers import dense_weight

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


class _CacheWriter:
    """Writes decompositions to the disk cache on one background thread, so that writing one overlaps the
    SVD of the next (a BERT-base's 72 decompositions are about 0.5 GB per method).

    The files being written are known process-wide: any store about to read one waits for its write first.
    A failed write loses only the cache entry, so it is logged, never raised. Pending writes finish before
    the interpreter exits (concurrent.futures joins its threads), and every write is atomic (TensorCache).
    """

    _pending: dict[str, Future] = {}
    _lock = threading.Lock()

    def __init__(self, cache: TensorCache) -> None:
        self._cache = cache
        self._executor: ThreadPoolExecutor | None = None
        self._submitted: list[Future] = []

    def put(self, key: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        path = str(self._cache.path_for(key))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwsvd-cache-writer")
        with self._lock:
            future = self._executor.submit(self._write, key, tensors, path)
            self._pending[path] = future
        future.add_done_callback(lambda done: self._forget(path, done))
        self._submitted.append(future)

    def _write(self, key: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> None:
        try:
            self._cache.put(key, tensors)
        except Exception as error:  # noqa: BLE001 - disk full, permissions, a serialisation error: cache only
            logger.warning("could not write the cache file %s (%s); the decomposition stays in memory only",
                           path, error)

    @classmethod
    def _forget(cls, path: str, done: Future) -> None:
        with cls._lock:
            if cls._pending.get(path) is done:
                del cls._pending[path]

    @classmethod
    def wait_for(cls, path: str) -> None:
        """Return once no write of ``path`` is pending (in any store of this process)."""
        with cls._lock:
            future = cls._pending.get(path)
        if future is not None:
            future.result()

    def flush(self) -> None:
        for future in self._submitted:
            future.result()
        self._submitted.clear()


class DecompositionStore:
    """SVD / FWSVD decompositions and their error curves, computed once per (weight, importance).

    ``use_disk=False`` keeps everything in memory only (tests, throw-away experiments).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, use_disk: bool = True) -> None:
        self._disk = TensorCache(cache_dir, namespace="decompositions") if use_disk else None
        self._writer = _CacheWriter(self._disk) if self._disk is not None else None
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
            _CacheWriter.wait_for(str(self._disk.path_for(key)))
            tensors = self._disk.get(key)
            if tensors is not None:
                try:
                    decomposition = Decomposition.from_tensors(tensors)
                except ValueError as error:  # passed the checksum but is not a decomposition: recompute
                    logger.warning("cached decomposition for %s is unusable (%s); it will be recomputed", name, error)
        if decomposition is None:
            decomposition = decompose(dense_weight(module), importance)
            self.computed += 1
            if self._writer is not None:
                self._writer.put(key, decomposition.to_tensors())
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

    def flush(self) -> None:
        """Wait until every decomposition this store computed is written to the disk cache."""
        if self._writer is not None:
            self._writer.flush()

    def clear_memory(self) -> None:
        """Forget what is held in memory (the disk cache stays)."""
        self._decompositions.clear()
        self._curves.clear()
