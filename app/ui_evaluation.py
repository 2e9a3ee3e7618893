"""The rank explorer's evaluation at the current ranks: each model's task metric with its 95% interval, each
method's difference from SVD on the same examples (paired; "inside the noise" when its interval holds 0), and
the speed-up over the dense model from latencies timed interleaved, with its spread.

Results are remembered per (model, Fisher, ranks, subset size); methods evaluated in separate calls on the
same subset are compared again after each (:func:`fwsvd.evaluate.methods.add_differences`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import ui_charts as charts
import ui_session
import ui_views
from ui_format import progress_bar
from ui_headline import metric_name
from ui_methods import method_label, methods_text

from fwsvd.view import rank_config
from fwsvd.view import rank_plan as allocation
from fwsvd.view.explorer import ExplorerView
from fwsvd.view.headline import evaluation_limit
from fwsvd.view.metrics import direction_note

#: Where the explorer page remembers its last optimization ({"digest", "result"}).
OPTIMIZED = "optimized_ranks"


def evaluation(view: ExplorerView, ranks: dict[str, int], methods: tuple[str, ...]) -> None:
    st.subheader(f"{metric_name(view.metric).capitalize()}{direction_note(view.metric)} at these ranks")
    compared_note(ranks, methods)
    left, right = st.columns([1, 2])
    limit = left.number_input("Validation examples", min_value=min(8, view.validation_size),
                              max_value=view.validation_size, value=evaluation_limit(view.validation_size, view.metric),
                              step=64, key="eval_limit", persist_state="session")
    digest = rank_config.ranks_digest(ranks)
    key = (view.source_key, view.fisher_key, digest, int(limit))
    remembered = ui_session.evaluations()
    done = remembered.get(key, {}).get("results", {})
    missing = [method for method in methods if method not in done]
    if left.button(f"Evaluate {methods_text(missing or methods)}", type="primary", key="evaluate",
                   icon=":material/play_arrow:", disabled=not missing,
                   help="Methods already evaluated at these ranks are remembered. Each compressed copy is scored "
                        "on the same examples, then timed interleaved with the dense model."):
        evaluate(view, ranks, missing, int(limit), key)
        st.rerun()  # drawn again with the results, and the button that has nothing left to evaluate
    shown = {method: result for method, result in done.items() if method == "dense" or method in methods}
    if len(shown) <= 1:  # nothing, or only the dense model (evaluated with methods no longer chosen)
        right.info("Not evaluated at these ranks yet. Results are remembered per rank setting, method and subset "
                   "size.", icon=":material/info:")
        return
    from fwsvd.evaluate.methods import evaluations_frame

    order = [method for method in ("dense", *methods) if method in shown]
    frame = evaluations_frame([({"ranks": digest}, {method: shown[method] for method in order})])
    right.plotly_chart(charts.evaluation_figure(frame, view.metric, methods), key="evaluation_chart")
    st.dataframe(results_table(frame, view.metric), hide_index=True, width="stretch", key="evaluation_table")
    noise = [method_label(method) for method, verdict in zip(frame["method"], frame[f"{view.metric}_vs_svd_verdict"])
             if verdict == "inside the noise"]
    if noise:
        st.caption(f"{methods_text(noise)} against SVD: inside the noise — the 95% paired interval of the "
                   f"difference holds 0, so these {int(frame['num_examples'].iloc[0])} examples do not tell them "
                   "apart.")


def compared_note(ranks: dict[str, int], methods: tuple[str, ...]) -> None:
    """Say plainly when the ranks were optimized for one method: every method is scored at them."""
    last = st.session_state.get(OPTIMIZED)
    if last is None or last["digest"] != rank_config.ranks_digest(ranks):
        return
    chosen = last["result"].method
    others = [method for method in methods if method != chosen]
    if others:
        st.caption(f"These ranks were optimized for {method_label(chosen)}; {methods_text(others)} "
                   f"{'is' if len(others) == 1 else 'are'} evaluated at the same ranks (not at ranks optimized for "
                   "itself): the comparison is of methods at one shared rank setting.")


def _interval(value: float, low: float, high: float) -> str:
    if pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def _versus(value: float, low: float, high: float, verdict: Any) -> str:
    if verdict is None or pd.isna(value):
        return "—"
    shown = f"{value:+.3f} ({low:+.3f} to {high:+.3f})"
    return f"{shown}, inside the noise" if verdict == "inside the noise" else shown


def _speedup(value: float, low: float, high: float) -> str:
    return "—" if pd.isna(value) else f"{value:.2f}× ({low:.2f}–{high:.2f})"


def results_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The evaluations as people read them: the model by name, the metric with its 95% interval, the paired
    difference from SVD, parameters and the speed-up over dense (median, interquartile range). An NER model's
    F1 is named for what it is (seqeval's entity-level F1), with its precision and recall beside it, and a note
    where it found no entity at all."""
    ner = metric == "f1" and {"precision", "recall"} <= set(frame.columns)  # only NER reports both with F1
    name = "entity-level F1 (seqeval)" if ner else metric_name(metric)
    table = pd.DataFrame({
        "model": [method_label(method) for method in frame["method"]],
        f"{name}{direction_note(metric)} (95% interval)": [
            _interval(*row) for row in zip(frame[metric], frame[f"{metric}_low"], frame[f"{metric}_high"])],
    })
    if ner:
        table["precision"] = [f"{value:.3f}" for value in frame["precision"]]
        table["recall"] = [f"{value:.3f}" for value in frame["recall"]]
        table["note"] = ["no entities found" if f1 == 0 and precision == 0 else ""
                         for f1, precision in zip(frame["f1"], frame["precision"])]
    table["vs SVD (95% paired interval)"] = [_versus(*row) for row in zip(
        frame[f"{metric}_vs_svd"], frame[f"{metric}_vs_svd_low"], frame[f"{metric}_vs_svd_high"],
        frame[f"{metric}_vs_svd_verdict"])]
    table["parameters"] = [f"{int(params):,}" for params in frame["params"]]
    table["speed-up over dense"] = [_speedup(*row) for row in zip(frame["speedup"], frame["speedup_low"],
                                                                  frame["speedup_high"])]
    table["examples"] = frame["num_examples"]
    return table


def evaluate(view: ExplorerView, ranks: dict[str, int], methods: list[str], limit: int, key: tuple) -> None:
    """Evaluate a compressed copy per method in ``methods`` (and the dense model once per subset size); add
    the results to those remembered at these ranks and compare them all again. Layers kept dense stay as they
    are.

    The page may have been drawn from a snapshot, so the model and its Fisher are loaded here if needed."""
    from fwsvd.evaluate.methods import add_differences, evaluate_methods

    compressed = allocation.compressed_ranks(ranks, view.analyses)
    if not compressed:
        raise ValueError("every layer is kept dense at these ranks: there is no compressed model to evaluate")
    loaded = ui_session.require_model()
    fisher = ui_views.fisher_for_methods(loaded, methods, "Evaluating the weighted methods needs the Fisher "
                                                          "importances, and they are no longer in the cache: "
                                                          "compute them on the Fisher page.")
    remembered = ui_session.evaluations()
    dense = next((entry["results"]["dense"] for (src, _, _, size), entry in remembered.items()
                  if src == view.source_key and size == limit and "dense" in entry["results"]), None)
    run = tuple(methods) if dense is not None else ("dense", *methods)
    bar, progress = progress_bar(f"Evaluating {methods_text(run)} on {limit} validation examples, then timing "
                                 "them against the dense model"
                                 + ui_session.expected_duration(len(run), limit, view.source_key))
    results = evaluate_methods(loaded.model, loaded.tokenizer, loaded.task, compressed, methods=run, limit=limit,
                               max_length=fisher.provenance["max_length"], fisher=fisher,
                               store=ui_session.decomposition_store(), progress=progress)
    bar.empty()
    entry = remembered.setdefault(key, {"ranks": dict(ranks), "results": {}})
    entry["results"].update({"dense": dense} if dense is not None else {}, **results)
    entry["results"] = add_differences(loaded.task, entry["results"])
