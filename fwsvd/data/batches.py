"""Tokenised, dynamically padded batches of a task split, labels included.

Each split is tokenised once per (tokenizer, data, max_length) — with the fast tokenizer on the whole
column at once — and kept in memory, so Fisher estimation, evaluation and fine-tuning of the same split
do not tokenise it again. Batches are padded only to their own longest example (dynamic padding), which
on short texts halves the cost of a forward pass compared with padding to ``max_length``.

For token classification the word-level tags are aligned to word pieces: the first piece of each word
carries the word's tag, every other position (special tokens, later pieces, padding) carries -100, which
both the loss and the metrics ignore.

For language modelling the split's text is packed into blocks of ``max_length`` tokens
(:func:`fwsvd.data.language_modeling.encode_blocks`) and each block's labels are its next tokens: position t
carries token t + 1, the last position -100. The labels are shifted here, once, so that a block's loss is the
same token-level cross-entropy as for token classification: the Fisher and the metrics need no LM case.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fwsvd.data.language_modeling import KIND as LANGUAGE_MODELING
from fwsvd.data.language_modeling import encode_blocks
from fwsvd.data.tasks import Role, Task
from fwsvd.storage.sharing import exclusive

#: Label value ignored by the cross-entropy loss and by the NER metrics.
IGNORE_INDEX = -100
#: The most a language model's logits may take in one evaluation pass (blocks × length × vocabulary floats):
#: SmolLM2's 49,152-token vocabulary at 256 tokens is 48 MiB a block, so 32 blocks would hold 1.5 GiB of
#: logits, and their loss as much again — the difference between a 135 M model evaluating in 2 GiB or in 6.
EVALUATION_LOGITS_BYTES = 256 * 2**20

_Encoded = dict[str, list[Any]]
# Tokenised splits, per tokenizer; a weak key so a discarded tokenizer frees its entries.
_ENCODED: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[tuple[str, str, int], _Encoded]]" = (
    weakref.WeakKeyDictionary())


def make_batches(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    role: Role,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Batches of the ``role`` split: ``input_ids``, ``attention_mask`` (``token_type_ids`` when the
    tokenizer makes them) and ``labels`` — long class ids, float scores for regression, word-piece
    aligned tag ids for NER, or each token's next token for language modelling (whose examples are blocks of
    ``max_length`` tokens).

    ``shuffle`` permutes the examples with ``seed`` first; ``limit`` then keeps the first ``limit``.
    ``group_by_length`` (for training) puts examples of similar length in the same batch and then
    shuffles the batches with ``seed``: on short reviews this halves the padded tokens, hence the cost.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    readable = getattr(tokenizer, "model_max_length", None)  # a huge sentinel when the tokenizer sets none
    if isinstance(readable, int) and max_length > readable:
        raise ValueError(f"max_length {max_length} is more than the {readable} tokens the model reads (its "
                         f"tokenizer's model_max_length); give at most {readable}")
    encoded = _encode_split(task, tokenizer, role, max_length)
    count = len(encoded["input_ids"])
    order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
    if limit is not None:
        order = order[:limit]
    if group_by_length:
        groups = _group_by_length(order, [len(ids) for ids in encoded["input_ids"]], batch_size, seed)
    else:
        groups = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    pad_id = _pad_token_id(tokenizer)
    label_dtype = torch.float32 if task.kind == "regression" else torch.long
    batches = []
    for rows in groups:
        batch = {key: _pad([values[i] for i in rows], _pad_value(key, pad_id), tokenizer.padding_side)
                 for key, values in encoded.items() if key != "labels"}
        labels = [encoded["labels"][i] for i in rows]
        if task.kind in ("token_classification", LANGUAGE_MODELING):
            batch["labels"] = _pad(labels, IGNORE_INDEX, tokenizer.padding_side)
        else:
            batch["labels"] = torch.tensor(labels, dtype=label_dtype)
        batches.append(batch)
    return batches


def evaluation_batch_size(task: Task, tokenizer: PreTrainedTokenizerBase, batch_size: int, max_length: int) -> int:
    """How many examples an evaluation pass takes at once: ``batch_size``, but for a language model no more
    blocks than keep their logits within :data:`EVALUATION_LOGITS_BYTES` (at least one). Perplexity does not
    depend on the grouping (every block is full length: no padding); the memory does."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if task.kind != LANGUAGE_MODELING:
        return batch_size
    block_bytes = max_length * len(tokenizer) * torch.float32.itemsize
    return max(1, min(batch_size, EVALUATION_LOGITS_BYTES // block_bytes))


def evaluation_batches(task: Task, tokenizer: PreTrainedTokenizerBase, role: Role, *, batch_size: int = 32,
                       max_length: int = 128, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The batches an evaluation scores: the first ``limit`` examples of ``role`` in order,
    :func:`evaluation_batch_size` at a time."""
    return make_batches(task, tokenizer, role, max_length=max_length, limit=limit,
                        batch_size=evaluation_batch_size(task, tokenizer, batch_size, max_length))


def example_count(task: Task, tokenizer: PreTrainedTokenizerBase, role: Role, max_length: int) -> int:
    """How many examples :func:`make_batches` makes of ``role`` (what its ``limit`` counts): the split's rows,
    or for language modelling its blocks of ``max_length`` tokens."""
    return len(_encode_split(task, tokenizer, role, max_length)["input_ids"])


def _group_by_length(order: np.ndarray, lengths: list[int], batch_size: int, seed: int) -> list[np.ndarray]:
    """Batches of similar length: sort within windows of 50 batches (so batches still mix the data),
    cut into batches, then shuffle the batches — the same scheme as transformers' group_by_length."""
    window = batch_size * 50
    groups = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        groups.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = np.random.default_rng(seed).permutation(len(groups))
    return [groups[i] for i in shuffled]


def _encode_split(task: Task, tokenizer: PreTrainedTokenizerBase, role: Role, max_length: int) -> _Encoded:
    key = (task.data_id(role), task.kind, max_length)
    # A fast tokenizer is not thread-safe: each call sets the truncation length on its one Rust tokenizer, so a
    # call from another thread would truncate with the wrong length (or fail, "Already borrowed"). Under its
    # lock, which also has a split asked for by two sessions at once tokenised once.
    with exclusive(tokenizer):
        per_tokenizer = _ENCODED.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            dataset = task.load_split(role)
            if task.kind == LANGUAGE_MODELING:
                per_tokenizer[key] = _encode_language_modeling(task, tokenizer, dataset, max_length, role)
            elif task.kind == "token_classification":
                per_tokenizer[key] = _encode_tokens(task, tokenizer, dataset, max_length)
            else:
                per_tokenizer[key] = _encode_texts(task, tokenizer, dataset, max_length)
        return per_tokenizer[key]


def _encode_texts(task: Task, tokenizer: PreTrainedTokenizerBase, dataset: Any, max_length: int) -> _Encoded:
    texts = list(dataset[task.text_column])
    pairs = list(dataset[task.text_pair_column]) if task.text_pair_column else None
    encoded = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
    encoded["labels"] = list(dataset[task.label_column])
    return encoded


def _encode_tokens(task: Task, tokenizer: PreTrainedTokenizerBase, dataset: Any, max_length: int) -> _Encoded:
    if not tokenizer.is_fast:
        raise ValueError("token classification needs a fast tokenizer (word_ids() aligns tags to word pieces); "
                         f"{type(tokenizer).__name__} is not one")
    words = list(dataset[task.text_column])
    encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    encoded = dict(encoding)
    encoded["labels"] = [align_labels(tags, encoding.word_ids(i))
                         for i, tags in enumerate(dataset[task.label_column])]
    return encoded


def _encode_language_modeling(task: Task, tokenizer: PreTrainedTokenizerBase, dataset: Any, block_size: int,
                              role: Role) -> _Encoded:
    encoded: _Encoded = dict(encode_blocks(task, tokenizer, dataset, block_size, role))
    encoded["labels"] = [block[1:] + [IGNORE_INDEX] for block in encoded["input_ids"]]
    return encoded


def align_labels(word_labels: list[int], word_ids: list[int | None]) -> list[int]:
    """Word-level tags -> one tag per word piece: the word's tag on its first piece, -100 elsewhere."""
    aligned = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            aligned.append(IGNORE_INDEX)
        else:
            aligned.append(int(word_labels[word_id]))
        previous = word_id
    return aligned


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # GPT-2 style tokenizers have no pad token; the attention mask hides whatever fills the gap.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def _pad_value(key: str, pad_id: int) -> int:
    return pad_id if key == "input_ids" else 0


def _pad(sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
    """A (batch, longest) long tensor of ``sequences`` padded with ``value`` on ``side``."""
    longest = max(len(sequence) for sequence in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if side == "left":
            out[row, longest - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        else:
            out[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return out
