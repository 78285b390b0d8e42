"""Figures build from hand-made graphs, explorers fill their output, files are written."""

from __future__ import annotations

import pytest
import torch

from kc_utils.circuits.graph import Graph
from kc_utils.models import ModelShape
from kc_utils.viz.circuits import circuit_explorer, plot_circuit, plot_overlap, smallest_drawable_budget
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
    assert dashes <= {"dot", "dash", "solid", "dashdot"} and len(dashes) >= 2  # q/k/v/MLP edges are told apart


def test_circuit_explorer_shows_a_figure_and_reports_empty_circuits():
    connected = _scored_graph()
    for name in ("input->a0.h0<q>", "a0.h0->m1", "m1->logits", "input->a1.h1<q>", "a1.h1->logits"):
        u, r = connected.edge_indices(name)
        connected.scores[u, r] = 100.0
    graphs = {"connected": connected, "empty": Graph(ModelShape(3, 4, 2, 8))}
    box = circuit_explorer(graphs, initial_edges=5)
    (dropdown, _slider), out = box.children[0].children, box.children[1]
    assert "application/vnd.plotly.v1+json" in out.outputs[0]["data"]
    assert _slider.min == smallest_drawable_budget([connected], _slider.max)  # every value of the range draws
    connected.copy().top_n(_slider.min)
    if _slider.min > 1:
        with pytest.raises(ValueError, match="empty after pruning"):
            connected.copy().top_n(_slider.min - 1)
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


def test_the_circuit_pair_explorer_starts_at_a_budget_that_draws_and_says_what_pruning_did():
    from kc_utils.viz.icl import circuit_pair_explorer

    pair = (_scored_graph(), _scored_graph())
    box = circuit_pair_explorer({"r": pair}, initial_edges=12)
    (_dropdown, slider), out = box.children[0].children, box.children[1]
    smallest = slider.min
    for n in (smallest, slider.max):  # both ends of the range draw a figure
        slider.value = n
        data = out.outputs[0]["data"]["application/vnd.plotly.v1+json"]
        kept = [g.copy().top_n(n).n_edges_in_graph for g in pair]
        assert (
            f"top {n} edges kept; pruning leaves {kept[0]} (zero-shot) and {kept[1]} (k-shot)"
            in (data["layout"]["title"]["text"])
        )
    if smallest > 1:
        with pytest.raises(ValueError):
            pair[0].copy().top_n(smallest - 1)
            pair[1].copy().top_n(smallest - 1)


def test_a_shared_script_page_says_what_is_missing_when_copied_alone(tmp_path):
    import pandas as pd

    from kc_utils.viz.save import MISSING_SCRIPT_NOTE

    fig = plot_overlap(pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["x", "y"], columns=["x", "y"]))
    page = save_figure(fig, "shared", tmp_path, png=False)[0].read_text()
    check = page[page.index('typeof Plotly === "undefined"') :]
    assert MISSING_SCRIPT_NOTE in check and check.index(MISSING_SCRIPT_NOTE) < check.index("</body>")
    alone = save_figure(fig, "alone", tmp_path / "alone", png=False, self_contained=True)[0].read_text()
    assert MISSING_SCRIPT_NOTE not in alone
