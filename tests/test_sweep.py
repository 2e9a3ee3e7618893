"""run_sweep: full-rank SVD equals the dense model, fresh copies, decompositions reused across ratios."""

from __future__ import annotations

import json

import pytest
import torch

from fwsvd import DecompositionStore, find_targets
from fwsvd.config import CompressionConfig, FisherConfig
from fwsvd.fisher.task import task_fisher
from fwsvd.evaluate.sweep import SweepRun, run_sweep
from fwsvd.data.tasks import local_task
from tiny_task import minilm_tokenizer, tiny_text_classifier, write_reviews


@pytest.fixture
def task(tmp_path):
    return local_task(write_reviews(tmp_path / "reviews.csv", rows=80), text_column="review",
                      label_column="sentiment")


@pytest.fixture
def model():
    return tiny_text_classifier()


@pytest.fixture
def tokenizer():
    return minilm_tokenizer()


def test_full_rank_svd_equals_the_dense_model(model, tokenizer, task):
    result = run_sweep(model, tokenizer, task, methods=["svd"], rank_ratios=[1.0], max_length=32,
                       store=DecompositionStore(use_disk=False),
                       config=CompressionConfig(keep_dense_past_break_even=False))  # factorized, not kept dense
    (run,) = result.runs
    assert run.method == "svd" and run.rank_ratio == 1.0 and not run.finetuned
    assert run.metrics == result.dense.metrics
    assert run.params > result.dense.params  # full rank is above break-even: more parameters, same function
    # the same predictions: a paired difference of exactly 0, inside the noise; intervals and timing carried
    assert all(found.value == 0 and found.inside_noise for found in run.vs_dense.values())
    assert run.vs_svd is None and run.intervals == result.dense.intervals
    assert run.intervals["accuracy"].method == "wilson"
    assert run.speedup is not None and run.latency.median == run.latency_s_per_batch
    assert len(result.dense_seconds) == 5


def test_sweep_shapes_copies_and_store_reuse(model, tokenizer, task, cache_dir):
    fisher = task_fisher(model, tokenizer, task, FisherConfig(num_examples=32, batch_size=16, max_length=32))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    store = DecompositionStore(use_disk=False)
    seen: list[SweepRun] = []
    progress: list[tuple[int, int]] = []
    result = run_sweep(model, tokenizer, task, methods=("svd", "fwsvd"), rank_ratios=(0.5, 0.25), fisher=fisher,
                       max_length=32, store=store, on_run=seen.append,
                       progress=lambda done, total: progress.append((done, total)))
    assert [(run.method, run.rank_ratio) for run in result.runs] == [
        ("svd", 0.5), ("svd", 0.25), ("fwsvd", 0.5), ("fwsvd", 0.25)]
    assert seen == result.runs and progress[-1] == (5, 5)
    # one decomposition per layer and method, whatever the number of ratios
    assert store.computed == 2 * len(find_targets(model))
    assert result.runs[0].params > result.runs[1].params
    for name, tensor in model.state_dict().items():  # the dense model is never touched
        assert torch.equal(tensor, before[name]), name
    as_dict = result.to_dict()
    assert set(as_dict) == {"dense", "runs"}
    assert set(as_dict["dense"]) >= {"metrics", "params"} and "accuracy" in as_dict["dense"]["metrics"]
    assert set(as_dict["runs"][0]) >= {"method", "rank_ratio", "params", "metrics"}
    frame = result.to_dataframe()
    assert list(frame["method"]) == ["dense", "svd", "svd", "fwsvd", "fwsvd"]
    assert "accuracy" in frame.columns and frame["params_fraction"].iloc[0] == 1.0
    assert {"accuracy_low", "accuracy_high", "accuracy_vs_svd", "accuracy_vs_svd_verdict", "accuracy_vs_dense_low",
            "speedup", "speedup_low", "latency_high_s"} <= set(frame.columns)
    fwsvd = result.runs[2]
    assert fwsvd.vs_svd["accuracy"].value == pytest.approx(fwsvd.metrics["accuracy"] - result.runs[0].metrics["accuracy"])
    assert frame["accuracy_vs_svd"].iloc[3] == fwsvd.vs_svd["accuracy"].value
    assert frame["accuracy_vs_svd_verdict"].iloc[3] == fwsvd.vs_svd["accuracy"].verdict
    assert frame["accuracy_vs_svd_verdict"].iloc[:3].isna().all()  # dense and SVD itself
    assert as_dict["runs"][2]["vs_svd"]["accuracy"]["verdict"] == fwsvd.vs_svd["accuracy"].verdict
    assert "predictions" not in as_dict["dense"] and "evaluation" not in as_dict["runs"][0]
    json.dumps(as_dict)


def test_runs_before_their_svd_run_are_compared_at_the_end(model, tokenizer, task, cache_dir):
    fisher = task_fisher(model, tokenizer, task, FisherConfig(num_examples=32, batch_size=16, max_length=32))
    seen: list[SweepRun] = []
    result = run_sweep(model, tokenizer, task, methods=("fwsvd", "svd"), rank_ratios=(0.5,), fisher=fisher,
                       max_length=32, store=DecompositionStore(use_disk=False), latency_rounds=0, on_run=seen.append)
    assert seen[0].vs_svd is None and result.runs[0].vs_svd is not None
    assert result.runs[0].speedup is None and not result.dense_seconds
    assert result.runs[0].vs_svd["accuracy"].value == pytest.approx(
        result.runs[0].metrics["accuracy"] - result.runs[1].metrics["accuracy"])


def test_finetuning_after_compression(model, tokenizer, task):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = run_sweep(model, tokenizer, task, methods=["svd"], rank_ratios=[0.5], max_length=32,
                       finetune_epochs=1, finetune_kwargs={"limit": 16, "batch_size": 8, "learning_rate": 1e-3},
                       store=DecompositionStore(use_disk=False))
    assert result.runs[0].finetuned
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["fwsvd"]}, "needs Fisher"),
    ({"methods": ["pca"]}, "method must be one of"),
    ({"config": CompressionConfig(rank_pattern={"bert.encoder.layer.0.output.dense": 2})}, "pins 1 layer"),
    ({"rank_ratios": [0.0]}, r"\(0, 1\]"),
    ({"rank_ratios": [1.5]}, r"\(0, 1\]"),
    ({"rank_ratios": []}, "at least one"),
    ({"finetune_epochs": -1}, "finetune_epochs"),
    ({"latency_rounds": -1}, "latency_rounds"),
])
def test_bad_arguments_fail_before_any_work(model, tokenizer, task, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(model, tokenizer, task, **kwargs)
