"""The glue: Fisher from the train split (cached), loading any model kind, importance agreement."""

from __future__ import annotations

import pytest
import torch

from fwsvd import DecompositionStore, compress_
from fwsvd.io.persistence import save_compressed
from fwsvd.fisher.summary import importance_agreement
from fwsvd.io.models import is_compressed_dir, load_any_model
from fwsvd.config import FisherConfig
from fwsvd.fisher.task import task_fisher
from fwsvd.data.tasks import get_task, local_task
from tiny_task import minilm_tokenizer, save_tiny_classifier, tiny_text_classifier, write_reviews


@pytest.fixture
def task(tmp_path):
    return local_task(write_reviews(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")


def test_task_fisher_reads_the_train_split_and_is_cached(task, cache_dir):
    model, tokenizer = tiny_text_classifier(), minilm_tokenizer()
    first = task_fisher(model, tokenizer, task, FisherConfig(num_examples=1000, batch_size=8, max_length=32))
    train_size = len(task.load_split("train"))
    assert first.provenance["data_id"] == task.data_id("train") != task.data_id("test")
    # A request beyond the split is capped, so the key records the examples actually used.
    assert first.provenance["num_examples"] == train_size
    assert not first.from_cache and first.path.is_relative_to(cache_dir)
    again = task_fisher(model, tokenizer, task, FisherConfig(num_examples=1000, batch_size=8, max_length=32))
    assert again.from_cache
    for name, values in first.importances.items():
        assert torch.equal(values, again.importances[name])
    other_mode = task_fisher(model, tokenizer, task, FisherConfig(num_examples=1000, batch_size=8, max_length=32, mode="batch"))
    assert not other_mode.from_cache and other_mode.provenance["mode"] == "batch"


def test_task_fisher_needs_an_example(task, cache_dir):
    with pytest.raises(ValueError, match="num_examples must be an integer >= 1, got 0"):
        task_fisher(tiny_text_classifier(), minilm_tokenizer(), task, FisherConfig(num_examples=0))


def test_load_any_model_takes_plain_and_compressed_directories(task, tmp_path, cache_dir):
    plain_dir = save_tiny_classifier(tmp_path / "plain")
    model, tokenizer, info = load_any_model(plain_dir, task)
    assert info is None and not is_compressed_dir(plain_dir)
    report = compress_(model, 0.5, method="svd", store=DecompositionStore(use_disk=False))
    save_compressed(model, tmp_path / "compressed", config=report.config, tokenizer=tokenizer)
    assert is_compressed_dir(tmp_path / "compressed")
    loaded, loaded_tokenizer, info = load_any_model(tmp_path / "compressed", task)
    assert info["config"]["method"] == "svd" and loaded_tokenizer.vocab_size == tokenizer.vocab_size


def test_load_any_model_checks_the_head(tmp_path, task):
    model = tiny_text_classifier(num_labels=3)
    compress_(model, 0.5, method="svd", store=DecompositionStore(use_disk=False))
    save_compressed(model, tmp_path / "three", tokenizer=minilm_tokenizer())
    with pytest.raises(ValueError, match="3 labels"):
        load_any_model(tmp_path / "three", task)
    with pytest.raises(ValueError, match="ForTokenClassification"):
        load_any_model(tmp_path / "three", get_task("conll2003"))


def test_compressed_directory_without_tokenizer(tmp_path, task):
    model = tiny_text_classifier()
    compress_(model, 0.5, method="svd", store=DecompositionStore(use_disk=False))
    save_compressed(model, tmp_path / "bare")
    with pytest.raises(ValueError, match="tokenizer"):
        load_any_model(tmp_path / "bare", task)


def test_importance_agreement():
    generator = torch.Generator().manual_seed(0)
    first = {"a": torch.rand(50, generator=generator), "b": torch.rand(20, generator=generator)}
    second = {"a": first["a"] * 3.0, "b": torch.rand(20, generator=generator), "c": torch.rand(5)}
    agreement = importance_agreement(first, second)
    assert set(agreement) == {"a", "b"}
    assert agreement["a"]["cosine"] == pytest.approx(1.0) and agreement["a"]["spearman"] == pytest.approx(1.0)
    assert agreement["b"]["spearman"] < 0.9
