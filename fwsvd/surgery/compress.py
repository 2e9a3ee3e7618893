"""compress_: the one place where a model's Linear layers are swapped for low-rank pairs.

One tree walk finds the targets (fwsvd.surgery.targets), resolves the requested ranks, takes each layer's
decomposition from a DecompositionStore (computed once, then truncated for any rank) and replaces the layer
by a LowRankLinear. The returned report carries, per layer, the shape, rank, parameter counts, the
reconstruction errors and a flag where the rank is at or above break-even.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fwsvd.view import rank_config
from fwsvd.view.analysis import METHODS, ErrorCurves, Method
from fwsvd.factorize.closed_form import Decomposition
from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.factorize.layers import dense_weight, source_kind_of
from fwsvd.surgery.modules import count_parameters, replace_module
from fwsvd.surgery.module_copy import copy_sharing
from fwsvd.view.rank_config import Ranks, break_even_rank, ranks_for_shapes
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.targets import TargetFilter, find_targets, target_shapes

Fisher = Mapping[str, torch.Tensor]

_default_store: DecompositionStore | None = None


@dataclass(frozen=True)
class _Origin:
    """Where a LowRankLinear built by compress_ came from: enough to cut it again at another rank."""

    decomposition: Decomposition
    curves: ErrorCurves
    method: str


# Kept beside the layers rather than on them: a copy, a pickle or a saved model carries no decomposition
# (hundreds of MB), and an entry goes when its layer does.
_origins: "weakref.WeakKeyDictionary[LowRankLinear, _Origin]" = weakref.WeakKeyDictionary()


def default_store() -> DecompositionStore:
    """The process-wide store used when none is passed: decompositions persist across compress_ calls."""
    global _default_store
    if _default_store is None:
        _default_store = DecompositionStore()
    return _default_store


def resolve_ranks(targets: Mapping[str, nn.Module], ranks: Ranks) -> dict[str, int]:
    """{layer name: rank} for the layers to compress, checked against each layer's 1..min(out, in)."""
    return ranks_for_shapes(target_shapes(targets), ranks)


def ranks_for_param_fraction(targets: Mapping[str, nn.Module], fraction: float) -> dict[str, int]:
    """Per-layer ranks that keep about ``fraction`` of each target layer's weight parameters."""
    return rank_config.ranks_for_param_fraction(target_shapes(targets), fraction)


@dataclass(frozen=True)
class LayerReport:
    """One compressed layer: its shape, rank, parameters and reconstruction errors (Frobenius norms)."""

    name: str
    method: str
    out_features: int
    in_features: int
    rank: int
    full_rank: int
    params_before: int
    params_after: int
    error: float
    relative_error: float
    weighted_error: float | None
    relative_weighted_error: float | None

    @property
    def break_even_rank(self) -> float:
        return break_even_rank(self.out_features, self.in_features)

    @property
    def above_break_even(self) -> bool:
        """True where the factorization does not save parameters (rank ≥ m·n/(m+n))."""
        return self.rank >= self.break_even_rank

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["break_even_rank"] = self.break_even_rank
        row["above_break_even"] = self.above_break_even
        return row


@dataclass
class CompressionReport:
    """What compress_ did, layer by layer, and the model's parameter counts before and after."""

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0

    @property
    def ranks(self) -> dict[str, int]:
        return {layer.name: layer.rank for layer in self.layers}

    @property
    def params_before(self) -> int:
        """Parameters of the compressed layers before compression."""
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    @property
    def above_break_even(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.above_break_even]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_dataframe(self):  # -> pandas.DataFrame; imported lazily to keep import time low
        import pandas as pd

        return pd.DataFrame([layer.to_dict() for layer in self.layers])


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method  # type: ignore[return-value]


def check_fisher(fisher: Fisher | None, names: list[str], method: str) -> None:
    if method == "fwsvd" and fisher is None:
        raise ValueError("method='fwsvd' needs Fisher importances: pass fisher=estimate_fisher(model, batches)")
    if fisher is None:
        return
    missing = [name for name in names if name not in fisher]
    if missing:
        raise ValueError(
            f"fisher has no importance for {len(missing)} layer(s) to compress, e.g. {missing[0]!r}; "
            "estimate it for the same model and targets"
        )


def _layer_report(name: str, method: str, module: nn.Module, rank: int, curves: ErrorCurves) -> LayerReport:
    out_features, in_features = dense_weight(module).shape
    bias = 0 if module.bias is None else module.bias.numel()
    return _report_for(name, method, out_features, in_features, bias, rank, curves)


def _report_for(name: str, method: str, out_features: int, in_features: int, bias: int, rank: int,
                curves: ErrorCurves) -> LayerReport:
    # Read the two entries at this rank only: relative_plain() would divide the whole curve, per layer.
    error = float(curves.plain[rank])
    weighted = None if curves.weighted is None else float(curves.weighted[rank])
    return LayerReport(
        name=name,
        method=method,
        out_features=out_features,
        in_features=in_features,
        rank=rank,
        full_rank=min(out_features, in_features),
        params_before=out_features * in_features + bias,
        params_after=rank * (out_features + in_features) + bias,
        error=error,
        relative_error=error / max(curves.weight_norm, 1e-30),
        weighted_error=weighted,
        relative_weighted_error=None if weighted is None else weighted / max(curves.weighted_norm, 1e-30),
    )


def compress_(
    model: nn.Module,
    ranks: Ranks,
    *,
    method: str = "fwsvd",
    fisher: Fisher | None = None,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> CompressionReport:
    """Replace the target Linear / Conv1D layers of ``model``, in place, by rank-r LowRankLinear pairs.

    Targets: every Linear / Conv1D inside the transformer blocks (narrowed by ``filter_fn(name, module)``).
    ``method``: "fwsvd" (needs ``fisher``: {layer name: (in_features,) importance}) or "svd"; with "svd",
    a given ``fisher`` is used only to report Fisher-weighted errors. Decompositions come from ``store``
    (default: a process-wide store over the disk cache), so a second call with other ranks runs no SVD.
    """
    return _compress_targets(model, find_targets(model, filter_fn), ranks, method=method, fisher=fisher,
                             store=store)


def _compress_targets(model: nn.Module, targets: Mapping[str, nn.Module], ranks: Ranks, *, method: str,
                      fisher: Fisher | None, store: DecompositionStore | None) -> CompressionReport:
    """compress_ for targets already found ({qualified name in ``model``: layer})."""
    method = check_method(method)
    if not targets:
        raise ValueError(
            "no layers to compress: every Linear in the transformer blocks is already low-rank or excluded "
            "by filter_fn; compress the dense model instead"
        )
    layer_ranks = resolve_ranks(targets, ranks)
    check_fisher(fisher, list(layer_ranks), method)
    store = store if store is not None else default_store()
    report = CompressionReport(method=method, model_params_before=count_parameters(model))
    for name, rank in layer_ranks.items():
        module = targets[name]
        importance = fisher[name] if fisher is not None else None
        decomposition_importance = importance if method == "fwsvd" else None
        decomposition = store.get(module, decomposition_importance)
        curves = store.curves(module, decomposition_importance, importance)
        report.layers.append(_layer_report(name, method, module, rank, curves))
        weight = dense_weight(module)
        low_rank = LowRankLinear.from_decomposition(decomposition, rank, module.bias, source_kind_of(module),
                                                    device=weight.device, dtype=weight.dtype)
        _origins[low_rank] = _Origin(decomposition, curves, method)
        replace_module(model, name, low_rank)
    report.model_params_after = count_parameters(model)
    return report


def set_ranks_(model: nn.Module, ranks: Ranks) -> CompressionReport:
    """Change the ranks of a model compressed by :func:`compress_` / :func:`compressed_copy`, in place.

    Each LowRankLinear whose rank changes is cut again from the decomposition it was built from: no SVD, and
    no copy of the rest of the model — the fast way to try rank after rank. ``ranks`` as for compress_
    (a dict may name only some layers; the others keep their rank). The changed layers get new parameters,
    so training done on them since compression is discarded, and an optimizer built before must be rebuilt.
    Works on layers compressed in this process (a model loaded from disk keeps no decompositions).
    """
    layers = {name: module for name, module in model.named_modules() if isinstance(module, LowRankLinear)}
    if not layers:
        raise ValueError("the model has no low-rank layers: compress it first (compress_ or compressed_copy)")
    unknown_origin = [name for name, layer in layers.items() if layer not in _origins]
    if unknown_origin:
        raise ValueError(
            f"{len(unknown_origin)} low-rank layer(s), e.g. {unknown_origin[0]!r}, were not built by compress_ in "
            "this process (a model loaded from disk, or a copy of a compressed model); set ranks by compressing "
            "the dense model"
        )
    shapes = {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}
    requested = ranks_for_shapes(shapes, ranks)
    methods = {_origins[layer].method for layer in layers.values()}
    # As compress_ reports it: the model before any compression, the dense layers in place of the pairs.
    low_rank_params = sum(parameter.numel() for layer in layers.values() for parameter in layer.parameters())
    report = CompressionReport(method=methods.pop() if len(methods) == 1 else "mixed",
                               model_params_before=count_parameters(model) - low_rank_params)
    for name, layer in layers.items():
        origin = _origins[layer]
        rank = requested.get(name, layer.rank)
        if rank != layer.rank:
            first, second = origin.decomposition.factors(rank)
            layer.set_factors_(first, second)
        bias = 0 if layer.second.bias is None else layer.second.bias.numel()
        report.layers.append(_report_for(name, origin.method, layer.out_features, layer.in_features, bias, rank,
                                         origin.curves))
    report.model_params_before += report.params_before
    report.model_params_after = count_parameters(model)
    return report


def compressed_copy(
    model: nn.Module,
    ranks: Ranks,
    *,
    method: str = "fwsvd",
    fisher: Fisher | None = None,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """A compressed copy of ``model`` (arguments as for :func:`compress_`); the original is left untouched.

    The target layers are about to be replaced, so the copy shares them instead of copying their weights
    first (for BERT-base, 85M of 110M parameters): this keeps a rank change fast and light. The shared
    layers sit at the same names in the copy, so the targets found here serve both models.
    """
    targets = find_targets(model, filter_fn)
    duplicate = copy_sharing(model, targets.values())
    report = _compress_targets(duplicate, targets, ranks, method=method, fisher=fisher, store=store)
    return duplicate, report


def densify_(model: nn.Module) -> nn.Module:
    """Replace every LowRankLinear by the dense layer of the type it replaced (factors multiplied back),
    so that the model loads with plain ``from_pretrained``. In place; returns the model."""
    low_rank_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LowRankLinear)]
    for name, module in low_rank_layers:
        replace_module(model, name, module.to_original())
    return model
