"""One file format for ranks: the Export page's download is what ``fwsvd compress --config`` takes (and its old
``--ranks-json`` spelling), and ``fwsvd compress --json`` output is what the Export page's upload takes; both
through the real entry points (the CLI's ``main`` and the dashboard under AppTest) on a tiny model. And the
subcommands spell every shared option the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest, app_test

from app_support import app_environment
from fwsvd.cli import build_parser, main
from fwsvd.config import read_rank_document

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    with app_environment(tmp_path_factory.mktemp("ranks")) as env:
        yield env


def _data_flags(env: dict[str, str]) -> list[str]:
    return ["--model", env["FWSVD_APP_MODEL"], "--data-files", env["FWSVD_APP_TASK"], "--text-column", "review",
            "--label-column", "sentiment"]


def _compress(env: dict[str, str], output: Path, *flags: str) -> dict:
    """``fwsvd compress`` through the CLI's entry point; its --json result."""
    result = output.with_suffix(".json")
    assert main(["compress", *_data_flags(env), "--output", str(output), "--json", str(result), *flags]) == 0
    return json.loads(result.read_text())


def _export_page() -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("pages/5_export.py").run()
    assert not at.exception, at.exception
    return at


class _Recorded(app_test.MemoryMediaFileStorage):
    """The media storage of AppTest, remembered so a test can read what a download button offers."""

    last: _Recorded | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _Recorded.last = self


def _download(at: AppTest, label: str) -> bytes:
    button = next(button for button in at.get("download_button") if button.proto.label == label)
    return _Recorded.last.get_file(button.proto.url.rsplit("/", 1)[1]).content


def test_cli_output_is_accepted_by_the_export_page(app_env, tmp_path):
    # rank ratio 0.4: below break-even, so every layer is factorized, as the page shows
    written = _compress(app_env, tmp_path / "cli", "--method", "svd", "--rank-ratio", "0.4")
    at = _export_page()
    at.file_uploader(key="upload_ranks").set_value(
        ("compress.json", (tmp_path / "cli.json").read_bytes(), "application/json")).run()
    assert not at.exception and not at.error, [error.value for error in at.error]
    assert any(f"SVD on {len(written['ranks'])} layers" in info.value for info in at.info)
    at.button(key="apply_uploaded_ranks").click().run()
    assert not at.exception
    assert at.session_state["rank_state"].ranks == written["ranks"]
    assert at.session_state["export_method"] == "svd"
    # The saved model's own fwsvd_compressed.json is a rank document too.
    at.file_uploader(key="upload_ranks").set_value(
        ("fwsvd_compressed.json", (tmp_path / "cli" / "fwsvd_compressed.json").read_bytes(), "application/json"))
    at.run()
    assert any("These ranks are the current ranks" in success.value for success in at.success)


@pytest.mark.parametrize("flag", ["--config", "--ranks-json"])
def test_export_download_is_accepted_by_compress(app_env, tmp_path, monkeypatch, flag):
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", _Recorded)
    at = _export_page()
    document = _download(at, "Download ranks (JSON)")
    ranks, method = at.session_state["rank_state"].ranks, at.session_state["export_method"]
    (tmp_path / "fwsvd_config.json").write_bytes(document)
    written = _compress(app_env, tmp_path / "model", flag, str(tmp_path / "fwsvd_config.json"))
    assert written["method"] == method
    assert written["ranks"] == {name: rank for name, rank in ranks.items() if name in written["ranks"]}
    assert read_rank_document(document) == read_rank_document((tmp_path / "model.json").read_bytes())
    # ... and compress's output is that same document again: the round trip closes.
    again = _compress(app_env, tmp_path / "again", "--config", str(tmp_path / "model.json"))
    assert again["ranks"] == written["ranks"] and again["config"] == written["config"]


def _options_by_dest() -> dict[str, dict[str, set[str]]]:
    """{dest: {subcommand: its visible option strings}} over every subcommand."""
    subcommands = next(action for action in build_parser()._actions if action.dest == "command").choices
    found: dict[str, dict[str, set[str]]] = {}
    for name, parser in subcommands.items():
        for action in parser._actions:
            if action.option_strings and action.help != "==SUPPRESS==":
                found.setdefault(action.dest, {})[name] = set(action.option_strings)
    return found


def test_shared_options_are_spelled_the_same_in_every_subcommand():
    differing = {dest: spellings for dest, spellings in _options_by_dest().items()
                 if len({frozenset(options) for options in spellings.values()}) > 1}
    assert not differing, differing
    assert _options_by_dest()["config"]["compress"] == {"--config", "--ranks-json"}
