"""finetune_: learns a learnable task, reports progress, is reproducible and leaves the caller's state alone."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import tiny_bert, tiny_bert_token
from fwsvd.evaluate.evaluation import evaluate_model
from fwsvd.evaluate.finetune import finetune_
from fwsvd.data.tasks import local_task
from tiny_text import sentiment_task, tiny_tokenizer


@pytest.fixture
def sentiment(tmp_path):
    return sentiment_task(tmp_path, repeats=4)  # 64 rows


def test_learns_and_reports(sentiment):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    before = evaluate_model(model, tokenizer, sentiment, "test").metrics["accuracy"]
    calls = []
    summary = finetune_(model, tokenizer, sentiment, epochs=8, learning_rate=5e-3, batch_size=16,
                        progress=lambda done, total: calls.append((done, total)))
    assert (summary["steps"], summary["epochs"], summary["examples"]) == (32, 8, 64)
    assert calls[0] == (1, 32) and calls[-1] == (32, 32)
    assert summary["loss"] < 0.3 and summary["seconds"] > 0
    after = evaluate_model(model, tokenizer, sentiment, "test").metrics["accuracy"]
    assert after == 1.0 > before


def test_same_seed_same_weights_and_global_rng_untouched(sentiment):
    tokenizer = tiny_tokenizer()
    first, second = tiny_bert(), tiny_bert()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for model in (first, second):
        finetune_(model, tokenizer, sentiment, epochs=2, learning_rate=1e-3, batch_size=8, limit=40, seed=7,
                  progress=lambda done, total: None)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    third = tiny_bert()
    finetune_(third, tokenizer, sentiment, epochs=2, learning_rate=1e-3, batch_size=8, limit=40, seed=8,
              progress=lambda done, total: None)
    assert not torch.equal(third.classifier.weight, first.classifier.weight)


def test_mode_restored_and_frozen_parameters_stay(sentiment):
    model, tokenizer = tiny_bert().eval(), tiny_tokenizer()
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    classifier = model.classifier.weight.detach().clone()
    summary = finetune_(model, tokenizer, sentiment, epochs=1, learning_rate=1e-3, limit=20, batch_size=8,
                        freeze=lambda name, _: "word_embeddings" in name, optimizer="adamw",
                        weight_decay=0.01, warmup_ratio=0.5, schedule="linear")
    assert summary["steps"] == 3 and not model.training
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)
    assert all(parameter.requires_grad for parameter in model.parameters())  # unfrozen again
    assert not torch.equal(model.classifier.weight, classifier)


def test_regression_and_token_classification_train(tmp_path):
    tokenizer = tiny_tokenizer()
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"text": ["the movie", "a film", "loved it", "bad plot"] * 4,
                  "score": [0.5, 1.5, 4.25, 2.0] * 4}).to_csv(scores, index=False)
    regression = local_task({"train": scores, "validation": scores, "test": scores},
                            text_column="text", label_column="score")
    summary = finetune_(tiny_bert(num_labels=1), tokenizer, regression, epochs=1, batch_size=8,
                        learning_rate=1e-3, progress=lambda done, total: None)
    assert summary["steps"] == 2 and summary["loss"] > 0
    ner = tmp_path / "ner.jsonl"
    ner.write_text("\n".join(json.dumps({"tokens": ["John", "lives", "in", "Paris"],
                                         "tags": ["B-PER", "O", "O", "B-LOC"]}) for _ in range(6)))
    task = local_task({"train": ner, "validation": ner, "test": ner}, text_column="tokens", label_column="tags")
    summary = finetune_(tiny_bert_token(num_labels=3), tokenizer, task, epochs=1, batch_size=4,
                        learning_rate=1e-3, progress=lambda done, total: None)
    assert summary["steps"] == 2


def test_bad_arguments(sentiment):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; valid: adam, adamw"):
        finetune_(model, tokenizer, sentiment, optimizer="sgd")
    with pytest.raises(ValueError, match="epochs"):
        finetune_(model, tokenizer, sentiment, epochs=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        finetune_(model, tokenizer, sentiment, warmup_ratio=1.0)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        finetune_(model, tokenizer, sentiment, schedule="cosine")
