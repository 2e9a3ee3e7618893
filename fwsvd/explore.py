"""The computations behind the dashboard, as plain functions over models, analyses and tensors.

The Streamlit pages only draw widgets and charts; everything they show is computed here (or elsewhere in
the library), so it can be tested, benchmarked and reused without a browser. Nothing here imports
streamlit.

The rank explorer must redraw within a fraction of a second, so every per-rank figure is a lookup: the
decompositions and error curves of all ranks come once from :func:`fwsvd.analyze_layers` (backed by a
:class:`fwsvd.DecompositionStore`), and :func:`layer_frame` only indexes them at the chosen ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fwsvd.cache import TensorCache, default_cache_dir, key_digest, tensor_digest
from fwsvd.compress import (
    LayerAnalysis,
    analyze_layers,
    compressed_copy,
    ranks_for_param_fraction,
    resolve_ranks,
)
from fwsvd.factorize import IMPORTANCE_FLOOR, ErrorCurves, validate_rank
from fwsvd.store import FORMAT_VERSION as STORE_FORMAT
from fwsvd.store import DecompositionStore
from fwsvd.targets import dense_weight, find_blocks, find_targets

Progress = Callable[[int, int], None]
METHODS: tuple[str, ...] = ("svd", "fwsvd")

#: Written into every exported rank configuration, checked when one is loaded back.
RANK_CONFIG_FORMAT = "fwsvd-rank-config"
RANK_CONFIG_VERSION = 1

#: Bump when what :func:`cached_analyses` stores changes, so old files are recomputed.
ANALYSIS_FORMAT = 1

#: The two ways the rank explorer sets every layer at once.
GLOBAL_MODES: tuple[str, ...] = ("rank_ratio", "param_budget")


# --------------------------------------------------------------------------------------------------
# Architecture


def block_of(name: str, blocks: Sequence[str]) -> str:
    """The transformer block a layer lives in (``bert.encoder.layer.3``), from :func:`find_blocks`'s stacks."""
    for stack in blocks:
        if name.startswith(stack + "."):
            index = name[len(stack) + 1:].split(".", 1)[0]
            return f"{stack}.{index}"
    raise ValueError(f"layer {name!r} is not inside any transformer block stack ({', '.join(blocks)})")


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


def layers_by_block(frame: pd.DataFrame) -> dict[str, list[str]]:
    """{block: [layer names]} in model order, from :func:`architecture_frame` or :func:`layer_frame`."""
    groups: dict[str, list[str]] = {}
    for block, layer in zip(frame["block"], frame["layer"]):
        groups.setdefault(block, []).append(layer)
    return groups


# --------------------------------------------------------------------------------------------------
# Ranks


def global_ranks(model: nn.Module, mode: str, value: float) -> dict[str, int]:
    """Ranks for every target layer from one global control.

    ``mode="rank_ratio"``: ``value`` in (0, 1] of each layer's full rank (the paper keeps 0.33).
    ``mode="param_budget"``: keep about ``value`` in (0, 1] of each layer's weight parameters.
    """
    targets = find_targets(model)
    if mode == "rank_ratio":
        return resolve_ranks(targets, float(value))
    if mode == "param_budget":
        return ranks_for_param_fraction(targets, float(value))
    raise ValueError(f"global mode must be one of {', '.join(GLOBAL_MODES)}, got {mode!r}")


def check_ranks(analyses: Mapping[str, LayerAnalysis], ranks: Mapping[str, int]) -> dict[str, int]:
    """``ranks`` as ints, after checking they name exactly the analysed layers and lie in 1..full rank."""
    unknown = sorted(set(ranks) - set(analyses))
    missing = sorted(set(analyses) - set(ranks))
    if unknown:
        raise ValueError(f"ranks name {len(unknown)} layer(s) this model does not have, e.g. {unknown[0]!r}; "
                         f"its target layers are like {next(iter(analyses))!r}")
    if missing:
        raise ValueError(f"ranks miss {len(missing)} target layer(s), e.g. {missing[0]!r}")
    checked = {}
    for name, analysis in analyses.items():
        rank = ranks[name]
        if isinstance(rank, float) and rank.is_integer():
            rank = int(rank)
        checked[name] = validate_rank(rank, (analysis.out_features, analysis.in_features), name)
    return checked


def ranks_digest(ranks: Mapping[str, int]) -> str:
    """A short stable digest of a rank configuration (to remember results per configuration)."""
    text = json.dumps(dict(sorted(ranks.items())), separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def rank_config_to_json(ranks: Mapping[str, int], **context: Any) -> str:
    """A rank configuration as JSON: format tag, version, ``context`` (model, task, ...) and the ranks."""
    document = {"format": RANK_CONFIG_FORMAT, "version": RANK_CONFIG_VERSION, **context,
                "ranks": {name: int(rank) for name, rank in ranks.items()}}
    return json.dumps(document, indent=2)


def rank_config_from_json(text: str | bytes, analyses: Mapping[str, LayerAnalysis]) -> dict[str, int]:
    """The ranks of a JSON rank configuration, checked against the model's analysed target layers.

    Raises ValueError naming what is wrong: not JSON, not a rank configuration, unknown or missing layers,
    ranks out of range.
    """
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the rank configuration is not valid JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("ranks"), dict):
        raise ValueError("not a rank configuration: expected a JSON object with a 'ranks' object "
                         "{layer name: rank}, as the Export page writes")
    if document.get("format", RANK_CONFIG_FORMAT) != RANK_CONFIG_FORMAT:
        raise ValueError(f"not a rank configuration: format is {document.get('format')!r}, "
                         f"expected {RANK_CONFIG_FORMAT!r}")
    return check_ranks(analyses, document["ranks"])


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
        return _analyses_from_tensors(tensors, targets)
    analyses = analyze_layers(model, importances, store=store)
    cache.put(key, _analyses_to_tensors(analyses))
    return analyses


def _analyses_to_tensors(analyses: Mapping[str, LayerAnalysis]) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, analysis in enumerate(analyses.values()):
        for method, curves in analysis.curves.items():
            prefix = f"{index}.{method}"
            tensors[f"{prefix}.s"] = analysis.singular_values[method]
            tensors[f"{prefix}.plain"] = curves.plain
            norms = [curves.weight_norm, math.nan if curves.weighted_norm is None else curves.weighted_norm]
            tensors[f"{prefix}.norms"] = torch.tensor(norms, dtype=torch.float64)
            if curves.weighted is not None:
                tensors[f"{prefix}.weighted"] = curves.weighted
    return tensors


def _analyses_from_tensors(tensors: Mapping[str, torch.Tensor],
                           targets: Mapping[str, nn.Module]) -> dict[str, LayerAnalysis]:
    analyses = {}
    for index, (name, module) in enumerate(targets.items()):
        singular_values, curves = {}, {}
        for method in METHODS:
            prefix = f"{index}.{method}"
            if f"{prefix}.s" not in tensors:
                continue
            weight_norm, weighted_norm = tensors[f"{prefix}.norms"].tolist()
            singular_values[method] = tensors[f"{prefix}.s"]
            curves[method] = ErrorCurves(plain=tensors[f"{prefix}.plain"], weighted=tensors.get(f"{prefix}.weighted"),
                                         weight_norm=weight_norm,
                                         weighted_norm=None if math.isnan(weighted_norm) else weighted_norm)
        out_features, in_features = dense_weight(module).shape
        analyses[name] = LayerAnalysis(name, out_features, in_features, singular_values, curves)
    return analyses


# --------------------------------------------------------------------------------------------------
# Per-layer figures at the current ranks (lookups into the analyses' curves)


def layer_frame(analyses: Mapping[str, LayerAnalysis], ranks: Mapping[str, int],
                blocks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per layer at ``ranks``: weight parameters kept / removed, break-even flag, and for each
    method the relative reconstruction error, plain ``‖W−Ŵ‖/‖W‖`` (``{method}_error``) and Fisher-weighted
    ``‖(W−Ŵ)D‖/‖WD‖`` (``{method}_weighted_error``, NaN without Fisher).

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
            # At or above break-even the pair is larger than the layer; compress_ still builds it, so the
            # saving is reported as negative rather than hidden.
            "kept_params": kept,
            "removed_params": dense - kept,
        }
        for method in METHODS:
            curves = analysis.curves.get(method)
            if curves is None:
                row[f"{method}_error"] = math.nan
                row[f"{method}_weighted_error"] = math.nan
                continue
            row[f"{method}_error"] = float(curves.relative_plain()[rank])
            weighted = curves.relative_weighted()
            row[f"{method}_weighted_error"] = math.nan if weighted is None else float(weighted[rank])
        rows.append(row)
    return pd.DataFrame(rows)


def totals(frame: pd.DataFrame) -> dict[str, Any]:
    """Totals of a :func:`layer_frame`: weight parameters before / kept / removed, share kept, mean
    errors per method, and the layers at or above break-even."""
    dense = int(frame["dense_params"].sum())
    kept = int(frame["kept_params"].sum())
    result: dict[str, Any] = {
        "dense_params": dense,
        "kept_params": kept,
        "removed_params": dense - kept,
        "kept_share": kept / dense if dense else 0.0,
        "above_break_even": list(frame.loc[frame["above_break_even"], "layer"]),
    }
    for method in METHODS:
        result[f"{method}_mean_error"] = float(frame[f"{method}_error"].mean())
        result[f"{method}_mean_weighted_error"] = float(frame[f"{method}_weighted_error"].mean())
    return result


def spectrum_frame(analysis: LayerAnalysis) -> pd.DataFrame:
    """Long format (method, index 1..k, value): each method's singular values divided by its largest.

    SVD factors W and FWSVD factors W·D, whose scales differ; normalising shows the two decays side by side.
    """
    parts = []
    for method, values in analysis.singular_values.items():
        values = values.to(torch.float64)
        largest = float(values[0]) if values.numel() and float(values[0]) > 0 else 1.0
        parts.append(pd.DataFrame({"method": method, "index": np.arange(1, values.numel() + 1),
                                   "value": (values / largest).numpy()}))
    return pd.concat(parts, ignore_index=True)


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


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the demo model is (or will be) built."""
    from fwsvd.demo import DEMO_VERSION

    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "demo" / DEMO_VERSION


def demo_is_built(cache_dir: str | Path | None = None) -> bool:
    """True when the demo model is built, so that loading it takes seconds rather than minutes."""
    from fwsvd.demo import INFO_FILE

    return (demo_model_dir(cache_dir) / INFO_FILE).is_file()


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
