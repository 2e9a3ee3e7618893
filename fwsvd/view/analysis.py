"""Per-layer analyses (singular values and error curves at every rank) and the tables drawn from them.

A :class:`LayerAnalysis` holds, for one target layer and each method, the singular values and the
reconstruction error at every rank r = 0..k; :func:`fwsvd.analyze_layers` computes them from a model. The
tables here only index those curves at chosen ranks, so redrawing the rank explorer is a lookup.

No torch here: the arrays may be torch tensors (from a model) or numpy arrays (from an analysis snapshot,
see :mod:`fwsvd.view.snapshot`), and the dashboard draws its first page from a snapshot before torch is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fwsvd.view.rank_config import break_even_rank
from fwsvd.view.sizes import SizeAt

Method = Literal["svd", "fwsvd", "asvd", "whiten", "kfac"]
#: Every closed-form method (see :mod:`fwsvd.factorize.weighted` for what each minimises).
METHODS: tuple[Method, ...] = ("svd", "fwsvd", "asvd", "whiten", "kfac")
#: The paper's comparison: what the dashboard analyses and the sweep runs unless asked for more.
DEFAULT_METHODS: tuple[Method, ...] = ("svd", "fwsvd")
#: Display names.
METHOD_LABELS: dict[str, str] = {"svd": "SVD", "fwsvd": "FWSVD", "asvd": "ASVD", "whiten": "Whitened SVD",
                                 "kfac": "K-FAC SVD"}
#: Methods weighted by token statistics of the layers' inputs (and, for kfac, output gradients), which the
#: Fisher pass gathers only when asked: ``task_fisher(..., statistics=True)``.
STATISTICS_METHODS: tuple[Method, ...] = ("asvd", "whiten", "kfac")


def check_method(method: str) -> Method:
    """``method`` if it is one of :data:`METHODS`, else a ValueError naming them."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method  # type: ignore[return-value]


def needs_statistics(method: str) -> bool:
    """True for a method weighted by token statistics (:data:`STATISTICS_METHODS`); ValueError for an
    unknown method."""
    return check_method(method) in STATISTICS_METHODS


@dataclass(frozen=True)
class ErrorCurves:
    """Reconstruction errors at every rank r = 0..k (index r) of one layer, for one method.

    ``plain`` is ``‖W − Ŵ_r‖``, ``weighted`` is ``‖(W − Ŵ_r)·D‖`` with D = diag(sqrt(Fisher importance))
    (None without Fisher); one-dimensional torch tensors or numpy arrays. Whatever objective a method
    minimises, both curves are in these two units, so that every method is compared on the same scale.
    """

    plain: Any
    weighted: Any | None
    weight_norm: float
    weighted_norm: float | None

    def relative_plain(self) -> Any:
        return self.plain / max(self.weight_norm, 1e-30)

    def relative_weighted(self) -> Any | None:
        if self.weighted is None or self.weighted_norm is None:
            return None
        return self.weighted / max(self.weighted_norm, 1e-30)


@dataclass(frozen=True)
class LayerAnalysis:
    """Everything the rank explorer plots for one layer, for every rank at once."""

    name: str
    out_features: int
    in_features: int
    singular_values: dict[str, Any]  # method -> (k,) singular values of the matrix it factors (W, W·D, P·W·Q)
    curves: dict[str, ErrorCurves]  # method -> errors at ranks 0..k

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def full_rank(self) -> int:
        return min(self.out_features, self.in_features)

    @property
    def break_even_rank(self) -> float:
        return break_even_rank(self.out_features, self.in_features)

    def params_at(self, rank: int, bias: bool = True) -> int:
        return rank * (self.out_features + self.in_features) + (self.out_features if bias else 0)

    def relative_objective(self, method: str) -> np.ndarray:
        """``method``'s own objective at every rank r = 0..k, relative: ``‖P(W − Ŵ_r)Q‖ / ‖PWQ‖`` for the
        matrix it factors (W for svd, W·D for fwsvd, P·W·Q for the others, floors and ridge included).

        By Eckart–Young it is the tail of that matrix's singular values, ``sqrt(Σ_{i≥r} s_i² / Σ_i s_i²)``, so
        it is read off the spectrum; it equals the plain curve for svd and the Fisher-weighted one for fwsvd.
        """
        squares = np.square(_to_numpy(self.singular_values[check_method(method)]).astype(np.float64))
        # Summing from the small end keeps the tail accurate (as fwsvd.factorize.closed_form does).
        tails = np.concatenate([np.cumsum(squares[::-1])[::-1], [0.0]])
        return np.sqrt(tails / tails[0]) if tails[0] > 0 else np.zeros_like(tails)


def shapes_of(analyses: Mapping[str, LayerAnalysis]) -> dict[str, tuple[int, int]]:
    """{layer name: (out_features, in_features)}: what :mod:`fwsvd.ranks` needs to set and check ranks."""
    return {name: analysis.shape for name, analysis in analyses.items()}


def block_of(name: str, blocks: Sequence[str]) -> str:
    """The transformer block a layer lives in (``bert.encoder.layer.3``), from :func:`find_blocks`'s stacks."""
    for stack in blocks:
        if name.startswith(stack + "."):
            index = name[len(stack) + 1:].split(".", 1)[0]
            return f"{stack}.{index}"
    raise ValueError(f"layer {name!r} is not inside any transformer block stack ({', '.join(blocks)})")


def layers_by_block(frame: pd.DataFrame) -> dict[str, list[str]]:
    """{block: [layer names]} in model order, from :func:`architecture_frame` or :func:`layer_frame`."""
    groups: dict[str, list[str]] = {}
    for block, layer in zip(frame["block"], frame["layer"]):
        groups.setdefault(block, []).append(layer)
    return groups


def layer_frame(analyses: Mapping[str, LayerAnalysis], ranks: Mapping[str, int],
                blocks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per layer at ``ranks``: weight parameters kept / removed, break-even flag, and for each
    method the relative reconstruction error, plain ``‖W−Ŵ‖/‖W‖`` (``{method}_error``), Fisher-weighted
    ``‖(W−Ŵ)D‖/‖WD‖`` (``{method}_weighted_error``, NaN without Fisher) and in the method's own objective
    (``{method}_objective_error``, :meth:`LayerAnalysis.relative_objective`).

    Parameters count weights only: a low-rank pair keeps the layer's bias unchanged. ``blocks`` are the
    block stacks (:func:`fwsvd.find_blocks`); without them the block is the name up to its last two parts.
    """
    rows = []
    for name, analysis in analyses.items():
        rank = int(ranks[name])
        dense = analysis.out_features * analysis.in_features
        kept = rank * (analysis.out_features + analysis.in_features)
        block = block_of(name, blocks) if blocks else name.rsplit(".", 2)[0]
        row: dict[str, Any] = {
            "layer": name,
            "block": block,
            "name_in_block": name[len(block) + 1:],
            "shape": f"{analysis.out_features}×{analysis.in_features}",
            "rank": rank,
            "full_rank": analysis.full_rank,
            "break_even_rank": analysis.break_even_rank,
            "above_break_even": rank >= analysis.break_even_rank,
            "dense_params": dense,
            # At or above break-even the pair would be larger than the layer: the raw figure is negative here,
            # and rank_plan.mark_dense counts such a layer as kept dense, as compress_ keeps it by default.
            "kept_params": kept,
            "removed_params": dense - kept,
        }
        for method in METHODS:
            curves = analysis.curves.get(method)
            if curves is None:
                row[f"{method}_error"] = math.nan
                row[f"{method}_weighted_error"] = math.nan
                row[f"{method}_objective_error"] = math.nan
                continue
            row[f"{method}_error"] = float(curves.relative_plain()[rank])
            weighted = curves.relative_weighted()
            row[f"{method}_weighted_error"] = math.nan if weighted is None else float(weighted[rank])
            row[f"{method}_objective_error"] = float(analysis.relative_objective(method)[rank])
        rows.append(row)
    return pd.DataFrame(rows)


def totals(frame: pd.DataFrame, model_params: int | None = None) -> dict[str, Any]:
    """Totals of a :func:`layer_frame`: weight parameters before / kept / removed, share kept, mean
    errors per method, and the layers at or above break-even.

    With ``model_params`` (every parameter of the dense model, :attr:`ExplorerView.model_params`) also the
    whole model's size: ``model_params``, ``compressed_params`` and ``model_share`` (compressed over dense,
    the headline figure: embeddings, heads and biases stay; :mod:`fwsvd.view.sizes`); None without it."""
    dense = int(frame["dense_params"].sum())
    kept = int(frame["kept_params"].sum())
    size = SizeAt(int(model_params), dense, kept) if model_params is not None else None
    result: dict[str, Any] = {
        "dense_params": dense,
        "kept_params": kept,
        "removed_params": dense - kept,
        "kept_share": kept / dense if dense else 0.0,
        "above_break_even": list(frame.loc[frame["above_break_even"], "layer"]),
        "model_params": size.model_params if size else None,
        "compressed_params": size.compressed_params if size else None,
        "model_share": size.model_share if size else None,
    }
    for method in METHODS:
        result[f"{method}_mean_error"] = float(frame[f"{method}_error"].mean())
        result[f"{method}_mean_weighted_error"] = float(frame[f"{method}_weighted_error"].mean())
    return result


def spectrum_frame(analysis: LayerAnalysis) -> pd.DataFrame:
    """Long format (method, index 1..k, value): each method's singular values divided by its largest.

    SVD factors W, FWSVD W·D and the others P·W·Q, whose scales differ; normalising shows the decays side
    by side.
    """
    parts = []
    for method, values in analysis.singular_values.items():
        values = np.asarray(values, dtype=np.float64)
        largest = float(values[0]) if values.size and values[0] > 0 else 1.0
        parts.append(pd.DataFrame({"method": method, "index": np.arange(1, values.size + 1),
                                   "value": values / largest}))
    return pd.concat(parts, ignore_index=True)


def analyses_to_arrays(analyses: Mapping[str, LayerAnalysis]) -> dict[str, np.ndarray]:
    """The analyses' numbers as flat named numpy arrays, ``{index}.{method}.s`` / ``.plain`` / ``.weighted``
    / ``.norms`` (index: the layer's position): the layout of both the analysis disk cache
    (:func:`fwsvd.cached_analyses`) and the snapshots. Layer names and shapes are the caller's to keep.
    """
    arrays: dict[str, np.ndarray] = {}
    for index, analysis in enumerate(analyses.values()):
        for method, curves in analysis.curves.items():
            prefix = f"{index}.{method}"
            arrays[f"{prefix}.s"] = _to_numpy(analysis.singular_values[method])
            arrays[f"{prefix}.plain"] = _to_numpy(curves.plain)
            arrays[f"{prefix}.norms"] = np.array(
                [curves.weight_norm, math.nan if curves.weighted_norm is None else curves.weighted_norm])
            if curves.weighted is not None:
                arrays[f"{prefix}.weighted"] = _to_numpy(curves.weighted)
    return arrays


def analyses_from_arrays(arrays: Mapping[str, Any],
                         layers: Sequence[tuple[str, int, int]]) -> dict[str, LayerAnalysis]:
    """The analyses of :func:`analyses_to_arrays`' layout back, for ``layers`` = [(name, out, in)] in the
    same order; the arrays are used as given (torch tensors or numpy arrays)."""
    analyses = {}
    for index, (name, out_features, in_features) in enumerate(layers):
        singular_values, curves = {}, {}
        for method in METHODS:
            prefix = f"{index}.{method}"
            if f"{prefix}.s" not in arrays:
                continue
            weight_norm, weighted_norm = (float(value) for value in arrays[f"{prefix}.norms"])
            singular_values[method] = arrays[f"{prefix}.s"]
            curves[method] = ErrorCurves(plain=arrays[f"{prefix}.plain"], weighted=arrays.get(f"{prefix}.weighted"),
                                         weight_norm=weight_norm,
                                         weighted_norm=None if math.isnan(weighted_norm) else weighted_norm)
        analyses[name] = LayerAnalysis(name, int(out_features), int(in_features), singular_values, curves)
    return analyses


def _to_numpy(values: Any) -> np.ndarray:
    """A torch tensor (on any device) or an array as a numpy array, without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)
