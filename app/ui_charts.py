"""Plotly figures of the dashboard: data frames from ``fwsvd`` (``fwsvd.view``, ``fwsvd.fisher.summary``) in,
figures out.

No streamlit here, so the benchmark can time figure building on its own. Every figure of methods takes the
methods to show (any subset of :data:`fwsvd.view.analysis.METHODS`); each method keeps its colour in every
figure, and the dense model is black (a dashed line where it is a reference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fwsvd.view.analysis import METHOD_LABELS, STATISTICS_METHODS
from fwsvd.view.metrics import metric_label

COLORS = {"svd": "#E8710A", "fwsvd": "#1A73E8", "asvd": "#188038", "whiten": "#9334E6", "kfac": "#B3261E",
          "dense": "#000000"}
#: For a method added to the library after these colours were chosen.
SPARE_COLORS = ("#12B5CB", "#F9AB00", "#E52592", "#5F6368")
LABELS = {**METHOD_LABELS, "dense": "dense model"}
KEPT_COLOR, REMOVED_COLOR, WARNING_COLOR = "#5F6368", "#DADCE0", "#D93025"
#: Line style of each rank rule on the allocated-vs-uniform figures.
RULE_DASH = {"uniform": "solid", "allocated": "dash"}


def color(method: str) -> str:
    return COLORS.get(method) or SPARE_COLORS[sum(map(ord, method)) % len(SPARE_COLORS)]


def label(method: str) -> str:
    return LABELS.get(method, method)


def layer_labels(frame: pd.DataFrame) -> list[str]:
    """Short x-axis labels: block index and the layer's name inside its block (``3 · attention.self.query``)."""
    return [f"{block.rsplit('.', 1)[-1]} · {name}" for block, name in zip(frame["block"], frame["name_in_block"])]


def _base_layout(title: str, height: int) -> dict:
    return dict(title=dict(text=title, x=0.0, xanchor="left"), height=height, margin=dict(l=60, r=20, t=60, b=40),
                legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))


def _layout(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(**_base_layout(title, height))
    return figure


def _domain(start: float, end: float) -> list[float]:
    return [min(1.0, max(0.0, round(start, 6))), min(1.0, max(0.0, round(end, 6)))]


def _grid(rows: int, columns: int, titles: Sequence[str], *, horizontal: float, vertical: float,
          shared_x: bool = False) -> dict:
    """Axes domains and subplot titles of a rows × columns grid, as layout entries (axis n is ``x{n}``).

    What make_subplots lays out, built as plain dicts so the whole figure is validated once: the rank
    explorer redraws on every rank change, and plotly's per-call validation would dominate that redraw.
    """
    layout: dict = {}
    annotations = []
    width = (1 - horizontal * (columns - 1)) / columns
    height = (1 - vertical * (rows - 1)) / rows
    for position in range(rows * columns):
        row, column = divmod(position, columns)
        suffix = "" if position == 0 else str(position + 1)
        x0 = column * (width + horizontal)
        y1 = 1 - row * (height + vertical)
        # Rounded and clipped: float error can put a domain end a hair outside [0, 1], which plotly rejects.
        layout[f"xaxis{suffix}"] = dict(domain=_domain(x0, x0 + width), anchor=f"y{suffix}")
        layout[f"yaxis{suffix}"] = dict(domain=_domain(y1 - height, y1), anchor=f"x{suffix}")
        if shared_x and row < rows - 1:
            layout[f"xaxis{suffix}"].update(matches=f"x{rows * columns if columns == 1 else ''}",
                                            showticklabels=False)
        if position < len(titles):
            annotations.append(dict(text=titles[position], x=x0 + width / 2, y=y1, xref="paper", yref="paper",
                                    xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=14)))
    layout["annotations"] = annotations
    return layout


def error_figure(frame: pd.DataFrame, methods: Sequence[str]) -> go.Figure:
    """Per-layer relative reconstruction error at the current ranks for each of ``methods``: plain on top,
    Fisher-weighted below (SVD minimises the first, FWSVD the second — the one accuracy follows). A layer
    kept dense has no error. With ASVD, whitened or K-FAC SVD among ``methods``, a third panel shows each
    method in the objective it minimises (for SVD and FWSVD that is the panel above, so it is not repeated)."""
    labels = layer_labels(frame)
    panels = [("{}_error", "Plain error ‖W − Ŵ‖ / ‖W‖"),
              ("{}_weighted_error", "Fisher-weighted error ‖(W − Ŵ)·D‖ / ‖W·D‖  (what the task feels)")]
    if any(method in STATISTICS_METHODS for method in methods):
        panels.append(("{}_objective_error", "Each method's own objective ‖P(W − Ŵ)Q‖ / ‖PWQ‖  (what it minimises)"))
    traces = []
    for position, (column, _) in enumerate(panels):
        axis = "" if position == 0 else str(position + 1)
        for method in methods:
            traces.append(dict(
                type="bar", x=labels, y=frame[column.format(method)].to_numpy(), name=label(method),
                marker_color=color(method),
                legendgroup=method, showlegend=axis == "", customdata=frame["rank"].to_numpy(), xaxis=f"x{axis}",
                yaxis=f"y{axis}", hovertemplate="%{x}<br>rank %{customdata}<br>relative error %{y:.3f}<extra>"
                                                + label(method) + "</extra>"))
    rows = len(panels)
    layout = _base_layout("Reconstruction error per layer at the current ranks", 310 * rows)
    layout.update(_grid(rows, 1, [title for _, title in panels], horizontal=0.0, vertical=0.1 if rows == 2 else 0.07,
                        shared_x=True))
    for position in range(rows):
        layout["yaxis" if position == 0 else f"yaxis{position + 1}"].update(
            title=dict(text="relative error (0–1)"), rangemode="tozero")
    layout[f"xaxis{rows}"].update(title=dict(text="layer (block · name)"), tickangle=-60)
    layout.update(barmode="group", bargap=0.2)
    return go.Figure(data=traces, layout=layout)


def params_figure(frame: pd.DataFrame) -> go.Figure:
    """Weight parameters kept and removed per layer (stacked: their sum is the dense layer); a layer at or
    past break-even is outlined in red, since its factorization is no smaller than the layer."""
    labels = layer_labels(frame)
    removed = frame["removed_params"].clip(lower=0)
    outline = [WARNING_COLOR if flag else KEPT_COLOR for flag in frame["above_break_even"]]
    layout = _base_layout("Parameters kept and removed per layer", 420)
    layout.update(barmode="stack", yaxis=dict(title=dict(text="weight parameters (thousands)")),
                  xaxis=dict(title=dict(text="layer (block · name); red outline: rank at or past break-even"),
                             tickangle=-60))
    return go.Figure(data=[
        go.Bar(x=labels, y=frame["kept_params"] / 1e3, name="kept", marker_color=KEPT_COLOR,
               marker_line_color=outline, marker_line_width=2,
               hovertemplate="%{x}<br>kept %{y:.1f}k weights<extra></extra>"),
        go.Bar(x=labels, y=removed / 1e3, name="removed", marker_color=REMOVED_COLOR,
               hovertemplate="%{x}<br>removed %{y:.1f}k weights<extra></extra>"),
    ], layout=layout)


def spectrum_figure(spectra: Mapping[str, pd.DataFrame], rows: pd.DataFrame, methods: Sequence[str],
                    columns: int = 3) -> go.Figure:
    """Normalised singular values of each layer in ``rows`` (a slice of the layer frame) for each of
    ``methods``, with the current cut (solid; at the full rank for a layer kept dense) and the break-even rank
    (dotted)."""
    grid_rows = max(1, -(-len(rows) // columns))
    layout = _base_layout("Singular-value spectra (solid line: current rank; dotted: break-even)", 300 * grid_rows + 80)
    layout.update(_grid(grid_rows, columns, list(rows["name_in_block"]), horizontal=0.07, vertical=0.16))
    # Traces as dicts: the figure validates them once, not once here and again in go.Figure.
    traces, shapes = [], []
    for position, (_, row) in enumerate(rows.iterrows()):
        axis = "" if position == 0 else str(position + 1)
        spectrum = spectra[row["layer"]]
        for method in methods:
            part = spectrum[spectrum["method"] == method]
            traces.append(dict(
                type="scatter", x=part["index"].to_numpy(), y=part["value"].to_numpy(), mode="lines",
                name=label(method), legendgroup=method,
                line=dict(color=color(method), width=2), showlegend=position == 0, xaxis=f"x{axis}",
                yaxis=f"y{axis}", hovertemplate="σ%{x}: %{y:.3g} of σ1<extra>" + label(method) + "</extra>"))
        cut_color = WARNING_COLOR if row["above_break_even"] else "#202124"
        for x, line in ((row["rank"], dict(color=cut_color, width=2)),
                        (row["break_even_rank"], dict(color="#9AA0A6", dash="dot", width=1))):
            shapes.append(dict(type="line", x0=x, x1=x, y0=0, y1=1, xref=f"x{axis}", yref=f"y{axis} domain",
                               line=line))
        layout[f"xaxis{axis}"]["title"] = dict(text="singular value index")
        # Decades only: plotly's default minor labels (2, 5) crowd a small log axis.
        layout[f"yaxis{axis}"].update(type="log", dtick=1, exponentformat="power")
        if position % columns == 0:
            layout[f"yaxis{axis}"]["title"] = dict(text="σ / σ1 (log)")
    layout["shapes"] = shapes
    return go.Figure(data=traces, layout=layout)


def fisher_layers_figure(frame: pd.DataFrame) -> go.Figure:
    """Where the importance lies per layer (share of the model's total Fisher) and how concentrated it is
    inside each layer (share held by the top 10% of input features)."""
    labels = layer_labels(frame)
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                           subplot_titles=("Share of the model's total Fisher importance",
                                           "Share held by the layer's top 10% input features"))
    figure.add_trace(go.Bar(x=labels, y=frame["share_of_model"], marker_color=COLORS["fwsvd"], showlegend=False,
                            hovertemplate="%{x}<br>%{y:.1%} of the model's importance<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Bar(x=labels, y=frame["top10_share"], marker_color="#5F6368", showlegend=False,
                            hovertemplate="%{x}<br>top 10%% of features hold %{y:.1%}<extra></extra>"), row=2, col=1)
    figure.add_hline(y=0.1, line=dict(color="#9AA0A6", dash="dot"), row=2, col=1,
                     annotation_text="uniform (10%)", annotation_position="top left")
    figure.update_yaxes(tickformat=".0%", title_text="share", rangemode="tozero")
    figure.update_xaxes(title_text="layer (block · name)", tickangle=-60, row=2, col=1)
    return _layout(figure, "Fisher importance per layer", 560)


def fisher_heatmap(matrix: np.ndarray, frame: pd.DataFrame) -> go.Figure:
    """Importance of every input feature (columns) of layers sharing one input width (rows), as log10 of
    the feature's importance relative to its layer's mean: red features are the ones FWSVD protects."""
    labels = layer_labels(frame)
    limit = float(max(1.0, np.nanpercentile(np.abs(matrix), 99)))
    figure = go.Figure(go.Heatmap(
        z=matrix, y=labels, x=np.arange(matrix.shape[1]), colorscale="RdBu_r", zmid=0, zmin=-limit, zmax=limit,
        colorbar=dict(title=dict(text="log10(I / mean)")),
        hovertemplate="%{y}<br>input feature %{x}<br>log10(I/mean) = %{z:.2f}<extra></extra>"))
    figure.update_xaxes(title_text="input feature index")
    figure.update_yaxes(title_text="layer", autorange="reversed")
    return _layout(figure, "Fisher importance per input feature (relative to each layer's mean)",
                   max(300, 26 * len(labels) + 140))


def cumulative_figure(curves: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Lorenz-style curves: the top x% of a layer's input features hold y% of its importance."""
    figure = go.Figure()
    for label, curve in curves.items():
        figure.add_trace(go.Scatter(x=curve["feature_share"], y=curve["importance_share"], mode="lines", name=label,
                                    hovertemplate="top %{x:.0%} of features: %{y:.1%}<extra>" + label + "</extra>"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="uniform",
                                line=dict(color="#9AA0A6", dash="dot")))
    figure.update_xaxes(title_text="share of input features (most important first)", tickformat=".0%")
    figure.update_yaxes(title_text="share of the layer's importance", tickformat=".0%")
    # Six layer names do not fit beside the title.
    return _side_legend(_layout(figure, "How concentrated the importance is", 460))


def _side_legend(figure: go.Figure) -> go.Figure:
    """The legend to the right of the plot, one entry a line: for more entries than fit beside the title."""
    figure.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    return figure


def exact_vs_batch_figure(frame: pd.DataFrame) -> go.Figure:
    """Agreement of exact per-example Fisher and the batch shortcut, per layer (1 = the same ranking)."""
    labels = layer_labels(frame)
    figure = go.Figure()
    for column, name, shade in (("cosine", "cosine similarity", COLORS["fwsvd"]),
                                ("spearman", "Spearman rank correlation", "#5F6368"),
                                ("top10_overlap", "top-10% feature overlap", "#9AA0A6")):
        figure.add_trace(go.Bar(x=labels, y=frame[column], name=name, marker_color=shade,
                                hovertemplate="%{x}<br>" + name + " %{y:.3f}<extra></extra>"))
    figure.update_layout(barmode="group")
    figure.update_yaxes(title_text="agreement (1 = identical)", range=[0, 1.05])
    figure.update_xaxes(title_text="layer (block · name)", tickangle=-60)
    return _layout(figure, "Exact per-example Fisher vs the batch shortcut", 440)


def _rule_traces(figure: go.Figure, frame: pd.DataFrame, methods: Sequence[str], x: str, y: str,
                 scale: float, what: str, interval: bool = False) -> None:
    """One line per (method, rank rule) of ``frame`` (columns method, rule, rank_ratio and ``x``, ``y``): the
    method's colour, solid for the uniform rule and dashed for the allocated one; with ``interval``, the
    ``{y}_low`` / ``{y}_high`` columns as error bars."""
    for method in methods:
        for rule, dash in RULE_DASH.items():
            part = frame[(frame["method"] == method) & (frame["rule"] == rule)].sort_values(x)
            if part.empty:
                continue
            name = f"{label(method)}, {rule}"
            bars = (dict(type="data", symmetric=False, array=(part[f"{y}_high"] - part[y]).tolist(),
                         arrayminus=(part[y] - part[f"{y}_low"]).tolist(), thickness=1) if interval else None)
            figure.add_trace(go.Scatter(
                x=(part[x] / scale).tolist(), y=part[y].tolist(), mode="lines+markers", name=name, error_y=bars,
                legendgroup=method, line=dict(color=color(method), width=3, dash=dash), marker=dict(size=9),
                customdata=part["rank_ratio"].tolist(),
                hovertemplate="rank ratio %{customdata:.2f}<br>%{x:.3g} " + what + "<br>" + y.replace("_", " ")
                              + " %{y:.4g}<extra>" + name + "</extra>"))


def compare_figure(frame: pd.DataFrame, metric: str, methods: Sequence[str],
                   x_range: Sequence[float] | None = None) -> go.Figure:
    """The paper's figure: the task metric (with its 95% intervals as error bars where the frame has them)
    against the whole model's parameters for each of ``methods`` over the swept rank ratios, per rank rule
    (uniform solid, allocated dashed), with the dense model as a black dashed line. ``x_range`` (millions)
    lines it up with :func:`allocation_figure`."""
    figure = go.Figure()
    dense = frame[frame["method"] == "dense"]
    _rule_traces(figure, frame, methods, "params", metric, 1e6, "M parameters", interval=f"{metric}_low" in frame)
    if not dense.empty:
        figure.add_hline(y=float(dense[metric].iloc[0]), line=dict(color=COLORS["dense"], dash="dash", width=2),
                         annotation_text=f"dense model ({float(dense['params'].iloc[0]) / 1e6:.1f}M)",
                         annotation_position="top left")
    figure.update_xaxes(title_text="whole model's parameters (millions)", range=x_range)
    figure.update_yaxes(title_text=metric_label(metric))
    return _side_legend(_layout(figure, f"{metric.replace('_', ' ').capitalize()} against model size", 460))


def allocation_figure(frame: pd.DataFrame, methods: Sequence[str], x_range: Sequence[float] | None = None) -> go.Figure:
    """Relative error (``relative_error``: sqrt(Σ‖(W − Ŵ)·D‖² / Σ‖W·D‖²) over the target layers) against the
    whole model's parameters (``model_params``), for each of ``methods``: every layer at one rank ratio (solid)
    against the ranks allocated for the same parameters (dashed) (:func:`fwsvd.view.rank_plan.allocation_curves`).
    ``x_range`` (millions) lines it up with :func:`compare_figure`."""
    figure = go.Figure()
    _rule_traces(figure, frame, methods, "model_params", "relative_error", 1e6, "M parameters")
    figure.update_xaxes(title_text="whole model's parameters (millions)", range=x_range)
    figure.update_yaxes(title_text="relative error, ‖(W − Ŵ)·D‖ / ‖W·D‖", rangemode="tozero", tickformat=".0%")
    return _side_legend(_layout(figure, "Error against size: uniform ranks (solid) vs allocated ranks (dashed)", 460))


def evaluation_figure(frame: pd.DataFrame, metric: str, methods: Sequence[str]) -> go.Figure:
    """The task metric of the evaluated models at the current ranks (dense, then ``methods``) as bars, with
    their 95% intervals (``{metric}_low`` / ``_high`` columns) as error bars."""
    order = [method for method in ("dense", *methods) if method in set(frame["method"])]
    frame = frame.set_index("method").loc[order].reset_index()
    # The 95% interval of each model's metric as an error bar (where the task has one).
    bars = (dict(type="data", symmetric=False, array=(frame[f"{metric}_high"] - frame[metric]).tolist(),
                 arrayminus=(frame[metric] - frame[f"{metric}_low"]).tolist(), color="#5F6368")
            if f"{metric}_low" in frame else None)
    figure = go.Figure(go.Bar(
        x=[label(method) for method in frame["method"]], y=frame[metric], error_y=bars,
        marker_color=[color(method) for method in frame["method"]],
        text=[f"{value:.3f}" for value in frame[metric]], textposition="inside",
        hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    figure.update_yaxes(title_text=metric_label(metric), range=[0, max(1.0, float(frame[metric].max()) * 1.15)])
    figure.update_xaxes(title_text="model")
    return _layout(figure, f"{metric.replace('_', ' ').capitalize()} at the current ranks", 360)

