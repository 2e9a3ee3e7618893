"""Fisher: estimate (or load) how much each input feature of each layer matters to the task."""

from dataclasses import replace

import streamlit as st
import ui_charts as charts
import ui_fisher
import ui_session
import ui_views
from ui_format import error_box, progress_bar
from ui_methods import methods_box
from ui_session import Loaded

from fwsvd.config import FisherConfig

MODES = ui_fisher.MODES
EXAMPLE_COUNTS = [64, 128, 256, 512, 1024, 2048, 4096]

st.title("Fisher importance")
st.caption("FWSVD weighs each input feature of a layer by its Fisher importance: the squared gradient of the "
           "task loss, summed over training examples. Features the task relies on are reconstructed more "
           "faithfully; unimportant ones absorb the error.")


def settings_widgets(settings: FisherConfig, train_size: int, longest: int | None) -> FisherConfig:
    """The Fisher settings; the example counts offered stop at the training split's size (``train_size``, the
    last offered as "all"), max length at what the tokenizer reads (``longest``)."""
    left, middle, right, last = st.columns([3, 3, 2, 2])
    mode = left.radio("Mode", list(MODES), index=list(MODES).index(settings.mode), format_func=MODES.get,
                      key="fisher_mode", horizontal=True,
                      help="Exact: each example's own squared gradient (the paper's definition). Batch: the "
                           "squared gradient of each mini-batch, the shortcut public code takes.")
    counts = [count for count in EXAMPLE_COUNTS if count < train_size] + [train_size]
    wanted = min(settings.num_examples, train_size)
    count = middle.select_slider("Training examples", counts, value=min(counts, key=lambda c: abs(c - wanted)),
                                 key="fisher_examples",
                                 format_func=lambda c: f"all {c:,}" if c == train_size else f"{c:,}",
                                 help=f"The training split holds {train_size:,} examples.")
    if count == train_size and settings.num_examples >= train_size:
        count = settings.num_examples  # "all" already: the same Fisher, so the settings (and their cache) stay
    seed = right.number_input("Seed", min_value=0, value=settings.seed, step=1, key="fisher_seed")
    max_length = last.number_input("Max length (tokens)", min_value=8, max_value=longest, value=settings.max_length,
                                   step=8, key="fisher_max_length",
                                   help="Tokens per example for the Fisher and for every evaluation of this model; "
                                        "longer examples are cut.")
    return replace(settings, mode=mode, num_examples=int(count), seed=int(seed), max_length=int(max_length))


def compute(loaded: Loaded, settings: FisherConfig, *, use: bool = True) -> None:
    bar, progress = progress_bar(f"Estimating the {MODES[settings.mode].lower()} Fisher over "
                                 f"{settings.num_examples} training examples")
    ui_views.compute_fisher(loaded, settings, progress, use=use)
    bar.empty()


def show_importance(loaded: Loaded, fisher) -> None:
    from fwsvd.fisher.summary import cumulative_share, fisher_frame, importance_matrix

    frame = fisher_frame(fisher.importances, loaded.blocks)
    st.plotly_chart(charts.fisher_layers_figure(frame), key="fisher_layers")
    widths = sorted(frame["in_features"].unique())
    left, right = st.columns([1, 3])
    width = left.selectbox("Layers with input width", widths, key="heatmap_width",
                           help="Rows of one heatmap must have the same number of input features.")
    rows = frame[frame["in_features"] == width]
    matrix = importance_matrix(fisher.importances, list(rows["layer"]))
    right.plotly_chart(charts.fisher_heatmap(matrix, rows), key="fisher_heatmap")
    blocks = list(dict.fromkeys(frame["block"]))
    block = left.selectbox("Concentration curves of block", blocks,
                           format_func=lambda name: f"block {name.rsplit('.', 1)[-1]}", key="curve_block")
    part = frame[frame["block"] == block]
    curves = {name: cumulative_share(fisher.importances[layer])
              for layer, name in zip(part["layer"], part["name_in_block"])}
    right.plotly_chart(charts.cumulative_figure(curves), key="fisher_curves")
    st.dataframe(frame[["layer", "in_features", "share_of_model", "top1_share", "top10_share", "gini",
                        "effective_share"]], hide_index=True, width="stretch", key="fisher_table",
                 column_config={
                     "share_of_model": st.column_config.NumberColumn("share of model", format="percent"),
                     "top1_share": st.column_config.NumberColumn("top 1% hold", format="percent"),
                     "top10_share": st.column_config.NumberColumn("top 10% hold", format="percent"),
                     "gini": st.column_config.NumberColumn("Gini", format="%.2f",
                                                           help="0: spread evenly; 1: all on one feature"),
                     "effective_share": st.column_config.NumberColumn(
                         "effective share", format="percent",
                         help="exp(entropy)/n: the share of features that would carry the same mass evenly"),
                 })


def show_exact_vs_batch(loaded: Loaded, settings: FisherConfig, fisher) -> None:
    from fwsvd.fisher.summary import compare_fisher, fisher_frame

    st.subheader("Exact vs batch Fisher")
    other_mode = "batch" if settings.mode == "per_example" else "per_example"
    other_settings = replace(settings, mode=other_mode)
    other = ui_fisher.fisher_for(loaded, other_settings)
    if other is None:
        st.caption(f"Compare with the {MODES[other_mode].lower()} Fisher over the same examples.")
        if st.button(f"Compute the {MODES[other_mode].lower()} Fisher to compare", key="compute_other_fisher"):
            compute(loaded, other_settings, use=False)
            st.rerun()
        return
    exact, batch = (fisher, other) if settings.mode == "per_example" else (other, fisher)
    comparison = compare_fisher(exact.importances, batch.importances)
    comparison = comparison.merge(fisher_frame(exact.importances, loaded.blocks)[["layer", "block",
                                                                                         "name_in_block"]])
    cols = st.columns(3)
    cols[0].metric("Median cosine similarity", f"{comparison['cosine'].median():.3f}")
    cols[1].metric("Median Spearman correlation", f"{comparison['spearman'].median():.3f}")
    cols[2].metric("Median top-10% overlap", f"{comparison['top10_overlap'].median():.0%}")
    st.plotly_chart(charts.exact_vs_batch_figure(comparison), key="fisher_exact_vs_batch")


methods_box()  # not used here, but always in the sidebar

with error_box():
    loaded = ui_session.require_model()
    readable = getattr(loaded.tokenizer, "model_max_length", None)  # a huge sentinel when the tokenizer sets none
    settings = settings_widgets(ui_fisher.fisher_choice(), len(loaded.task.load_split("train")),
                                readable if isinstance(readable, int) and readable < 1 << 20 else None)
    ui_fisher.choose_fisher(settings)
    fisher = ui_fisher.fisher_for(loaded, settings)
    if fisher is None:
        st.info(f"No {MODES[settings.mode].lower()} Fisher over {settings.num_examples} examples (seed "
                f"{settings.seed}) is cached for this model and task yet. Until one is computed, the rank explorer "
                f"and Compare keep using the {ui_fisher.describe(ui_fisher.fisher_config())}.",
                icon=":material/info:")
        if st.button("Compute Fisher", type="primary", key="compute_fisher"):
            compute(loaded, settings)
            st.rerun()
        st.stop()
    ui_fisher.set_fisher_config(settings)  # cached: the explorer and Compare use it from now on
    source = "loaded from the cache" if fisher.from_cache else f"computed in {fisher.seconds:.1f} s"
    st.success(f"{MODES[settings.mode]} Fisher over {fisher.provenance['num_examples']} training examples, "
               f"{source}.", icon=":material/check_circle:")
    show_importance(loaded, fisher)
    show_exact_vs_batch(loaded, settings, fisher)
