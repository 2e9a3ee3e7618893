"""The heavy libraries (torch, transformers, datasets, and the fwsvd modules built on them), imported once per
process under one lock before a page uses them.

Several sessions opening pages at once run their scripts in parallel threads, and transformers' lazy module is
not safe for concurrent first imports: ``from transformers import AutoConfig`` in eight threads of a fresh
interpreter fails with ImportError most of the time. So every page that needs these calls
:func:`ensure_heavy_imports` first; the rank explorer's first draw from its snapshot needs none of them and
stays torch-free. A failed import is not remembered: the next run tries again.
"""

from __future__ import annotations

import importlib
import logging
import threading

logger = logging.getLogger(__name__)

#: Imported in this order: the libraries, then every fwsvd module the pages import that uses them (so that the
#: names they take from transformers are resolved here, under the lock).
HEAVY_MODULES = (
    "torch", "transformers", "datasets",
    "fwsvd.data.files", "fwsvd.data.labels", "fwsvd.data.language_modeling", "fwsvd.data.sources", "fwsvd.data.tasks",
    "fwsvd.evaluate.metrics", "fwsvd.io.models", "fwsvd.io.demo", "fwsvd.io.demos", "fwsvd.io.explorer", "fwsvd.io.headline",
    "fwsvd.io.archive", "fwsvd.surgery.architecture", "fwsvd.surgery.targets", "fwsvd.surgery.analyze",
    "fwsvd.fisher.task", "fwsvd.fisher.summary", "fwsvd.evaluate.methods", "fwsvd.evaluate.latency",
    "fwsvd.io.persistence", "fwsvd",
)

_lock = threading.Lock()
_done = False


def ensure_heavy_imports() -> None:
    """Import :data:`HEAVY_MODULES` once per process, one thread at a time; return at once when done.

    Raises ImportError (with a message for the page) when an import fails; the next call tries again."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        try:
            for name in HEAVY_MODULES:
                importlib.import_module(name)
        except Exception as error:
            logger.exception("importing the heavy libraries failed")
            raise ImportError(f"loading the model libraries failed ({type(error).__name__}: {error}); they are "
                              "loaded again on the next run: reload the page") from error
        _done = True
