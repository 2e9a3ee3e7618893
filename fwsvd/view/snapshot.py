"""Analysis snapshots: a model's per-layer analyses saved with what it takes to draw them, readable
without torch.

Opening the dashboard on a model it has already analysed should not wait for torch, transformers and the
model to load (about 10 s on two cores) before anything is drawn. A snapshot holds the analyses of every
target layer (numpy arrays), the block stacks and a few facts about the task and the Fisher they came
from, in one ``.npz`` file under ``<cache>/snapshots/``. It is keyed by the *files* of the model directory
(name, size, modification time), which can be checked without loading them: a rebuilt or edited model
gets a new key. A missing, unreadable or mismatched file reads as no snapshot, with a warning; the caller
then computes the analyses from the model and saves a fresh one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fwsvd.view.analysis import LayerAnalysis, analyses_from_arrays, analyses_to_arrays
from fwsvd.storage.atomic import atomic_path
from fwsvd.storage.locations import default_cache_dir, key_digest

logger = logging.getLogger(__name__)

#: Bump when what a snapshot holds changes, so old files are recomputed.
SNAPSHOT_FORMAT = 2  # 2: the rank explorer's info carries the whole model's parameter count
_META = "meta"


@dataclass(frozen=True)
class AnalysisSnapshot:
    """Per-layer analyses (numpy arrays), the model's block stacks and facts about the task and Fisher."""

    analyses: dict[str, LayerAnalysis]
    blocks: list[str]
    info: dict[str, Any]


def files_identity(path: str | os.PathLike[str]) -> list[list[Any]] | None:
    """[relative name, size, modification time in ns] of a file, or of every file under a directory (sorted);
    None when ``path`` is neither (a hub id, say), so that no snapshot is keyed by it."""
    root = Path(path).expanduser()
    if root.is_file():
        stat = root.stat()
        return [[root.name, stat.st_size, stat.st_mtime_ns]]
    if not root.is_dir():
        return None
    identity = []
    for file in sorted(root.rglob("*")):
        if file.is_file():
            stat = file.stat()
            identity.append([file.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
    return identity


def snapshot_path(key: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "snapshots" / f"{key_digest({**key, 'snapshot_format': SNAPSHOT_FORMAT})}.npz"


def save_snapshot(key: Mapping[str, Any], analyses: Mapping[str, LayerAnalysis], blocks: Sequence[str],
                  info: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Write a snapshot under ``key`` (JSON-serialisable) atomically; returns its path. ``info`` must be JSON."""
    arrays = analyses_to_arrays(analyses)
    layers = [[analysis.name, analysis.out_features, analysis.in_features] for analysis in analyses.values()]
    meta = {"key": _canonical(key), "format": SNAPSHOT_FORMAT, "layers": layers, "blocks": list(blocks),
            "info": dict(info)}
    arrays[_META] = np.array(json.dumps(meta))
    path = snapshot_path(key, cache_dir)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)
    return path


def load_snapshot(key: Mapping[str, Any], cache_dir: str | Path | None = None) -> AnalysisSnapshot | None:
    """The snapshot saved under ``key``, or None when there is none or it cannot be used (a warning says why)."""
    path = snapshot_path(key, cache_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}  # reading checks each member's CRC
        meta = json.loads(str(arrays.pop(_META)))
        if meta.get("key") != _canonical(key) or meta.get("format") != SNAPSHOT_FORMAT:
            logger.warning("snapshot %s was written for another model or format; it will be recomputed", path)
            return None
        return AnalysisSnapshot(analyses_from_arrays(arrays, meta["layers"]), list(meta["blocks"]),
                                dict(meta["info"]))
    except Exception as error:  # a truncated zip, garbled JSON, a missing array: all mean "recompute"
        logger.warning("snapshot %s is unreadable (%s: %s); it will be recomputed", path,
                       type(error).__name__, error)
        return None


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)
