"""One compression recipe: :class:`CompressionConfig` (which layers, which method, which ranks) and
:class:`FisherConfig` (how the Fisher importances are estimated), checked in one place and written as one
JSON document.

As PEFT's ``LoraConfig``: every field is stated, ``__post_init__`` refuses bad values with a message naming the
field, the value and what is allowed, and ``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json`` round-trip.
The same document is the Export page's rank download, the ``"config"`` of a saved model's
``fwsvd_compressed.json`` and what ``fwsvd compress --json`` writes; :func:`read_rank_document` reads it back,
and the older rank files too.

No torch here (only :mod:`fwsvd.view`): the dashboard builds and checks configurations before torch loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fwsvd.view import analysis
from fwsvd.view.allocation import DEFAULT_FLOOR, OBJECTIVES, allocate_ranks, floor_rank
from fwsvd.view.analysis import LayerAnalysis
from fwsvd.view.rank_config import Shapes, past_break_even, rule_ranks, unknown_names_error, validate_rank
from fwsvd.view.trained_length import recorded_max_length

#: The shorthand ``compress_`` also takes: an int (the same rank everywhere), a float in (0, 1] (a share of
#: each layer's full rank) or {qualified layer name: rank} (layers not named stay dense).
Ranks = Union[int, float, Mapping[str, int]]

FISHER_MODES: tuple[str, ...] = ("per_example", "batch")
#: The roles of a task's data (fwsvd.data.tasks.ROLES; restated here, which stays torch-free).
DATA_ROLES: tuple[str, ...] = ("train", "validation", "test")
#: How per-layer ranks may be solved for the rule's total parameters (:func:`fwsvd.view.allocation.allocate_ranks`).
ALLOCATIONS: tuple[str, ...] = OBJECTIVES
#: The paper's setting: every layer keeps a third of its rank.
DEFAULT_RANK_RATIO = 0.33
#: The Fisher settings a demo model (an alias of fwsvd.storage.locations.DEMO_BUILDS) is prebuilt with, where they
#: are not the defaults: ``fwsvd demo`` caches that Fisher, the rank explorer's snapshot and its headline under
#: them. Here, torch-free, so that the dashboard finds a demo's snapshot before torch is loaded. The LM demo keeps
#: its build, statistics and evaluation to a few minutes on 2 CPU cores: blocks of 256 tokens, the Fisher and
#: token statistics from 32 train blocks (8k tokens), 4 at a time, which bounds the logits (4 × 256 × 49,152
#: floats) to 200 MB.
DEMO_FISHER_SETTINGS: dict[str, dict[str, int]] = {"demo-lm": {"num_examples": 32, "max_length": 256, "batch_size": 4}}

CONFIG_FORMAT = "fwsvd-compression-config"
CONFIG_VERSION = 1
#: The ``format`` of a saved model's ``fwsvd_compressed.json`` (:mod:`fwsvd.io.persistence`).
COMPRESSED_FORMAT = "fwsvd-compressed"
#: The Export page's rank file before this document replaced it; still read.
LEGACY_RANK_FORMAT = "fwsvd-rank-config"

_ACCEPTED = (f"a rank document is a compression config (format {CONFIG_FORMAT!r}, as the Export page and "
             f"'fwsvd compress --json' write), a saved model's fwsvd_compressed.json, a rank configuration "
             f"(format {LEGACY_RANK_FORMAT!r}) or an object {{layer name: rank}}")


def _integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int if it is a whole number (3 or 3.0, not True or "3") >= ``minimum``; else ValueError."""
    whole = (isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()))
    if isinstance(value, bool) or not whole or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _share(name: str, value: Any) -> float:
    """``value`` as a float in (0, 1]; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")  # NaN fails the range too
    return float(value)


def _check_keys(what: str, data: Any, allowed: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class FisherConfig:
    """How the Fisher importances are estimated; everything that changes them besides the model and data."""

    mode: str = "per_example"  # "per_example": each example's own squared gradient (the paper); "batch": the
    #                            squared gradient of each mini-batch, the shortcut public code takes
    num_examples: int = 1024  # shuffled train examples (capped at the train split's size)
    seed: int = 0  # which examples are drawn
    max_length: int = 128  # tokens per example
    batch_size: int = 32  # examples per pass; changes the result in batch mode only

    def __post_init__(self) -> None:
        if self.mode not in FISHER_MODES:
            raise ValueError(f"FisherConfig.mode must be one of {', '.join(FISHER_MODES)}, got {self.mode!r}")
        for name, minimum in (("num_examples", 1), ("seed", 0), ("max_length", 1), ("batch_size", 1)):
            object.__setattr__(self, name, _integer(f"FisherConfig.{name}", getattr(self, name), minimum))

    @classmethod
    def for_model(cls, model_source: str | Path | None, **fields: Any) -> FisherConfig:
        """The configuration for ``model_source``: a demo model's prebuilt settings
        (:data:`DEMO_FISHER_SETTINGS`); for a model directory, ``max_length`` defaults to the length it was
        fine-tuned with where that is recorded (:func:`fwsvd.view.trained_length.recorded_max_length`).
        ``fields`` set any field."""
        settings = dict(DEMO_FISHER_SETTINGS.get(str(model_source), {}))
        recorded = recorded_max_length(model_source)
        if recorded is not None:
            settings["max_length"] = recorded
        settings.update((name, value) for name, value in fields.items() if value is not None)
        return cls(**settings)

    def key(self) -> dict[str, Any]:
        """The Fisher's part of every cache key (the library's Fisher files, the dashboard's session and its
        snapshots). ``batch_size`` only in batch mode: the exact per-example sum does not depend on how the
        examples are grouped, the batch shortcut squares each group's gradient."""
        key: dict[str, Any] = {"mode": self.mode, "num_examples": self.num_examples, "seed": self.seed,
                               "max_length": self.max_length}
        if self.mode == "batch":
            key["batch_size"] = self.batch_size
        return key

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FisherConfig:
        _check_keys("FisherConfig", data, [f.name for f in dataclasses.fields(cls)])
        return cls(**data)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class DataConfig:
    """The data a compression's Fisher is read from, so that the document rebuilds the model on its own: a
    registered ``task`` (fwsvd.data.tasks.TASK_NAMES, e.g. "sst2") or local ``data_files`` {role: path} with
    their ``text_column`` and ``label_column`` (and ``text_pair_column`` for sentence pairs); without a
    ``label_column``, the files' text is for language modelling (``.txt`` files: text column "text")."""

    task: str | None = None
    data_files: Mapping[str, str] | None = None
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None

    def __post_init__(self) -> None:
        if (self.task is None) == (self.data_files is None):
            raise ValueError("DataConfig names its data once: a task (e.g. 'sst2') or data_files "
                             f"{{role: path}}, not {'both' if self.task is not None else 'neither'}")
        columns = {"text_column": self.text_column, "label_column": self.label_column,
                   "text_pair_column": self.text_pair_column}
        if self.task is not None:
            object.__setattr__(self, "task", _text("DataConfig.task", self.task))
            given = [name for name, value in columns.items() if value is not None]
            if given:
                raise ValueError(f"DataConfig.{given[0]} goes with data_files; task {self.task!r} has its own columns")
            return
        files = self.data_files
        if not isinstance(files, Mapping) or "train" not in files or set(files) - set(DATA_ROLES):
            raise ValueError(f"DataConfig.data_files must be an object {{role: path}} with 'train' and roles among "
                             f"{', '.join(DATA_ROLES)}, got {files!r}")
        object.__setattr__(self, "data_files", {role: _text(f"DataConfig.data_files[{role!r}]", path)
                                                 for role, path in files.items()})
        object.__setattr__(self, "text_column", _text("DataConfig.text_column", self.text_column))
        if self.label_column is not None:
            object.__setattr__(self, "label_column", _text("DataConfig.label_column", self.label_column))
        elif self.text_pair_column is not None:
            raise ValueError("DataConfig.text_pair_column needs a label_column: text without labels is for language "
                             "modelling, which reads one text column")
        if self.text_pair_column is not None:
            object.__setattr__(self, "text_pair_column", _text("DataConfig.text_pair_column", self.text_pair_column))

    def to_dict(self) -> dict[str, Any]:
        if self.task is not None:
            return {"task": self.task}
        document: dict[str, Any] = {"data_files": dict(self.data_files or {}), "text_column": self.text_column}
        if self.label_column is not None:
            document["label_column"] = self.label_column
        if self.text_pair_column is not None:
            document["text_pair_column"] = self.text_pair_column
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataConfig:
        _check_keys("DataConfig", data, [f.name for f in dataclasses.fields(cls)])
        return cls(**data)

    @classmethod
    def of_files(cls, data_files: str | Path | Mapping[str, str | Path], text_column: str | None,
                 label_column: str | None, text_pair_column: str | None = None) -> DataConfig:
        """Local files as a document records them: absolute paths, one file as its train role."""
        files = data_files if isinstance(data_files, Mapping) else {"train": data_files}
        return cls(data_files={role: str(Path(path).expanduser().resolve()) for role, path in files.items()},
                   text_column=text_column, label_column=label_column, text_pair_column=text_pair_column)


def _label_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) and key for key in value):
        raise ValueError(f"CompressionConfig.label_map must be an object {{label in the data: the model's label "
                         f"name or id}}, got {value!r}")
    return {key: _text(f"CompressionConfig.label_map[{key!r}]", str(target) if isinstance(target, int)
                       and not isinstance(target, bool) else target) for key, target in value.items()}


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that determines a compression, except the Fisher importances themselves.

    Which layers: ``target_modules`` None is every Linear / Conv1D inside the transformer blocks; otherwise a
    layer is compressed when one pattern matches its qualified name (``bert.encoder.layer.0.attention.self.query``)
    exactly, as a dotted suffix (``"query"``, ``"attention.self.query"``) or as a regular expression over the
    whole name (``r".*\\.intermediate\\.dense"``).

    Which ranks: a layer named in ``rank_pattern`` gets that rank; every other selected layer follows the one
    global rule, ``rank_ratio`` (a share of its full rank; 0.33 when neither rule is given, the paper's) or
    ``param_budget`` (a share of its weight parameters). With ``allocation`` ("fisher", "plain" or "uniform")
    the rule's total parameters are instead spread over those layers by
    :func:`fwsvd.view.allocation.allocate_ranks`, which may leave some of them dense; every layer it
    factorizes keeps at least ``allocation_floor`` (default 0.5) of the rank the uniform rule would give it.
    A layer whose rank is at or past break-even (r·(m+n) ≥ m·n, :func:`fwsvd.view.rank_config.break_even_rank`)
    would hold at least as many weights factorized as dense, so it stays dense unless
    ``keep_dense_past_break_even`` is False (the document records only False).

    What it was made from, so that ``fwsvd compress --config FILE`` rebuilds it: ``model`` (a model directory,
    a hub id or "demo"), ``data`` (:class:`DataConfig`) and ``label_map`` ({label in the data: the model's label
    name or id}, for labels the model names otherwise; see :mod:`fwsvd.data.labels`). None / empty when not
    recorded; the document then leaves them out.
    """

    method: str = "fwsvd"
    rank_ratio: float | None = None
    param_budget: float | None = None
    allocation: str | None = None
    allocation_floor: float = DEFAULT_FLOOR
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    target_modules: tuple[str, ...] | None = None
    fisher: FisherConfig = field(default_factory=FisherConfig)
    model: str | None = None
    data: DataConfig | None = None
    label_map: Mapping[str, str] = field(default_factory=dict)
    keep_dense_past_break_even: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        if self.method not in analysis.METHODS:
            raise ValueError(f"CompressionConfig.method must be one of {', '.join(analysis.METHODS)}, "
                             f"got {self.method!r}")
        if self.rank_ratio is not None and self.param_budget is not None:
            raise ValueError(f"CompressionConfig takes one global rank rule, rank_ratio or param_budget, not both "
                             f"(got rank_ratio={self.rank_ratio!r}, param_budget={self.param_budget!r}); to switch "
                             "rules, set the other to None: dataclasses.replace(config, rank_ratio=None, "
                             "param_budget=...)")
        if self.param_budget is not None:
            set_(self, "param_budget", _share("CompressionConfig.param_budget", self.param_budget))
        else:
            ratio = DEFAULT_RANK_RATIO if self.rank_ratio is None else self.rank_ratio
            set_(self, "rank_ratio", _share("CompressionConfig.rank_ratio", ratio))
        if self.allocation is not None and self.allocation not in ALLOCATIONS:
            raise ValueError(f"CompressionConfig.allocation must be None or one of {', '.join(ALLOCATIONS)}, "
                             f"got {self.allocation!r}")
        floor = self.allocation_floor
        if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0.0 <= float(floor) <= 1.0:
            raise ValueError(f"CompressionConfig.allocation_floor must be a number in [0, 1] (a share of the "
                             f"uniform rank every allocated layer keeps), got {floor!r}")
        set_(self, "allocation_floor", float(floor))
        if not isinstance(self.rank_pattern, Mapping):
            raise ValueError(f"CompressionConfig.rank_pattern must be a mapping {{layer name: rank}}, "
                             f"got {type(self.rank_pattern).__name__}")
        set_(self, "rank_pattern", {str(name): _integer(f"CompressionConfig.rank_pattern[{name!r}]", rank, 1)
                                    for name, rank in self.rank_pattern.items()})
        if self.target_modules is not None:
            set_(self, "target_modules", _patterns(self.target_modules))
            unselected = [name for name in self.rank_pattern if not self.selects(name)]
            if unselected:
                raise ValueError(f"CompressionConfig.rank_pattern names layer(s) that target_modules leaves out: "
                                 f"{', '.join(map(repr, unselected[:5]))}")
        if not isinstance(self.fisher, FisherConfig):
            raise ValueError(f"CompressionConfig.fisher must be a FisherConfig, got {type(self.fisher).__name__}")
        if self.model is not None:
            set_(self, "model", _text("CompressionConfig.model", self.model))
        if self.data is not None and not isinstance(self.data, DataConfig):
            raise ValueError(f"CompressionConfig.data must be a DataConfig, got {type(self.data).__name__}")
        set_(self, "label_map", _label_map(self.label_map))
        if not isinstance(self.keep_dense_past_break_even, bool):
            raise ValueError(f"CompressionConfig.keep_dense_past_break_even must be true or false, got "
                             f"{self.keep_dense_past_break_even!r}")

    # ---------------------------------------------------------------------------------------------
    # Layers and ranks

    def selects(self, name: str) -> bool:
        """Whether ``target_modules`` selects the layer ``name`` (every layer when it is None)."""
        if self.target_modules is None:
            return True
        return any(name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name)
                   for pattern in self.target_modules)

    def check(self, shapes: Shapes) -> None:
        """Check the configuration against a model's target layers ``{name: (out_features, in_features)}``:
        ``rank_pattern`` names only those layers (close names are suggested) with ranks in 1..min(out, in),
        and ``target_modules`` selects at least one of them. Raises ValueError."""
        if not shapes:
            raise ValueError("the model has no target layers to compress")
        unknown = [name for name in self.rank_pattern if name not in shapes]
        if unknown:
            raise unknown_names_error(unknown, list(shapes), "the ranks (rank_pattern)")
        for name, rank in self.rank_pattern.items():
            validate_rank(rank, shapes[name], name)
        if not any(self.selects(name) for name in shapes):
            raise ValueError(f"target_modules {list(self.target_modules or ())} select none of the {len(shapes)} "
                             f"target layers, such as {next(iter(shapes))!r}")

    def resolve_ranks(self, shapes: Shapes,
                      analyses: Mapping[str, LayerAnalysis] | None = None) -> dict[str, int]:
        """{layer name: rank} of the layers to compress among ``shapes`` (a model's target layers,
        ``{name: (out_features, in_features)}``), in their order; layers left out stay dense, those at or past
        break-even among them unless ``keep_dense_past_break_even`` is False (:meth:`plan_ranks` names them).

        The one place rank rules are applied. An ``allocation`` needs every selected layer's error curves
        (``analyses``, :func:`fwsvd.analyze_layers`) unless ``rank_pattern`` pins them all.
        """
        return self.plan_ranks(shapes, analyses)[0]

    def plan_ranks(self, shapes: Shapes, analyses: Mapping[str, LayerAnalysis] | None = None
                   ) -> tuple[dict[str, int], dict[str, int]]:
        """(the ranks to factorize, as :meth:`resolve_ranks`; {layer: rank} of the selected layers kept dense
        because their rank is at or past break-even, empty when ``keep_dense_past_break_even`` is False)."""
        ranks = self._rule_ranks(shapes, analyses)
        dense = past_break_even(ranks, shapes) if self.keep_dense_past_break_even else []
        return ({name: rank for name, rank in ranks.items() if name not in dense},
                {name: ranks[name] for name in dense})

    def _rule_ranks(self, shapes: Shapes, analyses: Mapping[str, LayerAnalysis] | None) -> dict[str, int]:
        """Every selected layer's rank by the rules, break-even aside."""
        self.check(shapes)
        selected = [name for name in shapes if self.selects(name)]
        free = {name: shapes[name] for name in selected if name not in self.rank_pattern}
        if not free:
            ruled: dict[str, int] = {}
        elif self.allocation is not None:
            ruled = self._allocate(free, analyses)
        else:
            ruled = self._uniform(free)
        return {name: self.rank_pattern.get(name, ruled.get(name)) for name in selected
                if name in self.rank_pattern or name in ruled}

    def _allocate(self, shapes: Shapes, analyses: Mapping[str, LayerAnalysis] | None) -> dict[str, int]:
        missing = [name for name in shapes if analyses is None or name not in analyses]
        if missing:
            raise ValueError(f"allocation={self.allocation!r} solves ranks from each layer's error curves, and "
                             f"{len(missing)} layer(s) have none, e.g. {missing[0]!r}: pass analyses "
                             "(fwsvd.analyze_layers) for every layer it sets")
        layers = {name: analyses[name] for name in shapes}
        # The parameters the uniform rule keeps, spread where they lose least: the same count as the rule, so
        # allocated and uniform ranks are compared at equal size.
        uniform = self._uniform(shapes)
        budget = sum(rank * sum(shapes[name]) for name, rank in uniform.items())
        return allocate_ranks(layers, budget, method=self.method, objective=self.allocation,
                              min_rank=floor_rank(uniform, self.allocation_floor)).ranks

    def _uniform(self, shapes: Shapes) -> dict[str, int]:
        """The global rule's ranks for ``shapes``."""
        if self.param_budget is not None:
            return rule_ranks(shapes, "param_budget", self.param_budget)
        return rule_ranks(shapes, "rank_ratio", self.rank_ratio)

    def with_ranks(self, ranks: Mapping[str, int]) -> CompressionConfig:
        """A copy that pins ``ranks``: exactly the layers named are compressed, each at its rank. What a saved
        model and the Export page record, so the document reproduces the compression on its own."""
        return dataclasses.replace(self, rank_pattern=dict(ranks), target_modules=tuple(ranks))

    # ---------------------------------------------------------------------------------------------
    # Documents

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: a format header, then every field (model, data and label_map when recorded)."""
        document = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "method": self.method,
                    "rank_ratio": self.rank_ratio, "param_budget": self.param_budget, "allocation": self.allocation,
                    "allocation_floor": self.allocation_floor,
                    "target_modules": None if self.target_modules is None else list(self.target_modules),
                    "rank_pattern": dict(self.rank_pattern), "fisher": self.fisher.to_dict()}
        if self.model is not None:
            document["model"] = self.model
        if self.data is not None:
            document["data"] = self.data.to_dict()
        if self.label_map:
            document["label_map"] = dict(self.label_map)
        if not self.keep_dense_past_break_even:  # the default is left out: older documents read the same
            document["keep_dense_past_break_even"] = False
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionConfig:
        """The configuration of a :meth:`to_dict` document (the header may be left out). Unknown keys are
        refused, naming the allowed ones; ranks and counts may be written 3.0."""
        _check_keys("CompressionConfig", data, ["format", "version", *(f.name for f in dataclasses.fields(cls))])
        values = dict(data)
        document_format = values.pop("format", CONFIG_FORMAT)
        if document_format != CONFIG_FORMAT:
            raise ValueError(f"not a compression config: format is {document_format!r}, expected {CONFIG_FORMAT!r}")
        version = values.pop("version", CONFIG_VERSION)
        if _integer("CompressionConfig version", version, 1) > CONFIG_VERSION:
            raise ValueError(f"the compression config has version {version}, newer than this fwsvd reads "
                             f"({CONFIG_VERSION}); upgrade fwsvd")
        if "fisher" in values:
            values["fisher"] = FisherConfig.from_dict(values["fisher"])
        if values.get("data") is not None:
            values["data"] = DataConfig.from_dict(values["data"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> CompressionConfig:
        return cls.from_dict(_parse(text, "the compression config"))


def _patterns(patterns: Any) -> tuple[str, ...]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"CompressionConfig.target_modules must be None or a list of name patterns, got "
                         f"{patterns!r}" + (f" (write [{patterns!r}])" if isinstance(patterns, str) else ""))
    if not patterns:
        raise ValueError("CompressionConfig.target_modules is empty, which selects no layer; None selects every "
                         "Linear in the transformer blocks")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"CompressionConfig.target_modules holds {pattern!r}; each pattern is a non-empty "
                             "string (a layer name, a dotted suffix or a regular expression)")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"CompressionConfig.target_modules pattern {pattern!r} is not a valid regular "
                             f"expression ({error})") from error
    return tuple(patterns)


def as_config(config_or_ranks: CompressionConfig | Ranks, shapes: Shapes, *,
              method: str | None = None) -> CompressionConfig:
    """A CompressionConfig from ``compress_``'s argument: the config itself, or the shorthand ``ranks`` with
    ``method`` (default "fwsvd"): an int is that rank for every layer of ``shapes``, a float in (0, 1] is
    ``rank_ratio``, a dict ``{layer: rank}`` pins those layers and leaves the others dense."""
    if isinstance(config_or_ranks, CompressionConfig):
        if method is not None:
            raise ValueError("method= goes with shorthand ranks (an int, a float or a dict); a CompressionConfig "
                             "carries its own: dataclasses.replace(config, method=...)")
        return config_or_ranks
    method = "fwsvd" if method is None else method
    ranks = config_or_ranks
    if isinstance(ranks, Mapping):
        return CompressionConfig(method=method).with_ranks(ranks)
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        pattern = {name: validate_rank(int(ranks), shape, name) for name, shape in shapes.items()}
        return CompressionConfig(method=method, rank_pattern=pattern)
    if isinstance(ranks, float):
        return CompressionConfig(method=method, rank_ratio=ranks)
    raise ValueError(f"ranks must be a CompressionConfig, an int, a float in (0, 1] or a dict {{layer name: rank}}, "
                     f"got {type(ranks).__name__} {ranks!r}")


# --------------------------------------------------------------------------------------------------
# Rank documents


def _parse(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} is not valid JSON: {error}") from error


def _rank(name: str, value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"rank {value!r} for layer {name!r} is not a whole number: write ranks as 3 (or 3.0)")
    return int(value)


def _pinned(ranks: Any, method: Any, where: str) -> CompressionConfig:
    """The configuration that compresses exactly the layers of ``ranks`` {layer: rank} with ``method``."""
    if not isinstance(ranks, Mapping) or not ranks:
        raise ValueError(f"{where} must hold a non-empty object {{layer name: rank}}")
    checked = {str(name): _rank(name, rank) for name, rank in ranks.items()}
    return CompressionConfig(method=method or "fwsvd").with_ranks(checked)


def read_rank_document(text: str | bytes, shapes: Shapes | None = None) -> CompressionConfig:
    """The configuration in a rank document, checked against the model's target layers ``shapes``
    (``{name: (out_features, in_features)}``; None skips that check, e.g. before the model is loaded).

    Accepted: a compression config (:meth:`CompressionConfig.to_json`, with or without its header); a saved
    model's ``fwsvd_compressed.json`` (its ``"config"``, or the method and ranks of format version 1); the
    output of ``fwsvd compress --json``; the older rank configuration ``{"format": "fwsvd-rank-config", "ranks":
    {...}}``; and a bare ``{layer name: rank}``. Ranks are whole numbers, 3 or 3.0. Raises ValueError naming
    what is wrong: not JSON, not an object, an unknown format or key, unknown layers (with close names),
    ranks that are not whole numbers or out of range.
    """
    config = config_from_document(_parse(text, "the rank document"), None if shapes is None else list(shapes))
    if shapes is not None:
        config.check(shapes)
    return config


def config_from_document(document: Any, targets: Sequence[str] | None = None) -> CompressionConfig:
    """:func:`read_rank_document` on a parsed JSON value, without the check against a model's layers.

    With the model's target layer names ``targets``, an object of none of the known kinds whose keys neither
    name a target nor come close to one is said not to be a rank document (an unrelated JSON file), rather
    than judged as ranks."""
    if not isinstance(document, Mapping):
        raise ValueError(f"the rank document is a JSON {type(document).__name__}, not an object: {_ACCEPTED}")
    document_format = document.get("format")
    if document_format == CONFIG_FORMAT:
        return CompressionConfig.from_dict(document)
    if isinstance(document.get("config"), Mapping) and document_format in (None, COMPRESSED_FORMAT):
        return CompressionConfig.from_dict(document["config"])  # compress --json output, a saved model
    if document_format == COMPRESSED_FORMAT:  # a saved model of format version 1: method and ranks on top
        return _pinned(document.get("ranks"), document.get("method"), "fwsvd_compressed.json's 'ranks'")
    if document_format == LEGACY_RANK_FORMAT or (document_format is None and "ranks" in document):
        return _pinned(document.get("ranks"), document.get("method"), "the document's 'ranks'")
    if document_format is not None:
        raise ValueError(f"unknown rank document format {document_format!r}: {_ACCEPTED}")
    if {f.name for f in dataclasses.fields(CompressionConfig)} & set(document):
        return CompressionConfig.from_dict(document)  # a config written by hand, without the header
    if targets is not None and not _names_layers(document, targets):
        keys = ", ".join(repr(str(key)) for key in list(document)[:4]) + (", …" if len(document) > 4 else "")
        raise ValueError(f"this JSON is not a rank document: none of its keys ({keys}) is a target layer of the "
                         f"model, such as {targets[0]!r}; {_ACCEPTED}")
    return _pinned(document, None, "the rank document")


def _names_layers(document: Mapping, targets: Sequence[str]) -> bool:
    """Whether a key of ``document`` is one of ``targets`` or close to one (a misspelt layer is still a rank
    document, answered with the names it may mean)."""
    return not document or any(str(key) in targets or difflib.get_close_matches(str(key), targets, n=1)
                               for key in document)
