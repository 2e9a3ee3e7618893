"""One lock per shared object: a model or tokenizer that several threads (dashboard sessions) use at once.

The dashboard loads a model and its tokenizer once per process and hands the same objects to every session.
Reading them is safe; what is not is changing their state for a while and changing it back — Fisher
estimation (eval mode, ``requires_grad`` off, hooks on the target layers), evaluation (eval mode, then the
previous mode), copying a model while another thread has it in such a state — or calling a fast tokenizer
from two threads (its Rust state raises "Already borrowed"). The library takes the object's lock around each
of these, so callers need not:

- :func:`fwsvd.fisher.estimate.estimate_fisher` holds the model's lock for its whole pass;
- :func:`fwsvd.evaluate.evaluation.predict` (hence ``evaluate_model``) holds it while it runs the model;
- :func:`fwsvd.surgery.module_copy.copy_sharing` (hence ``compressed_copy``) holds it while it copies;
- tokenisation (:mod:`fwsvd.data.batches`) holds the tokenizer's lock.

A compressed copy is another object with its own lock, so copies are evaluated in parallel; only work on the
same object waits. The locks are re-entrant (a locked pass may call another that takes the same lock), keyed
by object identity (never by ``==``) and forgotten when their object is garbage-collected.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

_locks: dict[int, tuple[weakref.ref, threading.RLock]] = {}
_registry_lock = threading.Lock()


def lock_of(obj: Any) -> threading.RLock:
    """The re-entrant lock of ``obj`` (created on first use; one per live object)."""
    key = id(obj)
    with _registry_lock:
        entry = _locks.get(key)
        if entry is not None and entry[0]() is obj:
            return entry[1]
        try:
            ref = weakref.ref(obj, partial(_forget, key))
        except TypeError as error:
            raise TypeError(f"{type(obj).__name__} objects cannot be locked: they do not support weak "
                            "references") from error
        lock = threading.RLock()
        _locks[key] = (ref, lock)
        return lock


@contextlib.contextmanager
def exclusive(obj: Any) -> Iterator[None]:
    """Hold ``obj``'s lock for the block: no other thread runs an ``exclusive(obj)`` block meanwhile.
    ``obj`` None locks nothing (an optional tokenizer, say)."""
    if obj is None:
        yield
        return
    with lock_of(obj):
        yield


def _forget(key: int, ref: weakref.ref) -> None:
    # Called when the object dies, possibly while another thread holds _registry_lock (or this one does,
    # when garbage collection runs inside lock_of): so without that lock; a dict pop is atomic. The id cannot
    # have been reused yet (the object's memory is freed after its weak-reference callbacks).
    entry = _locks.get(key)
    if entry is not None and entry[0] is ref:
        _locks.pop(key, None)
