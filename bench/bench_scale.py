"""A 1B-parameter model on one CPU machine: decomposition, rank changes, allocation and the explorer's figures.

Builds a randomly initialised LlamaForCausalLM of the Llama-3.2-1B-like shape (hidden 2048, 16 blocks, FFN 8192,
32 heads, 8 KV heads, vocabulary 32000; nothing downloaded) in float32, then measures, in this one process:

1. **decompose**: every target layer (7 per block: q, k, v, o, gate, up, down) decomposed for plain SVD and its
   error curves computed, through a :class:`~fwsvd.DecompositionStore` over a fresh disk cache — time per
   layer shape, and the process's peak resident memory (``VmHWM`` from ``/proc/self/status``). By default
   only the first block's 7 layers run an SVD: the later blocks take that block's weights, so the store finds
   their decompositions by content, and the time for all 112 is the per-shape medians summed (``--svd-blocks
   16`` runs every SVD: about 20 minutes of two idle cores, hours on a loaded machine);
2. **store**: the bytes every layer's decomposition takes in float32, float16 and bfloat16, with all factors
   or only those up to each layer's break-even rank, and the relative Frobenius error of a rank-r weight
   rebuilt from 16-bit factors against float32 ones (next to the truncation error itself);
3. **rank change**: for each of ``--store-dtypes``, a compressed copy at rank ratio 0.33 cut from a fresh
   store over the same disk cache holding factors in that dtype (no SVD: all read back from disk), then
   ``set_ranks_`` to another ratio plus the explorer's per-layer curves (``layer_frame`` and ``totals``) —
   median of repeats, with the count of SVDs run meanwhile (must stay 0). Factors held in the model's dtype
   (float32) are sliced as views; 16-bit ones are converted, i.e. copied;
4. **allocation**: ``allocate_ranks`` over the 112 layers' analyses at half the weights — median of repeats;
5. **explorer**: the rank explorer's three figures for the 16 blocks (errors and parameters of every layer,
   the spectra of one block), built and serialised as ``st.plotly_chart`` sends them — median of repeats.

With copied blocks, layers of the same shape share one decomposition in memory, so the store's bytes are
those of one block's; the table of step 2 counts every layer's. Random weights have flat spectra, unlike
trained ones: an SVD's cost does not depend on the values, so the times are those of a real 1B model, the
truncation errors are not (random matrices are the worst case for truncation).

    python bench/bench_scale.py --write docs/BENCH_SCALE.md      # the 1B model, 7 SVDs run
    python bench/bench_scale.py --svd-blocks 16                  # every one of the 112 SVDs run
    python bench/bench_scale.py --blocks 2 --svd-blocks 2        # a small check: 14 layers
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "app")]

import torch  # noqa: E402  (after the path set-up above)
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import ui_charts as charts  # noqa: E402
from fwsvd.factorize.layers import dense_weight  # noqa: E402
from fwsvd.factorize.store import DecompositionStore, factor_bytes  # noqa: E402
from fwsvd.surgery.compress import compressed_copy, set_ranks_  # noqa: E402
from fwsvd.surgery.targets import find_blocks, find_targets  # noqa: E402
from fwsvd.view import analysis  # noqa: E402
from fwsvd.view.analysis import LayerAnalysis  # noqa: E402
from fwsvd.view import rank_plan  # noqa: E402
from fwsvd.view.allocation import allocate_ranks  # noqa: E402
from fwsvd.view.rank_config import break_even_rank, validate_rank  # noqa: E402

transformers.logging.set_verbosity_error()

SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
         "vocab_size": 32000}
GiB = 1 << 30
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def memory() -> dict[str, float]:
    """Resident memory now and its peak so far (``VmRSS``, ``VmHWM``), in GiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / GiB
    return values


def build(blocks: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=blocks)).eval()


def precision(name: str, module, decomposition) -> list[dict[str, object]]:
    """Relative Frobenius error of a rank-r weight rebuilt from 16-bit factors against float32 ones, at three
    ranks, next to the truncation error ‖W − W_r‖/‖W‖ itself."""
    rows = []
    weight = dense_weight(module).detach().double()
    shape = tuple(weight.shape)
    for fraction in (0.1, 0.33, 0.5):
        rank = max(1, round(fraction * decomposition.full_rank))
        validate_rank(rank, shape)
        first, second = (factor.double() for factor in decomposition.factors(rank))
        exact = second @ first
        row = {"layer": name.split(".")[-1], "shape": shape, "rank": rank,
               "truncation": float((weight - exact).norm() / weight.norm())}
        for label in ("float16", "bfloat16"):
            low_first, low_second = (factor.to(DTYPES[label]).double() for factor in (first, second))
            row[label] = float((low_second @ low_first - exact).norm() / exact.norm())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=16, help="decoder blocks (default 16: the 1B model)")
    parser.add_argument("--svd-blocks", type=int, default=1, help="decompose only the first N blocks' layers; later blocks "
                        "take their weights (block i those of block i mod N), so the store finds their "
                        "decompositions by content and the full model's decomposition time is extrapolated from "
                        "the per-shape SVD times (default 1; 16: every SVD run)")
    parser.add_argument("--store-dtypes", default="float32,float16",
                        help=f"the dtypes the store holds factors in for the rank changes, one run each "
                             f"(of {', '.join(DTYPES)}; default float32,float16)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", help="disk cache for the decompositions (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--write", help="append the results, as markdown, to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="fwsvd-scale-")
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs ({platform.processor() or '?'}), "
        f"load average {os.getloadavg()[0]:.1f} at start; CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    start = time.perf_counter()
    model = build(args.blocks)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    targets = find_targets(model)
    svd_blocks = max(1, min(args.svd_blocks, args.blocks))
    layers = model.model.layers
    with torch.no_grad():
        for index in range(svd_blocks, args.blocks):
            layers[index].load_state_dict(layers[index % svd_blocks].state_dict())
    say(f"model: LlamaForCausalLM, {args.blocks} blocks, {parameters / 1e9:.3f}B parameters "
        f"({parameters * 4 / GiB:.2f} GiB float32), {len(targets)} target layers; built in "
        f"{time.perf_counter() - start:.1f} s; RSS {memory()['VmRSS']:.2f} GiB")

    # 1. Decompose every target layer (plain SVD) and its error curves, into a fresh disk cache; on the way,
    # what each layer's decomposition would take in each storage dtype, and 16-bit factors' error per shape.
    store = DecompositionStore(cache_dir)
    analyses, sizes, errors, shapes_seen = {}, {}, [], set()
    start = time.perf_counter()
    # (wall, CPU) seconds per layer that ran an SVD, by shape: on a loaded machine the CPU time is the work.
    svd_seconds: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for position, (name, module) in enumerate(targets.items(), start=1):
        begin, begin_cpu, computed = time.perf_counter(), time.process_time(), store.computed
        decomposition = store.get(module, method="svd")
        curves = store.curves(module, method="svd")
        out_features, in_features = dense_weight(module).shape
        if store.computed > computed:
            svd_seconds.setdefault((out_features, in_features), []).append(
                (time.perf_counter() - begin, time.process_time() - begin_cpu))
        analyses[name] = LayerAnalysis(name, out_features, in_features, {"svd": decomposition.s}, {"svd": curves})
        for kept in ("all", "break-even"):
            rank = None if kept == "all" else max(1, int(break_even_rank(out_features, in_features)))
            for label, dtype in DTYPES.items():
                sizes[kept, label] = sizes.get((kept, label), 0) + factor_bytes(decomposition, dtype, rank)
        if (out_features, in_features) not in shapes_seen:
            shapes_seen.add((out_features, in_features))
            errors.extend(precision(name, module, decomposition))
        if position % 7 == 0 or position == len(targets):
            print(f"  {position}/{len(targets)} layers, {time.perf_counter() - start:.0f} s, "
                  f"RSS {memory()['VmRSS']:.2f} GiB", flush=True)
        del decomposition
    store.flush()
    decompose_s = time.perf_counter() - start
    peak = memory()
    say(f"decompose: {len(targets)} layers in {decompose_s:.1f} s, {store.computed} SVDs (the layers of "
        f"{svd_blocks} block(s)), curves included, written to the disk cache; peak RSS {peak['VmHWM']:.2f} GiB; "
        f"the store holds {store.memory_bytes / GiB:.2f} GiB (cap {store.max_bytes / GiB:.2f} GiB)")
    per_shape = {shape: [statistics.median(value[clock] for value in values) for clock in (0, 1)]
                 for shape, values in svd_seconds.items()}
    say("\n| shape (out×in) | SVDs run | median wall s per layer (SVD + curves + digest) | median CPU s |"
        "\n|---|---|---|---|")
    for shape, values in svd_seconds.items():
        say(f"| {shape[0]}×{shape[1]} | {len(values)} | {per_shape[shape][0]:.1f} | {per_shape[shape][1]:.1f} |")
    shapes = [tuple(dense_weight(module).shape) for module in targets.values()]
    if set(shapes) <= set(per_shape):
        wall, cpu = (sum(per_shape[shape][clock] for shape in shapes) for clock in (0, 1))
        say(f"\nall {len(targets)} layers decomposed: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} s CPU "
            f"({cpu / 60:.1f} min; / {args.threads} threads = {cpu / args.threads / 60:.1f} min on idle cores)"
            + ("" if svd_blocks == args.blocks else " — extrapolated from the per-shape medians above"))
    else:
        say("\nsome shapes ran no SVD (their decompositions were already in --cache-dir): nothing to extrapolate")
    del store

    # 2. What the store needs in each dtype, and what 16-bit factors cost in accuracy.
    say("\n| factors kept | dtype | GiB for all target layers |\n|---|---|---|")
    for (kept, label), total in sizes.items():
        say(f"| {kept} | {label} | {total / GiB:.2f} |")
    say("\n| layer | shape | rank | truncation error ‖W−W_r‖/‖W‖ | float16 factors ‖ΔW_r‖/‖W_r‖ | "
        "bfloat16 factors ‖ΔW_r‖/‖W_r‖ |\n|---|---|---|---|---|---|")
    for row in errors:
        say(f"| {row['layer']} | {row['shape'][0]}×{row['shape'][1]} | {row['rank']} | {row['truncation']:.3f} | "
            f"{row['float16']:.1e} | {row['bfloat16']:.1e} |")

    # 3. A rank change: the model re-cut from the kept decompositions, and the explorer's curves.
    # From a fresh store over the same disk cache per dtype: every decomposition is read back from disk (none
    # recomputed), and the compressed copy pins what it was cut from. The dense model stays alive beside the
    # copy, as the dashboard keeps it.
    blocks = find_blocks(model)
    for store_dtype in args.store_dtypes.split(","):
        store = DecompositionStore(cache_dir, factor_dtype=DTYPES[store_dtype])
        begin = time.perf_counter()
        compressed, _ = compressed_copy(model, 0.33, method="svd", store=store)
        say(f"\ncompressed_copy at rank ratio 0.33 from the disk cache ({store_dtype} factors): "
            f"{time.perf_counter() - begin:.1f} s, SVDs run: {store.computed}; the store holds "
            f"{store.memory_bytes / GiB:.2f} GiB (cap {store.max_bytes / GiB:.2f} GiB); RSS {memory()['VmRSS']:.2f} GiB")
        computed = store.computed
        # Each repeat moves every layer to a new ratio (none repeats the one before), timing the model's re-cut
        # and the explorer's curves apart, wall and CPU.
        ratios = [0.25, 0.5, 0.1, 0.4, 0.2]
        model_s, curves_s, model_cpu = [], [], []
        for repeat in range(args.repeats):
            begin, begin_cpu = time.perf_counter(), time.process_time()
            report = set_ranks_(compressed, ratios[repeat % len(ratios)])
            middle = time.perf_counter()
            model_s.append(middle - begin)
            model_cpu.append(time.process_time() - begin_cpu)
            # every layer's rank, those kept dense at break-even included (mark_dense shows them dense)
            frame = rank_plan.mark_dense(analysis.layer_frame(analyses, {**report.kept_dense, **report.ranks}, blocks))
            analysis.totals(frame)
            curves_s.append(time.perf_counter() - middle)
        assert store.computed == computed, "a rank change ran an SVD"
        say(f"rank change of all {len(analyses)} layers ({store_dtype} factors), {args.repeats} repeats: "
            f"set_ranks_ median {statistics.median(model_s):.3f} s wall (min {min(model_s):.3f}, max "
            f"{max(model_s):.3f}), {statistics.median(model_cpu):.3f} s CPU; curves (layer_frame + totals) median "
            f"{statistics.median(curves_s):.3f} s (min {min(curves_s):.3f}, max {max(curves_s):.3f}); SVDs run: 0; "
            f"RSS {memory()['VmRSS']:.2f} GiB, peak {memory()['VmHWM']:.2f} GiB")
        # The layers take their own copies of the factors when they first run (fwsvd.surgery.lowrank): what
        # the first forward pass after a rank change pays beyond the next one.
        set_ranks_(compressed, 0.3)
        tokens = torch.randint(0, compressed.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
        passes = []
        for _ in range(3):
            begin = time.perf_counter()
            with torch.inference_mode():
                compressed(input_ids=tokens)
            passes.append(time.perf_counter() - begin)
        say(f"forward pass (1×16 tokens) after a rank change to 0.3: first {passes[0]:.2f} s (the layers copy "
            f"their factors), then {statistics.median(passes[1:]):.2f} s; RSS {memory()['VmRSS']:.2f} GiB")
        del compressed, store, report

    # 4. The rank allocation at half the target weights.
    allocation = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        allocate_ranks(analyses, 0.5, method="svd", objective="plain")
        allocation.append(time.perf_counter() - begin)
    say(f"allocation (allocate_ranks, half the weights, {len(analyses)} layers): median "
        f"{statistics.median(allocation) * 1e3:.1f} ms (min {min(allocation) * 1e3:.1f}, max "
        f"{max(allocation) * 1e3:.1f})")

    # 5. The explorer's figures over every block, serialised as the page sends them.
    ranks = rank_plan.uniform_ranks(analyses, "rank_ratio", 0.33)
    frame = rank_plan.mark_dense(analysis.layer_frame(analyses, ranks, blocks))
    rows = frame[frame["block"] == frame["block"].iloc[0]]
    drawing = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        spectra = {layer: analysis.spectrum_frame(analyses[layer]) for layer in rows["layer"]}
        for figure in (charts.error_figure(frame, ("svd",)), charts.params_figure(frame),
                       charts.spectrum_figure(spectra, rows, ("svd",))):
            figure.to_json()
        drawing.append(time.perf_counter() - begin)
    say(f"explorer figures ({frame['block'].nunique()} blocks, {len(frame)} layers): median "
        f"{statistics.median(drawing):.3f} s (min {min(drawing):.3f}, max {max(drawing):.3f})")
    say(f"peak RSS over the run: {memory()['VmHWM']:.2f} GiB; load average {os.getloadavg()[0]:.1f} at end")

    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n```\n" + " ".join(["python bench/bench_scale.py", *sys.argv[1:]]) + "\n```\n\n")
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
