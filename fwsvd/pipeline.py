"""Glue shared by the CLI and the dashboard: load any model fwsvd can take, and the task's Fisher.

Kept apart from both front ends so that they load models and estimate Fisher the same way — above all,
Fisher always comes from the task's *train* split, never from the examples a model is scored on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.data import make_batches
from fwsvd.fisher import FisherResult, importance_similarity, load_or_estimate_fisher
from fwsvd.models import check_head, load_model
from fwsvd.persistence import INFO_FILE, load_compressed, read_compressed_info
from fwsvd.tasks import Task

Progress = Callable[[int, int], None]
#: Written by every tokenizer's save_pretrained.
TOKENIZER_FILE = "tokenizer_config.json"


def is_compressed_dir(source: str | os.PathLike[str]) -> bool:
    """True for a directory written by ``save_compressed`` (factorized or dense export)."""
    return str(source) != "demo" and (Path(source).expanduser() / INFO_FILE).is_file()


def load_any_model(
    source: str | os.PathLike[str],
    task: Task | None = None,
    *,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any] | None]:
    """(model in eval mode, tokenizer, compression info or None) from "demo", a model directory, a hub id,
    or a directory written by ``save_compressed`` (which must hold its tokenizer).

    With a ``task``, the model's head must fit it (ValueError otherwise).
    """
    if not is_compressed_dir(source):
        model, tokenizer = load_model(source, task, trust_remote_code=trust_remote_code)
        return model, tokenizer, None
    directory = Path(source).expanduser()
    info = read_compressed_info(directory)
    model = load_compressed(directory)
    if task is not None:
        # The class load_compressed actually built is what must fit the task.
        model.config.architectures = [type(model).__name__]
        check_head(model.config, task, None, directory)
    # Without its files, transformers 5 quietly builds an empty tokenizer of the model's type.
    if not (directory / TOKENIZER_FILE).is_file():
        raise ValueError(f"{directory} has no tokenizer ({TOKENIZER_FILE}); save it with "
                         "save_compressed(..., tokenizer=tokenizer)")
    return model, AutoTokenizer.from_pretrained(directory), info


def task_fisher(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    num_examples: int = 1024,
    seed: int = 0,
    max_length: int = 128,
    batch_size: int = 32,
    mode: str = "per_example",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> FisherResult:
    """Fisher importances of ``model``'s target layers over ``num_examples`` shuffled (``seed``) examples of
    the task's **train** split, from the cache when the same model, data and settings were seen before."""
    if num_examples < 1:
        raise ValueError(f"the Fisher needs at least 1 example, got num_examples={num_examples}")
    # The cache key records the examples actually used: a small train split caps the request.
    used = min(num_examples, len(task.load_split("train")))

    def batches() -> list[dict[str, torch.Tensor]]:
        return make_batches(task, tokenizer, "train", batch_size=batch_size, max_length=max_length,
                            limit=used, seed=seed, shuffle=True)

    return load_or_estimate_fisher(
        model, batches, data_id=task.data_id("train"), num_examples=used, seed=seed, max_length=max_length,
        mode=mode, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
    )


def importance_agreement(first: Mapping[str, torch.Tensor],
                         second: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer (those both have): cosine similarity and Spearman rank correlation of two importances,
    e.g. exact per-example vs batch Fisher. Both are scale-free, as FWSVD's factors are."""
    from scipy.stats import spearmanr  # here: scipy.stats costs about a second to import, on every app start

    cosine = importance_similarity(first, second)
    return {
        name: {"cosine": value,
               "spearman": float(spearmanr(first[name].double().numpy(), second[name].double().numpy())[0])}
        for name, value in cosine.items()
    }
