"""measure_latency: interleaved rotated rounds after warm-up, medians and per-round speed-ups (on a fake clock)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fwsvd.evaluate import latency
from fwsvd.evaluate.latency import Spread, latency_columns, measure_latency


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class _Costly(nn.Module):
    """Advances the fake clock by the next of its per-call costs; records the call order and its inputs."""

    def __init__(self, name: str, costs: list[float], clock: _Clock, log: list) -> None:
        super().__init__()
        self.name, self.costs, self.clock, self.log = name, list(costs), clock, log
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, **inputs):
        self.log.append((self.name, sorted(inputs), self.training, torch.is_inference_mode_enabled()))
        self.clock.now += self.costs.pop(0)


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(latency.time, "perf_counter", fake)
    return fake


def test_rounds_rotate_after_warmup_and_ratios_are_per_round(clock):
    log: list = []
    # one warm-up round (cost 100, discarded), then three kept rounds
    dense = _Costly("dense", [100, 3, 1, 2], clock, log).eval()
    small = _Costly("small", [100, 1, 1, 1], clock, log)
    third = _Costly("third", [100, 2, 2, 2], clock, log).train()
    batches = [{"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2)}]
    report = measure_latency({"dense": dense, "small": small, "third": third}, batches, rounds=3, warmup=1)
    order = [entry[0] for entry in log]
    assert order == ["dense", "small", "third", "small", "third", "dense", "third", "dense", "small",
                     "dense", "small", "third"]
    assert all(names == ["input_ids"] and not training and inference for _, names, training, inference in log)
    assert third.training and not dense.training  # modes restored
    assert report.seconds == {"dense": [3, 1, 2], "small": [1, 1, 1], "third": [2, 2, 2]}
    assert report.rounds == 3 and report.reference == "dense"
    assert report.latency("dense") == Spread(median=2.0, low=1.5, high=2.5)
    assert report.speedup("small") == Spread(median=2.0, low=1.5, high=2.5)  # dense / small, round by round
    assert report.speedup("third") == Spread(median=1.0, low=0.75, high=1.25)
    assert report.time_ratio("third").median == 1.0
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["models"]["small"]["speedup"]["median"] == 2.0 and "speedup" not in as_dict["models"]["dense"]


def test_seconds_are_per_batch(clock):
    log: list = []
    model = _Costly("m", [4, 6], clock, log)
    batches = [{"input_ids": torch.ones(1, 2, dtype=torch.long)}] * 2
    report = measure_latency({"m": model}, batches, rounds=1, warmup=0)
    assert report.seconds == {"m": [5.0]} and report.batches == 2


def test_bad_arguments():
    model = nn.Linear(2, 2)
    batch = [{"input": torch.ones(1, 2)}]
    with pytest.raises(ValueError, match="at least one model"):
        measure_latency({}, batch)
    with pytest.raises(ValueError, match="at least one batch"):
        measure_latency({"a": model}, [])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        measure_latency({"a": model}, batch, rounds=0)
    with pytest.raises(ValueError, match="reference 'b' is not one of"):
        measure_latency({"a": model}, batch, reference="b")


def test_columns_without_a_measurement_are_nan():
    columns = latency_columns(Spread(1.0, 0.5, 2.0), None)
    assert columns["latency_low_s"] == 0.5 and columns["speedup"] != columns["speedup"]
