"""The fine-tuning max length recorded with a model, and the Fisher settings that default to it."""

from __future__ import annotations

import json

from fwsvd.config import FisherConfig
from fwsvd.view.trained_length import RECORD_KEY, recorded_max_length


def test_read_from_config_json_then_a_demo_recipe(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", RECORD_KEY: 48}))
    assert recorded_max_length(tmp_path) == 48 and recorded_max_length(str(tmp_path)) == 48
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (demo / "fwsvd_demo.json").write_text(json.dumps({"recipe": {"max_length": 64, "epochs": 1}}))
    assert recorded_max_length(demo) == 64


def test_nothing_recorded_is_none(tmp_path):
    assert recorded_max_length(None) is None
    assert recorded_max_length("sentence-transformers/all-MiniLM-L6-v2") is None  # a hub id: no files here
    assert recorded_max_length(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    assert recorded_max_length(tmp_path) is None
    for value in (0, -3, 12.5, True, "64"):
        (tmp_path / "config.json").write_text(json.dumps({RECORD_KEY: value}))
        assert recorded_max_length(tmp_path) is None, value


def test_fisher_config_for_a_model_takes_its_recorded_length(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({RECORD_KEY: 40}))
    assert FisherConfig.for_model(tmp_path) == FisherConfig(max_length=40)
    assert FisherConfig.for_model(tmp_path, max_length=96, seed=3) == FisherConfig(max_length=96, seed=3)
    assert FisherConfig.for_model(tmp_path / "missing") == FisherConfig()
