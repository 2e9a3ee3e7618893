"""Batches: dynamic padding, label dtypes, limit / shuffle, and NER tags aligned to word pieces."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from fwsvd.data import batches, tasks
from fwsvd.data.batches import IGNORE_INDEX, align_labels, make_batches
from fwsvd.data.tasks import local_task
from tiny_text import sentiment_frame, sentiment_task, tiny_tokenizer


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def sentiment(tmp_path):
    return sentiment_task(tmp_path, repeats=2)  # 32 rows


@pytest.fixture
def ner(tmp_path):
    path = tmp_path / "ner.jsonl"
    rows = [{"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["Acme", "works"], "tags": ["B-ORG", "O"]}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return local_task({"train": path, "validation": path, "test": path}, text_column="tokens", label_column="tags")


def test_classification_batches_are_padded_to_their_longest(sentiment, tokenizer):
    batches = make_batches(sentiment, tokenizer, "test", batch_size=5)
    assert [len(batch["labels"]) for batch in batches] == [5] * 6 + [2]
    texts = list(sentiment.load_split("test")["review"])
    for index, batch in enumerate(batches):
        lengths = [len(tokenizer(text)["input_ids"]) for text in texts[index * 5:(index + 1) * 5]]
        assert batch["input_ids"].shape == (len(lengths), max(lengths))
        assert batch["attention_mask"].sum(1).tolist() == lengths
        assert batch["labels"].dtype == torch.long
    first = batches[0]
    expected = tokenizer(texts[0])["input_ids"]
    assert first["input_ids"][0].tolist()[:len(expected)] == expected
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_labels_are_the_class_ids(sentiment, tokenizer):
    labels = torch.cat([b["labels"] for b in make_batches(sentiment, tokenizer, "test", batch_size=7)])
    expected = [int(label == "positive") for label in sentiment_frame(2)["sentiment"]]
    assert labels.tolist() == expected


def test_limit_and_seeded_shuffle(sentiment, tokenizer):
    def labels_of(**kwargs):
        return torch.cat([b["labels"] for b in make_batches(sentiment, tokenizer, "test", **kwargs)]).tolist()

    every = labels_of(batch_size=4)
    assert labels_of(batch_size=4, limit=10) == every[:10]
    shuffled = labels_of(batch_size=4, shuffle=True, seed=3)
    assert shuffled == labels_of(batch_size=4, shuffle=True, seed=3)
    assert sorted(shuffled) == sorted(every) and shuffled != every
    assert labels_of(batch_size=4, shuffle=True, seed=3, limit=6) == shuffled[:6]


def test_group_by_length_covers_every_example_once_with_less_padding(tmp_path, tokenizer):
    path = tmp_path / "mixed.csv"
    texts = [" ".join(["very"] * (1 + i % 9)) + " good" for i in range(90)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(90)]}).to_csv(path, index=False)
    task = local_task({"train": path, "validation": path, "test": path}, text_column="text", label_column="label")
    plain = make_batches(task, tokenizer, "train", batch_size=8, shuffle=True)
    grouped = make_batches(task, tokenizer, "train", batch_size=8, shuffle=True, group_by_length=True)
    assert sorted(len(b["labels"]) for b in grouped) == sorted(len(b["labels"]) for b in plain)
    rows = sorted(tuple(ids[mask.bool()].tolist()) for b in grouped
                  for ids, mask in zip(b["input_ids"], b["attention_mask"]))
    assert rows == sorted(tuple(tokenizer(text)["input_ids"]) for text in texts)
    assert sum(b["input_ids"].numel() for b in grouped) < 0.8 * sum(b["input_ids"].numel() for b in plain)
    again = make_batches(task, tokenizer, "train", batch_size=8, shuffle=True, group_by_length=True)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped, again))


def test_truncation_to_max_length(sentiment, tokenizer):
    batch = make_batches(sentiment, tokenizer, "test", max_length=4)[0]
    assert batch["input_ids"].shape[1] == 4
    assert (batch["input_ids"][:, -1] == tokenizer.sep_token_id).all()


def test_regression_labels_are_float_and_pairs_get_segment_ids(tmp_path, tokenizer):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"a": ["the movie", "what question"], "b": ["a film", "same question ?"],
                  "score": [4.5, 1.25]}).to_csv(path, index=False)
    task = local_task({"train": path, "validation": path, "test": path},
                      text_column="a", text_pair_column="b", label_column="score")
    batch = make_batches(task, tokenizer, "test")[0]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [4.5, 1.25]
    expected = tokenizer("the movie", "a film")
    assert batch["input_ids"][0].tolist() == expected["input_ids"] + [0] * (batch["input_ids"].shape[1] - 7)
    assert batch["token_type_ids"][0].tolist()[:7] == [0, 0, 0, 0, 1, 1, 1]


def test_ner_tags_are_aligned_to_word_pieces(ner, tokenizer):
    batch = make_batches(ner, tokenizer, "test")[0]
    names = ner.label_names  # ("B-LOC", "B-ORG", "B-PER", "O")
    # [CLS] john lives in pa ##ris [SEP]   /   [CLS] acme works [SEP] + 3 pads
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == [
        "[CLS]", "john", "lives", "in", "pa", "##ris", "[SEP]"]
    tag = {name: i for i, name in enumerate(names)}
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, tag["B-PER"], tag["O"], tag["O"], tag["B-LOC"],
                                           IGNORE_INDEX, IGNORE_INDEX]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, tag["B-ORG"], tag["O"], IGNORE_INDEX,
                                           IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_align_labels_marks_specials_and_later_pieces():
    assert align_labels([5, 7], [None, 0, 0, 1, None]) == [-100, 5, -100, 7, -100]


def test_left_padding_is_respected(sentiment, tokenizer):
    tokenizer.padding_side = "left"
    batch = make_batches(sentiment, tokenizer, "test", batch_size=4)[0]
    lengths = batch["attention_mask"].sum(1)
    assert (batch["attention_mask"][:, -1] == 1).all() and lengths.min() < batch["input_ids"].shape[1]


def test_a_split_is_tokenised_once_per_tokenizer(sentiment, tokenizer, monkeypatch):
    make_batches(sentiment, tokenizer, "test")
    loads = []
    original = tasks.Task.load_split
    monkeypatch.setattr(tasks.Task, "load_split", lambda self, role: loads.append(role) or original(self, role))
    make_batches(sentiment, tokenizer, "test", batch_size=3, shuffle=True)
    assert loads == []
    make_batches(sentiment, tokenizer, "test", max_length=5)
    assert loads == ["test"]
    assert len(batches._ENCODED[tokenizer]) == 2


def test_bad_arguments(sentiment, tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(sentiment, tokenizer, "test", batch_size=0)
    with pytest.raises(ValueError, match="limit"):
        make_batches(sentiment, tokenizer, "test", limit=0)
