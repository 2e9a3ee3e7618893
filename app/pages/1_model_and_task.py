"""Model & task: choose what to compress and on which task; see which layers fwsvd will compress."""

from pathlib import Path

import streamlit as st
import ui_imports
import ui_session
from ui_format import count, error_box, progress_bar
from ui_methods import methods_box
from ui_session import Loaded

from fwsvd.storage.locations import demo_is_built
from fwsvd.view.explorer import Source

MODEL_KINDS = {"demo": "Demo model (MiniLM-L6, Rotten Tomatoes)", "local": "Local directory",
               "hub": "Hugging Face hub id"}
LOCAL_TASK = "local file"

st.title("Model & task")
st.caption("Pick a fine-tuned classifier and the task it was fine-tuned on. Fisher importances come from the "
           "task's training split; evaluation uses its validation split.")


def _model_kind(current: Source) -> str:
    if current.model == "demo":
        return "demo"
    return "local" if Path(current.model).expanduser().exists() else "hub"


def choose_source(current: Source) -> Source:
    """The widgets; returns the source they describe (not yet applied)."""
    from fwsvd.data.files import data_file_columns
    from fwsvd.data.tasks import TASK_NAMES

    left, right = st.columns(2, gap="large")
    with left:
        kinds = list(MODEL_KINDS)
        kind = st.radio("Model", kinds, index=kinds.index(_model_kind(current)), format_func=MODEL_KINDS.get,
                        key="model_kind")
        model = "demo"
        if kind != "demo":
            placeholder = "/path/to/a/fine-tuned/model" if kind == "local" else "textattack/bert-base-uncased-SST-2"
            model = st.text_input("Model directory" if kind == "local" else "Hub id",
                                  value="" if current.model == "demo" else current.model,
                                  placeholder=placeholder, key="model_path").strip()
    with right:
        options = [*TASK_NAMES, LOCAL_TASK]
        chosen = LOCAL_TASK if current.task == "local" else current.task
        task = st.selectbox("Task", options, index=options.index(chosen) if chosen in options else 0, key="task_name",
                            help="GLUE tasks and CoNLL-2003 need the Hugging Face hub; the demo and local files "
                                 "work offline.")
        if task != LOCAL_TASK:
            return Source(model=model, task=task)
        data_file = st.text_input("Data file (CSV, TSV, JSON, JSONL or parquet)", value=current.data_file or "",
                                  key="data_file").strip()
        if not data_file:
            st.info("Enter the path of a local data file to choose its columns.")
            return Source(model=model, task="local")
        columns = data_file_columns(data_file)
        text = st.selectbox("Text column", columns, index=_index(columns, current.text_column, 0), key="text_column")
        label = st.selectbox("Label column", columns, index=_index(columns, current.label_column, -1),
                             key="label_column")
        pair_options = ["(none)", *columns]
        pair = st.selectbox("Second text column (sentence pairs)", pair_options,
                            index=_index(pair_options, current.pair_column or "(none)", 0), key="pair_column")
        return Source(model=model, task="local", data_file=data_file, text_column=text, label_column=label,
                      pair_column=None if pair == "(none)" else pair)


def _index(options: list[str], wanted: str, fallback: int) -> int:
    return options.index(wanted) if wanted in options else fallback % len(options)


def apply(chosen: Source) -> None:
    """Load the chosen model and task (building the demo first if needed); switch only if that works."""
    if not chosen.model:
        raise ValueError("enter a model directory or hub id")
    if chosen.model == "demo" and not demo_is_built():
        bar, progress = progress_bar("Building the demo model: fine-tuning MiniLM-L6 on Rotten Tomatoes")
        ui_session.build_demo(progress)
        bar.empty()
    with st.spinner(f"Loading {chosen.model} for task {chosen.task_label} …"):
        ui_session.load(chosen)
    ui_session.set_source(chosen)
    st.toast(f"Using {chosen.model} on {chosen.task_label}", icon=":material/check:")


def show_summary(loaded: Loaded) -> None:
    from fwsvd.surgery.architecture import architecture_frame, model_summary

    summary = model_summary(loaded.model)
    st.subheader("Architecture")
    st.caption(f"`{summary['model_class']}` from `{loaded.source.model}` on task **{loaded.source.task_label}** "
               f"({loaded.task.kind}, {loaded.task.num_labels} labels, metric: {ui_session.metric_of(loaded)})")
    cols = st.columns(4)
    cols[0].metric("Parameters", count(summary["parameters"]))
    cols[1].metric("Target weights", count(summary["target_parameters"]))
    cols[2].metric("Target layers", f"{summary['target_layers']} in {summary['blocks']} blocks")
    cols[3].metric("Held by target layers", f"{summary['target_share']:.0%}",
                   help="Embeddings and the task head are not compressed, as in the paper.")
    frame = architecture_frame(loaded.model)
    st.dataframe(
        frame[["block", "name_in_block", "out_features", "in_features", "weight_params", "full_rank",
               "break_even_rank"]],
        hide_index=True, width="stretch", key="architecture_table",
        column_config={
            "name_in_block": "layer",
            "out_features": st.column_config.NumberColumn("out", help="output features"),
            "in_features": st.column_config.NumberColumn("in", help="input features"),
            "weight_params": st.column_config.NumberColumn("weights", format="localized"),
            "full_rank": st.column_config.NumberColumn("full rank"),
            "break_even_rank": st.column_config.NumberColumn(
                "break-even rank", format="%.1f", help="m·n/(m+n): at this rank the two factors hold as many "
                                                       "weights as the layer"),
        })


methods_box()  # not used here, but always in the sidebar

with error_box():
    ui_imports.ensure_heavy_imports()  # before the first import of fwsvd.data (datasets) and torch
    current = ui_session.source()
    chosen = choose_source(current)
    label = "Use this model and task"
    if chosen.model == "demo" and not demo_is_built():
        label = "Build the demo model (about 6 minutes, once) and use it"
    if st.button(label, type="primary", key="apply_source",
                 disabled=chosen == current and ui_session.model_is_ready(current)):
        apply(chosen)
        st.rerun()

with error_box():
    st.divider()
    show_summary(ui_session.require_model())
