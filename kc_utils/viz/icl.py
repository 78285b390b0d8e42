"""Plotly figures of in-context learning: accuracy by k, two circuits side by side, attention, Table 2.

Save them with :meth:`kc_utils.notebook.RunOutputs.figure`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.circuits.compare import compare_circuits
from kc_utils.circuits.graph import Graph
from kc_utils.viz.circuits import layer_ticks, plot_circuit, ring_nodes, smallest_drawable_budget
from kc_utils.viz.save import show_in_output
from kc_utils.viz.style import TEMPLATE

__all__ = ["circuit_pair_explorer", "plot_accuracy_by_k", "plot_circuit_pair", "plot_span_attention", "plot_table2"]

NEW, DROPPED = "#d62728", "#7f7f7f"
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def plot_accuracy_by_k(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Top-1 accuracy against the number of demonstrations, one panel per format, one line per relation.

    Dotted lines: the same prompts with the demonstrations' objects shuffled.
    """
    formats = list(dict.fromkeys(table["format"]))
    fig = make_subplots(rows=1, cols=len(formats), subplot_titles=[f"{f} format" for f in formats], shared_yaxes=True)
    for col, fmt in enumerate(formats, start=1):
        for i, (key, group) in enumerate(table[table["format"] == fmt].groupby("relation", sort=False)):
            colour = PALETTE[i % len(PALETTE)]
            group = group.sort_values("k")
            fig.add_trace(
                go.Scatter(
                    x=group["k"],
                    y=group["top1"],
                    mode="lines+markers",
                    name=key,
                    legendgroup=key,
                    line=dict(color=colour),
                    showlegend=col == 1,
                    hovertemplate="k = %{x}: top-1 %{y:.0%}",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=group["k"],
                    y=group["top1_shuffled"],
                    mode="lines",
                    name=f"{key} (shuffled demos)",
                    legendgroup=key,
                    line=dict(color=colour, dash="dot"),
                    showlegend=False,
                    hovertemplate="k = %{x}: top-1 %{y:.0%}",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="demonstrations k", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text="top-1 accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_layout(
        title=title or "accuracy by number of demonstrations (dotted: objects shuffled)",
        template=TEMPLATE,
        height=420,
    )
    return fig


def plot_circuit_pair(
    before: Graph, after: Graph, titles: tuple[str, str] = ("zero-shot", "k-shot"), title: str = ""
) -> go.Figure:
    """Two circuits side by side, node labels on both; heads new in ``after`` ringed red there, heads dropped
    ringed grey in ``before``. Each legend entry appears once (the panels share colours and dash styles)."""
    diff = compare_circuits(before, after)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            f"{titles[0]}: {before.n_edges_in_graph} edges",
            f"{titles[1]}: {after.n_edges_in_graph} edges",
        ],
    )
    for col, graph in ((1, before), (2, after)):
        single = plot_circuit(graph)
        for trace in single.data:
            if col == 2:
                trace.showlegend = False
            fig.add_trace(trace, row=1, col=col)
        axis = "" if col == 1 else str(col)
        for note in single.layout.annotations:
            fig.add_annotation(note.update(xref=f"x{axis}", yref=f"y{axis}"))
        fig.update_xaxes(**layer_ticks(graph), row=1, col=col)
    ring_nodes(fig, before, diff.heads_dropped, DROPPED, "head dropped with demonstrations", 1)
    ring_nodes(fig, after, diff.heads_added, NEW, "head new with demonstrations", 2)
    new = ", ".join(diff.heads_added) or "none"
    fig.update_layout(
        title=title or f"circuits without and with demonstrations (new heads: {new})",
        template=TEMPLATE,
        height=520,
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def circuit_pair_explorer(
    pairs: dict[str, tuple[Graph, Graph]], initial_edges: int, titles: tuple[str, str] = ("zero-shot", "k-shot")
) -> Any:
    """ipywidgets: a relation dropdown and an edge-count slider redrawing both circuits and the new heads.

    ``pairs`` maps a relation to its two *scored* graphs; the slider re-selects the top ``n`` edges of
    each. Its range starts at the smallest budget that draws every circuit
    (:func:`kc_utils.viz.circuits.smallest_drawable_budget`), and the title says what pruning left.
    """
    import ipywidgets as widgets

    first = next(iter(pairs.values()))[0]
    largest = min(first.n_edges, max(60, 4 * initial_edges))
    smallest = smallest_drawable_budget([g for pair in pairs.values() for g in pair], largest)
    dropdown = widgets.Dropdown(options=list(pairs), description="relation")
    slider = widgets.IntSlider(
        value=max(initial_edges, smallest),
        min=smallest,
        max=largest,
        step=1,
        description="edges",
        continuous_update=False,
    )
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        try:
            before, after = (g.copy().top_n(slider.value) for g in pairs[dropdown.value])
        except ValueError as error:  # a graph without scores: say why
            show_in_output(out, f"{type(error).__name__}: {error}")
            return
        title = (
            f"{dropdown.value}: top {slider.value} edges kept; pruning leaves {before.n_edges_in_graph} "
            f"({titles[0]}) and {after.n_edges_in_graph} ({titles[1]})"
        )
        show_in_output(out, plot_circuit_pair(before, after, titles, title=title))

    dropdown.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([dropdown, slider]), out])


def plot_span_attention(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Stacked bars: where each listed head's last-token attention goes, per relation and head.

    ``table`` rows carry ``relation``, ``head``, ``attn_bos``, ``attn_demos``, ``attn_separators``,
    ``attn_query_subject``, ``attn_query_other`` (and optionally ``head_set`` for the hover).
    """
    labels = [f"{r}<br>{h}" for r, h in zip(table["relation"], table["head"])]
    parts = [
        ("attn_demos", "demonstrations", "#d62728"),
        ("attn_separators", "separators", "#ff9896"),
        ("attn_query_subject", "query subject", "#1f77b4"),
        ("attn_query_other", "rest of query", "#aec7e8"),
        ("attn_bos", "BOS", "#c7c7c7"),
    ]
    fig = go.Figure()
    for column, name, colour in parts:
        fig.add_trace(go.Bar(x=labels, y=table[column], name=name, marker_color=colour, hovertemplate="%{x}: %{y:.2f}"))
    fig.update_layout(
        barmode="stack",
        template=TEMPLATE,
        height=440,
        yaxis=dict(title="attention from last token"),
        title=title or "where the heads look from the last token (k-shot prompts)",
    )
    return fig


def plot_table2(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Table 2 as horizontal bars (labels read across, not rotated): original, head set ablated, random heads
    (mean ± std); this model on the left, the paper (GPT-2 medium) on the right."""
    short = {"new in the k-shot circuit": "new heads", "most attention to demonstrations": "top-attention heads"}
    labels = [f"{r} ({short.get(s, s)})" for r, s in zip(table["relation"], table["head_set"])]
    paper = table.drop_duplicates("relation").dropna(subset=["paper_original"])
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["this model", "paper (GPT-2 medium)"],
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.25,
    )
    bars = [
        ("original", None, "original", "#4d4d4d"),
        ("ablated", None, "head set ablated", "#d62728"),
        ("random_mean", "random_std", "random heads ablated", "#9ecae1"),
    ]
    for column, error, name, colour in bars:
        err = dict(type="data", array=table[error]) if error else None
        fig.add_trace(
            go.Bar(
                y=labels,
                x=table[column],
                orientation="h",
                name=name,
                legendgroup=name,
                marker_color=colour,
                error_x=err,
                hovertemplate="%{y}: %{x:.1f}%",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                y=paper["relation"],
                x=paper[f"paper_{column.replace('_mean', '')}"],
                orientation="h",
                name=f"{name} (paper)",
                legendgroup=name,
                marker_color=colour,
                showlegend=False,
                hovertemplate="%{y}: %{x:.1f}%",
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="accuracy (%)", range=[0, 105])
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        barmode="group",
        template=TEMPLATE,
        height=160 + 55 * len(table),
        title=title or "Table 2",
        legend=dict(orientation="h", y=-0.12),
    )
    return fig
