"""Circuit-finding datasets (known facts, corrupt twins, splits) and the Table-1 pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from relations import factual_relation

from kc_utils.circuits.budget import (
    KNEE_MAX_EDGES,
    LARGE_GRAPH_BUDGET,
    check_budget,
    check_fixed_budget,
    edge_budget,
    fixed_budget,
    knee,
    size_grid,
)
from kc_utils.circuits.evaluate import evaluate_circuit, full_and_empty
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.circuits.table1 import (
    find_relation_circuit,
    node_overlap,
    shared_nodes,
    table1,
    transfer_matrices,
)
from kc_utils.data.facts import build_circuit_dataset, build_datasets, facts_to_batch, pair_corrupt
from kc_utils.data.metrics import rank
from kc_utils.data.prompts import PromptError
from kc_utils.data.relations import Sample
from kc_utils.models import tokenize

CAPITALS = factual_relation(
    "tiny capital",
    "the capital of {} is",
    [
        ("France", "Paris"),
        ("Spain", "Madrid"),
        ("Japan", "Tokyo"),
        ("Peru", "Lima"),
        ("Italy", "Rome"),
        ("Chile", "Santiago"),
        ("Kenya", "Nairobi"),
        ("New Zealand", "Wellington"),
        ("South Korea", "Seoul"),
    ],
    "country",
    "city",
)


def test_corrupt_twins_have_equal_length_and_another_answer(tiny_gpt2):
    facts = pair_corrupt(tiny_gpt2, CAPITALS.prompt_templates[0], CAPITALS.samples, CAPITALS.samples, seed=0)
    for f in facts:
        assert f.corrupt_subject != f.subject and f.corrupt_object != f.object
        assert len(tokenize(tiny_gpt2, [f.prompt])[0]) == len(tokenize(tiny_gpt2, [f.corrupt_prompt])[0])
    assert pair_corrupt(tiny_gpt2, CAPITALS.prompt_templates[0], CAPITALS.samples, CAPITALS.samples, seed=0) == facts


def test_fact_without_same_length_twin_falls_back_to_mean(tiny_gpt2):
    pool = [Sample("France", "Paris"), Sample("Spain", "Madrid"), Sample("New Zealand", "Wellington")]
    facts = pair_corrupt(tiny_gpt2, "the capital of {} is", pool, pool, seed=0)
    lonely = [f for f in facts if f.subject == "New Zealand"][0]
    assert lonely.corrupt_prompt is None and lonely.corrupt_object in ("Paris", "Madrid")
    batch = facts_to_batch(tiny_gpt2, facts)
    assert batch.mean_fallback.tolist() == [f.corrupt_prompt is None for f in facts]


def test_dataset_split_is_seeded_and_disjoint(tiny_gpt2):
    a = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=3, n_test=3, top_k=1000, seed=1)
    b = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=3, n_test=3, top_k=1000, seed=1)
    assert a.val == b.val and a.test == b.test
    assert not {f.subject for f in a.val} & {f.subject for f in a.test}
    assert a.n_candidates == len(CAPITALS.samples) and a.n_known == len(CAPITALS.samples)
    assert len(a.val) == 3 and len(a.test) == 3


def test_counterfactuals_never_cross_the_split(tiny_gpt2):
    """No Dval subject is a Dtest counterfactual and vice versa, for every seed tried."""
    for seed in range(6):
        data = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=3, n_test=3, top_k=1000, seed=seed)
        val_subjects, test_subjects = {f.subject for f in data.val}, {f.subject for f in data.test}
        assert not {f.corrupt_subject for f in data.val} & test_subjects
        assert not {f.corrupt_subject for f in data.test} & val_subjects


def test_samples_are_an_argument(tiny_gpt2):
    chosen = CAPITALS.samples[:4]
    data = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=2, n_test=2, samples=chosen, top_k=1000)
    assert {f.subject for f in data.known} <= {s.subject for s in chosen}
    with pytest.raises(ValueError, match="not facts of"):
        build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=2, n_test=2, samples=[Sample("Mars", "Olympus")])


def test_known_fact_filter_can_reject_everything(tiny_gpt2):
    with pytest.raises(PromptError, match="known to the model"):
        build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=3, n_test=3, top_k=0)


def test_relations_a_model_cannot_serve_are_left_out_with_their_reason(tiny_gpt2):
    single = dataclasses.replace(
        CAPITALS,
        name="tiny single answer",
        samples=tuple(Sample(country, "Paris") for country in ("France", "Spain", "Japan", "Peru")),
    )
    unknown = dataclasses.replace(CAPITALS, name="tiny unknown")
    built = build_datasets(
        tiny_gpt2,
        {"tiny_capital": CAPITALS, "tiny_single_answer": single},
        n_val=2,
        n_test=2,
        top_k=1000,
        progress=False,
    )
    assert list(built.datasets) == ["tiny_capital"]
    assert list(built.skipped) == ["tiny_single_answer"]
    assert "same answer" in built.skipped["tiny_single_answer"]
    assert "1 of 2 relations are left out" in built.describe_skipped()
    assert "tiny_single_answer: every known fact has the same answer" in built.describe_skipped()
    assert built.skipped_table().to_dict("records") == [
        {"relation": "tiny_single_answer", "reason": built.skipped["tiny_single_answer"]}
    ]
    with pytest.raises(PromptError, match="none of the relations.*tiny_unknown: only 0 of"):
        build_datasets(tiny_gpt2, {"tiny_unknown": unknown}, n_val=2, n_test=2, top_k=0, progress=False)


def test_edge_budget():
    graph = Graph.from_json(
        {
            "format": "kc_utils.graph/1",
            "shape": {"n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_model": 8, "parallel_attn_mlp": False},
            "edges": {},
        }
    )
    assert edge_budget(0.1, graph) == round(0.1 * graph.n_edges)
    assert edge_budget(7, graph) == 7
    with pytest.raises(CircuitError, match="only"):
        edge_budget(graph.n_edges + 1, graph)
    with pytest.raises(CircuitError, match="positive int"):
        edge_budget(0, graph)


def test_budgets_are_checked_before_any_work():
    for good in (1, 40, 0.1, "knee", "auto", 40.0):
        check_budget(good)
    for bad, message in ((0, "positive whole"), (-3, "positive whole"), (2.5, "positive whole"), ("kne", "knee")):
        with pytest.raises(ValueError, match=message):
            check_budget(bad)
    with pytest.raises(ValueError, match="knee_level"):
        check_budget("knee", knee_level=1.5)
    assert size_grid(5) == [1, 2, 3, 4, 5]
    grid = size_grid(10_000, largest=500)
    assert grid[:12] == list(range(1, 13)) and grid[-1] == 500 and grid == sorted(set(grid))
    sparse = size_grid(70_651, largest=5000, n_points=16)
    assert sparse[0] == 1 and sparse[-1] == 5000 and len(sparse) == 16 and sparse == sorted(set(sparse))


def test_fixed_budget_scales_auto_with_the_graph():
    def graph_of(n_layers: int, n_heads: int) -> Graph:
        shape = {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads, "d_model": 8}
        shape["parallel_attn_mlp"] = False
        return Graph.from_json({"format": "kc_utils.graph/1", "shape": shape, "edges": {}})

    small, large = graph_of(2, 2), graph_of(30, 9)
    assert small.n_edges <= KNEE_MAX_EDGES < large.n_edges
    assert fixed_budget("auto", small, 40) == min(40, small.n_edges)
    assert fixed_budget("auto", large, 40) == LARGE_GRAPH_BUDGET
    assert fixed_budget(7, large, 40) == 7 and fixed_budget(0.01, large, 40) == round(0.01 * large.n_edges)
    with pytest.raises(ValueError, match="faithfulness curve"):
        check_fixed_budget("knee")
    with pytest.raises(ValueError, match="positive whole"):
        fixed_budget(2.5, small, 40)
    with pytest.raises(CircuitError, match="only"):
        fixed_budget(small.n_edges + 1, small, 40)


def test_knee_is_the_smallest_circuit_reaching_the_level():
    import pandas as pd

    curve = pd.DataFrame({"asked": [1, 2, 4, 8], "n_edges": [1, 2, 3, 7], "faithfulness": [0.2, 0.75, 0.7, 0.95]})
    assert knee(curve, 0.7)["n_edges"] == 2
    assert knee(curve, 0.9)["asked"] == 8
    assert knee(curve, 0.99) is None


# the tiny relation has facts without a same-length twin by design: the mean-ablation warning is expected here (its
# own test is in test_front_door.py)
@pytest.mark.filterwarnings("ignore:tiny_capital.*no counterfactual subject")
@pytest.mark.parametrize("method", ["eap-ig", "acdc"])
def test_find_relation_circuit_end_to_end(tiny_gpt2, tmp_path, method):
    dataset = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=4, n_test=4, top_k=1000, seed=0)
    # ACDC's threshold relative to what ablating everything does (a random tiny model barely cares)
    val = facts_to_batch(tiny_gpt2, dataset.val)
    graph = Graph.from_model(tiny_gpt2)
    full, empty = (
        evaluate_circuit(tiny_gpt2, graph, val, ["logit_diff"], keep=k)["logit_diff"] for k in full_and_empty(graph)
    )
    result = find_relation_circuit(
        tiny_gpt2,
        dataset,
        "factual",
        n_edges=30,
        method=method,
        acdc_threshold=abs(full - empty) / 50,
        acdc_metric="logit_diff",
        n_random=2,
        provenance={"model": "tiny"},
    )
    if method != "acdc":
        assert result.n_edges <= 30
    assert result.graph.n_edges_in_graph == result.n_edges
    assert set(result.metrics) == {"val", "test"}
    assert set(result.metrics["val"]) == {"full", "circuit", "empty", "random", "nodes"}
    val = facts_to_batch(tiny_gpt2, dataset.val)
    with torch.no_grad():
        plain_hits = (rank(tiny_gpt2(val.clean), val) < 10).float().mean().item()
    assert result.metrics["val"]["full"]["hit@10"] == pytest.approx(plain_hits)
    assert {"asked", "n_edges", "faithfulness"} <= set(result.curve.columns)
    json_path, gv_path = result.save(tmp_path)
    saved = Graph.from_json(json_path)
    assert (saved.in_graph == result.graph.in_graph).all()
    assert saved.provenance["model"] == "tiny" and saved.provenance["method"] == method
    assert saved.provenance["relation"] == "tiny_capital" and saved.provenance["n_val"] == len(dataset.val)
    assert gv_path.read_text().startswith("digraph")
    twin = dataclasses.replace(result, relation="tiny_capital_twin")
    matrices = transfer_matrices(tiny_gpt2, [result, twin])
    matrix = matrices["hit@10"]
    assert matrices["hit@1"].shape == (2, 2)
    assert matrix.shape == (2, 2) and matrix.notna().all().all()
    if method != "acdc":  # the twin's scores select the same circuit: transferring it changes nothing
        assert matrix.iloc[0, 1] == pytest.approx(matrix.iloc[0, 0])
    assert matrix.iloc[0, 0] == pytest.approx(result.metrics["test"]["circuit"]["hit@10"])
    table = table1([result, twin], matrices)
    assert list(table["relation"]) == ["tiny_capital", "tiny_capital_twin", "average"]
    assert {"Dtest hit@1 nodes", "Dval faithfulness", "corrupt high", "knee90"} <= set(table.columns)
    overlap = node_overlap({"a": result.graph, "b": result.graph})
    assert overlap.loc["a", "b"] == pytest.approx(1.0)
    assert shared_nodes({"a": result.graph}).max() == 1


# the tiny relation has facts without a same-length twin by design: the mean-ablation warning is expected here (its
# own test is in test_front_door.py)
@pytest.mark.filterwarnings("ignore:tiny_capital.*no counterfactual subject")
def test_find_relation_circuit_acdc_on_eap_ig_candidates(tiny_gpt2):
    from kc_utils.circuits.acdc import candidate_edges
    from kc_utils.circuits.attribute import attribute

    dataset = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=4, n_test=4, top_k=1000, seed=0)
    val = facts_to_batch(tiny_gpt2, dataset.val)
    # τ = 0 on the logit difference removes only edges whose removal raises it: a random tiny model keeps some
    found = find_relation_circuit(
        tiny_gpt2, dataset, "factual", method="acdc", acdc_threshold=0.0, acdc_metric="logit_diff",
        acdc_candidates=40, n_random=1,
    )  # fmt: skip
    ranked = attribute(tiny_gpt2, Graph.from_model(tiny_gpt2), val, method="eap-ig", ig_steps=5, progress=False)
    allowed = candidate_edges(ranked, 40)
    assert found.n_edges > 0 and not bool((found.graph.in_graph & ~allowed).any())
    assert found.budget == "acdc τ=0 on 40 EAP-IG edges" and found.graph.provenance["acdc_candidates"] == 40
    assert found.extra["acdc_trials"] <= 40 and found.extra["acdc_removed_up_front"] == ranked.n_edges - 40


# the tiny relation has facts without a same-length twin by design: the mean-ablation warning is expected here (its
# own test is in test_front_door.py)
@pytest.mark.filterwarnings("ignore:tiny_capital.*no counterfactual subject")
@pytest.mark.parametrize("n_edges", [30, "knee"])
def test_find_relation_circuit_without_evaluation_finds_the_same_circuit(tiny_gpt2, n_edges):
    dataset = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=4, n_test=4, top_k=1000, seed=0)
    kwargs = dict(n_edges=n_edges, n_random=2, seed=0, provenance={"model": "tiny"})
    scored = find_relation_circuit(tiny_gpt2, dataset, "factual", **kwargs)
    found = find_relation_circuit(tiny_gpt2, dataset, "factual", evaluate=False, **kwargs)
    assert torch.equal(found.graph.in_graph, scored.graph.in_graph) and found.budget == scored.budget
    assert found.graph.provenance == scored.graph.provenance
    assert found.metrics == {} and found.faithfulness == {} and found.knees == {}
    assert found.curve.empty == (n_edges != "knee")  # the knee needs its curve; a fixed budget does not


# the tiny relation has facts without a same-length twin by design: the mean-ablation warning is expected here (its
# own test is in test_front_door.py)
@pytest.mark.filterwarnings("ignore:tiny_capital.*no counterfactual subject")
@pytest.mark.parametrize("n_edges", [30, "knee"])
def test_dval_full_and_empty_read_from_the_size_curve_equal_their_own_passes(tiny_gpt2, n_edges):
    from kc_utils.circuits.evaluate import evaluate_masks

    dataset = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=4, n_test=4, top_k=1000, seed=0)
    result = find_relation_circuit(tiny_gpt2, dataset, "factual", n_edges=n_edges, n_random=2, batch_size=3)
    metrics = ["hit@10", "hit@1", "prob", "logit_diff"]
    for split, facts in (("val", dataset.val), ("test", dataset.test)):
        whole, none = evaluate_masks(
            tiny_gpt2,
            result.scored,
            facts_to_batch(tiny_gpt2, facts),
            list(full_and_empty(result.scored)),
            metrics,
            batch_size=3,
        )
        assert result.metrics[split]["full"] == whole and result.metrics[split]["empty"] == none  # exactly
    assert result.curve.attrs["full"]["prob"] == result.metrics["val"]["full"]["prob"]


def test_find_relation_circuit_refuses_bad_knobs_before_working(tiny_gpt2):
    dataset = build_circuit_dataset(tiny_gpt2, CAPITALS, n_val=4, n_test=4, top_k=1000, seed=0)
    with pytest.raises(ValueError, match="unknown method"):
        find_relation_circuit(tiny_gpt2, dataset, "factual", method="acdcc")
    with pytest.raises(ValueError, match="unknown ablation"):
        find_relation_circuit(tiny_gpt2, dataset, "factual", ablation="resample")
    with pytest.raises(ValueError, match="n_edges"):
        find_relation_circuit(tiny_gpt2, dataset, "factual", n_edges=-1)
