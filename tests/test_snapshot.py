"""fwsvd.view.snapshot and the torch-free modules: analyses saved per model files, read back without torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_bert
from fwsvd import DecompositionStore, analyze_layers, find_targets
from fwsvd.config import CompressionConfig
from fwsvd.view.analysis import layer_frame, shapes_of, spectrum_frame, totals
from fwsvd.view.snapshot import files_identity, load_snapshot, save_snapshot, snapshot_path
from fwsvd.surgery.targets import find_blocks, target_shapes

ROOT = Path(__file__).resolve().parents[1]
KEY = {"kind": "test", "model_files": [["model.safetensors", 10, 1]]}


@pytest.fixture(scope="module")
def analysed():
    model = tiny_bert()
    generator = torch.Generator().manual_seed(0)
    fisher = {name: torch.rand(module.weight.shape[1], generator=generator) + 1e-3
              for name, module in find_targets(model).items()}
    return model, analyze_layers(model, fisher, store=DecompositionStore(use_disk=False))


def test_snapshot_round_trip_draws_the_same_tables(analysed, tmp_path):
    model, analyses = analysed
    # One layer analysed with SVD only (no Fisher): its weighted curve and norm stay absent.
    name = next(iter(analyses))
    plain_only = analyses[name].curves["svd"]
    analyses = {**analyses, name: type(analyses[name])(name, *analyses[name].shape,
                                                        {"svd": analyses[name].singular_values["svd"]},
                                                        {"svd": type(plain_only)(plain_only.plain, None,
                                                                                 plain_only.weight_norm, None)})}
    save_snapshot(KEY, analyses, find_blocks(model), {"metric": "accuracy"}, cache_dir=tmp_path)
    loaded = load_snapshot(KEY, cache_dir=tmp_path)
    assert loaded is not None
    assert loaded.blocks == find_blocks(model) and loaded.info == {"metric": "accuracy"}
    assert list(loaded.analyses) == list(analyses)
    assert shapes_of(loaded.analyses) == target_shapes(find_targets(model))
    assert all(isinstance(value, np.ndarray) for value in loaded.analyses[name].singular_values.values())
    assert loaded.analyses[name].curves["svd"].weighted is None and "fwsvd" not in loaded.analyses[name].curves
    for ratio in (0.1, 0.33, 1.0):
        ranks = CompressionConfig(rank_ratio=ratio, keep_dense_past_break_even=False).resolve_ranks(
            target_shapes(find_targets(model)))  # every layer's rank, dense ones included
        expected, actual = layer_frame(analyses, ranks, find_blocks(model)), layer_frame(loaded.analyses, ranks,
                                                                                          loaded.blocks)
        assert expected.equals(actual)
        assert totals(expected) == totals(actual)
    other = list(analyses)[3]
    assert spectrum_frame(analyses[other]).equals(spectrum_frame(loaded.analyses[other]))


def test_snapshot_misses_read_as_none_with_a_warning(analysed, tmp_path, caplog):
    model, analyses = analysed
    assert load_snapshot(KEY, cache_dir=tmp_path) is None  # never saved: no warning needed
    path = save_snapshot(KEY, analyses, find_blocks(model), {}, cache_dir=tmp_path)
    assert path == snapshot_path(KEY, tmp_path)
    assert load_snapshot({**KEY, "kind": "other"}, cache_dir=tmp_path) is None  # another key, another file

    # A file under this key's name that holds another key's snapshot.
    other = save_snapshot({"kind": "other"}, analyses, [], {}, cache_dir=tmp_path)
    os.replace(other, path)
    with caplog.at_level(logging.WARNING, logger="fwsvd.view.snapshot"):
        assert load_snapshot(KEY, cache_dir=tmp_path) is None
    assert "another model" in caplog.text

    caplog.clear()
    data = bytearray(save_snapshot(KEY, analyses, [], {}, cache_dir=tmp_path).read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\0" * 64
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="fwsvd.view.snapshot"):
        assert load_snapshot(KEY, cache_dir=tmp_path) is None
    assert "unreadable" in caplog.text
    save_snapshot(KEY, analyses, [], {}, cache_dir=tmp_path)  # rewriting repairs it
    assert load_snapshot(KEY, cache_dir=tmp_path) is not None


def test_files_identity_follows_every_file(tmp_path):
    assert files_identity(tmp_path / "missing") is None
    assert files_identity("bert-base-uncased") is None  # a hub id: nothing on disk to key by
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"1234")
    first = files_identity(tmp_path)
    assert [entry[:2] for entry in first] == [["config.json", 2], ["sub/weights.bin", 4]]
    assert files_identity(tmp_path) == first
    (tmp_path / "sub" / "weights.bin").write_bytes(b"12345")
    assert files_identity(tmp_path) != first
    assert files_identity(tmp_path / "config.json")[0][:2] == ["config.json", 2]


def test_the_torch_free_modules_do_not_load_torch():
    code = ("import sys, fwsvd, fwsvd.config, fwsvd.view.analysis, fwsvd.view.rank_config, fwsvd.view.snapshot, fwsvd.storage.locations; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []
