"""How a data set's labels become a model's class ids: by name, through the model's ``id2label``.

A data file's string labels carry no ids, a hub dataset numbers its labels in its ClassLabel's order, and a
fine-tuned model numbers its classes as its ``id2label`` says. Numbering the data on its own (sorted names,
ClassLabel order) agrees with the model only by chance: the same classifier saved with its two classes the
other way round would score ``1 - accuracy``, and its Fisher would be taken against the wrong targets. So:

* integer labels (with no names) are the model's ids, as they are;
* named labels (strings, or a ClassLabel's names) are matched to the model's names: exactly, else ignoring
  case when that is one-to-one (MNLI models often say ``ENTAILMENT``);
* an explicit ``label_map`` {name in the data: the model's name, or its id} covers names that differ
  (``rotten=negative``); a model with only transformers' default names (``LABEL_0``, ``LABEL_1``) can be
  matched to string labels only that way;
* otherwise the match is refused with one line listing both sets.

:func:`match_labels` returns the task to use with that model: ``label_names`` become the model's names in
id order, so predictions, references and metric names all speak the model's ids.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from fwsvd.data.tasks import Task

#: transformers' names for classes nobody named.
_GENERIC = re.compile(r"LABEL_(\d+)")
#: How many names a message lists before it says "and N more".
_SHOWN = 8


def model_label_names(id2label: Mapping[int | str, str] | None, num_labels: int) -> tuple[str, ...] | None:
    """The model's class names in id order; None when they are transformers' defaults (``LABEL_0`` …) or
    missing, i.e. when the model does not say what its classes are."""
    if not id2label:
        return None
    by_id = {int(key): str(value) for key, value in id2label.items()}
    if sorted(by_id) != list(range(num_labels)):
        return None
    names = tuple(by_id[i] for i in range(num_labels))
    if all(_GENERIC.fullmatch(name) and int(name[6:]) == i for i, name in enumerate(names)):
        return None
    return names


def parse_label_map(text: str) -> dict[str, str]:
    """``"rotten=negative,fresh=positive"`` -> ``{"rotten": "negative", "fresh": "positive"}``; the right-hand
    side is one of the model's label names or ids. ValueError naming the item that is not ``DATA=MODEL``."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        data, separator, model = (side.strip() for side in item.partition("="))
        if not separator or not data or not model:
            raise ValueError(f"label map item {item!r} is not DATA=MODEL (e.g. rotten=negative,fresh=positive: "
                             "a label in the data, then the model's label name or id)")
        if data in mapping and mapping[data] != model:
            raise ValueError(f"label map sends {data!r} to both {mapping[data]!r} and {model!r}; give it once")
        mapping[data] = model
    return mapping


def format_label_map(mapping: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """The inverse of :func:`parse_label_map`: ``rotten=negative,fresh=positive``."""
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return ",".join(f"{data}={model}" for data, model in items)


def match_labels(task: Task, id2label: Mapping[int | str, str] | None, num_labels: int,
                 label_map: Mapping[str, str] | None = None, *, model: str = "the model") -> Task:
    """``task`` with its labels numbered as the model numbers them (see the module's docstring).

    ``id2label`` and ``num_labels`` are the model config's; ``label_map`` {label in the data: the model's label
    name or id} renames labels the model calls otherwise; ``model`` names the model in messages. A regression
    task, or integer labels, come back unchanged. Raises ValueError, naming both label sets, when a label of
    the data has no counterpart in the model."""
    requested = dict(label_map or {})
    if task.kind == "regression" or task.label_names is None:
        if requested:
            what = ("a regression (numeric scores)" if task.kind == "regression"
                    else "given by integer class ids, which are the model's ids as they are")
            raise ValueError(f"a label map renames class labels, but the labels of {task.label_column!r} are "
                             f"{what}: leave the label map out")
        return task
    data = task.label_names
    names = model_label_names(id2label, num_labels)
    if names is None and not requested and (task.source != "local" or len(data) != num_labels):
        # A hub dataset's ClassLabel ids on a model that names nothing: ids are ids. A count that differs is
        # the model's head not fitting the task, which the head check says in those words.
        return task
    model_names = names or tuple(f"LABEL_{i}" for i in range(num_labels))
    target = _resolve(requested, data, model_names, model)
    unmatched = [name for name in data if name not in target]
    if unmatched:
        raise ValueError(_mismatch(task, data, names, model_names, unmatched, model))
    renames = tuple((name, target[name]) for name in data if target[name] != name)
    same_ids = all(model_names.index(target[name]) == i for i, name in enumerate(data))
    if not renames and same_ids:
        # The data's own numbering is the model's (the model may know more classes than the data holds).
        return dataclasses.replace(task, label_names=model_names, num_labels=len(model_names))
    return dataclasses.replace(task, label_names=model_names, num_labels=len(model_names), label_map=renames,
                               data_label_names=data)


def _resolve(requested: Mapping[str, str], data: Sequence[str], model_names: Sequence[str],
             model: str) -> dict[str, str]:
    """{data label: model label} for every data label that finds one: through ``requested`` (a model name or
    id), else by name, else by name ignoring case when that is one-to-one."""
    unknown = [name for name in requested if name not in data]
    if unknown:
        raise ValueError(f"the label map names {_listing(unknown)}, which the data does not hold; its labels: "
                         f"{_listing(data)}")
    folded: dict[str, str] = {}
    for name in model_names:
        folded[name.casefold()] = "" if name.casefold() in folded else name  # "": ambiguous, not used
    target = {}
    for name in data:
        if name in requested:
            target[name] = _model_name(requested[name], name, model_names, model)
        elif name in model_names:
            target[name] = name
        elif folded.get(name.casefold()):
            target[name] = folded[name.casefold()]
    return target


def _model_name(wanted: str, data_name: str, model_names: Sequence[str], model: str) -> str:
    if wanted in model_names:
        return wanted
    if wanted.isdigit() and int(wanted) < len(model_names):
        return model_names[int(wanted)]
    raise ValueError(f"the label map sends {data_name!r} to {wanted!r}, which is neither a label of {model} nor "
                     f"an id from 0 to {len(model_names) - 1}; its labels: {_listing(model_names)}")


def _mismatch(task: Task, data: Sequence[str], names: Sequence[str] | None, model_names: Sequence[str],
              unmatched: Sequence[str], model: str) -> str:
    # The example leaves the right-hand sides open: a guessed pairing, copied as it is, would flip the classes.
    if names is None:
        example = ",".join(f"{name}=ID" for name in unmatched[:2])
        return (f"{model} names its {len(model_names)} classes only LABEL_0 … LABEL_{len(model_names) - 1} "
                f"(transformers' defaults), so the labels of {task.label_column!r} ({_listing(data)}) cannot be "
                f"matched by name: map each to the model's class id (--label-map {example}), or write integer "
                "ids in the data")
    example = ",".join(f"{name}=MODEL_LABEL" for name in unmatched[:2])
    return (f"the labels of {task.label_column!r} do not match those of {model}: the data has {_listing(data)}; "
            f"the model has {_listing(model_names)}; no match for {_listing(unmatched)}. Map each to one of the "
            f"model's labels (--label-map {example}), or choose the label column the model was fine-tuned on")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(map(repr, names[:_SHOWN]))
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
