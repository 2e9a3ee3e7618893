"""Compare: the task metric against model size for SVD and FWSVD over a sweep of rank ratios."""

import streamlit as st
import ui_charts as charts
import ui_state as ui

from fwsvd.evaluate.sweep import run_sweep

RATIO_CHOICES = [0.05, 0.1, 0.15, 0.2, 0.25, 0.33, 0.4, 0.5, 0.6, 0.75, 0.9]
DEFAULT_RATIOS = [0.1, 0.2, 0.33, 0.5]

st.title("Compare SVD and FWSVD")
st.caption("Every target layer keeps the same share of its rank; each point is a compressed copy of the model "
           "evaluated on the validation split. The dashed line is the uncompressed model.")


def run(loaded: ui.Loaded, fisher, ratios: list[float], limit: int, key: tuple) -> None:
    bar, progress = ui.progress_bar(f"Sweeping {len(ratios)} rank ratios × SVD and FWSVD on {limit} examples")
    ui.sweeps()[key] = run_sweep(loaded.model, loaded.tokenizer, loaded.task, methods=("svd", "fwsvd"),
                                 rank_ratios=ratios, fisher=fisher.importances, role="validation", limit=limit,
                                 max_length=fisher.provenance["max_length"], store=ui.decomposition_store(),
                                 progress=progress)
    bar.empty()


with ui.error_box():
    loaded = ui.require_model()
    fisher = ui.require_fisher(loaded, "The sweep needs the Fisher importances for FWSVD: compute them first.")
    validation_size = len(loaded.task.load_split("validation"))
    left, middle, right = st.columns([3, 1, 1], vertical_alignment="bottom")
    ratios = left.multiselect("Rank ratios", RATIO_CHOICES, default=DEFAULT_RATIOS, key="sweep_ratios",
                              persist_state="session")
    limit = middle.number_input("Validation examples", min_value=8, max_value=validation_size,
                                value=min(512, validation_size), step=64, key="sweep_limit", persist_state="session")
    key = (loaded.source.key, ui.fisher_key(fisher), tuple(sorted(ratios)), int(limit))
    if right.button("Run sweep", type="primary", key="run_sweep", disabled=not ratios, icon=":material/play_arrow:"):
        run(loaded, fisher, sorted(ratios), int(limit), key)
    mine = {k: v for k, v in ui.sweeps().items() if k[0] == loaded.source.key}
    if not mine:
        st.info("No sweep yet for this model. Each rank ratio evaluates two compressed copies.", icon=":material/info:")
        st.stop()
    shown_key = key if key in mine else next(reversed(mine))
    if shown_key != key:
        st.caption(f"Showing the last sweep: ratios {', '.join(map(str, shown_key[2]))} on {shown_key[3]} examples.")
    frame = mine[shown_key].to_dataframe()
    metric = ui.metric_of(loaded)
    chart, table = st.columns([3, 2])
    chart.plotly_chart(charts.compare_figure(frame, metric), key="compare_chart")
    table.dataframe(frame[["method", "rank_ratio", "params", "params_fraction", metric]], hide_index=True,
                    width="stretch", key="compare_table",
                    column_config={"params": st.column_config.NumberColumn("parameters", format="localized"),
                                   "params_fraction": st.column_config.NumberColumn("of dense", format="percent"),
                                   "rank_ratio": st.column_config.NumberColumn("rank ratio", format="%.2f")})
