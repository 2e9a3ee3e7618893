"""What weighs each method, per layer: the Fisher importances and token statistics that compress_, the
analyses, the evaluation and the sweep take, checked for the chosen method before any SVD runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fwsvd.factorize.weighted import LayerStatistics
from fwsvd.view.analysis import check_method, needs_statistics

Fisher = Mapping[str, torch.Tensor]
#: {layer name: LayerStatistics}, or a FisherResult estimated with ``statistics=True`` (its ``.statistics``).
Statistics = Mapping[str, LayerStatistics]


def importances_of(fisher: Fisher | Any | None) -> Fisher | None:
    """``fisher`` as {layer name: importance}: a mapping as given, or a FisherResult's ``.importances``."""
    return getattr(fisher, "importances", fisher)


def statistics_of(statistics: Statistics | Any | None, fisher: Any = None) -> Statistics | None:
    """``statistics`` as {layer name: LayerStatistics}: a mapping as given, or a FisherResult's
    ``.statistics``; when None, those of ``fisher`` if it is a FisherResult that holds them."""
    if statistics is None:
        return getattr(fisher, "statistics", None)
    if isinstance(statistics, Mapping):
        return statistics
    if hasattr(statistics, "statistics"):
        if statistics.statistics is None:
            raise ValueError("the FisherResult passed as statistics holds none: estimate it with "
                             "task_fisher(..., statistics=True)")
        return statistics.statistics
    raise ValueError(f"statistics must be {{layer name: LayerStatistics}} or a FisherResult, "
                     f"got {type(statistics).__name__}")


def check_inputs(method: str, names: Sequence[str], fisher: Fisher | None, statistics: Statistics | None) -> None:
    """ValueError unless ``method`` has what it is weighted by for every layer of ``names``: a Fisher
    importance (fwsvd; any method given a Fisher, for the Fisher-weighted errors) or token statistics
    (asvd, whiten, kfac; kfac with output gradients)."""
    check_method(method)
    if method == "fwsvd" and fisher is None:
        raise ValueError("method 'fwsvd' needs Fisher importances: pass fisher=task_fisher(model, tokenizer, task) "
                         "or estimate_fisher(model, batches)")
    if fisher is not None:
        _check_covers(fisher, names, "fisher has no importance")
    if not needs_statistics(method):
        return
    if statistics is None:
        raise ValueError(f"method {method!r} needs token statistics: pass statistics=task_fisher(..., "
                         "statistics=True) (or estimate_fisher(..., statistics=True))")
    _check_covers(statistics, names, "statistics have no entry")
    if method == "kfac":
        lacking = [name for name in names if statistics[name].output_moment is None]
        if lacking:
            raise ValueError(f"method 'kfac' needs the output-gradient moment of every layer, but the statistics of "
                             f"{len(lacking)} layer(s), e.g. {lacking[0]!r}, were gathered without gradients: "
                             "use those of task_fisher(..., statistics=True)")


def layer_inputs(method: str, name: str, fisher: Fisher | None,
                 statistics: Statistics | None) -> dict[str, Any]:
    """The keyword arguments of ``DecompositionStore.get`` / ``.curves`` for one layer: what ``method``
    decomposes with (its importance for fwsvd, its statistics for asvd, whiten and kfac)."""
    return {"method": method,
            "importance": fisher[name] if method == "fwsvd" else None,
            "statistics": statistics[name] if needs_statistics(method) else None}


def _check_covers(values: Mapping[str, Any], names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"{what} for {len(missing)} layer(s) to compress, e.g. {missing[0]!r}; "
                         "estimate it for the same model and targets")
