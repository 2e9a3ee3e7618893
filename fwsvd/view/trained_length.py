"""The token length a model was fine-tuned with, where it is recorded: the default max length for its Fisher and
its evaluation, so that both see examples as training did.

:func:`fwsvd.evaluate.finetune.finetune_` records it in the model's config (``config.json`` key
:data:`RECORD_KEY`, kept by ``save_pretrained`` and ``save_compressed``); a demo built before that records it in
its recipe (``fwsvd_demo.json``). Torch-free and JSON only, so the dashboard reads it before loading a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The key in a model's config.json.
RECORD_KEY = "fwsvd_max_length"
_DEMO_INFO = "fwsvd_demo.json"


def recorded_max_length(model_source: str | os.PathLike[str] | None) -> int | None:
    """The fine-tuning max length recorded in the model directory ``model_source``; None for a hub id, an alias,
    a directory without a record, or a record that is not a positive whole number."""
    if model_source is None:
        return None
    directory = Path(model_source).expanduser()
    if not directory.is_dir():
        return None
    recorded = _read(directory / "config.json").get(RECORD_KEY)
    if recorded is None:
        recipe = _read(directory / _DEMO_INFO).get("recipe")
        recorded = recipe.get("max_length") if isinstance(recipe, dict) else None
    valid = isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0
    return recorded if valid else None


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or damaged: nothing recorded
        return {}
    return document if isinstance(document, dict) else {}
