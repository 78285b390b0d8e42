"""Plotly figures of circuits: the circuit itself, a live explorer, faithfulness curves, overlaps.

Save them with :func:`kc_utils.viz.save.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from kc_utils.circuits.graph import Graph
from kc_utils.circuits.nodes import parse_node
from kc_utils.viz.save import show_in_output
from kc_utils.viz.style import TEMPLATE

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"


def _node_xy(graph: Graph, node: str) -> tuple[float, float]:
    """Layer on x (input at −1, logits at n_layers); heads by index on y, MLPs above them."""
    H = graph.shape.n_heads
    parsed = parse_node(node)
    if parsed.kind == "input":
        return -1.0, (H - 1) / 2
    if parsed.kind == "logits":
        return float(graph.shape.n_layers), (H - 1) / 2
    if parsed.kind == "mlp":
        return int(parsed.layer) + 0.35, H + 0.5
    return float(parsed.layer), float(parsed.index)


#: Dash style of an edge by the receiver input it enters (the logits and MLPs read the residual stream whole).
LETTER_DASH = {"q": "dot", "k": "dash", "v": "solid", "": "dashdot"}
_LETTER_NAME = {"q": "into a query", "k": "into a key", "v": "into a value", "": "into an MLP / the logits"}


def plot_circuit(
    graph: Graph,
    title: str = "",
    width_bins: int = 4,
    helps: str = "helps the answer",
    hurts: str = "hurts the answer",
) -> go.Figure:
    """The circuit in ``graph.in_graph``: layers left to right, heads and MLPs as nodes.

    Edge colour: blue for positive scores (the edge helps the metric), red for negative; width
    grows with ``|score|`` (quantile bins); dash style says which input the edge enters (dotted:
    query, dashed: key, solid: value, dash-dot: an MLP or the logits) — both explained in the legend;
    ``helps``/``hurts`` say in the legend what a positive/negative score means for the graph's metric
    (e.g. "favours the wrong answer" for logit(wrong) − logit(correct)). Node labels
    sit on white boxes beside the markers so edges do not cross them. Hover over a node or an
    edge's midpoint for names and scores.
    """
    fig = go.Figure()
    edges = list(graph.edges(only_in_graph=True))
    if edges:
        magnitudes = np.array([abs(e.score) for e in edges])
        cuts = np.linspace(0, 1, width_bins + 1)[1:-1]
        edges_bins = np.quantile(magnitudes, cuts) if len(edges) > width_bins else []
        for sign, colour in ((1, POSITIVE), (-1, NEGATIVE)):
            for letter, dash in LETTER_DASH.items():
                for b in range(width_bins):
                    xs: list[float | None] = []
                    ys: list[float | None] = []
                    for e, mag in zip(edges, magnitudes):
                        edge_letter = parse_node(e.receiver).letter or ""
                        if (e.score >= 0) != (sign > 0) or edge_letter != letter:
                            continue
                        if int(np.searchsorted(edges_bins, mag, side="right")) != b:
                            continue
                        x0, y0 = _node_xy(graph, e.upstream)
                        for target in graph.receiver_targets(e.receiver):
                            x1, y1 = _node_xy(graph, target)
                            xs += [x0, x1, None]
                            ys += [y0, y1, None]
                    if xs:
                        fig.add_trace(
                            go.Scatter(
                                x=xs,
                                y=ys,
                                mode="lines",
                                line=dict(color=colour, width=0.6 + 1.4 * b, dash=dash),
                                opacity=0.55,
                                hoverinfo="skip",
                                showlegend=False,
                                name=f"edges {helps if sign > 0 else hurts}, {_LETTER_NAME[letter]}",
                            )
                        )
        for colour, meaning in ((POSITIVE, helps), (NEGATIVE, hurts)):
            fig.add_trace(
                go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=3), name=f"edge {meaning}")
            )
        for letter, dash in LETTER_DASH.items():
            fig.add_trace(
                go.Scatter(
                    x=[None], y=[None], mode="lines", line=dict(color="#555555", dash=dash), name=_LETTER_NAME[letter]
                )
            )
        mids = []
        for e in edges:
            (x0, y0), (x1, y1) = _node_xy(graph, e.upstream), _node_xy(graph, graph.receiver_targets(e.receiver)[0])
            mids.append(((x0 + x1) / 2, (y0 + y1) / 2))
        fig.add_trace(
            go.Scatter(
                x=[m[0] for m in mids],
                y=[m[1] for m in mids],
                mode="markers",
                marker=dict(size=5, color="rgba(0,0,0,0.01)"),
                hovertext=[f"{e.name}<br>score {e.score:+.4f}" for e in edges],
                hoverinfo="text",
                showlegend=False,
                name="edge (hover for its score)",
            )
        )
    nodes = graph.nodes_in_graph()
    xy = [_node_xy(graph, n) for n in nodes]
    colour = ["#636363" if n in ("input", "logits") else "#fd8d3c" if n.startswith("m") else "#6baed6" for n in nodes]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in xy],
            y=[p[1] for p in xy],
            mode="markers",
            marker=dict(size=14, color=colour, line=dict(color="black", width=1)),
            hovertext=list(nodes),
            hoverinfo="text",
            showlegend=False,
            name="node",
        )
    )
    for name, (x, y) in zip(nodes, xy):
        fig.add_annotation(
            x=x,
            y=y,
            text=name,
            showarrow=False,
            xshift=0,
            yshift=16,
            font=dict(size=10),
            bgcolor="rgba(255,255,255,0.9)",
            borderpad=1,
        )
    fig.update_layout(
        title=title or f"circuit: {graph.n_edges_in_graph} of {graph.n_edges} edges, {len(nodes)} nodes",
        xaxis=dict(title="layer", zeroline=False, **layer_ticks(graph)),
        yaxis=dict(title="head (MLPs on top)", zeroline=False),
        height=560,
        template=TEMPLATE,
        legend=dict(orientation="h", yanchor="top", y=-0.15),
    )
    return fig


def smallest_drawable_budget(graphs: Sequence[Graph], upper: int) -> int:
    """The smallest edge count ``n ≤ upper`` whose top-``n`` circuit is non-empty after pruning, for every graph
    that draws at ``upper`` at all (a graph that never draws, e.g. one without scores, is left to say why).

    Non-emptiness grows with ``n`` (the top ``n + 1`` edges contain the top ``n``), so every budget
    from this one up draws; a widget's slider starts here and never offers a value that cannot draw.
    Returns ``upper`` when no graph draws.
    """

    def draws(graph: Graph, n: int) -> bool:
        try:
            graph.copy().top_n(n)
        except ValueError:
            return False
        return True

    drawable = [g for g in graphs if draws(g, upper)]
    return next((n for n in range(1, upper) if all(draws(g, n) for g in drawable)), upper) if drawable else upper


def circuit_explorer(graphs: dict[str, Graph], initial_edges: int | None = None) -> Any:
    """ipywidgets: a relation dropdown and an edge-count slider that redraw the circuit live.

    Parameters
    ----------
    graphs
        Relation → a graph with scores: a found circuit (``RelationCircuit.graph``) or every edge's scores
        (``RelationCircuit.scored``) — the slider re-selects the top ``n`` edges by score either way.
    initial_edges
        Where the slider starts; ``None``: the first graph's circuit size when it holds a selected circuit,
        else 40 edges.

    Returns
    -------
    ipywidgets.VBox
        The dropdown, the slider and the figure.

    Examples
    --------
    >>> circuit_explorer({"capital": result.graph})  # doctest: +SKIP
    """
    import ipywidgets as widgets

    first = next(iter(graphs.values()))
    if initial_edges is None:
        selected = not bool((first.in_graph == first.real_edges).all())
        initial_edges = first.n_edges_in_graph if selected else min(40, first.n_edges)
    dropdown = widgets.Dropdown(options=list(graphs), description="relation")
    largest = min(first.n_edges, max(50, 4 * initial_edges))
    smallest = smallest_drawable_budget(list(graphs.values()), largest)
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
        graph = graphs[dropdown.value].copy()
        try:
            graph.top_n(slider.value)
        except Exception as error:  # an empty circuit at tiny budgets: say why
            show_in_output(out, f"{type(error).__name__}: {error}")
            return
        show_in_output(
            out,
            plot_circuit(
                graph, title=f"{dropdown.value}: top {slider.value} edges → {graph.n_edges_in_graph} after pruning"
            ),
        )

    dropdown.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([dropdown, slider]), out])


def plot_overlap(overlap: pd.DataFrame, title: str = "node overlap between relations' circuits (Jaccard)") -> go.Figure:
    """Heatmap of a square overlap table (values in [0, 1])."""
    return plot_matrix(overlap, title)


def plot_size_curves(
    curves: dict[str, pd.DataFrame], knees: dict[str, dict[float, int | None]] | None = None
) -> go.Figure:
    """Faithfulness (normalised logit difference) of the top-n circuit against its size, one line per relation.

    ``curves`` are :func:`kc_utils.circuits.budget.size_curve` tables; ``knees`` mark each
    relation's knee sizes with open circles.
    """
    fig = go.Figure()
    palette = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for i, (name, curve) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        data = curve.sort_values("n_edges")
        fig.add_trace(
            go.Scatter(
                x=data["n_edges"],
                y=data["faithfulness"],
                mode="lines",
                name=name,
                line=dict(color=colour),
                hovertemplate="%{x} edges: faithfulness %{y:.2f}",
            )
        )
        for level, edges in (knees or {}).get(name, {}).items():
            if edges is None:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[edges],
                    y=[level],
                    mode="markers",
                    marker=dict(symbol="circle-open", size=10, color=colour),
                    showlegend=False,
                    name=f"{name} knee",
                    hovertext=f"{name}: {edges} edges keep {level:.0%}",
                    hoverinfo="text",
                )
            )
    for level in sorted({lv for k in (knees or {}).values() for lv in k}):
        fig.add_hline(y=level, line=dict(color="#999999", dash="dot"))
    fig.update_layout(
        xaxis=dict(type="log", title="edges kept (after pruning)"),
        yaxis=dict(title="Dval faithfulness (logit difference; 0 = empty, 1 = full)"),
        template=TEMPLATE,
        height=450,
        title="how small can a circuit be? (open circles: the knees)",
    )
    return fig


def plot_matrix(
    matrix: pd.DataFrame,
    title: str,
    zmin: float = 0.0,
    zmax: float = 1.0,
    x_title: str = "",
    y_title: str = "",
) -> go.Figure:
    """Heatmap of a relation × relation table (an overlap or transfer matrix), values printed with 2 decimals."""
    values = matrix.to_numpy(dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=list(matrix.columns),
            y=list(matrix.index),
            colorscale="Blues",
            zmin=zmin,
            zmax=zmax,
            text=[["n/a" if np.isnan(v) else f"{v:.2f}" for v in row] for row in values],
            texttemplate="%{text}",
            hovertemplate="%{y} → %{x}: %{text}<extra></extra>",
            name=title or "matrix",
        )
    )
    fig.update_layout(
        title=title,
        height=200 + 32 * len(matrix),
        template=TEMPLATE,
        xaxis=dict(title=x_title, tickangle=-45),
        yaxis=dict(title=y_title, autorange="reversed"),
    )
    return fig


def layer_ticks(graph: Graph) -> dict[str, Any]:
    """x-axis ticks of a circuit figure: ``input``, each layer, ``logits`` (positions -1 … n_layers)."""
    return dict(
        tickmode="array",
        tickvals=list(range(-1, graph.shape.n_layers + 1)),
        ticktext=["input", *map(str, range(graph.shape.n_layers)), "logits"],
    )


def ring_nodes(
    fig: Any, graph: Graph, names: Sequence[str], colour: str, label: str, col: int, show_legend: bool = True
) -> None:
    """Draw a coloured ring around each node of ``names`` in subplot column ``col`` (one legend entry ``label``)."""
    if not names:
        return
    xy = [_node_xy(graph, n) for n in names]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in xy],
            y=[p[1] for p in xy],
            mode="markers",
            name=label,
            legendgroup=label,
            marker=dict(size=24, color="rgba(0,0,0,0)", line=dict(color=colour, width=3)),
            hovertext=[f"{n}: {label}" for n in names],
            hoverinfo="text",
            showlegend=show_legend,
        ),
        row=1,
        col=col,
    )
