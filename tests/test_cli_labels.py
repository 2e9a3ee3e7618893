"""Your own model and data through the command line: labels matched by name (--label-map for the rest),
NER metrics named for what they are, and a compression document that rebuilds the model on its own
(``fwsvd compress --config FILE --output DIR``), all through the real entry point on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import BertConfig, BertForTokenClassification

from fwsvd.cli import main
from fwsvd.io.persistence import read_compressed_info
from tiny_task import minilm_tokenizer, save_tiny_classifier, write_reviews

DATA = ["--text-column", "review", "--label-column", "sentiment"]
FAST = ["--max-length", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def named_model(tmp_path_factory) -> Path:
    """A tiny classifier whose classes are named (negative = 0, positive = 1), as a fine-tuned model's are."""
    directory = save_tiny_classifier(tmp_path_factory.mktemp("named") / "model")
    config = json.loads((directory / "config.json").read_text())
    config.update(id2label={"0": "negative", "1": "positive"}, label2id={"negative": 0, "positive": 1})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _reviews(tmp_path: Path, names: tuple[str, str], name: str) -> Path:
    """The tiny reviews with labels 0 / 1 written as ``names``."""
    path = write_reviews(tmp_path / "ids.csv", rows=60)
    frame = pd.read_csv(path)
    frame["sentiment"] = frame["sentiment"].map(dict(enumerate(names)))
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def _run(args: list, tmp_path: Path) -> dict:
    path = tmp_path / "result.json"
    assert main([*map(str, args), "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_label_map_scores_renamed_labels_as_the_model_names_them(named_model, tmp_path, cache_dir, capsys):
    ids = _run(["evaluate", "--model", named_model, "--data-files", write_reviews(tmp_path / "i.csv", rows=60),
                *DATA, *FAST], tmp_path)
    named = _run(["evaluate", "--model", named_model, "--data-files",
                  _reviews(tmp_path, ("negative", "positive"), "named.csv"), *DATA, *FAST], tmp_path)
    mapped = _run(["evaluate", "--model", named_model, "--data-files",
                   _reviews(tmp_path, ("rotten", "fresh"), "rt.csv"), *DATA, *FAST,
                   "--label-map", "rotten=negative,fresh=positive"], tmp_path)
    assert ids["metrics"] == named["metrics"] == mapped["metrics"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(named_model), "--data-files",
                 str(_reviews(tmp_path, ("rotten", "fresh"), "rt.csv")), *DATA]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fwsvd: error: the labels of 'sentiment' do not match") and "\n" not in error
    assert "'fresh', 'rotten'" in error and "'negative', 'positive'" in error and "--label-map" in error


@pytest.mark.parametrize("argv, expected", [
    (["--label-map", "rotten"], "label map item 'rotten' is not DATA=MODEL"),
    (["--label-map", "rotten=negative,fresh=neutral"], "sends 'fresh' to 'neutral', which is neither a label"),
])
def test_bad_label_maps_are_one_line(named_model, tmp_path, cache_dir, capsys, argv, expected):
    data = _reviews(tmp_path, ("rotten", "fresh"), "rt.csv")
    assert main(["evaluate", "--model", str(named_model), "--data-files", str(data), *DATA, *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fwsvd: error: ") and expected in lines[0], lines


def test_a_compression_document_rebuilds_the_model_on_its_own(named_model, tmp_path, cache_dir):
    """The Export page's promise: the document records the model, the data and the label map, so that
    `fwsvd compress --config FILE --output DIR` needs nothing else and builds the same model."""
    data = _reviews(tmp_path, ("rotten", "fresh"), "rt.csv")
    first = _run(["compress", "--model", named_model, "--data-files", data, *DATA, "--label-map",
                  "rotten=negative,fresh=positive", "--rank-ratio", "0.5", "--fisher-examples", "32", *FAST,
                  "--output", tmp_path / "first"], tmp_path)
    assert first["config"]["model"] == str(named_model.resolve())
    assert first["config"]["data"] == {"data_files": {"train": str(data.resolve())}, "text_column": "review",
                                       "label_column": "sentiment"}
    assert first["config"]["label_map"] == {"rotten": "negative", "fresh": "positive"}
    document = tmp_path / "fwsvd_config.json"
    document.write_text(json.dumps(first["config"]))
    again = _run(["compress", "--config", document, "--output", tmp_path / "again"], tmp_path)
    assert again["config"] == first["config"] and again["ranks"] == first["ranks"]
    assert again["fisher"] == first["fisher"]  # the same Fisher: same model, data, labels and settings
    assert read_compressed_info(tmp_path / "again")["config"] == first["config"]


def test_compress_without_a_model_says_where_one_comes_from(tmp_path, cache_dir, capsys):
    assert main(["compress", "--rank-ratio", "0.5", "--method", "svd", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "fwsvd: error: give --model SOURCE"


def test_ner_metrics_are_named_for_what_they_are(tmp_path, cache_dir, capsys):
    names = ("O", "B-PER", "I-PER")
    directory = tmp_path / "ner"
    # A tagger over MiniLM's vocabulary, O as label 0.
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3,
                        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
    BertForTokenClassification(config).save_pretrained(directory)
    minilm_tokenizer().save_pretrained(directory)
    rows = [{"tokens": ["john", "smith", "is", "here"], "tags": ["B-PER", "I-PER", "O", "O"]}] * 12
    data = tmp_path / "ner.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    result = _run(["evaluate", "--model", directory, "--data-files", data, "--text-column", "tokens",
                   "--label-column", "tags", "--split", "validation"], tmp_path)
    assert list(result["metrics"]) == ["f1", "precision", "recall", "accuracy"]  # keys stay short for scripts
    out = capsys.readouterr().out
    assert "entity-level F1 (seqeval)" in out and "entity-level precision (seqeval)" in out
    assert "token accuracy" in out
    # The tokens column chosen as labels is refused by name, not by a puzzling label count.
    assert main(["evaluate", "--model", str(directory), "--data-files", str(data), "--text-column", "tokens",
                 "--label-column", "tokens"]) == 2
    assert "is also the text column" in capsys.readouterr().err
    words = tmp_path / "words.jsonl"
    words.write_text("\n".join(json.dumps({**row, "copy": row["tokens"]}) for row in rows))
    assert main(["evaluate", "--model", str(directory), "--data-files", str(words), "--text-column", "tokens",
                 "--label-column", "copy"]) == 2
    error = capsys.readouterr().err
    assert "label column 'copy' holds 4 distinct values, 4 of them not entity tags" in error and "'john'" in error
