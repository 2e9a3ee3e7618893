"""Per-layer analyses of a model: singular values and error curves at every rank for each method, computed
from a DecompositionStore without changing the model, and kept in the disk cache by content."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fwsvd.factorize.layers import dense_weight
from fwsvd.factorize.store import FORMAT_VERSION as STORE_FORMAT
from fwsvd.factorize.store import METHOD_SETTINGS, DecompositionStore
from fwsvd.factorize.weighted import LayerStatistics
from fwsvd.storage.locations import key_digest
from fwsvd.storage.tensor_cache import TensorCache, tensor_digest
from fwsvd.surgery.compress import default_store
from fwsvd.surgery.inputs import Fisher, Statistics, check_inputs, importances_of, layer_inputs, statistics_of
from fwsvd.surgery.targets import TargetFilter, find_targets
from fwsvd.view.analysis import (DEFAULT_METHODS, LayerAnalysis, analyses_from_arrays, analyses_to_arrays,
                                 needs_statistics)

#: Bump when what :func:`cached_analyses` stores changes, so old files are recomputed.
ANALYSIS_FORMAT = 2  # 2: any methods, keyed by the statistics they read


def analyze_layers(
    model: nn.Module,
    fisher: Fisher | None = None,
    *,
    methods: Sequence[str] | None = None,
    statistics: Statistics | None = None,
    filter_fn: TargetFilter | None = None,
    store: DecompositionStore | None = None,
) -> dict[str, LayerAnalysis]:
    """Singular values and error curves of every target layer for each method, without changing the model.

    ``methods`` default to DEFAULT_METHODS, FWSVD only when ``fisher`` is given; a method asked for whose
    inputs are missing (fwsvd: ``fisher``; asvd, whiten, kfac: token ``statistics``, or a FisherResult's)
    raises ValueError. Fisher-weighted curves, for every method, use ``fisher`` when given.
    """
    fisher, statistics = importances_of(fisher), statistics_of(statistics, fisher)
    if methods is None:
        methods = tuple(method for method in DEFAULT_METHODS if method != "fwsvd" or fisher is not None)
    targets = find_targets(model, filter_fn)
    for method in methods:
        check_inputs(method, list(targets), fisher, statistics)
    store = store if store is not None else default_store()
    analyses = {}
    for name, module in targets.items():
        weighting = fisher[name] if fisher is not None else None
        singular_values, curves = {}, {}
        for method in methods:
            inputs = layer_inputs(method, name, fisher, statistics)
            singular_values[method] = store.get(module, **inputs).s
            curves[method] = store.curves(module, weighting=weighting, **inputs)
        out_features, in_features = dense_weight(module).shape
        analyses[name] = LayerAnalysis(name, out_features, in_features, singular_values, curves)
    return analyses


def cached_analyses(model: nn.Module, importances: Mapping[str, torch.Tensor], *,
                    methods: Sequence[str] = DEFAULT_METHODS, statistics: Statistics | None = None,
                    store: DecompositionStore | None = None,
                    cache_dir: str | Path | None = None) -> dict[str, LayerAnalysis]:
    """:func:`fwsvd.analyze_layers` for ``methods`` (default SVD and FWSVD), kept in the disk cache.

    The analyses hold only singular values and error curves (k numbers per layer and method), yet computing
    the curves from the stored decompositions takes seconds on CPU; this cache makes opening the dashboard
    on a known model and Fisher a matter of reading one small file. The key is the methods and the content
    of every target weight, importance and (for methods that read them) token statistics, so a changed
    weight, Fisher or statistics is never served stale.
    """
    importances, statistics = importances_of(importances), statistics_of(statistics, importances)
    targets = find_targets(model)
    with_statistics = statistics is not None and any(needs_statistics(method) for method in methods)
    layers = {name: [tensor_digest(dense_weight(module)),
                     tensor_digest(importances[name]) if name in importances else None,
                     _statistics_digest(statistics.get(name)) if with_statistics else None]
              for name, module in targets.items()}
    key = {"kind": "layer-analysis", "format": ANALYSIS_FORMAT, "store_format": STORE_FORMAT, **METHOD_SETTINGS,
           "methods": list(methods), "layers": key_digest(layers)}
    cache = TensorCache(cache_dir, namespace="analyses")
    tensors = cache.get(key)
    if tensors is not None:
        return analyses_from_arrays(tensors, [(name, *dense_weight(module).shape) for name, module in targets.items()])
    analyses = analyze_layers(model, importances, methods=methods, statistics=statistics, store=store)
    cache.put(key, {name: torch.from_numpy(array) for name, array in analyses_to_arrays(analyses).items()})
    return analyses


def _statistics_digest(statistics: LayerStatistics | None) -> str | None:
    if statistics is None:
        return None
    return key_digest({name: tensor_digest(tensor) for name, tensor in statistics.to_tensors().items()})
