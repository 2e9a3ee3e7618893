"""The dashboard's demos and language modelling: the Model & task page lists every demo of the registry with its
title and build state, the sentiment demo stays the first open, the build button builds a demo with progress
(model, then Fisher and statistics) and opens it; and a causal language model on a .txt file works on every page,
scored by perplexity with "lower is better" shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import VOCAB
from tiny_text import WORDS, tiny_tokenizer
from fwsvd.io import demos
from fwsvd.view.explorer import Source

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 240  # seconds per run: the CPU is shared and the first run imports torch and transformers
MODEL_PAGE = "pages/1_model_and_task.py"
BLOCKS = 14


def _app() -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]
    return at


def _texts(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, metrics, info boxes, chart specs)."""
    parts = [element.value for kind in ("markdown", "caption", "info", "warning", "success", "subheader", "title")
             for element in at.get(kind)]
    parts += [f"{metric.label} {metric.value}" for metric in at.metric]
    parts += [chart.proto.spec for chart in at.get("plotly_chart")]
    return "\n".join(str(part) for part in parts)


@pytest.fixture
def demo_app(cache_dir, monkeypatch):
    """The dashboard on its defaults (the sentiment demo) with an empty cache: no demo is built."""
    for name in ("FWSVD_APP_MODEL", "FWSVD_APP_TASK"):
        monkeypatch.delenv(name, raising=False)
    return _open(_app(), MODEL_PAGE)


def test_the_picker_lists_every_demo_with_the_sentiment_demo_first_open(demo_app):
    at = demo_app
    assert at.radio(key="start_from").value == "demo"
    picker = at.radio(key="demo_name")
    assert picker.options == [demo.title for demo in demos.DEMOS.values()]
    assert len(picker.options) == 3 and picker.value == "sentiment"
    assert at.session_state["source"] == Source()
    assert at.button(key="open_demo").label == f"Build (about {demos.DEMOS['sentiment'].build_minutes} minutes, once) and open"
    assert "not built yet" in picker.proto.captions[1]


def test_the_build_button_builds_with_progress_then_opens_the_demo(demo_app, monkeypatch):
    calls: list[tuple] = []
    built: list[bool] = []

    def ensure(cache_dir=None, progress=None, force=False):
        progress(0, 2)
        progress(2, 2)
        built.append(True)
        calls.append(("ensure", progress is not None))
        return Path("unused")

    def prepare_explorer(source, config=None, progress=None, *, statistics=False):
        progress(1, 1)
        calls.append(("prepare", source, config, statistics))
        return Path("unused")

    def prepare_headline(source=None, config=None, *, statistics_progress=None, progress=None):
        progress(1, 1)
        calls.append(("headline", source, config))
        return Path("unused")

    ner = dataclasses.replace(demos.DEMOS["ner"], ensure=ensure, is_built=lambda cache_dir=None: bool(built))
    monkeypatch.setitem(demos.DEMOS, "ner", ner)
    monkeypatch.setattr("fwsvd.io.explorer.prepare_explorer", prepare_explorer)
    monkeypatch.setattr("fwsvd.io.headline.prepare_headline", prepare_headline)
    at = demo_app
    at.radio(key="demo_name").set_value("ner").run()
    assert at.button(key="open_demo").label == f"Build (about {ner.build_minutes} minutes, once) and open"
    at.button(key="open_demo").click().run()
    assert not at.exception, at.exception
    source = Source(model="demo-ner", task="demo-ner")
    assert calls == [("ensure", True), ("prepare", source, ner.fisher, True), ("headline", source, ner.fisher)]
    assert at.session_state["source"] == source
    assert at.session_state["fisher_config"] == ("demo-ner", ner.fisher)
    # The page now shows the demo as built and open: its button has nothing left to do.
    assert at.radio(key="demo_name").value == "ner" and at.button(key="open_demo").disabled


def test_a_demo_before_its_build_sends_every_page_to_the_picker(demo_app):
    at = demo_app
    at.session_state["source"] = Source(model="demo-lm", task="demo-lm")
    at = _open(at, "pages/3_rank_explorer.py")
    assert "`demo-lm` is not built yet" in _texts(at)


# --------------------------------------------------------------------------------------------------
# A causal language model on a .txt file


def _write_text(path: Path, lines: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = [word for word in WORDS if not word.startswith("##")]
    path.write_text("".join(" ".join(rng.choice(words, size=rng.integers(4, 12))) + ".\n" for _ in range(lines)))
    return path


@pytest.fixture(scope="module")
def lm_env(tmp_path_factory):
    """A tiny random Llama of 14 blocks (past the block picker's buttons) saved with the tiny tokenizer, a .txt
    file, and a cache with the pages' default Fisher and token statistics."""
    import os

    from fwsvd.config import FisherConfig
    from fwsvd.data.language_modeling import text_task
    from fwsvd.fisher.task import task_fisher
    from fwsvd.io.models import load_for_task

    root = tmp_path_factory.mktemp("lm_app")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=BLOCKS, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256)).eval()
    model.save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    env = {"FWSVD_APP_MODEL": str(root / "lm"), "FWSVD_APP_TASK": str(_write_text(root / "book.txt")),
           "FWSVD_CACHE_DIR": str(root / "cache")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    loaded, tokenizer, task, _ = load_for_task(env["FWSVD_APP_MODEL"], text_task(env["FWSVD_APP_TASK"]))
    task_fisher(loaded, tokenizer, task, FisherConfig(), statistics=True)
    yield env
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture
def lm_app(lm_env) -> AppTest:
    return _app()


def test_a_language_model_on_a_text_file_opens_as_language_modelling(lm_app):
    at = _open(lm_app, MODEL_PAGE)
    assert at.radio(key="start_from").value == "own"
    text = _texts(at)
    assert "language modeling" in text and "perplexity (lower is better)" in text


@pytest.mark.parametrize("page", ["pages/2_fisher.py", "pages/3_rank_explorer.py", "pages/4_compare.py",
                                  "pages/5_export.py"])
def test_every_page_works_on_a_language_model(lm_app, page):
    at = _open(lm_app, page)
    if page.endswith("4_compare.py") or page.endswith("3_rank_explorer.py"):
        assert "lower is better" in _texts(at)


def test_the_explorer_picks_one_of_many_blocks_from_a_dropdown_and_evaluates_perplexity(lm_app):
    at = _open(lm_app, "pages/3_rank_explorer.py")
    picker = at.selectbox(key="slider_block")
    assert len(picker.options) == BLOCKS and picker.options[-1] == f"Block {BLOCKS - 1}"
    picker.set_value(f"model.layers.{BLOCKS - 1}").run()
    assert not at.exception, at.exception
    limit = at.number_input(key="eval_limit")
    assert limit.max == limit.value  # the text's validation blocks, not its lines: fewer than 8 here
    limit.set_value(limit.max).run()
    at.button(key="evaluate").click().run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]
    column = "perplexity (lower is better) (95% interval)"
    table = next(frame.value for frame in at.dataframe if column in frame.value.columns)
    assert list(table["model"])[0] == "dense model"
    assert all(float(text.split()[0]) > 1 for text in table[column])  # "value (low–high)" per model
    assert "perplexity (lower is better)" in _texts(at)
