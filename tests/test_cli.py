"""The command line, in process: JSON result shapes of each subcommand, and one line + exit 2 for bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fwsvd import cli
from fwsvd.cli import main
from fwsvd.config import FisherConfig
from fwsvd.io.persistence import INFO_FILE, read_compressed_info
from fwsvd.view.trained_length import recorded_max_length
from tiny_task import save_tiny_classifier, write_reviews

DATA = ["--text-column", "review", "--label-column", "sentiment"]
FAST = ["--max-length", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def csv(tmp_path) -> Path:
    return write_reviews(tmp_path / "reviews.csv", rows=60)


def _run(args: list[str], tmp_path: Path) -> dict:
    path = tmp_path / "result.json"
    assert main([*args, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_evaluate_json(model_dir, csv, tmp_path, cache_dir, capsys):
    result = _run(["evaluate", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST], tmp_path)
    assert set(result["metrics"]) == {"accuracy"} and result["params"] > 0
    assert result["split"] == "test" and result["num_examples"] == 6
    assert "accuracy" in capsys.readouterr().out


def test_sweep_json(model_dir, csv, tmp_path, cache_dir):
    result = _run(["sweep", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                   "--methods", "svd,fwsvd", "--rank-ratios", "0.5,0.25", "--fisher-examples", "32"], tmp_path)
    assert set(result) >= {"dense", "runs"}
    assert set(result["dense"]["metrics"]) == {"accuracy"}
    assert [(run["method"], run["rank_ratio"]) for run in result["runs"]] == [
        ("svd", 0.5), ("svd", 0.25), ("fwsvd", 0.5), ("fwsvd", 0.25)]
    assert all(set(run) >= {"method", "rank_ratio", "params", "metrics"} for run in result["runs"])
    assert result["fisher"]["num_examples"] == 32 and result["fisher"]["mode"] == "per_example"
    assert result["fisher"]["data_id"].endswith(":train")


def test_fisher_json_with_comparison(model_dir, csv, tmp_path, cache_dir, capsys):
    result = _run(["fisher", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                   "--fisher-examples", "24", "--compare"], tmp_path)
    assert result["mode"] == "per_example" and not result["from_cache"]
    assert Path(result["path"]).is_file() and len(result["layers"]) == 12
    assert result["comparison"]["mode"] == "batch"
    assert set(result["comparison"]["mean"]) == {"cosine", "spearman"}
    assert "agreement with batch mode" in capsys.readouterr().out
    assert _run(["fisher", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                 "--fisher-examples", "24"], tmp_path)["from_cache"]


def test_fisher_old_flag_spellings_still_work(model_dir, csv, tmp_path, cache_dir, capsys):
    result = _run(["fisher", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                   "--mode", "batch", "--num-examples", "20"], tmp_path)
    assert result["mode"] == "batch" and result["provenance"]["num_examples"] == 20
    assert result["fisher_config"] == {"mode": "batch", "num_examples": 20, "seed": 0, "max_length": 32,
                                       "batch_size": 16}
    err = capsys.readouterr().err
    assert "--mode is deprecated; use --fisher-mode" in err and "--num-examples is deprecated" in err
    assert main(["fisher", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--fisher-mode" in help_text and "--num-examples" not in help_text and "--mode " not in help_text


def test_compress_then_evaluate_and_finetune(model_dir, csv, tmp_path, cache_dir):
    output = tmp_path / "compressed"
    compressed = _run(["compress", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                       "--method", "fwsvd", "--rank-ratio", "0.25", "--fisher-examples", "16",
                       "--output", str(output)], tmp_path)
    assert compressed["params_after"] < compressed["params_before"] and len(compressed["ranks"]) == 12
    info = read_compressed_info(output)
    assert info["config"]["method"] == "fwsvd" and info["fisher_provenance"] == compressed["fisher"]
    assert info["config"] == compressed["config"] and compressed["config"]["fisher"]["num_examples"] == 16
    evaluated = _run(["evaluate", "--model", str(output), "--data-files", str(csv), *DATA, *FAST], tmp_path)
    assert evaluated["params"] == compressed["params_after"]
    tuned = _run(["finetune", "--model", str(output), "--data-files", str(csv), *DATA, *FAST,
                  "--epochs", "1", "--limit", "16", "--output", str(tmp_path / "tuned")], tmp_path)
    assert tuned["compressed"] and tuned["training"]["steps"] == 1
    assert read_compressed_info(tmp_path / "tuned")["extra"]["finetune"]["epochs"] == 1


def test_compress_svd_needs_no_task_and_dense_export(model_dir, tmp_path, cache_dir):
    result = _run(["compress", "--model", str(model_dir), "--method", "svd", "--rank", "4", "--dense",
                   "--output", str(tmp_path / "dense")], tmp_path)
    assert result["fisher"] is None and set(result["ranks"].values()) == {4}
    assert (tmp_path / "dense" / "config.json").is_file() and read_compressed_info(tmp_path / "dense")["dense"]


def test_finetune_a_dense_model(model_dir, csv, tmp_path, cache_dir):
    result = _run(["finetune", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST,
                   "--epochs", "1", "--limit", "16", "--output", str(tmp_path / "tuned")], tmp_path)
    assert not result["compressed"] and (tmp_path / "tuned" / "config.json").is_file()
    assert not (tmp_path / "tuned" / INFO_FILE).exists()


def test_finetuning_records_its_length_and_fisher_defaults_to_it(model_dir, csv, tmp_path, cache_dir):
    _run(["finetune", "--model", str(model_dir), "--data-files", str(csv), *DATA, *FAST, "--epochs", "1",
          "--limit", "8", "--max-length", "24", "--output", str(tmp_path / "tuned")], tmp_path)
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["fwsvd_max_length"] == 24
    assert recorded_max_length(tmp_path / "tuned") == 24
    result = _run(["compress", "--model", str(tmp_path / "tuned"), "--method", "svd", "--rank", "4",
                   "--output", str(tmp_path / "small")], tmp_path)
    assert result["config"]["fisher"]["max_length"] == 24
    given = _run(["compress", "--model", str(tmp_path / "tuned"), "--method", "svd", "--rank", "4",
                  "--max-length", "100", "--output", str(tmp_path / "given")], tmp_path)
    assert given["config"]["fisher"]["max_length"] == 100
    untuned = _run(["compress", "--model", str(model_dir), "--method", "svd", "--rank", "4",
                    "--output", str(tmp_path / "untuned")], tmp_path)
    assert untuned["config"]["fisher"]["max_length"] == FisherConfig().max_length


def test_demo_json_gives_an_absolute_model_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default cache folder is relative to the working directory
    monkeypatch.setitem(cli.DEMOS, "sentiment", dataclasses.replace(
        cli.DEMOS["sentiment"], ensure=lambda force=False: Path("cache/demo/v2"),
        info=lambda directory: {"test_metrics": {"accuracy": 0.8}}))
    monkeypatch.setattr(cli, "prepare_explorer",
                        lambda source, fisher, progress, statistics: tmp_path / "cache/snapshots/view.npz")
    monkeypatch.setattr(cli, "prepare_headline",
                        lambda source, fisher, progress: tmp_path / "cache/snapshots/headline.json")
    assert _run(["demo"], tmp_path) == {"name": "sentiment", "model": "demo", "task": "demo",
                                        "model_dir": str(tmp_path / "cache/demo/v2"),
                                        "metrics": {"accuracy": 0.8},
                                        "explorer_snapshot": str(tmp_path / "cache/snapshots/view.npz"),
                                        "headline": str(tmp_path / "cache/snapshots/headline.json")}


def test_app_runs_streamlit_on_the_repository_app(monkeypatch, tmp_path):
    app_file = tmp_path / "streamlit_app.py"
    app_file.write_text("")
    monkeypatch.setattr(cli, "APP_FILE", app_file)
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    result = _run(["app", "--port", "8765"], tmp_path)
    (command,) = calls
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(app_file)]
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[command.index("--server.headless") + 1] == "true"
    assert result["url"] == "http://127.0.0.1:8765"


# ------------------------------------------------------------------------------------------------
# Bad input: exactly one line on stderr, exit code 2


def _bad_inputs(model_dir: Path, csv: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / INFO_FILE).write_text("{")
    ranks = tmp_path / "ranks.json"
    ranks.write_text('{"no.such.layer": 3}')
    fractional = tmp_path / "fractional.json"
    fractional.write_text('{"bert.encoder.layer.0.attention.self.query": 2.5}')
    unknown_key = tmp_path / "unknown_key.json"
    unknown_key.write_text('{"format": "fwsvd-compression-config", "rank_ratios": 0.5}')
    model, data = ["--model", str(model_dir)], ["--data-files", str(csv), *DATA]
    return {
        "missing data file": (["evaluate", *model, "--data-files", str(tmp_path / "absent.csv"), *DATA],
                              "not found"),
        "absent column": (["evaluate", *model, "--data-files", str(csv), "--text-column", "body",
                           "--label-column", "sentiment"], "column 'body' not found"),
        "unknown task": (["evaluate", *model, "--task", "imdb"], "unknown task"),
        "no task": (["evaluate", *model], "--task"),
        "task and files": (["evaluate", *model, "--task", "sst2", *data], "not both"),
        "columns without files": (["evaluate", *model, "--task", "sst2", "--text-column", "x"], "--data-files"),
        "missing model": (["evaluate", "--model", str(tmp_path / "nope"), *data], "not found"),
        "garbled compressed model": (["evaluate", "--model", str(garbled), *data], "not valid JSON"),
        "rank ratio above 1": (["compress", *model, "--method", "svd", "--rank-ratio", "1.5",
                                "--output", str(tmp_path / "o")], "(0, 1]"),
        "rank ratio not a number": (["sweep", *model, *data, "--rank-ratios", "0.5,half"], "half"),
        "rank ratio zero": (["sweep", *model, *data, "--rank-ratios", "0"], "(0, 1]"),
        "rank above full rank": (["compress", *model, "--method", "svd", "--rank", "500",
                                  "--output", str(tmp_path / "o")], "out of range"),
        "unknown layer in ranks json": (["compress", *model, "--method", "svd", "--ranks-json", str(ranks),
                                         "--output", str(tmp_path / "o")], "no.such.layer"),
        "missing ranks json": (["compress", *model, "--method", "svd", "--ranks-json", str(tmp_path / "r.json"),
                                "--output", str(tmp_path / "o")], "not found"),
        "unknown method": (["sweep", *model, *data, "--methods", "svd,pca"], "pca"),
        "no rank given": (["compress", *model, "--output", str(tmp_path / "o")], "--rank"),
        "two rank rules": (["compress", *model, "--rank-ratio", "0.5", "--param-budget", "0.5",
                            "--output", str(tmp_path / "o")], "not allowed with"),
        "param budget above 1": (["compress", *model, "--method", "svd", "--param-budget", "2",
                                  "--output", str(tmp_path / "o")], "param_budget must be a number in (0, 1]"),
        "garbled config": (["compress", *model, "--config", str(garbled / INFO_FILE),
                            "--output", str(tmp_path / "o")], "not valid JSON"),
        "rank 2.5 in config": (["compress", *model, "--method", "svd", "--config", str(fractional),
                                "--output", str(tmp_path / "o")], "2.5"),
        "unknown key in config": (["compress", *model, "--config", str(unknown_key),
                                   "--output", str(tmp_path / "o")], "'rank_ratios'"),
        "bad fisher flag": (["fisher", *model, *data, "--fisher-mode", "exact"], "invalid choice"),
        "unknown subcommand": (["shrink"], "invalid choice"),
        "missing app": (["app"], "streamlit_app.py"),
        "json path is a directory": (["evaluate", *model, *data, "--json", str(tmp_path)], "directory"),
    }


BAD_INPUTS = ["missing data file", "absent column", "unknown task", "no task", "task and files",
              "columns without files", "missing model", "garbled compressed model", "rank ratio above 1",
              "rank ratio not a number", "rank ratio zero", "rank above full rank", "unknown layer in ranks json",
              "missing ranks json", "unknown method", "no rank given", "two rank rules", "param budget above 1",
              "garbled config", "rank 2.5 in config", "unknown key in config", "bad fisher flag",
              "unknown subcommand", "missing app", "json path is a directory"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_exit_2(case, model_dir, csv, tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(cli, "APP_FILE", tmp_path / "app" / "streamlit_app.py")
    args, expected = _bad_inputs(model_dir, csv, tmp_path)[case]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fwsvd: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err


def test_help_of_every_subcommand(capsys):
    for command in ["demo", "fisher", "compress", "evaluate", "sweep", "finetune", "app"]:
        assert main([command, "--help"]) == 0
        assert "--json" in capsys.readouterr().out


def test_python_dash_m_help():
    completed = subprocess.run([sys.executable, "-m", "fwsvd", "--help"], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0
    for command in ["demo", "fisher", "compress", "evaluate", "sweep", "finetune", "app"]:
        assert command in completed.stdout


# ------------------------------------------------------------------------------------------------
# One document for ranks: what compress --json and the Export page write, read back by --config / --ranks-json


def _compress(model_dir: Path, tmp_path: Path, name: str, *flags: str) -> dict:
    return _run(["compress", "--model", str(model_dir), "--method", "svd", "--output", str(tmp_path / name),
                 *flags], tmp_path)


def test_compress_keeps_layers_at_break_even_dense_unless_asked(model_dir, tmp_path, cache_dir):
    # Rank 16: the 32x32 attention layers' break-even (16·64 = 32·32), below the 48x32 FFN layers' 19.2.
    kept = _compress(model_dir, tmp_path, "kept", "--rank", "16")
    assert kept["kept_dense"] and set(kept["kept_dense"].values()) == {16}
    assert kept["ranks"] and all("attention" not in name for name in kept["ranks"])
    assert "keep_dense_past_break_even" not in kept["config"]
    info = read_compressed_info(tmp_path / "kept")
    assert info["kept_dense"] == kept["kept_dense"] and set(info["layers"]) == set(kept["ranks"])
    asked = _compress(model_dir, tmp_path, "asked", "--rank", "16", "--factorize-past-break-even")
    assert asked["kept_dense"] == {} and set(asked["ranks"]) == set(kept["ranks"]) | set(kept["kept_dense"])
    assert asked["config"]["keep_dense_past_break_even"] is False
    assert asked["params_after"] == kept["params_after"]  # exactly at break-even: as many factor weights


def test_compress_json_output_is_a_rank_document(model_dir, tmp_path, cache_dir):
    first = _compress(model_dir, tmp_path, "first", "--rank-ratio", "0.25")
    output = tmp_path / "first.json"
    output.write_text((tmp_path / "result.json").read_text())
    again = _compress(model_dir, tmp_path, "again", "--ranks-json", str(output))
    assert again["ranks"] == first["ranks"] and again["config"] == first["config"]
    assert again["config"]["method"] == "svd" and set(again["ranks"].values()) == {8}
    # Flags override the file: another method and Fisher settings, the file's ranks kept.
    overridden = _compress(model_dir, tmp_path, "other", "--config", str(output), "--rank", "3")
    assert set(overridden["ranks"].values()) == {3}


def test_export_document_works_with_ranks_json_and_config(model_dir, tmp_path, cache_dir):
    from fwsvd.config import CompressionConfig

    targets = read_compressed_info(Path(_compress(model_dir, tmp_path, "probe", "--rank", "2")["output"]))["layers"]
    ranks = {name: 1 + index % 5 for index, name in enumerate(targets)}
    document = tmp_path / "export.json"
    document.write_text(CompressionConfig(method="svd").with_ranks(ranks).to_json())  # what Export downloads
    by_alias = _compress(model_dir, tmp_path, "alias", "--ranks-json", str(document))
    by_config = _compress(model_dir, tmp_path, "config", "--config", str(document))
    assert by_alias["ranks"] == by_config["ranks"] == ranks
    recorded = {**json.loads(document.read_text()), "model": str(model_dir.resolve())}  # + the model it was made from
    assert by_config["config"] == recorded
    assert read_compressed_info(tmp_path / "config")["config"] == recorded
    # A saved model's fwsvd_compressed.json is a rank document too.
    again = _compress(model_dir, tmp_path, "from_saved", "--config", str(tmp_path / "config" / INFO_FILE))
    assert again["ranks"] == ranks


def test_config_flags_merge_into_the_fisher_settings(model_dir, csv, tmp_path, cache_dir):
    from fwsvd.config import CompressionConfig, FisherConfig

    document = tmp_path / "config.json"
    document.write_text(CompressionConfig(param_budget=0.5, fisher=FisherConfig(num_examples=12, seed=3)).to_json())
    result = _run(["compress", "--model", str(model_dir), "--data-files", str(csv), *DATA, "--config", str(document),
                   "--max-length", "32", "--output", str(tmp_path / "out")], tmp_path)
    assert result["config"]["fisher"] == {"mode": "per_example", "num_examples": 12, "seed": 3, "max_length": 32,
                                          "batch_size": 32}
    assert result["fisher"]["num_examples"] == 12 and result["fisher"]["seed"] == 3
    assert result["config"]["param_budget"] == 0.5 and result["method"] == "fwsvd"
