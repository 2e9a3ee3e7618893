"""Inference speed of compressed models against the dense one, and against what their weights promise.

A compressed model keeps w = (kept target weights) / (dense target weights) of the factorized Linears' work,
so if nothing but the Linears changed its time would be ``rest + Linear × w``, with the dense model's time
split into the target Linears and the rest by timing, in the same rounds, a copy whose target Linears return
zeros without a product (the torch profiler's Linear share is printed beside it: it also counts the
profiler's overhead per call and the untargeted pooler and head). This script measures, for each model, shape and rank
setting, the time ratio compressed / dense (median of per-round ratios, dense and compressed timed
interleaved on the same batch by fwsvd.evaluate.latency, the dashboard's own code) and divides it by that
ideal: measured / ideal = 1 means the factorization costs nothing beyond its arithmetic (goal: <= 1.05).

Rows: the demo model (MiniLM-L6 fine-tuned on Rotten Tomatoes; --model for another) at each --ratios (plain
SVD: every method builds the same shapes, so its speed is the method's), twice: with LowRankLinear as it is
(one module, the two products taken directly, an unaligned rank padded to a multiple of 8 without autograd)
and as it was (``two calls``: ``second(first(x))``, no padding), timed in the same rounds.

Run:  python bench/bench_inference.py [--rounds 5] [--threads 1] [--batches 1 8 32] [--lengths 64 128]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Mapping

import torch
import transformers
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fwsvd.config import CompressionConfig
from fwsvd.evaluate.latency import measure_latency
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.surgery.modules import replace_module
from fwsvd.surgery.targets import find_targets, target_shapes
from fwsvd.view.rank_config import rank_for_ratio
from fwsvd.view.sizes import size_at

transformers.logging.set_verbosity_error()


def load(source: str) -> nn.Module:
    from fwsvd.io.models import load_any_model

    model, _, _ = load_any_model(source)
    return model.eval()


def inputs(model: nn.Module, batch: int, length: int) -> dict[str, torch.Tensor]:
    """A batch of ``batch`` sequences of exactly ``length`` tokens (random ids, no padding): the shapes are
    what is timed, not the text."""
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1000, model.config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def linear_share(model: nn.Module, batch: Mapping[str, torch.Tensor], repeats: int) -> float:
    """The share of a forward pass spent in aten::linear (every nn.Linear's product and bias), by the
    profiler; the median over ``repeats`` profiled passes."""
    shares = []
    with torch.inference_mode():
        model(**batch)
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                start = time.perf_counter()
                model(**batch)
                total = time.perf_counter() - start
            linear = sum(event.cpu_time_total for event in profiled.events()
                         if event.name == "aten::linear" and not _inside_linear(event)) / 1e6
            shares.append(linear / total)
    return statistics.median(shares)


def _inside_linear(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == "aten::linear":
            return True
        parent = parent.cpu_parent
    return False


class _Zeros(nn.Module):
    """A target Linear's output, shape and dtype, without its product: what the rest of the model costs."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def without_targets(dense: nn.Module) -> nn.Module:
    """A copy of ``dense`` whose target Linears cost nothing: timed beside it, the rest of the model's share.
    (Attention, softmax, norms and activations do the same work on zeros as on anything else on a CPU.)"""
    stub = copy.deepcopy(dense)
    for name, module in find_targets(stub).items():
        replace_module(stub, name, _Zeros(module.out_features))
    return stub


class TwoCalls(LowRankLinear):
    """LowRankLinear's forward as it was: two module calls, the factors as stored (no padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def as_two_calls(model: nn.Module) -> nn.Module:
    """``model`` with every LowRankLinear switched to the former forward (same parameters)."""
    for module in model.modules():
        if isinstance(module, LowRankLinear):
            module.__class__ = TwoCalls
    return model


class _Layer(nn.Module):
    """One layer called as ``layer(x=...)``, the way measure_latency calls models."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def layer_table(dense: nn.Module, targets: Mapping[str, nn.Module], ratios: list[float], tokens: list[int],
                rounds: int) -> None:
    """Each distinct target shape alone: dense against the pair at each ratio's rank, new forward and old, on
    ``tokens`` rows; the ideal is the pair's share of the multiply-adds, r·(m+n) / (m·n)."""
    print("\n| layer (out × in) | rank | tokens | dense ms | pair × | two calls × | ideal × | pair / ideal | "
          "two calls / ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_shape = {}
    for module in targets.values():
        by_shape.setdefault(tuple(module.weight.shape), module)
    for (out_features, in_features), module in by_shape.items():
        for ratio in ratios:
            rank = rank_for_ratio(ratio, min(out_features, in_features))
            pair = LowRankLinear.from_linear(module, rank)
            old = as_two_calls(LowRankLinear.from_linear(module, rank))
            ideal = rank * (out_features + in_features) / (out_features * in_features)
            for count in tokens:
                x = torch.randn(count, in_features, generator=torch.Generator().manual_seed(count))
                report = measure_latency({"dense": _Layer(module), "pair": _Layer(pair), "old": _Layer(old)},
                                         [{"x": x}], rounds=rounds, reference="dense")
                new, former = report.time_ratio("pair").median, report.time_ratio("old").median
                print(f"| {out_features} × {in_features} | {rank} | {count} | "
                      f"{report.latency('dense').median * 1e3:.3f} | {new:.3f} | {former:.3f} | {ideal:.3f} | "
                      f"{new / ideal:.3f} | {former / ideal:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.33, 0.25])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--layer-tokens", type=int, nargs="*", default=[64, 512, 4096],
                        help="rows for the per-layer table (none: skip it)")
    parser.add_argument("--layer-rounds", type=int, default=15)
    parser.add_argument("--skip-model", action="store_true", help="only the per-layer table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dense = load(args.model)
    targets = find_targets(dense)
    shapes = target_shapes(targets)
    model_params = sum(p.numel() for p in dense.parameters())
    store = DecompositionStore(use_disk=False)
    models: dict[str, nn.Module] = {"dense": dense}
    weight_ratio: dict[str, float] = {}
    settings: dict[str, str] = {}
    for ratio in args.ratios:
        ranks = {name: rank_for_ratio(ratio, min(shape)) for name, shape in shapes.items()}
        label = f"ratio {ratio:g}"
        # Every layer factorized, at break-even too: the rows measure the pair itself.
        config = CompressionConfig(rank_pattern=ranks, method="svd", keep_dense_past_break_even=False)
        models[label], _ = compressed_copy(dense, config, store=store)
        models[f"{label}, two calls"] = as_two_calls(compressed_copy(dense, config, store=store)[0])
        size = size_at(model_params, ranks, shapes)
        weight_ratio[label] = weight_ratio[f"{label}, two calls"] = size.target_share
        settings[label] = (f"ranks {'/'.join(map(str, sorted(set(ranks.values()))))}; target weights "
                           f"{size.target_share:.3f}×, whole model {size.model_share:.3f}×")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s); {args.rounds} interleaved rounds after 1 warm-up; model {args.model}")
    for label, text in settings.items():
        print(f"# {label}: {text}")
    if args.layer_tokens:
        layer_table(dense, targets, args.ratios, args.layer_tokens, args.layer_rounds)
    if args.skip_model:
        return
    models["rest"] = without_targets(dense)
    print("\n| batch × length | dense s / batch | target Linear share: timed (profiler) | model | measured × | "
          "spread (IQR) | ideal × | measured / ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for batch_size in args.batches:
        for length in args.lengths:
            batch = inputs(dense, batch_size, length)
            profiled = linear_share(dense, batch, args.profile_repeats)
            report = measure_latency(models, [batch], rounds=args.rounds, reference="dense")
            dense_time = report.latency("dense").median
            # The target Linears' share, timed: dense minus the model without them, in the same rounds (the
            # profiler's share also counts its own overhead per call and the untargeted pooler and head).
            share = 1 - report.time_ratio("rest").median
            for label in weight_ratio:
                measured = report.time_ratio(label)
                ideal = (1 - share) + share * weight_ratio[label]
                print(f"| {batch_size} × {length} | {dense_time:.4f} | {share:.2f} ({profiled:.2f}) | {label} | "
                      f"{measured.median:.3f} | {measured.low:.3f}–{measured.high:.3f} | {ideal:.3f} | "
                      f"{measured.median / ideal:.3f} |", flush=True)


if __name__ == "__main__":
    main()
