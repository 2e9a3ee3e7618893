"""How sure a task metric is: a 95% interval over the examples, and a paired interval for the difference
between two models scored on the same examples.

A metric measured on n examples is one draw from what the model would score on another n. The intervals:

- a classifier's **accuracy**: the Wilson score interval (scipy's ``binomtest``), which stays inside [0, 1]
  and keeps its coverage near 0 and 1 where the normal approximation does not;
- **every other metric** (F1, MCC, Pearson / Spearman, NER's entity F1 and token accuracy): the percentile
  bootstrap over examples — over *sentences* for NER, whose tokens are not independent draws — seeded, so the
  same predictions always give the same interval;
- the **difference** metric(a) − metric(b) of two models on the same examples: the paired bootstrap, the same
  resampled examples for both, so that what the two share (the hard examples) cancels. A difference whose
  interval holds 0 is inside the noise, and :attr:`Difference.verdict` says so.

A resample's classification and NER metrics are computed from per-example counts: its confusion matrix (NER:
entity and token counts) is a weighted sum of each example's, so a thousand resamples cost one matrix product
rather than a thousand calls to scikit-learn or seqeval. The counts reproduce :func:`compute_metrics` exactly
(tests/test_uncertainty.py). Regression resamples call scipy.

A task kind this module has no per-example rule for gets no intervals (an empty dict), not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest
from seqeval.metrics.sequence_labeling import get_entities

from fwsvd.data.batches import IGNORE_INDEX
from fwsvd.data.tasks import Task
from fwsvd.evaluate.metrics import _regression_metrics, compute_metrics

#: Coverage of every interval unless asked otherwise.
LEVEL = 0.95
#: Bootstrap resamples: the 2.5% and 97.5% quantiles of 1,000 move by about 0.1 standard error between seeds.
RESAMPLES = 1000
SEED = 0

ArrayLike = Sequence | np.ndarray


@dataclass(frozen=True)
class Interval:
    """A ``level`` interval [low, high] for a metric; ``method`` is "wilson" or "bootstrap"."""

    low: float
    high: float
    method: str
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "method": self.method, "level": self.level}


@dataclass(frozen=True)
class Difference:
    """metric(a) − metric(b) on the same examples (``value``), with its paired bootstrap interval."""

    value: float
    interval: Interval

    @property
    def inside_noise(self) -> bool:
        """True when the interval holds 0: the examples do not tell the two models apart on this metric."""
        return self.interval.contains(0.0)

    @property
    def verdict(self) -> str:
        """"inside the noise", "higher" or "lower" (a beyond the noise of b)."""
        if self.inside_noise or np.isnan(self.value):
            return "inside the noise"
        return "higher" if self.value > 0 else "lower"

    def text(self, digits: int = 3) -> str:
        """E.g. "+0.031 (95% interval +0.012 to +0.050)" or "+0.004 (95% interval -0.010 to +0.018): inside
        the noise"."""
        level = f"{self.interval.level:.0%}"
        shown = (f"{self.value:+.{digits}f} ({level} interval {self.interval.low:+.{digits}f} to "
                 f"{self.interval.high:+.{digits}f})")
        return f"{shown}: inside the noise" if self.inside_noise else shown

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, **self.interval.to_dict(), "inside_noise": self.inside_noise,
                "verdict": self.verdict}


def metric_intervals(task: Task, predictions: ArrayLike, references: ArrayLike, *, level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Interval]:
    """``{metric: Interval}`` for every name in ``task.metric_names``, from the predictions and references
    :func:`compute_metrics` takes (one sequence per sentence for NER)."""
    _check_level(level)
    if task.kind not in _KINDS:
        return {}
    samples = _resampled(task, predictions, references, _indices(len(references), resamples, seed))
    intervals = {}
    for name in task.metric_names:
        if name == "accuracy" and task.kind == "classification":
            intervals[name] = _wilson(_class_ids(predictions), np.asarray(references).reshape(-1), level)
        else:
            intervals[name] = _percentile(samples[name], level)
    return intervals


def paired_differences(task: Task, predictions: ArrayLike, baseline: ArrayLike, references: ArrayLike, *,
                       level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = SEED) -> dict[str, Difference]:
    """``{metric: Difference}``: the metric of ``predictions`` minus that of ``baseline``, both on
    ``references`` (the same examples), with the paired bootstrap interval: each resample draws one set of
    examples and scores both models on it."""
    _check_level(level)
    if len(predictions) != len(baseline):
        raise ValueError(f"a paired comparison needs the same examples: {len(predictions)} predictions against "
                         f"{len(baseline)} of the baseline")
    if task.kind not in _KINDS:
        return {}
    indices = _indices(len(references), resamples, seed)
    ours, theirs = (_resampled(task, predictions, references, indices),
                    _resampled(task, baseline, references, indices))
    values = compute_metrics(task, predictions, references)
    base = compute_metrics(task, baseline, references)
    return {name: Difference(values[name] - base[name], _percentile(ours[name] - theirs[name], level))
            for name in task.metric_names}


def metric_columns(metrics: Mapping[str, float], intervals: Mapping[str, Interval],
                   differences: Mapping[str, Mapping[str, Difference] | None]) -> dict[str, Any]:
    """Flat table columns for one model: per metric ``m``, ``m``, ``m_low``, ``m_high`` (NaN without an
    interval), and per baseline ``b`` in ``differences`` ({baseline: {metric: Difference} or None}):
    ``m_vs_b``, ``m_vs_b_low``, ``m_vs_b_high`` and ``m_vs_b_verdict`` ("inside the noise", "higher",
    "lower"; None without a comparison)."""
    nan = float("nan")
    columns: dict[str, Any] = {}
    for name, value in metrics.items():
        interval = intervals.get(name)
        columns.update({name: value, f"{name}_low": interval.low if interval else nan,
                        f"{name}_high": interval.high if interval else nan})
        for baseline, compared in differences.items():
            found = (compared or {}).get(name)
            columns.update({f"{name}_vs_{baseline}": found.value if found else nan,
                            f"{name}_vs_{baseline}_low": found.interval.low if found else nan,
                            f"{name}_vs_{baseline}_high": found.interval.high if found else nan,
                            f"{name}_vs_{baseline}_verdict": found.verdict if found else None})
    return columns


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must be in (0, 1), got {level}")


def _indices(count: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, count) example indices drawn with replacement."""
    if count < 1:
        raise ValueError("an interval needs at least one example")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def _weights(indices: np.ndarray, count: int) -> np.ndarray:
    """(resamples, count): how many times each example was drawn in each resample."""
    rows = np.arange(len(indices))[:, None] * count
    return np.bincount((rows + indices).ravel(), minlength=len(indices) * count).reshape(len(indices), count)


def _percentile(samples: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    if np.all(np.isnan(samples)):
        return Interval(float("nan"), float("nan"), "bootstrap", level)
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return Interval(float(low), float(high), "bootstrap", level)


def _wilson(predictions: np.ndarray, references: np.ndarray, level: float) -> Interval:
    found = binomtest(int((predictions == references).sum()), len(references)).proportion_ci(level, "wilson")
    return Interval(float(found.low), float(found.high), "wilson", level)


def _resampled(task: Task, predictions: ArrayLike, references: ArrayLike,
               indices: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: (resamples,) values} on each resample of the examples."""
    if task.kind == "regression":
        predicted = np.asarray(predictions, dtype=np.float64).reshape(-1)
        reference = np.asarray(references, dtype=np.float64).reshape(-1)
        rows = [_regression_metrics(predicted[row], reference[row]) for row in indices]
        return {name: np.array([row[name] for row in rows]) for name in ("pearson", "spearman")}
    counts, from_sums = _KINDS[task.kind](task, predictions, references)
    # In blocks of resamples: a (resamples × examples) weight matrix at once is large for big test sets.
    blocks = np.array_split(indices, max(1, len(indices) // 100))
    return from_sums(np.concatenate([_weights(block, len(counts)) @ counts for block in blocks]))


def _class_ids(predictions: ArrayLike) -> np.ndarray:
    array = np.asarray(predictions)
    return array.argmax(-1) if array.ndim == 2 else array.reshape(-1)


def _classification_counts(task: Task, predictions: ArrayLike, references: ArrayLike):
    """One row per example: its one-hot cell of the confusion matrix (reference row, predicted column)."""
    predicted, reference = _class_ids(predictions), np.asarray(references).reshape(-1).astype(np.int64)
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions but {len(reference)} references")
    classes = int(max(task.num_labels, predicted.max(initial=0) + 1, reference.max(initial=0) + 1))
    # F1 (of the positive class) exists only where compute_metrics defines it: two classes seen.
    binary = max(predicted.max(initial=0), reference.max(initial=0)) <= 1
    counts = np.zeros((len(reference), classes * classes))
    counts[np.arange(len(reference)), reference * classes + predicted] = 1.0

    def from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
        return _confusion_metrics(sums.reshape(-1, classes, classes), binary)

    return counts, from_sums


def _confusion_metrics(confusion: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    """accuracy, MCC (scikit-learn's multiclass formula) and positive-class F1 of (resamples, K, K) matrices."""
    total = confusion.sum(axis=(1, 2))
    correct = np.trace(confusion, axis1=1, axis2=2)
    true, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    covariance = correct * total - (true * predicted).sum(axis=1)
    scale = np.sqrt((total**2 - (predicted**2).sum(axis=1)) * (total**2 - (true**2).sum(axis=1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {"accuracy": correct / total,
                  "matthews_correlation": np.where(scale > 0, covariance / scale, 0.0)}
        if binary:
            hits = confusion[:, 1, 1]
            denominator = 2 * hits + confusion[:, 0, 1] + confusion[:, 1, 0]
            values["f1"] = np.where(denominator > 0, 2 * hits / denominator, 0.0)
    return values


def _ner_counts(task: Task, predictions: ArrayLike, references: ArrayLike):
    """One row per sentence: entities right, predicted, true (seqeval's default matching), tokens right, tokens.

    seqeval's micro scores are ratios of these sums over sentences, so a resample's scores are too."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} references")
    names = task.label_names
    counts = np.zeros((len(references), 5))
    for row, (predicted, reference) in enumerate(zip(predictions, references)):
        predicted, reference = _class_ids(predicted), np.asarray(reference).reshape(-1)
        keep = reference != IGNORE_INDEX
        predicted_tags, reference_tags = [names[i] for i in predicted[keep]], [names[i] for i in reference[keep]]
        found, true = set(get_entities(predicted_tags)), set(get_entities(reference_tags))
        counts[row] = (len(found & true), len(found), len(true),
                       sum(p == r for p, r in zip(predicted_tags, reference_tags)), len(reference_tags))
    return counts, _ner_metrics


def _ner_metrics(sums: np.ndarray) -> dict[str, np.ndarray]:
    hits, found, true, right, tokens = sums.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": np.where(found > 0, hits / found, 0.0),
                "recall": np.where(true > 0, hits / true, 0.0),
                "f1": np.where(found + true > 0, 2 * hits / (found + true), 0.0),
                "accuracy": right / tokens}


#: Per-example counts and the metrics read off their sums, per task kind (regression resamples call scipy).
_KINDS = {"classification": _classification_counts, "token_classification": _ner_counts, "regression": None}
