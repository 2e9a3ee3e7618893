"""Load a fine-tuned model and its tokenizer, and check that its head fits the task.

A source is ``"demo"`` (built once, see :mod:`fwsvd.demo`), a local directory written by
``save_pretrained``, or a Hugging Face hub id (needs the hub). The head is checked *before* the weights
are loaded, from the config: loading a base encoder with ``AutoModelForSequenceClassification`` would
silently attach a random head, and compressing an untrained classifier measures nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fwsvd.tasks import Task

_HEADS = {
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
}


def load_model(
    source: str | os.PathLike[str],
    task: Task | None = None,
    *,
    trust_remote_code: bool = False,
    num_labels: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from ``"demo"``, a local directory or a hub id.

    With a ``task``, the model must be a ``*ForSequenceClassification`` with ``task.num_labels`` outputs
    (1 for regression) or, for NER, a ``*ForTokenClassification`` with as many tags; ``num_labels``, when
    given, is checked the same way. Otherwise ValueError says what was found and what is needed.
    ``trust_remote_code`` stays off unless asked for: it runs code shipped with the model.
    """
    location = _locate(source)
    with quiet_transformers():
        config = _load_config(location, source, trust_remote_code)
        head = check_head(config, task, num_labels, source)
        model = _HEADS[head].from_pretrained(location, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    _ensure_padding(model, tokenizer)
    return model.eval(), tokenizer


def _locate(source: str | os.PathLike[str]) -> str:
    """A local directory path, or the hub id unchanged."""
    if str(source) == "demo":
        from fwsvd.demo import ensure_demo_model  # imported here: fwsvd.demo imports this module

        return str(ensure_demo_model())
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{path} is a file; a model is a directory written by save_pretrained")
    if isinstance(source, os.PathLike) or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise FileNotFoundError(f"model directory not found: {path}")
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
    found = next((suffix for arch in architectures for suffix in _HEADS if arch.endswith(suffix)), None)
    needed = ("ForTokenClassification" if task is not None and task.kind == "token_classification"
              else "ForSequenceClassification" if task is not None else None)
    label_count = task.num_labels if task is not None else num_labels
    if task is not None and num_labels is not None and num_labels != task.num_labels:
        raise ValueError(f"num_labels={num_labels} contradicts task {task.name!r}, which has {task.num_labels}")
    what = f"model {str(source)!r} is a {', '.join(architectures) or 'model of unknown architecture'}"
    if found is None:
        raise ValueError(f"{what}, not a fine-tuned classifier: fwsvd needs a *ForSequenceClassification "
                         "or *ForTokenClassification model (a base encoder or LM head has no trained task head)")
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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' long load report for the duration, then restore the verbosity."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
