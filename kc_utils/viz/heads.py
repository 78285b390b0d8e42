"""Plotly figures of attention heads: attention patterns, head roles and head ablations.

Every function takes the tables of :mod:`kc_utils.analysis.heads` and
:mod:`kc_utils.analysis.head_ablation` and returns a ``go.Figure`` (or, for the explorers, an
ipywidgets box that redraws live); save figures with :func:`kc_utils.viz.save.save_figure`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.save import show_in_output as _show

__all__ = [
    "ROLE_COLOURS",
    "attention_explorer",
    "plot_ablation_by_role",
    "plot_attention",
    "plot_head_roles",
    "plot_role_counts",
]

#: One colour per head role (:data:`kc_utils.analysis.heads.ROLES`), used by every figure here.
ROLE_COLOURS = {"mover": "#d95f02", "mix": "#7570b3", "relation": "#1b9e77", "other": "#9e9e9e"}


def plot_attention(pattern: pd.DataFrame, title: str = "") -> go.Figure:
    """Heatmap of one head's attention on one prompt (query tokens down, key tokens across)."""
    fig = go.Figure(
        go.Heatmap(
            z=pattern.values,
            x=list(pattern.columns),
            y=list(pattern.index),
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=pattern.values.round(2),
            texttemplate="%{text}",
            hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=220 + 28 * len(pattern),
        xaxis=dict(title="attends to (key)", tickangle=-45),
        yaxis=dict(title="from (query)", autorange="reversed"),
    )
    return fig


def attention_explorer(patterns: dict[str, pd.DataFrame], roles: pd.DataFrame | None = None, prompt: str = "") -> Any:
    """ipywidgets: a dropdown over heads that redraws :func:`plot_attention` live.

    ``patterns`` come from :func:`kc_utils.analysis.heads.attention_patterns`; with ``roles`` the dropdown
    labels show each head's role.
    """
    import ipywidgets as widgets

    role_of = dict(zip(roles["head"], roles["role"])) if roles is not None else {}
    options = [(f"{h} ({role_of[h]})" if h in role_of else h, h) for h in patterns]
    dropdown = widgets.Dropdown(options=options, description="head")
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        _show(out, plot_attention(patterns[dropdown.value], title=f"{dropdown.value} on {prompt!r}"))

    dropdown.observe(redraw, names="value")
    redraw()
    return widgets.VBox([dropdown, out])


def plot_head_roles(
    roles: pd.DataFrame, subject_threshold: float = 0.3, relation_threshold: float = 0.3, title: str = ""
) -> go.Figure:
    """Heads by attention to the subject (x) and to the relation words (y); colour = role, size = |DLA|.

    ``roles`` is :func:`kc_utils.analysis.heads.head_roles` output. Dashed lines mark the role thresholds.
    """
    fig = go.Figure()
    biggest = max(float(roles["dla"].abs().max()), 1e-9)
    for role, colour in ROLE_COLOURS.items():
        part = roles[roles["role"] == role]
        if part.empty:
            continue
        tokens = part["top_tokens"].map(lambda t: ", ".join(map(str, t))) if "top_tokens" in part else [""] * len(part)
        fig.add_trace(
            go.Scatter(
                x=part["attn_subject"],
                y=part["attn_relation"],
                mode="markers+text",
                name=role,
                text=part["head"],
                textposition="top center",
                textfont=dict(size=9),
                marker=dict(
                    color=colour,
                    size=8 + 32 * part["dla"].abs() / biggest,
                    line=dict(color="black", width=0.5),
                    opacity=0.8,
                ),
                customdata=list(zip(part["dla"], part["answer_rank"], tokens)),
                hovertemplate="%{text}<br>subject %{x:.2f}, relation %{y:.2f}"
                "<br>DLA %{customdata[0]:+.3f}, answer rank %{customdata[1]}"
                "<br>top tokens: %{customdata[2]}<extra>" + role + "</extra>",
            )
        )
    fig.add_vline(x=subject_threshold, line=dict(dash="dash", color="grey"))
    fig.add_hline(y=relation_threshold, line=dict(dash="dash", color="grey"))
    fig.update_layout(
        title=title or "circuit heads: attention of the last token (size = |direct logit attribution to the answer|)",
        xaxis=dict(title="attention to the subject", range=[-0.05, 1.05]),
        yaxis=dict(title="attention to the relation words", range=[-0.05, 1.05]),
        template="plotly_white",
        height=500,
    )
    return fig


def plot_role_counts(counts: pd.DataFrame, title: str = "") -> go.Figure:
    """Stacked bars of head roles per layer; ``counts`` is ``[layer × role]`` (e.g. a crosstab)."""
    fig = go.Figure()
    for role, colour in ROLE_COLOURS.items():
        if role in counts.columns:
            fig.add_trace(go.Bar(x=[str(i) for i in counts.index], y=counts[role], name=role, marker_color=colour))
    fig.update_layout(
        barmode="stack",
        title=title or "circuit heads per layer and role, summed over relations",
        xaxis=dict(title="layer", type="category"),
        yaxis=dict(title="heads"),
        template="plotly_white",
        height=420,
    )
    return fig


def plot_ablation_by_role(by_role: pd.DataFrame, k: int = 10) -> go.Figure:
    """Per role, one point per relation: change in answer probability, and share of gaining objects.

    ``by_role`` holds :func:`kc_utils.analysis.head_ablation.ablation_by_role` rows with a ``relation`` column.
    The right panel's crosses are the chance share of each relation.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Δ P(answer) when one head is ablated",
            f"share of the top-{k} gaining tokens that are other objects of the relation",
        ),
    )
    roles = [r for r in ROLE_COLOURS if r in set(by_role["role"])]
    for role in roles:
        part = by_role[by_role["role"] == role]
        hover = [
            f"{rel}: {n} head(s) {', '.join(h)}" for rel, n, h in zip(part["relation"], part["n_heads"], part["heads"])
        ]
        for col, column in ((1, "delta_prob"), (2, "same_relation_share")):
            fig.add_trace(
                go.Box(
                    x=[role] * len(part),
                    y=part[column],
                    name=role,
                    marker_color=ROLE_COLOURS[role],
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    hovertext=hover,
                    showlegend=col == 1,
                    legendgroup=role,
                ),
                row=1,
                col=col,
            )
    chance = by_role.drop_duplicates("relation")
    fig.add_trace(
        go.Scatter(
            x=["chance"] * len(chance),
            y=chance["chance_share"],
            mode="markers",
            name="chance",
            marker=dict(symbol="x", color="black"),
            hovertext=list(chance["relation"]),
        ),
        row=1,
        col=2,
    )
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=1)
    fig.update_yaxes(title="mean Δ probability", row=1, col=1)
    fig.update_yaxes(title="share", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="ablating heads by role (one point per relation)", template="plotly_white", height=450)
    return fig
