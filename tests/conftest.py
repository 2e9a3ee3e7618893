"""Tiny random models of each supported family, shared by the tests."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

transformers.logging.set_verbosity_error()

VOCAB = 120


def _tiny_bert_config(num_labels: int, seed: int) -> BertConfig:
    torch.manual_seed(seed)  # the weights drawn next, by the model built on this config
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=64, num_labels=num_labels)


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    return BertForSequenceClassification(_tiny_bert_config(num_labels, seed)).eval()


def tiny_bert_token(num_labels: int = 5, seed: int = 0) -> BertForTokenClassification:
    return BertForTokenClassification(_tiny_bert_config(num_labels, seed)).eval()


def tiny_models(seed: int = 0) -> dict[str, torch.nn.Module]:
    """One tiny sequence classifier per architecture family compress_ must support."""
    torch.manual_seed(seed)
    models = {
        "bert": tiny_bert(seed=seed),
        "distilbert": DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                             max_position_embeddings=64)),
        "roberta": RobertaForSequenceClassification(
            RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, max_position_embeddings=70)),
        "electra": ElectraForSequenceClassification(
            ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)),
        "gpt2": GPT2ForSequenceClassification(
            GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    }
    return {name: model.eval() for name, model in models.items()}


def random_batch(batch_size: int = 3, length: int = 10, num_labels: int = 2, seed: int = 0,
                 ragged: bool = True) -> dict[str, torch.Tensor]:
    """Token ids in [3, VOCAB) with right padding (mask 0) when ragged, and class labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    if ragged:
        for row in range(batch_size):
            keep = length - (row * 3) % (length - 2)
            attention_mask[row, keep:] = 0
            input_ids[row, keep:] = 0
    labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache directory that fwsvd uses by default for the test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("FWSVD_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a busy shared machine makes multi-thread syncs slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
