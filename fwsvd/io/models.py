"""Load a fine-tuned model and its tokenizer, and check that its head fits the task.

A source is a demo model's alias (``"demo"``, ``"demo-ner"``, ``"demo-lm"``: built once, see
:mod:`fwsvd.io.demos`), a local directory written by
``save_pretrained``, or a Hugging Face hub id (needs the hub). The head is checked *before* the weights
are loaded, from the config: loading a base encoder with ``AutoModelForSequenceClassification`` would
silently attach a random head, and compressing an untrained classifier measures nothing.

The task's labels are matched to the model's by name (:mod:`fwsvd.data.labels`): :func:`load_for_task`
returns the task numbered as the model numbers its classes; :func:`load_model` and :func:`load_any_model`
refuse a task whose labels the model numbers otherwise, rather than score it against the wrong classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, NamedTuple

from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fwsvd.data.labels import match_labels
from fwsvd.data.tasks import Task
from fwsvd.data.language_modeling import is_language_modeling
from fwsvd.io.demos import demo_of_model
from fwsvd.io.hub import check_hub_model
from fwsvd.io.persistence import INFO_FILE, load_compressed, read_compressed_info
from fwsvd.io.quiet import quiet_transformers

_HEADS = {
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
    "ForCausalLM": AutoModelForCausalLM,
}
#: Other names of a causal language model's class (GPT-2's GPT2LMHeadModel).
_CAUSAL_ALIASES = ("LMHeadModel",)


def load_model(
    source: str | os.PathLike[str],
    task: Task | None = None,
    *,
    trust_remote_code: bool = False,
    num_labels: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a demo alias (``"demo"``, ``"demo-ner"``), a local directory or a
    hub id.

    With a ``task``, the model must be a ``*ForSequenceClassification`` with ``task.num_labels`` outputs
    (1 for regression), for NER a ``*ForTokenClassification`` with as many tags, or for language modelling a
    causal LM (``*ForCausalLM``, GPT-2's ``*LMHeadModel``); ``num_labels``, when
    given, is checked the same way. Otherwise ValueError says what was found and what is needed.
    ``trust_remote_code`` stays off unless asked for: it runs code shipped with the model.
    """
    model, tokenizer, _ = _load_model(source, task, None, trust_remote_code, num_labels, strict=True)
    return model, tokenizer


def _load_model(source: str | os.PathLike[str], task: Task | None, label_map: Mapping[str, str] | None,
                trust_remote_code: bool, num_labels: int | None = None,
                strict: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Task | None]:
    """(model, tokenizer, task matched to the model); ``strict``: refuse a task the model numbers otherwise."""
    location = _locate(source)
    with quiet_transformers():
        config = _load_config(location, source, trust_remote_code)
        matched = _matched(task, config, label_map, source, strict)
        head = check_head(config, task if strict else matched, num_labels, source)
        try:
            model, loading = _HEADS[head].from_pretrained(location, trust_remote_code=trust_remote_code,
                                                          output_loading_info=True)
        except (OSError, SafetensorError) as error:
            raise ValueError(f"cannot read the weights of model {str(source)!r} ({type(error).__name__}: {error}); "
                             "the directory is damaged") from error
        _check_complete(loading, source)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    _ensure_padding(model, tokenizer)
    return model.eval(), tokenizer, matched


def _matched(task: Task | None, config: PretrainedConfig, label_map: Mapping[str, str] | None,
             source: str | os.PathLike[str], strict: bool) -> Task | None:
    """``task`` with its labels numbered as ``config`` numbers them (None for no task)."""
    if task is None:
        return None
    needed = "ForTokenClassification" if task.kind == "token_classification" else "ForSequenceClassification"
    if _head_of(config) != needed:
        return task  # no task head, or another kind: check_head says so
    matched = match_labels(task, config.id2label, config.num_labels, label_map, model=f"model {str(source)!r}")
    if strict and matched.data_label_names is not None:
        raise ValueError(f"model {str(source)!r} numbers the labels of {task.label_column!r} otherwise than the data "
                         f"({', '.join(task.label_names or ())} in the data; {', '.join(matched.label_names)} in "
                         "the model): load it with fwsvd.load_for_task(source, task), which matches them by name")
    return matched


def _head_of(config: PretrainedConfig) -> str | None:
    """The task-head suffix of the model's architecture (a key of _HEADS), or None."""
    return next((suffix for arch in config.architectures or [] for suffix in _HEADS if arch.endswith(suffix)), None)


def _check_complete(loading: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Refuse weights that leave some of the model's parameters out: transformers would initialise them at
    random and the "fine-tuned" model would measure nothing."""
    missing = sorted(loading["missing_keys"])
    if not missing:
        return
    factors = any(key.endswith((".first.weight", ".second.weight")) for key in loading["unexpected_keys"])
    why = (f"the file holds low-rank factors: a compressed directory that lost its {INFO_FILE}" if factors
           else "the weights file is damaged or belongs to another model")
    raise ValueError(f"the weights of model {str(source)!r} lack {len(missing)} of its parameters (such as "
                     f"{missing[0]}), which would be random: {why}")


def _locate(source: str | os.PathLike[str]) -> str:
    """A local directory path, or the hub id unchanged."""
    demo = demo_of_model(source)
    if demo is not None:
        return str(demo.ensure())
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{path} is a file; a model is a directory written by save_pretrained")
    if isinstance(source, os.PathLike) or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise FileNotFoundError(f"model directory not found: {path}")
    check_hub_model(str(source))  # without a network: one line now, not half a minute of retries
    return str(source)


def _load_config(location: str, source: str | os.PathLike[str], trust_remote_code: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except OSError as error:
        where = ("a local directory without a usable config.json" if Path(location).is_dir()
                 else "not a local directory, and the Hugging Face hub could not provide it "
                      "(offline, or no such model)")
        raise ValueError(f"cannot load model {str(source)!r}: it is {where}. Tried: {location} "
                         f"({type(error).__name__}: {error}). Offline, use a local directory or 'demo'.") from error


def check_head(config: PretrainedConfig, task: Task | None, num_labels: int | None,
                source: str | os.PathLike[str]) -> str:
    """The head suffix to load with, after checking it fits the task and label count."""
    architectures = config.architectures or []
    found = _head_of(config)
    if found is None and any(arch.endswith(_CAUSAL_ALIASES) for arch in architectures):
        found = "ForCausalLM"  # GPT-2's GPT2LMHeadModel is a causal LM under another name
    needed = ("ForCausalLM" if is_language_modeling(task)
              else "ForTokenClassification" if task is not None and task.kind == "token_classification"
              else "ForSequenceClassification" if task is not None else None)
    if found == "ForCausalLM" and needed in (None, "ForCausalLM"):
        return found  # the text is its own target: no label count to check
    label_count = task.num_labels if task is not None else num_labels
    if task is not None and num_labels is not None and num_labels != task.num_labels:
        raise ValueError(f"num_labels={num_labels} contradicts task {task.name!r}, which has {task.num_labels}")
    what = f"model {str(source)!r} is a {', '.join(architectures) or 'model of unknown architecture'}"
    if found is None:
        raise ValueError(f"{what}, not a fine-tuned classifier or a causal language model: fwsvd needs a "
                         "*ForSequenceClassification, *ForTokenClassification or *ForCausalLM model (a base "
                         "encoder has no trained task head)")
    if needed is not None and found != needed:
        raise ValueError(f"{what}, but task {task.name!r} ({task.kind}) needs a *{needed} model")
    if label_count is not None and config.num_labels != label_count:
        task_part = f"task {task.name!r} ({task.kind}) needs" if task is not None else "expected"
        raise ValueError(f"{what} with {config.num_labels} labels, but {task_part} {label_count}")
    return found


def _ensure_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    # GPT-2 style models have no pad token; batched classification needs one to find each last token.
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


#: Written by every tokenizer's save_pretrained.
TOKENIZER_FILE = "tokenizer_config.json"


def is_compressed_dir(source: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``save_compressed`` (factorized or dense export)."""
    return demo_of_model(source) is None and (Path(source).expanduser() / INFO_FILE).is_file()


def load_any_model(
    source: str | os.PathLike[str],
    task: Task | None = None,
    *,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any] | None]:
    """(model in eval mode, tokenizer, compression info or None) from a demo alias, a model directory, a hub id,
    or a directory written by ``save_compressed`` (which must hold its tokenizer).

    With a ``task``, the model's head must fit it and number its labels as the data does (ValueError
    otherwise; :func:`load_for_task` matches them by name instead).
    """
    loaded = _load_any(source, task, None, trust_remote_code, strict=True)
    return loaded.model, loaded.tokenizer, loaded.info


class TaskModel(NamedTuple):
    """A model loaded for a task, with the task numbered as the model numbers its classes."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    #: None only when loaded without a task
    task: Task | None
    #: a compressed directory's fwsvd_compressed.json, else None
    info: dict[str, Any] | None


def load_for_task(
    source: str | os.PathLike[str],
    task: Task,
    *,
    label_map: Mapping[str, str] | None = None,
    trust_remote_code: bool = False,
) -> TaskModel:
    """:func:`load_any_model` for ``task``, whose labels are matched to the model's by name
    (:func:`fwsvd.data.labels.match_labels`; ``label_map`` {label in the data: the model's label name or id}
    for names the model does not share): the returned ``task`` reads its labels as the model's ids, so its
    metrics and Fisher are taken against the classes the model means. ValueError, listing both label sets,
    when they do not match."""
    return _load_any(source, task, label_map, trust_remote_code, strict=False)


def _load_any(source: str | os.PathLike[str], task: Task | None, label_map: Mapping[str, str] | None,
              trust_remote_code: bool, strict: bool) -> TaskModel:
    if not is_compressed_dir(source):
        model, tokenizer, matched = _load_model(source, task, label_map, trust_remote_code, strict=strict)
        return TaskModel(model, tokenizer, matched, None)
    directory = Path(source).expanduser()
    info = read_compressed_info(directory)
    model = load_compressed(directory)
    matched = task
    if task is not None:
        # The class load_compressed actually built is what must fit the task.
        model.config.architectures = [type(model).__name__]
        matched = _matched(task, model.config, label_map, directory, strict)
        check_head(model.config, task if strict else matched, None, directory)
    # Without its files, transformers 5 quietly builds an empty tokenizer of the model's type.
    if not (directory / TOKENIZER_FILE).is_file():
        raise ValueError(f"{directory} has no tokenizer ({TOKENIZER_FILE}); save it with "
                         "save_compressed(..., tokenizer=tokenizer)")
    return TaskModel(model, AutoTokenizer.from_pretrained(directory), matched, info)
