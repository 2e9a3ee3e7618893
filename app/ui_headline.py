"""The rank explorer's headline: what was compressed and what it cost, at first sight and without a click.

One plain sentence says what is compared; cards give the whole model's size as a share of the dense model
(live, from the ranks), the task metric of the dense model and of each chosen method with its 95% interval and
its paired difference from SVD (same examples; "inside the noise" when the interval holds 0), and the speed-up
over the dense model with its spread. The metric figures come from this session's evaluation at the current
ranks, else from the figures ``fwsvd demo`` measured ahead of time (:mod:`fwsvd.view.headline`) while the ranks
are the ones they were measured at; otherwise the cards say "not evaluated" and point to Evaluate, without
blocking. The math for engineers is drawn below the cards (:func:`for_engineers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
import ui_fisher
import ui_session
from ui_format import count
from ui_methods import method_label, methods_text

from fwsvd.view.explorer import ExplorerView, snapshot_key
from fwsvd.view.metrics import direction_note, is_language_model_metric, lower_is_better
from fwsvd.view.headline import Figures, Headline, evaluation_limit, headline_key, headline_of, load_headline, \
    model_title, task_title
from fwsvd.view.rank_config import ranks_digest

#: Cards per row: at 1280 px (sidebar open) four keep a label like "Whitened SVD accuracy" whole; five cut it.
CARDS_PER_ROW = 4


def metric_name(metric: str) -> str:
    """A metric's name for a card label: ``matthews_correlation`` -> "matthews correlation"."""
    return metric.replace("_", " ")


def card_rows(cards: list[str]) -> list[list[str]]:
    """``cards`` in rows of at most :data:`CARDS_PER_ROW`."""
    return [cards[start:start + CARDS_PER_ROW] for start in range(0, len(cards), CARDS_PER_ROW)]


def session_figures(view: ExplorerView, digest: str) -> Headline | None:
    """This session's latest evaluation at the ranks ``digest`` (every method it holds), or None."""
    found = [entry["results"] for (source, fisher, ranks, _), entry in ui_session.evaluations().items()
             if source == view.source_key and fisher == view.fisher_key and ranks == digest]
    return headline_of(found[-1], view.metric, digest) if found else None


def stored_figures(view: ExplorerView, digest: str) -> Headline | None:
    """The figures measured ahead of time (``fwsvd demo``) if they were measured at the ranks ``digest``."""
    key = snapshot_key(ui_session.source(), ui_fisher.fisher_config())
    if key is None:
        return None
    stored = load_headline(headline_key(key, digest, evaluation_limit(view.validation_size, view.metric)))
    return stored if stored is not None and stored.metric == view.metric else None


def current_figures(view: ExplorerView, ranks: dict[str, int]) -> tuple[dict[str, Figures], str | None]:
    """Each model's figures at ``ranks`` (this session's evaluation first, then the stored ones) and where
    they come from, for a caption."""
    digest = ranks_digest(ranks)
    stored, session = stored_figures(view, digest), session_figures(view, digest)
    figures = {**(stored.figures if stored else {}), **(session.figures if session else {})}
    if session is not None:
        return figures, f"measured in this session on {session.num_examples} validation examples"
    if stored is not None:
        return figures, f"measured when the demo was built, on {stored.num_examples} validation examples"
    return figures, None


def _interval_text(figures: Figures) -> str | None:
    if figures.low is None or figures.high is None:
        return None
    return f"95% interval {figures.low:.3f}–{figures.high:.3f}"


def _method_card(column, method: str, metric: str, figures: Figures | None) -> None:
    label = f"{method_label(method)} {metric_name(metric)}"
    if method == "dense":
        label = f"Dense model {metric_name(metric)}"
    if figures is None:
        column.metric(label, "—", "not evaluated at these ranks", delta_color="off", delta_arrow="off",
                      help="Press Evaluate under “Accuracy at these ranks” below; results are remembered.")
        return
    interval = _interval_text(figures)
    difference = figures.vs_svd if method != "dense" else None
    if difference is None:
        column.metric(label, f"{figures.value:.3f}", interval, delta_color="off", delta_arrow="off",
                      help=f"On {figures.num_examples} validation examples.")
        return
    inside = bool(difference["inside_noise"])
    delta = f"{difference['value']:+.3f} vs SVD" + (", inside the noise" if inside else "")
    color = "off" if inside else ("inverse" if lower_is_better(metric) else "normal")
    column.metric(label, f"{figures.value:.3f}", delta, delta_color=color,
                  help=f"{interval} on {figures.num_examples} validation examples. Difference from SVD on the "
                       f"same examples: {difference['value']:+.3f}, 95% paired interval {difference['low']:+.3f} "
                       f"to {difference['high']:+.3f}" + (" — it holds 0: inside the noise." if inside else "."))


def _speedup_card(column, methods: Sequence[str], figures: dict[str, Figures]) -> None:
    measured = next(((method, figures[method].speedup) for method in methods
                     if method in figures and figures[method].speedup), None)
    if measured is None:
        column.metric("Speed-up over dense", "—", "not measured at these ranks", delta_color="off",
                      delta_arrow="off", help="Measured with Evaluate: dense and compressed timed interleaved.")
        return
    method, speedup = measured
    column.metric("Speed-up over dense", f"{speedup['median']:.2f}×",
                  f"middle half {speedup['low']:.2f}–{speedup['high']:.2f}×", delta_color="off", delta_arrow="off",
                  help=f"{method_label(method)}: the dense model's time per batch over the compressed copy's, "
                       "median of rounds timed interleaved (the interquartile range beside it). Every method "
                       "at these ranks has the same layer shapes.")


def sentence(view: ExplorerView, methods: Sequence[str], layers: int) -> str:
    """What is compared, in one plain sentence."""
    current = ui_session.source()
    # A language model is scored on a text, not fine-tuned for it.
    purpose = "on" if is_language_model_metric(view.metric) else "fine-tuned for"
    return (f"{model_title(current.model)}, {purpose} **{task_title(current.task, current.task_label)}**, with its "
            f"{layers} weight matrices compressed by {methods_text(methods)}: how much smaller it is, and what "
            f"{metric_name(view.metric)} it keeps against the uncompressed model.")


def headline(view: ExplorerView, summary: dict, ranks: dict[str, int], methods: Sequence[str]) -> None:
    """The sentence and the cards at the top of the rank explorer."""
    st.markdown(sentence(view, methods, len(ranks)))
    figures, origin = current_figures(view, ranks)
    # What it cost first (size, speed, the dense model's metric), then what each method keeps.
    for row in [["size", "speedup", "dense"], *card_rows(list(methods))]:
        for column, card in zip(st.columns(len(row)), row):
            if card == "size":
                _size_card(column, summary)
            elif card == "speedup":
                _speedup_card(column, methods, figures)
            else:
                _method_card(column, card, view.metric, figures.get(card))
    st.caption(f"{metric_name(view.metric).capitalize()}{direction_note(view.metric)} {origin}; each with its 95% interval (hover a card), "
               "each method's difference from SVD on the same examples." if origin else
               f"Not evaluated at these ranks yet — press **Evaluate** below: it scores "
               f"{evaluation_limit(view.validation_size, view.metric):,} validation "
               f"{'blocks' if is_language_model_metric(view.metric) else 'examples'} with each model and says how long is "
               "left as it goes; the size is live.")


def _size_card(column, summary: dict) -> None:
    column.metric("Whole model size", f"{summary['model_share']:.0%}",
                  f"of dense: {count(summary['compressed_params'])} of {count(summary['model_params'])} parameters",
                  delta_color="off", delta_arrow="off",
                  help=f"Every parameter of the model, embeddings, heads and biases included: "
                       f"{summary['compressed_params']:,} of {summary['model_params']:,} "
                       f"({summary['model_share']:.2%}). The target layers' weights alone keep "
                       f"{summary['kept_share']:.0%} ({summary['kept_params']:,} of {summary['dense_params']:,}).")


def for_engineers(summary: dict, methods: Sequence[str], dense: int) -> None:
    """Below the headline: the math, the target layers' weights and each method's mean Fisher-weighted error."""
    st.subheader("For engineers")
    st.caption("Each target layer W is replaced by two thin factors of rank r. SVD keeps what matters to ‖W − Ŵ‖; "
               "FWSVD keeps what matters to the task, ‖(W − Ŵ)·D‖ with D from the Fisher importance. A layer at "
               "or past break-even (its two factors would hold as many weights as W) is kept dense. Errors are relative: ‖(W − Ŵ)·D‖ / ‖W·D‖, averaged over the layers. "
               f"D from the {ui_fisher.describe(ui_fisher.fisher_config())}.")
    for row in card_rows(["kept", "removed", *methods]):
        for column, card in zip(st.columns(CARDS_PER_ROW), row):
            if card == "kept":
                column.metric("Target weights kept", count(summary["kept_params"]),
                              f"{summary['kept_share']:.0%} of {count(summary['dense_params'])}", delta_color="off",
                              delta_arrow="off")
            elif card == "removed":
                column.metric("Target weights removed", count(summary["removed_params"]),
                              f"{dense} layer(s) kept dense" if dense else None, delta_color="off",
                              delta_arrow="off")
            else:
                value = summary[f"{card}_mean_weighted_error"]
                delta = None
                if card != "svd" and "svd" in methods:
                    delta = f"{value - summary['svd_mean_weighted_error']:+.3f} vs SVD"
                column.metric(f"{method_label(card)} weighted error", f"{value:.3f}", delta, delta_color="inverse",
                              help=f"Mean relative Fisher-weighted error of {method_label(card)} over the "
                                   "target layers.")
