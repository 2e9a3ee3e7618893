"""A tiny WordPiece tokenizer and small local data files, built offline for the data/model tests.

The vocabulary stays below conftest.VOCAB (120) so its ids fit the tiny random models.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from transformers import BertTokenizer

WORDS = [
    "the", "movie", "film", "was", "is", "great", "good", "fun", "bad", "awful", "boring", "plot",
    "a", "an", "and", "not", "very", "really", "acting", "story", "loved", "hated", "it",
    "john", "smith", "lives", "in", "works", "at", "acme", "london", "pa", "##ris", "##s", "##ing",
    "what", "how", "who", "same", "question", "?", ".", ",",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

POSITIVE = ["the movie was great", "a really fun film", "loved it", "great acting and story", "good fun",
            "the story is very good", "loved the acting", "a great film"]
NEGATIVE = ["the movie was bad", "a really boring film", "hated it", "awful acting and plot", "bad plot",
            "the story is very awful", "hated the acting", "a boring film"]


def tiny_tokenizer() -> BertTokenizer:
    """A lower-casing WordPiece (fast) tokenizer over ``WORDS``."""
    return BertTokenizer(vocab={token: i for i, token in enumerate(SPECIALS + WORDS)}, do_lower_case=True)


def sentiment_frame(repeats: int = 5) -> pd.DataFrame:
    """Reviews with string labels; the label follows from the words, so a tiny model can learn it."""
    rows = [(text, "positive") for text in POSITIVE] + [(text, "negative") for text in NEGATIVE]
    return pd.DataFrame(rows * repeats, columns=["review", "sentiment"])


def sentiment_task(directory: Path, repeats: int):
    """A local task over one CSV of ``sentiment_frame(repeats)`` (16 rows a repeat) serving every split."""
    from fwsvd.data.tasks import local_task

    path = directory / "reviews.csv"
    sentiment_frame(repeats=repeats).to_csv(path, index=False)
    return local_task({"train": path, "validation": path, "test": path},
                      text_column="review", label_column="sentiment")
