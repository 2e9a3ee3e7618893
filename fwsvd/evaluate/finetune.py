"""Fine-tuning in place: the demo model, and the optional recovery step after compression.

A plain PyTorch loop rather than ``transformers.Trainer``: a dozen lines that work for any model whose
forward returns a loss given ``labels`` — compressed models with custom low-rank modules included — with
none of Trainer's output folders, logging integrations or device placement to configure.
The defaults are the paper's: 3 epochs, Adam, learning rate 2e-5, batch 32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from fwsvd.data.batches import IGNORE_INDEX, make_batches
from fwsvd.data.language_modeling import is_language_modeling
from fwsvd.data.tasks import Task
from fwsvd.view.trained_length import RECORD_KEY

Progress = Callable[[int, int], None]
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def finetune_(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    epochs: int = 3,
    learning_rate: float = 2e-5,
    batch_size: int = 32,
    max_length: int = 128,
    limit: int | None = None,
    seed: int = 0,
    optimizer: Literal["adam", "adamw"] = "adam",
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    schedule: Literal["constant", "linear"] = "constant",
    freeze: Callable[[str, nn.Parameter], bool] | None = None,
    group_by_length: bool = False,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` on the task's train split, in place; returns loss, steps, examples and seconds.

    The training examples (the first ``limit`` after a ``seed`` shuffle) are batched once; every epoch after
    the first visits the batches in a new seeded order. ``schedule`` "linear" decays the learning rate to 0 after a linear warm-up over ``warmup_ratio``
    of the steps; "constant" keeps it after the warm-up. ``freeze(name, parameter)`` -> True keeps a
    parameter fixed (e.g. the word embeddings, whose Adam update is a large share of a small model's step).
    ``group_by_length`` batches examples of similar length together (less padding, faster steps).
    Progress is reported through ``progress(done, total)`` (steps) if given, else a tqdm bar.
    The model's train/eval mode is restored afterwards; the global RNG state is left untouched.
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(_OPTIMIZERS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if schedule not in ("constant", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}; valid: constant, linear")
    # Batches are drawn once (a seeded shuffle, then the first `limit` examples); each later epoch visits
    # them in another seeded order. Re-batching every epoch would buy little and re-pad everything.
    batches = make_batches(task, tokenizer, "train", batch_size=batch_size, max_length=max_length,
                           limit=limit, seed=seed, shuffle=True, group_by_length=group_by_length)
    examples = sum(len(batch["labels"]) for batch in batches)
    # Recorded in the model's config (saved with it): its Fisher and evaluation default to this length.
    if getattr(model, "config", None) is not None:
        setattr(model.config, RECORD_KEY, max_length)
    total = len(batches) * epochs
    # Frozen parameters get requires_grad off for the run, so their gradients are not even computed.
    frozen = [p for name, p in model.named_parameters() if p.requires_grad and freeze is not None and freeze(name, p)]
    trainable = [p for p in model.parameters() if p.requires_grad and not any(p is f for f in frozen)]
    opt = _OPTIMIZERS[optimizer](trainable, lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler("linear" if schedule == "linear" else "constant_with_warmup", opt,
                              num_warmup_steps=round(warmup_ratio * total), num_training_steps=total)
    device = next(model.parameters()).device
    bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=progress is not None)
    was_training = model.training
    model.train()
    for parameter in frozen:
        parameter.requires_grad_(False)
    started = time.perf_counter()
    done, epoch_loss = 0, float("nan")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout masks: reproducible for a given seed
            for epoch in range(epochs):
                losses = []
                order = torch.randperm(len(batches)) if epoch else torch.arange(len(batches))
                for index in order.tolist():
                    loss = _loss(model, {key: value.to(device) for key, value in batches[index].items()},
                                 is_language_modeling(task))
                    loss.backward()
                    opt.step()
                    scheduler.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(loss.item())
                    done += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch + 1)
                    if progress is not None:
                        progress(done, total)
                epoch_loss = sum(losses) / len(losses)
    finally:
        bar.close()
        model.train(was_training)
        for parameter in frozen:
            parameter.requires_grad_(True)
    return {"loss": epoch_loss, "steps": done, "epochs": epochs, "examples": examples,
            "seconds": time.perf_counter() - started}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], language_modeling: bool) -> torch.Tensor:
    """The model's own loss; for language modelling the mean next-token loss over the labels as
    :func:`~fwsvd.data.batches.make_batches` shifts them (a causal LM given them would shift them again)."""
    if not language_modeling:
        return model(**batch).loss
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
