"""fwsvd: Fisher-weighted SVD compression of fine-tuned transformer language models.

Every name below is imported on first use, so ``import fwsvd`` (or a torch-free submodule such as
``fwsvd.analysis``) does not load torch and transformers: the dashboard draws its first page before they
are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CompressionReport": "fwsvd.compress",
    "LayerReport": "fwsvd.compress",
    "analyze_layers": "fwsvd.compress",
    "compress_": "fwsvd.compress",
    "compressed_copy": "fwsvd.compress",
    "densify_": "fwsvd.compress",
    "ranks_for_param_fraction": "fwsvd.compress",
    "resolve_ranks": "fwsvd.compress",
    "set_ranks_": "fwsvd.compress",
    "ErrorCurves": "fwsvd.analysis",
    "LayerAnalysis": "fwsvd.analysis",
    "break_even_rank": "fwsvd.rank_config",
    "Decomposition": "fwsvd.factorize",
    "decompose": "fwsvd.factorize",
    "error_curve": "fwsvd.factorize",
    "error_curves": "fwsvd.factorize",
    "low_rank_factors": "fwsvd.factorize",
    "FisherResult": "fwsvd.fisher",
    "estimate_fisher": "fwsvd.fisher",
    "load_or_estimate_fisher": "fwsvd.fisher",
    "LowRankLinear": "fwsvd.lowrank",
    "DecompositionStore": "fwsvd.store",
    "dense_weight": "fwsvd.targets",
    "find_blocks": "fwsvd.targets",
    "find_targets": "fwsvd.targets",
    "load_compressed": "fwsvd.persistence",
    "read_compressed_info": "fwsvd.persistence",
    "save_compressed": "fwsvd.persistence",
    "load_any_model": "fwsvd.pipeline",
    "task_fisher": "fwsvd.pipeline",
    "SweepResult": "fwsvd.sweep",
    "SweepRun": "fwsvd.sweep",
    "run_sweep": "fwsvd.sweep",
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
