"""Per-layer analyses of a model: singular values and error curves at every rank for each method, computed
from a DecompositionStore without changing the model, and kept in the disk cache by content."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fwsvd.factorize.closed_form import IMPORTANCE_FLOOR
from fwsvd.factorize.store import FORMAT_VERSION as STORE_FORMAT
from fwsvd.factorize.store import DecompositionStore
from fwsvd.storage.locations import key_digest
from fwsvd.storage.tensor_cache import TensorCache, tensor_digest
from fwsvd.surgery.compress import Fisher, check_fisher, check_method, default_store
from fwsvd.factorize.layers import dense_weight
from fwsvd.surgery.targets import TargetFilter, find_targets
from fwsvd.view.analysis import DEFAULT_METHODS, LayerAnalysis, analyses_from_arrays, analyses_to_arrays

#: Bump when what :func:`cached_analyses` stores changes, so old files are recomputed.
ANALYSIS_FORMAT = 1


def analyze_layers(
    model: nn.Module,
    fisher: Fisher | None = None,
    *,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> dict[str, LayerAnalysis]:
    """Singular values and error curves of every target layer for each method, without changing the model.

    FWSVD needs ``fisher``; without it only "svd" is analysed. Weighted curves use ``fisher`` when given.
    """
    store = store if store is not None else default_store()
    methods = tuple(check_method(method) for method in methods if method == "svd" or fisher is not None)
    targets = find_targets(model, filter_fn)
    check_fisher(fisher, list(targets), "svd")
    analyses = {}
    for name, module in targets.items():
        importance = fisher[name] if fisher is not None else None
        singular_values, curves = {}, {}
        for method in methods:
            decomposition_importance = importance if method == "fwsvd" else None
            singular_values[method] = store.get(module, decomposition_importance).s
            curves[method] = store.curves(module, decomposition_importance, importance)
        out_features, in_features = dense_weight(module).shape
        analyses[name] = LayerAnalysis(name, out_features, in_features, singular_values, curves)
    return analyses


def cached_analyses(model: nn.Module, importances: Mapping[str, torch.Tensor], *,
                    store: DecompositionStore | None = None,
                    cache_dir: str | Path | None = None) -> dict[str, LayerAnalysis]:
    """:func:`fwsvd.analyze_layers` for SVD and FWSVD, kept in the disk cache.

    The analyses hold only singular values and error curves (k numbers per layer and method), yet computing
    the curves from the stored decompositions takes seconds on CPU; this cache makes opening the dashboard
    on a known model and Fisher a matter of reading one small file. The key is the content of every target
    weight and importance, so a changed weight or Fisher is never served stale.
    """
    targets = find_targets(model)
    layers = {name: [tensor_digest(dense_weight(module)),
                     tensor_digest(importances[name]) if name in importances else None]
              for name, module in targets.items()}
    key = {"kind": "layer-analysis", "format": ANALYSIS_FORMAT, "store_format": STORE_FORMAT,
           "floor": IMPORTANCE_FLOOR, "layers": key_digest(layers)}
    cache = TensorCache(cache_dir, namespace="analyses")
    tensors = cache.get(key)
    if tensors is not None:
        return analyses_from_arrays(tensors, [(name, *dense_weight(module).shape) for name, module in targets.items()])
    analyses = analyze_layers(model, importances, store=store)
    cache.put(key, {name: torch.from_numpy(array) for name, array in analyses_to_arrays(analyses).items()})
    return analyses
