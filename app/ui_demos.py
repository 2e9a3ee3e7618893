"""The demo picker of the Model & task page: one entry per demo of :data:`fwsvd.io.demos.DEMOS`, whether it is
built, and one button that builds it (once, with progress: the model, then its Fisher and token statistics)
and opens it, so that every page finds its Fisher, statistics and explorer snapshot cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import streamlit as st
import ui_fisher
import ui_session
from ui_format import progress_bar

from fwsvd.view.explorer import Source

if TYPE_CHECKING:
    from fwsvd.io.demos import Demo

Progress = Callable[[int, int], None]


def source_of(demo: Demo) -> Source:
    """The session's source for ``demo``: its model alias on its own task."""
    return Source(model=demo.model, task=demo.task)


def is_demo_source(current: Source) -> bool:
    """Whether ``current`` is a demo on its own task (not, say, the demo's model on another task)."""
    from fwsvd.io.demos import demo_of_model

    demo = demo_of_model(current.model)
    return demo is not None and current == source_of(demo)


def current_demo(current: Source) -> Demo:
    """The demo ``current`` is (the default demo when it is none, e.g. your own model)."""
    from fwsvd.io.demos import DEFAULT_DEMO, DEMOS, demo_of_model

    return demo_of_model(current.model) if is_demo_source(current) else DEMOS[DEFAULT_DEMO]


def _caption(demo: Demo) -> str:
    if demo.is_built():
        return f"`--model {demo.model}`: built"
    return f"`--model {demo.model}`: not built yet (about {demo.build_minutes} minutes, once)"


def build(demo: Demo, model_progress: Progress, fisher_progress: Progress, headline_progress: Progress) -> None:
    """Build ``demo``'s model if absent, then cache the Fisher it opens with, its token statistics, the rank
    explorer's snapshot and its headline — what ``fwsvd demo`` prepares — so that the explorer opens with every
    card filled (each step returns at once when its result is cached)."""
    from fwsvd.io.explorer import prepare_explorer
    from fwsvd.io.headline import prepare_headline

    demo.ensure(progress=model_progress)
    prepare_explorer(source_of(demo), demo.fisher, progress=fisher_progress, statistics=True)
    prepare_headline(source_of(demo), demo.fisher, progress=headline_progress)


def open_demo(demo: Demo) -> None:
    """Make ``demo`` the session's source, with the Fisher settings it was prepared with."""
    ui_session.set_source(source_of(demo))
    ui_fisher.set_fisher_config(demo.fisher)


def demo_picker(current: Source) -> None:
    """The demos as a radio with their titles and whether each is built; the button builds (if needed) and
    opens the chosen one. Imports the registry (torch): call it after ``ui_imports.ensure_heavy_imports``."""
    from fwsvd.io.demos import DEMOS

    names = list(DEMOS)
    name = st.radio("Demo", names, index=names.index(current_demo(current).name),
                    format_func=lambda key: DEMOS[key].title, captions=[_caption(DEMOS[key]) for key in names],
                    key="demo_name")
    demo = DEMOS[name]
    built = demo.is_built()
    label = "Open this demo" if built else f"Build (about {demo.build_minutes} minutes, once) and open"
    opened = current == source_of(demo) and built
    if not st.button(label, type="primary", key="open_demo", disabled=opened):
        return
    model_bar, model_progress = progress_bar(f"Building the {demo.title} model")
    fisher_bar, fisher_progress = progress_bar("Fisher and token statistics for the rank explorer")
    headline_bar, headline_progress = progress_bar("The headline: the dense model and each method evaluated")
    build(demo, model_progress, fisher_progress, headline_progress)
    for bar in (model_bar, fisher_bar, headline_bar):
        bar.empty()
    open_demo(demo)
    st.rerun()
