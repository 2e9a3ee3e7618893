"""Compare: the chosen methods against model size, with every layer at one rank ratio (uniform) or with the
ranks allocated for the same parameters: the summed error from the error curves (at once), and the task
metric over a sweep of compressed copies (on request)."""

import pandas as pd
import streamlit as st
import ui_charts as charts
import ui_evaluation
import ui_fisher
import ui_session
import ui_views
from ui_format import error_box
from ui_methods import chosen_methods, method_label, methods_text

from fwsvd.view import rank_plan as allocation
from fwsvd.view.explorer import ExplorerView
from fwsvd.view.metrics import metric_label

RATIO_CHOICES = [0.05, 0.1, 0.15, 0.2, 0.25, 0.33, 0.4, 0.5, 0.6, 0.75, 0.9]
DEFAULT_RATIOS = [0.1, 0.2, 0.33, 0.5]
RULES = {"uniform": "Uniform (one rank ratio)", "allocated": "Allocated (same parameters)"}

st.title("Compare methods")
st.caption("Uniform: every target layer keeps the same share of its rank. Allocated: the same weight parameters, "
           "spread over the layers where they lose least (Fisher-weighted error; plain error for SVD), each "
           "factorized layer keeping at least half its uniform rank, some layers left dense. Solid lines are "
           "uniform, dashed allocated.")


@st.cache_data(show_spinner=False, max_entries=16)
def curves(_view: ExplorerView, ratios: tuple[float, ...], methods: tuple[str, ...], key: tuple) -> pd.DataFrame:
    # ``key`` (source and Fisher identity) stands for the unhashable view.
    return allocation.allocation_curves(_view.analyses, ratios, methods)


def x_range(view: ExplorerView, ratios: list[float]) -> list[float]:
    """One x range (millions of the whole model's parameters) for both charts: from the smallest model swept
    to the dense one."""
    smallest = allocation.uniform_ranks(view.analyses, "rank_ratio", min(ratios))
    low = view.model_params - sum(layer.out_features * layer.in_features for layer in view.analyses.values()) \
        + allocation.kept_params(smallest, view.analyses)
    margin = 0.04 * (view.model_params - low)
    return [(low - margin) / 1e6, (view.model_params + margin) / 1e6]


def error_curves(view: ExplorerView, ratios: list[float], methods: tuple[str, ...]) -> None:
    st.subheader("Error against size")
    frame = curves(view, tuple(sorted(ratios)), methods, (view.source_key, view.fisher_key))
    target = sum(layer.out_features * layer.in_features for layer in view.analyses.values())
    frame = frame.assign(
        model_params=view.model_params - target + frame["params"],
        relative_error=[allocation.relative_error(error, view.analyses, method)
                        for error, method in zip(frame["error"], frame["method"])])
    st.plotly_chart(charts.allocation_figure(frame, methods, x_range(view, ratios)), key="allocation_chart")
    shown = pd.DataFrame({"method": frame["method"].map(method_label), "rule": frame["rule"],
                          "rank ratio": frame["rank_ratio"], "of dense": frame["model_params"] / view.model_params,
                          "relative error": frame["relative_error"]})
    with st.expander("Table"):
        st.dataframe(shown, hide_index=True, width="stretch", key="allocation_table",
                     column_config={"rank ratio": st.column_config.NumberColumn(format="%.2f"),
                                    "of dense": st.column_config.NumberColumn(
                                        format="percent", help="the whole model's parameters, as a share of dense"),
                                    "relative error": st.column_config.NumberColumn(
                                        format="percent", help="sqrt(Σ‖(W − Ŵ)·D‖² / Σ‖W·D‖²) over the target "
                                                               "layers: 0 loses nothing, 100% drops them all")})


def plan_runs(view: ExplorerView, ratios: list[float], methods: tuple[str, ...],
              rules: list[str]) -> list[tuple[str, float, dict[str, int], tuple[str, ...]]]:
    """The evaluations of a sweep: (rule, ratio, every layer's rank, methods), one per uniform ratio (all methods
    at once) and one per allocated (ratio, method); the dense model rides along with the first."""
    plan = []
    for ratio in ratios:
        uniform = allocation.uniform_ranks(view.analyses, "rank_ratio", ratio)
        if "uniform" in rules:
            plan.append(("uniform", ratio, uniform, methods))
        if "allocated" in rules:
            plan += [("allocated", ratio, allocation.optimize(view.analyses, uniform, method).ranks, (method,))
                     for method in methods]
    rule, ratio, ranks, first = plan[0]
    plan[0] = (rule, ratio, ranks, ("dense", *first))
    return plan


def run(view: ExplorerView, ratios: list[float], methods: tuple[str, ...], rules: list[str], limit: int,
        key: tuple) -> None:
    """Evaluate the dense model and a compressed copy per (method, rule, ratio); remember the table. Layers
    an allocation keeps dense stay as they are, as on the rank explorer. Every copy is scored on the same
    examples, so each is compared with SVD under the same rule and ratio (paired), and timed against dense."""
    from fwsvd.evaluate.methods import add_differences, evaluate_methods

    loaded = ui_session.require_model()
    fisher = ui_views.fisher_for_methods(loaded, methods, "The sweep needs the Fisher importances: compute them first.")
    plan = plan_runs(view, ratios, methods, rules)
    models = sum(len(run[3]) for run in plan)
    text = f"Evaluating {models} models on {limit} examples{ui_session.expected_duration(models, limit, view.source_key)}"
    bar = st.progress(0.0, text=text)
    groups: dict[tuple[str, float], dict] = {}
    dense, done = None, 0
    for rule, ratio, ranks, run_methods in plan:
        compressed = allocation.compressed_ranks(ranks, view.analyses)
        if compressed:  # else every layer stays dense: the dense model's row says it

            def step(finished: int, total: int, before: int = done, count: int = len(run_methods)) -> None:
                bar.progress(min(1.0, (before + count * finished / max(total, 1)) / models),
                             text=f"{text} — model {min(models, before + 1 + count * finished // max(total, 1))} "
                                  f"of {models}")

            results = evaluate_methods(loaded.model, loaded.tokenizer, loaded.task, compressed, methods=run_methods,
                                       limit=limit, max_length=fisher.provenance["max_length"],
                                       store=ui_session.decomposition_store(), fisher=fisher, progress=step)
            dense = results.pop("dense", dense)
            groups.setdefault((rule, ratio), {}).update(results)
        done += len(run_methods)
    bar.empty()
    if dense is None:
        raise ValueError("the smallest rank ratio keeps every layer dense: choose a smaller one")
    rows = [{"method": "dense", "rule": "dense", "rank_ratio": 1.0, **dense}]
    for (rule, ratio), group in groups.items():
        compared = add_differences(loaded.task, {"dense": dense, **group})
        rows += [{"method": method, "rule": rule, "rank_ratio": ratio, **entry}
                 for method, entry in compared.items() if method != "dense"]
    ui_session.sweeps()[key] = sweep_frame(rows)


def sweep_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per model: method, rule, rank ratio, then the columns of
    :func:`fwsvd.evaluate.methods.evaluations_frame` (metric, interval, differences, speed-up) and the whole
    model's share of dense."""
    from fwsvd.evaluate.methods import evaluations_frame

    frame = evaluations_frame([({"rule": row["rule"], "rank_ratio": row["rank_ratio"]}, {row["method"]: row})
                               for row in rows])
    dense = float(frame.loc[frame["method"] == "dense", "params"].iloc[0])
    return frame.assign(params_fraction=frame["params"] / dense)


def sweep(view: ExplorerView, ratios: list[float], methods: tuple[str, ...]) -> None:
    st.subheader("Task metric against size")
    st.caption(f"Scored by {metric_label(view.metric)} on the validation split.")
    left, middle, right = st.columns([3, 1, 1], vertical_alignment="bottom")
    rules = left.multiselect("Rank rules", list(RULES), default=list(RULES), format_func=RULES.get,
                             key="sweep_rules", persist_state="session")
    limit = middle.number_input("Validation examples", min_value=min(8, view.validation_size),
                                max_value=view.validation_size,
                                value=min(512, view.validation_size), step=64, key="sweep_limit",
                                persist_state="session")
    key = (view.source_key, view.fisher_key, tuple(sorted(ratios)), int(limit), methods,
           tuple(rule for rule in RULES if rule in rules))
    if right.button("Run sweep", type="primary", key="run_sweep", disabled=not (ratios and rules),
                    icon=":material/play_arrow:"):
        run(view, sorted(ratios), methods, list(key[5]), int(limit), key)
    mine = {k: v for k, v in ui_session.sweeps().items() if k[0] == view.source_key}
    if not mine:
        st.info("No sweep yet for this model. Each rank ratio evaluates one compressed copy per method and rule.",
                icon=":material/info:")
        return
    shown_key = key if key in mine else next(reversed(mine))
    if shown_key != key:
        st.caption(f"Showing the last sweep: ratios {', '.join(map(str, shown_key[2]))} on {shown_key[3]} examples, "
                   f"{methods_text(shown_key[4])}, {' and '.join(shown_key[5])} ranks.")
    frame = mine[shown_key]
    metric = view.metric
    st.plotly_chart(charts.compare_figure(frame, metric, shown_key[4], x_range(view, list(shown_key[2]))),
                    key="compare_chart")
    st.dataframe(sweep_table(frame, metric), hide_index=True, width="stretch", key="compare_table",
                 column_config={"of dense": st.column_config.NumberColumn(
                                    format="percent", help="the whole model's parameters, as a share of dense"),
                                "rank ratio": st.column_config.NumberColumn(format="%.2f")})


def sweep_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The sweep as people read it, narrow enough to need no horizontal scrolling: the model by name, its rule
    and ratio, its share of the dense model, the metric with its 95% interval and the paired difference from
    SVD under the same rule and ratio, and the speed-up over dense."""
    table = ui_evaluation.results_table(frame, metric)
    return pd.DataFrame({"model": table["model"], "rule": frame["rule"], "rank ratio": frame["rank_ratio"],
                         "of dense": frame["params_fraction"],
                         **{column: table[column] for column in table.columns
                            if column not in ("model", "parameters", "examples")}})


with error_box():
    methods = chosen_methods()
    view = ui_views.explorer_view()
    if view is None:
        loaded = ui_session.require_model()
        ui_fisher.require_fisher(loaded, "The comparison needs the Fisher importances: compute them first.")
        st.stop()
    view = ui_views.with_methods(view, methods)
    st.caption(f"Weighted by the {ui_fisher.describe(ui_fisher.fisher_config())}.")
    ratios = st.multiselect("Rank ratios", RATIO_CHOICES, default=DEFAULT_RATIOS, key="sweep_ratios",
                            persist_state="session",
                            help="Each ratio sets every layer to that share of its rank; the allocated ranks "
                                 "keep the same number of weights.")
    if not ratios:
        st.info("Choose at least one rank ratio.", icon=":material/info:")
        st.stop()
    error_curves(view, ratios, methods)
    sweep(view, ratios, methods)
