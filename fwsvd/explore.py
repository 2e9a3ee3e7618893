"""The computations behind the dashboard that need the model: architecture, analyses, Fisher, evaluation.

The Streamlit pages only draw widgets and charts; everything they show is computed here or elsewhere in
the library, so it can be tested, benchmarked and reused without a browser. Nothing here imports
streamlit. What works without a model lives in torch-free modules, so a page can draw before torch loads:
:mod:`fwsvd.analysis` (the per-rank tables), :mod:`fwsvd.rank_config` (setting and checking ranks) and
:mod:`fwsvd.snapshot` (analyses saved per model files).

The rank explorer must redraw within a fraction of a second, so every per-rank figure is a lookup: the
decompositions and error curves of all ranks come once from :func:`fwsvd.analyze_layers` (backed by a
:class:`fwsvd.DecompositionStore`), and :func:`fwsvd.analysis.layer_frame` only indexes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fwsvd.analysis import METHODS, LayerAnalysis, analyses_from_arrays, analyses_to_arrays, block_of
from fwsvd.cache import TensorCache, tensor_digest
from fwsvd.compress import analyze_layers, compressed_copy
from fwsvd.factorize import IMPORTANCE_FLOOR
from fwsvd.locations import key_digest
from fwsvd.store import FORMAT_VERSION as STORE_FORMAT
from fwsvd.store import DecompositionStore
from fwsvd.targets import dense_weight, find_blocks, find_targets

Progress = Callable[[int, int], None]

#: Bump when what :func:`cached_analyses` stores changes, so old files are recomputed.
ANALYSIS_FORMAT = 1


# --------------------------------------------------------------------------------------------------
# Architecture


def architecture_frame(model: nn.Module) -> pd.DataFrame:
    """One row per target layer, in model order: its block, name inside the block, shape and parameters.

    ``break_even_rank`` is m·n/(m+n): at or above it a low-rank pair holds more weights than the layer.
    """
    blocks = find_blocks(model)
    rows = []
    for name, module in find_targets(model).items():
        out_features, in_features = dense_weight(module).shape
        block = block_of(name, blocks)
        bias = 0 if module.bias is None else module.bias.numel()
        rows.append({
            "layer": name,
            "block": block,
            "name_in_block": name[len(block) + 1:],
            "out_features": out_features,
            "in_features": in_features,
            "weight_params": out_features * in_features,
            "bias_params": bias,
            "full_rank": min(out_features, in_features),
            "break_even_rank": out_features * in_features / (out_features + in_features),
        })
    return pd.DataFrame(rows)


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Headline numbers of a model: class, parameters, how many of them the target layers hold."""
    frame = architecture_frame(model)
    total = sum(parameter.numel() for parameter in model.parameters())
    target = int(frame["weight_params"].sum() + frame["bias_params"].sum())
    return {
        "model_class": type(model).__name__,
        "parameters": total,
        "target_layers": len(frame),
        "blocks": int(frame["block"].nunique()),
        "target_parameters": target,
        "target_share": target / total if total else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# Analyses, cached


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


# --------------------------------------------------------------------------------------------------
# Fisher: where the importance lies, how concentrated, exact vs batch


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

    ``cosine`` and ``spearman`` (:func:`fwsvd.pipeline.importance_agreement`, both scale-free as FWSVD is),
    and ``top10_overlap``: the share of the exact top-10% features that are also in the batch top 10%.
    """
    from fwsvd.pipeline import importance_agreement

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


# --------------------------------------------------------------------------------------------------
# Fisher of a task, from the cache or computed


class _NotCached(LookupError):
    """Raised by the batch factory of a cache-only lookup: the importances were not in the cache."""


def cached_task_fisher(model: nn.Module, task: Any, *, num_examples: int, seed: int, max_length: int,
                       mode: str, batch_size: int = 32, cache_dir: str | Path | None = None) -> Any:
    """The Fisher :func:`fwsvd.pipeline.task_fisher` would return (a ``FisherResult``) if the disk cache
    holds it, else None. Never estimates, so opening the dashboard stays fast.

    ``load_or_estimate_fisher`` builds the data only on a miss, and the factory given here refuses to, so a
    miss costs one digest of the model's weights. The cache key is task_fisher's: the same data identity,
    the example count capped at the train split's size, and (batch mode) task_fisher's default batch size.
    """
    from fwsvd.fisher import load_or_estimate_fisher

    def refuse() -> list[dict[str, torch.Tensor]]:
        raise _NotCached

    used = min(num_examples, len(task.load_split("train")))
    try:
        return load_or_estimate_fisher(model, refuse, data_id=task.data_id("train"), num_examples=used,
                                       seed=seed, max_length=max_length, mode=mode, batch_size=batch_size,
                                       cache_dir=cache_dir)
    except _NotCached:
        return None


# --------------------------------------------------------------------------------------------------
# Evaluation of compressed copies


def evaluate_methods(model: nn.Module, tokenizer: Any, task: Any, ranks: Mapping[str, int] | float, *,
                     fisher: Mapping[str, torch.Tensor] | None, methods: Sequence[str] = METHODS,
                     role: str = "validation", limit: int | None = None, batch_size: int = 32,
                     max_length: int = 128, store: DecompositionStore | None = None,
                     progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate a compressed copy of ``model`` per method (and ``"dense"`` for the model itself) at ``ranks``.

    The model is never modified (:func:`fwsvd.compressed_copy`); the data is tokenised once for all.
    Returns {method: {"metrics": {...}, "params": int, "latency_s_per_batch": float, "num_examples": int}}.
    ``progress(done, total)`` counts batches over all methods.
    """
    from fwsvd.data import make_batches
    from fwsvd.evaluation import evaluate_model

    batches = make_batches(task, tokenizer, role, batch_size=batch_size, max_length=max_length, limit=limit)
    if not batches:
        raise ValueError(f"no examples to evaluate in the {role} split of task {task.name!r}")
    total = len(batches) * len(methods)
    results: dict[str, dict[str, Any]] = {}
    for position, method in enumerate(methods):
        offset = position * len(batches)

        def step(done: int, _: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        if method == "dense":
            candidate = model
        else:
            candidate, _ = compressed_copy(model, ranks, method=method, fisher=fisher, store=store)
        result = evaluate_model(candidate, tokenizer, task, role, batches=batches, progress=step)
        results[method] = {"metrics": dict(result.metrics), "params": result.params,
                           "latency_s_per_batch": result.latency_s_per_batch, "num_examples": result.num_examples}
    return results


def evaluations_frame(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]]) -> pd.DataFrame:
    """One row per (rank setting, method) from ``[(context, {method: result of evaluate_methods})]``:
    the context's columns (e.g. ranks digest, subset size), method, parameters, latency, then the metrics."""
    rows = []
    for context, results in entries:
        for method, result in results.items():
            rows.append({**context, "method": method, "params": result["params"],
                         "num_examples": result["num_examples"],
                         "latency_s_per_batch": result["latency_s_per_batch"], **result["metrics"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Sources: the demo build, local data files


def data_file_columns(path: str | Path) -> list[str]:
    """Column names of a local CSV / TSV / JSON(L) / parquet file, reading only its first rows."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file not found: {file}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(file, nrows=5)
        elif suffix == ".tsv":
            frame = pd.read_csv(file, sep="\t", nrows=5)
        elif suffix == ".jsonl":
            frame = pd.read_json(file, lines=True, nrows=5)
        elif suffix == ".json":
            frame = _read_json_head(file)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(file).names)
        else:
            raise ValueError(f"unsupported data file {file.name}: expected .csv, .tsv, .json, .jsonl or .parquet")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {file.name} as {suffix[1:].upper()}: {error}") from error
    return [str(column) for column in frame.columns]


def _read_json_head(file: Path) -> pd.DataFrame:
    # A .json file is either JSON lines or one array of records; try lines first (it does not load it all).
    try:
        return pd.read_json(file, lines=True, nrows=5)
    except ValueError:
        return pd.read_json(file)


# --------------------------------------------------------------------------------------------------
# Export


def compressed_archive(model: nn.Module, ranks: Mapping[str, int] | float, *, method: str,
                       fisher: Mapping[str, torch.Tensor] | None, tokenizer: Any = None,
                       fisher_provenance: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                       store: DecompositionStore | None = None) -> bytes:
    """A zip of the folder :func:`fwsvd.persistence.save_compressed` writes for a compressed copy of
    ``model`` (``model/`` inside the archive; reload with ``load_compressed``). The model is not modified."""
    import io
    import tempfile
    import zipfile

    from fwsvd.persistence import save_compressed

    compressed, _ = compressed_copy(model, ranks, method=method, fisher=fisher, store=store)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch:
        directory = save_compressed(compressed, Path(scratch) / "model", tokenizer=tokenizer, method=method,
                                    fisher_provenance=fisher_provenance, extra=extra)
        # Stored, not deflated: float weights barely compress and deflating them costs seconds.
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for file in sorted(directory.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(directory.parent))
    return buffer.getvalue()
