"""fwsvd: Fisher-weighted SVD compression of fine-tuned transformer language models."""

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
    "load_or_estimate_fisher",
    "low_rank_factors",
    "ranks_for_param_fraction",
    "resolve_ranks",
]
