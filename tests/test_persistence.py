"""save_compressed / load_compressed: identical logits after a round trip, size in proportion to the
parameters, a dense export plain transformers loads, no pickles, and clear errors for damaged folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from conftest import VOCAB, random_batch, tiny_models
from fwsvd import CompressionConfig, DecompositionStore, LowRankLinear, compress_, dense_weight, find_targets
from fwsvd.io.persistence import (
    FORMAT_VERSION,
    INFO_FILE,
    WEIGHTS_FILE,
    load_compressed,
    read_compressed_info,
    save_compressed,
)

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def _compressed(model: torch.nn.Module, ratio: float = 0.5, method: str = "svd") -> tuple[torch.nn.Module,
                                                                                          CompressionConfig]:
    """``model`` compressed in place, and the config that reproduces it (``report.config``)."""
    fisher = None
    if method == "fwsvd":
        generator = torch.Generator().manual_seed(1)
        fisher = {name: torch.rand(dense_weight(module).shape[1], generator=generator)
                  for name, module in find_targets(model).items()}
    report = compress_(model, ratio, method=method, fisher=fisher, store=DecompositionStore(use_disk=False))
    return model, report.config


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _assert_no_pickles(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert path.suffix not in PICKLE_SUFFIXES, path
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle / torch.save archive"


@pytest.mark.parametrize("family", ["bert", "gpt2", "distilbert", "roberta", "electra"])
@pytest.mark.parametrize("method", ["svd", "fwsvd"])
def test_round_trip_gives_identical_logits(family, method, tmp_path):
    model, config = _compressed(tiny_models()[family], method=method)
    batch = random_batch()
    save_compressed(model, tmp_path / "out", config=config)
    loaded = load_compressed(tmp_path / "out")
    assert type(loaded) is type(model)
    assert not loaded.training
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))
    ranks = {name: module.rank for name, module in loaded.named_modules() if isinstance(module, LowRankLinear)}
    recorded = CompressionConfig.from_dict(read_compressed_info(tmp_path / "out")["config"])
    assert recorded == config and recorded.method == method and recorded.rank_pattern == ranks
    _assert_no_pickles(tmp_path / "out")


def test_info_records_structure_method_and_provenance(tmp_path):
    model, config = _compressed(tiny_models()["gpt2"], 0.25)
    provenance = {"data_id": "demo:train", "num_examples": 64, "mode": "per_example"}
    save_compressed(model, tmp_path, config=config, fisher_provenance=provenance, extra={"note": "x"})
    info = read_compressed_info(tmp_path)
    assert info["format_version"] == FORMAT_VERSION
    assert info["architecture"] == "GPT2ForSequenceClassification"
    assert info["config"]["method"] == "svd" and info["fisher_provenance"] == provenance
    assert info["extra"] == {"note": "x"}
    assert info["base_config"]["model_type"] == "gpt2"
    assert {layer["source_kind"] for layer in info["layers"].values()} == {"conv1d"}
    assert set(info["config"]["rank_pattern"]) == set(info["layers"]) and len(info["layers"]) == 8
    assert (tmp_path / "config.json").is_file() and (tmp_path / WEIGHTS_FILE).is_file()


def test_layers_kept_dense_at_break_even_are_recorded_and_load_dense(tmp_path):
    model = tiny_models()["bert"]  # rank ratio 0.5: 32x32 layers at rank 16, their break-even; FFN below
    report = compress_(model, 0.5, method="svd", store=DecompositionStore(use_disk=False))
    assert report.kept_dense and all(rank == 16 for rank in report.kept_dense.values())
    save_compressed(model, tmp_path, config=report.config, kept_dense=report.kept_dense)
    info = read_compressed_info(tmp_path)
    assert info["kept_dense"] == report.kept_dense and not set(info["kept_dense"]) & set(info["layers"])
    loaded = load_compressed(tmp_path)
    modules = dict(loaded.named_modules())
    assert all(type(modules[name]) is torch.nn.Linear for name in report.kept_dense)
    assert sum(p.numel() for p in loaded.parameters()) == report.model_params_after == info["params"]
    batch = random_batch()
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))


def test_tied_weights_are_stored_once_and_reloaded(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    _compressed(model)
    save_compressed(model, tmp_path)
    loaded = load_compressed(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    batch = random_batch(ragged=False)
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def test_directory_size_is_in_proportion_to_the_parameters(tmp_path):
    # Wide enough that the weights, not the JSON, fill the folder.
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=64)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "dense")
    params_before = sum(p.numel() for p in model.parameters())
    report = compress_(model, 0.25, method="svd", store=DecompositionStore(use_disk=False))
    save_compressed(model, tmp_path / "compressed")
    expected = report.model_params_after / params_before
    assert expected < 0.7
    assert _size(tmp_path / "compressed") / _size(tmp_path / "dense") == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_dense_export_loads_with_plain_from_pretrained(family, tmp_path):
    model, config = _compressed(tiny_models()[family])
    save_compressed(model, tmp_path, config=config, dense=True)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not any(isinstance(module, LowRankLinear) for module in plain.modules())
    batch = random_batch()
    torch.testing.assert_close(_logits(plain, batch), _logits(model, batch), rtol=1e-4, atol=1e-5)
    # the model given to save_compressed is still factorized
    assert any(isinstance(module, LowRankLinear) for module in model.modules())
    assert read_compressed_info(tmp_path)["dense"] is True
    torch.testing.assert_close(_logits(load_compressed(tmp_path), batch), _logits(plain, batch))
    _assert_no_pickles(tmp_path)


def test_tokenizer_is_saved_alongside(tmp_path):
    from tiny_task import minilm_tokenizer

    model, _ = _compressed(tiny_models()["bert"])
    save_compressed(model, tmp_path, tokenizer=minilm_tokenizer())
    assert (tmp_path / "tokenizer.json").is_file() or (tmp_path / "vocab.txt").is_file()


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.fixture
def saved(tmp_path) -> Path:
    model, config = _compressed(tiny_models()["bert"])
    save_compressed(model, tmp_path / "model", config=config)
    return tmp_path / "model"


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_compressed(tmp_path / "absent")


def test_a_file_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_compressed(tmp_path / "file")


def test_missing_json(saved):
    (saved / INFO_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=INFO_FILE):
        load_compressed(saved)


def test_garbled_json(saved):
    (saved / INFO_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_compressed(saved)


def test_future_format_version(saved):
    info = json.loads((saved / INFO_FILE).read_text())
    info["format_version"] = FORMAT_VERSION + 1
    (saved / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="newer than this fwsvd reads"):
        load_compressed(saved)


def test_weights_not_matching_the_recorded_rank_name_the_layer(saved):
    info = json.loads((saved / INFO_FILE).read_text())
    name = next(iter(info["layers"]))
    info["layers"][name]["rank"] -= 1
    (saved / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"{name}.first.weight"):
        load_compressed(saved)


def test_weights_of_a_layer_not_recorded_as_factorized(saved):
    info = json.loads((saved / INFO_FILE).read_text())
    name = next(iter(info["layers"]))
    del info["layers"][name]
    (saved / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"{name}"):
        load_compressed(saved)


def test_missing_weights_file(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_compressed(saved)


def test_unserialisable_extra_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_compressed(_compressed(tiny_models()["bert"])[0], tmp_path / "out", extra={"tensor": torch.ones(1)})
    assert not (tmp_path / "out" / INFO_FILE).exists()


# ------------------------------------------------------------------------------------------------
# Format version 1 (method and ranks at the top level, no config) still loads


def _as_format_1(directory: Path, method: str | None) -> dict:
    info = json.loads((directory / INFO_FILE).read_text())
    config = info.pop("config")
    info.update(format_version=1, method=method, ranks=config["rank_pattern"])
    (directory / INFO_FILE).write_text(json.dumps(info))
    return config


def test_format_version_1_directory_loads_and_reads_as_a_config(saved):
    batch = random_batch()
    expected = _logits(load_compressed(saved), batch)
    config = _as_format_1(saved, "svd")
    assert FORMAT_VERSION == 2
    torch.testing.assert_close(_logits(load_compressed(saved), batch), expected, rtol=0, atol=0)
    info = read_compressed_info(saved)
    assert "method" not in info and "ranks" not in info  # read in the current shape
    recorded = CompressionConfig.from_dict(info["config"])
    assert recorded.method == "svd" and recorded.rank_pattern == config["rank_pattern"]
    assert recorded == CompressionConfig(method="svd").with_ranks(config["rank_pattern"])


def test_format_version_1_without_a_method_has_no_config(saved):
    _as_format_1(saved, None)
    assert read_compressed_info(saved)["config"] is None
    assert any(isinstance(module, LowRankLinear) for module in load_compressed(saved).modules())


def test_an_invalid_recorded_config_is_reported(saved):
    info = json.loads((saved / INFO_FILE).read_text())
    info["config"]["method"] = "pca"
    (saved / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="invalid compression config.*pca"):
        load_compressed(saved)
