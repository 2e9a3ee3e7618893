"""``python -m fwsvd`` / ``fwsvd``: the library's steps as subcommands.

Every subcommand prints a short summary on stdout, draws progress bars on stderr and, with ``--json PATH``,
writes its result there for scripts. Bad input — a missing file, an absent column, an unknown task, a rank
out of range — ends with one line, ``fwsvd: error: ...``, and exit code 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from fwsvd.config import ALLOCATIONS, FISHER_MODES, CompressionConfig, FisherConfig, as_config, read_rank_document
from fwsvd.surgery.compress import compress_
from fwsvd.surgery.targets import find_targets, target_shapes
from fwsvd.io.demos import DEFAULT_DEMO, DEMOS, demo_of_model, get_demo
from fwsvd.io.explorer import prepare_explorer
from fwsvd.io.headline import prepare_headline
from fwsvd.evaluate.evaluation import count_parameters, evaluate_model
from fwsvd.view.analysis import DEFAULT_METHODS, METHODS, needs_statistics
from fwsvd.evaluate.finetune import finetune_
from fwsvd.fisher.estimate import FisherResult
from fwsvd.io.persistence import save_compressed
from fwsvd.fisher.summary import importance_agreement
from fwsvd.io.models import TaskModel, load_any_model, load_for_task
from fwsvd.data.batches import EVALUATION_LOGITS_BYTES
from fwsvd.data.labels import parse_label_map
from fwsvd.data.sources import data_of_task, task_of_data
from fwsvd.evaluate.metrics import metric_label, metric_note
from fwsvd.fisher.task import task_fisher
from fwsvd.evaluate.sweep import run_sweep
from fwsvd.data.language_modeling import text_task
from fwsvd.data.tasks import ROLES, TASK_NAMES, Task, get_task, local_task
from fwsvd.view.explorer import Source
from fwsvd.view.metrics import direction_note
from fwsvd.view.trained_length import recorded_max_length

PROG = "fwsvd"
#: Library errors that mean "the input is wrong", shown as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ConnectionError, ModuleNotFoundError)
APP_FILE = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
APP_ADDRESS = "127.0.0.1"

Handler = Callable[[argparse.Namespace], dict[str, Any]]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block would bury it) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class UserError(ValueError):
    """Bad command-line input found after parsing (argument combinations)."""


# --------------------------------------------------------------------------------------------------
# Argument types and groups


def _number(text: str) -> float:
    """A number; whether it is in range is the CompressionConfig's to say (one check, one message)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: give a number in (0, 1]") from None


def _numbers(text: str) -> list[float]:
    return [_number(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class _Deprecated(argparse.Action):
    """An old spelling of an option, kept working (hidden from --help) with a note naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{PROG}: note: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _integer_from(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _integer_from(1)
_non_negative_int = _integer_from(0)


def _label_map(text: str) -> dict[str, str]:
    try:
        return parse_label_map(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the result as JSON to PATH")


def _add_model(parser: argparse.ArgumentParser, what: str = "model", from_config: bool = False) -> None:
    parser.add_argument("--model", required=not from_config, metavar="SOURCE",
                        help=f"{what}: a demo model ({', '.join(repr(demo.model) for demo in DEMOS.values())}; "
                             "its task is implied), a model directory (save_pretrained or fwsvd compress output) "
                             "or a hub id (needs the hub)" + ("; default: the --config file's" if from_config else ""))


def _add_task(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task (default: a demo model's own task, e.g. demo-ner with --model demo-ner)")
    group.add_argument("--task", metavar="NAME", help=f"one of {', '.join(TASK_NAMES)}")
    group.add_argument("--data-files", nargs="+", metavar="FILE",
                       help="local CSV/TSV/JSON(L)/parquet data instead of --task: one file (split into "
                            "train/validation/test) or ROLE=FILE items, e.g. train=a.csv test=b.csv; without "
                            "--label-column, text for language modelling (.txt files, or --text-column)")
    group.add_argument("--text-column", help="text column of --data-files")
    group.add_argument("--label-column", help="label column of --data-files (leave out for language modelling)")
    group.add_argument("--text-pair-column", help="second text column of --data-files (sentence pairs)")
    group.add_argument("--label-map", type=_label_map, metavar="DATA=MODEL,...",
                       help="labels matched to the model's by name; rename those the model calls otherwise, e.g. "
                            "rotten=negative,fresh=positive (the right side: the model's label name or id)")


def _add_evaluation(parser: argparse.ArgumentParser, batching: bool = True) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--split", choices=[role for role in ROLES if role != "train"], default="test",
                       help="split to score (default: test)")
    group.add_argument("--limit", type=_positive_int, help="score only the first N examples")
    if batching:
        _add_batching(group, evaluation=True)


def _add_batching(group: argparse._ActionsContainer, evaluation: bool = False) -> None:
    capped = (f"; a language model scores fewer blocks at once where their logits would pass "
              f"{EVALUATION_LOGITS_BYTES // 2**20} MiB" if evaluation else "")
    group.add_argument("--batch-size", type=_positive_int, default=32, help=f"default: 32{capped}")
    group.add_argument("--max-length", type=_positive_int,
                       help="tokens per example; default: the length the model was fine-tuned with where "
                            "recorded, else 128")


def _add_config(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--config", "--ranks-json", dest="config", type=Path, metavar="FILE",
                        help=f"{what}: a compression config (the Export page's download, 'compress --json' output, "
                             "a saved model's fwsvd_compressed.json, an old rank file or {layer: rank}); the "
                             "flags below override it")


def _add_rank_rules(parser: argparse.ArgumentParser) -> None:
    """The global rank rule and the allocation; any of them replaces the --config file's per-layer ranks."""
    group = parser.add_argument_group("ranks (any of these replaces the --config file's per-layer ranks)")
    rules = group.add_mutually_exclusive_group()
    rules.add_argument("--rank-ratio", type=_number, metavar="R",
                       help="share of each layer's full rank, in (0, 1]; the paper keeps 0.33")
    rules.add_argument("--param-budget", type=_number, metavar="B",
                       help="share of each layer's weight parameters to keep, in (0, 1]")
    rules.add_argument("--rank", type=_positive_int, metavar="N", help="the same rank for every layer")
    group.add_argument("--factorize-past-break-even", action="store_true",
                       help="factorize layers whose rank is at or past break-even (r·(m+n) ≥ m·n) too; by "
                            "default they stay dense, since their factors would save nothing")
    _add_allocation(group)


def _add_allocation(group: argparse._ActionsContainer) -> None:
    group.add_argument("--allocate", choices=ALLOCATIONS,
                       help="spread the rule's total parameters over the layers where they lose least: "
                            "fisher (Fisher-weighted error), plain (plain error) or uniform (one ratio)")
    group.add_argument("--allocation-floor", type=_number, metavar="S",
                       help="with --allocate: every factorized layer keeps at least this share of its uniform "
                            "rank, in [0, 1]; default: 0.5")


def _add_fisher(parser: argparse.ArgumentParser, old_spellings: bool = False) -> None:
    defaults = FisherConfig()
    group = parser.add_argument_group("Fisher (estimated on the train split, cached; unset flags come from "
                                      "--config, else these defaults)")
    group.add_argument("--fisher-mode", choices=FISHER_MODES,
                       help=f"per_example: exact Fisher; batch: squared mini-batch gradients; "
                            f"default: {defaults.mode}")
    group.add_argument("--fisher-examples", type=_positive_int, metavar="N",
                       help=f"train examples; default: {defaults.num_examples}")
    group.add_argument("--seed", type=_non_negative_int, help=f"seed of the example draw; default: {defaults.seed}")
    group.add_argument("--max-length", type=_positive_int, metavar="N",
                       help="tokens per example; default: the length the model was fine-tuned with where recorded, "
                            f"else {defaults.max_length}")
    group.add_argument("--batch-size", type=_positive_int, metavar="N", help=f"default: {defaults.batch_size}")
    if old_spellings:
        group.add_argument("--mode", dest="fisher_mode", choices=FISHER_MODES, action=_Deprecated,
                           replacement="--fisher-mode")
        group.add_argument("--num-examples", dest="fisher_examples", type=_positive_int, action=_Deprecated,
                           replacement="--fisher-examples")


# --------------------------------------------------------------------------------------------------
# Shared steps


def _task(args: argparse.Namespace, required: bool = True, config: CompressionConfig | None = None) -> Task | None:
    """The task from --task or --data-files, else the --config file's data; a demo model's own task by default
    (demo-ner for --model demo-ner)."""
    columns = {"--text-column": args.text_column, "--label-column": args.label_column,
               "--text-pair-column": args.text_pair_column}
    if args.task and args.data_files:
        raise UserError("give --task or --data-files, not both")
    if args.data_files:
        if not args.label_column and not args.text_pair_column:
            # No labels: the text is its own target (a causal language model's perplexity).
            return text_task(_data_files(args.data_files), text_column=args.text_column)
        if not args.text_column or not args.label_column:
            raise UserError("--data-files needs --text-column and --label-column")
        return local_task(_data_files(args.data_files), text_column=args.text_column,
                          label_column=args.label_column, text_pair_column=args.text_pair_column)
    given = [flag for flag, value in columns.items() if value]
    if given:
        raise UserError(f"{', '.join(given)} only apply with --data-files")
    if args.task:
        return get_task(args.task)
    if config is not None and config.data is not None:
        return task_of_data(config.data)
    demo = demo_of_model(args.model or (config.model if config is not None else None))
    if demo is not None:
        return get_task(demo.task)
    if required:
        raise UserError("give --task NAME or --data-files FILE --text-column C --label-column C")
    return None


def _recorded_length(args: argparse.Namespace) -> int | None:
    """The max length --model was fine-tuned with, where recorded (a demo: its registered Fisher's)."""
    source = getattr(args, "model", None)
    demo = demo_of_model(source) if source else None
    return demo.fisher.max_length if demo is not None else recorded_max_length(source)


def _max_length(args: argparse.Namespace) -> int:
    """--max-length, else the length the model was fine-tuned with where recorded, else 128."""
    return args.max_length or _recorded_length(args) or FisherConfig().max_length


def _model(args: argparse.Namespace, config: CompressionConfig | None = None) -> str:
    """--model, else the --config file's model."""
    source = args.model or (config.model if config is not None else None)
    if not source:
        raise UserError("give --model SOURCE" + (" (the --config file records no model)"
                                                 if getattr(args, "config", None) is not None else ""))
    return str(source)


def _load(args: argparse.Namespace, task: Task | None, config: CompressionConfig | None = None) -> TaskModel:
    """The model for ``task``, whose labels are matched to the model's by name (--label-map, else the --config
    file's label_map, renames those the model calls otherwise)."""
    label_map = args.label_map if args.label_map is not None else (config.label_map if config is not None else {})
    if task is None:
        if label_map:
            raise UserError("--label-map maps a task's labels: give the task (--task or --data-files) too")
        model, tokenizer, info = load_any_model(_model(args, config), None)
        return TaskModel(model, tokenizer, None, info)
    return load_for_task(_model(args, config), task, label_map=label_map)


def _recorded(config: CompressionConfig, args: argparse.Namespace, task: Task | None) -> CompressionConfig:
    """``config`` with the model, data and label map it is made from, so that its document rebuilds the model."""
    source = _model(args, config)
    path = Path(source).expanduser()
    model = str(path.resolve()) if source != "demo" and path.is_dir() else source
    label_map = args.label_map if args.label_map is not None else config.label_map
    data = data_of_task(task) if task is not None else config.data
    return dataclasses.replace(config, model=model, data=data, label_map=label_map)


def _data_files(items: Sequence[str]) -> str | dict[str, str]:
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    files = {}
    for item in items:
        role, separator, path = item.partition("=")
        if not separator or role not in ROLES:
            raise UserError(f"--data-files item {item!r}: with several files give ROLE=FILE, ROLE one of "
                            f"{', '.join(ROLES)}")
        files[role] = path
    return files


@contextlib.contextmanager
def _progress(description: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr."""
    bar = tqdm(desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total or None
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _config(args: argparse.Namespace) -> CompressionConfig:
    """The --config file's configuration (default: CompressionConfig()) with the flags given on top. A rank
    rule or --allocate replaces the file's per-layer ranks; --rank needs the model (see _with_rank)."""
    config = CompressionConfig()
    if args.config is not None:
        path = args.config.expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--config file not found: {path}")
        try:
            config = read_rank_document(path.read_bytes())
        except ValueError as error:
            raise UserError(f"--config {path}: {error}") from error
    fisher = {"mode": args.fisher_mode, "num_examples": args.fisher_examples, "seed": args.seed,
              "max_length": args.max_length, "batch_size": args.batch_size}
    if args.max_length is None and args.config is None:  # a --config file records its own length
        fisher["max_length"] = _recorded_length(args)
    given = {key: value for key, value in fisher.items() if value is not None}
    changes: dict[str, Any] = {"fisher": dataclasses.replace(config.fisher, **given)}
    if getattr(args, "method", None) is not None:
        changes["method"] = args.method
    rules = {"rank_ratio": getattr(args, "rank_ratio", None), "param_budget": getattr(args, "param_budget", None)}
    for rule, value in rules.items():
        if value is not None:
            changes.update({"rank_ratio": None, "param_budget": None, "rank_pattern": {}, rule: value})
    if getattr(args, "allocate", None) is not None:
        changes.update(allocation=args.allocate, rank_pattern={})
    if getattr(args, "allocation_floor", None) is not None:
        changes.update(allocation_floor=args.allocation_floor)
    if getattr(args, "rank", None) is not None:
        changes.update(rank_pattern={})
    if getattr(args, "factorize_past_break_even", False):
        changes.update(keep_dense_past_break_even=False)
    return dataclasses.replace(config, **changes)


def _with_rank(config: CompressionConfig, rank: int | None, model: torch.nn.Module) -> CompressionConfig:
    """``config`` with --rank N pinned on every layer it selects, checked against the model's layers."""
    shapes = target_shapes(find_targets(model))
    if rank is not None:
        selected = {name: shape for name, shape in shapes.items() if config.selects(name)}
        config = dataclasses.replace(config, rank_pattern=as_config(rank, selected).rank_pattern)
    config.check(shapes)
    return config


def _needs_fisher(config: CompressionConfig) -> bool:
    """Whether ``config`` needs the Fisher pass: for FWSVD's importances, for a Fisher-weighted allocation, or
    for the token statistics that asvd, whiten and kfac are weighted by (gathered in the same pass)."""
    return config.method == "fwsvd" or config.allocation == "fisher" or needs_statistics(config.method)


def _fisher(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task,
            settings: FisherConfig, statistics: bool = False) -> FisherResult:
    """The task's Fisher, with the target layers' token statistics when ``statistics``."""
    what = f"Fisher ({settings.mode})" + (" and token statistics" if statistics else "")
    with _progress(what, "batch") as progress:
        return task_fisher(model, tokenizer, task, settings, progress=progress, statistics=statistics)


def _metrics_text(metrics: dict[str, float], kind: str = "classification",
                  intervals: dict[str, Any] | None = None) -> str:
    """Each metric named for what it is (an NER F1 is seqeval's entity-level F1), with its 95% interval where
    it has one, which way is better where that is not higher (perplexity), and a note on a telling 0."""
    parts = []
    for name, value in metrics.items():
        text = f"{metric_label(kind, name)} {value:.4f}"
        if intervals and name in intervals:
            text += f" (95% interval {intervals[name].low:.4f}–{intervals[name].high:.4f})"
        parts.append(text + direction_note(name))
    note = metric_note(kind, metrics)
    return f"{', '.join(parts)} ({note})" if note else ", ".join(parts)


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _check_output(path: Path) -> Path:
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--output {path} is a file; give a directory")
    return path


# --------------------------------------------------------------------------------------------------
# Subcommands


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    demo = get_demo(args.name)
    directory = demo.ensure(force=args.force).resolve()  # the fine-tuning draws its own bar
    metrics = demo.info(directory)["test_metrics"]
    print(f"{demo.title} demo model (--model {demo.model}, task {demo.task}): {directory}\n"
          f"test: {_metrics_text(metrics)}")
    # The dashboard opens a demo on the rank explorer with the default Fisher, and its other methods need the
    # token statistics: cache all three now, so a new user sees the methods compared at once instead of a
    # "compute the Fisher" prompt.
    with _progress("Fisher and token statistics for the rank explorer", "batch") as progress:
        snapshot = prepare_explorer(Source(model=demo.model, task=demo.task), demo.fisher, progress=progress,
                                    statistics=True).resolve()
    print(f"rank explorer snapshot: {snapshot}")
    # Its headline (size, each default method's metric with intervals, speed-up) is measured now too.
    with _progress("Headline evaluation", "step") as progress:
        headline = prepare_headline(Source(model=demo.model, task=demo.task), demo.fisher,
                                    progress=progress).resolve()
    print(f"rank explorer headline: {headline}")
    return {"name": demo.name, "model": demo.model, "task": demo.task, "model_dir": str(directory),
            "metrics": metrics, "explorer_snapshot": str(snapshot), "headline": str(headline)}


def _cmd_fisher(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args)
    settings = config.fisher
    model, tokenizer, task, _ = _load(args, _task(args, config=config), config)
    result = _fisher(model, tokenizer, task, settings)
    layers = {name: {"features": values.numel(), "mean": values.mean().item(), "min": values.min().item(),
                     "max": values.max().item()} for name, values in result.importances.items()}
    origin = "loaded from cache" if result.from_cache else f"computed in {result.seconds:.1f} s"
    print(f"Fisher ({settings.mode}) of {len(layers)} layers over {result.provenance['num_examples']} train "
          f"examples of task {task.name}: {origin}\ncache file: {result.path}")
    output = {"mode": settings.mode, "path": str(result.path), "from_cache": result.from_cache,
              "seconds": result.seconds, "provenance": result.provenance, "fisher_config": settings.to_dict(),
              "layers": layers}
    if args.compare:
        other_mode = next(mode for mode in FISHER_MODES if mode != settings.mode)
        other = _fisher(model, tokenizer, task, dataclasses.replace(settings, mode=other_mode))
        agreement = importance_agreement(result.importances, other.importances)
        summary = {measure: statistics.fmean(values[measure] for values in agreement.values())
                   for measure in ("cosine", "spearman")}
        minimum = {measure: min(values[measure] for values in agreement.values()) for measure in summary}
        print(f"agreement with {other_mode} mode over {len(agreement)} layers: "
              f"cosine mean {summary['cosine']:.4f} (min {minimum['cosine']:.4f}), "
              f"Spearman mean {summary['spearman']:.4f} (min {minimum['spearman']:.4f})")
        output["comparison"] = {"mode": other_mode, "path": str(other.path), "seconds": other.seconds,
                                "mean": summary, "min": minimum, "layers": agreement}
    return output


def _cmd_compress(args: argparse.Namespace) -> dict[str, Any]:
    output = _check_output(args.output)
    if args.config is None and args.rank_ratio is None and args.param_budget is None and args.rank is None:
        raise UserError("give the ranks: --config FILE, --rank-ratio R, --param-budget B or --rank N")
    config = _config(args)
    model, tokenizer, task, _ = _load(args, _task(args, required=_needs_fisher(config), config=config), config)
    config = _with_rank(_recorded(config, args, task), args.rank, model)
    fisher = (_fisher(model, tokenizer, task, config.fisher, statistics=needs_statistics(config.method))
              if _needs_fisher(config) else None)
    report = compress_(model, config, fisher=fisher)
    provenance = fisher.provenance if fisher else None
    save_compressed(model, output, config=report.config, tokenizer=tokenizer, fisher_provenance=provenance,
                    dense=args.dense, kept_dense=report.kept_dense,
                    extra={"source_model": config.model, "task": task.name if task else None})
    size = _directory_bytes(output)
    fraction = report.model_params_after / report.model_params_before
    print(f"{config.method}: {len(report.layers)} layers factorized, parameters {report.model_params_before:,} -> "
          f"{report.model_params_after:,} ({fraction:.1%}); written to {output} "
          f"({'dense export, ' if args.dense else ''}{size / 1e6:.1f} MB)")
    if report.kept_dense:
        print(f"note: {len(report.kept_dense)} layer(s) kept dense: their rank is at or past break-even, where "
              "factors would save nothing (--factorize-past-break-even factorizes them anyway)")
    if report.above_break_even:
        print(f"note: {len(report.above_break_even)} layer(s) have a rank at or above break-even and save "
              "no parameters")
    return {"output": str(output), "method": config.method, "dense": args.dense,
            "params_before": report.model_params_before, "params_after": report.model_params_after,
            "size_bytes": size, "ranks": report.ranks, "kept_dense": report.kept_dense, "fisher": provenance,
            "config": report.config.to_dict()}


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer, task, _ = _load(args, _task(args))
    with _progress(f"evaluating ({args.split})", "batch") as progress:
        result = evaluate_model(model, tokenizer, task, args.split, limit=args.limit, batch_size=args.batch_size,
                                max_length=_max_length(args), progress=progress)
    print(f"{task.name} {args.split} ({result.num_examples} examples): "
          f"{_metrics_text(result.metrics, task.kind, result.intervals)}; "
          f"{result.params:,} parameters; {result.latency_s_per_batch * 1000:.0f} ms per batch")
    return {**result.to_dict(), "model": str(args.model), "task": task.name, "split": args.split}


def _cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    # The sweep sets the method and rank ratio of each run: the file gives the rest (Fisher, layers, allocation).
    base = dataclasses.replace(_config(args), rank_pattern={})
    runs = [dataclasses.replace(base, method=method, rank_ratio=ratio, param_budget=None)
            for method in args.methods for ratio in args.rank_ratios]  # every method and ratio checked up front
    if not runs:
        raise UserError("give at least one method (--methods) and one rank ratio (--rank-ratios)")
    settings = base.fisher
    model, tokenizer, task, _ = _load(args, _task(args, config=base), base)
    with_statistics = any(needs_statistics(method) for method in args.methods)
    fisher = (_fisher(model, tokenizer, task, settings, statistics=with_statistics)
              if any(map(_needs_fisher, runs)) else None)

    def show(run: Any) -> None:
        tqdm.write(f"{run.method:>6} ratio {run.rank_ratio:<5g} params {run.params:>11,}  "
                   f"{_metrics_text(run.metrics, task.kind)}", file=sys.stdout)

    finetune = {"learning_rate": args.learning_rate, "batch_size": settings.batch_size, "seed": settings.seed,
                "limit": args.finetune_limit}
    with _progress("sweep", "model") as progress:
        result = run_sweep(model, tokenizer, task, methods=args.methods, rank_ratios=args.rank_ratios,
                           fisher=fisher, config=base, role=args.split, limit=args.limit,
                           batch_size=settings.batch_size, max_length=settings.max_length,
                           finetune_epochs=args.finetune_epochs, finetune_kwargs=finetune, progress=progress,
                           on_run=show)
    print(f"dense ({task.name} {args.split}): params {result.dense.params:,}  "
          f"{_metrics_text(result.dense.metrics, task.kind)}")
    return {**result.to_dict(), "model": str(args.model), "task": task.name, "split": args.split,
            "fisher": fisher.provenance if fisher else None, "config": base.to_dict(),
            "finetune": {"epochs": args.finetune_epochs, **finetune} if args.finetune_epochs else None}


def _cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    output = _check_output(args.output)
    model, tokenizer, task, info = _load(args, _task(args))
    settings = {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                "max_length": _max_length(args), "limit": args.limit, "seed": args.seed, "optimizer": args.optimizer}
    training = finetune_(model, tokenizer, task, **settings)
    if info is not None:
        config = CompressionConfig.from_dict(info["config"]) if info["config"] is not None else None
        save_compressed(model, output, config=config, tokenizer=tokenizer,
                        fisher_provenance=info.get("fisher_provenance"), dense=info["dense"],
                        extra={**info.get("extra", {}), "finetune": {**settings, "task": task.name}})
    else:
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    print(f"fine-tuned {args.epochs} epoch(s) on {training['examples']} {task.name} train examples "
          f"(final epoch loss {training['loss']:.4f}, {training['seconds']:.0f} s); written to {output}")
    return {"output": str(output), "compressed": info is not None, "params": count_parameters(model),
            "training": training, "settings": settings}


def _streamlit_options(tokens: Sequence[str]) -> dict[str, str]:
    """``--section.option VALUE`` / ``--section.option=VALUE`` items passed through to streamlit, checked
    against streamlit's own options so that a typo is refused here rather than after the server starts."""
    from streamlit.config import get_config_options

    known = get_config_options()
    options: dict[str, str] = {}
    items = iter(tokens)
    for token in items:
        name, separator, value = token.partition("=")
        key = name[2:]
        if not name.startswith("--") or key not in known:
            hint = "a streamlit option (--section.option VALUE, see 'streamlit config show')"
            raise UserError(f"unrecognized argument {token!r} for 'fwsvd app': expected --port, --address, --json "
                            f"or {hint}")
        if not separator:
            value = next(items, None)
            if value is None:
                raise UserError(f"streamlit option {name} needs a value")
        options[key] = value
    return options


def _cmd_app(args: argparse.Namespace) -> dict[str, Any]:
    if not APP_FILE.is_file():
        raise FileNotFoundError(f"the dashboard {APP_FILE} is missing: 'fwsvd app' runs from a source checkout "
                                "of fwsvd (the app/ folder is not part of the installed package)")
    if importlib.util.find_spec("streamlit") is None:
        raise ModuleNotFoundError("the dashboard needs streamlit: pip install 'streamlit>=1.50'")
    options = {"server.address": args.address, "server.headless": "true", "browser.gatherUsageStats": "false"}
    if args.port is not None:
        options["server.port"] = str(args.port)
    passed = _streamlit_options(args.streamlit_options)
    ours = {"server.port": (args.port, None), "server.address": (args.address, APP_ADDRESS)}
    for key, (value, default) in ours.items():
        if key in passed and value != default and str(value) != passed[key]:
            raise UserError(f"--{key.split('.')[1]} {value} and --{key} {passed[key]} disagree; give one")
    options.update(passed)
    command = [sys.executable, "-m", "streamlit", "run", str(APP_FILE)]
    for key, value in options.items():
        command += [f"--{key}", value]
    url = f"http://{options['server.address']}:{options.get('server.port', 8501)}"
    if args.check:
        print(f"dashboard options ok: {url}", flush=True)
        return {"command": command, "url": url, "returncode": None}
    print(f"dashboard: {url} (Ctrl-C stops it)", flush=True)
    return_code = subprocess.call(command)
    return {"command": command, "url": url, "returncode": return_code}


# --------------------------------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Compress fine-tuned transformers with Fisher-weighted SVD "
                                            "(Hsu et al., ICLR 2022).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="build (once) an offline demo model and show its test metrics",
                               description="Build, once, a demo model under the cache folder (MiniLM-L6 "
                                           "fine-tuned on Rotten Tomatoes reviews or on tagged tweets, a few "
                                           "minutes on 2 CPU cores), and cache its default Fisher, token "
                                           "statistics and the rank explorer's snapshot so the dashboard "
                                           "opens on the full explorer.")
    demo.add_argument("--name", choices=list(DEMOS), default=DEFAULT_DEMO,
                      help="; ".join(f"{entry.name}: {entry.title} (--model {entry.model})" for entry in DEMOS.values())
                           + f"; default: {DEFAULT_DEMO}")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    _add_json(demo)
    demo.set_defaults(handler=_cmd_demo)

    fisher = commands.add_parser("fisher", help="estimate (or load from cache) the Fisher importances",
                                 description="Fisher importance of every target layer, over examples of the "
                                             "task's train split; cached.")
    _add_model(fisher)
    _add_task(fisher)
    _add_config(fisher, "take the Fisher settings of")
    _add_fisher(fisher, old_spellings=True)
    fisher.add_argument("--compare", action="store_true",
                        help="also estimate the other mode and report the per-layer agreement "
                             "(cosine, Spearman)")
    _add_json(fisher)
    fisher.set_defaults(handler=_cmd_fisher)

    compress = commands.add_parser("compress", help="factorize a model and save it",
                                   description="Replace the Linear layers of the transformer blocks by low-rank "
                                               "pairs (SVD, FWSVD, ASVD, whitened or K-FAC SVD) and save the "
                                               "result.")
    _add_model(compress, from_config=True)
    _add_task(compress)
    compress.add_argument("--output", type=Path, required=True, metavar="DIR", help="directory to write")
    compress.add_argument("--dense", action="store_true",
                          help="multiply the factors back: a plain model for runtimes without custom layers")
    _add_config(compress, "compress as")
    compress.add_argument("--method", choices=METHODS,
                          help="default: fwsvd (or the --config file's); asvd, whiten and kfac gather token "
                               "statistics in the Fisher pass")
    _add_rank_rules(compress)
    _add_fisher(compress)
    _add_json(compress)
    compress.set_defaults(handler=_cmd_compress)

    evaluate = commands.add_parser("evaluate", help="score a (compressed) model on a task split")
    _add_model(evaluate)
    _add_task(evaluate)
    _add_evaluation(evaluate)
    _add_json(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    sweep = commands.add_parser("sweep", help="accuracy against size over methods and rank ratios",
                                description="Evaluate the dense model and a compressed copy for every method "
                                            "and rank ratio (optionally fine-tuned first).")
    _add_model(sweep, "the dense fine-tuned model")
    _add_task(sweep)
    sweep.add_argument("--methods", type=_names, default=list(DEFAULT_METHODS),
                       help=f"comma-separated, of {','.join(METHODS)}; default: {','.join(DEFAULT_METHODS)}")
    sweep.add_argument("--rank-ratios", type=_numbers, default=[0.5, 0.33, 0.25],
                       help="comma-separated, each in (0, 1]; default: 0.5,0.33,0.25")
    sweep.add_argument("--finetune-epochs", type=_non_negative_int, default=0, metavar="N",
                       help="fine-tune each compressed copy for N epochs first (Adam); default: 0")
    sweep.add_argument("--learning-rate", type=float, default=2e-5, help="fine-tuning; default: 2e-5")
    sweep.add_argument("--finetune-limit", type=_positive_int, metavar="N",
                       help="fine-tune on the first N shuffled train examples only; default: all")
    _add_evaluation(sweep, batching=False)
    _add_config(sweep, "take the Fisher settings, target_modules and allocation of")
    _add_allocation(sweep)
    _add_fisher(sweep)
    _add_json(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    finetune = commands.add_parser("finetune", help="fine-tune a (compressed) model and save it",
                                   description="Fine-tune on the task's train split (the paper: 3 epochs, "
                                               "Adam, lr 2e-5, batch 32) and save in the input's format.")
    _add_model(finetune, "a compressed directory or a dense model")
    _add_task(finetune)
    finetune.add_argument("--epochs", type=_positive_int, default=3, help="default: 3")
    finetune.add_argument("--learning-rate", type=float, default=2e-5, help="default: 2e-5")
    finetune.add_argument("--optimizer", choices=("adam", "adamw"), default="adam", help="default: adam")
    finetune.add_argument("--limit", type=_positive_int, help="train on N examples only")
    finetune.add_argument("--seed", type=int, default=0, help="default: 0")
    _add_batching(finetune)
    finetune.add_argument("--output", type=Path, required=True, metavar="DIR", help="directory to write")
    _add_json(finetune)
    finetune.set_defaults(handler=_cmd_finetune)

    app = commands.add_parser("app", help="run the Streamlit dashboard",
                              description="Run the dashboard with streamlit, headless, on a local address. "
                                          "Other streamlit options (--section.option VALUE, e.g. "
                                          "--theme.base dark) are passed on to 'streamlit run'.")
    app.add_argument("--port", type=_positive_int, help="default: streamlit's (8501)")
    app.add_argument("--address", default=APP_ADDRESS, help=f"default: {APP_ADDRESS} (this machine only)")
    app.add_argument("--check", action="store_true",
                     help="check the options and exit without starting the server (scripts/app.sh does this "
                          "before the demo build, so a typo is refused at once)")
    _add_json(app)
    app.set_defaults(handler=_cmd_app)
    return parser


def _one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(message).split()) or type(error).__name__


def _json_path(path: Path | None) -> Path | None:
    """Checked before the work starts, so that a long run never ends unable to write its result."""
    if path is None:
        return None
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"--json {path} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _to_json(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0, or 2 for bad input)."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command != "app":  # only the dashboard passes options on (to streamlit)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.streamlit_options = unknown
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    # The CLI draws its own bars; those of datasets (per file) and transformers (per weight load) bury them.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        json_path = _json_path(args.json)
        result = args.handler(args)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, default=_to_json) + "\n")
    return 0
