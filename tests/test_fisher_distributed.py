"""Data-parallel Fisher: 2 CPU processes over gloo give the importances (and token statistics) of 1 process.

This file is also the worker that torchrun starts in each process (see ``__main__`` at the bottom), so one
launch covers the library calls, the cache shared from rank 0 and the command-line entry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_bert_token
from safetensors.torch import load_file, save_file
from transformers import BertForTokenClassification

from fwsvd.fisher.distributed import rank_and_world_size, shard_batches
from fwsvd.fisher.launch import init_from_env, iter_example_batches, main
from fwsvd.fisher.estimate import estimate_fisher, load_or_estimate_fisher
from fwsvd.fisher.statistics import split_statistics, statistics_to_tensors

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parent.parent
KEY = {"data_id": "tiny/train", "num_examples": 10, "seed": 0, "max_length": 12}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def examples() -> dict[str, torch.Tensor]:
    """10 ragged examples, one row each: 5 batches of 2, so the 2 ranks get 3 and 2 batches."""
    batch = random_batch(10, 12, seed=21)
    return {key: value.contiguous() for key, value in batch.items()}


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to the order of float32 additions (tensors of token statistics included, their counts exactly)."""
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5,
                                   atol=1e-7 * expected[name].abs().max().item())


def test_shard_batches_partitions_in_order():
    shards = [list(shard_batches(range(7), rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(shard_batches(range(3))) == [0, 1, 2]  # outside a process group: everything
    with pytest.raises(ValueError, match="rank"):
        list(shard_batches(range(3), 2, 2))


def write_inputs(directory: Path) -> None:
    """The saved model and examples every process (and the single-process reference) reads."""
    tiny_bert_token().save_pretrained(directory / "model")
    data = examples()
    data["labels"] = torch.randint(0, 5, (10, 12), generator=torch.Generator().manual_seed(22))
    data["labels"][data["attention_mask"] == 0] = -100
    save_file(data, str(directory / "data.safetensors"))


def cli_arguments(directory: Path) -> list[str]:
    return ["--model", str(directory / "model"), "--data", str(directory / "data.safetensors"),
            "--out", str(directory / "cli.safetensors"), "--batch-size", "2", "--statistics"]


def with_statistics(result: tuple[dict[str, torch.Tensor], dict]) -> dict[str, torch.Tensor]:
    """Importances and statistics as one flat dict of tensors, as the cache and the command line store them."""
    importances, statistics = result
    return {**importances, **statistics_to_tensors(statistics)}


def worker(directory: Path) -> None:
    """Runs in each torchrun process: library calls on this rank's shard, then the command-line entry."""
    torch.set_num_threads(1)
    init_from_env()
    rank, _ = rank_and_world_size()
    model = BertForTokenClassification.from_pretrained(directory / "model")
    batches = list(iter_example_batches(load_file(str(directory / "data.safetensors")), 2))
    results = {
        "exact": estimate_fisher(model, shard_batches(batches)),
        "batch": estimate_fisher(model, shard_batches(batches), mode="batch"),
        "statistics": with_statistics(estimate_fisher(model, shard_batches(batches), statistics=True)),
    }
    # Rank 0 alone reads and writes the cache; a hit reaches every rank without building any data.
    miss = load_or_estimate_fisher(model, lambda: shard_batches(batches), cache_dir=directory, **KEY)

    def no_data():
        raise AssertionError("a cache hit must not build the data")

    hit = load_or_estimate_fisher(model, no_data, cache_dir=directory, **KEY)
    assert not miss.from_cache and hit.from_cache
    results.update(miss=miss.importances, hit=hit.importances)
    # The same with statistics: all-reduced on a miss, rank 0's cached file shared on a hit.
    for name in ("statistics-miss", "statistics-hit"):
        result = load_or_estimate_fisher(model, lambda: shard_batches(batches), cache_dir=directory, **KEY,
                                         statistics=True)
        assert result.from_cache == name.endswith("hit")
        results[name] = with_statistics((result.importances, result.statistics))
    for name, importances in results.items():
        save_file(importances, str(directory / f"{name}-{rank}.safetensors"))
    main(cli_arguments(directory))  # also leaves the process group


def test_torchrun_two_processes_match_one(tmp_path):
    """Launched the way users launch it: torchrun, 2 CPU processes over gloo, env:// rendezvous."""
    write_inputs(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(Path(__file__).resolve()), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "over 2 processes" in finished.stdout

    model = BertForTokenClassification.from_pretrained(tmp_path / "model")
    batches = list(iter_example_batches(load_file(str(tmp_path / "data.safetensors")), 2))
    exact = estimate_fisher(model, batches)
    statistics = with_statistics(estimate_fisher(model, batches, statistics=True))
    expected = {"exact": exact, "batch": estimate_fisher(model, batches, mode="batch"), "miss": exact, "hit": exact,
                "statistics": statistics, "statistics-miss": statistics, "statistics-hit": statistics}
    for name, importances in expected.items():
        for rank in range(2):
            assert_same(load_file(str(tmp_path / f"{name}-{rank}.safetensors")), importances)
    cli = load_file(str(tmp_path / "cli.safetensors"))
    assert_same(cli, statistics)
    _, per_layer = split_statistics(cli)
    assert {layer.tokens for layer in per_layer.values()} == {int(examples()["attention_mask"].sum())}
    # One file for the Fisher alone, one for the Fisher with statistics.
    assert len(list((tmp_path / "fisher").glob("*.safetensors"))) == 2


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
