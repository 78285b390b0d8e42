"""Plotly figures of attention heads: attention patterns, head roles, group tests and head ablations.

Every function takes the tables of :mod:`kc_utils.analysis.heads`,
:mod:`kc_utils.analysis.head_groups` and :mod:`kc_utils.analysis.head_ablation` and returns a
``go.Figure`` (or, for the explorers, an ipywidgets box that redraws live; for
:func:`format_table`, a pandas ``Styler``); save figures with :func:`kc_utils.viz.save.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.save import show_in_output as _show
from kc_utils.viz.style import TEMPLATE

__all__ = [
    "ROLE_COLOURS",
    "attention_explorer",
    "format_table",
    "plot_ablation_by_role",
    "plot_attention",
    "plot_group_tests",
    "plot_head_roles",
    "plot_role_counts",
    "plot_role_sensitivity",
    "spread_overlapping",
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
            texttemplate="%{z:.2f}",
            hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.2f}<extra></extra>",
            name="attention",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
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


def spread_overlapping(
    x: Sequence[float], y: Sequence[float], radius: float = 0.06, tol: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Move points that (nearly) coincide onto a small circle around their common spot, deterministically.

    Points closer than ``tol`` (in both coordinates, after rounding to a ``tol`` grid) form a
    cluster; a cluster of ``n > 1`` points is laid out evenly on a circle whose radius grows with
    ``n`` so neighbours stay ``radius`` apart; single points do not move. The order of the
    points inside a cluster is kept (first point at 12 o'clock, then clockwise).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    keys = [(round(a / tol), round(b / tol)) for a, b in zip(x, y)]
    out_x, out_y = x.copy(), y.copy()
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        n = len(members)
        if n < 2:
            continue
        ring = radius / (2 * math.sin(math.pi / n))  # neighbouring points exactly `radius` apart
        cx, cy = x[members].mean(), y[members].mean()
        for j, i in enumerate(members):
            angle = math.pi / 2 - 2 * math.pi * j / n
            out_x[i], out_y[i] = cx + ring * math.cos(angle), cy + ring * math.sin(angle)
    return out_x, out_y


def plot_head_roles(roles: pd.DataFrame, title: str = "", **thresholds: float) -> go.Figure:
    """Where each head reads (left) and what it writes (right); colour = role.

    Left: attention of the last token to the subject (x) and to the relation words (y). Attention
    is nearly one-hot in small models, so heads pile up at (1, 0) and (0, 1): overlapping heads are
    spread on a small circle (:func:`spread_overlapping`; hover shows the true values). Right:
    direct logit attribution to the answer (x) and ``relation_type_auc`` (y). Dashed lines are the
    thresholds of :func:`kc_utils.analysis.heads.assign_head_roles` (``thresholds`` override its
    defaults). Heads with ``in_circuit`` False (when the column exists) are drawn hollow.

    Args:
        roles: :func:`kc_utils.analysis.heads.head_roles` output (one relation).
    """
    from kc_utils.analysis.heads import DEFAULT_THRESHOLDS

    t = {**DEFAULT_THRESHOLDS, **thresholds}
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("where it reads (last token's attention)", "what it writes (its output at the last token)"),
        horizontal_spacing=0.1,
    )
    read_x, read_y = spread_overlapping(roles["attn_subject"], roles["attn_relation"])
    write_x, write_y = spread_overlapping(roles["dla"], roles["relation_type_auc"], radius=0.02, tol=0.01)
    in_circuit = roles["in_circuit"] if "in_circuit" in roles else pd.Series(True, index=roles.index)
    for role, colour in ROLE_COLOURS.items():
        part = roles.index[roles["role"] == role]
        if not len(part):
            continue
        positions = roles.index.get_indexer(part)
        sub = roles.loc[part]
        tokens = sub["top_tokens"].map(lambda t: ", ".join(map(str, t))) if "top_tokens" in sub else [""] * len(sub)
        custom = list(zip(sub["attn_subject"], sub["attn_relation"], sub["dla"], sub["relation_type_auc"], tokens))
        hover = (
            "%{text} (" + role + ")<br>attention: subject %{customdata[0]:.2f}, relation words %{customdata[1]:.2f}"
            "<br>DLA to the answer %{customdata[2]:+.2f}, relation-type AUC %{customdata[3]:.2f}"
            "<br>top tokens: %{customdata[4]}<extra></extra>"
        )
        symbols = ["circle" if c else "circle-open" for c in in_circuit.loc[part]]
        for col, (xs, ys) in enumerate(((read_x, read_y), (write_x, write_y)), start=1):
            fig.add_trace(
                go.Scatter(
                    x=xs[positions],
                    y=ys[positions],
                    mode="markers+text",
                    name=role,
                    legendgroup=role,
                    showlegend=col == 1,
                    text=list(sub["head"]),
                    textposition="top center",
                    textfont=dict(size=9),
                    marker=dict(color=colour, size=12, symbol=symbols, line=dict(color="black", width=0.5)),
                    customdata=custom,
                    hovertemplate=hover,
                ),
                row=1,
                col=col,
            )
    fig.add_vline(x=t["subject_threshold"], line=dict(dash="dash", color="grey"), row=1, col=1)
    fig.add_hline(y=t["relation_threshold"], line=dict(dash="dash", color="grey"), row=1, col=1)
    fig.add_vline(x=t["min_dla"], line=dict(dash="dash", color="grey"), row=1, col=2)
    fig.add_hline(y=t["min_type_auc"], line=dict(dash="dash", color="grey"), row=1, col=2)
    fig.add_hline(y=0.5, line=dict(dash="dot", color="lightgrey"), row=1, col=2)
    fig.update_xaxes(title="attention to the subject", range=[-0.2, 1.2], row=1, col=1)
    fig.update_yaxes(title="attention to the relation words", range=[-0.2, 1.2], row=1, col=1)
    fig.update_xaxes(title="direct logit attribution to the answer", row=1, col=2)
    fig.update_yaxes(title="relation-type AUC (0.5 = no preference)", range=[-0.05, 1.05], row=1, col=2)
    fig.update_layout(
        title=title or "head roles: dashed lines are the rule's thresholds (hollow = not in the circuit)",
        template=TEMPLATE,
        height=520,
    )
    return fig


def plot_role_sensitivity(sensitivity: pd.DataFrame, title: str = "") -> go.Figure:
    """Role counts as each threshold moves (one panel per threshold); the reference value is marked.

    ``sensitivity`` is :func:`kc_utils.analysis.heads.role_sensitivity` output.
    """
    names = list(dict.fromkeys(sensitivity["threshold"]))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    for col, name in enumerate(names, start=1):
        part = sensitivity[sensitivity["threshold"] == name].sort_values("value")
        for role, colour in ROLE_COLOURS.items():
            if role not in part:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["value"],
                    y=part[role],
                    mode="lines+markers",
                    name=role,
                    legendgroup=role,
                    showlegend=col == 1,
                    line=dict(color=colour),
                    hovertemplate=f"{name} = %{{x:.3g}}<br>{role}: %{{y:d}} heads<extra></extra>",
                ),
                row=1,
                col=col,
            )
        reference = part.loc[part["is_reference"], "value"]
        if len(reference):
            fig.add_vline(x=float(reference.iloc[0]), line=dict(dash="dash", color="grey"), row=1, col=col)
    fig.update_yaxes(title="heads", row=1, col=1)
    fig.update_layout(
        title=title or "how many heads get each role as one threshold moves (dashed: the value used)",
        template=TEMPLATE,
        height=380,
    )
    return fig


def plot_group_tests(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Per relation: a role's heads as a group (marker) vs random same-size sets (bar = mean ± std).

    Left: accuracy after ablating the set; right: share of prompts flipped to the corrupt answer
    after patching the set's last-position outputs from the corrupt run. ``summary`` has one row
    per relation × group × test with the keys of
    :func:`kc_utils.analysis.head_groups.group_test_summary` and columns ``relation``, ``group``
    (e.g. ``"movers"``) and ``test`` (``"ablation"``/``"patching"``).
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("accuracy with the set ablated", "answers flipped by patching the set from the corrupt run"),
    )
    symbols = ["diamond", "square", "circle", "triangle-up"]
    groups = list(dict.fromkeys(summary["group"]))
    for col, (test, metric) in enumerate((("ablation", "top1"), ("patching", "flip")), start=1):
        part = summary[summary["test"] == test]
        for g, group in enumerate(groups):
            rows = part[part["group"] == group]
            if rows.empty:
                continue
            colour = ROLE_COLOURS.get(group.split()[0].rstrip("s"), ROLE_COLOURS["other"])  # "movers" -> mover
            fig.add_trace(
                go.Bar(
                    x=[rows["relation"], [group] * len(rows)],
                    y=rows[f"{metric}_random_mean"],
                    error_y=dict(type="data", array=rows[f"{metric}_random_std"]),
                    name=f"random sets (same size as the {group})",
                    marker_color="lightgrey",
                    legendgroup=f"random {group}",
                    showlegend=col == 1 and g == 0,
                    hovertemplate="%{x}<br>random sets: %{y:.2f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=[rows["relation"], [group] * len(rows)],
                    y=rows[f"{metric}_group"],
                    mode="markers",
                    name=group,
                    legendgroup=group,
                    showlegend=col == 1,
                    marker=dict(
                        color=colour, size=11, symbol=symbols[g % len(symbols)], line=dict(color="black", width=1)
                    ),
                    hovertemplate="%{x}<br>" + group + ": %{y:.2f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(range=[0, 1.05], row=1, col=1, title="top-1 accuracy")
    fig.update_yaxes(range=[0, 1.05], row=1, col=2, title="share flipped")
    fig.update_layout(
        title=title
        or "roles confirmed as groups: the role's heads (markers) vs random same-size head sets (bars, ± std)",
        template=TEMPLATE,
        barmode="group",
        height=480,
    )
    return fig


def format_table(table: pd.DataFrame, precision: int = 2, hide_index: bool = True) -> Any:
    """A ``Styler`` that prints integer-valued columns as integers, other floats with ``precision``
    decimals, booleans as they are, and lists joined by commas."""
    formats: dict[str, Any] = {}
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_integer_dtype(values):
            formats[column] = "{:d}"
        elif pd.api.types.is_float_dtype(values):
            finite = values.dropna()
            integral = len(finite) > 0 and bool(np.all(np.isclose(finite, np.round(finite))))
            formats[column] = "{:.0f}" if integral else f"{{:.{precision}f}}"
        elif values.map(lambda v: isinstance(v, (list, tuple))).any():
            formats[column] = lambda v: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    styler = table.style.format(formats, na_rep="–")
    return styler.hide(axis="index") if hide_index else styler


def plot_role_counts(counts: pd.DataFrame, title: str = "") -> go.Figure:
    """Stacked bars of head roles per layer; ``counts`` is ``[layer × role]`` (e.g. a crosstab)."""
    fig = go.Figure()
    for role, colour in ROLE_COLOURS.items():
        if role in counts.columns:
            fig.add_trace(
                go.Bar(
                    x=[str(i) for i in counts.index],
                    y=counts[role],
                    name=role,
                    marker_color=colour,
                    hovertemplate="layer %{x}: %{y} heads",
                )
            )
    fig.update_layout(
        barmode="stack",
        title=title or "circuit heads per layer and role, summed over relations",
        xaxis=dict(title="layer", type="category"),
        yaxis=dict(title="heads"),
        template=TEMPLATE,
        height=420,
    )
    return fig


def plot_ablation_by_role(by_role: pd.DataFrame, k: int = 10) -> go.Figure:
    """Per role, one point per relation: change in answer probability, and share of gaining objects.

    Hover over a point for its relation, heads and value.

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
        for col, (column, what) in enumerate(
            (("delta_prob", "Δ P(answer) %{y:+.3f}"), ("same_relation_share", "share %{y:.2f}")), start=1
        ):
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
                    hoveron="points",
                    hovertemplate="%{hovertext}<br>" + what + f"<extra>{role}</extra>",
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
            hovertemplate="%{hovertext}: chance share %{y:.2f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=1)
    fig.update_yaxes(title="mean Δ probability", row=1, col=1)
    fig.update_yaxes(title="share", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="ablating heads by role (one point per relation)", template=TEMPLATE, height=450)
    return fig
