"""Rank explorer: set each layer's rank and watch SVD and FWSVD errors, spectra and parameters live."""

import streamlit as st
import ui_charts as charts
import ui_state as ui

from fwsvd.config import CompressionConfig
from fwsvd.view import analysis, rank_config

GLOBAL_MODES = {"rank_ratio": "Rank ratio", "param_budget": "Parameter budget"}
GLOBAL_HELP = {
    "rank_ratio": "Every layer keeps this share of its full rank (the paper uses 0.33).",
    "param_budget": "Every layer keeps about this share of its weight parameters.",
}
EDITORS = {"sliders": "Sliders, one block at a time", "table": "Table of every layer"}
TABLE_VERSION = "rank_table_version"

st.title("Rank explorer")
st.caption("Each target layer W is replaced by two thin factors of rank r. SVD keeps what matters to ‖W − Ŵ‖; "
           "FWSVD keeps what matters to the task, ‖(W − Ŵ)·D‖ with D from the Fisher importance.")


def apply_global(shapes: dict[str, tuple[int, int]]) -> None:
    """Widget callback: one control sets every layer's rank."""
    mode = st.session_state["global_mode"]  # a CompressionConfig field: rank_ratio or param_budget
    ui.set_ranks(CompressionConfig(**{mode: st.session_state[f"global_{mode}"]}).resolve_ranks(shapes))


def apply_slider(name: str) -> None:
    """Widget callback: one layer's slider moved."""
    ui.ranks_in_session()[name] = int(st.session_state[ui.RANK_WIDGET_PREFIX + name])


def global_control(view: ui.ExplorerView) -> None:
    left, right = st.columns([1, 3])
    mode = left.radio("Set every layer by", list(GLOBAL_MODES), format_func=GLOBAL_MODES.get, key="global_mode",
                      persist_state="session")
    right.slider(GLOBAL_MODES[mode], min_value=0.02, max_value=1.0, value=ui.DEFAULT_RANK_RATIO, step=0.01,
                 key=f"global_{mode}", on_change=apply_global, args=(view.shapes,), help=GLOBAL_HELP[mode],
                 persist_state="session")


def headline(summary: dict) -> None:
    cols = st.columns(4)
    cols[0].metric("Weights kept", ui.count(summary["kept_params"]),
                   f"{summary['kept_share']:.0%} of {ui.count(summary['dense_params'])}", delta_color="off",
                   delta_arrow="off")
    cols[1].metric("Weights removed", ui.count(summary["removed_params"]))
    cols[2].metric("Mean Fisher-weighted error, SVD", f"{summary['svd_mean_weighted_error']:.3f}")
    cols[3].metric("Mean Fisher-weighted error, FWSVD", f"{summary['fwsvd_mean_weighted_error']:.3f}",
                   f"{summary['fwsvd_mean_weighted_error'] - summary['svd_mean_weighted_error']:+.3f} vs SVD",
                   delta_color="inverse")
    if summary["above_break_even"]:
        names = ", ".join(f"`{name}`" for name in summary["above_break_even"][:6])
        more = len(summary["above_break_even"]) - 6
        st.warning(f"{len(summary['above_break_even'])} layer(s) at or past break-even — their two factors hold "
                   f"at least as many weights as the layer itself: {names}" + (f" and {more} more" if more > 0
                                                                              else ""), icon=":material/warning:")


def sliders(frame) -> None:
    """One block's sliders at a time (a block picker above them): 36 or 72 sliders at once are a wall."""
    groups = analysis.layers_by_block(frame)
    block = st.segmented_control("Block", list(groups), default=next(iter(groups)), required=True,
                                 format_func=lambda name: f"Block {name.rsplit('.', 1)[-1]}", key="slider_block",
                                 persist_state="session")
    by_name = frame.set_index("layer")
    columns = st.columns(3)
    for position, name in enumerate(groups[block]):
        row = by_name.loc[name]
        columns[position % 3].slider(
            f"{row['name_in_block']} ({row['shape']})", min_value=1, max_value=int(row["full_rank"]),
            key=ui.RANK_WIDGET_PREFIX + name, on_change=apply_slider, args=(name,),
            help=f"{name}: break-even at rank {row['break_even_rank']:.0f}")


def rank_editor(frame) -> None:
    """Per-layer ranks, as sliders or as an editable table (only the chosen one is drawn)."""
    editor = st.segmented_control("Set layers one by one with", list(EDITORS), default="sliders", required=True,
                                  format_func=EDITORS.get, key="rank_editor", persist_state="session")
    if editor == "table":
        table(frame)
    else:
        sliders(frame)


def table(frame) -> None:
    """The same ranks as an editable table; an edit sets the ranks and redraws everything."""
    version = st.session_state.get(TABLE_VERSION, 0)
    shown = frame[["layer", "shape", "rank", "full_rank", "break_even_rank", "kept_params", "removed_params",
                   "svd_weighted_error", "fwsvd_weighted_error"]]
    edited = st.data_editor(
        shown, key=f"rank_table::{version}", hide_index=True, width="stretch",
        disabled=[column for column in shown.columns if column != "rank"],
        column_config={
            "rank": st.column_config.NumberColumn("rank ✎", min_value=1, step=1, help="edit to set the rank"),
            "full_rank": "full rank",
            "break_even_rank": st.column_config.NumberColumn("break-even", format="%.1f"),
            "kept_params": st.column_config.NumberColumn("weights kept", format="localized"),
            "removed_params": st.column_config.NumberColumn("weights removed", format="localized"),
            "svd_weighted_error": st.column_config.NumberColumn("SVD weighted error", format="%.3f"),
            "fwsvd_weighted_error": st.column_config.NumberColumn("FWSVD weighted error", format="%.3f"),
        })
    changes = {name: max(1, min(int(full), int(new)))
               for name, old, new, full in zip(frame["layer"], frame["rank"], edited["rank"], frame["full_rank"])
               if new == new and int(new) != old}  # new != new: a cleared (NaN) cell, ignored
    if changes:
        # The sliders above are already drawn this run; the next run moves them (sync_rank_widgets) and
        # draws a fresh editor whose pending edits are now part of the ranks it shows.
        ui.ranks_in_session().update(changes)
        st.session_state[TABLE_VERSION] = version + 1
        st.rerun()


@st.fragment
def spectra(analyses: dict, frame) -> None:
    """The spectra of one block at a time; choosing another block reruns only this part."""
    blocks = list(dict.fromkeys(frame["block"]))
    block = st.selectbox("Spectra of block", blocks, format_func=lambda name: f"block {name.rsplit('.', 1)[-1]}",
                         key="spectrum_block", persist_state="session")
    rows = frame[frame["block"] == block]
    spectra_frames = {name: analysis.spectrum_frame(analyses[name]) for name in rows["layer"]}
    st.plotly_chart(charts.spectrum_figure(spectra_frames, rows), key="spectrum_chart")


def evaluation(view: ui.ExplorerView, ranks: dict[str, int]) -> None:
    st.subheader("Accuracy at these ranks")
    left, right = st.columns([1, 2])
    limit = left.number_input("Validation examples", min_value=8, max_value=view.validation_size,
                              value=min(512, view.validation_size), step=64, key="eval_limit",
                              persist_state="session")
    digest = rank_config.ranks_digest(ranks)
    key = (view.source_key, view.fisher_key, digest, int(limit))
    remembered = ui.evaluations()
    if left.button("Evaluate SVD and FWSVD", type="primary", key="evaluate", icon=":material/play_arrow:"):
        evaluate(view, ranks, int(limit), key)
    if key not in remembered:
        right.info("Not evaluated at these ranks yet. Results are remembered per rank setting and subset size.",
                   icon=":material/info:")
        return
    from fwsvd.evaluate.methods import evaluations_frame

    table_frame = evaluations_frame([({"ranks": digest}, remembered[key]["results"])])
    right.plotly_chart(charts.evaluation_figure(table_frame, view.metric), key="evaluation_chart")
    st.dataframe(table_frame[["method", view.metric, "params", "num_examples", "latency_s_per_batch"]],
                 hide_index=True, width="stretch", key="evaluation_table",
                 column_config={view.metric: st.column_config.NumberColumn(format="%.4f"),
                                "params": st.column_config.NumberColumn("parameters", format="localized"),
                                "num_examples": "examples",
                                "latency_s_per_batch": st.column_config.NumberColumn(
                                    "latency (s / batch of 32)", format="%.3f")})


def evaluate(view: ui.ExplorerView, ranks: dict[str, int], limit: int, key: tuple) -> None:
    """Evaluate both compressed copies (and the dense model once per subset size); remember the results.

    The page may have been drawn from a snapshot, so the model and its Fisher are loaded here if needed."""
    from fwsvd.evaluate.methods import evaluate_methods

    loaded = ui.require_model()
    fisher = ui.require_fisher(loaded, "Evaluating FWSVD needs the Fisher importances, and they are no longer "
                                       "in the cache: compute them on the Fisher page.")
    remembered = ui.evaluations()
    dense = next((entry["results"]["dense"] for (src, _, _, size), entry in remembered.items()
                  if src == view.source_key and size == limit), None)
    methods = ("svd", "fwsvd") if dense is not None else ("dense", "svd", "fwsvd")
    bar, progress = ui.progress_bar(f"Evaluating {', '.join(methods)} on {limit} validation examples")
    results = evaluate_methods(loaded.model, loaded.tokenizer, loaded.task, ranks,
                                       fisher=fisher.importances, methods=methods, limit=limit,
                                       max_length=fisher.provenance["max_length"],
                                       store=ui.decomposition_store(), progress=progress)
    bar.empty()
    remembered[key] = {"ranks": dict(ranks), "results": {"dense": dense, **results} if dense else results}


def fisher_prompt() -> None:
    """No Fisher cached for these settings: offer to compute it here with the defaults, or go choose."""
    st.warning("FWSVD needs the Fisher importances of this model on its task, and none are cached yet.",
               icon=":material/warning:")
    if st.button("Compute Fisher now (default settings)", type="primary", key="explorer_compute_fisher"):
        bar, progress = ui.progress_bar("Estimating the Fisher importances")
        ui.compute_fisher(ui.require_model(), ui.fisher_config(), progress)
        st.rerun()
    st.page_link(ui.PAGES["fisher"], label="Or choose the settings on the Fisher page",
                 icon=":material/arrow_forward:")


with ui.error_box():
    view = ui.explorer_view()
    if view is None:
        fisher_prompt()
        st.stop()
    ranks = ui.ranks(view.source_key, view.analyses)
    ui.sync_rank_widgets(ranks)
    global_control(view)
    frame = analysis.layer_frame(view.analyses, ranks, view.blocks)
    headline(analysis.totals(frame))
    rank_editor(frame)
    st.plotly_chart(charts.error_figure(frame), key="error_chart")
    st.plotly_chart(charts.params_figure(frame), key="params_chart")
    spectra(view.analyses, frame)
    evaluation(view, ranks)
