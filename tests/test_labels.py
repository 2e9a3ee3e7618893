"""Labels matched to the model's by name: a permuted head scores exactly the same, unknown names are refused,
a label map gives the right score, and token tags follow the model's id2label (O as 0)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from seqeval.metrics import f1_score

from conftest import tiny_bert, tiny_bert_token
from fwsvd.data import tasks
from fwsvd.data.batches import IGNORE_INDEX, make_batches
from fwsvd.data.labels import format_label_map, match_labels, model_label_names, parse_label_map
from fwsvd.data.tasks import get_task, local_task
from fwsvd.evaluate.evaluation import evaluate_model, predict
from fwsvd.evaluate.metrics import compute_metrics
from fwsvd.evaluate.finetune import finetune_
from fwsvd.fisher.task import task_fisher
from fwsvd.io.models import load_any_model, load_for_task
from tiny_text import sentiment_frame, tiny_tokenizer

SENTIMENT = {0: "negative", 1: "positive"}


@pytest.fixture(autouse=True)
def _fresh_split_cache():
    tasks._load_split_cached.cache_clear()
    yield
    tasks._load_split_cached.cache_clear()


def _save(model, directory):
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def _reviews(tmp_path, names=("negative", "positive"), name="reviews.csv"):
    """The sentiment reviews with their labels renamed ``names`` (negative, positive), one file per role."""
    frame = sentiment_frame(repeats=3)
    frame["sentiment"] = frame["sentiment"].map(dict(zip(("negative", "positive"), names)))
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return local_task({"train": path, "validation": path, "test": path}, text_column="review",
                      label_column="sentiment")


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """A tiny sentiment classifier that has learnt the reviews (negative = 0, positive = 1), and the same
    classifier saved with its two classes the other way round (head rows and id2label swapped)."""
    root = tmp_path_factory.mktemp("classifiers")
    model = tiny_bert(num_labels=2)
    model.config.id2label, model.config.label2id = dict(SENTIMENT), {v: k for k, v in SENTIMENT.items()}
    task = _reviews(root)
    finetune_(model, tiny_tokenizer(), task, epochs=6, learning_rate=3e-3, batch_size=8)
    straight = _save(model.eval(), root / "straight")
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    model.config.id2label, model.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    return straight, _save(model, root / "swapped")


def _score(source, task, **kwargs):
    loaded = load_for_task(source, task, **kwargs)
    return evaluate_model(loaded.model, loaded.tokenizer, loaded.task, "test").metrics["accuracy"], loaded


def test_a_permuted_head_scores_exactly_the_same(classifiers, tmp_path, cache_dir):
    straight, swapped = classifiers
    task = _reviews(tmp_path)
    accuracy, first = _score(straight, task)
    assert accuracy > 0.8  # far from 0.5, so a flipped reading (1 - accuracy) could not pass
    permuted_accuracy, second = _score(swapped, task)
    assert permuted_accuracy == accuracy
    assert second.task.label_names == ("positive", "negative") and second.task.data_label_names is not None
    assert first.task.data_id("train") != second.task.data_id("train")  # other ids: other cache entries
    # The Fisher is taken against the same targets: the encoder's importances are the same.
    fisher, permuted = (task_fisher(loaded.model, loaded.tokenizer, loaded.task).importances
                        for loaded in (first, second))
    assert fisher.keys() == permuted.keys()
    for name in fisher:
        torch.testing.assert_close(permuted[name], fisher[name], rtol=1e-5, atol=0)


def test_load_any_model_refuses_a_task_the_model_numbers_otherwise(classifiers, tmp_path):
    with pytest.raises(ValueError, match=r"numbers the labels of 'sentiment' otherwise than the data.*load_for_task"):
        load_any_model(classifiers[1], _reviews(tmp_path))
    assert load_any_model(classifiers[0], _reviews(tmp_path))[0] is not None  # the same numbering loads


def test_names_the_model_does_not_know_are_refused_with_both_sets(classifiers, tmp_path):
    with pytest.raises(ValueError) as raised:
        load_for_task(classifiers[0], _reviews(tmp_path, ("rotten", "fresh")))
    message = str(raised.value)
    assert "'fresh', 'rotten'" in message and "'negative', 'positive'" in message and "--label-map" in message
    assert "\n" not in message


@pytest.mark.parametrize("model_index", [0, 1])
def test_a_label_map_gives_the_right_score(classifiers, tmp_path, model_index):
    expected, _ = _score(classifiers[0], _reviews(tmp_path))
    renamed = _reviews(tmp_path, ("rotten", "fresh"), name="renamed.csv")
    accuracy, _ = _score(classifiers[model_index], renamed, label_map=parse_label_map("rotten=negative,fresh=positive"))
    assert accuracy == expected
    # Ids work as well as names on the right-hand side.
    assert _score(classifiers[0], renamed, label_map={"rotten": "0", "fresh": "1"})[0] == expected


def test_generic_names_take_integer_ids_and_refuse_strings_without_a_map(tmp_path):
    path = _save(tiny_bert(num_labels=2), tmp_path / "generic")
    with pytest.raises(ValueError, match=r"only LABEL_0 … LABEL_1 .*--label-map negative=ID,positive=ID"):
        load_for_task(path, _reviews(tmp_path))
    mapped = load_for_task(path, _reviews(tmp_path), label_map={"negative": "1", "positive": "LABEL_0"}).task
    assert mapped.label_names == ("LABEL_0", "LABEL_1")
    assert mapped.load_split("train")["sentiment"][:2] == [0, 0]  # the first rows are positive -> 0
    frame = sentiment_frame(repeats=1).assign(sentiment=lambda f: (f["sentiment"] == "positive").astype(int))
    frame.to_csv(tmp_path / "ids.csv", index=False)
    ids = local_task(tmp_path / "ids.csv", text_column="review", label_column="sentiment")
    assert load_for_task(path, ids).task == ids  # integers are ids, as they are
    with pytest.raises(ValueError, match="integer class ids.*leave the label map out"):
        load_for_task(path, ids, label_map={"0": "1"})


def test_token_tags_follow_the_model_with_o_as_zero(tmp_path):
    names = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    model = tiny_bert_token(num_labels=5, seed=3)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    rows = [{"tokens": ["john", "smith", "lives", "in", "london"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]},
            {"tokens": ["acme", "works", "in", "pa", "##ris"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]}] * 4
    data = tmp_path / "ner.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    task = local_task({"train": data, "validation": data, "test": data}, text_column="tokens", label_column="tags")
    assert task.label_names == ("B-LOC", "B-PER", "I-LOC", "I-PER", "O")  # the data's own (sorted) numbering
    loaded = load_for_task(_save(model, tmp_path / "ner"), task)
    assert loaded.task.label_names == names
    batches = make_batches(loaded.task, loaded.tokenizer, "test")
    first = [int(label) for label in batches[0]["labels"][0] if label != IGNORE_INDEX]
    assert first == [names.index(tag) for tag in rows[0]["tags"]]
    # Entity-level F1 against a reference computed from the tags themselves, named by the model.
    logits = predict(loaded.model, batches)[0]
    predicted = []
    for batch, batch_logits in zip(batches, logits):
        for labels, sentence in zip(batch["labels"], batch_logits.argmax(-1)):
            keep = labels != IGNORE_INDEX
            predicted.append([names[i] for i in sentence[keep]])
    reference = [row["tags"] for row in rows]
    result = evaluate_model(loaded.model, loaded.tokenizer, loaded.task, "test")
    assert result.metrics["f1"] == pytest.approx(f1_score(reference, predicted, zero_division=0))


def test_hub_labels_ordered_otherwise_are_renumbered_and_case_is_ignored(monkeypatch):
    rows = {"premise": ["a", "b", "c"], "hypothesis": ["d", "e", "f"], "label": [0, 1, 2]}
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    monkeypatch.setattr(tasks.datasets, "load_dataset",
                        lambda *args, split: datasets.Dataset.from_dict(rows, features=features))
    model = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    matched = match_labels(get_task("mnli"), model, 3)
    assert matched.load_split("validation")["label"] == [2, 1, 0]
    assert matched.label_names == ("CONTRADICTION", "NEUTRAL", "ENTAILMENT")
    # A model that names nothing reads the ClassLabel ids as its own.
    assert match_labels(get_task("mnli"), {i: f"LABEL_{i}" for i in range(3)}, 3) == get_task("mnli")


def test_the_same_numbering_keeps_the_data_identity():
    demo = get_task("demo")
    assert match_labels(demo, SENTIMENT, 2) == demo  # the demo model's cached Fisher stays valid
    assert match_labels(demo, {0: "positive", 1: "negative"}, 2).data_id("train") != demo.data_id("train")


def test_model_label_names_and_label_map_text():
    assert model_label_names({0: "LABEL_0", 1: "LABEL_1"}, 2) is None
    assert model_label_names({"1": "pos", "0": "neg"}, 2) == ("neg", "pos")
    assert parse_label_map(" rotten = negative , fresh=positive,") == {"rotten": "negative", "fresh": "positive"}
    assert format_label_map({"rotten": "negative", "fresh": "positive"}) == "rotten=negative,fresh=positive"
    for bad, expected in (("rotten", "not DATA=MODEL"), ("=negative", "not DATA=MODEL"),
                          ("a=b,a=c", "sends 'a' to both")):
        with pytest.raises(ValueError, match=expected):
            parse_label_map(bad)
    with pytest.raises(ValueError, match="names 'stale', which the data does not hold"):
        match_labels(get_task("demo"), SENTIMENT, 2, {"stale": "negative"})
    with pytest.raises(ValueError, match="sends 'negative' to 'bad', which is neither a label"):
        match_labels(get_task("demo"), SENTIMENT, 2, {"negative": "bad"})


def test_f1_is_of_the_positive_class_however_the_model_numbers_it():
    mrpc = get_task("mrpc")  # not_equivalent = 0, equivalent = 1: F1 of "equivalent"
    swapped = match_labels(mrpc, {0: "equivalent", 1: "not_equivalent"}, 2)
    references, predictions = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    flipped = lambda ids: [1 - i for i in ids]  # noqa: E731 - the same labels in the swapped model's ids
    assert compute_metrics(swapped, flipped(predictions), flipped(references)) == pytest.approx(
        compute_metrics(mrpc, predictions, references))
