"""Decompositions kept per layer and method, so that a new set of ranks is a truncation, not a new SVD.

Kept in memory and in the disk cache, keyed by content: the method, a digest of the weight, a digest of what
weighs it (the importance for fwsvd; the token statistics it reads for asvd, whiten and kfac; nothing for plain
SVD) and the factorization's settings. A weight that changes gets a new key, so a stale
decomposition is never used; a cache file that fails its checks is recomputed (see fwsvd.storage.tensor_cache).

A store may serve several threads (the dashboard keeps one per process for every session): its memory is
bounded (least recently used entries go first; they are read back from the disk cache when asked for again),
and a key asked for by two threads at once is computed once while SVDs of different keys run in parallel.

Memory can also hold the factors in 16 bits (``factor_dtype``, ``FWSVD_STORE_DTYPE``): half the bytes, so a
1B-parameter model's decompositions (5 GB in float32) fit where they did not, at a relative error of a
rank-r weight of about 3e-4 in float16 (2e-3 in bfloat16), far below any truncation error worth choosing
(docs/BENCH_SCALE.md). The disk cache keeps float32, so the exact factors are never lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import torch
from torch import nn

from fwsvd.storage.tensor_cache import TensorCache, tensor_digest
from fwsvd.factorize.closed_form import Decomposition, ErrorCurves, decompose, error_curves, resolve_method
from fwsvd.factorize.layers import dense_weight
from fwsvd.factorize.weighted import ASVD_ALPHA, EIGENVALUE_FLOOR, IMPORTANCE_FLOOR, WHITEN_RIDGE, LayerStatistics

logger = logging.getLogger(__name__)

#: Bump when the stored decomposition's definition changes, so that old cache files are not reused.
FORMAT_VERSION = 3  # 2: factors kept as U·S and Vᵀ·D⁻¹; 3: any method's P⁻¹·U·Σ and Vᵀ·Q⁻¹, keyed by method
#: What a store keeps in memory by default, in bytes (decompositions and error curves); BERT-base's 72
#: decompositions are about 0.5 GB per method. The environment variable overrides it.
DEFAULT_MAX_BYTES = 2 << 30
MAX_BYTES_ENV = "FWSVD_STORE_MAX_BYTES"
#: The dtype a store keeps factors in, in memory (float32 when unset); the environment variable overrides it.
FACTOR_DTYPE_ENV = "FWSVD_STORE_DTYPE"
FACTOR_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_T = TypeVar("_T")


def default_max_bytes() -> int:
    """``FWSVD_STORE_MAX_BYTES`` (a number of bytes, ``2e9`` accepted) when set, else DEFAULT_MAX_BYTES."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_BYTES_ENV} must be a number of bytes, got {value!r}") from None
    if limit < 0:
        raise ValueError(f"{MAX_BYTES_ENV} must be >= 0, got {value!r}")
    return limit


def default_factor_dtype() -> torch.dtype | None:
    """``FWSVD_STORE_DTYPE`` (float32, float16 or bfloat16) when set, else None: factors kept as computed."""
    value = os.environ.get(FACTOR_DTYPE_ENV, "").strip()
    if not value:
        return None
    if value not in FACTOR_DTYPES:
        raise ValueError(f"{FACTOR_DTYPE_ENV} must be one of {', '.join(FACTOR_DTYPES)}, got {value!r}")
    return FACTOR_DTYPES[value]


def compact(decomposition: Decomposition, dtype: torch.dtype | None) -> Decomposition:
    """``decomposition`` with its factors held in ``dtype`` (None: as it is). The singular values stay as they
    are (curves and allocations read them), and factors that a narrower dtype cannot represent (float16 tops
    out at 65504, which a strongly whitened factor may pass) stay as they are rather than become infinite."""
    if dtype is None or decomposition.left.dtype == dtype:
        return decomposition
    left, right = decomposition.left.to(dtype), decomposition.right.to(dtype)
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        return decomposition
    return dataclasses.replace(decomposition, left=left, right=right)


class _DigestMemo:
    """Digests of tensors, remembered while the tensor lives and is not modified in place.

    Hashing every weight on each rank change would cost more than the truncation itself; a tensor's
    ``_version`` counter changes on any in-place write, so a remembered digest is never stale.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, int, str]] = {}
        self._lock = threading.Lock()

    def digest(self, tensor: torch.Tensor) -> str:
        key = id(tensor)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            ref, version, digest = entry
            if ref() is tensor and version == tensor._version:
                return digest
        version = tensor._version  # before hashing: a write meanwhile makes the next call hash again
        digest = tensor_digest(tensor)
        ref = weakref.ref(tensor, partial(_drop_entry, self._entries, key))
        with self._lock:
            self._entries[key] = (ref, version, digest)
        return digest


def _drop_entry(entries: dict[int, tuple[weakref.ref, int, str]], key: int, ref: weakref.ref) -> None:
    # The tensor died: forget its digest. Without the memo's lock (garbage collection may run while a thread
    # holds it); a dict pop is atomic.
    entry = entries.get(key)
    if entry is not None and entry[0] is ref:
        entries.pop(key, None)


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

    def put(self, key: dict[str, Any], tensors: dict[str, torch.Tensor],
            unchanged: Callable[[], bool] = lambda: True) -> None:
        """Write ``tensors`` in the background, unless ``unchanged()`` says they were edited in the meantime."""
        path = str(self._cache.path_for(key))
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwsvd-cache-writer")
            future = self._executor.submit(self._write, key, tensors, path, unchanged)
            self._pending[path] = future
            self._submitted = [done for done in self._submitted if not done.done()] + [future]
        future.add_done_callback(lambda done: self._forget(path, done))

    def _write(self, key: dict[str, Any], tensors: dict[str, torch.Tensor], path: str,
               unchanged: Callable[[], bool]) -> None:
        if not unchanged():
            return
        try:
            self._cache.put(key, tensors)
        except Exception as error:  # noqa: BLE001 - disk full, permissions, a serialisation error: cache only
            logger.warning("could not write the cache file %s (%s); the decomposition stays in memory only",
                           path, error)
            return
        if not unchanged():  # edited while being written: the file would serve the edit as the decomposition
            with contextlib.suppress(OSError):
                os.remove(path)

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
        with self._lock:
            submitted, self._submitted = self._submitted, []
        for future in submitted:
            future.result()


class DecompositionStore:
    """Decompositions of every method and their error curves, computed once per (method, weight, weighting).

    ``use_disk=False`` keeps everything in memory only (tests, throw-away experiments). ``max_bytes`` bounds
    what is kept in memory (default :func:`default_max_bytes`: ``FWSVD_STORE_MAX_BYTES``, else 2 GiB): past it
    the least recently used decompositions and curves are dropped, and read back from the disk cache (or, with
    ``use_disk=False``, recomputed) when asked for again. A model compressed from a dropped decomposition keeps
    its own reference, so ``set_ranks_`` still works on it. ``factor_dtype`` (default
    :func:`default_factor_dtype`: ``FWSVD_STORE_DTYPE``, else as computed) is the dtype the factors are held
    in, in memory: float16 halves what a model's decompositions take (see :func:`compact`). Error curves are
    computed from the factors held (plain SVD's from the singular values alone, which stay exact); the disk
    cache always keeps the factors as computed. Safe to share between threads.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, use_disk: bool = True,
                 max_bytes: int | None = None, factor_dtype: torch.dtype | None = None) -> None:
        self._disk = TensorCache(cache_dir, namespace="decompositions") if use_disk else None
        self._writer = _CacheWriter(self._disk) if self._disk is not None else None
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.factor_dtype = default_factor_dtype() if factor_dtype is None else factor_dtype
        if self.factor_dtype is not None and self.factor_dtype not in FACTOR_DTYPES.values():
            raise ValueError(f"factor_dtype must be one of torch.{', torch.'.join(FACTOR_DTYPES)}, got {factor_dtype}")
        # One LRU over decompositions ("decomposition", name) and curves ("curves", names): value and bytes.
        self._memory: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self._memory_bytes = 0
        self._in_flight: dict[tuple[Any, ...], Future] = {}
        self._lock = threading.Lock()
        self._digests = _DigestMemo()
        self.computed = 0  # SVDs actually run by this store: lets callers and tests see cache behaviour

    @property
    def memory_bytes(self) -> int:
        """Bytes of the decompositions and curves held in memory now (at most ``max_bytes``)."""
        return self._memory_bytes

    def _memoized(self, key: tuple[Any, ...], compute: Callable[[], _T], size: Callable[[_T], int],
                  usable: Callable[[_T], bool] = lambda value: True) -> _T:
        """The value of ``key`` from memory, else from ``compute()`` — run by one thread while any other
        asking for the same key waits for its result, outside the lock so that other keys go on meanwhile.
        A remembered value that is no longer ``usable`` is forgotten and computed again."""
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None and not usable(entry[0]):
                del self._memory[key]
                self._memory_bytes -= entry[1]
                entry = None
            if entry is not None:
                self._memory.move_to_end(key)
                return entry[0]
            pending = self._in_flight.get(key)
            owner = pending is None
            if owner:
                pending = self._in_flight[key] = Future()
        if not owner:
            return pending.result()
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                del self._in_flight[key]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._in_flight[key]
            self._remember(key, value, size(value))
        pending.set_result(value)
        return value

    def _remember(self, key: tuple[Any, ...], value: Any, nbytes: int) -> None:
        """Keep ``value``, then drop the least recently used entries until within max_bytes (called locked)."""
        self._memory[key] = (value, nbytes)
        self._memory_bytes += nbytes
        while self._memory_bytes > self.max_bytes and self._memory:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._memory_bytes -= dropped

    def _weighting_digest(self, method: str, importance: torch.Tensor | None,
                          statistics: LayerStatistics | None) -> str | None:
        """A digest of what weighs ``method``'s decomposition — only the parts it reads, so that statistics
        gathered again with output gradients still find whiten's decomposition. Missing inputs digest to None
        and are refused by the decomposition itself, with a message saying how to get them."""
        if method == "svd":
            return None
        if method == "fwsvd":
            parts = [importance]
        elif statistics is None:
            return None
        elif method == "asvd":
            parts = [statistics.input_abs_sum, statistics.tokens]
        elif method == "whiten":
            parts = [statistics.input_moment]
        else:
            parts = [statistics.input_moment, statistics.output_moment]
        digests = [part if part is None or isinstance(part, int) else self._digests.digest(part) for part in parts]
        return None if None in digests else ":".join(map(str, digests))

    def get(self, module: nn.Module, importance: torch.Tensor | None = None, *, method: str | None = None,
            statistics: LayerStatistics | None = None) -> Decomposition:
        """The decomposition of a Linear / Conv1D layer's weight by ``method`` (default: "fwsvd" given an
        ``importance``, else "svd"); asvd, whiten and kfac read the layer's token ``statistics``."""
        method = resolve_method(method, importance)
        weight_digest = self._digests.digest(module.weight)
        weighting_digest = self._weighting_digest(method, importance, statistics)
        key = {"kind": "decomposition", "version": FORMAT_VERSION, "method": method, "weight": weight_digest,
               "weighting": weighting_digest, **METHOD_SETTINGS}
        name = f"{method}/{weight_digest}/{weighting_digest}"
        def compute() -> Decomposition:
            return compact(self._load_or_decompose(module, method, importance, statistics, key, name),
                           self.factor_dtype)

        # Layers' factors view the decompositions held here (fwsvd.surgery.lowrank); one edited in place by
        # hand is read again from the disk cache, or recomputed.
        return self._memoized(("decomposition", name), compute, _decomposition_bytes,
                              usable=lambda decomposition: decomposition.unchanged)

    def _load_or_decompose(self, module: nn.Module, method: str, importance: torch.Tensor | None,
                           statistics: LayerStatistics | None, key: dict[str, Any], name: str) -> Decomposition:
        decomposition = None
        if self._disk is not None:
            _CacheWriter.wait_for(str(self._disk.path_for(key)))
            tensors = self._disk.get(key)
            if tensors is not None:
                try:
                    decomposition = Decomposition.from_tensors(tensors, method)
                except ValueError as error:  # passed the checksum but is not a decomposition: recompute
                    logger.warning("cached decomposition for %s is unusable (%s); it will be recomputed", name, error)
        if decomposition is None:
            decomposition = decompose(dense_weight(module), importance, method=method, statistics=statistics)
            with self._lock:
                self.computed += 1
            if self._writer is not None:
                self._writer.put(key, decomposition.to_tensors(), lambda: decomposition.unchanged)
        return decomposition

    def curves(self, module: nn.Module, importance: torch.Tensor | None = None,
               weighting: torch.Tensor | None = None, *, method: str | None = None,
               statistics: LayerStatistics | None = None) -> ErrorCurves:
        """Error curves at every rank of one layer's decomposition (``method``, ``importance`` and
        ``statistics`` as for :meth:`get`); Fisher-weighted errors use the importance ``weighting`` (None:
        plain errors only), whatever the method, so that methods compare in one unit."""
        method = resolve_method(method, importance)
        name = (method, self._digests.digest(module.weight), self._weighting_digest(method, importance, statistics),
                None if weighting is None else self._digests.digest(weighting))

        def compute() -> ErrorCurves:
            return error_curves(self.get(module, importance, method=method, statistics=statistics), weighting)

        return self._memoized(("curves", *name), compute, _curves_bytes)

    def flush(self) -> None:
        """Wait until every decomposition this store computed is written to the disk cache."""
        if self._writer is not None:
            self._writer.flush()

    def clear_memory(self) -> None:
        """Forget what is held in memory (the disk cache stays)."""
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0


#: The settings of the methods' weightings: a change makes new keys, so no file made under others is reused.
METHOD_SETTINGS = {"floor": IMPORTANCE_FLOOR, "asvd_alpha": ASVD_ALPHA, "whiten_ridge": WHITEN_RIDGE,
             "eigenvalue_floor": EIGENVALUE_FLOOR}


def _decomposition_bytes(decomposition: Decomposition) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in decomposition.to_tensors().values())


def factor_bytes(decomposition: Decomposition, dtype: torch.dtype | None = None, rank: int | None = None) -> int:
    """Bytes of a decomposition held with its factors in ``dtype`` (default: theirs) and cut at ``rank``
    (default: every component); the singular values stay as they are."""
    rank = decomposition.full_rank if rank is None else min(int(rank), decomposition.full_rank)
    size = (torch.empty((), dtype=dtype).element_size() if dtype is not None
            else decomposition.left.element_size())
    out_features, in_features = decomposition.shape
    return rank * (out_features + in_features) * size + decomposition.s.numel() * decomposition.s.element_size()


def _curves_bytes(curves: ErrorCurves) -> int:
    return sum(int(getattr(array, "nbytes", 0)) for array in (curves.plain, curves.weighted) if array is not None)
