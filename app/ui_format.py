"""How the pages report: errors as messages (never a traceback), parameter counts, progress bars."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def error_box() -> Iterator[None]:
    """Show errors as a message on the page, never as a traceback.

    The library raises ValueError / FileNotFoundError with a message meant for the user; other errors
    (a torch shape mismatch, a broken file) get their type named and the traceback goes to the server log.
    Streamlit's st.stop / st.rerun are BaseExceptions and pass through.
    """
    try:
        yield
    except (ValueError, FileNotFoundError, ImportError, ConnectionError) as error:
        st.error(str(error), icon=":material/error:")
    except Exception as error:  # the last line of defence: the page must explain, not crash
        logger.exception("dashboard error")
        st.error(f"Something went wrong ({type(error).__name__}): {error}", icon=":material/error:")


def count(value: float) -> str:
    """A parameter count for people: 812, 12.3 k, 4.56 M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f} M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def progress_bar(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """An st.progress bar and a ``progress(done, total)`` callback that moves it, saying from the first step
    on about how long the rest will take (the steps so far, timed, times those left)."""
    bar = st.progress(0.0, text=text)
    started = time.monotonic()

    def update(done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total else 0.0
        shown = f"{text} ({done}/{total}{time_left(time.monotonic() - started, done, total)})" if total else text
        bar.progress(fraction, text=shown)

    return bar, update


def time_left(elapsed: float, done: int, total: int) -> str:
    """", about 3 min left" after ``done`` of ``total`` steps took ``elapsed`` seconds; "" before the first."""
    if done <= 0 or done >= total:
        return ""
    seconds = elapsed / done * (total - done)
    return f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {max(5, round(seconds, -1)):.0f} s left"
