"""Perplexity of a causal language model: exp of the mean next-token loss over every evaluated token, with a
bootstrap interval over blocks.

Each block contributes its summed token loss and its number of predicted tokens; the perplexity pools them
(Σ loss / Σ tokens), so it is that of all tokens, not a mean of per-block perplexities. Blocks, not tokens, are
resampled for the interval: neighbouring tokens share their context and are not independent draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fwsvd.data.batches import IGNORE_INDEX
from fwsvd.data.language_modeling import PERPLEXITY
from fwsvd.evaluate.uncertainty import Difference, Interval

#: Bootstrap settings: enough resamples that the 95% bounds move by well under their own width between seeds.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

BlockLoss = tuple[float, int]


def block_losses(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list[BlockLoss]:
    """(summed next-token loss, predicted tokens) of each block of a batch; ``batch["labels"]`` holds each
    position's next token (-100 where nothing is predicted), as :func:`fwsvd.data.batches.make_batches`
    makes them.

    One block at a time, so that the loss's temporaries are one block's logits rather than two more copies of
    the batch's, and in float64: a float32 log-softmax over SmolLM2's 49,152 logits was 0.03 off in a block's
    summed loss of 800 (float64 reference), which moved the perplexity in its fifth digit."""
    labels = batch["labels"].to(logits.device)
    sums = [F.cross_entropy(block.double(), block_labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
            for block, block_labels in zip(logits, labels)]
    counts = (labels != IGNORE_INDEX).sum(1).cpu().tolist()
    return list(zip(sums, counts))


def perplexity(blocks: Sequence[BlockLoss]) -> float:
    """exp(Σ loss / Σ tokens) over ``blocks``."""
    loss, tokens = _totals(np.asarray(blocks, dtype=np.float64).reshape(-1, 2))
    if tokens <= 0:
        raise ValueError("no predicted tokens to compute a perplexity over")
    return math.exp(loss / tokens)


def perplexity_interval(blocks: Sequence[BlockLoss], *, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The percentile bootstrap interval of :func:`perplexity` over blocks drawn with replacement (seeded,
    so the same blocks give the same interval). One block gives no spread: the interval is its perplexity."""
    array = _blocks(blocks)
    values = _resampled_perplexities(array, _draws(len(array), resamples, seed))
    return _percentile_interval(values, confidence)


def perplexity_difference(blocks: Sequence[BlockLoss], baseline: Sequence[BlockLoss], *,
                          confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> Difference:
    """perplexity(blocks) − perplexity(baseline) on the same blocks, with the paired bootstrap interval: each
    resample draws the same blocks for both models, so what they share (hard passages) cancels."""
    ours, theirs = _paired(blocks, baseline)
    draws = _draws(len(ours), resamples, seed)
    values = _resampled_perplexities(ours, draws) - _resampled_perplexities(theirs, draws)
    return Difference(perplexity(blocks) - perplexity(baseline), _percentile_interval(values, confidence))


def perplexity_ratio(blocks: Sequence[BlockLoss], reference: Sequence[BlockLoss], *,
                     confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(ratio, low, high): ``perplexity(blocks) / perplexity(reference)`` for two models scored on the same
    blocks, with the paired bootstrap interval. Perplexities of compressed models span orders of magnitude, so
    reports compare them by ratio; an interval that excludes 1 is a difference outside the noise."""
    ours, theirs = _paired(blocks, reference)
    draws = _draws(len(ours), resamples, seed)
    interval = _percentile_interval(_resampled_perplexities(ours, draws) / _resampled_perplexities(theirs, draws),
                                    confidence)
    return perplexity(blocks) / perplexity(reference), interval.low, interval.high


def perplexity_metrics(blocks: Sequence[BlockLoss]) -> tuple[dict[str, float], dict[str, Interval]]:
    """({"perplexity": value}, {"perplexity": Interval}): the metric and its 95% bootstrap interval."""
    return {PERPLEXITY: perplexity(blocks)}, {PERPLEXITY: perplexity_interval(blocks)}


def _blocks(blocks: Sequence[BlockLoss]) -> np.ndarray:
    array = np.asarray(blocks, dtype=np.float64).reshape(-1, 2)
    if len(array) == 0:
        raise ValueError("no blocks to compute a perplexity interval over")
    return array


def _paired(blocks: Sequence[BlockLoss], baseline: Sequence[BlockLoss]) -> tuple[np.ndarray, np.ndarray]:
    ours, theirs = _blocks(blocks), _blocks(baseline)
    if len(ours) != len(theirs) or not np.array_equal(ours[:, 1], theirs[:, 1]):
        raise ValueError(f"a paired comparison needs the same blocks: these evaluations were scored on different "
                         f"ones ({len(ours)} and {len(theirs)} blocks)")
    return ours, theirs


def _draws(count: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def _resampled_perplexities(array: np.ndarray, draws: np.ndarray) -> np.ndarray:
    return np.exp(array[:, 0][draws].sum(1) / np.maximum(array[:, 1][draws].sum(1), 1))


def _percentile_interval(values: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(float(low), float(high), "bootstrap", confidence)


def _totals(array: np.ndarray) -> tuple[float, float]:
    return float(array[:, 0].sum()), float(array[:, 1].sum())
