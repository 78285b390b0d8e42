"""Plotly figures of knowledge neurons and query localization (notebook 06).

Every function takes arrays or the tables of :mod:`kc_utils.neurons` and returns a ``go.Figure``;
save figures with :func:`kc_utils.viz.save.save_figure` (or ``RunOutputs.figure``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.style import TEMPLATE

__all__ = [
    "plot_attention_scaling",
    "plot_consistency_distribution",
    "plot_interventions",
    "plot_modification",
    "plot_query_neurons",
    "plot_query_overlap",
    "plot_relation_consistency",
]

_KIND_COLOURS = {"source": "#b2182b", "paraphrase": "#2166ac", "random": "#9e9e9e"}
_METHOD_COLOURS = {"query-local": "#2166ac", "global": "#1b9e77", "CAS": "#d95f02", "random": "#9e9e9e"}


def plot_query_neurons(
    scores: np.ndarray, masks: np.ndarray, layers: Sequence[int], queries: Sequence[str], title: str = ""
) -> go.Figure:
    """Layer × neuron picture of one fact: each query's scores over the neurons any query selected.

    Args:
        scores: ``[q, l, n]`` attribution scores; shown divided by each query's largest score.
        masks: ``[q, l, n]`` knowledge neurons (marked with a dot).
        layers: the layers of the second axis; queries: a label per query.
    """
    scores, masks = np.asarray(scores, dtype=float), np.asarray(masks, dtype=bool)
    used = np.argwhere(masks.any(0))  # (layer index, neuron), layer-major
    if len(used) == 0:
        return go.Figure().update_layout(title=f"{title} (no knowledge neuron selected)", template=TEMPLATE)
    labels = [f"L{layers[j]}.n{i}" for j, i in used]
    top = np.maximum(scores.reshape(len(scores), -1).max(1), 1e-12)[:, None]
    z = scores[:, used[:, 0], used[:, 1]] / top
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=list(queries),
            colorscale="RdBu",
            zmid=0,
            colorbar=dict(title="score / max"),
            name="score / max",
            hovertemplate="%{y}<br>%{x}: score / max %{z:.2f}<extra></extra>",
        )
    )
    dots = np.argwhere(masks[:, used[:, 0], used[:, 1]])
    fig.add_trace(
        go.Scatter(
            x=[labels[c] for c in dots[:, 1]],
            y=[queries[r] for r in dots[:, 0]],
            mode="markers",
            marker=dict(color="black", size=5),
            name="knowledge neuron",
            customdata=[z[r, c] for r, c in dots],
            hovertemplate="%{y}<br>%{x}: knowledge neuron, score / max %{customdata:.2f}<extra></extra>",
        )
    )
    for boundary in np.flatnonzero(np.diff(used[:, 0])):
        fig.add_vline(x=boundary + 0.5, line=dict(color="grey", dash="dot"))
    fig.update_layout(title=title, template=TEMPLATE, height=180 + 40 * len(queries), xaxis_title="neuron")
    fig.update_xaxes(type="category", tickangle=-60)
    return fig


def plot_query_overlap(matrix: np.ndarray, queries: Sequence[str], title: str = "") -> go.Figure:
    """Pairwise Jaccard overlap of one fact's query neuron sets."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(queries),
            y=list(queries),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=[["n/a" if np.isnan(v) else f"{v:.2f}" for v in row] for row in np.asarray(matrix, dtype=float)],
            texttemplate="%{text}",
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
            colorbar=dict(title="Jaccard"),
            name="Jaccard",
        )
    )
    fig.update_layout(title=title, template=TEMPLATE, height=200 + 45 * len(queries))
    fig.update_yaxes(autorange="reversed")
    return fig


def plot_consistency_distribution(table: pd.DataFrame, static: float, otsu: float, title: str = "") -> go.Figure:
    """Histogram of the facts' consistency scores with the static and Otsu thresholds."""
    fig = go.Figure(
        go.Histogram(
            x=table["cs"],
            xbins=dict(start=0, end=1.0001, size=0.05),
            marker_color="#4d4d4d",
            name="facts",
            hovertemplate="consistency %{x}: %{y} facts<extra></extra>",
        )
    )
    # both labels at the top, on opposite sides of their lines, so neither sits on the axis or on the other
    left, right = ("top left", "top right") if static <= otsu else ("top right", "top left")
    fig.add_vline(
        x=static,
        line=dict(color="#b2182b", dash="dash"),
        annotation_text=f"static {static:.2f}",
        annotation_position=left,
    )
    fig.add_vline(
        x=otsu,
        line=dict(color="#2166ac", dash="dot"),
        annotation_text=f"Otsu {otsu:.2f}",
        annotation_position=right,
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=380,
        xaxis_title="consistency score (mean pairwise Jaccard)",
        yaxis_title="facts",
        xaxis_range=[0, 1],
    )
    return fig


def plot_relation_consistency(summary: pd.DataFrame, paper_share: float, title: str = "") -> go.Figure:
    """Share of inconsistent facts per relation, both thresholds, beside the paper's share."""
    summary = summary.sort_values("inconsistent_static")
    fig = go.Figure()
    for column, name, colour in (
        ("inconsistent_static", "static threshold", "#b2182b"),
        ("inconsistent_otsu", "Otsu threshold", "#2166ac"),
    ):
        fig.add_trace(
            go.Bar(
                y=summary["relation"],
                x=summary[column],
                name=name,
                orientation="h",
                marker_color=colour,
                customdata=summary["n_facts"],
                hovertemplate="%{x:.0%} of %{customdata} facts",
            )
        )
    # the paper's line is labelled above the plot area, where no bar can sit under the label
    fig.add_vline(x=paper_share, line=dict(color="black", dash="dash"))
    fig.add_annotation(
        x=paper_share,
        y=1.0,
        yref="paper",
        yanchor="bottom",
        text=f"LLaMA3-8B {paper_share:.0%}",
        showarrow=False,
        bgcolor="rgba(255,255,255,0.9)",
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        barmode="group",
        height=260 + 28 * len(summary),
        margin=dict(t=100),
        xaxis=dict(title="share of inconsistent facts", range=[0, 1], tickformat=".0%"),
    )
    return fig


def plot_interventions(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Mean Δp(answer) ± std by factor: on the source query, its paraphrases, and random same-size sets."""
    fig = go.Figure()
    for kind, colour in _KIND_COLOURS.items():
        rows = summary[summary["kind"] == kind]
        fig.add_trace(
            go.Bar(
                x=[f"×{f:g}" for f in rows["factor"]],
                y=rows["delta_mean"],
                name=kind,
                marker_color=colour,
                error_y=dict(type="data", array=rows["delta_std"]),
                customdata=rows["delta_std"],
                hovertemplate="scaled %{x}: Δp %{y:+.3f} ± %{customdata:.3f}",
            )
        )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        barmode="group",
        height=380,
        xaxis_title="neurons of the source query scaled by",
        yaxis_title="Δp(answer)",
    )
    return fig


def plot_attention_scaling(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Knowledge-neuron activation change and Δp when attention to the most-attended positions is scaled."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("knowledge neurons' mean activation (relative change)", "Δp(answer)")
    )
    hover = {
        "kn_change": "%{x}: activation %{y:+.1%} ± %{customdata:.1%}",
        "delta_p": "%{x}: Δp %{y:+.3f} ± %{customdata:.3f}",
    }
    for factor, colour in ((0.0, "#b2182b"), (2.0, "#2166ac")):
        for keys, pattern in (("top", ""), ("random", "/")):
            rows = summary[(summary["factor"] == factor) & (summary["keys"] == keys)]
            if rows.empty:
                continue
            name = f"×{factor:g}, {keys} keys"
            labels = [f"layer {s}" if s != "all" else "all" for s in rows["scaled"]]
            for col, column in ((1, "kn_change"), (2, "delta_p")):
                fig.add_trace(
                    go.Bar(
                        x=labels,
                        y=rows[f"{column}_mean"],
                        error_y=dict(type="data", array=rows[f"{column}_std"]),
                        name=name,
                        legendgroup=name,
                        showlegend=col == 1,
                        marker_color=colour,
                        marker_pattern_shape=pattern,
                        customdata=rows[f"{column}_std"],
                        hovertemplate=hover[column],
                    ),
                    row=1,
                    col=col,
                )
    fig.update_layout(title=title, template=TEMPLATE, barmode="group", height=400)
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    return fig


def plot_modification(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """The CAS table as bars: reliability, generalisation and locality per method, one row per task."""
    tasks = list(summary["task"].drop_duplicates())
    metrics = ["reliability", "generalisation", "locality"]
    fig = make_subplots(rows=len(tasks), cols=1, subplot_titles=tasks, vertical_spacing=0.15)
    for r, task in enumerate(tasks, start=1):
        rows = summary[summary["task"] == task]
        for _, row in rows.iterrows():
            fig.add_trace(
                go.Bar(
                    x=metrics,
                    y=[row[m] for m in metrics],
                    name=row["method"],
                    legendgroup=row["method"],
                    showlegend=r == 1,
                    marker_color=_METHOD_COLOURS.get(row["method"], "#666666"),
                    error_y=dict(type="data", array=[row[f"{m}_std"] for m in metrics]),
                    customdata=[row[f"{m}_std"] for m in metrics],
                    hovertemplate="%{x}: %{y:.2f} ± %{customdata:.2f}",
                ),
                row=r,
                col=1,
            )
    fig.update_layout(title=title, template=TEMPLATE, barmode="group", height=330 * len(tasks))
    return fig
