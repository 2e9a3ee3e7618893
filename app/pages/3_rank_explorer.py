"""Rank explorer: set each layer's rank and watch the chosen methods' errors, spectra and parameters live;
or let the optimizer spread the global control's parameters where they lose least."""

import streamlit as st
import ui_charts as charts
import ui_evaluation
import ui_fisher
import ui_headline
import ui_ranks
import ui_session
import ui_views
from ui_format import count, error_box, progress_bar
from ui_methods import chosen_methods, method_label

from fwsvd.view import analysis, rank_config
from fwsvd.view import rank_plan as allocation
from fwsvd.view.explorer import ExplorerView

GLOBAL_MODES = {"rank_ratio": "Rank ratio", "param_budget": "Parameter budget"}
GLOBAL_HELP = {
    "rank_ratio": "Every layer keeps this share of its full rank (the paper uses 0.33).",
    "param_budget": "Every layer keeps about this share of its weight parameters.",
}
EDITORS = {"sliders": "Sliders, one block at a time", "table": "Table of every layer"}
#: The last optimization: {"digest": its ranks' digest, "result": fwsvd.view.rank_plan.Optimized}.
OPTIMIZED = "optimized_ranks"

st.title("Rank explorer")


def apply_rule(name: str, analyses: dict, widget: str | None) -> None:
    """Widget callback: the global rule (``name``) or its value moved; every layer's rank follows at once.
    ``widget`` is the key of the slider that holds the new value; None when the rule itself was switched."""
    value = st.session_state[widget] if widget else ui_ranks.rule_value(name)
    ui_ranks.apply_rule(name, value, analyses)


def switch_rule(widget: str, analyses: dict) -> None:
    """Widget callback: the global control switched between rank ratio and parameter budget."""
    apply_rule(st.session_state[widget], analyses, None)


def reset_ranks(analyses: dict) -> None:
    """Button callback: every layer back to the global rule's rank."""
    ui_ranks.set_ranks(ui_ranks.rule_ranks(analyses))


def apply_slider(name: str, widget: str) -> None:
    """Widget callback: one layer's slider moved."""
    ui_ranks.update({name: st.session_state[widget]})


def optimize(analyses: dict, method: str) -> None:
    """Button callback: the optimizer's ranks for the weights the global rule keeps."""
    result = allocation.optimize(analyses, ui_ranks.rule_ranks(analyses), method)
    ui_ranks.set_ranks(result.ranks)
    st.session_state[OPTIMIZED] = {"digest": rank_config.ranks_digest(result.ranks), "result": result}


def global_control(view: ExplorerView, ranks: dict[str, int], methods: tuple[str, ...]) -> None:
    """The rule that sets every layer (drawn from the stored rule); "custom" and a reset when the ranks are
    no longer the rule's."""
    rule, value = ui_ranks.rule()
    left, right = st.columns([1, 3])
    mode_key = ui_ranks.key("global_mode")
    left.radio("Set every layer by", ui_ranks.RULES, index=ui_ranks.RULES.index(rule), format_func=GLOBAL_MODES.get,
               key=mode_key, on_change=switch_rule, args=(mode_key, view.analyses))
    rule_ranks = ui_ranks.rule_ranks(view.analyses)
    apart = [name for name, rank in ranks.items() if rank != rule_ranks[name]]
    label = GLOBAL_MODES[rule] + (" · custom" if apart else "")
    slider_key = ui_ranks.key(f"global_{rule}")
    right.slider(label, min_value=0.02, max_value=1.0, value=value, step=0.01, key=slider_key, on_change=apply_rule,
                 args=(rule, view.analyses, slider_key), help=GLOBAL_HELP[rule])
    if apart:
        right.caption(f"Custom ranks: {len(apart)} of {len(ranks)} layer(s) differ from what the "
                      f"{GLOBAL_MODES[rule].lower()} {value:.2f} gives them.")
        right.button(f"Reset every layer to the {GLOBAL_MODES[rule].lower()} {value:.2f}", key="reset_ranks",
                     icon=":material/restart_alt:", on_click=reset_ranks, args=(view.analyses,))
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    weighted = [method for method in methods if method != "svd"]
    method = left.selectbox("Optimize for", methods, index=methods.index(weighted[0]) if weighted else 0,
                            format_func=method_label, key="optimize_method",
                            help="Fisher-weighted error for the weighted methods, plain error for SVD.")
    right.button("Optimize ranks for this budget", key="optimize_ranks", icon=":material/auto_fix_high:",
                 on_click=optimize, args=(view.analyses, method),
                 help="Keep the weights this rule keeps, but give each layer the rank (or none: dense) that "
                      "minimises the summed error over all layers, each factorized layer keeping at least half "
                      "the rank the rule gives it.")


def optimized(ranks: dict[str, int], analyses: dict) -> None:
    """What the optimizer gained, while its ranks are the current ones."""
    last = st.session_state.get(OPTIMIZED)
    if last is None or last["digest"] != rank_config.ranks_digest(ranks):
        return
    result: allocation.Optimized = last["result"]
    measure = "Fisher-weighted" if allocation.has_weighted(result.method, analyses) else "plain"
    uniform, error = (allocation.relative_error(value, analyses, result.method)
                      for value in (result.uniform_error, result.error))
    cols = st.columns(3)
    cols[0].metric(f"{measure.capitalize()} error, uniform ranks", f"{uniform:.1%}")
    cols[1].metric(f"{measure.capitalize()} error, optimized ranks", f"{error:.1%}",
                   f"{result.change:+.1%} vs uniform (squared)", delta_color="inverse")
    cols[2].metric("Layers kept dense", str(len(result.dense)))
    st.caption(f"Optimized for {method_label(result.method)} (objective: {result.objective} error) within the "
               f"{count(result.budget)} weights the global control keeps; {count(result.kept_params)} kept. "
               "Each error is relative to the whole: sqrt(Σ‖(W − Ŵ)·D‖² / Σ‖W·D‖²) over the layers; a layer kept "
               "dense adds none.")


def sliders(frame) -> None:
    """One block's sliders at a time (a block picker above them): 36 or 72 sliders at once are a wall. Each
    slider is drawn at the stored rank (its key carries the store's revision)."""
    groups = analysis.layers_by_block(frame)
    common = dict(format_func=lambda name: f"Block {name.rsplit('.', 1)[-1]}", key="slider_block",
                  persist_state="session")
    if len(groups) <= 12:
        block = st.segmented_control("Block", list(groups), default=next(iter(groups)), required=True, **common)
    else:  # 30 blocks (SmolLM2) of buttons wrap into rows that push the sliders down: a dropdown instead
        block = st.selectbox("Block", list(groups), **common)
    by_name = frame.set_index("layer")
    columns = st.columns(3)
    for position, name in enumerate(groups[block]):
        row = by_name.loc[name]
        widget = ui_ranks.key(f"rank::{name}")
        columns[position % 3].slider(
            f"{row['name_in_block']} ({row['shape']})", min_value=1, max_value=int(row["full_rank"]),
            value=int(row["rank"]), key=widget, on_change=apply_slider, args=(name, widget),
            help=f"{name}: break-even at rank {row['break_even_rank']:.0f}; at or past it the layer is kept "
                 "dense (its two factors would hold as many weights as the layer)")


def rank_editor(frame, methods: tuple[str, ...]) -> None:
    """Per-layer ranks, as sliders or as an editable table (only the chosen one is drawn)."""
    editor = st.segmented_control("Set layers one by one with", list(EDITORS), default="sliders", required=True,
                                  format_func=EDITORS.get, key="rank_editor", persist_state="session")
    if editor == "table":
        table(frame, methods)
    else:
        sliders(frame)


def apply_table(widget: str, layers: list[str], full_ranks: list[int]) -> None:
    """Widget callback: cells of the table's rank column were edited (rows by position; a cleared cell is
    ignored, a rank past the layer's full rank is its full rank)."""
    changes = {}
    for position, cells in st.session_state[widget]["edited_rows"].items():
        value = cells.get("rank")
        if value is not None and value == value:  # value != value: NaN, a cleared cell
            changes[layers[position]] = max(1, min(full_ranks[position], int(value)))
    ui_ranks.update(changes)


def table(frame, methods: tuple[str, ...]) -> None:
    """The same ranks as an editable table, drawn from the stored ranks; an edit writes them back."""
    errors = [f"{method}_weighted_error" for method in methods]
    shown = frame[["layer", "shape", "rank", "full_rank", "dense", "break_even_rank", "kept_params",
                   "removed_params", *errors]]
    widget = ui_ranks.key("rank_table")
    st.data_editor(
        shown, key=widget, hide_index=True, width="stretch", on_change=apply_table,
        args=(widget, list(frame["layer"]), [int(full) for full in frame["full_rank"]]),
        disabled=[column for column in shown.columns if column != "rank"],
        column_config={
            "rank": st.column_config.NumberColumn("rank ✎", min_value=1, step=1,
                                                  help="edit to set the rank; the full rank keeps the layer dense"),
            "full_rank": "full rank",
            "dense": st.column_config.CheckboxColumn("kept dense"),
            "break_even_rank": st.column_config.NumberColumn("break-even", format="%.1f"),
            "kept_params": st.column_config.NumberColumn("weights kept", format="localized"),
            "removed_params": st.column_config.NumberColumn("weights removed", format="localized"),
            **{column: st.column_config.NumberColumn(f"{method_label(method)} weighted error", format="%.3f")
               for column, method in zip(errors, methods)},
        })


@st.fragment
def spectra(analyses: dict, frame, methods: tuple[str, ...]) -> None:
    """The spectra of one block at a time; choosing another block reruns only this part."""
    blocks = list(dict.fromkeys(frame["block"]))
    block = st.selectbox("Spectra of block", blocks, format_func=lambda name: f"block {name.rsplit('.', 1)[-1]}",
                         key="spectrum_block", persist_state="session")
    rows = frame[frame["block"] == block]
    spectra_frames = {name: analysis.spectrum_frame(analyses[name]) for name in rows["layer"]}
    st.plotly_chart(charts.spectrum_figure(spectra_frames, rows, methods), key="spectrum_chart")


def fisher_prompt() -> None:
    """No Fisher cached for these settings: offer to compute it here with the defaults, or go choose."""
    st.warning("FWSVD needs the Fisher importances of this model on its task, and none are cached yet.",
               icon=":material/warning:")
    if st.button("Compute Fisher now (default settings)", type="primary", key="explorer_compute_fisher"):
        bar, progress = progress_bar("Estimating the Fisher importances")
        ui_views.compute_fisher(ui_session.require_model(), ui_fisher.default_config(ui_session.source()), progress)
        st.rerun()
    st.page_link(ui_session.PAGES["fisher"], label="Or choose the settings on the Fisher page",
                 icon=":material/arrow_forward:")


with error_box():
    view = ui_views.explorer_view()
    if view is None:
        fisher_prompt()
        st.stop()
    methods = chosen_methods()
    view = ui_views.with_methods(view, methods)
    ranks = ui_ranks.ranks(view.source_key, view.analyses)
    frame = allocation.mark_dense(analysis.layer_frame(view.analyses, ranks, view.blocks))
    summary = analysis.totals(frame, view.model_params)
    ui_headline.headline(view, summary, ranks, methods)
    global_control(view, ranks, methods)
    ui_headline.for_engineers(summary, methods, int(frame["dense"].sum()))
    optimized(ranks, view.analyses)
    rank_editor(frame, methods)
    st.plotly_chart(charts.error_figure(frame, methods), key="error_chart")
    st.plotly_chart(charts.params_figure(frame), key="params_chart")
    spectra(view.analyses, frame, methods)
    ui_evaluation.evaluation(view, ranks, methods)
