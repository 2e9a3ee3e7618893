"""Several threads on one model, tokenizer and store — what the dashboard's sessions do at once.

The dashboard loads the model and tokenizer once per process (st.cache_resource) and keeps one decomposition
store: two sessions computing a Fisher and evaluating at the same time run the library calls below on the
same objects from two threads. Their results must equal a run alone, the shared objects must be exactly as
they were afterwards, and the store must compute each decomposition once and stay within its memory bound.

AppTest cannot drive two sessions in parallel threads: each run installs a process-wide mock Runtime
(``Runtime._instance``) and clears it when it ends, under the other session's script. So the sessions are
stood in for by threads making the pages' library calls (task_fisher, evaluate_model, evaluate_methods,
compressed_copy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from conftest import random_batch, tiny_bert
from fwsvd.data import batches as batches_module
from fwsvd.data.batches import make_batches
from fwsvd.data.tasks import local_task
from fwsvd.evaluate.evaluation import evaluate_model, predict
from fwsvd.evaluate.methods import evaluate_methods
from fwsvd.factorize import store as store_module
from fwsvd.factorize.store import DecompositionStore
from fwsvd.fisher.estimate import estimate_fisher
from fwsvd.fisher.task import task_fisher
from fwsvd.storage.sharing import exclusive, lock_of
from fwsvd.surgery.compress import compressed_copy, set_ranks_
from fwsvd.surgery.targets import find_targets
from tiny_text import sentiment_frame, tiny_tokenizer

REPEATS = 12


def _run_together(*jobs: Callable[[], object], timeout: float = 300) -> list[object]:
    """Run the jobs in one thread each, released together by a barrier; their results, or their error."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int, job: Callable[[], object]) -> None:
        try:
            barrier.wait()
            results[index] = job()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index, job)) for index, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish: deadlock?"
    if errors:
        raise errors[0]
    return results


def _state(model: torch.nn.Module) -> dict[str, object]:
    """Everything of a model that Fisher estimation or evaluation may change for a while."""
    modules = dict(model.named_modules())
    return {
        "parameters": {name: parameter.detach().clone() for name, parameter in model.named_parameters()},
        "grads": {name: parameter.grad for name, parameter in model.named_parameters()},
        "requires_grad": {name: parameter.requires_grad for name, parameter in model.named_parameters()},
        "training": {name: module.training for name, module in modules.items()},
        "hooks": {name: [list(getattr(module, hooks)) for hooks in
                         ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")]
                  for name, module in modules.items()},
    }


def _assert_unchanged(model: torch.nn.Module, before: dict[str, object]) -> None:
    after = _state(model)
    for name, value in before["parameters"].items():
        assert torch.equal(after["parameters"][name], value), name
    for part in ("grads", "requires_grad", "training", "hooks"):
        assert after[part] == before[part], part


def _shared_model() -> torch.nn.Module:
    """A tiny BERT in a mixed state that a careless pass would lose: dropout modules in train mode, the
    rest in eval mode, the word embeddings frozen."""
    model = tiny_bert()
    model.train()
    model.bert.encoder.layer[0].eval()
    model.classifier.eval()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "reviews.csv"
    sentiment_frame(repeats=4).to_csv(path, index=False)  # 64 rows
    return local_task(path, text_column="review", label_column="sentiment", validation_fraction=0.25)


@pytest.fixture
def forget_tokenised():
    """Each test tokenises for itself (the memo is process-wide)."""
    batches_module._ENCODED.clear()
    yield
    batches_module._ENCODED.clear()


def _fisher(model, tokenizer, task, max_length: int) -> dict[str, torch.Tensor]:
    return estimate_fisher(model, make_batches(task, tokenizer, "train", batch_size=8, max_length=max_length,
                                               shuffle=True, seed=1))


def _evaluation(model, tokenizer, task, max_length: int) -> tuple[dict[str, float], list[torch.Tensor]]:
    result = evaluate_model(model, tokenizer, task, "validation", batch_size=8, max_length=max_length)
    logits, _ = predict(model, make_batches(task, tokenizer, "validation", batch_size=8, max_length=max_length))
    return result.metrics, logits


def test_fisher_and_evaluation_on_one_model_at_once_equal_each_alone(task, forget_tokenised, one_torch_thread):
    model, tokenizer = _shared_model(), tiny_tokenizer()
    before = _state(model)
    # A new max_length each round is a new tokenisation: the two threads also share the tokenizer's work.
    lengths = [12 + round_ for round_ in range(REPEATS)]
    alone = [(_fisher(model, tokenizer, task, length), _evaluation(model, tokenizer, task, length))
             for length in lengths]
    _assert_unchanged(model, before)
    batches_module._ENCODED.clear()

    for length, (fisher_alone, (metrics_alone, logits_alone)) in zip(lengths, alone):
        fisher, (metrics, logits) = _run_together(lambda: _fisher(model, tokenizer, task, length),
                                                  lambda: _evaluation(model, tokenizer, task, length))
        assert fisher.keys() == fisher_alone.keys()
        for name in fisher:
            assert torch.equal(fisher[name], fisher_alone[name]), name
        assert metrics == metrics_alone
        assert all(torch.equal(a, b) for a, b in zip(logits, logits_alone, strict=True))
    _assert_unchanged(model, before)


def test_two_sessions_task_fisher_and_evaluate_methods(task, tmp_path, forget_tokenised, one_torch_thread):
    """The pages' own calls: one session computes the task Fisher (a fresh cache each time), the other
    evaluates the dense model and both methods' compressed copies, over one shared store."""
    model, tokenizer = _shared_model(), tiny_tokenizer()
    before = _state(model)
    fisher = task_fisher(model, tokenizer, task, cache_dir=tmp_path / "reference").importances
    store = DecompositionStore(use_disk=False)

    def evaluate() -> dict:
        return evaluate_methods(model, tokenizer, task, 4, fisher=fisher, methods=("dense", "svd", "fwsvd"),
                                batch_size=8, store=store)

    alone = evaluate()
    for round_ in range(REPEATS // 3):
        computed, evaluated = _run_together(
            lambda: task_fisher(model, tokenizer, task, cache_dir=tmp_path / f"round{round_}"), evaluate)
        assert not computed.from_cache
        for name in fisher:
            assert torch.equal(computed.importances[name], fisher[name]), name
        assert {method: result["metrics"] for method, result in evaluated.items()} == \
               {method: result["metrics"] for method, result in alone.items()}
    _assert_unchanged(model, before)


def test_a_compressed_copy_is_not_held_up_by_the_shared_models_lock():
    model = tiny_bert()
    compressed, _ = compressed_copy(model, 4, method="svd", store=DecompositionStore(use_disk=False))
    batch = random_batch()
    with exclusive(model):  # another session's Fisher pass on the dense model, say
        (logits,) = _run_together(lambda: predict(compressed, [batch])[0], timeout=60)
    assert logits[0].shape == (3, 2)


def test_tokenizer_used_by_two_threads(tmp_path, forget_tokenised):
    """Fast tokenizers raise "Already borrowed" when one thread changes the truncation settings while
    another encodes; every tokenisation holds the tokenizer's lock."""
    path = tmp_path / "many.csv"
    sentiment_frame(repeats=100).to_csv(path, index=False)  # 1600 rows: a long enough encode
    task = local_task(path, text_column="review", label_column="sentiment")
    tokenizer = tiny_tokenizer()
    expected = {length: make_batches(task, tokenizer, "train", max_length=length) for length in (6, 7)}
    for _ in range(REPEATS):
        batches_module._ENCODED.clear()
        results = _run_together(lambda: make_batches(task, tokenizer, "train", max_length=6),
                                lambda: make_batches(task, tokenizer, "train", max_length=7))
        for length, batches in zip((6, 7), results):
            assert len(batches) == len(expected[length])
            assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, expected[length]))


def test_locks_are_per_object_reentrant_and_forgotten():
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert lock_of(first) is lock_of(first)
    assert lock_of(first) is not lock_of(second)
    with exclusive(first), exclusive(first):  # re-entrant
        assert _run_together(lambda: _can_lock(first)) == [False]
        assert _run_together(lambda: _can_lock(second)) == [True]
    assert _run_together(lambda: _can_lock(first)) == [True]
    with exclusive(None):
        pass
    key = id(second)
    del second
    from fwsvd.storage import sharing

    assert key not in sharing._locks
    with pytest.raises(TypeError, match="cannot be locked"):
        lock_of(3)


def _can_lock(obj: object) -> bool:
    lock = lock_of(obj)
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


# --------------------------------------------------------------------------------------------------
# The decomposition store


@pytest.fixture
def slow_svd(monkeypatch):
    """decompose() made slow enough that threads asking for the same key overlap; records the most calls
    running at once."""
    original = store_module.decompose
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(weight, importance=None, **options):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return original(weight, importance, **options)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(store_module, "decompose", slow)
    return most


@pytest.mark.parametrize("use_disk", [False, True])
def test_store_computes_each_key_once_under_concurrent_gets(slow_svd, tmp_path, use_disk):
    model = tiny_bert()
    layers = list(find_targets(model).values())
    importance = {id(layer): torch.rand(layer.weight.shape[1]) + 0.1 for layer in layers}
    store = DecompositionStore(tmp_path, use_disk=use_disk)

    def fetch_all(reverse: bool) -> list:
        order = layers[::-1] if reverse else layers
        found = {}
        for layer in order:
            found[id(layer), "svd"] = store.get(layer)
            found[id(layer), "fwsvd"] = store.get(layer, importance[id(layer)])
            store.curves(layer, importance[id(layer)], importance[id(layer)])
        return found

    results = _run_together(*(lambda reverse=bool(i % 2): fetch_all(reverse) for i in range(4)))
    assert store.computed == 2 * len(layers)  # each (layer, method) once, though four threads asked
    assert slow_svd[0] > 1  # ... while different layers were decomposed at the same time
    for found in results[1:]:
        assert all(found[key] is results[0][key] for key in found)
    reference = DecompositionStore(use_disk=False)
    for layer in layers:
        assert torch.equal(results[0][id(layer), "svd"].left, reference.get(layer).left)


def test_store_memory_is_bounded_and_evicted_decompositions_come_back_from_disk(tmp_path):
    model = tiny_bert()
    fisher = {name: torch.rand(layer.weight.shape[1]) + 0.1 for name, layer in find_targets(model).items()}
    first_name, first_layer = next(iter(find_targets(model).items()))
    one = store_module._decomposition_bytes(DecompositionStore(use_disk=False).get(first_layer))
    store = DecompositionStore(tmp_path, max_bytes=3 * one)
    compressed, _ = compressed_copy(model, 4, method="fwsvd", fisher=fisher, store=store)
    assert 0 < store.memory_bytes <= store.max_bytes
    computed = store.computed
    assert computed == len(fisher)
    store.flush()

    again = store.get(first_layer, fisher[first_name])  # evicted long ago: read back from the disk cache
    assert store.computed == computed
    fresh = DecompositionStore(use_disk=False).get(first_layer, fisher[first_name])
    assert torch.equal(again.left, fresh.left) and torch.equal(again.right, fresh.right)
    assert store.memory_bytes <= store.max_bytes

    # The compressed model keeps its decompositions: a new rank is still a cut, even after eviction.
    store.clear_memory()
    set_ranks_(compressed, 8)
    expected, _ = compressed_copy(model, 8, method="fwsvd", fisher=fisher, store=DecompositionStore(use_disk=False))
    batch = random_batch()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        assert torch.allclose(compressed(**inputs).logits, expected(**inputs).logits, atol=1e-6)


def test_store_bound_in_memory_only_recomputes(tmp_path):
    model = tiny_bert()
    layers = list(find_targets(model).values())
    store = DecompositionStore(use_disk=False, max_bytes=0)  # keeps nothing
    first = store.get(layers[0])
    assert store.memory_bytes == 0
    second = store.get(layers[0])
    assert store.computed == 2 and torch.equal(first.left, second.left)


def test_store_bound_from_the_environment(monkeypatch):
    monkeypatch.setenv("FWSVD_STORE_MAX_BYTES", "12345")
    assert DecompositionStore(use_disk=False).max_bytes == 12345
    monkeypatch.setenv("FWSVD_STORE_MAX_BYTES", "5e8")
    assert DecompositionStore(use_disk=False).max_bytes == 500_000_000
    assert DecompositionStore(use_disk=False, max_bytes=7).max_bytes == 7
    monkeypatch.setenv("FWSVD_STORE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="FWSVD_STORE_MAX_BYTES"):
        DecompositionStore(use_disk=False)
    monkeypatch.delenv("FWSVD_STORE_MAX_BYTES")
    assert DecompositionStore(use_disk=False).max_bytes == store_module.DEFAULT_MAX_BYTES
