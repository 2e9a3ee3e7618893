"""compress_: the one place where a model's Linear layers are swapped for low-rank pairs.

One tree walk finds the targets (fwsvd.surgery.targets), a CompressionConfig (fwsvd.config) says which of them
to compress and at which ranks, each layer's decomposition comes from a DecompositionStore (computed once,
then truncated for any rank) and the layer is replaced by a LowRankLinear. The returned report carries the
configuration with every rank pinned and, per layer, the shape, rank, parameter counts, the reconstruction
errors and a flag where the rank is at or above break-even. A layer whose rank is at or past break-even stays
dense unless the configuration's ``keep_dense_past_break_even`` is False: the report lists it in ``kept_dense``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from fwsvd.config import CompressionConfig, Ranks, as_config
from fwsvd.view.analysis import ErrorCurves, LayerAnalysis
from fwsvd.factorize.closed_form import Decomposition
from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.factorize.layers import dense_weight, source_kind_of
from fwsvd.surgery.modules import count_parameters, replace_module
from fwsvd.surgery.module_copy import copy_sharing
from fwsvd.view.rank_config import break_even_rank
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.inputs import Fisher, Statistics, check_inputs, importances_of, layer_inputs, statistics_of
from fwsvd.surgery.targets import TargetFilter, find_targets, target_shapes

_default_store: DecompositionStore | None = None


@dataclass(frozen=True)
class _Origin:
    """Where a LowRankLinear built by compress_ came from: enough to cut it again at another rank."""

    decomposition: Decomposition
    curves: ErrorCurves
    method: str
    #: the dense layer it replaced, while it lives (a compressed copy's dense model keeps it), with the version
    #: of its weight then: set_ranks_ copies it back rather than multiply full-rank factors (seconds on 1B)
    dense: weakref.ref | None = None
    dense_version: int = -1

    def dense_layer(self) -> nn.Module | None:
        """A copy of the dense layer this was cut from, if it still lives unchanged since, else None."""
        layer = None if self.dense is None else self.dense()
        if layer is None or dense_weight(layer)._version != self.dense_version:
            return None
        return copy.deepcopy(layer)


# Kept beside the layers rather than on them: a copy, a pickle or a saved model carries no decomposition
# (hundreds of MB), and an entry goes when its layer does.
_origins: "weakref.WeakKeyDictionary[LowRankLinear, _Origin]" = weakref.WeakKeyDictionary()
# The dense layers set_ranks_ made of LowRankLinears set at or past break-even, so that it can cut them again.
_dense_origins: "weakref.WeakKeyDictionary[nn.Module, _Origin]" = weakref.WeakKeyDictionary()


def default_store() -> DecompositionStore:
    """The process-wide store used when none is passed: decompositions persist across compress_ calls."""
    global _default_store
    if _default_store is None:
        _default_store = DecompositionStore()
    return _default_store


def resolve_ranks(targets: Mapping[str, nn.Module], ranks: CompressionConfig | Ranks) -> dict[str, int]:
    """{layer name: rank} that ``ranks`` (as for :func:`compress_`) gives the layers of ``targets``
    ({name: layer}, e.g. :func:`find_targets`); checked against each layer's 1..min(out, in)."""
    shapes = target_shapes(targets)
    return as_config(ranks, shapes).resolve_ranks(shapes)


def ranks_for_param_fraction(targets: Mapping[str, nn.Module], fraction: float) -> dict[str, int]:
    """Per-layer ranks that keep about ``fraction`` of each target layer's weight parameters."""
    return CompressionConfig(param_budget=fraction).resolve_ranks(target_shapes(targets))


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
    """What compress_ did, layer by layer, and the model's parameter counts before and after. ``config``
    reproduces it: the configuration used, every rank pinned (None after set_ranks_ on mixed methods)."""

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    config: CompressionConfig | None = None
    #: {layer: the rank asked} of the layers left dense because that rank is at or past break-even
    kept_dense: dict[str, int] = field(default_factory=dict)

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
            "kept_dense": dict(self.kept_dense),
            "config": None if self.config is None else self.config.to_dict(),
        }

    def to_dataframe(self):  # -> pandas.DataFrame; imported lazily to keep import time low
        import pandas as pd

        return pd.DataFrame([layer.to_dict() for layer in self.layers])


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
    config: CompressionConfig | Ranks,
    *,
    method: str | None = None,
    fisher: Fisher | None = None,
    statistics: Statistics | None = None,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> CompressionReport:
    """Replace target Linear / Conv1D layers of ``model``, in place, by rank-r LowRankLinear pairs.

    ``config``: a :class:`~fwsvd.config.CompressionConfig` (method, target_modules, rank rule, rank_pattern), or
    shorthand ranks with ``method`` (default "fwsvd") and ``filter_fn(name, module)`` narrowing the targets:
    an int (that rank everywhere), a float in (0, 1] (the rank ratio) or ``{layer name: rank}`` (only those
    layers). Targets are the Linear / Conv1D layers inside the transformer blocks. Methods (see
    :mod:`fwsvd.factorize.weighted`): "svd"; "fwsvd" needs ``fisher`` ({layer name: (in_features,) importance},
    or a FisherResult); "asvd", "whiten" and "kfac" need token ``statistics`` ({layer name: LayerStatistics}, or
    a FisherResult from ``task_fisher(..., statistics=True)``; by default those of a FisherResult ``fisher``).
    For any method a given ``fisher`` adds Fisher-weighted errors to the report, and is what an allocation
    with ``allocation="fisher"`` weighs by. Decompositions come from ``store`` (default: a process-wide store
    over the disk cache), so a second call with other ranks runs no SVD.
    """
    targets, config = _targets_and_config(model, config, method, filter_fn)
    return _compress_targets(model, targets, config, fisher=fisher, statistics=statistics, store=store)


def _targets_and_config(model: nn.Module, config: CompressionConfig | Ranks, method: str | None,
                        filter_fn: TargetFilter | None) -> tuple[dict[str, nn.Module], CompressionConfig]:
    """The model's targets and the checked configuration for them (the shorthand ranks made one)."""
    if filter_fn is not None and isinstance(config, CompressionConfig):
        raise ValueError("filter_fn goes with shorthand ranks (an int, a float or a dict); a CompressionConfig "
                         "chooses its layers with target_modules")
    targets = find_targets(model, filter_fn)
    if not targets:
        raise ValueError(
            "no layers to compress: every Linear in the transformer blocks is already low-rank or excluded "
            "by filter_fn; compress the dense model instead"
        )
    shapes = target_shapes(targets)
    config = as_config(config, shapes, method=method)
    config.check(shapes)
    return targets, config


def _compress_targets(model: nn.Module, targets: Mapping[str, nn.Module], config: CompressionConfig, *,
                      fisher: Fisher | None, statistics: Statistics | None,
                      store: DecompositionStore | None) -> CompressionReport:
    """compress_ for targets already found ({qualified name in ``model``: layer}) and a checked config."""
    method = config.method
    shapes = target_shapes(targets)
    selected = [name for name in targets if config.selects(name)]
    fisher, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    check_inputs(method, selected, fisher, statistics)
    store = store if store is not None else default_store()
    # An allocation chooses the ranks from every selected layer's error curves, so all are decomposed first;
    # otherwise only the layers to factorize are.
    plan = None if config.allocation is not None else config.plan_ranks(shapes)
    fetched: dict[str, tuple[Decomposition, ErrorCurves]] = {}
    for name in selected if plan is None else plan[0]:
        module = targets[name]
        inputs = layer_inputs(method, name, fisher, statistics)
        weighting = fisher[name] if fisher is not None else None
        fetched[name] = store.get(module, **inputs), store.curves(module, weighting=weighting, **inputs)
    analyses = None
    if config.allocation is not None:
        analyses = {name: LayerAnalysis(name, *shapes[name], {method: decomposition.s}, {method: curves})
                    for name, (decomposition, curves) in fetched.items()}
    layer_ranks, kept_dense = plan if plan is not None else config.plan_ranks(shapes, analyses)
    if not layer_ranks:
        raise ValueError(f"every selected layer's rank is at or past break-even (e.g. {next(iter(kept_dense))!r} at "
                         f"rank {next(iter(kept_dense.values()))}), where factors hold at least as many weights as the "
                         "layer, so all would stay dense: lower the ranks, or set keep_dense_past_break_even=False "
                         "(CLI: --factorize-past-break-even) to factorize them anyway")
    report = CompressionReport(method=method, model_params_before=count_parameters(model),
                               config=config.with_ranks(layer_ranks), kept_dense=kept_dense)
    for name, rank in layer_ranks.items():
        module = targets[name]
        decomposition, curves = fetched[name]
        report.layers.append(_layer_report(name, method, module, rank, curves))
        weight = dense_weight(module)
        low_rank = LowRankLinear.from_decomposition(decomposition, rank, module.bias, source_kind_of(module),
                                                    device=weight.device, dtype=weight.dtype, views=True)
        _origins[low_rank] = _Origin(decomposition, curves, method, weakref.ref(module), dense_weight(module)._version)
        replace_module(model, name, low_rank)
    report.model_params_after = count_parameters(model)
    return report


def set_ranks_(model: nn.Module, config: CompressionConfig | Ranks) -> CompressionReport:
    """Change the ranks of a model compressed by :func:`compress_` / :func:`compressed_copy`, in place.

    Each LowRankLinear whose rank changes is cut again from the decomposition it was built from: no SVD, and
    no copy of the rest of the model — the fast way to try rank after rank (the new factors are views of the
    decomposition where its dtype is the model's, see :mod:`fwsvd.surgery.lowrank`). ``config`` as for compress_, applied
    to the layers compress_ built (its method must be theirs); layers it does not set keep their rank (a dict
    may name only some layers; an allocation cannot make a layer dense again). A layer set at or past
    break-even becomes dense (its full-rank factors multiplied back) unless ``keep_dense_past_break_even`` is
    False, and a later call may factorize it again. The changed layers get new parameters, so training done on
    them since compression is discarded, and an optimizer built before must be rebuilt. Works on layers
    compressed in this process (a model loaded from disk keeps no decompositions).
    """
    low_rank = {name: module for name, module in model.named_modules() if isinstance(module, LowRankLinear)}
    if not low_rank:
        raise ValueError("the model has no low-rank layers: compress it first (compress_ or compressed_copy)")
    unknown_origin = [name for name, layer in low_rank.items() if layer not in _origins]
    if unknown_origin:
        raise ValueError(
            f"{len(unknown_origin)} low-rank layer(s), e.g. {unknown_origin[0]!r}, were not built by compress_ in "
            "this process (a model loaded from disk, or a copy of a compressed model); set ranks by compressing "
            "the dense model"
        )
    # The layers an earlier call made dense at break-even: still this compression's, cut again on request.
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, LowRankLinear) or module in _dense_origins}
    origins = {name: _origins[layer] if isinstance(layer, LowRankLinear) else _dense_origins[layer]
               for name, layer in layers.items()}
    edited = [name for name, origin in origins.items() if not origin.decomposition.unchanged]
    if edited:
        raise ValueError(
            f"the decomposition behind {edited[0]!r} was changed in place (its factors edited by hand without "
            "LowRankLinear.own_factors_() first), so it can no longer be cut at other ranks; compress the dense "
            "model again"
        )
    methods = sorted({origin.method for origin in origins.values()})
    if isinstance(config, CompressionConfig) and methods != [config.method]:
        raise ValueError(f"config.method is {config.method!r}, but the low-rank layers were built with "
                         f"{', '.join(methods)}: set_ranks_ re-cuts the same decompositions; compress the dense "
                         "model to change the method")
    shapes = {name: tuple(dense_weight(layer).shape) if not isinstance(layer, LowRankLinear)
              else (layer.out_features, layer.in_features) for name, layer in layers.items()}
    config = as_config(config, shapes, method=None if isinstance(config, CompressionConfig) else methods[0])
    analyses = None
    if config.allocation is not None:
        analyses = {name: LayerAnalysis(name, *shapes[name], {config.method: origin.decomposition.s},
                                        {config.method: origin.curves}) for name, origin in origins.items()}
    requested, kept_dense = config.plan_ranks(shapes, analyses)
    # As compress_ reports it: the model before any compression, the dense layers in place of the pairs.
    before = count_parameters(model)
    report = CompressionReport(method=methods[0] if len(methods) == 1 else "mixed")
    for name, layer in layers.items():
        origin, (out_features, in_features) = origins[name], shapes[name]
        bias = _bias_of(layer)
        before += out_features * in_features + (0 if bias is None else bias.numel()) - sum(
            parameter.numel() for parameter in layer.parameters())
        dense = name in kept_dense or (name not in requested and not isinstance(layer, LowRankLinear))
        if dense:
            if isinstance(layer, LowRankLinear):
                dense_layer = origin.dense_layer()
                if dense_layer is None:
                    layer.set_factors_(*origin.decomposition.factors(min(out_features, in_features)))
                    dense_layer = layer.to_original()
                _dense_origins[dense_layer] = origin
                replace_module(model, name, dense_layer)
            report.kept_dense[name] = kept_dense.get(name, min(out_features, in_features))
            continue
        rank = requested.get(name, getattr(layer, "rank", None))
        if not isinstance(layer, LowRankLinear):
            weight = dense_weight(layer)
            rebuilt = LowRankLinear.from_decomposition(origin.decomposition, rank, bias, source_kind_of(layer),
                                                       device=weight.device, dtype=weight.dtype, views=True)
            _origins[rebuilt] = origin
            replace_module(model, name, rebuilt)
        elif rank != layer.rank:
            layer.set_factors_from_(origin.decomposition, rank)
        report.layers.append(_report_for(name, origin.method, out_features, in_features,
                                         0 if bias is None else bias.numel(), rank, origin.curves))
    report.model_params_before = before
    report.model_params_after = count_parameters(model)
    if len(methods) == 1 and report.layers:
        report.config = config.with_ranks(report.ranks)
    return report


def _bias_of(layer: nn.Module):  # -> torch.Tensor | None
    return layer.second.bias if isinstance(layer, LowRankLinear) else layer.bias


def compressed_copy(
    model: nn.Module,
    config: CompressionConfig | Ranks,
    *,
    method: str | None = None,
    fisher: Fisher | None = None,
    statistics: Statistics | None = None,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """A compressed copy of ``model`` (arguments as for :func:`compress_`); the original is left untouched.

    The layers to compress are about to be replaced, so the copy shares them instead of copying their weights
    first (for BERT-base, 85M of 110M parameters): this keeps a rank change fast and light. The shared
    layers sit at the same names in the copy, so the targets found here serve both models; any an allocation
    leaves dense are copied afterwards, so the two models never share a layer.
    """
    targets, config = _targets_and_config(model, config, method, filter_fn)
    shared = {name: module for name, module in targets.items() if config.selects(name)}
    duplicate = copy_sharing(model, shared.values())
    report = _compress_targets(duplicate, targets, config, fisher=fisher, statistics=statistics, store=store)
    for name in shared.keys() - report.ranks.keys():
        replace_module(duplicate, name, copy.deepcopy(shared[name]))
    return duplicate, report


def densify_(model: nn.Module) -> nn.Module:
    """Replace every LowRankLinear by the dense layer of the type it replaced (factors multiplied back),
    so that the model loads with plain ``from_pretrained``. In place; returns the model."""
    low_rank_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LowRankLinear)]
    for name, module in low_rank_layers:
        replace_module(model, name, module.to_original())
    return model
