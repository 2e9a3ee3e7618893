"""Seeded bootstrap-over-sentences 95% intervals of the entity F1, for bench/results_ner.py.

A stand-in until fwsvd.evaluate.uncertainty (metric_intervals / paired_differences) is on this branch: replace
``f1_interval`` and ``f1_difference`` by those. Sentences, not tokens, are resampled (a tweet's tags are not
independent draws); each resample's micro F1 is 2·TP / (predicted + gold entities) summed over its sentences,
from per-sentence counts (seqeval's entities, checked against seqeval's F1 on the whole split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0


def _counts(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> np.ndarray:
    """(sentences, 3): true positive, predicted and gold entities per sentence."""
    rows = []
    for p, g in zip(predicted, gold):
        mine, theirs = set(get_entities(list(p))), set(get_entities(list(g)))
        rows.append((len(mine & theirs), len(mine), len(theirs)))
    counts = np.asarray(rows, dtype=np.float64)
    total = counts.sum(0)
    f1 = 2 * total[0] / (total[1] + total[2]) if total[1] + total[2] else 0.0
    assert abs(f1 - f1_score(list(map(list, gold)), list(map(list, predicted)), zero_division=0)) < 1e-12
    return counts


def _resampled_f1(counts: np.ndarray, indices: np.ndarray) -> np.ndarray:
    sums = counts[indices].sum(1)  # (resamples, 3)
    denominator = sums[:, 1] + sums[:, 2]
    return np.divide(2 * sums[:, 0], denominator, out=np.zeros(len(sums)), where=denominator > 0)


def _indices(count: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, count, size=(RESAMPLES, count))


def _percentile(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def f1_interval(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the entity F1 over sentences (tags as strings)."""
    return _percentile(_resampled_f1(_counts(predicted, gold), _indices(len(gold))))


def f1_difference(predicted: Sequence[Sequence[str]], baseline: Sequence[Sequence[str]],
                  gold: Sequence[Sequence[str]]) -> tuple[float, float]:
    """The paired 95% interval of F1(predicted) − F1(baseline): the same resampled sentences for both."""
    indices = _indices(len(gold))
    return _percentile(_resampled_f1(_counts(predicted, gold), indices)
                       - _resampled_f1(_counts(baseline, gold), indices))
