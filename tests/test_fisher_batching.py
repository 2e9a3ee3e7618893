"""The Fisher's batches grouped by length: the same examples, far less padding, and the same exact Fisher and
token statistics (to 1e-6) as the shuffled batches — so the cache key, which never recorded the batching,
still stands for the result; the batch shortcut, whose result depends on the grouping, keeps its batches."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from tiny_task import minilm_tokenizer, tiny_text_classifier

from fwsvd.config import FisherConfig
from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import local_task
from fwsvd.fisher.estimate import estimate_fisher, load_or_estimate_fisher
from fwsvd.fisher.task import fisher_batches, fisher_example_count, grouped_by_length, task_fisher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["the", "film", "was", "a", "really", "moving", "dull", "story", "with", "great", "cast", "and", "ending"]
CONFIG = FisherConfig(num_examples=48, batch_size=8, max_length=40, seed=3)


def write_ragged_reviews(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Reviews of 1 to 30 words: batches of shuffled examples are mostly padding."""
    generator = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for row in range(rows):
            words = generator.choices(WORDS, k=generator.choice([1, 2, 3, 25, 30]))
            writer.writerow([" ".join(words), row % 2])
    return path


@pytest.fixture
def task(tmp_path):
    return local_task(write_ragged_reviews(tmp_path / "ragged.csv"), text_column="review", label_column="sentiment")


def shuffled_batches(task, tokenizer, config: FisherConfig):
    """The batches before grouping: the same examples in their shuffled order."""
    return make_batches(task, tokenizer, "train", batch_size=config.batch_size, max_length=config.max_length,
                        limit=fisher_example_count(task, config), seed=config.seed, shuffle=True)


def rows_of(batches) -> list[tuple[tuple[int, ...], int]]:
    """Each example's real tokens and label, sorted: the examples a list of batches holds."""
    rows = []
    for batch in batches:
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            rows.append((tuple(ids[mask.bool()].tolist()), int(label)))
    return sorted(rows)


def padding(batches) -> float:
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)


def relative_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return float((first.double() - second.double()).abs().max() / second.double().abs().max())


def test_grouped_batches_hold_the_same_examples_with_less_padding(task):
    tokenizer = minilm_tokenizer()
    grouped, shuffled = fisher_batches(task, tokenizer, CONFIG), shuffled_batches(task, tokenizer, CONFIG)
    assert grouped_by_length(CONFIG)
    assert rows_of(grouped) == rows_of(shuffled) and len(rows_of(grouped)) == 48
    assert padding(shuffled) > 0.4 and padding(grouped) < 0.5 * padding(shuffled)


def test_exact_fisher_and_statistics_do_not_depend_on_the_grouping(task):
    tokenizer, model = minilm_tokenizer(), tiny_text_classifier()
    grouped, shuffled = fisher_batches(task, tokenizer, CONFIG), shuffled_batches(task, tokenizer, CONFIG)
    fisher, statistics = estimate_fisher(model, grouped, statistics=True, show_progress=False)
    reference, reference_statistics = estimate_fisher(model, shuffled, statistics=True, show_progress=False)
    assert set(fisher) == set(reference) and len(fisher) == 12
    for name in reference:
        assert relative_difference(fisher[name], reference[name]) < 1e-6
        ours, theirs = statistics[name].to_tensors(), reference_statistics[name].to_tensors()
        assert set(ours) == set(theirs) == {"input_moment", "input_abs_sum", "tokens", "output_moment"}
        assert int(ours["tokens"]) == int(theirs["tokens"]) > 0
        for part in ("input_moment", "input_abs_sum", "output_moment"):
            assert relative_difference(ours[part], theirs[part]) < 1e-6, (name, part)


def test_a_fisher_cached_from_shuffled_batches_is_still_a_hit(task, cache_dir):
    """The key records the examples and settings, not the batching: results from before the grouping stay valid."""
    tokenizer, model = minilm_tokenizer(), tiny_text_classifier()
    before = load_or_estimate_fisher(
        model, lambda: shuffled_batches(task, tokenizer, CONFIG), data_id=task.data_id("train"),
        num_examples=fisher_example_count(task, CONFIG), seed=CONFIG.seed, max_length=CONFIG.max_length,
        show_progress=False)
    now = task_fisher(model, tokenizer, task, CONFIG)
    assert not before.from_cache and now.from_cache and now.path == before.path
    recomputed = estimate_fisher(model, fisher_batches(task, tokenizer, CONFIG), show_progress=False)
    for name, importance in now.importances.items():
        assert relative_difference(recomputed[name], importance) < 1e-6


def test_the_batch_shortcut_keeps_its_shuffled_batches(task):
    tokenizer = minilm_tokenizer()
    config = FisherConfig(num_examples=48, batch_size=8, max_length=40, seed=3, mode="batch")
    assert not grouped_by_length(config)
    grouped, shuffled = fisher_batches(task, tokenizer, config), shuffled_batches(task, tokenizer, config)
    assert len(grouped) == len(shuffled) == 6
    for ours, theirs in zip(grouped, shuffled):
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
