"""Local data files: reading CSV / TSV / JSON(L) / parquet, inferring their labels, carving the roles
train / validation / test out of one file with a seed, and the content digest that names a file's data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

TaskKind = Literal["classification", "regression", "token_classification"]
Role = Literal["train", "validation", "test"]
ROLES: tuple[str, ...] = ("train", "validation", "test")

_LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _resolve_files(data_files: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
                   formats: tuple[str, ...] = tuple(_LOCAL_FORMATS), what: str = "data file") -> dict[str, str]:
    """{role: absolute path} of existing files with a suffix among ``formats`` (one file: the train role)."""
    files = dict(data_files) if isinstance(data_files, Mapping) else {"train": data_files}
    unknown = set(files) - set(ROLES)
    if unknown or "train" not in files:
        raise ValueError(f"data_files roles must include 'train' and be among {', '.join(ROLES)}; "
                         f"got {', '.join(map(str, files))}")
    resolved = {}
    for role, file in files.items():
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        if path.suffix.lower() not in formats:
            raise ValueError(f"unsupported {what} {path}: expected one of {', '.join(formats)}")
        resolved[role] = str(path.resolve())
    return resolved


def _format_of(path: Path) -> str | None:
    return _LOCAL_FORMATS.get(path.suffix.lower())


def _read_local_file(path: Path) -> datasets.Dataset:
    builder = _format_of(path)
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except ValueError as error:  # datasets' own words for an empty file name no file: say which one
        raise ValueError(f"{path} holds no examples (an empty file, or a header only)") from error
    if len(dataset) == 0:
        raise ValueError(f"{path} holds no examples (an empty file, or a header only)")
    return dataset


def _infer_labels(train: datasets.Dataset, label_column: str,
                  kind: TaskKind | None) -> tuple[TaskKind, int, tuple[str, ...] | None]:
    """(kind, num_labels, label_names) from the training labels (and the requested kind, if any)."""
    feature = train.features[label_column]
    is_sequence = isinstance(feature, (datasets.Sequence, datasets.List)) or isinstance(feature, list)
    values = list(train[label_column])
    if is_sequence:
        values = [tag for row in values for tag in row]
        inner = getattr(feature, "feature", None)
        if kind not in (None, "token_classification"):
            raise ValueError(f"label column {label_column!r} holds tag sequences: only token_classification fits")
        if isinstance(inner, datasets.ClassLabel):
            return "token_classification", inner.num_classes, tuple(inner.names)
        names = _label_names(values)
        if names is None:
            raise ValueError(f"token labels in {label_column!r} must be tag strings (e.g. B-PER) for seqeval")
        _check_tags(label_column, names)
        return "token_classification", len(names), names
    if kind == "token_classification":
        raise ValueError(f"token_classification needs lists of tags in {label_column!r}, got {feature}")
    if isinstance(feature, datasets.ClassLabel):
        return kind or "classification", feature.num_classes, tuple(feature.names)
    names = _label_names(values)
    array = None if names is not None else np.asarray(values, dtype=np.float64)
    if kind is None:
        whole = names is not None or bool(np.all(np.mod(array, 1.0) == 0.0))
        kind = "classification" if whole else "regression"
    if kind == "regression":
        if names is not None:
            raise ValueError(f"regression needs numeric labels, but {label_column!r} holds strings")
        return "regression", 1, None
    classes = sorted(set(names if names is not None else array.tolist()))
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} holds one class ({classes[0]!r}) in the training data: "
                         "a classifier needs at least two")
    if names is not None:
        return "classification", len(names), names
    if array.min() < 0:
        raise ValueError(f"class labels in {label_column!r} must be ids >= 0, found {array.min():g}")
    return "classification", int(array.max()) + 1, None


#: What seqeval reads as an entity tag: O, or a B/I/E/S/L/U prefix and a type (B-PER, I-LOC, S-MISC).
_TAG = re.compile(r"O|[BIESLU][-_].+")


def _check_tags(label_column: str, names: tuple[str, ...]) -> None:
    """Refuse a tag column that holds words: picking the tokens column as labels would otherwise make a
    "task" of thousands of classes, refused only later by a puzzling label count."""
    words = [name for name in names if not _TAG.fullmatch(name)]
    if words:
        shown = ", ".join(map(repr, words[:5])) + (" …" if len(words) > 5 else "")
        raise ValueError(f"label column {label_column!r} holds {len(names)} distinct values, {len(words)} of them not "
                         f"entity tags (such as {shown}): it looks like words, not tags. Choose the column of tags "
                         "(O, B-PER, I-PER, …)")


def _label_names(values: list) -> tuple[str, ...] | None:
    """Sorted distinct labels when they are strings, else None."""
    if values and all(isinstance(value, str) for value in values):
        return tuple(sorted(set(values)))
    return None


# --------------------------------------------------------------------------------------------------
# Loading splits


def _split(dataset: datasets.Dataset, role: str, validation_fraction: float, test_fraction: float,
           seed: int) -> datasets.Dataset:
    """The ``role`` part of a fixed-seed permutation: [test | validation | train].

    numpy's seeded permutation is the same on every machine (no dependence on hash randomisation).
    """
    count = len(dataset)
    order = np.random.default_rng(seed).permutation(count)
    n_test = round(count * test_fraction)
    n_validation = round(count * validation_fraction)
    bounds = {"test": (0, n_test), "validation": (n_test, n_test + n_validation),
              "train": (n_test + n_validation, count)}
    start, stop = bounds[role]
    return dataset.select(np.sort(order[start:stop]))


