"""What the session works on: the model and task (its source), loaded once per process, and the results
remembered for it (evaluations, sweeps).

State lives in ``st.session_state`` under the keys below, so it survives moving between pages. Models are
loaded once per process (``st.cache_resource``) and never modified: every compression works on a copy.
Nothing here imports torch at module level. The default model and task come from the environment
(:meth:`fwsvd.view.explorer.Source.from_environment`), so tests can point the app at a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import streamlit as st
import ui_imports
import ui_ranks

from fwsvd.storage.locations import demo_is_built, is_demo_model
from fwsvd.view.explorer import Source

if TYPE_CHECKING:
    from fwsvd import DecompositionStore

SOURCE = "source"
EVALUATIONS = "evaluations"
SWEEPS = "sweeps"

PAGES = {
    "model": "pages/1_model_and_task.py",
    "fisher": "pages/2_fisher.py",
    "ranks": "pages/3_rank_explorer.py",
    "compare": "pages/4_compare.py",
    "export": "pages/5_export.py",
}


@dataclass
class Loaded:
    """A loaded model with its tokenizer and task; ``model`` must never be modified."""

    source: Source
    model: Any
    tokenizer: Any
    task: Any
    blocks: list[str] = field(default_factory=list)


def source() -> Source:
    return st.session_state.setdefault(SOURCE, Source.from_environment())


def set_source(new: Source) -> None:
    """Switch model or task: the ranks of the old one no longer apply."""
    if new != st.session_state.get(SOURCE):
        st.session_state[SOURCE] = new
        ui_ranks.forget()


@st.cache_resource(show_spinner=False)
def decomposition_store() -> DecompositionStore:
    """One store for the process: a decomposition computed once serves every rank and every session."""
    from fwsvd import DecompositionStore

    return DecompositionStore()


@st.cache_resource(show_spinner=False)
def task_for(current: Source) -> Any:
    from fwsvd.data.tasks import task_of

    return task_of(current)


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(current: Source) -> Loaded:
    from fwsvd.io.models import load_for_task
    from fwsvd.surgery.targets import find_blocks

    # The task as the model numbers its labels (matched by name, through the source's label map).
    model, tokenizer, task, _ = load_for_task(current.model, task_for(current), label_map=dict(current.label_map))
    return Loaded(current, model, tokenizer, task, find_blocks(model))


def load(current: Source) -> Loaded:
    """``current`` loaded (once per process)."""
    ui_imports.ensure_heavy_imports()
    return _load(current)


def model_is_ready(current: Source) -> bool:
    """False only for a demo ("demo", "demo-ner", ...) before it is built (building takes minutes, so it is
    never implicit)."""
    return not is_demo_model(current.model) or demo_is_built(model=current.model)


def require_ready(current: Source) -> None:
    """Nothing if the model can be loaded now; otherwise a message pointing to the Model & task page, and stop."""
    if not model_is_ready(current):
        st.info(f"The demo model `{current.model}` is not built yet. Build it on the **Model & task** page "
                "(minutes, once).", icon=":material/info:")
        st.page_link(PAGES["model"], label="Go to Model & task", icon=":material/arrow_forward:")
        st.stop()


def require_model() -> Loaded:
    """The current model, loaded; otherwise a message pointing to the Model & task page, and stop."""
    current = source()
    require_ready(current)
    with st.spinner(f"Loading {current.model} …"):
        ui_imports.ensure_heavy_imports()
        return _load(current)


def metric_of(loaded: Loaded) -> str:
    """The task's headline metric (accuracy for the sentiment demo, perplexity for language modelling)."""
    return loaded.task.metric_names[0]


def evaluations() -> dict:
    """Remembered evaluations: {(source, fisher, ranks digest, subset size): {method: result}}."""
    return st.session_state.setdefault(EVALUATIONS, {})


def sweeps() -> dict:
    """Remembered sweeps: {(source, fisher, ratios, subset size): SweepResult}."""
    return st.session_state.setdefault(SWEEPS, {})


def expected_duration(models: int, examples: int, source_key: str) -> str:
    """", about 2 min" for evaluating ``models`` models on ``examples`` examples, from the dense model's time per
    batch (and its batch size: a language model's are capped by its logits' memory) in this session's last
    evaluation of ``source_key`` (each model: its batches, then the latency rounds timed beside the dense model,
    about two batches each); "" before anything was timed."""
    from fwsvd.evaluate.latency import ROUNDS, WARMUP

    timed = [entry["results"]["dense"] for (source, *_), entry in evaluations().items()
             if source == source_key and "dense" in entry["results"]]
    if not timed:
        return ""
    batches = -(-examples // timed[-1]["evaluation"].batch_size) + 2 * (ROUNDS + WARMUP)
    seconds = models * batches * timed[-1]["latency_s_per_batch"]
    return f", about {seconds / 60:.0f} min" if seconds >= 90 else f", about {max(5, round(seconds, -1)):.0f} s"
