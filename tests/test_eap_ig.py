"""EAP-IG's graph JSON: written and read on hand-made graphs whose JSON is known."""

from __future__ import annotations

import doctest
import json

import pytest
import torch

from kc_utils.circuits import eap_ig
from kc_utils.circuits.eap_ig import from_eap_ig_json, to_eap_ig_json
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.shape import ModelShape

ONE_HEAD = ModelShape(n_layers=1, n_heads=1, n_kv_heads=1, d_model=4)
#: One layer, one head: 8 edges. Scores are powers of two so that JSON floats are exact.
HAND_SCORES = {
    "input->a0.h0<q>": 0.5,
    "input->a0.h0<k>": -0.25,
    "input->a0.h0<v>": 2.0,
    "input->m0": 0.125,
    "a0.h0->m0": -1.0,
    "input->logits": 4.0,
    "a0.h0->logits": 0.0,
    "m0->logits": 1.5,
}
HAND_CIRCUIT = {"input->a0.h0<v>", "a0.h0->m0", "m0->logits"}


def hand_graph() -> Graph:
    graph = Graph(ONE_HEAD)
    for name, score in HAND_SCORES.items():
        u, r = graph.edge_indices(name)
        graph.scores[u, r] = score
    return graph.set_edges(sorted(HAND_CIRCUIT))


def test_hand_graph_json_is_eap_ig_format_exactly():
    data = to_eap_ig_json(hand_graph())
    assert data["cfg"] == {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "d_model": 4}
    assert data["nodes"] == {
        "input": {"in_graph": True},
        "a0.h0": {"in_graph": True},
        "m0": {"in_graph": True},
        "logits": {"in_graph": True},
    }
    assert data["edges"] == {name: {"score": s, "in_graph": name in HAND_CIRCUIT} for name, s in HAND_SCORES.items()}
    assert data["kc_utils"] == {"n_key_value_heads": 1, "provenance": {}}


def test_node_outside_the_circuit_is_marked_out():
    graph = Graph(ONE_HEAD).set_edges(["input->logits"])
    nodes = to_eap_ig_json(graph)["nodes"]
    assert nodes["a0.h0"] == {"in_graph": False} and nodes["m0"] == {"in_graph": False}
    assert nodes["input"] == {"in_graph": True}


def test_hand_graph_round_trips_through_a_file(tmp_path):
    graph = hand_graph()
    graph.provenance = {"model": "hand", "method": "none"}
    to_eap_ig_json(graph, tmp_path / "sub" / "circuit.json")
    back = from_eap_ig_json(tmp_path / "sub" / "circuit.json")
    assert back.shape == graph.shape and back.provenance == graph.provenance
    assert torch.equal(back.in_graph, graph.in_graph) and torch.equal(back.scores, graph.scores)


GQA = ModelShape(n_layers=1, n_heads=2, n_kv_heads=1, d_model=4)


def test_gqa_group_edge_becomes_one_edge_per_query_head_with_an_even_share():
    graph = Graph(GQA)
    u, r = graph.edge_indices("input->a0.g0<k>")
    graph.scores[u, r] = 0.5
    graph.set_edges(["input->a0.g0<k>", "a0.h1->logits"])
    data = to_eap_ig_json(graph)
    # EAP-IG's graph: q, k and v receivers for each of the 2 query heads
    assert {n for n in data["edges"] if n.startswith("input->a0.")} == {
        f"input->a0.h{h}<{x}>" for h in (0, 1) for x in "qkv"
    }
    assert data["edges"]["input->a0.h0<k>"] == {"score": 0.25, "in_graph": True}
    assert data["edges"]["input->a0.h1<k>"] == {"score": 0.25, "in_graph": True}
    assert data["edges"]["input->a0.h1<v>"] == {"score": 0.0, "in_graph": False}
    assert data["kc_utils"]["n_key_value_heads"] == 1
    back = from_eap_ig_json(json.loads(json.dumps(data)))
    assert back.shape == GQA
    assert torch.equal(back.in_graph, graph.in_graph) and torch.equal(back.scores, graph.scores)


def test_random_gqa_graph_round_trips():
    shape = ModelShape(n_layers=3, n_heads=6, n_kv_heads=2, d_model=8)
    graph = Graph(shape)
    generator = torch.Generator().manual_seed(0)
    graph.scores = torch.randn(graph.scores.shape, generator=generator) * graph.real_edges
    graph.top_n(40)
    back = from_eap_ig_json(json.loads(json.dumps(to_eap_ig_json(graph))))
    assert torch.equal(back.in_graph, graph.in_graph)
    torch.testing.assert_close(back.scores, graph.scores, rtol=1e-6, atol=1e-7)
    assert back.n_edges_in_graph == graph.n_edges_in_graph > 0


def test_per_head_file_without_our_key_needs_n_kv_heads_and_sums_copies():
    data = to_eap_ig_json(Graph(GQA))
    del data["kc_utils"]
    data["edges"]["input->a0.h0<v>"] = {"score": 0.25, "in_graph": True}
    data["edges"]["input->a0.h1<v>"] = {"score": 0.5, "in_graph": True}
    # read as EAP-IG wrote it for an ungrouped model: n_heads key/value heads
    assert from_eap_ig_json(data).shape.n_kv_heads == 2
    grouped = from_eap_ig_json(data, n_kv_heads=1)
    assert grouped.edge("input->a0.g0<v>").score == 0.75 and grouped.edge("input->a0.g0<v>").in_graph


def test_disagreeing_copies_are_refused_unless_partial_kv_says_how():
    data = to_eap_ig_json(Graph(GQA).set_edges(["input->a0.g0<k>"]))
    data["edges"]["input->a0.h1<k>"]["in_graph"] = False
    with pytest.raises(CircuitError, match="partial_kv='any'"):
        from_eap_ig_json(data)
    assert from_eap_ig_json(data, partial_kv="any").edge("input->a0.g0<k>").in_graph
    assert not from_eap_ig_json(data, partial_kv="all").edge("input->a0.g0<k>").in_graph
    with pytest.raises(ValueError, match="partial_kv"):
        from_eap_ig_json(data, partial_kv="some")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda d: d.pop("nodes"), "missing \\['nodes'\\]"),
        (lambda d: d["cfg"].pop("d_model"), "cfg lacks \\['d_model'\\]"),
        (lambda d: d["edges"].pop("m0->logits"), "'m0->logits' of this architecture is not in the file"),
        (lambda d: d["edges"].update({"m0->a0.h0<q>": {"score": 0, "in_graph": False}}), "not edges of this"),
        (lambda d: d["nodes"]["m0"].update({"score": 1.0}), "node or neuron scores"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(spoil, message):
    data = to_eap_ig_json(hand_graph())
    spoil(data)
    with pytest.raises(CircuitError, match=message):
        from_eap_ig_json(data)


def test_edge_of_a_node_marked_out_warns():
    data = to_eap_ig_json(hand_graph())
    data["nodes"]["m0"]["in_graph"] = False
    with pytest.warns(UserWarning, match="'m0'"):
        back = from_eap_ig_json(data)
    assert back.edge("m0->logits").in_graph


def test_docstring_examples_run():
    assert doctest.testmod(eap_ig).failed == 0
