"""Latency of several models measured together: the same batches, interleaved, repeated; medians and spreads.

One forward pass timed once says little on a shared CPU: another process, a frequency change or the first
call's allocations move it by tens of percent, and two models timed minutes apart see different machines.
So every model is timed in every round, on the same batches, in an order that rotates from round to round
(no model always runs first or after the same neighbour), after warm-up rounds that are not kept. Each model's
latency is the median over rounds with its interquartile range; a model's speed-up over the reference (the
dense model) is the median of the per-round ratios — each ratio taken within one round, on the machine as it
was then — with the interquartile range of those ratios.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fwsvd.storage.sharing import exclusive

Progress = Callable[[int, int], None]

#: Rounds kept by default: the median of 5 is steady to a few percent on two busy cores; more cost time.
ROUNDS = 5
WARMUP = 1


@dataclass(frozen=True)
class Spread:
    """The median of some samples and their interquartile range [low, high]."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        low, median, high = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
        return cls(float(median), float(low), float(high))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "low": self.low, "high": self.high}


def latency_columns(latency: Spread | None, speedup: Spread | None) -> dict[str, float]:
    """Flat table columns: ``latency_s_per_batch`` with ``latency_low_s`` / ``latency_high_s`` (its quartiles)
    and ``speedup`` with ``speedup_low`` / ``speedup_high``; NaN where not measured."""
    nan = float("nan")
    return {"latency_low_s": latency.low if latency else nan, "latency_high_s": latency.high if latency else nan,
            "speedup": speedup.median if speedup else nan, "speedup_low": speedup.low if speedup else nan,
            "speedup_high": speedup.high if speedup else nan}


@dataclass(frozen=True)
class LatencyReport:
    """Seconds per batch of each model in each kept round (``seconds[name][round]``), and the reference."""

    seconds: dict[str, list[float]]
    reference: str | None
    warmup: int
    batches: int

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    def latency(self, name: str) -> Spread:
        """Seconds per batch of ``name``: median over rounds, interquartile range."""
        return Spread.of(self.seconds[name])

    def speedup(self, name: str) -> Spread:
        """The reference's time over ``name``'s, round by round (above 1: ``name`` is faster)."""
        if self.reference is None:
            raise ValueError("this measurement has no reference model to take a speed-up against")
        return Spread.of(np.divide(self.seconds[self.reference], self.seconds[name]))

    def time_ratio(self, name: str) -> Spread:
        """``name``'s time as a share of the reference's, round by round (below 1: faster)."""
        if self.reference is None:
            raise ValueError("this measurement has no reference model to take a time ratio against")
        return Spread.of(np.divide(self.seconds[name], self.seconds[self.reference]))

    def to_dict(self) -> dict[str, Any]:
        """{"rounds", "warmup", "batches", "reference", "models": {name: {"latency_s_per_batch": {...},
        "speedup": {...} (not for the reference)}}}."""
        models = {}
        for name in self.seconds:
            entry: dict[str, Any] = {"latency_s_per_batch": self.latency(name).to_dict()}
            if self.reference is not None and name != self.reference:
                entry["speedup"] = self.speedup(name).to_dict()
            models[name] = entry
        return {"rounds": self.rounds, "warmup": self.warmup, "batches": self.batches, "reference": self.reference,
                "models": models}


def measure_latency(models: Mapping[str, nn.Module], batches: Sequence[Mapping[str, torch.Tensor]], *,
                    rounds: int = ROUNDS, warmup: int = WARMUP, reference: str | None = None,
                    progress: Progress | None = None) -> LatencyReport:
    """Time a forward pass of each of ``models`` over ``batches`` (``labels`` are not passed), interleaved.

    Each round runs every model once over all the batches, starting one model further along than the round
    before; ``warmup`` rounds come first and are not kept. ``reference`` (default: the first model) is what
    speed-ups are taken against. Every model runs in eval mode and inference mode, its modes restored after,
    under its lock (a shared model is not switched while another thread uses it).
    ``progress(done, total)`` counts rounds, warm-up included.
    """
    names = list(models)
    if not names:
        raise ValueError("give at least one model to time")
    if not batches:
        raise ValueError("give at least one batch to time the models on")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise ValueError(f"the reference {reference!r} is not one of the models timed: {', '.join(names)}")
    inputs = {name: _inputs_for(model, batches) for name, model in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    total = warmup + rounds
    with contextlib.ExitStack() as stack:
        for model in dict.fromkeys(models.values()):  # one lock and mode switch per object
            stack.enter_context(_evaluating(model))
        for done in range(total):
            shift = done % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed = _time(models[name], inputs[name])
                if done >= warmup:
                    seconds[name].append(elapsed / len(batches))
            if progress is not None:
                progress(done + 1, total)
    return LatencyReport(seconds=seconds, reference=reference, warmup=warmup, batches=len(batches))


def _inputs_for(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batches on the model's device, without labels: moved once, outside the timed calls."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return [{key: value.to(device) for key, value in batch.items() if key != "labels"} for batch in batches]


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    with exclusive(model):
        training = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for module, flag in training:
                module.training = flag


def _time(model: nn.Module, inputs: Sequence[Mapping[str, torch.Tensor]]) -> float:
    device = inputs[0][next(iter(inputs[0]))].device
    with torch.inference_mode():
        _synchronize(device)
        start = time.perf_counter()
        for batch in inputs:
            model(**batch)
        _synchronize(device)
        return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures the forward pass and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
