"""Fisher importances of the target layers: exact per example (and the batch shortcut), cached, data-parallel.

FWSVD weighs each input feature ``j`` of a layer by the empirical Fisher of its weights,
``I_j = Σ_examples Σ_o (∂loss_example / ∂W[o, j])²`` — each example's *own* squared gradient. Public
implementations square mini-batch gradients instead (the square of a sum, not the sum of squares); that
shortcut is kept as ``mode="batch"`` so the two can be compared.

How the exact sum stays as cheap as one batched backward pass: for a Linear applied to the tokens of one
example, ``∂loss_i/∂W = g_iᵀ x_i`` with ``x_i`` (T, in) the layer's input and ``g_i`` (T, out) the gradient of
its output. Then ``Σ_o (g_iᵀ x_i)[o, j]² = Σ_t ((g_i g_iᵀ) x_i)[t, j] · x_i[t, j]``: a T×T Gram matrix
replaces the (out, in) per-example gradient whenever that is cheaper (T·(in+out) < in·out, i.e. short
sequences). Forward hooks keep ``x``, tensor hooks receive ``g`` during the single backward pass and reduce it
at once, so the memory stays that of a plain backward pass; the weights' own gradients are never computed
(their ``requires_grad`` is switched off for the pass), which pays for the extra Gram products.

The same hooks can also sum the token statistics asvd, whiten and kfac need (``statistics=True``; see
:mod:`fwsvd.fisher.statistics`), in the same pass and over the same tokens. Without it they do no extra work.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fwsvd.storage.tensor_cache import TensorCache, model_digest
from fwsvd.config import FISHER_MODES, FisherConfig
from fwsvd.storage.locations import key_digest
from fwsvd.storage.sharing import exclusive
from fwsvd.fisher.distributed import all_reduce_sum_, broadcast_, is_distributed, rank_and_world_size
from fwsvd.fisher.statistics import StatisticsAccumulator, split_statistics, statistics_to_tensors
from fwsvd.factorize.layers import FACTORIZABLE, dense_weight
from fwsvd.factorize.weighted import LayerStatistics
from fwsvd.surgery.targets import find_targets

logger = logging.getLogger(__name__)

Mode = Literal["per_example", "batch"]
MODES = FISHER_MODES
Progress = Callable[[int, int], None]
TargetSpec = Mapping[str, nn.Module] | Iterable[str] | None

#: Label value that token-classification losses skip (padding, continuation word pieces).
IGNORE_INDEX = -100
#: Bumped whenever the meaning of a cached Fisher file changes, so old files are recomputed.
CACHE_FORMAT = 1


@dataclass
class FisherResult:
    """Importances plus where they came from (``provenance`` is JSON-serialisable, saved with models), and
    the target layers' token statistics when they were asked for (``statistics=True``), else None."""

    importances: dict[str, torch.Tensor]
    from_cache: bool
    path: Path | None
    seconds: float
    provenance: dict[str, Any]
    statistics: dict[str, LayerStatistics] | None = None


def resolve_targets(model: nn.Module, targets: TargetSpec = None) -> dict[str, nn.Module]:
    """{name: layer} to estimate: ``find_targets(model)`` by default, else the named Linear/Conv1D layers."""
    if targets is None:
        resolved = find_targets(model)
    else:
        modules = dict(model.named_modules())
        names = [targets] if isinstance(targets, str) else list(targets)
        unknown = [name for name in names if name not in modules]
        if unknown:
            valid = [name for name, module in modules.items() if isinstance(module, FACTORIZABLE)]
            raise ValueError(f"unknown target layers {unknown}; the model's Linear/Conv1D layers are {valid}")
        resolved = {}
        for name in names:
            module = modules[name]
            if isinstance(targets, Mapping) and targets[name] is not module:
                raise ValueError(f"targets[{name!r}] is not the module of that name inside the model")
            if not isinstance(module, FACTORIZABLE):
                raise ValueError(f"target {name!r} is a {type(module).__name__}; only Linear and Conv1D layers "
                                 "have a Fisher importance here")
            resolved[name] = module
    if not resolved:
        raise ValueError("no target layers to estimate the Fisher importance of")
    return resolved


@overload
def estimate_fisher(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, mode: Mode = ...,
                    targets: TargetSpec = ..., progress: Progress | None = ..., total: int | None = ...,
                    show_progress: bool | None = ..., statistics: Literal[False] = ...) -> dict[str, torch.Tensor]:
    ...


@overload
def estimate_fisher(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, mode: Mode = ...,
                    targets: TargetSpec = ..., progress: Progress | None = ..., total: int | None = ...,
                    show_progress: bool | None = ..., statistics: Literal[True]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, LayerStatistics]]:
    ...


def estimate_fisher(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    mode: Mode = "per_example",
    targets: TargetSpec = None,
    progress: Progress | None = None,
    total: int | None = None,
    show_progress: bool | None = None,
    statistics: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, LayerStatistics]]:
    """Fisher importance of each target layer: {name: (in_features,) float32 CPU tensor}.

    ``mode="per_example"``: Σ over examples of each example's own squared weight gradient, summed over the
    output features — what a loop over single examples computing ``weight.grad.pow(2).sum(0)`` gives (the
    loss of an example is the one the model computes for it alone: cross-entropy, MSE when
    ``num_labels == 1``, or the mean over its labelled tokens for token classification).
    ``mode="batch"``: Σ over batches of the squared gradient of the batch's mean loss (the shortcut).

    ``batches`` yield dicts of tensors the model takes, ``labels`` included. Padding (attention mask 0)
    contributes nothing. Inside an initialised ``torch.distributed`` group each rank passes its own shard
    (see :func:`fwsvd.fisher.distributed.shard_batches`); the sums are all-reduced and equal on every rank.
    ``progress(done, total)`` is called after each batch; ``total`` is the number of batches (from
    ``len(batches)`` when it has one, else the ``total`` argument, else 0 for unknown). ``show_progress``
    draws a tqdm bar (default: when no ``progress`` is given and stderr is a terminal, on rank 0).

    ``statistics=True`` returns ``(importances, {name: LayerStatistics})``: each layer's token statistics
    (:mod:`fwsvd.fisher.statistics`) from the same pass, over the same tokens, all-reduced like the Fisher;
    their output moment is over the gradient of the summed per-example loss in either mode.

    The model runs in eval mode and is returned as it was: weights, ``.grad``, ``requires_grad`` flags and
    train/eval modes untouched, hooks removed even when a batch raises.
    """
    importances, _, layer_statistics = _estimate(model, batches, mode=mode, targets=targets, progress=progress,
                                                 total=total, show_progress=show_progress, statistics=statistics)
    return (importances, layer_statistics) if statistics else importances


def load_or_estimate_fisher(
    model: nn.Module,
    batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]],
    *,
    data_id: str,
    num_examples: int,
    seed: int,
    max_length: int,
    mode: Mode = "per_example",
    batch_size: int | None = None,
    targets: TargetSpec = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    show_progress: bool | None = None,
    statistics: bool = False,
) -> FisherResult:
    """The cached Fisher importances for this model and data, computed (and cached) when absent.

    The cache key is everything that determines the result: a digest of the model's weights, the data's
    identity (``data_id``: data set and split), ``num_examples``, ``seed``, ``max_length``, ``mode`` and
    the target layers — and, in batch mode only, ``batch_size``: the shortcut squares each batch's gradient,
    so its result depends on how examples are grouped, while the exact per-example sum does not. ``batches`` is a zero-argument factory, so a cache hit never builds the data. A
    corrupt, truncated or mismatched cache file is reported (logged warning), recomputed and overwritten.
    In a ``torch.distributed`` group the factory yields this rank's shard; rank 0 reads and writes the
    cache and shares a hit with the other ranks.

    ``statistics=True`` also gives the layers' token statistics (``FisherResult.statistics``). They are
    cached with the importances, in one file under the Fisher's key plus ``"statistics"``: a Fisher cached
    without them is computed again together with them (one pass), and a request without statistics takes
    the importances of such a file when the Fisher alone was never cached.
    """
    start = time.perf_counter()
    _check_mode(mode)
    if mode == "batch" and batch_size is None:
        raise ValueError("mode='batch' depends on how examples are grouped: pass the batch_size used by batches")
    resolved = resolve_targets(model, targets)
    settings = FisherConfig(mode=mode, num_examples=num_examples, seed=seed, max_length=max_length,
                            **({} if batch_size is None else {"batch_size": batch_size}))
    provenance: dict[str, Any] = {"model_digest": model_digest(model), "data_id": data_id, **settings.key()}
    key = {"kind": "fisher", "format": CACHE_FORMAT, **provenance,
           "targets": key_digest({"names": sorted(resolved)})}
    with_statistics = {**key, "statistics": True}
    cache = TensorCache(cache_dir, namespace="fisher")
    rank, _ = rank_and_world_size()
    device = _model_device(model)

    # The Fisher alone is read from either file; statistics only from the file that holds them.
    keys = [with_statistics] if statistics else [key, with_statistics]
    path, cached = cache.path_for(keys[0]), None
    if rank == 0:
        for candidate in keys:
            cached = _read_cached(cache, candidate, resolved, statistics)
            if cached is not None:
                path = cache.path_for(candidate)
                break
    # Every rank must take the same branch, or the collectives below would wait forever.
    hit = bool(broadcast_(torch.tensor([cached is not None], dtype=torch.uint8, device=device)).item())
    if hit:
        importances = _share_from_rank0(cached[0] if cached else None, resolved, device)
        layer_statistics = _share_statistics_from_rank0(cached[1] if cached else None, resolved, device) \
            if statistics else None
        return FisherResult(importances, True, path, time.perf_counter() - start, provenance, layer_statistics)

    importances, seen, layer_statistics = _estimate(model, batches(), mode=mode, targets=resolved,
                                                    progress=progress, show_progress=show_progress,
                                                    statistics=statistics)
    if seen != num_examples:
        logger.warning("Fisher of %s was estimated over %d examples, not the %d its cache key records",
                       data_id, seen, num_examples)
    if rank == 0:
        path = (cache.put(with_statistics, {**importances, **statistics_to_tensors(layer_statistics)})
                if statistics else cache.put(key, importances))
    return FisherResult(importances, False, path, time.perf_counter() - start, provenance, layer_statistics)


def _read_cached(cache: TensorCache, key: Mapping[str, Any], targets: Mapping[str, nn.Module],
                 statistics: bool) -> tuple[dict[str, torch.Tensor], dict[str, LayerStatistics] | None] | None:
    """(importances, statistics or None) from the cache file of ``key`` if it fits ``targets`` and holds
    statistics when they are asked for; None when absent or unusable (a warning says why)."""
    tensors = cache.get(key)
    if tensors is None:
        return None
    path = cache.path_for(key)
    try:
        importances, layer_statistics = split_statistics(tensors)
    except ValueError as error:
        logger.warning("cache file %s holds invalid statistics (%s); it will be recomputed", path, error)
        return None
    if not _fits_targets(importances, targets) or (
            statistics and not _statistics_fit_targets(layer_statistics, targets)):
        logger.warning("cache file %s does not match the model's target layers; it will be recomputed", path)
        return None
    return importances, layer_statistics if statistics else None


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(each example's loss as the model computes it for that example alone, the batch's mean loss).

    Token classification (logits (B, T, C), labels (B, T)): an example's loss is the mean cross-entropy
    over its tokens labelled other than -100 (an example without any contributes 0); the batch loss is the
    mean over all labelled tokens, as transformers computes it. Sequence-level heads follow transformers'
    ``problem_type`` rule: regression (MSE) when ``num_labels == 1``, single-label cross-entropy for integer
    labels, otherwise multi-label binary cross-entropy.
    """
    batch_size = labels.shape[0]
    logits = logits.float()
    if logits.dim() == 3 and labels.dim() == 2:
        token_losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        counts = (labels != IGNORE_INDEX).sum(1)
        return token_losses.sum(1) / counts.clamp(min=1), token_losses.sum() / counts.sum().clamp(min=1)
    num_labels = logits.shape[-1]
    problem = getattr(config, "problem_type", None)
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        losses = (logits.reshape(batch_size, -1) - labels.reshape(batch_size, -1).float()).pow(2).mean(1)
    elif problem == "single_label_classification":
        losses = F.cross_entropy(logits.reshape(batch_size, num_labels), labels.reshape(batch_size),
                                 reduction="none")
    elif problem == "multi_label_classification":
        losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        losses = losses.reshape(batch_size, -1).mean(1)
    else:
        raise ValueError(f"unsupported problem_type {problem!r}; expected regression, single_label_classification "
                         "or multi_label_classification")
    return losses, losses.mean()


def batch_loss_weights(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) weights w with ``batch loss = Σ_i w_i · loss_i`` for :func:`per_example_losses`' two losses.

    Token classification averages over all labelled tokens of the batch, so an example weighs its share of
    them (0 for one without any); every other head averages over examples, 1/B each.
    """
    if logits.dim() == 3 and labels.dim() == 2:
        counts = (labels != IGNORE_INDEX).sum(1).float()
        return counts / counts.sum().clamp(min=1)
    return torch.full((labels.shape[0],), 1 / labels.shape[0], device=logits.device)


def squared_gradient_sum(inputs: torch.Tensor, output_grads: torch.Tensor,
                         keep: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i Σ_o (Σ_t g[i, t, o] · x[i, t, j])², shape (in,): per-example weight gradients of a Linear,
    squared and summed over examples i and output features o, without materialising all of them.

    ``inputs`` (B, T, in) and ``output_grads`` (B, T, out); ``keep`` (B, T) is False at tokens that must
    contribute nothing (padding).
    """
    x, g = inputs.float(), output_grads.float()
    batch_size, tokens, in_features = x.shape
    out_features = g.shape[2]
    if tokens * (in_features + out_features) <= in_features * out_features:
        # Short sequences: Σ_o G[o, j]² = Σ_t ((g gᵀ) x)[t, j] x[t, j], costing T²(in+out) per example.
        # Masking the small T×T Gram matrix drops padded tokens more cheaply than masking x.
        gram = torch.bmm(g, g.transpose(1, 2))
        if keep is not None:
            gram.mul_(keep[:, :, None] & keep[:, None, :])
        return torch.bmm(gram, x).mul_(x).sum((0, 1))
    # Long sequences: forming G = gᵀ x (out × in) is cheaper; a few examples at a time bounds the memory
    # to about the size of the layer's input.
    chunk = max(1, x.numel() // (in_features * out_features))
    total = x.new_zeros(in_features)
    for first in range(0, batch_size, chunk):
        x_part = x[first:first + chunk]
        if keep is not None:
            x_part = x_part * keep[first:first + chunk, :, None]
        grads = torch.bmm(g[first:first + chunk].transpose(1, 2), x_part)
        total += grads.pow(2).sum((0, 1))
    return total


class _GradientCapture:
    """Hooks on the target layers: the forward hook keeps a layer's input, a tensor hook on its output
    receives the output gradient during backward and folds it into the layer's running sum at once.

    A layer called several times in one forward pass (weights shared across depth, as in ALBERT) gets one
    gradient per call; the example's weight gradient is the sum over calls, so the calls' tokens are
    concatenated before squaring.

    With a ``statistics`` accumulator, the same hooks also add each call's inputs and output gradients to it,
    over the same kept tokens; without one they do nothing more.
    """

    def __init__(self, targets: Mapping[str, nn.Module], device: torch.device, per_example: bool,
                 statistics: StatisticsAccumulator | None = None) -> None:
        self.per_example = per_example
        self.statistics = statistics
        self.sums = {name: torch.zeros(dense_weight(module).shape[1], device=device)
                     for name, module in targets.items()}
        self._inputs: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
        self._grads: dict[str, dict[int, torch.Tensor]] = {name: {} for name in targets}
        self._keep: torch.Tensor | None = None
        #: (B,) factors that turn each example's output gradients into those of the summed per-example
        #: loss, for the statistics; None when the backward pass is already of that loss. Reset per batch.
        self.gradient_scale: torch.Tensor | None = None
        self._batch_size = 0
        self._handles = [module.register_forward_hook(partial(self._forward, name))
                         for name, module in targets.items()]

    def start_batch(self, batch_size: int, keep: torch.Tensor | None) -> None:
        """``keep``: the (B, T) attention mask, True where a token is real."""
        self._batch_size = batch_size
        self._keep = keep

    def end_batch(self) -> None:
        # A layer whose output never reached the loss has a zero gradient: it adds nothing.
        for name in self._inputs:
            self._inputs[name].clear()
            self._grads[name].clear()
        self._keep = None
        self.gradient_scale = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _forward(self, name: str, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        inputs = args[0].detach()
        if inputs.shape[0] != self._batch_size:
            raise ValueError(f"layer {name} sees inputs of shape {tuple(inputs.shape)}, not batch-first with "
                             f"{self._batch_size} examples; per-example Fisher needs batch-first activations")
        if not output.requires_grad:
            # The weights were frozen for the pass; a layer whose input needs no gradient (the first block's
            # projections of the embeddings) becomes a leaf of the graph so its output gradient is computed.
            output.requires_grad_()
        call = len(self._inputs[name])
        self._inputs[name].append(inputs)
        output.register_hook(partial(self._backward, name, call))
        if self.statistics is not None:
            # The layer's own input object, not a detached alias: layers fed the same tensor share its sums.
            self.statistics.add_input(name, args[0], self._call_keep(inputs))

    def _call_keep(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The kept tokens of one call's batch-first ``tensor``; None when every token is kept."""
        return None if self._keep is None else _token_keep(self._keep, tensor)

    def _backward(self, name: str, call: int, grad: torch.Tensor) -> None:
        if self.statistics is not None:
            scaled = grad
            if self.gradient_scale is not None:
                scaled = grad * self.gradient_scale.reshape(-1, *[1] * (grad.dim() - 1)).to(grad.dtype)
            self.statistics.add_output_grad(name, scaled, self._call_keep(grad))
        grads = self._grads[name]
        grads[call] = grad
        inputs = self._inputs[name]
        if len(grads) < len(inputs):
            return
        calls = range(len(inputs))
        x = _join_tokens([inputs[c] for c in calls], self._batch_size)
        g = _join_tokens([grads[c] for c in calls], self._batch_size)
        keep = None
        if self._keep is not None:
            keep = _join_tokens([_token_keep(self._keep, inputs[c]) for c in calls], self._batch_size,
                                features=False)
        if not self.per_example:
            # The batch shortcut squares the gradient of the whole batch: one "example" holding every token.
            x, g = x.reshape(1, -1, x.shape[-1]), g.reshape(1, -1, g.shape[-1])
            keep = keep.reshape(1, -1) if keep is not None else None
        self.sums[name] += squared_gradient_sum(x, g, keep)
        # Free the activations now, as a plain backward pass would.
        inputs.clear()
        grads.clear()


def _token_keep(keep: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The (B, T) attention mask where a layer's tokens are the model's input positions, else all True
    (e.g. a decoder's own positions)."""
    if inputs.dim() == 3 and inputs.shape[:2] == keep.shape:
        return keep
    return keep.new_ones(inputs.shape[:-1])


def _join_tokens(tensors: list[torch.Tensor], batch_size: int, features: bool = True) -> torch.Tensor:
    """Batch-first tensors as (B, tokens, features) — (B, tokens) for masks — joined along the tokens of
    all calls of a layer; a single call is only reshaped, not copied."""
    shaped = [t.reshape(batch_size, -1, t.shape[-1]) if features else t.reshape(batch_size, -1) for t in tensors]
    return shaped[0] if len(shaped) == 1 else torch.cat(shaped, dim=1)


def _estimate(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    mode: str,
    targets: TargetSpec,
    progress: Progress | None,
    show_progress: bool | None,
    total: int | None = None,
    statistics: bool = False,
) -> tuple[dict[str, torch.Tensor], int, dict[str, LayerStatistics] | None]:
    """estimate_fisher's work: (importances, the number of examples seen over all ranks, the statistics if
    asked for, else None)."""
    _check_mode(mode)
    resolved = resolve_targets(model, targets)
    device = _model_device(model)
    if total is None:
        total = len(batches) if hasattr(batches, "__len__") else 0
    rank, _ = rank_and_world_size()
    if show_progress is None:
        show_progress = progress is None and rank == 0 and sys.stderr.isatty()

    # The model may be shared (one per dashboard process): no other thread runs, evaluates or copies it
    # while its modes, requires_grad flags and hooks are changed here.
    with exclusive(model):
        training = [(module, module.training) for module in model.modules()]
        requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        accumulator = _statistics_accumulator(resolved, device) if statistics else None
        capture = _GradientCapture(resolved, device, per_example=mode == "per_example", statistics=accumulator)
        examples = 0
        bar = tqdm(total=total or None, desc=f"Fisher ({mode})", unit="batch", disable=not show_progress)
        try:
            model.eval()
            for parameter, _ in requires_grad:
                parameter.requires_grad_(False)
            with torch.enable_grad():
                for done, batch in enumerate(batches, start=1):
                    examples += _backward_batch(model, batch, capture, device, mode)
                    bar.update()
                    if progress is not None:
                        progress(done, total)
        finally:
            bar.close()
            capture.remove()
            for parameter, flag in requires_grad:
                parameter.requires_grad_(flag)
            for module, flag in training:
                module.training = flag

    names = list(capture.sums)
    flat = torch.cat([capture.sums[name] for name in names] + [torch.tensor([examples], device=device).float()])
    all_reduce_sum_(flat)
    examples = int(flat[-1].item())
    if examples == 0:
        raise ValueError("batches is empty: the Fisher importance needs at least one labelled example")
    sizes = [capture.sums[name].numel() for name in names]
    importances = {name: part.float().cpu() for name, part in zip(names, flat[:-1].split(sizes))}
    if accumulator is None:
        return importances, examples, None
    accumulator.all_reduce_()
    return importances, examples, accumulator.result()


def _backward_batch(model: nn.Module, batch: Mapping[str, torch.Tensor], capture: _GradientCapture,
                    device: torch.device, mode: str) -> int:
    """One forward + backward pass over a batch, reduced by the capture hooks; returns its example count."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"each batch must be a dict of model inputs including 'labels'; got {keys}")
    inputs = {name: value.to(device) if isinstance(value, torch.Tensor) else value
              for name, value in batch.items() if name != "labels"}
    labels = batch["labels"].to(device)
    if labels.numel() == 0:
        return 0
    mask = inputs.get("attention_mask")
    keep = mask.bool() if isinstance(mask, torch.Tensor) else None
    # Without padding there is nothing to mask: skip the work.
    capture.start_batch(labels.shape[0], None if keep is None or keep.all() else keep)
    try:
        outputs = model(**inputs)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        losses, batch_loss = per_example_losses(logits, labels, getattr(model, "config", None))
        if mode == "batch" and capture.statistics is not None:
            # Statistics are over the gradient of the summed per-example loss; the batch loss weighs example
            # i by w_i, and examples do not interact, so its gradients are w_i times those: divide.
            weights = batch_loss_weights(logits, labels)
            capture.gradient_scale = torch.where(weights > 0, 1 / weights, torch.zeros_like(weights))
        # Examples do not interact in eval mode, so the gradient of the summed losses holds each example's
        # own gradient in its row.
        (losses.sum() if mode == "per_example" else batch_loss).backward()
    finally:
        capture.end_batch()
    return labels.shape[0]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown Fisher mode {mode!r}; expected one of {list(MODES)}")


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _fits_targets(importances: Mapping[str, torch.Tensor], targets: Mapping[str, nn.Module]) -> bool:
    return set(importances) == set(targets) and all(
        importances[name].shape == (dense_weight(module).shape[1],) for name, module in targets.items())


def _statistics_accumulator(targets: Mapping[str, nn.Module], device: torch.device) -> StatisticsAccumulator:
    """Zero statistics of every target layer, output moments included, as every rank holds them alike."""
    return StatisticsAccumulator({name: tuple(dense_weight(module).shape) for name, module in targets.items()},
                                 device, gradients=True)


def _statistics_fit_targets(statistics: Mapping[str, LayerStatistics], targets: Mapping[str, nn.Module]) -> bool:
    return set(statistics) == set(targets) and all(
        (statistics[name].out_features, statistics[name].in_features) == tuple(dense_weight(module).shape)
        for name, module in targets.items())


def _share_statistics_from_rank0(statistics: Mapping[str, LayerStatistics] | None,
                                 targets: Mapping[str, nn.Module],
                                 device: torch.device) -> dict[str, LayerStatistics]:
    """Rank 0's cached statistics on every rank; outside a process group, rank 0's own, as they are."""
    if not is_distributed():
        return dict(statistics)
    accumulator = _statistics_accumulator(targets, device)
    if statistics is not None:
        accumulator.load_(statistics)
    accumulator.broadcast_()
    return accumulator.result()


def _share_from_rank0(importances: Mapping[str, torch.Tensor] | None, targets: Mapping[str, nn.Module],
                      device: torch.device) -> dict[str, torch.Tensor]:
    """Rank 0's cached importances on every rank (as they are outside a process group)."""
    names = list(targets)
    sizes = [dense_weight(targets[name]).shape[1] for name in names]
    if importances is not None:
        flat = torch.cat([importances[name].to(device=device, dtype=torch.float32) for name in names])
    else:
        flat = torch.zeros(sum(sizes), device=device)
    broadcast_(flat)
    return {name: part.cpu() for name, part in zip(names, flat.split(sizes))}
