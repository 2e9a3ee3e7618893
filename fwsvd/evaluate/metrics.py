"""A task's metrics, computed offline with scikit-learn, scipy and seqeval.

``evaluate``'s metric scripts (accuracy, f1, matthews_correlation, glue, seqeval) are fetched from the
Hugging Face hub at load time, so they fail without it; these libraries compute the same GLUE and
CoNLL-2003 figures locally. Names follow the GLUE conventions: accuracy, f1 (of the positive class),
matthews_correlation, pearson, spearman; for NER, entity-level micro precision / recall / f1 (seqeval)
and token accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import accuracy_score as seq_accuracy
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_precision
from seqeval.metrics import recall_score as seq_recall
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fwsvd.data.batches import IGNORE_INDEX
from fwsvd.data.tasks import Task

ArrayLike = Sequence | np.ndarray


_LABELS = {"accuracy": "accuracy", "f1": "F1 (positive class)", "matthews_correlation": "Matthews correlation",
           "pearson": "Pearson correlation", "spearman": "Spearman correlation"}
_NER_LABELS = {"f1": "entity-level F1 (seqeval)", "precision": "entity-level precision (seqeval)",
               "recall": "entity-level recall (seqeval)", "accuracy": "token accuracy"}


def metric_label(kind: str, name: str) -> str:
    """What metric ``name`` of a task of ``kind`` is, for people: an NER "f1" is the entity-level F1 of seqeval,
    not a token's; the short names stay the keys that results and scripts use."""
    labels = _NER_LABELS if kind == "token_classification" else _LABELS
    return labels.get(name, name)


def metric_note(kind: str, metrics: dict[str, float]) -> str | None:
    """A word on figures that read as a failure of the tool rather than of the model: an entity-level F1 of 0
    with precision 0 means the model found no entity of the data."""
    if kind == "token_classification" and metrics.get("f1") == 0.0 and metrics.get("precision") == 0.0:
        return "no entities found: none of the entities the model marks is in the data (precision 0)"
    return None


def compute_metrics(task: Task, predictions: ArrayLike, references: ArrayLike) -> dict[str, float]:
    """``{metric: value}`` for every name in ``task.metric_names``.

    ``predictions``: class ids, or logits (a trailing class axis is arg-maxed); regression scores.
    For NER, one sequence of tag ids (or logits) per sentence, aligned with ``references``, whose -100
    positions are skipped; sequences may differ in length.
    """
    if task.kind == "token_classification":
        values = _ner_metrics(task, predictions, references)
    elif task.kind == "regression":
        values = _regression_metrics(np.asarray(predictions, dtype=np.float64).reshape(-1),
                                     np.asarray(references, dtype=np.float64).reshape(-1))
    else:
        values = _classification_metrics(_class_ids(predictions), np.asarray(references).reshape(-1),
                                         _positive_id(task))
    return {name: values[name] for name in task.metric_names}


def _class_ids(predictions: ArrayLike) -> np.ndarray:
    array = np.asarray(predictions)
    return array.argmax(-1) if array.ndim == 2 else array.reshape(-1)


def _positive_id(task: Task) -> int:
    """The id of the positive class: the data's label 1 (MRPC's equivalent, QQP's duplicate), which a model
    whose labels were matched by name may number otherwise (:func:`fwsvd.data.labels.match_labels`)."""
    if task.data_label_names is None or len(task.data_label_names) != 2:
        return 1
    name = task.data_label_names[1]
    return task.label_names.index(dict(task.label_map).get(name, name))


def _classification_metrics(predictions: np.ndarray, references: np.ndarray,
                            positive: int = 1) -> dict[str, float]:
    _check_lengths(predictions, references)
    values = {
        "accuracy": float(accuracy_score(references, predictions)),
        "matthews_correlation": float(matthews_corrcoef(references, predictions)),
    }
    if max(predictions.max(initial=0), references.max(initial=0)) <= 1:
        # GLUE's F1 (MRPC, QQP) is that of the positive class; undefined beyond two classes.
        values["f1"] = float(f1_score(references, predictions, pos_label=positive, zero_division=0.0))
    return values


def _regression_metrics(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    _check_lengths(predictions, references)
    # Correlation of a constant is undefined: report nan rather than let scipy warn and do the same.
    if len(predictions) < 2 or np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearsonr(predictions, references)[0]),
            "spearman": float(spearmanr(predictions, references)[0])}


def _ner_metrics(task: Task, predictions: ArrayLike, references: ArrayLike) -> dict[str, float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} references")
    names = task.label_names
    predicted_tags, reference_tags = [], []
    for predicted, reference in zip(predictions, references):
        predicted, reference = _class_ids(predicted), np.asarray(reference).reshape(-1)
        _check_lengths(predicted, reference)
        keep = reference != IGNORE_INDEX
        predicted_tags.append([names[i] for i in predicted[keep]])
        reference_tags.append([names[i] for i in reference[keep]])
    return {
        "f1": float(seq_f1(reference_tags, predicted_tags, zero_division=0)),
        "precision": float(seq_precision(reference_tags, predicted_tags, zero_division=0)),
        "recall": float(seq_recall(reference_tags, predicted_tags, zero_division=0)),
        "accuracy": float(seq_accuracy(reference_tags, predicted_tags)),
    }


def _check_lengths(predictions: np.ndarray, references: np.ndarray) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
