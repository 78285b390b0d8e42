"""The computation graph: sizes, pruning on hand-built circuits, selection, files."""

from __future__ import annotations

import pytest
import torch

from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.models import ModelShape


def expected_edges(L: int, H: int, G: int, parallel: bool = False) -> int:
    total = 0
    for layer in range(L):
        visible = 1 + layer * (H + 1)
        total += (H + 2 * G) * visible + visible + (0 if parallel else H)
    return total + 1 + L * (H + 1)


@pytest.mark.parametrize(
    "shape",
    [
        ModelShape(12, 12, 12, 768),
        ModelShape(24, 16, 16, 1024),
        ModelShape(4, 8, 2, 64),
        ModelShape(3, 4, 4, 32, parallel_attn_mlp=True),
    ],
)
def test_edge_counts(shape):
    graph = Graph(shape)
    assert graph.n_edges == expected_edges(shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.parallel_attn_mlp)


def test_paper_sizes():
    assert Graph(ModelShape(12, 12, 12, 768)).n_edges == 32491  # GPT-2 small: "~32k"
    assert 225_000 < Graph(ModelShape(24, 16, 16, 1024)).n_edges < 240_000  # GPT-2 medium: "~232k"


def test_gqa_key_value_receivers_are_shared():
    graph = Graph(ModelShape(2, 4, 2, 16))
    assert "a1.g1<k>" in graph.receiver_index and "a1.h1<k>" not in graph.receiver_index
    assert graph.receiver_slice(1, "k").stop - graph.receiver_slice(1, "k").start == 2
    graph.set_edges(["input->a1.g1<k>", "a1.h3->logits"])
    assert graph.nodes_in_graph() == ["input", "a1.h2", "a1.h3", "logits"]


def test_edges_respect_causality():
    graph = Graph(ModelShape(2, 2, 2, 8))
    assert graph.real_edges[graph.upstream_index["a0.h1"], graph.receiver_index["m0"]]
    assert not graph.real_edges[graph.upstream_index["a1.h0"], graph.receiver_index["a1.h1<q>"]]
    assert not graph.real_edges[graph.upstream_index["m0"], graph.receiver_index["m0"]]
    parallel = Graph(ModelShape(2, 2, 2, 8, parallel_attn_mlp=True))
    assert not parallel.real_edges[parallel.upstream_index["a0.h1"], parallel.receiver_index["m0"]]


def test_prune_removes_dangling_nodes():
    graph = Graph(ModelShape(2, 2, 2, 8))
    graph.set_edges(
        [
            "input->a0.h0<q>",
            "a0.h0->m0",
            "m0->logits",  # a connected path
            "a0.h1->m1",  # a0.h1 has no input, m1 no output
            "input->a1.h0<v>",  # a1.h0 never reaches the logits
        ]
    )
    graph.prune()
    kept = {e.name for e in graph.edges(only_in_graph=True)}
    assert kept == {"input->a0.h0<q>", "a0.h0->m0", "m0->logits"}


def test_prune_keeps_chains_through_keys():
    graph = Graph(ModelShape(2, 2, 2, 8))
    graph.set_edges(["input->a0.h1<k>", "a0.h1->a1.h0<v>", "a1.h0->logits"]).prune()
    assert graph.n_edges_in_graph == 3


def test_prune_of_disconnected_circuit_is_an_error():
    graph = Graph(ModelShape(2, 2, 2, 8))
    graph.set_edges(["a0.h1->m1"])
    with pytest.raises(CircuitError, match="empty after pruning"):
        graph.prune()


def _scored(shape=ModelShape(2, 2, 2, 8), seed=0) -> Graph:
    graph = Graph(shape)
    generator = torch.Generator().manual_seed(seed)
    graph.scores = torch.randn(graph.scores.shape, generator=generator) * graph.real_edges
    return graph


def test_top_n_keeps_the_largest_scores():
    graph = _scored()
    graph.top_n(5, prune=False)
    kept = graph.scores[graph.in_graph].abs()
    dropped = graph.scores[graph.real_edges & ~graph.in_graph].abs()
    assert graph.n_edges_in_graph == 5 and kept.min() >= dropped.max()


def test_top_n_signed_and_threshold():
    graph = _scored()
    graph.top_n(4, absolute=False, prune=False)
    assert (graph.scores[graph.in_graph] > 0).all()
    graph.threshold(1.0, prune=False)
    assert (graph.scores[graph.in_graph].abs() >= 1.0).all()
    with pytest.raises(CircuitError, match="lower the threshold"):
        graph.threshold(1e9)


def test_too_many_or_too_few_edges_is_an_error():
    graph = _scored()
    with pytest.raises(CircuitError, match=f"only {graph.n_edges}"):
        graph.top_n(graph.n_edges + 1)
    with pytest.raises(CircuitError, match="at least 1"):
        graph.greedy(0)


def test_selection_without_scores_is_an_error():
    with pytest.raises(CircuitError, match="no scores yet"):
        Graph(ModelShape(2, 2, 2, 8)).top_n(3)


def test_greedy_circuit_reaches_the_logits():
    graph = _scored(ModelShape(3, 4, 4, 8), seed=2)
    graph.greedy(12, prune=False)
    assert graph.n_edges_in_graph == 12
    # every kept edge's receiver belongs to the logits or to a node with a kept outgoing edge
    owners = graph._receivers_of_upstream()
    for u, r in graph.in_graph.nonzero().tolist():
        if r != graph.logits_receiver:
            node = owners[:, r].nonzero().flatten()
            assert graph.in_graph[node].any()


def test_json_round_trip(tmp_path):
    graph = _scored(ModelShape(2, 4, 2, 8))
    graph.greedy(6)
    graph.to_json(tmp_path / "c.json")
    again = Graph.from_json(tmp_path / "c.json")
    assert again.shape == graph.shape
    assert torch.equal(again.in_graph, graph.in_graph)
    torch.testing.assert_close(again.scores, graph.scores)


def test_bad_json_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(CircuitError, match="not a kc_utils graph"):
        Graph.from_json(tmp_path / "x.json")
    graph = Graph(ModelShape(2, 2, 2, 8))
    with pytest.raises(CircuitError, match="not an edge name"):
        graph.set_edges(["m9->logits"])
    with pytest.raises(CircuitError, match="does not connect"):
        graph.set_edges(["m1->a0.h0<q>"])


def test_graphviz_lists_the_circuit():
    graph = _scored()
    graph.greedy(6)
    text = graph.to_graphviz()
    assert text.startswith("digraph circuit {") and text.rstrip().endswith("}")
    assert text.count("->") == graph.n_edges_in_graph


def _greedy_step_by_step(graph, n):
    """The plain rule: at each step scan every edge and take the best one into the circuit's receivers."""
    values = torch.where(graph.real_edges, graph.scores.abs(), torch.tensor(float("-inf")))
    taken = torch.zeros_like(graph.real_edges)
    active = torch.zeros(graph.n_receivers, dtype=torch.bool)
    active[graph.logits_receiver] = True
    owners = graph._receivers_of_upstream()
    order = []
    for _ in range(n):
        candidates = torch.where(active[None, :] & ~taken, values, float("-inf"))
        best = int(torch.argmax(candidates))
        if candidates.view(-1)[best] == float("-inf"):
            break
        u, r = divmod(best, graph.n_receivers)
        taken[u, r] = True
        active |= owners[u]
        order.append(best)
    return order


@pytest.mark.parametrize("shape", [ModelShape(3, 4, 4, 8), ModelShape(2, 4, 2, 8)])
def test_greedy_order_is_the_step_by_step_rule(shape):
    graph = _scored(shape, seed=5)
    graph.scores = (graph.scores * 4).round() / 4  # ties, broken by edge index in both
    order = graph.greedy_order().tolist()
    assert order == _greedy_step_by_step(graph, graph.n_edges + 5)
    assert len(order) == int(graph.real_edges.sum())  # every edge is reachable from the logits
