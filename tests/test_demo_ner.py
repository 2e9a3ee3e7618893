"""The NER demo: its corpus (parsing, tags, split), its batches, its build, the registry of demos and the CLI's
``demo --name`` / ``--model demo-ner``; the real build and its compression are the slow tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from app_support import minilm_tokenizer_path
from demo_support import TINY_BUILDS, tiny_ner_build
from fwsvd.cli import build_parser, main
from fwsvd.data.batches import IGNORE_INDEX, make_batches
from fwsvd.data.tasks import TASK_NAMES, get_task
from fwsvd.data.twitter_ner import ENTITY_TYPES, TAGS, load_corpus, parse_conll
from fwsvd.io import demo_ner
from fwsvd.io.demo_ner import ensure_ner_demo_model, ner_demo_is_built
from fwsvd.io.demos import DEFAULT_DEMO, DEMOS, demo_of_model, get_demo
from fwsvd.storage.locations import DEMO_BUILDS, DEMO_INFO_FILE, DEMO_NER_VERSION, demo_model_dir

TASK = get_task("demo-ner")


# --------------------------------------------------------------------------------------------------
# The corpus


def test_parse_splits_sentences_at_whitespace_only_lines():
    text = "Empire\tB-facility\nState\tI-facility\n.\tO\n\t\n\nhi\tO\n@bob\tB-person\n \nlast\tO"
    assert parse_conll(text) == [(["Empire", "State", "."], ["B-facility", "I-facility", "O"]),
                                 (["hi", "@bob"], ["O", "B-person"]),
                                 (["last"], ["O"])]


def test_parse_keeps_tokens_with_spaces_and_refuses_lines_without_a_known_tag():
    assert parse_conll("New York\tB-geo-loc\n") == [(["New York"], ["B-geo-loc"])]
    with pytest.raises(ValueError, match=r"line 2 \('oops'\) is not 'token<TAB>tag'"):
        parse_conll("a\tO\noops\n")
    with pytest.raises(ValueError, match=r"line 1 \('a\\tB-LOC'\) is not 'token<TAB>tag' with a tag among O, "):
        parse_conll("a\tB-LOC\n")


def test_tags_are_bio_over_ten_entity_types_outside_first():
    assert len(ENTITY_TYPES) == 10 and len(TAGS) == 21 and TAGS[0] == "O"
    assert TAGS[1:] == tuple(f"{prefix}-{kind}" for kind in ENTITY_TYPES for prefix in "BI")
    assert TASK.label_names == TAGS and TASK.num_labels == 21 and TASK.kind == "token_classification"


def test_corpus_holds_every_tweet_of_the_file():
    corpus = load_corpus()
    assert len(corpus) == 2394
    assert corpus.features["tags"].feature.names == list(TAGS)
    first = corpus[0]
    assert first["tokens"][:3] == ["@paulwalk", "It", "'s"] and len(first["tokens"]) == len(first["tags"]) == 27
    assert [TAGS[tag] for tag in first["tags"][14:17]] == ["B-facility", "I-facility", "I-facility"]
    counts = np.bincount([tag for tags in corpus["tags"] for tag in tags], minlength=len(TAGS))
    assert counts.sum() == 46469 and counts[0] == 44007 and counts[TAGS.index("B-person")] == 449
    assert counts.min() > 0  # every tag occurs


def test_split_is_80_10_10_disjoint_and_fixed():
    splits = {role: TASK.load_split(role) for role in ("train", "validation", "test")}
    assert {role: len(split) for role, split in splits.items()} == {"train": 1916, "validation": 239, "test": 239}
    sentences = {role: [" ".join(tokens) for tokens in split["tokens"]] for role, split in splits.items()}
    # The fixed-seed permutation: test first, then validation, then train (each kept in file order).
    order = np.random.default_rng(0).permutation(2394)
    corpus = [" ".join(tokens) for tokens in load_corpus()["tokens"]]
    assert sentences["test"] == [corpus[i] for i in np.sort(order[:239])]
    assert sentences["validation"] == [corpus[i] for i in np.sort(order[239:478])]
    assert sorted(sentences["train"] + sentences["validation"] + sentences["test"]) == sorted(corpus)
    assert TASK.data_id("train").startswith("demo-ner:twitter_ner:") and TASK.data_id("train") != TASK.data_id("test")
    assert "demo-ner" in TASK_NAMES and get_task("demo").data_id("test").startswith("demo:rotten_tomatoes:")


def test_batches_tag_the_first_word_piece_of_each_word():
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_path())
    batches = make_batches(TASK, tokenizer, "test", batch_size=16, max_length=64)
    split = TASK.load_split("test")
    labels = [row for batch in batches for row in batch["labels"].tolist()]
    assert len(labels) == len(split) == 239
    for tags, tokens, row in zip(split["tags"], split["tokens"], labels):
        kept = [label for label in row if label != IGNORE_INDEX]
        encoded = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=64)
        whole = max(word for word in encoded.word_ids() if word is not None) + 1
        assert kept == tags[:whole]  # one label per word (all of them unless cut at 64 pieces), first piece
    pieces = tokenizer(["@paulwalk"], is_split_into_words=True)
    assert len(pieces["input_ids"]) > 3  # a word of several pieces: only its first carries the tag


# --------------------------------------------------------------------------------------------------
# The build and the registry


def test_ner_demo_builds_once_atomically_under_its_own_folder(cache_dir, monkeypatch):
    calls = []

    def build(directory, progress):
        calls.append(directory)
        tiny_ner_build(directory, progress)
    monkeypatch.setattr(demo_ner, "_build", build)
    assert not ner_demo_is_built()
    path = ensure_ner_demo_model()
    assert path == cache_dir / "demo-ner" / DEMO_NER_VERSION == demo_model_dir(model="demo-ner")
    assert ner_demo_is_built() and ensure_ner_demo_model() == path and len(calls) == 1
    assert calls[0].parent == path.parent and calls[0] != path
    assert ensure_ner_demo_model(force=True) == path and len(calls) == 2
    assert not (cache_dir / "demo" / "v2").exists()  # the sentiment demo's folder is its own


def test_failed_ner_build_leaves_nothing_behind(cache_dir, monkeypatch):
    def broken(directory, progress):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    monkeypatch.setattr(demo_ner, "_build", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        ensure_ner_demo_model()
    assert [p.name for p in (cache_dir / "demo-ner").iterdir()] == [f".{DEMO_NER_VERSION}.lock"]
    assert not ner_demo_is_built()


def test_registry_names_models_and_tasks_agree():
    assert DEFAULT_DEMO == "sentiment" and list(DEMOS)[0] == DEFAULT_DEMO
    assert {"sentiment", "ner"} <= set(DEMOS)
    for name, demo in DEMOS.items():
        assert demo.name == name and demo.task == demo.model and demo.task in TASK_NAMES and demo.title
        assert demo_of_model(demo.model) is demo and get_demo(name) is demo
    assert len({demo.model for demo in DEMOS.values()}) == len(DEMOS)
    assert (DEMOS["sentiment"].model, DEMOS["ner"].model) == ("demo", "demo-ner")
    assert set(DEMO_BUILDS) >= {"demo", "demo-ner"}
    assert demo_of_model("some/dir") is None
    with pytest.raises(ValueError, match=f"unknown demo 'pos'; demos: {', '.join(DEMOS)}$"):
        get_demo("pos")


def test_is_built_follows_each_demos_own_folder(tmp_path):
    for demo in DEMOS.values():
        assert not demo.is_built(tmp_path)
    folder = demo_model_dir(tmp_path, "demo-ner")
    folder.mkdir(parents=True)
    (folder / DEMO_INFO_FILE).write_text("{}")
    assert DEMOS["ner"].is_built(tmp_path) and not DEMOS["sentiment"].is_built(tmp_path)
    with pytest.raises(ValueError, match=f"unknown demo model 'demo-x'; demo models: {', '.join(DEMO_BUILDS)}$"):
        demo_model_dir(tmp_path, "demo-x")


def test_the_dashboards_demo_model_brings_its_own_task(monkeypatch):
    from fwsvd.view.explorer import Source

    monkeypatch.delenv("FWSVD_APP_TASK", raising=False)
    for demo in DEMOS.values():
        monkeypatch.setenv("FWSVD_APP_MODEL", demo.model)
        assert Source.from_environment() == Source(model=demo.model, task=demo.task)
    monkeypatch.setenv("FWSVD_APP_MODEL", "/some/model")
    assert Source.from_environment().task == "demo"  # as before for other models
    monkeypatch.setenv("FWSVD_APP_MODEL", "demo-ner")
    monkeypatch.setenv("FWSVD_APP_TASK", "conll2003")
    assert Source.from_environment().task == "conll2003"


# --------------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture
def tiny_demos(cache_dir, monkeypatch):
    """Every demo's build replaced by a tiny model of its kind."""
    for module, build in TINY_BUILDS.values():
        monkeypatch.setattr(module, "_build", build)
    return cache_dir


def test_demo_name_offers_every_demo_sentiment_by_default():
    parser = build_parser()
    assert parser.parse_args(["demo"]).name == "sentiment"
    assert parser.parse_args(["demo", "--name", "ner"]).name == "ner"
    action = next(a for a in parser._subparsers._group_actions[0].choices["demo"]._actions if a.dest == "name")
    assert list(action.choices) == list(DEMOS)


def test_demo_name_ner_caches_fisher_statistics_and_snapshot(tiny_demos, tmp_path, one_torch_thread):
    from fwsvd.config import FisherConfig
    from fwsvd.fisher.task import cached_task_fisher
    from fwsvd.io.models import load_model
    from fwsvd.view.explorer import Source, load_view, snapshot_key

    assert main(["demo", "--name", "ner", "--json", str(tmp_path / "ner.json")]) == 0
    written = json.loads((tmp_path / "ner.json").read_text())
    assert (written["name"], written["model"], written["task"]) == ("ner", "demo-ner", "demo-ner")
    assert written["model_dir"] == str((tiny_demos / "demo-ner" / DEMO_NER_VERSION).resolve())
    assert set(written["metrics"]) == {"f1", "precision", "recall", "accuracy"}
    view = load_view(snapshot_key(Source(model="demo-ner", task="demo-ner"), FisherConfig()))
    assert view is not None and len(view.analyses) == 12 and view.metric == "f1" and view.validation_size == 239
    model, _ = load_model("demo-ner", TASK)
    fisher = cached_task_fisher(model, TASK, FisherConfig(), statistics=True)
    assert fisher is not None and set(fisher.statistics) == set(fisher.importances) and len(fisher.statistics) == 12
    assert not (tiny_demos / "demo").exists()  # only the demo asked for is built
    snapshot = Path(written["explorer_snapshot"])
    before = snapshot.stat().st_mtime_ns
    assert main(["demo", "--name", "ner"]) == 0  # a second call reuses everything
    assert snapshot.stat().st_mtime_ns == before


def test_model_demo_ner_implies_its_task_in_every_subcommand(tiny_demos, tmp_path, one_torch_thread, capsys):
    assert main(["evaluate", "--model", "demo-ner", "--limit", "8", "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["task"] == "demo-ner" and set(evaluated["metrics"]) == {"f1", "precision", "recall", "accuracy"}
    assert main(["evaluate", "--model", "demo-ner", "--task", "demo-ner", "--limit", "8"]) == 0
    assert main(["fisher", "--model", "demo-ner", "--fisher-examples", "8", "--max-length", "32",
                 "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["provenance"]["num_examples"] == 8
    assert main(["compress", "--model", "demo-ner", "--method", "kfac", "--rank-ratio", "0.5", "--fisher-examples",
                 "8", "--max-length", "32", "--output", str(tmp_path / "out"), "--json", str(tmp_path / "c.json")]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "out"), "--task", "demo-ner", "--limit", "8"]) == 0
    assert main(["sweep", "--model", "demo-ner", "--methods", "svd", "--rank-ratios", "0.5", "--limit", "8",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["task"] == "demo-ner"
    # The sentiment demo's model keeps its own task.
    assert main(["evaluate", "--model", "demo", "--limit", "8", "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["task"] == "demo"


def test_demo_model_on_another_task_is_refused_in_one_line(tiny_demos, capsys):
    assert main(["evaluate", "--model", "demo-ner", "--task", "demo", "--limit", "8"]) == 2
    error = capsys.readouterr().err
    assert "model 'demo-ner' is a BertForTokenClassification, but task 'demo' (classification) needs a " \
           "*ForSequenceClassification model" in error and error.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# The real demo (slow: fine-tuning MiniLM-L6 for a few minutes on 2 cores, once, into the default cache)


@pytest.mark.slow
def test_real_ner_demo_reaches_f1_030_and_is_reused():
    import time

    path = ensure_ner_demo_model()
    info = json.loads((path / DEMO_INFO_FILE).read_text())
    assert info["test_metrics"]["f1"] >= 0.30
    assert info["split"]["sizes"] == {"train": 1916, "validation": 239, "test": 239}
    started = time.perf_counter()
    assert ensure_ner_demo_model() == path and time.perf_counter() - started < 1.0


@pytest.mark.slow
def test_real_ner_demo_fwsvd_beats_svd_at_ratio_033():
    """The paper's effect where plain SVD collapses: on the tweets, FWSVD keeps far more of the F1."""
    from fwsvd.config import CompressionConfig, FisherConfig
    from fwsvd.evaluate.evaluation import evaluate_model
    from fwsvd.fisher.task import task_fisher
    from fwsvd.io.models import load_model
    from fwsvd.surgery.compress import compressed_copy

    model, tokenizer = load_model("demo-ner", TASK)
    fisher = task_fisher(model, tokenizer, TASK, FisherConfig())  # the one `fwsvd demo --name ner` caches
    batches = make_batches(TASK, tokenizer, "test", max_length=64)
    f1 = {}
    for method in ("svd", "fwsvd"):
        compressed, _ = compressed_copy(model, CompressionConfig(method=method, rank_ratio=0.33),
                                        fisher=fisher.importances)
        f1[method] = evaluate_model(compressed, tokenizer, TASK, "test", batches=batches).metrics["f1"]
    assert f1["fwsvd"] > f1["svd"] + 0.05, f1
