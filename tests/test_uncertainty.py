"""Intervals of task metrics and paired intervals of differences: exact figures and brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from fwsvd.data.tasks import Task
from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.evaluate.uncertainty import (Difference, Interval, _indices, _resampled, metric_columns,
                                        metric_intervals, paired_differences)


def _task(kind: str, metrics: tuple[str, ...], num_labels: int = 2, label_names=None) -> Task:
    return Task(name="t", kind=kind, text_column="text", label_column="label", text_pair_column=None,
                num_labels=num_labels, label_names=label_names, metric_names=metrics, source="local")


BINARY = _task("classification", ("accuracy", "f1", "matthews_correlation"))
NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
NER = _task("token_classification", ("f1", "precision", "recall", "accuracy"), 5, NER_TAGS)


def _ner_data(rng: np.random.Generator, sentences: int = 30):
    references = [rng.integers(0, 5, size=rng.integers(1, 9)) for _ in range(sentences)]
    predictions = [np.where(rng.random(len(r)) < 0.7, r, rng.integers(0, 5, size=len(r))) for r in references]
    # a -100 position, skipped like padding
    references[0] = np.append(references[0], -100)
    predictions[0] = np.append(predictions[0], 0)
    return predictions, references


def test_wilson_interval_of_accuracy_exact():
    # 8 right of 10: Wilson's score interval (no continuity correction) is (0.49016, 0.94332).
    references = np.array([1, 0] * 5)
    predictions = references.copy()
    predictions[:2] = 1 - predictions[:2]
    interval = metric_intervals(BINARY, predictions, references)["accuracy"]
    assert interval.method == "wilson" and interval.level == 0.95
    assert (interval.low, interval.high) == pytest.approx((0.4901624715366418, 0.9433178485456248), abs=1e-12)
    wider = metric_intervals(BINARY, predictions, references, level=0.99)["accuracy"]
    assert wider.low < interval.low and wider.high > interval.high


@pytest.mark.parametrize("task, classes", [(BINARY, 2), (_task("classification", ("accuracy", "matthews_correlation"), 3), 3)])
def test_resampled_counts_reproduce_compute_metrics(task, classes):
    rng = np.random.default_rng(1)
    references = rng.integers(0, classes, size=40)
    predictions = np.where(rng.random(40) < 0.6, references, rng.integers(0, classes, size=40))
    indices = _indices(40, 25, seed=3)
    resampled = _resampled(task, predictions, references, indices)
    for row, drawn in enumerate(indices):
        expected = compute_metrics(task, predictions[drawn], references[drawn])
        assert {name: resampled[name][row] for name in expected} == pytest.approx(expected, abs=1e-12)


def test_ner_counts_reproduce_seqeval():
    rng = np.random.default_rng(2)
    predictions, references = _ner_data(rng)
    indices = _indices(len(references), 20, seed=4)
    resampled = _resampled(NER, predictions, references, indices)
    for row, drawn in enumerate(indices):
        expected = compute_metrics(NER, [predictions[i] for i in drawn], [references[i] for i in drawn])
        assert {name: resampled[name][row] for name in expected} == pytest.approx(expected, abs=1e-12)


def test_bootstrap_interval_is_the_percentile_of_resampled_metrics():
    rng = np.random.default_rng(5)
    references = rng.integers(0, 2, size=60)
    predictions = np.where(rng.random(60) < 0.7, references, 1 - references)
    intervals = metric_intervals(BINARY, predictions, references, resamples=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 60, size=(200, 60))
    for name in ("f1", "matthews_correlation"):
        values = [compute_metrics(BINARY, predictions[d], references[d])[name] for d in draws]
        assert (intervals[name].low, intervals[name].high) == pytest.approx(np.percentile(values, [2.5, 97.5]))
        assert intervals[name].method == "bootstrap"
        value = compute_metrics(BINARY, predictions, references)[name]
        assert intervals[name].contains(value)
    assert metric_intervals(BINARY, predictions, references, resamples=200, seed=7) == intervals  # seeded


def test_regression_intervals_resample_pairs():
    task = _task("regression", ("pearson", "spearman"), 1)
    rng = np.random.default_rng(6)
    references = rng.normal(size=30)
    predictions = references + rng.normal(scale=0.5, size=30)
    intervals = metric_intervals(task, predictions, references, resamples=50, seed=0)
    draws = np.random.default_rng(0).integers(0, 30, size=(50, 30))
    pearson = [pearsonr(predictions[d], references[d])[0] for d in draws]
    spearman = [spearmanr(predictions[d], references[d])[0] for d in draws]
    assert (intervals["pearson"].low, intervals["pearson"].high) == pytest.approx(np.percentile(pearson, [2.5, 97.5]))
    assert (intervals["spearman"].low, intervals["spearman"].high) == pytest.approx(
        np.percentile(spearman, [2.5, 97.5]))


def test_identical_models_differ_by_exactly_zero_inside_the_noise():
    rng = np.random.default_rng(8)
    references = rng.integers(0, 2, size=50)
    predictions = rng.integers(0, 2, size=50)
    for name, found in paired_differences(BINARY, predictions, predictions.copy(), references).items():
        assert found.value == 0.0 and (found.interval.low, found.interval.high) == (0.0, 0.0), name
        assert found.inside_noise and found.verdict == "inside the noise"
        assert found.text() == "+0.000 (95% interval +0.000 to +0.000): inside the noise"


def test_paired_bootstrap_on_hand_made_predictions():
    # 20 examples; A is right on all, B wrong on the first 5: accuracy 1.0 against 0.75.
    references = np.array([0, 1] * 10)
    ours = references.copy()
    theirs = references.copy()
    theirs[:5] = 1 - theirs[:5]
    found = paired_differences(BINARY, ours, theirs, references, resamples=300, seed=11)["accuracy"]
    assert found.value == pytest.approx(0.25)
    # brute force: each resample's difference is the share of drawn examples among the first 5
    draws = np.random.default_rng(11).integers(0, 20, size=(300, 20))
    expected = np.percentile((draws < 5).mean(axis=1), [2.5, 97.5])
    assert (found.interval.low, found.interval.high) == pytest.approx(expected)
    assert found.interval.low > 0 and not found.inside_noise and found.verdict == "higher"
    reverse = paired_differences(BINARY, theirs, ours, references, resamples=300, seed=11)["accuracy"]
    assert reverse.value == pytest.approx(-0.25) and reverse.verdict == "lower"
    assert (reverse.interval.low, reverse.interval.high) == pytest.approx((-expected[1], -expected[0]))


def test_one_flip_in_many_is_inside_the_noise():
    references = np.array([0, 1] * 100)
    ours, theirs = references.copy(), references.copy()
    theirs[0] = 1
    found = paired_differences(_task("classification", ("accuracy",)), ours, theirs, references)["accuracy"]
    assert found.value == pytest.approx(0.005) and found.inside_noise


def test_paired_ner_uses_the_same_sentences():
    predictions, references = _ner_data(np.random.default_rng(9))
    same = paired_differences(NER, predictions, list(predictions), references)
    assert all(found.value == 0 and found.inside_noise for found in same.values())
    with pytest.raises(ValueError, match="same examples"):
        paired_differences(NER, predictions, predictions[:-1], references)


def test_unknown_kind_and_bad_level():
    task = _task("causal_lm", ("perplexity",), 0)
    assert metric_intervals(task, [1.0], [1.0]) == {} and paired_differences(task, [1.0], [1.0], [1.0]) == {}
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        metric_intervals(BINARY, [1], [1], level=95)


def test_json_and_columns():
    found = Difference(0.02, Interval(-0.01, 0.05, "bootstrap"))
    as_dict = json.loads(json.dumps(found.to_dict()))
    assert as_dict == {"value": 0.02, "low": -0.01, "high": 0.05, "method": "bootstrap", "level": 0.95,
                       "inside_noise": True, "verdict": "inside the noise"}
    columns = metric_columns({"accuracy": 0.8}, {"accuracy": Interval(0.7, 0.9, "wilson")},
                             {"svd": {"accuracy": found}, "dense": None})
    assert columns["accuracy_low"] == 0.7 and columns["accuracy_vs_svd_verdict"] == "inside the noise"
    assert np.isnan(columns["accuracy_vs_dense"]) and columns["accuracy_vs_dense_verdict"] is None
