"""Every figure of notebooks 01, 02, 03, 06 and 07 passes the figure conventions
(:func:`kc_utils.viz.conventions.figure_problems`): every trace named, hover names whole, fractional numbers
formatted on hover, no "nan" shown as text. Built from small hand-made tables and graphs; the figures these
notebooks share with 04 and 05 (the circuit, the attention pattern, the query neurons, overlaps and the
consistency figures, the matrix) are checked in ``test_figure_conventions.py``."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from kc_utils.analysis.heads import role_sensitivity
from kc_utils.analysis.multihop_text import PAPER_OVERLAPS
from kc_utils.circuits.graph import Graph
from kc_utils.editing.layer_sweep import summarise_sweep
from kc_utils.models import ModelShape
from kc_utils.viz import circuits, editing, heads, lens, multihop, neurons
from kc_utils.viz.conventions import figure_problems

SWEEP_METRICS = ["reliability", "generalisation", "locality_subject"]


def _scored(seed: int) -> Graph:
    graph = Graph(ModelShape(3, 4, 2, 8))
    graph.scores = torch.randn(graph.scores.shape, generator=torch.Generator().manual_seed(seed)) * graph.real_edges
    return graph


def _sweep_summary() -> pd.DataFrame:
    """Two methods at two layers, three edits each; no subject has another fact, so locality_subject is NaN."""
    sweep = pd.DataFrame(
        {
            "method": ["rome"] * 6 + ["ft_m"] * 6,
            "layer": [0, 0, 0, 1, 1, 1] * 2,
            "reliability": [1.0, 1.0, 0.0, 1.0, 0.5, 0.75] * 2,
            "generalisation": [0.6543, 0.5, 0.25, 0.1, 0.2, 0.3] * 2,
            "locality_subject": [np.nan] * 12,
        }
    )
    return summarise_sweep(sweep, SWEEP_METRICS)


# ----------------------------------------------------------------------------- notebook 01
def _notebook_01() -> dict[str, go.Figure]:
    curve = pd.DataFrame({"n_edges": [10, 40, 160], "faithfulness": [0.123456, 0.61, 0.97]})
    overlap = pd.DataFrame([[1.0, 0.3333], [0.3333, 1.0]], index=["r1", "r2"], columns=["r1", "r2"])
    return {
        "size_curves": circuits.plot_size_curves(
            {"r1": curve, "r2": curve.assign(faithfulness=[0.2, 0.5, 0.9])},
            {"r1": {0.8: 160, 0.5: 40}, "r2": {0.8: None}},
        ),
        "overlap": circuits.plot_overlap(overlap),
        "transfer": circuits.plot_matrix(overlap, "Dtest Hit@1", x_title="circuit of", y_title="facts of"),
        "circuit_with_mlps": circuits.plot_circuit(_scored(3).top_n(60)),
    }


# ----------------------------------------------------------------------------- notebook 02
def _lens_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_index": 0,
            "prompt": "The capital of France is",
            "target": "Paris",
            "layer": [-1, 0, 1],
            "stage": ["embed", "block 0", "block 1"],
            "rank": [40, 3, 0],
            "subject_rank": [90, 12, 5],
            "prob": [0.001234, 0.2, 0.8765],
            "subject_prob": [0.0001, 0.01, 0.05],
        }
    )


def _roles() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "head": ["a0.h0", "a0.h1", "a1.h0", "a1.h1"],
            "layer": [0, 0, 1, 1],
            "role": ["mover", "relation", "mix", "other"],
            "attn_subject": [0.91234, 0.05, 0.5, 0.1],
            "attn_relation": [0.02, 0.8, 0.45, 0.1],
            "dla": [2.345, 0.1, 1.2, -0.3],
            "relation_type_auc": [0.5, 0.93, 0.7, 0.5],
            "top_tokens": [["Paris", "Lima"], ["French"], ["x"], []],
            "in_circuit": [True, True, False, True],
        }
    )


def _group_tests() -> pd.DataFrame:
    rows = [
        {
            "relation": relation,
            "group": group,
            "test": test,
            "top1_group": 0.125,
            "top1_random_mean": 0.8125,
            "top1_random_std": 0.1,
            "flip_group": 0.96875,
            "flip_random_mean": 0.3,
            "flip_random_std": 0.2,
        }
        for relation in ("r1", "r2")
        for group in ("movers", "relation heads")
        for test in ("ablation", "patching")
    ]
    return pd.DataFrame(rows)


def _ablation_by_role() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "relation": ["r1", "r1", "r2"],
            "role": ["mover", "relation", "mover"],
            "n_heads": [2, 1, 1],
            "heads": [["a0.h0", "a1.h2"], ["a0.h1"], ["a0.h0"]],
            "delta_prob": [-0.123456, 0.02, -0.3],
            "delta_logprob": [-1.0, 0.1, -2.0],
            "same_relation_share": [0.4, 0.6667, 0.1],
            "chance_share": [0.0833, 0.0833, 0.25],
        }
    )


def _notebook_02() -> dict[str, go.Figure]:
    roles = _roles()
    return {
        "logit_lens": lens.plot_logit_lens(_lens_table(), 0),
        "head_roles": heads.plot_head_roles(roles),
        "role_sensitivity": heads.plot_role_sensitivity(role_sensitivity(roles)),
        "role_counts": heads.plot_role_counts(pd.crosstab(roles["layer"], roles["role"])),
        "group_tests": heads.plot_group_tests(_group_tests()),
        "ablation_by_role": heads.plot_ablation_by_role(_ablation_by_role(), k=3),
    }


# ----------------------------------------------------------------------------- notebook 03
def _edit_lens(shift: float) -> pd.DataFrame:
    rows = [
        {"layer": layer, "position": position, "object": label, "token": token, "rank": 3, "prob": prob}
        for position in ("subject last", "last")
        for label, token in (("new", "Sony"), ("old", "Apple"))
        for layer, prob in zip((-1, 0, 1), (0.0123, 0.25 + shift, 0.5 + shift))
    ]
    return pd.DataFrame(rows)


def _head_dla(scale: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "component": ["a0.h0", "a1.h1", "m0"],
            "kind": ["head", "head", "mlp"],
            "layer": [0, 1, 0],
            "head": [0, 1, -1],
            "logit": [0.123456 * scale, -1.5 * scale, 3.0],
        }
    )


def _notebook_03() -> dict[str, go.Figure]:
    diff = pd.DataFrame(
        {
            "edge": ["a0.h0->logits", "input->m0", "m0->logits"],
            "score_before": [0.0, 0.25, 0.3333],
            "score_after": [0.5432, 0.0, 0.4],
            "status": ["added", "removed", "kept"],
        }
    ).assign(change=lambda t: t["score_after"] - t["score_before"])
    location = pd.DataFrame(
        {
            "method": ["rome", "rome", "ft_m"],
            "layer": [0, 1, 0],
            "n_edits": [3, 3, 3],
            "n_working": [3, 2, 0],
            "undone_by_subject": [0.6667, 0.5, np.nan],
            "undone_by_last": [0.3333, 0.0, np.nan],
        }
    )
    return {
        "edit_lens": editing.plot_edit_lens(_edit_lens(0.0), _edit_lens(0.1234)),
        "head_dla": editing.plot_head_dla(_head_dla(1.0), _head_dla(2.5)),
        "circuit_diff": editing.plot_circuit_diff(diff),
        "sweep_heatmap": editing.plot_sweep_heatmap(_sweep_summary(), SWEEP_METRICS),
        "location": editing.plot_location(location),
    }


# ----------------------------------------------------------------------------- notebook 06
def _notebook_06() -> dict[str, go.Figure]:
    interventions = pd.DataFrame(
        {
            "kind": ["source", "paraphrase", "random"] * 2,
            "factor": [0.0] * 3 + [2.0] * 3,
            "delta_mean": [-0.123456, -0.05, 0.001, 0.2, 0.1, 0.0],
            "delta_std": [0.01, 0.02, 0.003, 0.05, 0.04, 0.001],
        }
    )
    scaling = pd.DataFrame(
        {
            "scaled": [3, "all"] * 4,
            "factor": [0.0] * 4 + [2.0] * 4,
            "keys": ["top", "top", "random", "random"] * 2,
            "kn_change_mean": np.linspace(-0.5, 0.5, 8),
            "kn_change_std": np.full(8, 0.0625),
            "delta_p_mean": np.linspace(-0.1, 0.1, 8),
            "delta_p_std": np.full(8, 0.0125),
        }
    )
    modification = pd.DataFrame(
        {
            "task": ["edit"] * 2 + ["erase"] * 2,
            "method": ["query-local", "CAS"] * 2,
            **{m: [0.875, 0.5, 0.3333, 0.25] for m in ("reliability", "generalisation", "locality")},
            **{f"{m}_std": [0.1, 0.05, 0.2, 0.0] for m in ("reliability", "generalisation", "locality")},
        }
    )
    return {
        "interventions": neurons.plot_interventions(interventions),
        "attention_scaling": neurons.plot_attention_scaling(scaling),
        "modification": neurons.plot_modification(modification),
        "query_neurons_empty": neurons.plot_query_neurons(
            np.array([[[0.5, 1.0]]]), np.array([[[False, False]]]), [3], ["q1"], title="fact"
        ),
    }


# ----------------------------------------------------------------------------- notebook 07
def _notebook_07() -> dict[str, go.Figure]:
    shape = ModelShape(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8)
    first = Graph(shape).set_edges(["input->a0.h0<q>", "a0.h0->logits", "input->m1", "m1->logits"])
    second = Graph(shape).set_edges(["input->a0.h0<v>", "a0.h0->logits", "input->a1.h1<q>", "a1.h1->logits"])
    two_hop = Graph(shape).set_edges(["input->a0.h0<k>", "a0.h0->logits", "input->m1", "m1->logits"])
    comparison = pd.DataFrame(
        {
            "pair": ["first hop vs two-hop", "second hop vs two-hop"],
            **{f"{m}": [0.5714, 0.25] for m in ("node_overlap", "edge_overlap")},
            **{f"{m}_random_mean": [0.3125, 0.2] for m in ("node_overlap", "edge_overlap")},
            **{f"{m}_random_std": [0.0625, 0.1] for m in ("node_overlap", "edge_overlap")},
            "node_overlap_unrelated_mean": [0.4444, 0.1],
            "edge_overlap_unrelated_mean": [0.3333, 0.1],
        }
    )
    bridge_lens = pd.DataFrame(
        {
            "layer": [-1, 0, 1],
            **{
                f"{who}_{where}_{stat}": values
                for who in ("bridge", "control")
                for where in ("last", "subject")
                for stat, values in (("median", [120.5, 30.0, 4.0]), ("top", [0.0, 0.3333, 0.875]))
            },
        }
    )
    patching = pd.DataFrame(
        {
            "set": ["corrupt", "clean", "group", "random", "random"],
            "follow": [0.0, 1.0, 0.875, 0.125, 0.3333],
            "recovery": [0.0, 1.0, 0.9123, 0.4, 0.05],
        }
    )
    by_size = pd.DataFrame(
        {
            "size": [11, 23, 91],
            **{f"{m}_group": [0.2, 0.6, 1.0] for m in ("follow", "recovery")},
            **{f"{m}_random_mean": [0.05, 0.3, 0.8] for m in ("follow", "recovery")},
            **{f"{m}_random_std": [0.05, 0.2, 0.25] for m in ("follow", "recovery")},
        }
    )
    return {
        "patching_by_size": multihop.plot_patching_by_size(by_size),
        "three_circuits": multihop.plot_three_circuits({"first_hop": first, "second_hop": second, "two_hop": two_hop}),
        "overlaps": multihop.plot_overlaps(comparison, PAPER_OVERLAPS),
        "bridge_lens": multihop.plot_bridge_lens(bridge_lens),
        "bridge_patching": multihop.plot_bridge_patching(patching),
    }


@functools.cache
def _figures() -> dict[str, go.Figure]:
    return {**_notebook_01(), **_notebook_02(), **_notebook_03(), **_notebook_06(), **_notebook_07()}


NAMES = (
    "size_curves overlap transfer circuit_with_mlps "
    "logit_lens head_roles role_sensitivity role_counts group_tests ablation_by_role "
    "edit_lens head_dla circuit_diff sweep_heatmap location "
    "interventions attention_scaling modification query_neurons_empty "
    "three_circuits overlaps bridge_lens bridge_patching patching_by_size"
).split()


def test_every_figure_is_listed():
    assert sorted(NAMES) == sorted(_figures())


@pytest.mark.parametrize("name", NAMES)
def test_every_figure_follows_the_conventions(name):
    fig = _figures()[name]
    assert fig.data or name == "query_neurons_empty"
    assert figure_problems(fig) == []
    assert fig.layout.template.layout.hoverlabel.namelength == -1  # names shown whole on hover


def test_a_sweep_metric_without_values_reads_n_a_and_never_nan():
    fig = _figures()["sweep_heatmap"]
    assert [t.name for t in fig.data] == ["ROME", "FT_M"]
    for heatmap in fig.data:
        rows = dict(zip(heatmap.y, heatmap.text))
        assert list(rows["locality_subject"]) == ["n/a", "n/a"]  # the all-NaN metric
        assert rows["reliability"][0] == "0.67 ± 0.58"  # mean ± std (ddof 1) of 1, 1, 0
        assert not any("nan" in cell for row in heatmap.text for cell in row)
        assert "%{text}" in heatmap.hovertemplate and "%{x}" in heatmap.hovertemplate
    assert editing._sweep_cell_text(0.5, np.nan) == "0.50"  # a single edit has no spread


def test_the_checker_would_catch_the_old_sweep_heatmap():
    old = go.Figure(go.Heatmap(z=[[0.65, np.nan]], text=[["0.65 ± 0.10", "nan ± nan"]], texttemplate="%{text}"))
    problems = figure_problems(old)
    assert any("has no name" in p for p in problems) and any("'nan'" in p for p in problems)
    assert any("unformatted on hover" in p for p in problems) and any("cut trace names" in p for p in problems)


def test_the_circuit_legend_draws_values_and_mlps_differently_and_edges_match_it():
    fig = _figures()["circuit_with_mlps"]
    legend = {t.name: t.line.dash for t in fig.data if t.showlegend is not False and t.name.startswith("into")}
    assert legend["into a value"] != legend["into an MLP / the logits"]
    for trace in fig.data:
        if trace.showlegend is False and trace.mode == "lines":  # a drawn edge bundle names its kind
            kind = trace.name.split(", ")[-1]
            assert trace.line.dash == legend[kind]


def test_hover_boxes_say_what_the_numbers_are():
    figures = _figures()
    (chance,) = [t for t in figures["ablation_by_role"].data if t.name == "chance"]
    assert chance.hovertemplate.startswith("%{hovertext}") and "%{y:.2f}" in chance.hovertemplate
    boxes = [t for t in figures["ablation_by_role"].data if t.type == "box"]
    assert all(b.hoveron == "points" and "%{hovertext}" in b.hovertemplate for b in boxes)  # relation and heads
    assert {t.name for t in figures["bridge_patching"].data} == {
        "random sets",
        "corrupt run",
        "first hop's circuit",
        "clean run",
    }
    assert all("%{customdata" in t.hovertemplate for t in figures["interventions"].data)  # ± std on hover
    lens_traces = figures["logit_lens"].data
    assert [t.hovertemplate.split("%{y")[1][:4] for t in lens_traces] == [":.0f", ":.3f", ":.0f", ":.3f"]
