"""The dashboard's headline: what was compressed and what it cost, readable without torch.

At first sight a stakeholder sees the whole model's size as a share of the dense model, the task metric of the
dense model and of each compared method (each with its 95% interval and, for a weighted method, its paired
difference from SVD on the same examples) and the measured speed-up with its spread. ``fwsvd demo`` evaluates
the default methods at the default ranks ahead of time (:func:`fwsvd.io.headline.prepare_headline`) and stores
the figures here, keyed like the rank explorer's snapshot (model files, Fisher settings) plus the ranks' digest
and the number of validation examples, so the first page shows them at once; the dashboard reads them only
while its ranks are those ranks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fwsvd.storage.atomic import write_text_atomic
from fwsvd.storage.locations import default_cache_dir, key_digest
from fwsvd.view.metrics import is_language_model_metric

logger = logging.getLogger(__name__)

#: Bump when what a headline file holds changes, so old files are recomputed.
HEADLINE_FORMAT = 1
#: Validation examples the explorer evaluates by default (and the headline is measured on).
EVALUATION_LIMIT = 512
#: The same for language modelling, in blocks: 64 blocks of the LM demo's 256 tokens are 16,384 predicted
#: tokens, about a minute per model on 2 CPU cores (a block costs a few hundred sentences).
EVALUATION_BLOCKS = 64

#: Tasks named for what they are, for people (a task's own name elsewhere).
TASK_TITLES = {"demo": "Rotten Tomatoes review sentiment (positive or negative)",
               "demo-ner": "named entities in tweets (10 entity types)",
               "demo-lm": "next-word prediction on Shakespeare's plays"}
#: The demo models, for people.
MODEL_TITLES = {"demo": "The demo model (MiniLM-L6)", "demo-ner": "The NER demo model (MiniLM-L6)",
                "demo-lm": "SmolLM2-135M (the language-model demo)"}


def task_title(task: str, label: str | None = None) -> str:
    """What ``task`` is, in words: "Rotten Tomatoes review sentiment …" for the demo, else ``label`` or the name."""
    return TASK_TITLES.get(task, label or task)


def model_title(model: str) -> str:
    """What ``model`` is, in words: the demos by name, any other as its path or hub id (in code style)."""
    return MODEL_TITLES.get(model, f"`{model}`")


def evaluation_limit(validation_size: int, metric: str) -> int:
    """The validation examples (blocks, for perplexity) an evaluation at the explorer's defaults uses."""
    return min(EVALUATION_BLOCKS if is_language_model_metric(metric) else EVALUATION_LIMIT, int(validation_size))


@dataclass(frozen=True)
class Figures:
    """One model's measured figures: the metric with its interval, parameters, and for a compressed copy its
    difference from SVD (``vs_svd``: value, low, high, inside_noise, verdict) and speed-up over the dense model
    (``speedup``: median, low, high: the interquartile range of per-round ratios)."""

    value: float
    low: float | None
    high: float | None
    params: int
    num_examples: int
    vs_svd: dict[str, Any] | None = None
    speedup: dict[str, float] | None = None


@dataclass(frozen=True)
class Headline:
    """The figures of the dense model and each method (``figures[method]``, ``"dense"`` included) at the ranks
    whose digest is ``ranks_digest``, on ``num_examples`` validation examples, for ``metric``."""

    metric: str
    ranks_digest: str
    num_examples: int
    figures: dict[str, Figures] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "ranks_digest": self.ranks_digest, "num_examples": self.num_examples,
                "figures": {method: asdict(figures) for method, figures in self.figures.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Headline:
        return cls(str(data["metric"]), str(data["ranks_digest"]), int(data["num_examples"]),
                   {str(method): Figures(**figures) for method, figures in data["figures"].items()})

def headline_of(results: Mapping[str, Mapping[str, Any]], metric: str, digest: str) -> Headline:
    """The headline of :func:`fwsvd.evaluate.methods.evaluate_methods`' ``results`` (``"dense"`` and each
    method's entry; intervals, differences and speed-ups read by their ``low`` / ``high`` / ``to_dict``, so
    no torch is needed) for ``metric`` at the ranks whose digest is ``digest``."""
    figures = {}
    for method, entry in results.items():
        interval = entry.get("intervals", {}).get(metric)
        vs_svd = (entry.get("vs_svd") or {}).get(metric)
        speedup = entry.get("speedup")
        figures[method] = Figures(
            value=float(entry["metrics"][metric]), low=interval.low if interval else None,
            high=interval.high if interval else None, params=int(entry["params"]),
            num_examples=int(entry["num_examples"]), vs_svd=vs_svd.to_dict() if vs_svd else None,
            speedup=speedup.to_dict() if speedup else None)
    num_examples = next(iter(figures.values())).num_examples
    return Headline(metric, digest, num_examples, figures)


def headline_key(snapshot_key: Mapping[str, Any], ranks_digest: str, limit: int) -> dict[str, Any]:
    """The headline's key: the rank explorer's snapshot key (:func:`fwsvd.view.explorer.snapshot_key`), the
    ranks' digest and the number of validation examples."""
    return {**snapshot_key, "kind": "headline", "ranks": ranks_digest, "limit": int(limit)}


def headline_path(key: Mapping[str, Any], cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "snapshots" / f"headline-{key_digest({**key, 'format': HEADLINE_FORMAT})}.json"


def save_headline(key: Mapping[str, Any], headline: Headline, cache_dir: str | Path | None = None) -> Path:
    """Write ``headline`` under ``key`` atomically; returns its path."""
    return write_text_atomic(headline_path(key, cache_dir), json.dumps(headline.to_dict(), indent=1))


def load_headline(key: Mapping[str, Any], cache_dir: str | Path | None = None) -> Headline | None:
    """The headline saved under ``key``, or None when there is none or it cannot be read (logged)."""
    path = headline_path(key, cache_dir)
    if not path.is_file():
        return None
    try:
        return Headline.from_dict(json.loads(path.read_text()))
    except (OSError, KeyError, TypeError, ValueError) as error:
        logger.warning("the headline %s cannot be read (%s); it will be recomputed", path, error)
        return None
