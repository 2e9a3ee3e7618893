"""fwsvd: Fisher-weighted SVD compression of fine-tuned transformer language models."""

__version__ = "0.1.0"

import importlib
from typing import Any

from fwsvd.compress import (
    CompressionReport,
    LayerAnalysis,
    LayerReport,
    analyze_layers,
    break_even_rank,
    compress_,
    compressed_copy,
    densify_,
    ranks_for_param_fraction,
    resolve_ranks,
    set_ranks_,
)
from fwsvd.factorize import Decomposition, ErrorCurves, decompose, error_curve, error_curves, low_rank_factors
from fwsvd.fisher import FisherResult, estimate_fisher, load_or_estimate_fisher
from fwsvd.lowrank import LowRankLinear
from fwsvd.store import DecompositionStore
from fwsvd.targets import dense_weight, find_blocks, find_targets

__all__ = [
    "CompressionReport",
    "Decomposition",
    "DecompositionStore",
    "ErrorCurves",
    "FisherResult",
    "LayerAnalysis",
    "LayerReport",
    "LowRankLinear",
    "SweepResult",
    "SweepRun",
    "analyze_layers",
    "break_even_rank",
    "compress_",
    "compressed_copy",
    "decompose",
    "dense_weight",
    "densify_",
    "error_curve",
    "error_curves",
    "estimate_fisher",
    "find_blocks",
    "find_targets",
    "load_any_model",
    "load_compressed",
    "load_or_estimate_fisher",
    "low_rank_factors",
    "ranks_for_param_fraction",
    "read_compressed_info",
    "resolve_ranks",
    "set_ranks_",
    "run_sweep",
    "save_compressed",
    "task_fisher",
]

# The task-level API pulls in datasets and the tasks layer; it is imported on first use so that
# `import fwsvd` for compression alone stays light.
_LAZY_EXPORTS = {
    "load_compressed": "fwsvd.persistence",
    "read_compressed_info": "fwsvd.persistence",
    "save_compressed": "fwsvd.persistence",
    "load_any_model": "fwsvd.pipeline",
    "task_fisher": "fwsvd.pipeline",
    "SweepResult": "fwsvd.sweep",
    "SweepRun": "fwsvd.sweep",
    "run_sweep": "fwsvd.sweep",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'fwsvd' has no attribute {name!r}")
