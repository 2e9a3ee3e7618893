"""Where a Fisher importance lies and how two importances agree: per-layer concentration figures, heatmap
rows, cumulative shares, and exact-vs-batch agreement (cosine, Spearman, top-10% overlap)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fwsvd.view.analysis import block_of

def concentration(importance: torch.Tensor) -> dict[str, float]:
    """How concentrated one layer's importance is over its input features.

    ``top1_share`` / ``top10_share``: share of the total held by the top 1% / 10% of features (at least
    one). ``gini``: 0 for uniform, near 1 when one feature holds everything. ``effective_share``:
    exp(entropy)/n, the fraction of features that would carry the same mass if spread evenly.
    """
    values = importance.detach().to(torch.float64).clamp_min(0).flatten()
    count = values.numel()
    total = float(values.sum())
    if count == 0 or total <= 0:
        return {"top1_share": math.nan, "top10_share": math.nan, "gini": math.nan, "effective_share": math.nan}
    ordered = torch.sort(values, descending=True).values
    shares = ordered / total
    top1 = float(shares[:max(1, round(0.01 * count))].sum())
    top10 = float(shares[:max(1, round(0.10 * count))].sum())
    ascending = torch.flip(shares, [0])
    ranks = torch.arange(1, count + 1, dtype=torch.float64)
    gini = float((2 * (ranks * ascending).sum() / count) - (count + 1) / count)
    positive = shares[shares > 0]
    entropy = float(-(positive * positive.log()).sum())
    return {"top1_share": top1, "top10_share": top10, "gini": gini, "effective_share": math.exp(entropy) / count}


def fisher_frame(importances: Mapping[str, torch.Tensor], blocks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per layer: its total Fisher importance, its share of the model's total, and the
    concentration figures of :func:`concentration`."""
    grand_total = sum(float(value.double().sum()) for value in importances.values()) or 1.0
    rows = []
    for name, importance in importances.items():
        block = block_of(name, blocks) if blocks else name.rsplit(".", 2)[0]
        total = float(importance.double().sum())
        rows.append({"layer": name, "block": block, "name_in_block": name[len(block) + 1:],
                     "in_features": importance.numel(), "total": total, "share_of_model": total / grand_total,
                     **concentration(importance)})
    return pd.DataFrame(rows)


def importance_matrix(importances: Mapping[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """(layers, features) log10 of each feature's importance relative to its layer's mean, for a heatmap.

    Rows are scale-free (FWSVD ignores a layer's overall scale); 0 means average, +1 ten times average.
    All ``names`` must have the same number of input features.
    """
    widths = {importances[name].numel() for name in names}
    if len(widths) != 1:
        raise ValueError(f"layers of one heatmap must share their input width, got widths {sorted(widths)}")
    rows = []
    for name in names:
        values = importances[name].detach().to(torch.float64)
        mean = float(values.mean())
        relative = values / mean if mean > 0 else torch.ones_like(values)
        # Zero importance happens (features never active on the data); floor it so log10 stays finite.
        rows.append(torch.log10(relative.clamp_min(1e-6)).numpy())
    return np.stack(rows)


def cumulative_share(importance: torch.Tensor, points: int = 101) -> pd.DataFrame:
    """(feature_share, importance_share): the top ``feature_share`` of features hold ``importance_share``
    of the importance — the curve behind the concentration figures, sampled at ``points`` shares."""
    values = torch.sort(importance.detach().to(torch.float64).clamp_min(0).flatten(), descending=True).values
    total = float(values.sum())
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(values, 0)])
    cumulative = cumulative / total if total > 0 else torch.linspace(0, 1, values.numel() + 1, dtype=torch.float64)
    feature_share = np.linspace(0.0, 1.0, points)
    index = np.rint(feature_share * values.numel()).astype(int)
    return pd.DataFrame({"feature_share": feature_share, "importance_share": cumulative.numpy()[index]})


def compare_fisher(exact: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per layer, how different exact (per-example) and batch-shortcut Fisher are.

    ``cosine`` and ``spearman`` (:func:`importance_agreement`, both scale-free as FWSVD is),
    and ``top10_overlap``: the share of the exact top-10% features that are also in the batch top 10%.
    """
    for name in exact:
        if name in batch and exact[name].shape != batch[name].shape:
            raise ValueError(f"exact and batch Fisher of {name} have shapes {tuple(exact[name].shape)} and "
                             f"{tuple(batch[name].shape)}; were they estimated on the same model?")
    agreement = importance_agreement(exact, batch)
    if not agreement:
        raise ValueError("exact and batch Fisher share no layer; were they estimated on the same model?")
    rows = []
    for name, figures in agreement.items():
        top = max(1, round(0.1 * exact[name].numel()))
        exact_top = set(torch.topk(exact[name], top).indices.tolist())
        batch_top = set(torch.topk(batch[name], top).indices.tolist())
        rows.append({"layer": name, **figures, "top10_overlap": len(exact_top & batch_top) / top})
    return pd.DataFrame(rows)


def importance_similarity(first: Mapping[str, torch.Tensor],
                          second: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Cosine similarity per layer of two importance dicts (e.g. exact vs batch mode), for the layers both
    have. Scale-free, as FWSVD is: multiplying a layer's importance by a constant leaves its factors alone."""
    return {
        name: F.cosine_similarity(first[name].double(), second[name].double(), dim=0).item()
        for name in first
        if name in second
    }


def importance_agreement(first: Mapping[str, torch.Tensor],
                         second: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer (those both have): cosine similarity and Spearman rank correlation of two importances,
    e.g. exact per-example vs batch Fisher. Both are scale-free, as FWSVD's factors are."""
    from scipy.stats import spearmanr  # here: scipy.stats costs about a second to import, on every app start

    cosine = importance_similarity(first, second)
    return {
        name: {"cosine": value,
               "spearman": float(spearmanr(first[name].double().numpy(), second[name].double().numpy())[0])}
        for name, value in cosine.items()
    }
