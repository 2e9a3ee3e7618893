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

#: Bootstrap settings: enough resamples that the 95% bounds move by well under their own width between seeds.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

BlockLoss = tuple[float, int]


def block_losses(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> list[BlockLoss]:
    """(summed next-token loss, predicted tokens) of each block of a batch; ``batch["labels"]`` holds each
    position's next token (-100 where nothing is predicted), as :func:`fwsvd.data.batches.make_batches`
    makes them. Summed in float64 so that long evaluations lose no precision."""
    labels = batch["labels"].to(logits.device)
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    sums = losses.double().sum(1).cpu().tolist()
    counts = (labels != IGNORE_INDEX).sum(1).cpu().tolist()
    return list(zip(sums, counts))


def perplexity(blocks: Sequence[BlockLoss]) -> float:
    """exp(Σ loss / Σ tokens) over ``blocks``."""
    loss, tokens = _totals(np.asarray(blocks, dtype=np.float64).reshape(-1, 2))
    if tokens <= 0:
        raise ValueError("no predicted tokens to compute a perplexity over")
    return math.exp(loss / tokens)


def perplexity_interval(blocks: Sequence[BlockLoss], *, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The percentile bootstrap interval of :func:`perplexity` over blocks drawn with replacement (seeded,
    so the same blocks give the same interval). One block gives no spread: the interval is its perplexity."""
    array = np.asarray(blocks, dtype=np.float64).reshape(-1, 2)
    if len(array) == 0:
        raise ValueError("no blocks to compute a perplexity interval over")
    draws = np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))
    loss = array[:, 0][draws].sum(1)
    tokens = array[:, 1][draws].sum(1)
    values = np.exp(loss / np.maximum(tokens, 1))
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def perplexity_ratio(blocks: Sequence[BlockLoss], reference: Sequence[BlockLoss], *,
                     confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(ratio, low, high): ``perplexity(blocks) / perplexity(reference)`` for two models scored on the **same**
    blocks, with a paired bootstrap interval (each resample draws the same blocks for both). Two models'
    own intervals overlap far more than their difference is uncertain, since the blocks' difficulty moves
    both alike; an interval of the ratio that excludes 1 is a difference outside the noise."""
    ours = np.asarray(blocks, dtype=np.float64).reshape(-1, 2)
    theirs = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    if ours.shape != theirs.shape or not np.array_equal(ours[:, 1], theirs[:, 1]):
        raise ValueError("a paired comparison needs both models scored on the same blocks")
    draws = np.random.default_rng(seed).integers(0, len(ours), size=(resamples, len(ours)))
    tokens = np.maximum(ours[:, 1][draws].sum(1), 1)
    ratios = np.exp((ours[:, 0][draws].sum(1) - theirs[:, 0][draws].sum(1)) / tokens)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return perplexity(blocks) / perplexity(reference), float(low), float(high)


def perplexity_metrics(blocks: Sequence[BlockLoss]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """({"perplexity": value}, {"perplexity": (low, high)}): the metric and its 95% bootstrap interval."""
    return {PERPLEXITY: perplexity(blocks)}, {PERPLEXITY: perplexity_interval(blocks)}


def _totals(array: np.ndarray) -> tuple[float, float]:
    return float(array[:, 0].sum()), float(array[:, 1].sum())
