"""fwsvd: Fisher-weighted SVD compression of fine-tuned transformer language models.

Every name below is imported on first use, so ``import fwsvd`` (or a torch-free submodule such as
``fwsvd.view.analysis``) does not load torch and transformers: the dashboard draws its first page before they
are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CompressionConfig": "fwsvd.config",
    "FisherConfig": "fwsvd.config",
    "read_rank_document": "fwsvd.config",
    "CompressionReport": "fwsvd.surgery.compress",
    "LayerReport": "fwsvd.surgery.compress",
    "analyze_layers": "fwsvd.surgery.analyze",
    "compress_": "fwsvd.surgery.compress",
    "compressed_copy": "fwsvd.surgery.compress",
    "densify_": "fwsvd.surgery.compress",
    "ranks_for_param_fraction": "fwsvd.surgery.compress",
    "resolve_ranks": "fwsvd.surgery.compress",
    "set_ranks_": "fwsvd.surgery.compress",
    "Allocation": "fwsvd.view.allocation",
    "allocate_ranks": "fwsvd.view.allocation",
    "METHODS": "fwsvd.view.analysis",
    "ErrorCurves": "fwsvd.view.analysis",
    "LayerAnalysis": "fwsvd.view.analysis",
    "break_even_rank": "fwsvd.view.rank_config",
    "Decomposition": "fwsvd.factorize.closed_form",
    "decompose": "fwsvd.factorize.closed_form",
    "error_curve": "fwsvd.factorize.closed_form",
    "error_curves": "fwsvd.factorize.closed_form",
    "low_rank_factors": "fwsvd.factorize.closed_form",
    "FisherResult": "fwsvd.fisher.estimate",
    "estimate_fisher": "fwsvd.fisher.estimate",
    "load_or_estimate_fisher": "fwsvd.fisher.estimate",
    "LowRankLinear": "fwsvd.surgery.lowrank",
    "DecompositionStore": "fwsvd.factorize.store",
    "LayerStatistics": "fwsvd.factorize.weighted",
    "dense_weight": "fwsvd.factorize.layers",
    "find_blocks": "fwsvd.surgery.targets",
    "find_targets": "fwsvd.surgery.targets",
    "load_compressed": "fwsvd.io.persistence",
    "read_compressed_info": "fwsvd.io.persistence",
    "save_compressed": "fwsvd.io.persistence",
    "load_any_model": "fwsvd.io.models",
    "load_for_task": "fwsvd.io.models",
    "match_labels": "fwsvd.data.labels",
    "task_fisher": "fwsvd.fisher.task",
    "SweepResult": "fwsvd.evaluate.sweep",
    "SweepRun": "fwsvd.evaluate.sweep",
    "run_sweep": "fwsvd.evaluate.sweep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fwsvd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
