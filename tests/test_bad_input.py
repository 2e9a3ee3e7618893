"""Bad input, measured: every case below is one test id, fed through the CLI (its real entry point), the
library or the dashboard (AppTest), on a tiny model. Each checks what docs/RELIABILITY.md promises:

* the user gets one line that names the problem (CLI: ``fwsvd: error: ...`` and exit code 2; library: a
  ValueError / FileNotFoundError; dashboard: one error box, no exception), or, for a damaged cache file, a
  logged warning and a recomputed result;
* no corrupt file is used: a recovered result equals the one computed from scratch;
* nothing is lost: every input file (model, data, configs, compressed directories, and the damaged file
  itself when it is an input) is byte for byte what it was before.

The message of each case is attached to its test (``record_property("message", ...)``), so
``pytest tests/test_bad_input.py --junitxml=out.xml -o junit_family=xunit1`` lists what the user sees.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

import fwsvd
from app_support import prepare_app_environment, save_tiny_classifier
from conftest import tiny_bert
from fwsvd.cli import main
from fwsvd.config import FisherConfig
from fwsvd.data.tasks import local_task
from fwsvd.fisher.task import task_fisher
from fwsvd.io.explorer import prepare_explorer
from fwsvd.io.models import load_model
from fwsvd.storage.tensor_cache import TensorCache
from fwsvd.view.explorer import Source, load_view, snapshot_key
from fwsvd.view.snapshot import snapshot_path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "streamlit_app.py"
LAYER = "bert.encoder.layer.0.attention.self.query"  # (32, 32): ranks 1..32


@dataclass(frozen=True)
class World:
    """The good inputs every case starts from (built once for the module), and the default Fisher."""

    root: Path
    env: dict[str, str]  # the dashboard's environment: tiny model, CSV task, a cache with the default Fisher
    model: Path
    data: Path
    compressed: Path
    fisher: dict[str, torch.Tensor]

    @property
    def cache(self) -> Path:
        return Path(self.env["FWSVD_CACHE_DIR"])

    def data_flags(self, data: Path | None = None) -> list[str]:
        return ["--data-files", str(data or self.data), "--text-column", "review", "--label-column", "sentiment"]

    def task(self):
        return local_task(self.data, text_column="review", label_column="sentiment")

    def source(self) -> Source:
        return Source(model=str(self.model), task="local", data_file=str(self.data), text_column="review",
                      label_column="sentiment")


@dataclass
class Context:
    world: World
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    caplog: pytest.LogCaptureFixture

    @contextlib.contextmanager
    def inputs_unchanged(self) -> Iterator[None]:
        """Every input file (the world's and this case's, bad ones included) is as it was: none is deleted,
        rewritten or "repaired" by the failing call."""
        before = _files(self.world.root, self.tmp)
        yield
        after = _files(self.world.root, self.tmp)
        assert after.keys() >= before.keys() and all(after[path] == data for path, data in before.items())

    def cache_copy(self) -> Path:
        """A copy of the world's cache (default Fisher, analyses) that a case may damage."""
        shutil.copytree(self.world.cache, self.tmp / "cache")
        self.monkeypatch.setenv("FWSVD_CACHE_DIR", str(self.tmp / "cache"))
        return self.tmp / "cache"


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    env = prepare_app_environment(root)
    model, data = Path(env["FWSVD_APP_MODEL"]), Path(env["FWSVD_APP_TASK"])
    compressed = root / "compressed"
    with _quiet():
        assert main(["compress", "--model", str(model), "--data-files", str(data), "--text-column", "review",
                     "--label-column", "sentiment", "--method", "svd", "--rank-ratio", "0.4",
                     "--output", str(compressed)]) == 0
    task = local_task(data, text_column="review", label_column="sentiment")
    loaded, tokenizer = load_model(model, task)
    fisher = task_fisher(loaded, tokenizer, task, cache_dir=env["FWSVD_CACHE_DIR"]).importances
    return World(root, env, model, data, compressed, fisher)


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# --------------------------------------------------------------------------------------------------
# How each channel shows a problem


def _cli(ctx: Context, argv: list, expected: str) -> str:
    """Run the CLI; it must exit 2 with exactly one error line containing ``expected`` and no traceback."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with ctx.inputs_unchanged(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(item) for item in argv])
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("fwsvd: error:")]
    assert code == 2, (code, stderr.getvalue())
    assert len(errors) == 1 and "Traceback" not in stderr.getvalue(), stderr.getvalue()
    assert expected in errors[0], errors[0]
    return errors[0]


def _raises(ctx: Context, error: type[Exception], expected: str, call: Callable[[], object]) -> str:
    with ctx.inputs_unchanged(), pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert expected in message, message
    return message


def _app(ctx: Context, expected: str, *, page: str | None = None, upload: bytes | None = None,
         **env: str) -> str:
    """Open the dashboard (the rank explorer, or ``page``) with the world's environment changed by ``env``,
    upload ``upload`` on the Export page if given; exactly one error box containing ``expected``."""
    for name, value in {**ctx.world.env, **env}.items():
        ctx.monkeypatch.setenv(name, value)
    st.cache_resource.clear()
    with ctx.inputs_unchanged():
        at = AppTest.from_file(str(APP), default_timeout=180).run()
        if page is not None:
            at.switch_page(f"pages/{page}").run()
        if upload is not None:
            at.file_uploader(key="upload_ranks").set_value(("ranks.json", upload, "application/json")).run()
    assert not at.exception, at.exception
    errors = [error.value for error in at.error]
    assert len(errors) == 1 and expected in errors[0], errors
    return errors[0]


def _warned(ctx: Context, expected: str) -> str:
    """The one warning logged about a damaged file, containing ``expected``."""
    warnings = [record.getMessage() for record in ctx.caplog.records if record.levelno >= logging.WARNING]
    assert any(expected in warning for warning in warnings), warnings
    return next(warning for warning in warnings if expected in warning)


# --------------------------------------------------------------------------------------------------
# Inputs made bad


def _csv(ctx: Context, name: str, frame: pd.DataFrame | None = None, text: str | None = None) -> Path:
    path = ctx.tmp / name
    if frame is not None:
        frame.to_csv(path, index=False)
    else:
        path.write_text(text or "")
    return path


def _config_file(ctx: Context, document: object) -> Path:
    path = ctx.tmp / "config.json"
    path.write_text(json.dumps(document))
    return path


def _compressed_copy(ctx: Context, damage: Callable[[Path], None]) -> Path:
    directory = ctx.tmp / "compressed"
    shutil.copytree(ctx.world.compressed, directory)
    damage(directory)
    return directory


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_rank(directory: Path) -> None:
    info_file = directory / "fwsvd_compressed.json"
    info = json.loads(info_file.read_text())
    info["layers"][LAYER]["rank"] = 3
    info_file.write_text(json.dumps(info))


def _compress(ctx: Context, *flags: object) -> list:
    return ["compress", "--model", ctx.world.model, *ctx.world.data_flags(), "--method", "svd",
            "--output", ctx.tmp / "out", *flags]


def _evaluate(ctx: Context, model: object, data: Path | None = None) -> list:
    return ["evaluate", "--model", model, *ctx.world.data_flags(data), "--limit", "8"]


def _bare_encoder(ctx: Context) -> Path:
    """A base encoder without a task head (not a classifier)."""
    directory = ctx.tmp / "encoder"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(ctx.world.model).save_pretrained(directory)
    return directory


def _kill_mid_write(target: Path) -> None:
    """A process killed while writing ``target`` through the library's atomic writer."""
    code = ("import os, signal\nfrom fwsvd.storage.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as temporary:\n"
            "    with open(temporary, 'wb') as file:\n"
            "        file.write(b'half of a cache file'); file.flush()\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------------------------------
# The cases: {test id: case(ctx) -> the message the user sees}

CASES: dict[str, Callable[[Context], str]] = {}


def case(name: str) -> Callable[[Callable[[Context], str]], Callable[[Context], str]]:
    def register(function: Callable[[Context], str]) -> Callable[[Context], str]:
        assert name not in CASES
        CASES[name] = function
        return function

    return register


# Paths


@case("cli-model-directory-missing")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.tmp / "absent"), "model directory not found")


@case("cli-model-is-a-file")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.world.data), "is a file; a model is a directory written by save_pretrained")


@case("cli-data-file-missing")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.world.model, ctx.tmp / "absent.csv"), "absent.csv")


@case("cli-data-file-unsupported-format")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.world.model, _csv(ctx, "reviews.txt", text="a,b\n")),
                "unsupported data file")


@case("cli-output-is-a-file")
def _(ctx):
    (ctx.tmp / "out").write_text("keep me")
    return _cli(ctx, _compress(ctx, "--rank-ratio", "0.5"), "is a file; give a directory")


@case("cli-json-path-is-a-directory")
def _(ctx):
    return _cli(ctx, [*_evaluate(ctx, ctx.world.model), "--json", ctx.tmp], "is a directory; give a file path")


@case("cli-config-file-missing")
def _(ctx):
    return _cli(ctx, _compress(ctx, "--config", ctx.tmp / "absent.json"), "--config file not found")


# Models


@case("cli-model-not-a-classifier")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, _bare_encoder(ctx)), "is a BertModel, not a fine-tuned classifier")


@case("cli-model-head-has-other-label-count")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, save_tiny_classifier(ctx.tmp / "three", num_labels=3)),
                "with 3 labels, but task 'local' (classification) needs 2")


@case("cli-model-weights-truncated")
def _(ctx):
    directory = ctx.tmp / "model"
    shutil.copytree(ctx.world.model, directory)
    _truncate(directory / "model.safetensors")
    return _cli(ctx, _evaluate(ctx, directory), "cannot read the weights of model")


def _no_network(ctx: Context, *, offline: bool) -> None:
    """The machine without a network: ``offline`` as HF_HUB_OFFLINE=1 sets it (read when huggingface_hub is
    imported); a connection attempt fails as a missing DNS does; a hub download is a test failure."""
    import huggingface_hub.constants
    import socket

    def unreachable(*args, **kwargs):
        if offline:
            raise AssertionError("offline mode must not try the network")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def download(location, *args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("a hub id must be checked before transformers' retrying download")
        raise OSError("not in the local hub cache")

    ctx.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    ctx.monkeypatch.setattr(socket, "create_connection", unreachable)
    ctx.monkeypatch.setattr("fwsvd.io.hub.AutoConfig.from_pretrained", download)


@case("cli-hub-id-offline")
def _(ctx):
    _no_network(ctx, offline=True)
    return _cli(ctx, _evaluate(ctx, "someorg/no-such-model"),
                "'someorg/no-such-model': it is not a local directory, it is not in the local hub cache, and the "
                "hub is switched off (HF_HUB_OFFLINE)")


@case("app-hub-id-unreachable")
def _(ctx):
    _no_network(ctx, offline=False)
    return _app(ctx, "the Hugging Face hub (huggingface.co) cannot be reached (Name or service not known); use a "
                     "local model directory or 'demo'", FWSVD_APP_MODEL="someorg/no-such-model")


@case("cli-unknown-task")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", ctx.world.model, "--task", "sst-2"], "unknown task 'sst-2'")


@case("cli-unknown-demo")
def _(ctx):
    return _cli(ctx, ["demo", "--name", "pos"], "argument --name: invalid choice: 'pos'")


@case("cli-demo-model-on-another-task")
def _(ctx):
    from demo_support import tiny_ner_build
    from fwsvd.io import demo_ner

    ctx.monkeypatch.setattr(demo_ner, "_build", tiny_ner_build)
    return _cli(ctx, ["evaluate", "--model", "demo-ner", "--task", "demo", "--limit", "8"],
                "but task 'demo' (classification) needs a *ForSequenceClassification model")


# Data


@case("cli-text-column-absent")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", ctx.world.model, "--data-files", ctx.world.data, "--text-column", "text",
                 "--label-column", "sentiment"], "column 'text' not found")


@case("cli-data-file-empty")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.world.model, _csv(ctx, "empty.csv", text="review,sentiment\n")),
                "holds no examples")


@case("cli-data-one-class")
def _(ctx):
    frame = pd.DataFrame({"review": [f"review {i}" for i in range(40)], "sentiment": ["pos"] * 40})
    return _cli(ctx, _evaluate(ctx, ctx.world.model, _csv(ctx, "one_class.csv", frame)),
                "holds one class ('pos') in the training data")


@case("cli-max-length-beyond-the-model")
def _(ctx):
    return _cli(ctx, ["fisher", "--model", ctx.world.model, *ctx.world.data_flags(), "--max-length", "4096"],
                "max_length 4096 is more than the 512 tokens the model reads")


# Labels


def _renamed_reviews(ctx: Context) -> Path:
    """The world's reviews with their labels called rotten / fresh, names the model (neg, pos) does not use."""
    frame = pd.read_csv(ctx.world.data)
    return _csv(ctx, "rotten_fresh.csv", frame.assign(sentiment=frame["sentiment"].map({"neg": "rotten",
                                                                                       "pos": "fresh"})))


def _model_with_labels(ctx: Context, id2label: dict[str, str] | None) -> Path:
    """A copy of the world's model whose config names its classes ``id2label`` (None: transformers' defaults)."""
    directory = ctx.tmp / "relabelled"
    shutil.copytree(ctx.world.model, directory)
    config = json.loads((directory / "config.json").read_text())
    config.pop("id2label", None), config.pop("label2id", None)
    if id2label is not None:
        config.update(id2label=id2label, label2id={name: int(i) for i, name in id2label.items()})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _tagged_words(ctx: Context) -> Path:
    words = ["john", "lives", "here"]
    rows = [{"tokens": words, "words": words, "tags": ["B-PER", "O", "O"]}] * 8
    path = ctx.tmp / "ner.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


@case("cli-labels-unknown-to-the-model")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, ctx.world.model, _renamed_reviews(ctx)),
                "the labels of 'sentiment' do not match those of model")


@case("cli-labels-on-a-model-without-names")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, _model_with_labels(ctx, None)),
                "only LABEL_0 … LABEL_1 (transformers' defaults)")


@case("cli-label-map-not-pairs")
def _(ctx):
    return _cli(ctx, [*_evaluate(ctx, ctx.world.model, _renamed_reviews(ctx)), "--label-map", "rotten"],
                "label map item 'rotten' is not DATA=MODEL")


@case("cli-label-map-to-an-unknown-label")
def _(ctx):
    return _cli(ctx, [*_evaluate(ctx, ctx.world.model, _renamed_reviews(ctx)), "--label-map",
                      "rotten=negative,fresh=pos"], "sends 'rotten' to 'negative', which is neither a label")


@case("cli-label-map-names-absent-labels")
def _(ctx):
    return _cli(ctx, [*_evaluate(ctx, ctx.world.model), "--label-map", "rotten=neg"],
                "the label map names 'rotten', which the data does not hold")


@case("cli-label-column-is-the-text-column")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", ctx.world.model, "--data-files", ctx.world.data, "--text-column",
                      "review", "--label-column", "review"], "the label column 'review' is also the text column")


@case("cli-tag-column-holds-words")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", ctx.world.model, "--data-files", _tagged_words(ctx), "--text-column",
                      "tokens", "--label-column", "words"], "it looks like words, not tags")


@case("cli-compress-config-without-model")
def _(ctx):
    return _cli(ctx, ["compress", "--config", _config_file(ctx, {"method": "svd", "rank_ratio": 0.5}),
                      "--output", ctx.tmp / "out"], "give --model SOURCE (the --config file records no model)")


@case("lib-task-numbered-otherwise")
def _(ctx):
    model = _model_with_labels(ctx, {"0": "pos", "1": "neg"})
    return _raises(ctx, ValueError, "numbers the labels of 'sentiment' otherwise than the data",
                   lambda: fwsvd.load_any_model(model, ctx.world.task()))


@case("app-labels-unknown-to-the-model")
def _(ctx):
    return _app(ctx, "do not match those of model", FWSVD_APP_TASK=str(_renamed_reviews(ctx)))


# Ranks


#: compress with bad rank flags: {test id: (flags, what the message says)}
RANK_FLAGS = {
    "cli-rank-ratio-out-of-range": (["--rank-ratio", "1.5"], "rank_ratio must be a number in (0, 1], got 1.5"),
    "cli-rank-ratio-not-a-number": (["--rank-ratio", "half"], "invalid number 'half'"),
    "cli-rank-above-full-rank": (["--rank", "1000"], "rank 1000 for bert.encoder.layer.0.attention.self.query"),
    "cli-rank-zero": (["--rank", "0"], "expected an integer >= 1, got '0'"),
}
for _name, (_flags, _expected) in RANK_FLAGS.items():
    case(_name)(lambda ctx, flags=_flags, expected=_expected: _cli(ctx, _compress(ctx, *flags), expected))


@case("cli-config-not-json")
def _(ctx):
    path = ctx.tmp / "config.json"
    path.write_text('{"ranks": {')
    return _cli(ctx, _compress(ctx, "--config", path), "is not valid JSON")


@case("cli-config-rank-of-wrong-type")
def _(ctx):
    return _cli(ctx, _compress(ctx, "--config", _config_file(ctx, {LAYER: "three"})), "is not a whole number")


@case("cli-config-unknown-layer")
def _(ctx):
    return _cli(ctx, _compress(ctx, "--config", _config_file(ctx, {"bert.encoder.layer.9.output.dense": 4})),
                "bert.encoder.layer.9.output.dense")


@case("cli-config-rank-out-of-range")
def _(ctx):
    return _cli(ctx, _compress(ctx, "--config", _config_file(ctx, {LAYER: 33})), "rank 33")


@case("lib-ranks-of-wrong-type")
def _(ctx):
    return _raises(ctx, ValueError, "got str 'half'", lambda: fwsvd.compress_(tiny_bert(), "half", method="svd"))


@case("lib-rank-ratio-zero")
def _(ctx):
    return _raises(ctx, ValueError, "rank_ratio must be a number in (0, 1], got 0.0",
                   lambda: fwsvd.compress_(tiny_bert(), 0.0, method="svd"))


@case("lib-ranks-all-past-break-even")
def _(ctx):
    return _raises(ctx, ValueError, "every selected layer's rank is at or past break-even",
                   lambda: fwsvd.compress_(tiny_bert(), 1.0, method="svd"))


@case("lib-rank-out-of-range")
def _(ctx):
    return _raises(ctx, ValueError, "rank 7 for layer of shape (6, 8) is out of range",
                   lambda: fwsvd.low_rank_factors(torch.randn(6, 8), 7))


# Importances


@case("lib-importance-nan")
def _(ctx):
    return _raises(ctx, ValueError, "NaN", lambda: fwsvd.low_rank_factors(torch.randn(6, 8), 2,
                                                                     torch.full((8,), float("nan"))))


@case("lib-importance-negative")
def _(ctx):
    return _raises(ctx, ValueError, "non-negative", lambda: fwsvd.low_rank_factors(torch.randn(6, 8), 2, -torch.ones(8)))


@case("lib-importance-wrong-length")
def _(ctx):
    return _raises(ctx, ValueError, "one value per input feature (8), got shape (7,)",
                   lambda: fwsvd.low_rank_factors(torch.randn(6, 8), 2, torch.ones(7)))


@case("lib-fwsvd-without-fisher")
def _(ctx):
    return _raises(ctx, ValueError, "needs Fisher importances", lambda: fwsvd.compress_(tiny_bert(), 0.5, method="fwsvd"))


# Evaluations


@case("lib-paired-comparison-of-other-examples")
def _(ctx):
    from fwsvd.evaluate.evaluation import difference, evaluate_model

    task = ctx.world.task()
    model, tokenizer = load_model(ctx.world.model, task)
    every, fewer = (evaluate_model(model, tokenizer, task, "test", limit=limit) for limit in (None, 4))
    return _raises(ctx, ValueError, "a paired comparison needs the same examples",
                   lambda: difference(task, every, fewer))


@case("lib-latency-rounds-negative")
def _(ctx):
    from fwsvd.evaluate.methods import evaluate_methods

    task = ctx.world.task()
    model, tokenizer = load_model(ctx.world.model, task)
    return _raises(ctx, ValueError, "latency_rounds must be >= 0, got -1",
                   lambda: evaluate_methods(model, tokenizer, task, 0.5, fisher=None, methods=("svd",),
                                            latency_rounds=-1))


@case("lib-interval-level-out-of-range")
def _(ctx):
    from fwsvd.evaluate.uncertainty import metric_intervals

    return _raises(ctx, ValueError, "the interval's level must be in (0, 1), got 95",
                   lambda: metric_intervals(ctx.world.task(), [0, 1], [0, 1], level=95))


# Compressed directories


@case("cli-compressed-weights-missing")
def _(ctx):
    directory = _compressed_copy(ctx, lambda path: (path / "model.safetensors").unlink())
    return _cli(ctx, _evaluate(ctx, directory), "has no model.safetensors; the directory is incomplete")


@case("cli-compressed-description-missing")
def _(ctx):
    directory = _compressed_copy(ctx, lambda path: (path / "fwsvd_compressed.json").unlink())
    return _cli(ctx, _evaluate(ctx, directory), "a compressed directory that lost its fwsvd_compressed.json")


@case("cli-compressed-rank-edited")
def _(ctx):
    directory = _compressed_copy(ctx, _edit_rank)
    return _cli(ctx, _evaluate(ctx, directory), "do not match the structure recorded in fwsvd_compressed.json")


@case("lib-compressed-weights-truncated")
def _(ctx):
    directory = _compressed_copy(ctx, lambda path: _truncate(path / "model.safetensors"))
    return _raises(ctx, ValueError, "is not a readable safetensors file", lambda: fwsvd.load_compressed(directory))


@case("lib-compressed-description-not-json")
def _(ctx):
    directory = _compressed_copy(ctx, lambda path: (path / "fwsvd_compressed.json").write_text("{"))
    return _raises(ctx, ValueError, "fwsvd_compressed.json is not valid JSON", lambda: fwsvd.load_compressed(directory))


# Language modelling


def _causal_lm(ctx: Context) -> Path:
    """A tiny random causal LM (Llama) with the world's tokenizer."""
    directory = ctx.tmp / "causal-lm"
    tokenizer = AutoTokenizer.from_pretrained(ctx.world.model)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _text(ctx: Context, name: str, text: str) -> Path:
    path = ctx.tmp / name
    path.write_text(text)
    return path


@case("cli-text-file-empty")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", _causal_lm(ctx), "--data-files", _text(ctx, "book.txt", "")],
                "holds no text")


@case("cli-text-shorter-than-a-block")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", _causal_lm(ctx), "--data-files",
                      _text(ctx, "book.txt", "a good film.\n" * 40), "--max-length", "64"],
                "tokens, fewer than one block of 64")


@case("cli-text-table-without-text-column")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", _causal_lm(ctx), "--data-files", ctx.world.data],
                "needs its text column (--text-column)")


@case("cli-classifier-given-text")
def _(ctx):
    return _cli(ctx, ["evaluate", "--model", ctx.world.model, "--data-files", _text(ctx, "book.txt", "a film.\n")],
                "(language_modeling) needs a *ForCausalLM model")


@case("cli-causal-lm-given-labels")
def _(ctx):
    return _cli(ctx, _evaluate(ctx, _causal_lm(ctx)), "(classification) needs a *ForSequenceClassification model")


# Cache and snapshot files


def _fisher_after(ctx: Context, damage: Callable[[Path], None], *, from_cache: bool) -> None:
    """Damage the default Fisher's cache file (in a copy of the cache), then ask for that Fisher again: it is
    read from the file (``from_cache``) or recomputed, and either way equals the one computed from scratch."""
    cache = ctx.cache_copy()
    (path,) = (cache / "fisher").glob("*.safetensors")
    damage(path)
    task = ctx.world.task()
    model, tokenizer = load_model(ctx.world.model, task)
    result = task_fisher(model, tokenizer, task, cache_dir=cache)
    assert result.from_cache == from_cache
    assert set(result.importances) == set(ctx.world.fisher)
    assert all(torch.equal(result.importances[name], ctx.world.fisher[name]) for name in ctx.world.fisher)
    assert task_fisher(model, tokenizer, task, cache_dir=cache).from_cache  # a good file is in place now


def _written_for_another_key(path: Path) -> None:
    TensorCache(path.parent).put({"another": "key"}, {"x": torch.ones(2)}).replace(path)


def _leftover_temporary(path: Path) -> None:
    (path.parent / f".tmp-leftover{path.suffix}").write_bytes(b"half of a cache file")


def _killed_replacing(path: Path) -> None:
    before = path.read_bytes()
    _kill_mid_write(path)
    assert path.read_bytes() == before  # the old file stands; the half-written one is only a temporary


def _killed_writing_new(path: Path) -> None:
    path.unlink()
    _kill_mid_write(path)
    assert not path.exists()  # no half-written file under the real name


#: Damage to the default Fisher's cache file: {test id: (damage, then read from the file?, the warning logged,
#: or "(none: why)" where nothing is wrong to warn about)}
FISHER_DAMAGE = {
    "lib-fisher-cache-truncated": (_truncate, False, "is corrupt"),
    "lib-fisher-cache-written-for-another-key": (_written_for_another_key, False, "was written for another key"),
    "lib-cache-leftover-temporary-file": (_leftover_temporary, True, "(none: a leftover temporary file is never read)"),
    "lib-process-killed-while-replacing-a-cache-file": (_killed_replacing, True,
                                                        "(none: the complete old file is still in place)"),
    "lib-process-killed-while-writing-a-new-cache-file": (_killed_writing_new, False,
                                                          "(none: no file under the real name; computed again)"),
}


def _fisher_case(ctx: Context, name: str) -> str:
    damage, from_cache, expected = FISHER_DAMAGE[name]
    _fisher_after(ctx, damage, from_cache=from_cache)
    if expected.startswith("(none"):
        assert not [record for record in ctx.caplog.records if record.name.startswith("fwsvd")]
        return expected
    return _warned(ctx, expected)


for _name in FISHER_DAMAGE:
    case(_name)(lambda ctx, name=_name: _fisher_case(ctx, name))


@case("lib-decomposition-cache-truncated")
def _(ctx):
    store = fwsvd.DecompositionStore(ctx.tmp / "cache")
    reference = fwsvd.compress_(tiny_bert(), 0.5, method="svd", store=store)
    store.flush()  # files are written on a background thread
    files = sorted((ctx.tmp / "cache" / "decompositions").glob("*.safetensors"))
    for path in files:
        _truncate(path)
    damaged = tiny_bert()
    report = fwsvd.compress_(damaged, 0.5, method="svd", store=fwsvd.DecompositionStore(ctx.tmp / "cache"))
    assert [layer.relative_error for layer in report.layers] == [layer.relative_error for layer in reference.layers]
    return _warned(ctx, "is corrupt")


@case("lib-store-dtype-unknown")
def _(ctx):
    ctx.monkeypatch.setenv("FWSVD_STORE_DTYPE", "half")
    return _raises(ctx, ValueError, "FWSVD_STORE_DTYPE must be one of float32, float16, bfloat16, got 'half'",
                   lambda: fwsvd.compress_(tiny_bert(), 0.5, method="svd", store=fwsvd.DecompositionStore()))


@case("lib-snapshot-truncated")
def _(ctx):
    ctx.cache_copy()
    path = prepare_explorer(ctx.world.source())
    _truncate(path)
    assert load_view(snapshot_key(ctx.world.source(), FisherConfig())) is None
    message = _warned(ctx, "is unreadable")
    assert prepare_explorer(ctx.world.source()) == path  # recomputed in place
    assert load_view(snapshot_key(ctx.world.source(), FisherConfig())) is not None
    return message


@case("lib-snapshot-of-another-model")
def _(ctx):
    ctx.cache_copy()
    path = prepare_explorer(ctx.world.source())
    other = snapshot_key(ctx.world.source(), FisherConfig(seed=7))
    shutil.copy(path, snapshot_path(other))
    assert load_view(other) is None
    return _warned(ctx, "was written for another model or format")


# The dashboard


@case("app-model-directory-missing")
def _(ctx):
    return _app(ctx, "model directory not found", FWSVD_APP_MODEL=str(ctx.tmp / "absent"))


@case("app-label-column-absent")
def _(ctx):
    return _app(ctx, "column 'label' not found", FWSVD_APP_LABEL_COLUMN="label")


@case("app-data-one-class")
def _(ctx):
    frame = pd.DataFrame({"review": [f"review {i}" for i in range(40)], "sentiment": ["neg"] * 40})
    return _app(ctx, "holds one class ('neg')", FWSVD_APP_TASK=str(_csv(ctx, "one_class.csv", frame)))


@case("app-upload-not-json")
def _(ctx):
    return _app(ctx, "is not valid JSON", page="5_export.py", upload=b"\x89PNG not a rank file")


@case("app-upload-unknown-layer")
def _(ctx):
    return _app(ctx, "bert.encoder.layer.7.output.dense", page="5_export.py",
                upload=json.dumps({"bert.encoder.layer.7.output.dense": 4}).encode())


@case("app-upload-unrelated-json")
def _(ctx):
    return _app(ctx, "this JSON is not a rank document", page="5_export.py",
                upload=json.dumps({"name": "my-app", "version": "1.0.2", "dependencies": {"left-pad": "^1"}}).encode())


@case("app-upload-rank-of-wrong-type")
def _(ctx):
    return _app(ctx, "is not a whole number", page="5_export.py", upload=json.dumps({LAYER: 2.5}).encode())


@case("app-upload-rank-out-of-range")
def _(ctx):
    return _app(ctx, "must be an integer >= 1, got 0", page="5_export.py", upload=json.dumps({LAYER: 0}).encode())


@case("app-snapshot-truncated")
def _(ctx):
    cache = ctx.cache_copy()
    path = prepare_explorer(ctx.world.source())
    _truncate(path)
    for name, value in {**ctx.world.env, "FWSVD_CACHE_DIR": str(cache)}.items():
        ctx.monkeypatch.setenv(name, value)
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Rank explorer" and at.slider  # recomputed from the model and cached Fisher
    assert load_view(snapshot_key(ctx.world.source(), FisherConfig())) is not None  # and saved again
    return _warned(ctx, "is unreadable")


# --------------------------------------------------------------------------------------------------
# The check every case goes through


def _files(*roots: Path) -> dict[str, bytes]:
    """Every input file's bytes (caches excluded: recomputing them is the point)."""
    return {str(path): path.read_bytes() for root in roots for path in sorted(root.rglob("*"))
            if path.is_file() and "cache" not in path.relative_to(root).parts}


def test_at_least_thirty_cases_each_listed_in_reliability_md():
    assert len(CASES) >= 30
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", (ROOT / "docs" / "RELIABILITY.md").read_text(), re.MULTILINE)
    assert sorted(listed) == sorted(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, monkeypatch, caplog, record_property):
    caplog.set_level(logging.WARNING)
    for variable in ("FWSVD_APP_MODEL", "FWSVD_APP_TASK", "FWSVD_APP_TEXT_COLUMN", "FWSVD_APP_LABEL_COLUMN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FWSVD_CACHE_DIR", str(tmp_path / "fresh-cache"))
    context = Context(world, tmp_path, monkeypatch, caplog)
    before = _files(world.root)
    message = CASES[name](context)
    assert message and "\n" not in message and "Traceback" not in message
    assert _files(world.root) == before  # the good inputs every case starts from, untouched
    record_property("message", message)
