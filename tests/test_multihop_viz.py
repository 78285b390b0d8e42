"""Notebook 07's figures build from the tables and circuits they are given."""

from __future__ import annotations

import pandas as pd
import pytest

from kc_utils.analysis.multihop_text import PAPER_OVERLAPS
from kc_utils.circuits.graph import Graph
from kc_utils.shape import ModelShape
from kc_utils.viz.multihop import plot_bridge_lens, plot_bridge_patching, plot_overlaps, plot_three_circuits

SHAPE = ModelShape(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8)


def test_three_circuits_ring_the_shared_nodes():
    first = Graph(SHAPE).set_edges(["input->a0.h0<q>", "a0.h0->logits", "input->m1", "m1->logits"])
    second = Graph(SHAPE).set_edges(["input->a0.h0<v>", "a0.h0->logits", "input->a1.h1<q>", "a1.h1->logits"])
    two_hop = Graph(SHAPE).set_edges(["input->a0.h0<k>", "a0.h0->logits", "input->m1", "m1->logits"])
    fig = plot_three_circuits({"first_hop": first, "second_hop": second, "two_hop": two_hop})
    rings = {
        t.name: t for t in fig.data if t.name in ("node in every circuit", "node shared with the two-hop circuit only")
    }
    everywhere = [t for t in fig.data if t.name == "node in every circuit"]
    assert len(everywhere) == 3 and all(list(t.hovertext) == ["a0.h0: node in every circuit"] for t in everywhere)
    shared = [t for t in fig.data if t.name == "node shared with the two-hop circuit only"]
    assert [list(t.hovertext) for t in shared] == [["m1: node shared with the two-hop circuit only"]]
    assert rings
    with pytest.raises(ValueError, match="no circuit named"):
        plot_three_circuits({"first_hop": first})


def test_overlap_lens_and_patching_figures_build():
    comparison = pd.DataFrame(
        {
            "pair": ["first hop vs two-hop"],
            **{f"{m}{s}": [0.5] for m in ("node_overlap", "edge_overlap") for s in ("", "_random_mean", "_random_std")},
            "node_overlap_unrelated_mean": [0.4],
            "edge_overlap_unrelated_mean": [0.3],
        }
    )
    fig = plot_overlaps(comparison, PAPER_OVERLAPS)
    assert len(fig.layout.shapes) == 2  # the paper's band in both panels
    lens = pd.DataFrame(
        {
            "layer": [-1, 0],
            **{
                f"{w}_{p}_{s}": [0, 1]
                for w in ("bridge", "control")
                for p in ("last", "subject")
                for s in ("median", "top")
            },
        }
    )
    assert len(plot_bridge_lens(lens).data) == 4
    table = pd.DataFrame(
        {"set": ["corrupt", "clean", "group", "random"], "follow": [0, 1, 1, 0.5], "recovery": [0, 1, 0.9, 0.4]}
    )
    assert len(plot_bridge_patching(table).data) == 8
