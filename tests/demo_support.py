"""Tiny stand-ins for the demos' builds: the same files as the real recipes, made in a second (a random
2-block BERT with the MiniLM tokenizer and the demo task's head), so the registry, the CLI and the dashboard's
demo paths are tested without minutes of fine-tuning. ``TINY_BUILDS`` maps each demo's name to
(the module whose ``_build`` to replace, the tiny build)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

from app_support import minilm_tokenizer_path
from fwsvd.data.tasks import get_task
from fwsvd.io import demo, demo_ner
from fwsvd.storage.locations import DEMO_INFO_FILE


def _tiny_build(model_class: type, task_name: str, metrics: dict[str, float]) -> Callable[[Path, object], None]:
    def build(directory: Path, progress: object) -> None:
        task = get_task(task_name)
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_path())
        # 128 positions, as the default Fisher's max length needs.
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48, max_position_embeddings=128,
                            num_labels=task.num_labels, id2label=dict(enumerate(task.label_names)),
                            label2id={name: i for i, name in enumerate(task.label_names)})
        model_class(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / DEMO_INFO_FILE).write_text(json.dumps({"test_metrics": metrics}))

    return build


tiny_sentiment_build = _tiny_build(BertForSequenceClassification, "demo", {"accuracy": 0.5})
tiny_ner_build = _tiny_build(BertForTokenClassification, "demo-ner",
                             {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.5})

TINY_BUILDS = {"sentiment": (demo, tiny_sentiment_build), "ner": (demo_ner, tiny_ner_build)}
