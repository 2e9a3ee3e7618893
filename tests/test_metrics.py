"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.data.tasks import Task, get_task

# predictions vs references: TP = 2 (rows 0, 4), FP = 1 (row 1), FN = 1 (row 3), TN = 1 (row 2)
PREDICTED = [1, 1, 0, 0, 1]
REFERENCE = [1, 0, 0, 1, 1]


def test_mrpc_f1_and_accuracy():
    metrics = compute_metrics(get_task("mrpc"), PREDICTED, REFERENCE)
    # precision = recall = 2/3, so F1 = 2/3; accuracy = 3/5
    assert list(metrics) == ["f1", "accuracy"]
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 5)


def test_cola_matthews_correlation():
    metrics = compute_metrics(get_task("cola"), PREDICTED, REFERENCE)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert metrics == {"matthews_correlation": pytest.approx(1 / 6)}


def test_logits_are_arg_maxed():
    logits = np.array([[0.1, 0.9], [-1.0, 2.0], [3.0, 0.0], [0.5, 0.4], [0.0, 0.1]])
    assert compute_metrics(get_task("sst2"), logits, REFERENCE) == {"accuracy": pytest.approx(3 / 5)}


def test_stsb_pearson_and_spearman():
    predicted, reference = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0]
    metrics = compute_metrics(get_task("stsb"), predicted, reference)
    # Pearson by hand: deviations (-1.5, -.5, .5, 1.5) and (-3.25, -1.25, .75, 3.75)
    covariance = 1.5 * 3.25 + 0.5 * 1.25 + 0.5 * 0.75 + 1.5 * 3.75
    expected = covariance / math.sqrt((2 * 1.5**2 + 2 * 0.5**2) * (3.25**2 + 1.25**2 + 0.75**2 + 3.75**2))
    assert metrics["pearson"] == pytest.approx(expected)
    assert metrics["spearman"] == pytest.approx(1.0)  # same order


def test_constant_regression_predictions_give_nan():
    metrics = compute_metrics(get_task("stsb"), [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(metrics["pearson"]) and math.isnan(metrics["spearman"])


def test_ner_is_entity_level_and_skips_ignored_positions():
    task = get_task("conll2003")
    tag = {name: i for i, name in enumerate(task.label_names)}
    # gold: [John Smith]PER lives in [Paris]LOC ; predicted misses Paris, and the -100 positions
    # (special tokens, later word pieces) hold garbage that must not count.
    reference = [[-100, tag["B-PER"], tag["I-PER"], tag["O"], tag["O"], tag["B-LOC"], -100]]
    predicted = [[tag["B-LOC"], tag["B-PER"], tag["I-PER"], tag["O"], tag["O"], tag["O"], tag["B-ORG"]]]
    metrics = compute_metrics(task, predicted, reference)
    # 1 entity predicted, correct; 2 gold entities: P = 1, R = 1/2, F1 = 2/3; tokens 4 of 5 right
    assert metrics == {"f1": pytest.approx(2 / 3), "precision": pytest.approx(1.0),
                       "recall": pytest.approx(0.5), "accuracy": pytest.approx(4 / 5)}


def test_ner_takes_ragged_sentences_and_logits():
    task = get_task("conll2003")
    b_per, o = task.label_names.index("B-PER"), task.label_names.index("O")
    logits_1 = np.eye(9)[[b_per, o]]       # (2 tokens, 9 tags)
    logits_2 = np.eye(9)[[o, o, b_per]]    # (3 tokens, 9 tags)
    metrics = compute_metrics(task, [logits_1, logits_2], [[b_per, o], [o, o, o]])
    # 2 predicted entities, 1 right, 1 gold: P = 1/2, R = 1, F1 = 2/3
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(2 / 3)


def test_local_classification_reports_accuracy():
    task = Task(name="local", kind="classification", text_column="t", label_column="l", text_pair_column=None,
                num_labels=3, label_names=None, metric_names=("accuracy",), source="local")
    assert compute_metrics(task, [0, 2, 1, 2], [0, 2, 2, 2]) == {"accuracy": 0.75}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics(get_task("sst2"), [0, 1, 1], [0, 1])
