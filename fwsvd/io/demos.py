"""The demos fwsvd builds offline, by name: what each is called, its model alias, task, and how it is built.

Each demo is a model made here from registry packages (no hub): ``sentiment`` (MiniLM-L6 on Rotten Tomatoes
reviews, :mod:`fwsvd.io.demo`) ``ner`` (MiniLM-L6 tagging entities in tweets, :mod:`fwsvd.io.demo_ner`) and ``lm`` (the causal language
model SmolLM2-135M on Shakespeare's plays, :mod:`fwsvd.io.demo_lm`).
Its model alias is what ``--model`` and the dashboard accept, and names the demo's task too, so a demo's
model never meets another task by default. The CLI (``fwsvd demo --name``) and model resolution read this
table; a new demo is one entry here and its recipe module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwsvd.config import FisherConfig
from fwsvd.io.demo import demo_info, ensure_demo_model
from fwsvd.io.demo_lm import ensure_lm_demo_model, lm_demo_info, lm_demo_is_built
from fwsvd.io.demo_ner import ensure_ner_demo_model, ner_demo_is_built
from fwsvd.storage.locations import demo_is_built

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Demo:
    """One offline demo."""

    name: str  # what ``fwsvd demo --name`` takes
    model: str  # the model alias: ``--model``, the dashboard's model, a key of storage.locations.DEMO_BUILDS
    task: str  # the task its model was trained for (a name get_task knows)
    title: str  # for people
    #: ``ensure(cache_dir=None, progress=None, force=False) -> Path``: the model's directory, built first if absent
    ensure: Callable[..., Path]
    #: ``is_built(cache_dir=None) -> bool``: whether ``ensure`` would return at once
    is_built: Callable[..., bool]
    #: ``info(directory) -> dict``: what the build recorded (recipe, split, ``test_metrics``)
    info: Callable[[Path], dict[str, Any]] = demo_info
    #: about how long the dashboard's build takes on 2 idle CPU cores — the model (fresh-clone CI: sentiment
    #: 402 s, NER 667 s, LM 73 s), then its Fisher, snapshot and headline — what the build button promises
    build_minutes: int = 10

    @property
    def fisher(self) -> FisherConfig:
        """The Fisher settings the demo opens with (``fwsvd demo`` caches that Fisher and the explorer's
        snapshot): :meth:`FisherConfig.for_model` of its alias, which the dashboard reads without torch."""
        return FisherConfig.for_model(self.model)


#: The demos by name, the default first.
DEMOS: dict[str, Demo] = {
    "sentiment": Demo("sentiment", "demo", "demo", "Rotten Tomatoes review sentiment", ensure_demo_model,
                      demo_is_built),
    "ner": Demo("ner", "demo-ner", "demo-ner", "Twitter named entities", ensure_ner_demo_model, ner_demo_is_built,
                build_minutes=15),
    "lm": Demo("lm", "demo-lm", "demo-lm", "Shakespeare, next-word prediction (SmolLM2-135M)", ensure_lm_demo_model,
               lm_demo_is_built, info=lm_demo_info, build_minutes=15),
}
DEFAULT_DEMO = "sentiment"


def get_demo(name: str) -> Demo:
    """The demo called ``name``; ValueError listing the demos otherwise."""
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; demos: {', '.join(DEMOS)}")
    return DEMOS[name]


def demo_of_model(model: object) -> Demo | None:
    """The demo whose model alias is ``model`` ("demo", "demo-ner", ...), else None (a directory or hub id)."""
    return next((demo for demo in DEMOS.values() if demo.model == str(model)), None)
