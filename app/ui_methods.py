"""The methods compared on every page: their names for people, and the sidebar's choice of them."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from fwsvd.view.analysis import DEFAULT_METHODS, METHOD_LABELS, METHODS

CHOSEN_METHODS = "methods"  # the sidebar widget's key on each page
METHODS_CHOICE = "methods_choice"  # the choice itself, carried from page to page


def method_label(method: str) -> str:
    """A method's display name (SVD, FWSVD, …); ``dense`` is the uncompressed model."""
    return "dense model" if method == "dense" else METHOD_LABELS.get(method, method)


def methods_text(methods: Sequence[str]) -> str:
    """Methods for a sentence: "SVD", "SVD and FWSVD", "SVD, FWSVD and ASVD"."""
    labels = [method_label(method) for method in methods]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def methods_box() -> tuple[str, ...]:
    """The sidebar's choice of methods to compare, drawn (every page draws it, so that it is always there to
    see and change), in the library's order; possibly none.

    Each page draws its own widget (one drawn by the router is lost on reruns under AppTest) and a widget of
    the same key on another page is another widget, so the choice is kept apart and given as its default."""
    chosen = st.sidebar.multiselect("Methods to compare", METHODS,
                                    default=st.session_state.get(METHODS_CHOICE, list(DEFAULT_METHODS)),
                                    format_func=method_label, key=CHOSEN_METHODS,
                                    help="Every error plot, spectrum, evaluation and sweep shows these methods. "
                                         "Methods weighted by token statistics compute them (once) with the Fisher.")
    st.session_state[METHODS_CHOICE] = chosen
    return tuple(method for method in METHODS if method in chosen)


def chosen_methods() -> tuple[str, ...]:
    """The methods to compare (:func:`methods_box`); with none chosen, a message and stop."""
    chosen = methods_box()
    if not chosen:
        st.info("Choose at least one method to compare in the sidebar.", icon=":material/info:")
        st.stop()
    return chosen
