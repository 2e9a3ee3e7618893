"""The demo's Fisher pass with its examples grouped by length against the shuffled batches it used before.

Both passes run the exact per-example Fisher (and, with ``--statistics``, the token statistics) over the same
examples — the dashboard's default Fisher of the demo: 1,024 shuffled training reviews, batches of 32,
each padded to its longest — once as :func:`fwsvd.fisher.task.fisher_batches` groups them now and once in
the shuffled order. In one process, repeats interleaved (the order alternates), medians of wall and CPU
seconds, and the ratio within each repeat (back to back, under the same load). The two results are compared
too: the largest difference of any importance relative to the layer's largest (rounding only).

    python bench/bench_fisher_grouping.py --repeats 3 --write docs/BENCH_FISHER.md

Needs the demo (``python -m fwsvd demo``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import transformers  # noqa: E402

from fwsvd.config import FisherConfig  # noqa: E402
from fwsvd.data.batches import make_batches  # noqa: E402
from fwsvd.data.tasks import task_of  # noqa: E402
from fwsvd.fisher.estimate import estimate_fisher  # noqa: E402
from fwsvd.fisher.task import fisher_batches, fisher_example_count  # noqa: E402
from fwsvd.storage.locations import demo_is_built, demo_model_dir  # noqa: E402
from fwsvd.view.explorer import Source  # noqa: E402

transformers.logging.set_verbosity_error()


def padding(batches) -> float:
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    return 1 - real / sum(batch["attention_mask"].numel() for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=FisherConfig().num_examples)
    parser.add_argument("--statistics", action="store_true", help="time the Fisher with the token statistics")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--write", help="append the results, as markdown, to this file")
    args = parser.parse_args()
    if not demo_is_built():
        raise SystemExit("the demo is not built: run `python -m fwsvd demo` first")
    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(demo_model_dir()).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(demo_model_dir())
    task, config = task_of(Source()), FisherConfig(num_examples=args.examples)
    passes = {
        "grouped": fisher_batches(task, tokenizer, config),
        "shuffled": make_batches(task, tokenizer, "train", batch_size=config.batch_size,
                                 max_length=config.max_length, limit=fisher_example_count(task, config),
                                 seed=config.seed, shuffle=True),
    }
    lines = [f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at start; demo model, {fisher_example_count(task, config)} examples, "
             f"batches of {config.batch_size}; statistics {'on' if args.statistics else 'off'}"]
    for name, batches in passes.items():
        lines.append(f"{name}: {len(batches)} batches, {padding(batches):.0%} of their tokens padding")
    print("\n".join(lines), flush=True)

    def run(batches):
        return estimate_fisher(model, batches, statistics=args.statistics, show_progress=False)

    for batches in passes.values():  # warm-up: first-call allocations and kernel selection
        run(batches[:1])
    seconds = {clock: {name: [] for name in passes} for clock in ("wall", "cpu")}
    results = {}
    names = list(passes)
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = run(passes[name])
            seconds["wall"][name].append(time.perf_counter() - wall)
            seconds["cpu"][name].append(time.process_time() - cpu)
        print(f"  repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {seconds['wall'][name][-1]:.1f} s wall, {seconds['cpu'][name][-1]:.1f} s cpu" for name in names),
            flush=True)
    grouped, shuffled = (results[name][0] if args.statistics else results[name] for name in names)
    difference = max(float((grouped[layer] - shuffled[layer]).abs().max() / shuffled[layer].abs().max())
                     for layer in shuffled)

    lines += ["", f"{args.repeats} interleaved repeats, load average {os.getloadavg()[0]:.1f} at end", "",
              "| clock | shuffled s (median, min–max) | grouped s (median, min–max) | speed-up (median of per-repeat ratios) |",
              "|---|---|---|---|"]
    for clock, values in seconds.items():
        ratios = [s / g for s, g in zip(values["shuffled"], values["grouped"])]
        lines.append(f"| {clock} | {statistics.median(values['shuffled']):.1f} ({min(values['shuffled']):.1f}–"
                     f"{max(values['shuffled']):.1f}) | {statistics.median(values['grouped']):.1f} "
                     f"({min(values['grouped']):.1f}–{max(values['grouped']):.1f}) | "
                     f"**{statistics.median(ratios):.2f}×** ({', '.join(f'{r:.2f}' for r in ratios)}) |")
    lines += ["", f"largest importance difference, grouped vs shuffled, relative to the layer's largest: {difference:.1e}"]
    print("\n".join(lines[-8:]), flush=True)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n```\n" + " ".join(["python bench/bench_fisher_grouping.py", *sys.argv[1:]]) + "\n```\n\n")
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
