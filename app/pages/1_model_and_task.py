"""Model & task: choose what to compress and on which task; see which layers fwsvd will compress."""

from pathlib import Path

import streamlit as st
import ui_demos
import ui_imports
import ui_model_task
import ui_session
from ui_format import count, error_box, progress_bar
from ui_methods import methods_box
from ui_session import Loaded

from fwsvd.storage.locations import is_demo_model
from fwsvd.view.explorer import Source
from fwsvd.view.metrics import direction_note
from fwsvd.view.metrics import metric_label as direction_label

START = {"demo": "A demo (built here, offline)",
         "own": "Your own model and data"}
MODEL_KINDS = {"local": "Local directory (save_pretrained)", "hub": "Hugging Face hub id"}
DATA_KINDS = {"file": "A data file (CSV, TSV, JSON, JSONL, parquet; .txt for a language model)",
              "task": "A hub task (GLUE, CoNLL-2003) or the demo's"}

st.title("Model & task")
st.caption("Compress a demo, or your own fine-tuned **classifier, token tagger (NER) or causal language model** "
           "from a model directory "
           "or the Hugging Face hub, with its data from a file or the hub. Labels are matched to the model's by "
           "name. Fisher importances come from the training split; evaluation uses the validation split.")


def _model_kind(current: Source) -> str:
    return "hub" if not is_demo_model(current.model) and not Path(current.model).expanduser().exists() else "local"


def choose_source(current: Source) -> Source | None:
    """The widgets; returns the source they describe (not yet applied), or None for a demo (its picker opens it)."""
    from fwsvd.data.files import data_file_columns
    from fwsvd.data.language_modeling import is_text_file
    from fwsvd.data.tasks import TASK_NAMES

    # Tasks offered for your own model: every registered one (the demo's reviews serve a sentiment model too).
    hub_tasks = [name for name in TASK_NAMES if name != "demo"] + ["demo"]
    own = not ui_demos.is_demo_source(current)
    start = st.radio("Start from", list(START), index=int(own), format_func=START.get, horizontal=True,
                     key="start_from")
    if start == "demo":
        ui_demos.demo_picker(current)
        return None
    left, right = st.columns(2, gap="large")
    with left:
        kinds = list(MODEL_KINDS)
        kind = st.radio("Model", kinds, index=kinds.index(_model_kind(current)), format_func=MODEL_KINDS.get,
                        key="model_kind")
        placeholder = "/path/to/a/fine-tuned/model" if kind == "local" else "textattack/bert-base-uncased-SST-2"
        # One box per kind: a local path never shows up as a hub id, nor the other way round.
        key = "model_path" if kind == "local" else "hub_id"
        model = st.text_input("Model directory" if kind == "local" else "Hub id",
                              value=current.model if not is_demo_model(current.model) and _model_kind(current) == kind
                              else "",
                              placeholder=placeholder, key=key, on_change=ui_model_task.follow_model,
                              args=(key,)).strip()
    with right:
        data_kinds = list(DATA_KINDS)
        data_kind = st.radio("Data", data_kinds, index=0 if current.task == "local" else 1,
                             format_func=DATA_KINDS.get, key="data_kind")
        if data_kind == "task":
            task = st.selectbox("Task", hub_tasks, index=_index(hub_tasks, current.task, 0), key="task_name",
                                help="GLUE tasks and CoNLL-2003 need the Hugging Face hub; the demo's reviews "
                                     "work offline.")
            return Source(model=model, task=task, label_map=label_map_widget(current))
        data_file = st.text_input("Data file", value=current.data_file or "", key="data_file",
                                  placeholder="/path/to/train.csv").strip()
        if not data_file:
            st.info("Enter the path of a local data file to choose its columns.")
            return Source(model=model, task="local")
        if is_text_file(data_file):  # plain text: language modelling, no columns to choose
            return Source(model=model, task="local", data_file=data_file)
        columns = data_file_columns(data_file)
        text = st.selectbox("Text column", columns, index=_index(columns, current.text_column, 0), key="text_column",
                            help="For token tagging (NER): the column of word lists.")
        label = st.selectbox("Label column", columns, index=_index(columns, current.label_column, -1),
                             key="label_column", help="Class labels (names or ids), or lists of tags for NER.")
        pair_options = ["(none)", *columns]
        pair = st.selectbox("Second text column (sentence pairs)", pair_options,
                            index=_index(pair_options, current.pair_column or "(none)", 0), key="pair_column")
        return Source(model=model, task="local", data_file=data_file, text_column=text, label_column=label,
                      pair_column=None if pair == "(none)" else pair, label_map=label_map_widget(current))


def label_map_widget(current: Source) -> tuple[tuple[str, str], ...]:
    """The label map: data labels the model names otherwise, sent to the model's names (or ids)."""
    from fwsvd.data.labels import format_label_map, parse_label_map

    text = st.text_input("Label map (only where the data names labels otherwise than the model)",
                         value=format_label_map(current.label_map), key="label_map",
                         placeholder="rotten=negative,fresh=positive",
                         help="Labels are matched to the model's id2label by name; integer labels are its ids. "
                              "For names the model does not use, give DATA=MODEL pairs: the model's label name "
                              "or id on the right.")
    return tuple(parse_label_map(text).items())


def _index(options: list[str], wanted: str, fallback: int) -> int:
    return options.index(wanted) if wanted in options else fallback % len(options)


def apply(chosen: Source) -> None:
    """Load the chosen model and task (building a demo's model first if needed); switch only if that works."""
    if not chosen.model:
        raise ValueError("enter a model directory or hub id")
    from fwsvd.io.demos import demo_of_model

    demo = demo_of_model(chosen.model)
    if demo is not None and not demo.is_built():
        bar, progress = progress_bar(f"Building the {demo.title} model")
        demo.ensure(progress=progress)
        bar.empty()
    with st.spinner(f"Loading {chosen.model} for task {chosen.task_label} …"):
        ui_session.load(chosen)
    ui_session.set_source(chosen)
    st.toast(f"Using {chosen.model} on {chosen.task_label}", icon=":material/check:")


def show_data(loaded: Loaded) -> None:
    """What the task reads: how its examples are split, and how its labels became the model's."""
    from fwsvd.data.language_modeling import is_language_modeling
    from fwsvd.data.sources import carved_roles, split_sizes
    from fwsvd.evaluate.metrics import metric_label

    task = loaded.task
    if is_language_modeling(task):
        st.caption(f"Task **{loaded.source.task_label}**: language modeling, the next token of each block of text; "
                   f"scored by {direction_label(task.metric_names[0])}, the exponential of the mean token loss.")
        return
    names = [metric_label(task.kind, name) for name in task.metric_names]
    also = f", with {' and '.join(names[1:3])} beside it" if task.kind == "token_classification" else ""
    st.caption(f"Task **{loaded.source.task_label}**: {task.kind.replace('_', ' ')}, {task.num_labels} labels; "
               f"scored by {names[0]}{direction_note(task.metric_names[0])}{also}.")
    carved = carved_roles(task)
    if carved:
        sizes = split_sizes(task)
        total = sizes["train"] + sum(sizes[role] for role in carved)  # the examples of the file that is split
        parts = ", ".join(f"{role} {sizes[role]:,} ({sizes[role] / total:.0%})" for role in ("train", *carved))
        own = [role for role in sizes if role != "train" and role not in carved]
        st.caption(f"The training data, split at random with seed {task.seed}: {parts}"
                   + "".join(f"; {role} {sizes[role]:,} from its own file" for role in own)
                   + ". The Fisher reads only the train part.")
    if task.data_label_names is not None:
        renamed = dict(task.label_map)
        pairs = ", ".join(f"{name} → {renamed.get(name, name)} ({task.label_names.index(renamed.get(name, name))})"
                          for name in task.data_label_names)
        st.caption(f"Labels matched to the model's by name (the model's id in brackets): {pairs}.")


def show_summary(loaded: Loaded) -> None:
    from fwsvd.surgery.architecture import architecture_frame, model_summary

    summary = model_summary(loaded.model)
    show_data(loaded)
    st.subheader("Architecture")
    st.caption(f"`{summary['model_class']}` from `{loaded.source.model}`")
    cols = st.columns(4)
    cols[0].metric("Parameters", count(summary["parameters"]))
    cols[1].metric("Target weights", count(summary["target_parameters"]))
    # Short values: a metric's value is cut with an ellipsis past its column ("210 in 3…" on the LM demo).
    cols[2].metric("Blocks · target layers", f"{summary['blocks']} · {summary['target_layers']}",
                   help="Target layers: the Linear layers inside the transformer blocks, the ones compressed.")
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
    if chosen is not None and st.button("Use this model and task", type="primary", key="apply_source",
                                        disabled=chosen == current and ui_session.model_is_ready(current)):
        with error_box():
            apply(chosen)
            st.rerun()
        st.info(f"Still using `{current.model}` on {current.task_label}: the model and data below are unchanged.",
                icon=":material/info:")

with error_box():
    st.divider()
    show_summary(ui_session.require_model())
