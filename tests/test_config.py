"""The compression recipe (fwsvd.config): CompressionConfig and FisherConfig checked field by field, the ranks
they resolve on layer shapes (rules, pins, target_modules, allocation and its floor), their JSON documents and
every rank document read_rank_document accepts or refuses. Torch-free: shapes dicts and numpy error curves."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from fwsvd.config import (
    CONFIG_FORMAT,
    CONFIG_VERSION,
    CompressionConfig,
    DataConfig,
    FisherConfig,
    as_config,
    config_from_document,
    read_rank_document,
)
from fwsvd.view.allocation import DEFAULT_FLOOR, floor_rank
from fwsvd.view.analysis import METHODS, ErrorCurves, LayerAnalysis
from fwsvd.view.rank_config import rank_for_ratio

Q0 = "bert.encoder.layer.0.attention.self.query"
K0 = "bert.encoder.layer.0.attention.self.key"
I0 = "bert.encoder.layer.0.intermediate.dense"
O0 = "bert.encoder.layer.0.output.dense"
Q1 = "bert.encoder.layer.1.attention.self.query"
#: Full ranks 12, 12, 10, 10, 12; break-even ranks 6, 6, 8, 8, 6.
SHAPES = {Q0: (12, 12), K0: (12, 12), I0: (40, 10), O0: (10, 40), Q1: (12, 12)}


def message(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


def refused(factory, *fragments: str) -> None:
    """``factory()`` raises ValueError whose message holds every fragment."""
    with pytest.raises(ValueError) as error:
        factory()
    for fragment in fragments:
        assert fragment in message(error), (fragment, message(error))


# -------------------------------------------------------------------------------------------------
# FisherConfig


def test_fisher_defaults_and_key():
    fisher = FisherConfig()
    assert fisher.to_dict() == {"mode": "per_example", "num_examples": 1024, "seed": 0, "max_length": 128,
                                "batch_size": 32}
    assert fisher.key() == {"mode": "per_example", "num_examples": 1024, "seed": 0, "max_length": 128}
    assert FisherConfig(batch_size=8).key() == fisher.key()  # grouping does not change the exact sum
    assert FisherConfig(mode="batch", batch_size=8).key() == {"mode": "batch", "num_examples": 1024, "seed": 0,
                                                              "max_length": 128, "batch_size": 8}


@pytest.mark.parametrize("field_name, value, allowed", [
    ("mode", "sum", "one of per_example, batch"),
    ("num_examples", 0, "an integer >= 1"),
    ("seed", -1, "an integer >= 0"),
    ("max_length", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("num_examples", True, "an integer >= 1"),
    ("seed", False, "an integer >= 0"),
    ("max_length", "3", "an integer >= 1"),
    ("batch_size", "3", "an integer >= 1"),
    ("num_examples", 2.5, "an integer >= 1"),
    ("seed", math.nan, "an integer >= 0"),
])
def test_fisher_refuses_each_bad_field(field_name, value, allowed):
    refused(lambda: FisherConfig(**{field_name: value}), f"FisherConfig.{field_name}", allowed, repr(value))


def test_fisher_takes_whole_floats_as_ints_and_round_trips():
    fisher = FisherConfig(mode="batch", num_examples=3.0, seed=7.0, max_length=64, batch_size=4.0)
    assert (fisher.num_examples, fisher.seed, fisher.batch_size) == (3, 7, 4)
    assert all(type(value) is int for value in (fisher.num_examples, fisher.seed, fisher.batch_size))
    assert FisherConfig.from_dict(fisher.to_dict()) == fisher
    assert FisherConfig.from_dict({"seed": 5}) == FisherConfig(seed=5)


def test_fisher_from_dict_refuses_unknown_keys_and_non_objects():
    refused(lambda: FisherConfig.from_dict({"seed": 1, "examples": 10}), "unknown key(s) 'examples'",
            "allowed: mode, num_examples, seed, max_length, batch_size")
    refused(lambda: FisherConfig.from_dict([1, 2]), "FisherConfig must be a JSON object, got list")


# -------------------------------------------------------------------------------------------------
# CompressionConfig: fields


def test_compression_defaults():
    config = CompressionConfig()
    assert (config.method, config.rank_ratio, config.param_budget, config.allocation) == ("fwsvd", 0.33, None, None)
    assert config.allocation_floor == DEFAULT_FLOOR == 0.5
    assert (config.rank_pattern, config.target_modules, config.fisher) == ({}, None, FisherConfig())
    budget = CompressionConfig(param_budget=0.4)
    assert (budget.rank_ratio, budget.param_budget) == (None, 0.4)


@pytest.mark.parametrize("kwargs, fragments", [
    ({"rank_ratio": 0.5, "param_budget": 0.5}, ["one global rank rule", "not both"]),
    ({"rank_ratio": 0.0}, ["CompressionConfig.rank_ratio must be a number in (0, 1]", "0.0"]),
    ({"rank_ratio": 1.5}, ["CompressionConfig.rank_ratio must be a number in (0, 1]", "1.5"]),
    ({"rank_ratio": math.nan}, ["CompressionConfig.rank_ratio must be a number in (0, 1]", "nan"]),
    ({"rank_ratio": True}, ["CompressionConfig.rank_ratio must be a number in (0, 1]", "True"]),
    ({"rank_ratio": "0.5"}, ["CompressionConfig.rank_ratio must be a number in (0, 1]", "'0.5'"]),
    ({"param_budget": -0.1}, ["CompressionConfig.param_budget must be a number in (0, 1]", "-0.1"]),
    ({"param_budget": math.nan}, ["CompressionConfig.param_budget must be a number in (0, 1]", "nan"]),
    ({"param_budget": False}, ["CompressionConfig.param_budget must be a number in (0, 1]", "False"]),
    ({"method": "pca"}, ["CompressionConfig.method must be one of " + ", ".join(METHODS), "'pca'"]),
    ({"allocation": "greedy"}, ["CompressionConfig.allocation must be None or one of fisher, plain, uniform",
                                "'greedy'"]),
    ({"allocation_floor": -0.1}, ["CompressionConfig.allocation_floor must be a number in [0, 1]", "-0.1"]),
    ({"allocation_floor": 1.01}, ["CompressionConfig.allocation_floor must be a number in [0, 1]", "1.01"]),
    ({"allocation_floor": math.nan}, ["CompressionConfig.allocation_floor must be a number in [0, 1]", "nan"]),
    ({"allocation_floor": True}, ["CompressionConfig.allocation_floor must be a number in [0, 1]", "True"]),
    ({"rank_pattern": {Q0: 2.5}}, [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1", "2.5"]),
    ({"rank_pattern": {Q0: "3"}}, [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1", "'3'"]),
    ({"rank_pattern": {Q0: True}}, [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1"]),
    ({"rank_pattern": {Q0: 0}}, [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1", "got 0"]),
    ({"rank_pattern": [(Q0, 3)]}, ["CompressionConfig.rank_pattern must be a mapping", "got list"]),
    ({"target_modules": "query"}, ["target_modules must be None or a list of name patterns", "(write ['query'])"]),
    ({"target_modules": []}, ["CompressionConfig.target_modules is empty, which selects no layer"]),
    ({"target_modules": ["query", ""]}, ["CompressionConfig.target_modules holds ''", "non-empty string"]),
    ({"target_modules": ["query", 3]}, ["CompressionConfig.target_modules holds 3"]),
    ({"target_modules": ["(query"]}, ["pattern '(query' is not a valid regular expression"]),
    ({"target_modules": ["query"], "rank_pattern": {Q0: 2, I0: 3}},
     ["rank_pattern names layer(s) that target_modules leaves out", repr(I0)]),
    ({"fisher": {"seed": 1}}, ["CompressionConfig.fisher must be a FisherConfig, got dict"]),
])
def test_compression_refuses_each_bad_field(kwargs, fragments):
    refused(lambda: CompressionConfig(**kwargs), *fragments)


def test_compression_normalises_values():
    config = CompressionConfig(rank_ratio=1, allocation="plain", allocation_floor=1, rank_pattern={Q0: 3.0},
                               target_modules=["query", r".*\.intermediate\.dense"])
    assert type(config.rank_ratio) is float and config.rank_ratio == 1.0
    assert type(config.allocation_floor) is float and config.allocation_floor == 1.0
    assert config.rank_pattern == {Q0: 3} and type(config.rank_pattern[Q0]) is int
    assert config.target_modules == ("query", r".*\.intermediate\.dense")
    assert CompressionConfig(allocation_floor=0).allocation_floor == 0.0


@pytest.mark.parametrize("allocation", [None, "fisher", "plain", "uniform"])
def test_compression_takes_each_allocation(allocation):
    assert CompressionConfig(allocation=allocation).allocation == allocation


@pytest.mark.parametrize("method", METHODS)
def test_compression_takes_each_method(method):
    assert CompressionConfig(method=method).method == method


# -------------------------------------------------------------------------------------------------
# Which layers


@pytest.mark.parametrize("pattern, selected", [
    (Q0, [Q0]),  # the exact name
    ("query", [Q0, Q1]),  # a dotted suffix
    ("attention.self.query", [Q0, Q1]),
    ("0.attention.self.query", [Q0]),
    (r".*\.layer\.1\..*", [Q1]),  # a regular expression over the whole name
    (r".*\.(intermediate|output)\.dense", [I0, O0]),
    ("dense", [I0, O0]),
    ("uery", []),  # not a part of the last name ...
    ("attention.self", []),  # ... nor a dotted prefix ...
    (r"layer\.0", []),  # ... nor a regular expression matching inside the name
])
def test_selects(pattern, selected):
    config = CompressionConfig(target_modules=[pattern])
    assert [name for name in SHAPES if config.selects(name)] == selected


def test_selects_every_layer_without_target_modules_and_any_of_several_patterns():
    assert all(CompressionConfig().selects(name) for name in [*SHAPES, "anything"])
    config = CompressionConfig(target_modules=["key", r".*\.output\.dense"])
    assert [name for name in SHAPES if config.selects(name)] == [K0, O0]


# -------------------------------------------------------------------------------------------------
# check


@pytest.mark.parametrize("config, fragments", [
    (CompressionConfig(rank_pattern={"bert.encoder.layer.0.attention.self.qeury": 2}),
     ["the ranks (rank_pattern) names layers that are not compression targets",
      "'bert.encoder.layer.0.attention.self.qeury' (did you mean", repr(Q0)]),
    (CompressionConfig(rank_pattern={I0: 11}), ["rank 11 for", I0, "(40, 10)", "choose an integer from 1 to 10"]),
    (CompressionConfig(target_modules=["value"]), ["target_modules ['value'] select none of the 5 target layers",
                                                   repr(Q0)]),
])
def test_check_refuses(config, fragments):
    refused(lambda: config.check(SHAPES), *fragments)
    refused(lambda: config.resolve_ranks(SHAPES), *fragments)


def test_check_accepts_ranks_up_to_the_full_rank_and_refuses_no_layers():
    CompressionConfig(rank_pattern={I0: 10, Q0: 1}).check(SHAPES)
    refused(lambda: CompressionConfig().check({}), "the model has no target layers to compress")


# -------------------------------------------------------------------------------------------------
# resolve_ranks without allocation


@pytest.mark.parametrize("kwargs, expected", [
    ({}, {Q0: 4, K0: 4, I0: 3, O0: 3, Q1: 4}),  # 0.33 of 12 is 3.96, of 10 is 3.3
    ({"rank_ratio": 0.5}, {Q0: 6, K0: 6, I0: 5, O0: 5, Q1: 6}),
    ({"rank_ratio": 0.01}, {Q0: 1, K0: 1, I0: 1, O0: 1, Q1: 1}),  # at least 1
    ({"rank_ratio": 1.0}, {Q0: 12, K0: 12, I0: 10, O0: 10, Q1: 12}),
    ({"param_budget": 0.5}, {Q0: 3, K0: 3, I0: 4, O0: 4, Q1: 3}),  # half the break-even rank, rounded down
    ({"param_budget": 1.0}, {Q0: 6, K0: 6, I0: 8, O0: 8, Q1: 6}),
    ({"rank_ratio": 0.5, "rank_pattern": {Q1: 2, I0: 9}}, {Q0: 6, K0: 6, I0: 9, O0: 5, Q1: 2}),
    ({"param_budget": 0.5, "rank_pattern": {K0: 12}}, {Q0: 3, K0: 12, I0: 4, O0: 4, Q1: 3}),
    ({"rank_ratio": 0.5, "target_modules": ["query"]}, {Q0: 6, Q1: 6}),
    ({"target_modules": ["query", "dense"], "rank_pattern": {I0: 7}}, {Q0: 4, I0: 7, O0: 3, Q1: 4}),
    ({"target_modules": [Q1, K0], "rank_pattern": {Q1: 5, K0: 2}}, {K0: 2, Q1: 5}),
])
def test_resolve_ranks_rules(kwargs, expected):
    ranks = CompressionConfig(**kwargs, keep_dense_past_break_even=False).resolve_ranks(SHAPES)
    assert ranks == expected
    assert list(ranks) == [name for name in SHAPES if name in expected]  # the model's order, not the pattern's


def test_ratio_rule_is_rank_for_ratio():
    ranks = CompressionConfig(rank_ratio=0.42).resolve_ranks(SHAPES)
    assert ranks == {name: rank_for_ratio(0.42, min(shape)) for name, shape in SHAPES.items()}


# -------------------------------------------------------------------------------------------------
# resolve_ranks with allocation: a linear squared-error curve per layer, e(r)² = scale² (1 − r/k)

ALLOCATED = {"block.0.a": (16, 16), "block.0.b": (24, 24), "block.1.c": (32, 32), "block.1.tiny": (16, 16)}
#: At rank_ratio 0.25 the uniform ranks are 4, 6, 8, 4: 1056 weight parameters.
UNIFORM = {"block.0.a": 4, "block.0.b": 6, "block.1.c": 8, "block.1.tiny": 4}
UNIFORM_PARAMS = 1056
#: (Fisher-weighted scale, plain scale): "tiny" loses almost nothing Fisher-weighted, and the most in plain terms.
SCALES = {"block.0.a": (1.0, 1.0), "block.0.b": (1.0, 1.0), "block.1.c": (1.0, 1.0), "block.1.tiny": (1e-3, 10.0)}


def linear_curve(full_rank: int, scale: float) -> np.ndarray:
    return scale * np.sqrt(np.linspace(1.0, 0.0, full_rank + 1))


def curves_analysis(name: str, method: str = "fwsvd") -> LayerAnalysis:
    out_features, in_features = ALLOCATED[name]
    full_rank = min(out_features, in_features)
    weighted, plain = SCALES[name]
    curves = ErrorCurves(plain=linear_curve(full_rank, plain), weighted=linear_curve(full_rank, weighted),
                         weight_norm=plain, weighted_norm=weighted)
    return LayerAnalysis(name, out_features, in_features, {method: np.ones(full_rank)}, {method: curves})


ANALYSES = {name: curves_analysis(name) for name in ALLOCATED}


def kept_params(ranks: dict[str, int], shapes: dict[str, tuple[int, int]]) -> int:
    """Weight parameters kept: factors for the ranked layers, m·n for the ones left dense."""
    return sum(ranks[name] * (m + n) if name in ranks else m * n for name, (m, n) in shapes.items())


def test_uniform_rule_of_the_allocation_fixture():
    assert CompressionConfig(rank_ratio=0.25).resolve_ranks(ALLOCATED) == UNIFORM
    assert kept_params(UNIFORM, ALLOCATED) == UNIFORM_PARAMS


@pytest.mark.parametrize("allocation, floor, expected", [
    # Fisher: "a" and "b" are worth keeping dense, "tiny" gets what is left over
    ("fisher", 0.0, {"block.1.c": 3, "block.1.tiny": 1}),
    ("fisher", 0.5, {"block.1.c": 2, "block.1.tiny": 3}),
    ("fisher", 1.0, {"block.0.b": 8, "block.1.c": 4, "block.1.tiny": 5}),
    # plain: "tiny" has the largest plain error and stays dense
    ("plain", 0.0, {"block.0.b": 10, "block.1.c": 1}),
    ("plain", 0.5, {"block.0.b": 8, "block.1.c": 2}),
    ("plain", 1.0, {"block.0.b": 6, "block.1.c": 4}),
    ("uniform", 0.0, UNIFORM),
    ("uniform", 0.5, UNIFORM),
])
def test_allocation(allocation, floor, expected):
    config = CompressionConfig(rank_ratio=0.25, allocation=allocation, allocation_floor=floor)
    ranks = config.resolve_ranks(ALLOCATED, ANALYSES)
    assert ranks == expected
    assert kept_params(ranks, ALLOCATED) <= UNIFORM_PARAMS  # the uniform rule's parameters, spread differently
    assert all(rank >= floor_rank(UNIFORM, floor) for rank in ranks.values())


def test_allocation_floor_keeps_half_the_smallest_uniform_rank():
    assert floor_rank(UNIFORM, 0.5) == 2  # half of 4
    unfloored = CompressionConfig(rank_ratio=0.25, allocation="fisher", allocation_floor=0.0)
    assert unfloored.resolve_ranks(ALLOCATED, ANALYSES)["block.1.tiny"] == 1
    floored = CompressionConfig(rank_ratio=0.25, allocation="fisher").resolve_ranks(ALLOCATED, ANALYSES)
    assert min(floored.values()) == 2 and floored["block.1.tiny"] >= 2


def test_allocation_with_param_budget_keeps_what_the_uniform_rule_keeps():
    config = CompressionConfig(param_budget=0.5, allocation="fisher", allocation_floor=0.0)
    assert CompressionConfig(param_budget=0.5).resolve_ranks(ALLOCATED) == UNIFORM  # half of 8, 12, 16, 8
    ranks = config.resolve_ranks(ALLOCATED, ANALYSES)
    assert ranks == {"block.1.c": 3, "block.1.tiny": 1}
    assert kept_params(ranks, ALLOCATED) <= kept_params(UNIFORM, ALLOCATED)  # equal size, not the rounded share


def test_allocation_leaves_pinned_layers_and_unselected_layers_alone():
    config = CompressionConfig(rank_ratio=0.25, allocation="fisher", allocation_floor=0.0,
                               target_modules=[r"block\.1\..*"], rank_pattern={"block.1.c": 5})
    only_tiny = {"block.1.tiny": ANALYSES["block.1.tiny"]}  # pinned and unselected layers need no curves
    # "tiny" alone gets the 4·32 parameters its uniform rank 4 keeps, and nothing gains from them but itself
    assert config.resolve_ranks(ALLOCATED, only_tiny) == {"block.1.c": 5, "block.1.tiny": 4}
    every = CompressionConfig(allocation="plain", rank_pattern={name: 1 for name in ALLOCATED})
    assert every.resolve_ranks(ALLOCATED) == {name: 1 for name in ALLOCATED}  # nothing to allocate: no curves


@pytest.mark.parametrize("analyses, missing", [
    (None, "block.0.a"),
    ({name: ANALYSES[name] for name in ("block.0.a", "block.0.b", "block.1.tiny")}, "block.1.c"),
])
def test_allocation_needs_every_free_layers_curves(analyses, missing):
    config = CompressionConfig(allocation="fisher")
    refused(lambda: config.resolve_ranks(ALLOCATED, analyses), "allocation='fisher'", f"e.g. {missing!r}",
            "pass analyses")


# -------------------------------------------------------------------------------------------------
# with_ranks and documents


def test_with_ranks_pins_exactly_those_layers():
    base = CompressionConfig(method="svd", param_budget=0.3, allocation="fisher", fisher=FisherConfig(seed=3))
    pinned = base.with_ranks({O0: 2, Q0: 5})
    assert pinned.rank_pattern == {O0: 2, Q0: 5} and pinned.target_modules == (O0, Q0)
    assert (pinned.method, pinned.param_budget, pinned.fisher) == ("svd", 0.3, FisherConfig(seed=3))
    assert pinned.resolve_ranks(SHAPES, analyses={}) == {Q0: 5, O0: 2}


FULL = CompressionConfig(method="kfac", param_budget=0.4, allocation="plain", allocation_floor=0.25,
                         rank_pattern={Q0: 3, I0: 7}, target_modules=["query", r".*\.intermediate\.dense"],
                         fisher=FisherConfig(mode="batch", num_examples=64, seed=2, max_length=32, batch_size=8))


def test_to_dict_writes_every_field():
    assert FULL.to_dict() == {
        "format": CONFIG_FORMAT, "version": CONFIG_VERSION, "method": "kfac", "rank_ratio": None,
        "param_budget": 0.4, "allocation": "plain", "allocation_floor": 0.25,
        "target_modules": ["query", r".*\.intermediate\.dense"], "rank_pattern": {Q0: 3, I0: 7},
        "fisher": {"mode": "batch", "num_examples": 64, "seed": 2, "max_length": 32, "batch_size": 8}}
    assert CompressionConfig().to_dict()["target_modules"] is None


@pytest.mark.parametrize("config", [FULL, CompressionConfig(), CompressionConfig(rank_ratio=0.5, allocation_floor=0.0)])
def test_documents_round_trip(config):
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert CompressionConfig.from_json(config.to_json()) == config
    assert CompressionConfig.from_json(config.to_json().encode()) == config
    assert json.loads(config.to_json()) == config.to_dict()
    for field in dataclasses.fields(CompressionConfig):
        assert getattr(CompressionConfig.from_json(config.to_json()), field.name) == getattr(config, field.name)


SOURCED = dataclasses.replace(FULL, model="/models/reviews", label_map={"rotten": "negative", "fresh": "1"},
                              data=DataConfig(data_files={"train": "/data/reviews.csv"}, text_column="review",
                                              label_column="sentiment"))


@pytest.mark.parametrize("config", [SOURCED, CompressionConfig(model="demo", data=DataConfig(task="demo")),
                                    CompressionConfig(data=DataConfig(data_files={"train": "a.csv", "test": "b.csv"},
                                                                      text_column="q", label_column="y",
                                                                      text_pair_column="p"))])
def test_model_data_and_label_map_round_trip(config):
    assert CompressionConfig.from_json(config.to_json()) == config
    assert read_rank_document(config.to_json()) == config


def test_model_data_and_label_map_are_written_only_when_recorded():
    assert SOURCED.to_dict() == {**FULL.to_dict(), "model": "/models/reviews",
                                 "data": {"data_files": {"train": "/data/reviews.csv"}, "text_column": "review",
                                          "label_column": "sentiment"},
                                 "label_map": {"rotten": "negative", "fresh": "1"}}
    assert "label_map" not in FULL.to_dict() and "model" not in FULL.to_dict()  # older documents stay as they were
    assert CompressionConfig(label_map={"fresh": 1}).label_map == {"fresh": "1"}  # an id written as a number
    assert DataConfig.of_files("reviews.csv", "review", "sentiment").data_files["train"].startswith("/")
    text = DataConfig.of_files("plays.txt", "text", None)  # no label column: text for language modelling
    assert text.to_dict() == {"data_files": {"train": text.data_files["train"]}, "text_column": "text"}
    assert DataConfig.from_dict(text.to_dict()) == text


@pytest.mark.parametrize("factory, fragments", [
    (lambda: DataConfig(), ["a task (e.g. 'sst2') or data_files", "not neither"]),
    (lambda: DataConfig(task="sst2", data_files={"train": "a.csv"}), ["not both"]),
    (lambda: DataConfig(task="sst2", text_column="x"), ["DataConfig.text_column goes with data_files"]),
    (lambda: DataConfig(data_files={"dev": "a.csv"}, text_column="x", label_column="y"),
     ["DataConfig.data_files must be an object {role: path} with 'train'"]),
    (lambda: DataConfig(data_files={"train": "a.csv"}, text_column="x", label_column=""),
     ["DataConfig.label_column must be a non-empty"]),
    (lambda: DataConfig(data_files={"train": "a.csv"}, label_column="y"), ["DataConfig.text_column must be a non-empty"]),
    (lambda: DataConfig(data_files={"train": "a.csv"}, text_column="x", text_pair_column="z"),
     ["text_pair_column needs a label_column"]),
    (lambda: CompressionConfig(label_map=["rotten=negative"]), ["CompressionConfig.label_map must be an object"]),
    (lambda: CompressionConfig(label_map={"rotten": ""}), ["CompressionConfig.label_map['rotten'] must be a non-empty"]),
    (lambda: CompressionConfig(model=""), ["CompressionConfig.model must be a non-empty string"]),
    (lambda: CompressionConfig.from_dict({"data": {"task": "sst2", "files": []}}), ["DataConfig has unknown key(s) 'files'"]),
])
def test_model_data_and_label_map_refuse_bad_values(factory, fragments):
    refused(factory, *fragments)


def test_from_dict_header_is_optional_and_ranks_may_be_whole_floats():
    config = CompressionConfig.from_dict({"method": "svd", "rank_pattern": {Q0: 3.0}, "fisher": {"seed": 4.0}})
    assert config == CompressionConfig(method="svd", rank_pattern={Q0: 3}, fisher=FisherConfig(seed=4))


@pytest.mark.parametrize("document, fragments", [
    ({"format": CONFIG_FORMAT, "version": CONFIG_VERSION + 1}, [f"version {CONFIG_VERSION + 1}", "upgrade fwsvd"]),
    ({"version": 0}, ["CompressionConfig version must be an integer >= 1, got 0"]),
    ({"version": "1"}, ["CompressionConfig version must be an integer >= 1"]),
    ({"format": "fwsvd-rank-config"}, ["not a compression config: format is 'fwsvd-rank-config'",
                                       repr(CONFIG_FORMAT)]),
    ({"method": "svd", "ranks": {Q0: 3}}, ["CompressionConfig has unknown key(s) 'ranks'",
                                            "allowed: format, version, method, rank_ratio, param_budget, "
                                            "allocation, allocation_floor, rank_pattern, target_modules, fisher"]),
    ({"fisher": {"mode": "exact"}}, ["FisherConfig.mode must be one of per_example, batch"]),
    ({"fisher": {"samples": 4}}, ["FisherConfig has unknown key(s) 'samples'"]),
])
def test_from_dict_refuses(document, fragments):
    refused(lambda: CompressionConfig.from_dict(document), *fragments)


def test_from_json_refuses_invalid_json():
    refused(lambda: CompressionConfig.from_json("{'method': 'svd'}"), "the compression config is not valid JSON")


# -------------------------------------------------------------------------------------------------
# as_config


def test_as_config_int_is_that_rank_everywhere():
    config = as_config(3, SHAPES, method="svd")
    assert config.method == "svd" and config.target_modules is None
    assert config.resolve_ranks(SHAPES) == {name: 3 for name in SHAPES}
    refused(lambda: as_config(11, SHAPES), "rank 11 for", I0, "choose an integer from 1 to 10")
    refused(lambda: as_config(0, SHAPES), "rank 0 for", "choose an integer from 1 to 12")
    assert as_config(np.int64(2), SHAPES).rank_pattern == {name: 2 for name in SHAPES}


def test_as_config_float_is_a_rank_ratio():
    config = as_config(0.5, SHAPES)
    assert config == CompressionConfig(rank_ratio=0.5)
    # 12x12 layers break even at rank 6 (6·24 = 144 weights): kept dense unless asked otherwise
    assert config.resolve_ranks(SHAPES) == {I0: 5, O0: 5}
    assert config.plan_ranks(SHAPES) == ({I0: 5, O0: 5}, {Q0: 6, K0: 6, Q1: 6})
    asked = dataclasses.replace(config, keep_dense_past_break_even=False)
    assert asked.plan_ranks(SHAPES) == ({Q0: 6, K0: 6, I0: 5, O0: 5, Q1: 6}, {})
    refused(lambda: as_config(1.5, SHAPES), "CompressionConfig.rank_ratio must be a number in (0, 1]")


def test_as_config_dict_pins_those_layers_and_leaves_the_others_dense():
    config = as_config({I0: 2, Q1: 7}, SHAPES, method="asvd")
    assert config.method == "asvd"
    assert config.resolve_ranks(SHAPES) == {I0: 2}  # Q1 at 7 is past its break-even 6: kept dense
    assert dataclasses.replace(config, keep_dense_past_break_even=False).resolve_ranks(SHAPES) == {I0: 2, Q1: 7}


def test_keep_dense_past_break_even_is_written_only_when_false_and_round_trips():
    assert "keep_dense_past_break_even" not in CompressionConfig().to_dict()
    asked = CompressionConfig(keep_dense_past_break_even=False)
    assert asked.to_dict()["keep_dense_past_break_even"] is False
    assert CompressionConfig.from_json(asked.to_json()) == asked
    assert CompressionConfig.from_json(CompressionConfig().to_json()) == CompressionConfig()
    refused(lambda: CompressionConfig(keep_dense_past_break_even="no"),
            "CompressionConfig.keep_dense_past_break_even must be true or false, got 'no'")


def test_as_config_passes_a_config_through_without_method():
    assert as_config(FULL, SHAPES) is FULL
    refused(lambda: as_config(FULL, SHAPES, method="svd"), "method= goes with shorthand ranks",
            "dataclasses.replace(config, method=...)")


@pytest.mark.parametrize("ranks", [True, "3", [3, 4], None, (Q0, 3)])
def test_as_config_refuses_other_types(ranks):
    refused(lambda: as_config(ranks, SHAPES), "ranks must be a CompressionConfig, an int, a float in (0, 1] or a "
                                              "dict", repr(ranks))


def test_as_config_refuses_an_unknown_method():
    refused(lambda: as_config(2, SHAPES, method="pca"), "CompressionConfig.method must be one of")


# -------------------------------------------------------------------------------------------------
# read_rank_document

PINS = {Q0: 3, O0: 2}
PINNED_SVD = CompressionConfig(method="svd").with_ranks(PINS)


@pytest.mark.parametrize("document, expected", [
    (FULL.to_dict(), FULL),  # the Export page's download
    ({key: value for key, value in FULL.to_dict().items() if key not in ("format", "version")}, FULL),
    ({"method": "svd", "rank_ratio": 0.5}, CompressionConfig(method="svd", rank_ratio=0.5)),  # by hand, no header
    ({"output": "out", "ranks": PINS, "config": PINNED_SVD.to_dict()}, PINNED_SVD),  # fwsvd compress --json
    ({"format": "fwsvd-compressed", "format_version": 2, "layers": {}, "config": PINNED_SVD.to_dict()}, PINNED_SVD),
    ({"format": "fwsvd-compressed", "format_version": 1, "method": "svd", "ranks": PINS}, PINNED_SVD),
    ({"format": "fwsvd-rank-config", "ranks": PINS, "method": "svd"}, PINNED_SVD),
    ({"format": "fwsvd-rank-config", "ranks": PINS}, CompressionConfig().with_ranks(PINS)),
    ({"ranks": PINS, "method": "svd"}, PINNED_SVD),
    (PINS, CompressionConfig().with_ranks(PINS)),  # a bare {layer: rank}
    ({Q0: 3.0, O0: 2}, CompressionConfig().with_ranks(PINS)),
])
def test_read_rank_document_accepts(document, expected):
    text = json.dumps(document)
    assert read_rank_document(text) == expected
    assert read_rank_document(text.encode(), SHAPES) == expected
    assert config_from_document(document) == expected


@pytest.mark.parametrize("text, fragments", [
    ("{layer: 3}", ["the rank document is not valid JSON"]),
    (b"\xff\xfe{", ["the rank document is not valid JSON"]),
    ("[3, 2]", ["the rank document is a JSON list, not an object", "fwsvd-compression-config"]),
    ("3", ["the rank document is a JSON int, not an object"]),
    ('{"format": "fwsvd-ranks", "ranks": {}}', ["unknown rank document format 'fwsvd-ranks'", "fwsvd-rank-config"]),
    (json.dumps({Q0: 3.5}), [f"rank 3.5 for layer {Q0!r} is not a whole number"]),
    (json.dumps({Q0: "3"}), [f"rank '3' for layer {Q0!r} is not a whole number"]),
    (json.dumps({Q0: True}), [f"rank True for layer {Q0!r} is not a whole number"]),
    (json.dumps({Q0: 0}), [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1"]),
    ("{}", ["the rank document must hold a non-empty object {layer name: rank}"]),
    (json.dumps({"format": "fwsvd-rank-config", "ranks": {Q0: 2.5}}), ["rank 2.5 for layer", "not a whole number"]),
    (json.dumps({"format": "fwsvd-rank-config"}), ["the document's 'ranks' must hold a non-empty object"]),
    (json.dumps({"format": "fwsvd-compressed", "format_version": 1, "method": "svd", "ranks": []}),
     ["fwsvd_compressed.json's 'ranks' must hold a non-empty object"]),
    (json.dumps({"config": {"method": "svd", "rank_pattern": {Q0: 1.5}}}),
     [f"CompressionConfig.rank_pattern[{Q0!r}] must be an integer >= 1, got 1.5"]),
])
def test_read_rank_document_refuses(text, fragments):
    refused(lambda: read_rank_document(text), *fragments)


@pytest.mark.parametrize("document, fragments", [
    ({"bert.encoder.layer.0.attention.self.querry": 3}, ["not compression targets", "(did you mean", repr(Q0)]),
    ({I0: 11}, ["rank 11 for", I0, "choose an integer from 1 to 10"]),
    ({"format": "fwsvd-rank-config", "ranks": {Q0: 13}}, ["rank 13 for", Q0, "choose an integer from 1 to 12"]),
    (CompressionConfig(target_modules=["value"]).to_dict(), ["select none of the 5 target layers"]),
])
def test_read_rank_document_checks_against_shapes(document, fragments):
    text = json.dumps(document)
    config_from_document(document)  # well formed on its own ...
    refused(lambda: read_rank_document(text, SHAPES), *fragments)  # ... wrong for this model


def test_param_budget_allocation_spends_no_more_than_the_rounded_uniform_ranks():
    # Each layer's uniform rank rounds down, so the rule keeps less than 30 % of the dense weights (224 of 1044):
    # the allocation gets those 224, not the share's 313, and is compared with the rule at equal size.
    shapes = {"x.wide": (40, 10), "x.tall": (10, 40), "x.square": (12, 12)}
    analyses = {name: LayerAnalysis(name, m, n, {"fwsvd": np.ones(min(m, n))}, {"fwsvd": ErrorCurves(
        plain=linear_curve(min(m, n), 1.0), weighted=linear_curve(min(m, n), 1.0), weight_norm=1.0,
        weighted_norm=1.0)}) for name, (m, n) in shapes.items()}
    uniform = CompressionConfig(param_budget=0.3).resolve_ranks(shapes)
    assert kept_params(uniform, shapes) == 224
    allocated = CompressionConfig(param_budget=0.3, allocation="fisher", allocation_floor=0.0)
    assert kept_params(allocated.resolve_ranks(shapes, analyses), shapes) <= 224
