"""Every figure of notebooks 04 and 05 (and the shared circuit and matrix figures) passes the figure conventions
(:func:`kc_utils.viz.conventions.figure_problems`): every trace named, hover names whole, fractional numbers
formatted on hover, no "nan" shown as text. Built from small hand-made tables; the notebooks also check their
real figures in their Checks cells."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from kc_utils.circuits.graph import Graph
from kc_utils.models import ModelShape
from kc_utils.viz import circuits, hallucination, heads, icl, neurons
from kc_utils.viz.conventions import figure_problems
from kc_utils.viz.style import TEMPLATE


def _scored(seed: int) -> Graph:
    graph = Graph(ModelShape(3, 4, 2, 8))
    graph.scores = torch.randn(graph.scores.shape, generator=torch.Generator().manual_seed(seed)) * graph.real_edges
    return graph


def _lens(target: str, ranks: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_index": 0,
            "prompt": "The job title of X is",
            "target": target,
            "layer": range(-1, len(ranks) - 1),
            "stage": ["embed", *[f"block {i}" for i in range(len(ranks) - 1)]],
            "rank": ranks,
            "subject_rank": [r // 2 for r in ranks],
            "prob": np.linspace(0.1, 0.6, len(ranks)),
            "subject_prob": np.linspace(0.05, 0.3, len(ranks)),
        }
    )


def _repair_table(group: float) -> pd.DataFrame:
    randoms = [0.1, 0.25, 0.4565217]
    return pd.DataFrame(
        {
            "set": ["none", "group", *["random"] * len(randoms)],
            "heads": [(), ("a2.h2",), ("a1.h0",), ("a1.h1",), ("a3.h0",)],
            "top1": [0.0, group, *randoms],
            "prob": [0.1, 0.5, 0.2, 0.2, 0.3],
        }
    )


@functools.cache
def _figures() -> dict[str, go.Figure]:
    kinds = pd.DataFrame(
        {
            "group": ["known", "known", "held-out"],
            "kind": ["correct", "knowledge_present", "knowledge_absent"],
            "confidence": [0.93, 0.61234, 0.5],
            "prompt": ["a", "b", "c"],
        }
    )
    dla = pd.DataFrame({"head": ["a1.h0", "a2.h2"], "dla_wrong": [0.123456, 2.9], "dla_correct": [-0.5, -1.03]})
    curves = {
        "known subjects": pd.DataFrame(
            {"layer": [0, 1], "subject_median_rank": [1.5, 0.0], "last_median_rank": [30.0, 0.0]}
        ),
        "held-out subjects": pd.DataFrame(
            {"layer": [0, 1], "subject_median_rank": [94.0, 80.5], "last_median_rank": [40.0, 32.0]}
        ),
    }
    each = pd.DataFrame({"prompt_index": [0, 1, 0, 1], "head": ["a1.h3", "a1.h3", "a2.h2", "a2.h2"]})
    each["repaired"] = [True, False, True, True]
    accuracy = pd.DataFrame(
        {
            "format": ["arrow"] * 4 + ["sentence"] * 4,
            "relation": ["r1", "r1", "r2", "r2"] * 2,
            "k": [0, 1] * 4,
            "top1": [0.8125, 1.0, 0.5, 0.96875] * 2,
            "top1_shuffled": [0.8125, 0.9, 0.5, 0.9] * 2,
        }
    )
    spans = pd.DataFrame(
        {
            "relation": ["r1"],
            "head": ["a1.h1"],
            "attn_bos": [0.1],
            "attn_demos": [0.6123],
            "attn_separators": [0.1],
            "attn_query_subject": [0.1],
            "attn_query_other": [0.0877],
        }
    )
    table2 = pd.DataFrame(
        {
            "relation": ["adj_comparative", "made_up"],
            "head_set": ["new in the k-shot circuit", "most attention to demonstrations"],
            "original": [100.0, 90.0],
            "ablated": [62.5, 88.0],
            "random_mean": [95.3125, 89.0],
            "random_std": [3.1, 2.0],
            "paper_original": [62.24, np.nan],
            "paper_ablated": [32.55, np.nan],
            "paper_random": [58.18, np.nan],
        }
    )
    pattern = pd.DataFrame([[1.0, 0.0], [0.3333, 0.6667]], index=["The", "job"], columns=["The", "job"])
    before, after = _scored(0).top_n(30), _scored(1).top_n(30)
    return {
        "confidence": hallucination.plot_confidence(kinds),
        "answer_lens": hallucination.plot_answer_lens(
            _lens("actor", [50, 9, 3, 1]), _lens("Spanish", [40, 2, 0, 0]), 0
        ),
        "head_dla": hallucination.plot_head_dla(dla),
        "repair": hallucination.plot_repair({"patch top 1": _repair_table(0.5)}, each),
        "rank_curves": hallucination.plot_rank_curves(curves),
        "circuit": circuits.plot_circuit(before, helps="favours the wrong answer", hurts="favours the correct answer"),
        "circuit_pair": icl.plot_circuit_pair(before, after),
        "accuracy_by_k": icl.plot_accuracy_by_k(accuracy),
        "span_attention": icl.plot_span_attention(spans),
        "table2": icl.plot_table2(table2),
        "attention": heads.plot_attention(pattern),
        "query_neurons": neurons.plot_query_neurons(
            np.array([[[0.5, 1.0]], [[0.25, 0.75]]]), np.array([[[True, False]], [[False, True]]]), [3], ["q1", "q2"]
        ),
        "query_overlap": neurons.plot_query_overlap(np.array([[1.0, np.nan], [0.3333, 1.0]]), ["q1", "q2"]),
        "consistency": neurons.plot_consistency_distribution(pd.DataFrame({"cs": [0.1234, 0.5, 0.75]}), 0.3, 0.49),
        "relation_consistency": neurons.plot_relation_consistency(
            pd.DataFrame({"relation": ["a", "b"], "n_facts": [3, 4], "inconsistent_static": [0.5, 0.75]}).assign(
                inconsistent_otsu=[0.25, 0.8]
            ),
            0.77,
        ),
        "matrix_with_nan": circuits.plot_matrix(
            pd.DataFrame([[1.0, np.nan], [0.25, 1.0]], index=["a", "b"], columns=["a", "b"]), "overlap"
        ),
    }


NAMES = (
    "confidence answer_lens head_dla repair rank_curves circuit circuit_pair accuracy_by_k span_attention table2 "
    "attention query_neurons query_overlap consistency relation_consistency matrix_with_nan"
).split()


@pytest.mark.parametrize("name", NAMES)
def test_every_figure_follows_the_conventions(name):
    fig = _figures()[name]
    assert figure_problems(fig) == []
    assert fig.layout.template.layout.hoverlabel.namelength == -1  # names shown whole on hover


def test_the_checker_catches_each_breach():
    bad = go.Figure(go.Scatter(x=[0, 1], y=[0.4565217, 0.1], text=["nan", "ok"]))
    bad.add_trace(go.Scatter(x=[0, 1], y=[0.5, 0.25], name="formatted badly", hovertemplate="%{y}"))
    problems = figure_problems(bad)
    assert any("cut trace names" in p for p in problems)
    assert any("has no name" in p for p in problems)
    assert any("unformatted on hover" in p for p in problems)
    assert any("no number format" in p for p in problems)
    assert any("'nan'" in p for p in problems)
    good = go.Figure(go.Scatter(x=[0, 1], y=[0.45, 0.1], name="line", hovertemplate="%{y:.2f}"))
    assert figure_problems(good.update_layout(template=TEMPLATE)) == []


def test_the_circuit_legend_tells_every_edge_kind_apart():
    fig = circuits.plot_circuit(_scored(0).top_n(40), helps="favours the wrong answer")
    legend = [t for t in fig.data if t.showlegend is not False and t.name]
    dashes = {t.name: t.line.dash for t in legend if t.name.startswith("into")}
    assert len(set(dashes.values())) == len(dashes) == 4  # query, key, value, MLP/logits: four dash styles
    assert "edge favours the wrong answer" in {t.name for t in legend}


def test_the_circuit_pair_has_labels_on_both_panels_and_each_legend_entry_once():
    before, after = _scored(0).top_n(30), _scored(1).top_n(30)
    fig = icl.plot_circuit_pair(before, after)
    labels = [a for a in fig.layout.annotations if a.xref in ("x", "x2")]
    assert {a.text for a in labels if a.xref == "x"} == set(before.nodes_in_graph())
    assert {a.text for a in labels if a.xref == "x2"} == set(after.nodes_in_graph())
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert len(names) == len(set(names))
    from kc_utils.circuits.compare import compare_circuits

    diff = compare_circuits(before, after)
    if diff.heads_dropped:
        assert "head dropped with demonstrations" in names


def test_the_neuron_figures_keep_their_labels_off_the_bars_and_the_axis():
    fig = _figures()["relation_consistency"]
    (label,) = [a for a in fig.layout.annotations if a.text.startswith("LLaMA3-8B")]
    assert label.yref == "paper" and label.y >= 1.0  # above the plot area, not over a bar
    fig = _figures()["consistency"]
    notes = {a.text.split()[0]: a for a in fig.layout.annotations}
    assert set(notes) == {"static", "Otsu"} and all(a.y == 1 and a.yanchor == "top" for a in notes.values())
    assert {notes["static"].xanchor, notes["Otsu"].xanchor} == {"left", "right"}  # on opposite sides of their lines
    hover = [t for t in _figures()["query_neurons"].data if t.name == "knowledge neuron"][0]
    assert list(hover.customdata) == [0.5, 1.0]  # a marked neuron shows its score on hover
