"""Language modelling as a task kind, on tiny random causal LMs (Llama, and GPT-2 with its Conv1D layers):
which layers are targets, how text is packed into blocks, the per-example Fisher of a block, perplexity and its
interval, compression at full rank, and the CLI on a .txt file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from conftest import VOCAB
from tiny_text import WORDS, tiny_tokenizer
from fwsvd.cli import main
from fwsvd.config import CompressionConfig
from fwsvd.data.batches import IGNORE_INDEX, make_batches
from fwsvd.data.language_modeling import LM_TASKS, pack_blocks, text_task
from fwsvd.data.shakespeare import strip_gutenberg
from fwsvd.data.tasks import TASK_NAMES, get_task
from fwsvd.evaluate.evaluation import evaluate_model
from fwsvd.evaluate.perplexity import perplexity, perplexity_difference, perplexity_interval, perplexity_ratio
from fwsvd.factorize.layers import dense_weight
from fwsvd.fisher.estimate import estimate_fisher
from fwsvd.surgery.compress import compress_
from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.surgery.targets import find_targets
from fwsvd.view.metrics import is_better, metric_label

BLOCK = 12


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


def write_text(path, lines: int = 60, seed: int = 0):
    """A .txt file of random sentences over the tiny tokenizer's words (several hundred tokens)."""
    rng = np.random.default_rng(seed)
    words = [word for word in WORDS if not word.startswith("##")]
    path.write_text("".join(" ".join(rng.choice(words, size=rng.integers(4, 12))) + ".\n" for _ in range(lines)))
    return path


@pytest.fixture
def text_file(tmp_path):
    return write_text(tmp_path / "book.txt")


@pytest.fixture(params=["llama", "gpt2"])
def causal_lm(request):
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


# --------------------------------------------------------------------------------------------------
# Targets and tasks


def test_targets_are_the_block_layers_never_embeddings_or_lm_head():
    llama = find_targets(tiny_llama())
    assert len(llama) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert all(name.startswith("model.layers.") for name in llama)
    gpt2 = find_targets(tiny_gpt2())
    assert sorted(name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name in gpt2 if ".0." in name) == [
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert len(gpt2) == 2 * 4 and all(name.startswith("transformer.h.") for name in gpt2)
    for targets in (llama, gpt2):
        assert not any("embed" in name or "wte" in name or "wpe" in name or "lm_head" in name for name in targets)


def test_lm_tasks_are_registered():
    assert {"demo-lm", "wikitext2", "wikitext103"} <= set(TASK_NAMES)
    task = get_task("demo-lm")
    assert task is LM_TASKS["demo-lm"]
    assert (task.kind, task.metric_names, task.headline_metric) == ("language_modeling", ("perplexity",),
                                                                  "perplexity")
    assert get_task("wikitext2").hub_config == "wikitext-2-raw-v1"


def test_lower_is_better_for_perplexity_only():
    assert metric_label("perplexity") == "perplexity (lower is better)"
    assert metric_label("accuracy") == "accuracy (higher is better)"
    assert is_better("perplexity", 50.0, 60.0) and not is_better("perplexity", 60.0, 50.0)
    assert is_better("accuracy", 0.8, 0.7)


def test_text_file_split_is_contiguous_in_file_order(text_file):
    task = text_task(text_file)
    lines = text_file.read_text().splitlines(keepends=True)
    parts = {role: list(task.load_split(role)["text"]) for role in ("train", "validation", "test")}
    assert parts["train"] + parts["validation"] + parts["test"] == lines
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (48, 6, 6)


def test_strip_gutenberg_keeps_only_the_text():
    text = ("The Project Gutenberg EBook of Hamlet\nLicence...\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "\nACT I.\nWho's there?\n\n*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nfooter\n")
    assert strip_gutenberg(text) == "ACT I.\nWho's there?\n"
    assert strip_gutenberg("\nACT I.\nNay, answer me.\n\n") == "ACT I.\nNay, answer me.\n"


def test_table_rows_are_documents_joined_by_end_of_text(tmp_path):
    import pandas as pd

    path = tmp_path / "docs.csv"
    pd.DataFrame({"body": ["the movie was great", "a boring film", "loved it"] * 10}).to_csv(path, index=False)
    task = text_task({"train": path, "test": path}, text_column="body")
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"
    ids = make_batches(task, tokenizer, "test", max_length=5)[0]["input_ids"]
    words = tokenizer.convert_ids_to_tokens(ids.flatten().tolist())
    assert words[:10] == ["the", "movie", "was", "great", "[SEP]", "a", "boring", "film", "[SEP]", "loved"]
    with pytest.raises(ValueError, match="needs its text column"):
        text_task(path)


def test_hub_text_task_reads_its_split_and_joins_lines(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return datasets.Dataset.from_dict({"text": [" = Title = \n", "the film is great .\n", ""] * 8})
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = get_task("wikitext2")
    tokenizer = tiny_tokenizer()
    batches = make_batches(task, tokenizer, "validation", max_length=6)
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "validation")]
    stream = tokenizer(["the film is great .\n"], add_special_tokens=False)["input_ids"][0]
    assert batches[0]["input_ids"][0, 3:].tolist() == stream[:3]  # " = Title = " then the line, no separator
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: (_ for _ in ()).throw(ConnectionError()))
    with pytest.raises(ConnectionError, match="Offline, use local text"):
        get_task("wikitext103").load_split("test")


# --------------------------------------------------------------------------------------------------
# Packing


def test_pack_blocks_is_exact():
    rows = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert pack_blocks(rows, 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the tail (9, 10) does not fill a block
    assert pack_blocks(rows, 4, separator=0) == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_blocks([[1, 2]], 3) == []
    with pytest.raises(ValueError, match="at least 2 tokens"):
        pack_blocks(rows, 1)


def test_batches_are_the_token_stream_in_blocks_with_next_token_labels(text_file):
    tokenizer = tiny_tokenizer()
    task = text_task(text_file)
    batches = make_batches(task, tokenizer, "train", batch_size=5, max_length=BLOCK)
    ids = torch.cat([batch["input_ids"] for batch in batches])
    stream = [token for line in task.load_split("train")["text"]
              for token in tokenizer(line, add_special_tokens=False)["input_ids"]]
    assert ids.shape == (len(stream) // BLOCK, BLOCK)
    assert ids.flatten().tolist() == stream[:ids.numel()]
    labels = torch.cat([batch["labels"] for batch in batches])
    assert torch.equal(labels[:, :-1], ids[:, 1:])
    assert (labels[:, -1] == IGNORE_INDEX).all()
    assert all(batch["attention_mask"].all() for batch in batches)


def test_text_too_short_for_one_block_is_named(tmp_path):
    task = text_task(write_text(tmp_path / "short.txt", lines=10))
    with pytest.raises(ValueError, match=r"the test text of task 'local-text' holds \d+ tokens, fewer than one "
                                         r"block of 64"):
        make_batches(task, tiny_tokenizer(), "test", max_length=64)


# --------------------------------------------------------------------------------------------------
# Fisher, perplexity, compression


def _brute_force_fisher(model, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ over blocks of each block's own squared weight gradient of the model's loss with labels = input_ids
    (transformers shifts them: the mean next-token loss), summed over output features; one block at a time."""
    targets = find_targets(model)
    totals = {name: torch.zeros(dense_weight(module).shape[1]) for name, module in targets.items()}
    for block in blocks:
        model.zero_grad()
        model(input_ids=block[None], labels=block[None]).loss.backward()
        for name, module in targets.items():
            grad = module.weight.grad
            # Linear stores (out, in); GPT-2's Conv1D stores (in, out).
            totals[name] += (grad.pow(2).sum(0) if isinstance(module, torch.nn.Linear) else grad.pow(2).sum(1))
    return totals


def test_per_example_fisher_of_lm_blocks_equals_a_per_block_loop(causal_lm, text_file):
    batches = make_batches(text_task(text_file), tiny_tokenizer(), "train", batch_size=3, max_length=BLOCK, limit=7)
    exact = estimate_fisher(causal_lm, batches)
    reference = _brute_force_fisher(causal_lm, torch.cat([batch["input_ids"] for batch in batches]))
    assert set(exact) == set(reference)
    for name in reference:
        torch.testing.assert_close(exact[name], reference[name], rtol=1e-4, atol=1e-9)


def test_perplexity_is_exp_of_the_mean_token_loss(causal_lm, text_file):
    task = text_task(text_file)
    result = evaluate_model(causal_lm, tiny_tokenizer(), task, "train", batch_size=4, max_length=BLOCK)
    blocks = torch.cat([batch["input_ids"] for batch in make_batches(task, tiny_tokenizer(), "train",
                                                                     max_length=BLOCK)])
    with torch.no_grad():
        losses = [causal_lm(input_ids=block[None], labels=block[None]).loss.item() for block in blocks]
    by_hand = math.exp(sum(loss * (BLOCK - 1) for loss in losses) / ((BLOCK - 1) * len(blocks)))
    assert result.metrics["perplexity"] == pytest.approx(by_hand, rel=1e-5)
    assert result.num_examples == len(blocks)
    assert [tokens for _, tokens in result.block_losses] == [BLOCK - 1] * len(blocks)
    interval = result.intervals["perplexity"]
    assert interval.method == "bootstrap" and interval.low < result.metrics["perplexity"] < interval.high


def test_perplexity_interval_is_a_seeded_bootstrap_over_blocks():
    blocks = [(float(loss), 10) for loss in np.random.default_rng(0).uniform(20, 40, size=30)]
    assert perplexity(blocks) == pytest.approx(math.exp(sum(loss for loss, _ in blocks) / 300))
    interval = perplexity_interval(blocks)
    assert interval.low < perplexity(blocks) < interval.high
    assert perplexity_interval(blocks) == interval  # the same blocks, the same interval
    assert perplexity_interval(blocks, seed=1) != interval
    single = perplexity_interval(blocks[:1])
    assert (single.low, single.high) == pytest.approx((perplexity(blocks[:1]),) * 2)


def test_perplexity_difference_is_paired_over_the_same_blocks():
    rng = np.random.default_rng(0)
    blocks = [(float(loss), 10) for loss in rng.uniform(20, 40, size=30)]
    assert perplexity_difference(blocks, blocks).value == 0.0
    assert perplexity_difference(blocks, blocks).inside_noise  # a model against itself: exactly no difference
    worse = [(loss + 5.0, tokens) for loss, tokens in blocks]  # every block 0.5 nats per token worse
    shift = perplexity_difference(worse, blocks)
    assert shift.value == pytest.approx(perplexity(worse) - perplexity(blocks))
    assert shift.verdict == "higher" and shift.interval.low > 0  # paired: the shared spread cancels
    with pytest.raises(ValueError, match="same blocks"):
        perplexity_difference(blocks[:10], blocks)


def test_paired_ratio_of_two_models_on_the_same_blocks():
    rng = np.random.default_rng(0)
    reference = [(float(loss), 10) for loss in rng.uniform(20, 40, size=30)]
    shifted = [(loss + 10 * 0.1, tokens) for loss, tokens in reference]  # every token 0.1 nats worse
    ratio, low, high = perplexity_ratio(shifted, reference)
    assert ratio == pytest.approx(math.exp(0.1)) and (low, high) == pytest.approx((math.exp(0.1),) * 2)
    with pytest.raises(ValueError, match="same blocks"):
        perplexity_ratio(reference[:5], reference)


def test_pairing_removes_the_blocks_shared_difficulty():
    rng = np.random.default_rng(0)
    reference = [(float(loss), 10) for loss in rng.uniform(20, 40, size=30)]
    noisy = [(loss + float(rng.normal(1.0, 3.0)), tokens) for loss, tokens in reference]
    paired = perplexity_difference(noisy, reference).interval
    alone = perplexity_interval(noisy)
    # The difference is far surer than either model's own interval: hard blocks are hard for both.
    assert paired.high - paired.low < 0.5 * (alone.high - alone.low)


def test_full_rank_compression_reproduces_perplexity(causal_lm, text_file):
    task = text_task(text_file)
    batches = make_batches(task, tiny_tokenizer(), "test", batch_size=4, max_length=BLOCK)
    dense = evaluate_model(causal_lm, None, task, "test", batches=batches).metrics["perplexity"]
    full = {name: min(dense_weight(module).shape) for name, module in find_targets(causal_lm).items()}
    compress_(causal_lm, CompressionConfig(method="svd", keep_dense_past_break_even=False).with_ranks(full))
    assert sum(isinstance(module, LowRankLinear) for module in causal_lm.modules()) == len(full)  # all factorized
    compressed = evaluate_model(causal_lm, None, task, "test", batches=batches).metrics["perplexity"]
    assert compressed == pytest.approx(dense, rel=1e-4)


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_evaluate_on_a_text_file_reports_perplexity(tmp_path, text_file, cache_dir, capsys):
    model_dir = tmp_path / "lm"
    model = tiny_llama()
    model.save_pretrained(model_dir)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_dir), "--data-files", str(text_file), "--max-length",
                 str(BLOCK), "--batch-size", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = evaluate_model(model, tokenizer, text_task(text_file), "test", batch_size=4, max_length=BLOCK)
    assert result["metrics"]["perplexity"] == pytest.approx(expected.metrics["perplexity"], rel=1e-6)
    assert result["intervals"]["perplexity"] == pytest.approx(expected.intervals["perplexity"].to_dict())
    assert result["task"] == "local-text"
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "(lower is better)" in printed and "95% interval" in printed


def test_cli_compresses_a_causal_lm_with_kfac_and_evaluates_the_saved_model(tmp_path, text_file, cache_dir):
    model_dir = tmp_path / "lm"
    tiny_gpt2().save_pretrained(model_dir)  # Conv1D layers, saved and reloaded as low-rank pairs
    tiny_tokenizer().save_pretrained(model_dir)
    data = ["--data-files", str(text_file), "--max-length", str(BLOCK), "--batch-size", "4"]
    out = tmp_path / "compressed"
    assert main(["compress", "--model", str(model_dir), *data, "--method", "kfac", "--param-budget", "0.5",
                 "--fisher-examples", "8", "--output", str(out), "--json", str(tmp_path / "c.json")]) == 0
    compressed = json.loads((tmp_path / "c.json").read_text())
    assert compressed["fisher"]["num_examples"] == 8 and compressed["params_after"] < compressed["params_before"]
    assert main(["evaluate", "--model", str(out), *data, "--json", str(tmp_path / "e.json")]) == 0
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["params"] == compressed["params_after"]
    assert 1 < saved["metrics"]["perplexity"] < 10 * VOCAB


def test_finetuning_a_causal_lm_uses_the_next_token_loss(text_file):
    from fwsvd.evaluate.finetune import _loss

    model = tiny_llama()
    batch = make_batches(text_task(text_file), tiny_tokenizer(), "train", batch_size=3, max_length=BLOCK)[0]
    expected = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    torch.testing.assert_close(_loss(model, dict(batch), True), expected)


def test_cli_refuses_a_classifier_for_text(tmp_path, text_file, cache_dir, capsys):
    from conftest import tiny_bert

    model_dir = tmp_path / "classifier"
    tiny_bert().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    assert main(["evaluate", "--model", str(model_dir), "--data-files", str(text_file)]) == 2
    assert ("task 'local-text' (language_modeling) needs a *ForCausalLM model"
            in capsys.readouterr().err)


def test_the_explorer_evaluates_fewer_blocks_than_sentences_by_default():
    # a 256-token block costs what a few hundred sentences do: the default evaluation caps blocks lower
    from fwsvd.view.headline import EVALUATION_BLOCKS, EVALUATION_LIMIT, evaluation_limit

    assert evaluation_limit(214, "perplexity") == EVALUATION_BLOCKS == 64
    assert evaluation_limit(30, "perplexity") == 30
    assert evaluation_limit(1066, "accuracy") == EVALUATION_LIMIT == 512


def test_language_model_evaluation_batches_keep_their_logits_within_the_budget(causal_lm, text_file, monkeypatch):
    import fwsvd.data.batches as batches_module
    from fwsvd.data.batches import evaluation_batch_size

    task, tokenizer = text_task(text_file), tiny_tokenizer()
    whole = evaluate_model(causal_lm, tokenizer, task, "train", batch_size=8, max_length=BLOCK)
    block_bytes = BLOCK * len(tokenizer) * 4
    monkeypatch.setattr(batches_module, "EVALUATION_LOGITS_BYTES", 2 * block_bytes + 1)
    assert evaluation_batch_size(task, tokenizer, 8, BLOCK) == 2
    assert evaluation_batch_size(task, tokenizer, 1, BLOCK) == 1
    capped = evaluate_model(causal_lm, tokenizer, task, "train", batch_size=8, max_length=BLOCK)
    assert (whole.batch_size, capped.batch_size) == (8, 2)
    assert capped.num_examples == whole.num_examples
    assert capped.metrics["perplexity"] == pytest.approx(whole.metrics["perplexity"], rel=1e-6)
    # every method scored, and timed, on the capped batches
    from fwsvd.evaluate.methods import evaluate_methods

    results = evaluate_methods(causal_lm, tokenizer, task, 0.5, fisher=None, methods=("dense", "svd"), role="train",
                               batch_size=8, max_length=BLOCK, latency_rounds=1)
    assert [entry["evaluation"].batch_size for entry in results.values()] == [2, 2]
    assert results["dense"]["metrics"]["perplexity"] == pytest.approx(whole.metrics["perplexity"], rel=1e-6)
    # below one block's logits: one block at a time, never none
    monkeypatch.setattr(batches_module, "EVALUATION_LOGITS_BYTES", block_bytes // 2)
    assert evaluation_batch_size(task, tokenizer, 8, BLOCK) == 1
    # other tasks are batched as asked; a batch size below 1 is refused
    assert evaluation_batch_size(get_task("sst2"), tokenizer, 8, BLOCK) == 8
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluation_batch_size(task, tokenizer, 0, BLOCK)


def test_block_losses_are_those_of_a_float64_log_softmax():
    from fwsvd.evaluate.perplexity import block_losses

    torch.manual_seed(0)
    logits = torch.randn(2, 16, 50_000) * 8  # a large vocabulary, confident logits: where float32 rounds most
    labels = torch.randint(0, 50_000, (2, 16))
    labels[1, 10:] = IGNORE_INDEX
    reference = [(-torch.log_softmax(block.double(), -1)[row_labels != IGNORE_INDEX, row_labels[row_labels != IGNORE_INDEX]]
                  ).sum().item() for block, row_labels in zip(logits, labels)]
    found = block_losses(logits, {"labels": labels})
    assert [count for _, count in found] == [16, 10]
    assert [loss for loss, _ in found] == pytest.approx(reference, rel=1e-12)
