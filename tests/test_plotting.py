"""Figures build from hand-made graphs, explorers fill their output, files are written."""

from __future__ import annotations

import torch

from kc_utils.circuits.graph import Graph
from kc_utils.models import ModelShape
from kc_utils.viz.circuits import circuit_explorer, plot_circuit, plot_overlap
from kc_utils.viz.save import save_figure


def _scored_graph() -> Graph:
    graph = Graph(ModelShape(3, 4, 2, 8))
    graph.scores = torch.randn(graph.scores.shape, generator=torch.Generator().manual_seed(0)) * graph.real_edges
    return graph


def test_plot_circuit_draws_every_node_and_hovers_every_edge():
    graph = _scored_graph().greedy(15)
    fig = plot_circuit(graph)
    node_trace = fig.data[-1]
    assert list(node_trace.hovertext) == graph.nodes_in_graph()
    assert [a.text for a in fig.layout.annotations] == graph.nodes_in_graph()  # labels on white boxes
    hover = fig.data[-2].hovertext
    assert len(hover) == graph.n_edges_in_graph and all("score" in h for h in hover)
    legend = {trace.name for trace in fig.data if trace.showlegend is not False and trace.name}
    assert {"edge helps the answer", "into a query", "into a key", "into a value"} <= legend
    dashes = {trace.line.dash for trace in fig.data if trace.mode == "lines" and trace.x[0] is not None}
    assert dashes <= {"dot", "dash", "solid"} and len(dashes) >= 2  # q/k/v edges are told apart


def test_circuit_explorer_shows_a_figure_and_reports_empty_circuits():
    connected = _scored_graph()
    for name in ("input->a0.h0<q>", "a0.h0->m1", "m1->logits", "input->a1.h1<q>", "a1.h1->logits"):
        u, r = connected.edge_indices(name)
        connected.scores[u, r] = 100.0
    graphs = {"connected": connected, "empty": Graph(ModelShape(3, 4, 2, 8))}
    box = circuit_explorer(graphs, initial_edges=5)
    (dropdown, _slider), out = box.children[0].children, box.children[1]
    assert "application/vnd.plotly.v1+json" in out.outputs[0]["data"]
    dropdown.value = "empty"  # no scores: the explorer says why instead of failing
    assert out.outputs[0]["output_type"] == "stream" and "no scores yet" in out.outputs[0]["text"]


def test_save_figure_writes_html(tmp_path):
    import pandas as pd

    written = save_figure(
        plot_overlap(pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["x", "y"], columns=["x", "y"])), "overlap", tmp_path
    )
    assert written[0] == tmp_path / "overlap.html" and written[0].read_text().lstrip().lower().startswith(
        "<!doctype html>"
    )


def test_a_self_contained_figure_needs_no_sibling_script(tmp_path):
    import pandas as pd

    fig = plot_overlap(pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["x", "y"], columns=["x", "y"]))
    shared = save_figure(fig, "shared", tmp_path / "shared", png=False)[0]
    alone = save_figure(fig, "alone", tmp_path / "alone", png=False, self_contained=True)[0]
    assert (tmp_path / "shared" / "plotly.min.js").exists() and 'src="plotly.min.js"' in shared.read_text()
    assert not (tmp_path / "alone" / "plotly.min.js").exists()
    assert "plotly.min.js" not in alone.read_text()[:2000] and alone.stat().st_size > 1_000_000
