"""Plotly figures of notebook 03 (knowledge editing): the case study's lens and heads, the edited circuit's
changes, the per-layer sweep as a heat map, and where the edits live.

Each function takes a table from :mod:`kc_utils.editing` (named in its docstring) and returns a figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.style import TEMPLATE

__all__ = ["plot_circuit_diff", "plot_edit_lens", "plot_head_dla", "plot_location", "plot_sweep_heatmap"]

_COLOURS = {"new": "#b2182b", "old": "#2166ac"}
_STATUS = {"added": "#1a9850", "removed": "#d73027", "kept": "#878787"}


def plot_edit_lens(before: pd.DataFrame, after: pd.DataFrame, title: str = "") -> go.Figure:
    """Probability of the new and old object after each block, at the subject's last token and at the last
    position, before (dashed) and after (solid) the edit; tables of
    :func:`~kc_utils.editing.readout.lens_at_subject_and_last`."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("at the subject's last token", "at the last position"))
    for col, position in enumerate(("subject last", "last"), start=1):
        for stage, table, dash in (("before", before, "dash"), ("after", after, "solid")):
            for label in ("new", "old"):
                rows = table[(table["position"] == position) & (table["object"] == label)].sort_values("layer")
                token = rows["token"].iloc[0] if len(rows) else label
                fig.add_trace(
                    go.Scatter(
                        x=[("emb" if x < 0 else f"block {x}") for x in rows["layer"]],
                        y=rows["prob"],
                        mode="lines+markers",
                        name=f"{label} ({token}), {stage}",
                        line=dict(color=_COLOURS[label], dash=dash),
                        legendgroup=f"{label}-{stage}",
                        showlegend=col == 1,
                        hovertemplate="%{x}: probability %{y:.3f}",
                    ),
                    row=1,
                    col=col,
                )
    fig.update_yaxes(title_text="probability (logit lens)", range=[0, 1])
    fig.update_layout(
        title=title or "logit lens of the new and old object, before and after the edit", height=380, template=TEMPLATE
    )
    return fig


def plot_head_dla(before: pd.DataFrame, after: pd.DataFrame, top: int = 10, title: str = "") -> go.Figure:
    """Direct logit attribution of the heads to the new object before and after the edit, for the ``top`` heads
    after it; tables of :func:`~kc_utils.editing.readout.head_dla`."""
    heads_after = after[after["kind"] == "head"].set_index("component")["logit"]
    heads_before = before[before["kind"] == "head"].set_index("component")["logit"]
    chosen = heads_after.abs().sort_values(ascending=False).index[:top].tolist()
    fig = go.Figure()
    hover = "%{x}: %{y:+.3f}"
    before_values = [heads_before.get(h, 0.0) for h in chosen]
    fig.add_bar(x=chosen, y=before_values, name="before", marker_color="#bababa", hovertemplate=hover)
    fig.add_bar(x=chosen, y=[heads_after[h] for h in chosen], name="after", marker_color="#b2182b", hovertemplate=hover)
    fig.update_layout(
        barmode="group",
        title=title or "direct logit attribution of each head to the new object",
        yaxis_title="logit contribution",
        height=360,
        template=TEMPLATE,
    )
    return fig


def plot_circuit_diff(diff: pd.DataFrame, top: int = 20, title: str = "") -> go.Figure:
    """The edges whose score changed most between the circuits before and after the edit, coloured by status;
    table of :func:`~kc_utils.editing.readout.circuit_diff`."""
    rows = diff.head(top).iloc[::-1]
    fig = go.Figure()
    for status, colour in _STATUS.items():
        part = rows[rows["status"] == status]
        fig.add_bar(
            y=part["edge"],
            x=part["change"],
            orientation="h",
            name=status,
            marker_color=colour,
            customdata=part[["score_before", "score_after"]].to_numpy(),
            hovertemplate="%{y}<br>change %{x:+.3f}<br>before %{customdata[0]:.3f}<br>after %{customdata[1]:.3f}",
        )
    fig.update_layout(
        title=title or "edges added, removed and re-weighted by the edit (score after − before)",
        xaxis_title="change of the EAP-IG score",
        height=max(320, 22 * len(rows) + 120),
        barmode="overlay",
        template=TEMPLATE,
    )
    return fig


def _sweep_cell_text(mean: float, std: float) -> str:
    """What a sweep heat-map cell reads: ``"0.65 ± 0.12"``; ``"0.65"`` when the spread is undefined (one edit);
    ``"n/a"`` when the metric is undefined (e.g. locality_subject when no subject has another fact)."""
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def plot_sweep_heatmap(summary: pd.DataFrame, metrics: Sequence[str], title: str = "") -> go.Figure:
    """Mean of each metric per method (panel) and layer (column), with mean ± std written in each cell ("n/a"
    where the metric is undefined); table of :func:`~kc_utils.editing.layer_sweep.summarise_sweep`."""
    methods = list(dict.fromkeys(summary["method"]))
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=[m.upper() for m in methods], shared_yaxes=True)
    for col, method in enumerate(methods, start=1):
        rows = summary[summary["method"] == method].sort_values("layer")
        z = [[float(r[f"{m}_mean"]) for _, r in rows.iterrows()] for m in metrics]
        text = [
            [_sweep_cell_text(float(r[f"{m}_mean"]), float(r[f"{m}_std"])) for _, r in rows.iterrows()] for m in metrics
        ]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[f"layer {int(x)}" for x in rows["layer"]],
                y=list(metrics),
                text=text,
                texttemplate="%{text}",
                hovertemplate=f"{method.upper()}, %{{x}}<br>%{{y}}: %{{text}}<extra></extra>",
                name=method.upper(),
                zmin=-0.2,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=col == len(methods),
            ),
            row=1,
            col=col,
        )
    fig.update_layout(
        title=title or "editing metrics per method and layer (mean ± std over edits)", height=380, template=TEMPLATE
    )
    return fig


def plot_location(location: pd.DataFrame, title: str = "") -> go.Figure:
    """Share of working edits undone by restoring the edited MLP's original output at the subject vs at the last
    position, per method and layer; table of :func:`~kc_utils.editing.layer_sweep.location_table`."""
    x = [f"{m.upper()} L{int(layer)}" for m, layer in zip(location["method"], location["layer"])]
    working = location["n_working"] if "n_working" in location else None
    hover = "%{x}: %{y:.0%} undone" + (" of %{customdata} working edits" if working is not None else "")
    fig = go.Figure()
    for column, name, colour in (
        ("undone_by_subject", "restored at the subject", "#b2182b"),
        ("undone_by_last", "restored at the last position", "#2166ac"),
    ):
        fig.add_bar(
            x=x,
            y=location[column],
            name=name,
            marker_color=colour,
            customdata=working,
            hovertemplate=hover,
        )
    fig.update_layout(
        barmode="group",
        title=title or "where the edit lives: share of working edits undone by each restoration",
        yaxis=dict(title="share undone", range=[0, 1.05]),
        height=360,
        template=TEMPLATE,
    )
    return fig
