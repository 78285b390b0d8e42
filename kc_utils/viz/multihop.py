"""Plotly figures of two-hop questions: three circuits side by side, overlaps, the bridge lens, bridge patching.

Save them with :meth:`kc_utils.notebook.RunOutputs.figure`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.circuits.graph import Graph
from kc_utils.circuits.overlap import circuit_nodes
from kc_utils.viz.circuits import layer_ticks, plot_circuit, ring_nodes
from kc_utils.viz.style import TEMPLATE

__all__ = ["plot_bridge_lens", "plot_bridge_patching", "plot_overlaps", "plot_patching_by_size", "plot_three_circuits"]

SHARED_ALL, SHARED_TWO_HOP = "#d62728", "#ff7f0e"


def plot_three_circuits(circuits: Mapping[str, Graph], two_hop: str = "two_hop", title: str = "") -> go.Figure:
    """The circuits side by side (``{label: graph}``, the two-hop one named ``two_hop``), shared nodes ringed.

    Red rings: nodes in every circuit; orange rings: nodes a single-hop circuit shares with the
    two-hop circuit only. Hover over nodes and edge midpoints for names and scores.
    """
    if two_hop not in circuits:
        raise ValueError(f"no circuit named {two_hop!r}; the circuits are {list(circuits)}")
    names = {k: circuit_nodes(g) for k, g in circuits.items()}
    in_all = set.intersection(*names.values())
    fig = make_subplots(
        rows=1,
        cols=len(circuits),
        subplot_titles=[f"{k}: {g.n_edges_in_graph} edges, {len(names[k])} nodes" for k, g in circuits.items()],
    )
    for col, (key, graph) in enumerate(circuits.items(), start=1):
        for trace in plot_circuit(graph).data:
            trace.showlegend = bool(trace.showlegend) and col == 1
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(**layer_ticks(graph), row=1, col=col)
        order = {n: i for i, n in enumerate(graph.upstream_names)}
        everywhere = sorted(names[key] & in_all, key=order.__getitem__)
        ring_nodes(fig, graph, everywhere, SHARED_ALL, "node in every circuit", col, col == 1)
        if key != two_hop:
            with_two_hop = sorted((names[key] & names[two_hop]) - in_all, key=order.__getitem__)
            ring_nodes(fig, graph, with_two_hop, SHARED_TWO_HOP, "node shared with the two-hop circuit only", col, True)
    fig.update_layout(
        title=title or f"three circuits ({len(in_all)} nodes in all of them)",
        template=TEMPLATE,
        height=520,
        legend=dict(orientation="h", y=-0.15),
    )
    return fig


def plot_overlaps(comparison: pd.DataFrame, paper: tuple[tuple[float, float], ...] = (), title: str = "") -> go.Figure:
    """Node and edge overlap of each pair beside random circuits (mean ± std) and unrelated relations' circuits.

    ``comparison`` is :func:`kc_utils.analysis.multihop_text.overlap_comparison`; ``paper`` the published
    node/edge pairs (%), drawn as a shaded range.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=["nodes (shared / smaller)", "edges (shared / smaller)"])
    for col, m in enumerate(("node_overlap", "edge_overlap"), start=1):
        pairs = comparison["pair"].tolist()
        fig.add_trace(
            go.Bar(
                x=pairs,
                y=comparison[m],
                name="measured",
                marker_color="#2166ac",
                showlegend=col == 1,
                hovertemplate="%{x}: %{y:.0%}",
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Bar(
                x=pairs,
                y=comparison[f"{m}_random_mean"],
                error_y=dict(type="data", array=comparison[f"{m}_random_std"]),
                name="random circuits, same sizes",
                marker_color="#bdbdbd",
                showlegend=col == 1,
                customdata=comparison[f"{m}_random_std"],
                hovertemplate="%{x}: %{y:.0%} ± %{customdata:.0%}",
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Bar(
                x=pairs,
                y=comparison[f"{m}_unrelated_mean"],
                name="unrelated relations' circuits",
                marker_color="#fdae6b",
                showlegend=col == 1,
                hovertemplate="%{x}: %{y:.0%}",
            ),
            1,
            col,
        )
        if paper:
            values = [p[col - 1] / 100 for p in paper]
            fig.add_hrect(
                y0=min(values), y1=max(values), fillcolor="#2ca02c", opacity=0.15, line_width=0, row=1, col=col
            )
        fig.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=col)
    fig.update_layout(
        barmode="group",
        template=TEMPLATE,
        height=430,
        title=title or "overlap of the three circuits (green band: the paper's range on GPT-2 medium)",
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def plot_bridge_lens(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Share of prompts with the bridge (solid) and a control entity (dotted) in the top 10, by layer."""
    fig = go.Figure()
    for where, colour in (("subject", "#1b9e77"), ("last", "#7570b3")):
        for who, dash in (("bridge", "solid"), ("control", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=summary["layer"],
                    y=summary[f"{who}_{where}_top"],
                    mode="lines+markers",
                    line=dict(color=colour, dash=dash),
                    name=f"{who} at the {'subject' if where == 'subject' else 'last position'}",
                    customdata=summary[f"{who}_{where}_median"],
                    hovertemplate="layer %{x}: %{y:.0%} in top 10, median rank %{customdata:.0f}<extra></extra>",
                )
            )
    fig.update_layout(
        title=title or "is the bridge entity readable? (logit lens, top-10 share)",
        xaxis_title="after block (−1 = embeddings)",
        yaxis=dict(title="prompts with it in the top 10", range=[-0.02, 1.02], tickformat=".0%"),
        template=TEMPLATE,
        height=420,
    )
    return fig


def plot_bridge_patching(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Recovery and follow share of the first hop's circuit restored, against random sets (box) and the two ends.

    Hover over a random set's point or a bar for its value."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["clean answer top-1 (follow)", "logit-difference recovery"])
    for col, m in enumerate(("follow", "recovery"), start=1):
        randoms = table[table["set"] == "random"]
        fig.add_trace(
            go.Box(
                y=randoms[m],
                name="random sets",
                marker_color="#969696",
                boxpoints="all",
                hoveron="points",
                hovertemplate=f"random set: {m} %{{y:.2f}}<extra></extra>",
            ),
            1,
            col,
        )
        for kind, colour in (("corrupt", "#b2182b"), ("group", "#2166ac"), ("clean", "#1a9850")):
            row = table[table["set"] == kind]
            label = "first hop's circuit" if kind == "group" else f"{kind} run"
            fig.add_trace(
                go.Bar(
                    x=[label] * len(row),
                    y=row[m],
                    name=label,
                    marker_color=colour,
                    showlegend=False,
                    hovertemplate=f"%{{x}}: {m} %{{y:.2f}}<extra></extra>",
                ),
                1,
                col,
            )
    fig.update_layout(
        title=title or "bridge patching: restore the first hop's circuit in a prompt about another bridge",
        template=TEMPLATE,
        height=420,
        showlegend=False,
    )
    return fig


def plot_patching_by_size(sizes: pd.DataFrame, title: str = "") -> go.Figure:
    """Follow share and recovery of the first hop's strongest components by set size, against random sets.

    ``sizes`` is :func:`kc_utils.analysis.multihop.bridge_patching_by_size`'s table; random sets are
    drawn as their mean with ± one standard deviation. Hover for the values.
    """
    rows = sizes.sort_values("size")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["clean answer top-1 (follow)", "logit-difference recovery"])
    for col, m in enumerate(("follow", "recovery"), start=1):
        fig.add_trace(
            go.Scatter(
                x=rows["size"],
                y=rows[f"{m}_group"],
                mode="lines+markers",
                name="strongest components of the first hop's circuit",
                marker_color="#2166ac",
                showlegend=col == 1,
                hovertemplate=f"strongest %{{x}} components: {m} %{{y:.2f}}<extra></extra>",
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Scatter(
                x=rows["size"],
                y=rows[f"{m}_random_mean"],
                error_y={"type": "data", "array": rows[f"{m}_random_std"].tolist(), "visible": True},
                customdata=rows[f"{m}_random_std"],
                mode="lines+markers",
                name="random sets of the same size (mean ± std)",
                marker_color="#969696",
                showlegend=col == 1,
                hovertemplate=f"random sets of %{{x}}: {m} %{{y:.2f}} ± %{{customdata:.2f}}<extra></extra>",
            ),
            1,
            col,
        )
        fig.update_xaxes(title_text="components restored", row=1, col=col)
        fig.update_yaxes(range=[-0.05, 1.05] if m == "follow" else None, row=1, col=col)
    fig.update_layout(
        title=title or "bridge patching by set size: the first hop's strongest components against random sets",
        template=TEMPLATE,
        height=420,
    )
    return fig
