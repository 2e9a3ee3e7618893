"""evaluate_model: metrics match a hand-made forward pass, for dense and swapped-in low-rank layers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import tiny_bert, tiny_bert_token
from fwsvd.evaluate.evaluation import count_parameters, evaluate_model, predict
from fwsvd.data.batches import make_batches
from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.data.tasks import local_task
from tiny_text import sentiment_task, tiny_tokenizer


class _Factored(nn.Module):
    """A stand-in for a compressed layer: x -> x V^T U^T + b, from an exact (full-rank) SVD."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
        self.first = nn.Parameter(s[:, None] * vh)
        self.second = nn.Parameter(u)
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.first.T @ self.second.T + self.bias


@pytest.fixture
def sentiment(tmp_path):
    return sentiment_task(tmp_path, repeats=3)  # 48 rows


def test_metrics_params_and_sizes(sentiment):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    result = evaluate_model(model, tokenizer, sentiment, "test", batch_size=10)
    batches = make_batches(sentiment, tokenizer, "test", batch_size=10)
    with torch.no_grad():
        predicted = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)
                               for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert result.metrics == {"accuracy": pytest.approx((predicted == labels).float().mean().item())}
    assert result.params == sum(p.numel() for p in model.parameters())
    assert (result.num_examples, result.batch_size) == (48, 10)
    assert result.latency_s_per_batch > 0
    assert json.loads(json.dumps(result.to_dict()))["num_examples"] == 48


def test_limit_and_ready_made_batches(sentiment):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    assert evaluate_model(model, tokenizer, sentiment, "test", limit=7).num_examples == 7
    batches = make_batches(sentiment, tokenizer, "validation", batch_size=16)
    reused = evaluate_model(model, None, sentiment, batches=batches)
    assert reused.metrics == evaluate_model(model, tokenizer, sentiment, "validation", batch_size=16).metrics
    with pytest.raises(ValueError, match="needs a tokenizer"):
        evaluate_model(model, None, sentiment)


def test_works_with_swapped_in_low_rank_modules(sentiment):
    dense, tokenizer = tiny_bert(), tiny_tokenizer()
    factored = tiny_bert()
    for layer in factored.bert.encoder.layer:
        layer.intermediate.dense = _Factored(layer.intermediate.dense)
        layer.output.dense = _Factored(layer.output.dense)
    batches = make_batches(sentiment, tokenizer, "test", batch_size=16)
    ours, reference = predict(factored, batches)[0], predict(dense, batches)[0]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, reference))
    result = evaluate_model(factored, None, sentiment, batches=batches)
    assert result.metrics == evaluate_model(dense, None, sentiment, batches=batches).metrics
    assert result.params == count_parameters(factored) != count_parameters(dense)


def test_mode_is_restored(sentiment):
    model, tokenizer = tiny_bert().train(), tiny_tokenizer()
    evaluate_model(model, tokenizer, sentiment, "test")
    assert model.training
    model.eval()
    evaluate_model(model, tokenizer, sentiment, "test")
    assert not model.training


def test_regression_scores_the_single_output(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"text": ["the movie", "a film", "loved it", "bad plot", "awful acting"],
                  "score": [0.5, 1.5, 4.25, 2.0, 3.5]}).to_csv(path, index=False)
    task = local_task({"train": path, "validation": path, "test": path}, text_column="text", label_column="score")
    model, tokenizer = tiny_bert(num_labels=1), tiny_tokenizer()
    result = evaluate_model(model, tokenizer, task, "test", batch_size=2)
    batches = make_batches(task, tokenizer, "test", batch_size=2)
    scores = torch.cat([logits[:, 0] for logits in predict(model, batches)[0]])
    assert result.metrics == pytest.approx(compute_metrics(task, scores.numpy(), [0.5, 1.5, 4.25, 2.0, 3.5]))


def test_ner_scores_first_word_pieces_only(tmp_path):
    path = tmp_path / "ner.jsonl"
    rows = [{"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["Acme", "works", "in", "London"], "tags": ["B-ORG", "O", "O", "B-LOC"]}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    task = local_task({"train": path, "validation": path, "test": path}, text_column="tokens", label_column="tags")
    model, tokenizer = tiny_bert_token(num_labels=4), tiny_tokenizer()
    result = evaluate_model(model, tokenizer, task, "test")
    batch = make_batches(task, tokenizer, "test")[0]
    logits = predict(model, [batch])[0][0]
    keep = batch["labels"] != -100
    assert keep.sum() == 8  # one position per word
    expected = compute_metrics(task, [logits[i][keep[i]].argmax(-1) for i in range(2)],
                               [batch["labels"][i][keep[i]] for i in range(2)])
    assert result.metrics == pytest.approx(expected)
    assert list(result.metrics) == ["f1", "precision", "recall", "accuracy"]


def test_count_parameters_counts_tied_weights_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert count_parameters(model) == 20


def test_progress_reports_each_batch(sentiment):
    calls = []
    evaluate_model(tiny_bert(), tiny_tokenizer(), sentiment, "test", batch_size=20,
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_intervals_kept_predictions_and_json(sentiment):
    model, tokenizer = tiny_bert(), tiny_tokenizer()
    result = evaluate_model(model, tokenizer, sentiment, "test", batch_size=10)
    interval = result.intervals["accuracy"]
    assert interval.method == "wilson" and interval.contains(result.metrics["accuracy"])
    assert len(result.predictions) == len(result.references) == 48
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["intervals"]["accuracy"]["low"] == interval.low
    assert "predictions" not in as_dict and "references" not in as_dict
    assert "predictions" not in repr(result)


def test_difference_pairs_the_same_examples_only(sentiment):
    from fwsvd.evaluate.evaluation import difference

    tokenizer = tiny_tokenizer()
    first = evaluate_model(tiny_bert(), tokenizer, sentiment, "test")
    again = evaluate_model(tiny_bert(), tokenizer, sentiment, "test")  # same seed: the same model
    found = difference(sentiment, first, again)["accuracy"]
    assert (found.value, found.interval.low, found.interval.high) == (0.0, 0.0, 0.0)
    assert found.verdict == "inside the noise"
    fewer = evaluate_model(tiny_bert(), tokenizer, sentiment, "test", limit=20)
    with pytest.raises(ValueError, match="same examples"):
        difference(sentiment, first, fewer)
