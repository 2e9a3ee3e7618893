"""Your own model and data in the dashboard (AppTest, tiny model with labels neg / pos and a CSV): the choice
is first on the Model & task page, the split and the label matching are shown, labels the model names
otherwise are refused until mapped, a failed apply says what stays in use, the Fisher's example counts stop at
the training split, and the Export page's config names the model and data its command rebuilds from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_support import app_environment

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 180


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    with app_environment(tmp_path_factory.mktemp("own")) as env:
        yield env


def _page(page: str) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, at.exception
    return at


def _captions(at: AppTest) -> str:
    return "\n".join(caption.value for caption in at.caption)


def test_own_data_is_the_first_choice_and_the_split_is_shown(app_env):
    at = _page("1_model_and_task.py")
    assert at.radio[0].key == "start_from" and at.radio(key="start_from").options == [
        "The demo: MiniLM-L6 fine-tuned on Rotten Tomatoes reviews (offline)", "Your own model and data"]
    assert at.radio(key="start_from").value == "own"  # the environment's own model and CSV
    assert "classifier or token tagger" in at.caption[0].value and "file or the hub" in at.caption[0].value
    captions = _captions(at)
    # 160 reviews in one file: 16 test, 16 validation, 128 train, cut with seed 0.
    assert "split at random with seed 0: train 128 (80%), validation 16 (10%), test 16 (10%)" in captions
    assert "scored by accuracy" in captions
    at.radio(key="start_from").set_value("demo").run()
    assert not at.exception
    assert not [radio for radio in at.radio if radio.key == "data_kind"]  # the demo needs no data choice


def test_labels_the_model_names_otherwise_are_refused_until_mapped(app_env, tmp_path):
    renamed = tmp_path / "rotten_fresh.csv"
    frame = pd.read_csv(os.environ["FWSVD_APP_TASK"])
    frame.assign(sentiment=frame["sentiment"].map({"neg": "rotten", "pos": "fresh"})).to_csv(renamed, index=False)
    at = _page("1_model_and_task.py")
    at.text_input(key="data_file").set_value(str(renamed)).run()
    at.button(key="apply_source").click().run()
    assert not at.exception
    errors = [error.value for error in at.error]
    assert len(errors) == 1 and "'fresh', 'rotten'" in errors[0] and "'neg', 'pos'" in errors[0], errors
    assert any("Still using" in info.value and "unchanged" in info.value for info in at.info)
    at.text_input(key="label_map").set_value("rotten=neg,fresh=pos").run()
    at.button(key="apply_source").click().run()
    assert not at.exception and not at.error, [error.value for error in at.error]
    assert at.session_state["source"].label_map == (("rotten", "neg"), ("fresh", "pos"))
    # Sorted, the data would number fresh 0 and rotten 1; the model's ids are what counts.
    assert "fresh → pos (1), rotten → neg (0)" in _captions(at)


def test_fisher_example_counts_stop_at_the_training_split(app_env):
    at = _page("2_fisher.py")
    slider = at.select_slider(key="fisher_examples")
    assert slider.options == ["64", "all 128"]  # 4096 is not offered for 128 training examples
    assert slider.value == 128
    assert at.number_input(key="fisher_max_length").value == 128
    assert "Exact" in at.success[0].value  # the default Fisher (1024 asked, 128 used) is still the cached one


def test_export_config_names_the_model_and_data_its_command_rebuilds_from(app_env):
    at = _page("5_export.py")
    assert not at.error, [error.value for error in at.error]
    document = json.loads(next(code.value for code in at.code if code.language == "json"))
    assert document["model"] == str(Path(os.environ["FWSVD_APP_MODEL"]).resolve())
    assert document["data"] == {"data_files": {"train": str(Path(os.environ["FWSVD_APP_TASK"]).resolve())},
                                "text_column": "review", "label_column": "sentiment"}
    assert any(code.value == "fwsvd compress --config fwsvd_config.json --output fwsvd_model" for code in at.code)
