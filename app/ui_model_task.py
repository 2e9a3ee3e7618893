"""The Model page's choice follows the model: the task a model records for itself becomes the chosen task.

A directory written by ``fwsvd compress`` records the task it was made on (``extra.task``, or its config's
``data.task``); a Hugging Face classifier may name its ``finetuning_task`` in ``config.json`` ("sst-2" for
SST-2). Read without loading the model; a model that records nothing leaves the choice as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from fwsvd.data.tasks import TASK_NAMES
from fwsvd.io.persistence import INFO_FILE

#: The widgets this sets (the Model page's keys).
TASK_WIDGET, DATA_KIND_WIDGET = "task_name", "data_kind"


def recorded_task(model: str) -> str | None:
    """The registered task ``model`` (a local directory) records, or None."""
    directory = Path(model).expanduser()
    candidates: list[object] = []
    try:
        if (directory / INFO_FILE).is_file():
            info = json.loads((directory / INFO_FILE).read_text())
            candidates += [info.get("extra", {}).get("task"), ((info.get("config") or {}).get("data") or {}).get("task")]
        if (directory / "config.json").is_file():
            candidates.append(json.loads((directory / "config.json").read_text()).get("finetuning_task"))
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable file is reported when the model is loaded
    names = [str(name).lower().replace("-", "") for name in candidates if name]
    return next((name for name in names if name in TASK_NAMES), None)


def follow_model(model_key: str) -> None:
    """Widget callback: the model's text changed; choose the task it records, if any."""
    task = recorded_task(str(st.session_state.get(model_key, "")).strip())
    if task is not None:
        st.session_state[TASK_WIDGET] = task
        st.session_state[DATA_KIND_WIDGET] = "task"
