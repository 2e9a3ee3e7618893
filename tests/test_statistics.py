"""Token statistics from the Fisher pass: against a brute-force loop over single examples and their tokens,
independent of batch grouping and padding, Fisher unchanged, cached like the Fisher, and through task_fisher."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from conftest import random_batch, tiny_bert, tiny_bert_token, tiny_models
from test_fisher import KEY, CountingBatches, tiny_albert, token_batch
from tiny_task import minilm_tokenizer, tiny_text_classifier, write_reviews
from torch import nn

from fwsvd.config import FisherConfig
from fwsvd.data.tasks import local_task
from fwsvd.factorize.weighted import LayerStatistics
from fwsvd.fisher.estimate import (
    batch_loss_weights,
    estimate_fisher,
    load_or_estimate_fisher,
    per_example_losses,
)
from fwsvd.fisher.statistics import (
    PANEL_ROWS,
    StatisticsAccumulator,
    add_gram_,
    split_statistics,
    statistics_to_tensors,
    symmetric,
)
from fwsvd.fisher.task import cached_task_fisher, task_fisher
from fwsvd.storage.tensor_cache import TensorCache
from fwsvd.surgery.targets import find_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Statistics = dict[str, LayerStatistics]


def brute_force_statistics(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Statistics:
    """The definition: each example alone through the model, the gradient of its own loss (the model's
    ``.loss``) at every target layer's output, then a loop over its real tokens (attention mask 1) adding
    x xᵀ, g gᵀ and |x| in float64 — once per call of a layer."""
    targets = find_targets(model)
    sums: dict[str, dict[str, object]] = {}
    for name, module in targets.items():
        out_features, in_features = (module.out_features, module.in_features) if isinstance(module, nn.Linear) \
            else module.weight.shape[::-1]
        sums[name] = {"A": torch.zeros(in_features, in_features, dtype=torch.float64),
                      "G": torch.zeros(out_features, out_features, dtype=torch.float64),
                      "abs": torch.zeros(in_features, dtype=torch.float64), "tokens": 0}
    for batch in batches:
        for row in range(len(batch["labels"])):
            example = {key: value[row:row + 1] for key, value in batch.items()}
            calls: dict[str, list[tuple[torch.Tensor, list[torch.Tensor]]]] = {name: [] for name in targets}

            def keep(name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                grads: list[torch.Tensor] = []
                output.register_hook(grads.append)
                calls[name].append((args[0].detach(), grads))

            handles = [module.register_forward_hook(lambda m, a, o, name=name: keep(name, m, a, o))
                       for name, module in targets.items()]
            try:
                model(**example).loss.backward()
            finally:
                for handle in handles:
                    handle.remove()
            real = example["attention_mask"][0].bool()
            for name, layer_calls in calls.items():
                for x, grads in layer_calls:
                    (g,) = grads
                    for token in range(x.shape[1]):
                        if real[token]:
                            xt, gt = x[0, token].double(), g[0, token].double()
                            sums[name]["A"] += torch.outer(xt, xt)
                            sums[name]["G"] += torch.outer(gt, gt)
                            sums[name]["abs"] += xt.abs()
                            sums[name]["tokens"] += 1
    model.zero_grad(set_to_none=True)
    return {name: LayerStatistics(input_moment=s["A"], output_moment=s["G"], input_abs_sum=s["abs"],
                                  tokens=s["tokens"]) for name, s in sums.items()}


def assert_statistics_close(actual: Statistics, expected: Statistics, tolerance: float = 2e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].tokens == expected[name].tokens, name
        for field in ("input_moment", "output_moment", "input_abs_sum"):
            value, reference = getattr(actual[name], field), getattr(expected[name], field)
            assert value.dtype == torch.float32 and value.device.type == "cpu"
            # Relative to the largest entry: A and G are Gram matrices, their diagonals dominate.
            scale = reference.abs().max().item()
            assert scale > 0, (name, field)
            torch.testing.assert_close(value.double() / scale, reference.double() / scale, rtol=0,
                                       atol=tolerance, msg=f"{name} {field}")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_statistics_match_brute_force(family):
    """BERT's Linear and GPT-2's Conv1D (weight stored (in, out)), ragged padding."""
    model = tiny_models()[family]
    batches = [random_batch(4, 12, seed=1), random_batch(3, 9, seed=2)]
    _, statistics = estimate_fisher(model, batches, statistics=True)
    expected = brute_force_statistics(model, batches)
    assert_statistics_close(statistics, expected)
    layer = "transformer.h.0.mlp.c_fc" if family == "gpt2" else "bert.encoder.layer.0.intermediate.dense"
    assert (statistics[layer].out_features, statistics[layer].in_features) == (128 if family == "gpt2" else 48, 32)
    assert statistics[layer].tokens == int(sum(batch["attention_mask"].sum() for batch in batches))


def test_token_classification_counts_ignored_labels_like_the_fisher():
    """Tokens labelled -100 still count (their activations feed the labelled tokens), padding does not."""
    model = tiny_bert_token()
    batches = [token_batch(seed=3), token_batch(seed=4, batch_size=3, length=15)]
    _, statistics = estimate_fisher(model, batches, statistics=True)
    assert_statistics_close(statistics, brute_force_statistics(model, batches))


def test_batch_mode_gives_the_statistics_of_the_summed_per_example_loss():
    """The batch shortcut backpropagates the batch's mean loss; its statistics are still those of Σ loss_i,
    including token classification, where examples weigh their share of the labelled tokens."""
    for model, batches in [(tiny_bert_token(), [token_batch(seed=5), token_batch(seed=6, batch_size=3)]),
                           (tiny_bert(), [random_batch(3, 12, seed=7), random_batch(5, 10, seed=8)])]:
        shortcut, statistics = estimate_fisher(model, batches, mode="batch", statistics=True)
        assert_statistics_close(statistics, brute_force_statistics(model, batches))
        plain = estimate_fisher(model, batches, mode="batch")
        assert all(torch.equal(shortcut[name], plain[name]) for name in plain)


def test_layer_shared_across_depth_adds_every_call():
    model = tiny_albert()
    batches = [random_batch(4, 12, seed=9)]
    _, statistics = estimate_fisher(model, batches, statistics=True)
    expected = brute_force_statistics(model, batches)
    assert_statistics_close(statistics, expected)
    real_tokens = int(batches[0]["attention_mask"].sum())
    assert {layer.tokens for name, layer in statistics.items() if "albert.encoder.albert_layer_groups" in name} \
        == {3 * real_tokens}


def test_fisher_is_unchanged_by_collecting_statistics():
    model = tiny_bert_token()
    batches = [token_batch(seed=10), token_batch(seed=11, batch_size=3, length=15)]
    for mode in ("per_example", "batch"):
        alone = estimate_fisher(model, batches, mode=mode)
        together, _ = estimate_fisher(model, batches, mode=mode, statistics=True)
        assert together.keys() == alone.keys()
        assert all(torch.equal(together[name], alone[name]) for name in alone), mode
    assert all(not module._forward_hooks for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())


def _examples(count: int, length: int = 12, seed: int = 12) -> dict[str, torch.Tensor]:
    return random_batch(count, length, seed=seed)


def _grouped(examples: dict[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return [{key: value[start:start + size] for key, value in examples.items()} for start, size in zip(starts, sizes)]


def test_batch_grouping_and_extra_padding_change_nothing():
    model = tiny_bert()
    examples = _examples(7)
    _, reference = estimate_fisher(model, _grouped(examples, [7]), statistics=True)
    for sizes in ([4, 3], [2, 2, 2, 1], [1] * 7):
        _, grouped = estimate_fisher(model, _grouped(examples, sizes), statistics=True)
        assert_statistics_close(grouped, reference, tolerance=1e-6)
    padded = {key: torch.cat([value, torch.zeros(len(value), 5, dtype=value.dtype)], dim=1) if value.dim() == 2
              else value for key, value in examples.items()}
    _, longer = estimate_fisher(model, [padded], statistics=True)
    assert_statistics_close(longer, reference, tolerance=1e-6)


@pytest.mark.parametrize("logits, labels", [
    (torch.randn(4, 6, 3), torch.tensor([[0, 1, -100, 2, -100, -100], [-100] * 6, [1, 1, 1, 1, 1, 1],
                                         [2, -100, -100, -100, -100, -100]])),
    (torch.randn(4, 3), torch.tensor([0, 2, 1, 1])),
    (torch.randn(4, 1), torch.randn(4)),
    (torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()),
])
def test_batch_loss_is_the_weighted_sum_of_example_losses(logits, labels):
    losses, batch_loss = per_example_losses(logits, labels, None)
    weights = batch_loss_weights(logits, labels)
    torch.testing.assert_close((weights * losses).sum(), batch_loss)


def test_upper_triangle_panels_give_the_full_gram_matrix():
    # The panels serve moments BLAS's symmetric update cannot take (CUDA, here a non-contiguous CPU one).
    generator = torch.Generator().manual_seed(13)
    features = 2 * PANEL_ROWS + 37  # three panels, the last one short
    rows = torch.randn(50, features, generator=generator, dtype=torch.float64)
    upper = add_gram_(torch.zeros(features, 2 * features, dtype=torch.float64)[:, ::2], rows)
    assert not upper[PANEL_ROWS:, :PANEL_ROWS].any()  # below the first diagonal panel: never computed
    torch.testing.assert_close(symmetric(upper), rows.T @ rows, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_blas_symmetric_update_adds_the_upper_triangle_in_place(dtype, tolerance):
    generator = torch.Generator().manual_seed(15)
    rows = torch.randn(70, 45, generator=generator, dtype=torch.float64)
    start = torch.randn(45, 45, generator=generator, dtype=torch.float64)
    moment = start.to(dtype, copy=True)
    address = moment.data_ptr()
    for part in (rows[:30], rows[30:], rows[:0]):  # accumulates; an empty batch adds nothing
        assert add_gram_(moment, part.to(dtype)) is moment
    assert moment.data_ptr() == address
    lower = torch.ones(45, 45, dtype=torch.bool).tril(-1)
    assert torch.equal(moment[lower], start.to(dtype)[lower])  # the lower triangle is left alone
    expected = symmetric(start) + rows.T @ rows
    torch.testing.assert_close(symmetric(moment).double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_update_runs_with_as_many_threads_as_torch(threads):
    from threadpoolctl import threadpool_info

    from fwsvd.fisher import statistics as statistics_module

    seen: list[int] = []
    update = statistics_module._SYRK[torch.float32]

    def spy(*args, **kwargs):
        seen.extend(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
        return update(*args, **kwargs)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        statistics_module._SYRK[torch.float32] = spy
        add_gram_(torch.zeros(8, 8), torch.randn(5, 8))
    finally:
        statistics_module._SYRK[torch.float32] = update
        torch.set_num_threads(previous)
    assert seen and set(seen) == {threads}


def test_layers_fed_one_tensor_share_its_sums_until_it_changes():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(14))
    keep = torch.tensor([[True, True, False], [True, False, False]])
    accumulator = StatisticsAccumulator({name: (5, 4) for name in ("query", "key", "value", "other")})
    accumulator.add_input("query", x, keep)
    accumulator.add_input("key", x, keep)  # the same tensor: the product is reused
    x.mul_(2)  # changed in place: computed again
    accumulator.add_input("value", x, keep)
    accumulator.add_input("other", x, keep.clone())  # an equal mask, but another object: computed again
    result = accumulator.result()
    kept = x[keep].double() / 2
    for name, factor in [("query", 1), ("key", 1), ("value", 4), ("other", 4)]:
        assert result[name].tokens == 3
        torch.testing.assert_close(result[name].input_moment.double(), factor * kept.T @ kept, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(result[name].input_abs_sum.double(), factor ** 0.5 * kept.abs().sum(0))


# --- cache -------------------------------------------------------------------------------------------------

def assert_same_statistics(actual: Statistics, expected: Statistics) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].to_tensors().keys() == expected[name].to_tensors().keys()
        assert all(torch.equal(tensor, expected[name].to_tensors()[field])
                   for field, tensor in actual[name].to_tensors().items()), name


def test_cache_round_trip(cache_dir):
    model, batches = tiny_bert(), CountingBatches()
    first = load_or_estimate_fisher(model, batches, **KEY, statistics=True)
    assert not first.from_cache and batches.calls == 1 and first.path.is_relative_to(cache_dir / "fisher")
    assert_statistics_close(first.statistics, brute_force_statistics(model, batches()))
    batches.calls = 0

    again = load_or_estimate_fisher(model, batches, **KEY, statistics=True)
    assert again.from_cache and batches.calls == 0 and again.path == first.path
    assert_same_statistics(again.statistics, first.statistics)
    assert again.provenance == first.provenance
    # The Fisher alone is read from the file that holds it with the statistics.
    alone = load_or_estimate_fisher(model, batches, **KEY)
    assert alone.from_cache and alone.statistics is None and batches.calls == 0
    assert all(torch.equal(alone.importances[name], first.importances[name]) for name in first.importances)
    assert len(list((cache_dir / "fisher").glob("*.safetensors"))) == 1


def test_a_fisher_cached_without_statistics_is_computed_again_with_them(cache_dir):
    model, batches = tiny_bert(), CountingBatches()
    alone = load_or_estimate_fisher(model, batches, **KEY)
    assert alone.statistics is None
    together = load_or_estimate_fisher(model, batches, **KEY, statistics=True)
    assert not together.from_cache and batches.calls == 2 and together.path != alone.path
    assert all(torch.equal(together.importances[name], alone.importances[name]) for name in alone.importances)
    assert load_or_estimate_fisher(model, batches, **KEY, statistics=True).from_cache
    assert load_or_estimate_fisher(model, batches, **KEY).path == alone.path and batches.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "flipped value", "incomplete statistics", "other layers"])
def test_damaged_statistics_file_is_reported_and_recomputed(cache_dir, caplog, damage):
    model, batches = tiny_bert(), CountingBatches()
    expected = load_or_estimate_fisher(model, batches, **KEY, statistics=True)
    path = expected.path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped value":
        path.write_bytes(data[:-4] + bytes(b ^ 0x55 for b in data[-4:]))
    else:
        # Well-formed files under the right key (their checksum holds) whose content does not fit.
        tensors = TensorCache(cache_dir, namespace="fisher").get(_stored_key(path))
        importances, statistics = split_statistics(tensors)
        if damage == "incomplete statistics":
            tensors = {name: tensor for name, tensor in tensors.items() if "input_abs_sum" not in name}
        else:
            dropped = next(iter(statistics))
            tensors = {**importances, **statistics_to_tensors(
                {name: layer for name, layer in statistics.items() if name != dropped})}
        TensorCache(cache_dir, namespace="fisher").put(_stored_key(path), tensors)
    calls = batches.calls

    with caplog.at_level(logging.WARNING, logger="fwsvd"):
        result = load_or_estimate_fisher(model, batches, **KEY, statistics=True)
    assert not result.from_cache and batches.calls == calls + 1
    assert str(path) in caplog.text and "recomputed" in caplog.text
    assert_statistics_close(result.statistics, expected.statistics, tolerance=1e-6)
    assert load_or_estimate_fisher(model, batches, **KEY, statistics=True).from_cache  # overwritten


def _stored_key(path: Path) -> dict:
    """The key a cache file records (its metadata), to write a file under the same key."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["fwsvd_key"])


def test_task_fisher_and_its_cache_only_lookup(tmp_path, cache_dir):
    model, tokenizer = tiny_text_classifier(), minilm_tokenizer()
    task = local_task(write_reviews(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")
    settings = FisherConfig(num_examples=16, batch_size=8, max_length=32)
    assert cached_task_fisher(model, task, settings, statistics=True) is None
    computed = task_fisher(model, tokenizer, task, settings, statistics=True)
    assert computed.statistics.keys() == computed.importances.keys() == find_targets(model).keys()
    layer = computed.statistics["bert.encoder.layer.1.output.dense"]
    assert (layer.out_features, layer.in_features) == (32, 48) and layer.tokens > 16
    cached = cached_task_fisher(model, task, settings, statistics=True)
    assert cached is not None and cached.from_cache
    assert_same_statistics(cached.statistics, computed.statistics)
    fisher_only = cached_task_fisher(model, task, settings)
    assert fisher_only is not None and fisher_only.statistics is None
