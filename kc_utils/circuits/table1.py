"""The paper's Table 1: its relations, its layout, and the comparisons beside it.

Finding one relation's circuit is :func:`kc_utils.circuits.relation.find_relation_circuit` (re-exported
here, where the notebooks import it); this module lays the results out as Table 1 (:func:`table1`),
measures whether one relation's circuit serves another (:func:`transfer_matrices`, the table's
``other relation`` baseline) and puts two methods' circuits side by side (:func:`method_comparison`).
Node overlaps of circuits are :func:`kc_utils.circuits.overlap.node_overlap` and
:func:`~kc_utils.circuits.overlap.shared_nodes` (also re-exported).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kc_utils.circuits.ablation import Ablation
from kc_utils.circuits.evaluate import evaluate_masks
from kc_utils.circuits.graph import CircuitError
from kc_utils.circuits.overlap import node_overlap, shared_nodes
from kc_utils.circuits.relation import FIND_METHODS, KINDS, RelationCircuit, find_relation_circuit
from kc_utils.data.facts import facts_to_batch

__all__ = [
    "FIND_METHODS",
    "KINDS",
    "TABLE1_RELATIONS",
    "RelationCircuit",
    "find_relation_circuit",
    "method_comparison",
    "node_overlap",
    "shared_nodes",
    "table1",
    "transfer_matrices",
]

#: The 14 relations of the paper's Table 1, in its order.
TABLE1_RELATIONS = (
    "adj_antonym",
    "word_first_letter",
    "word_last_letter",
    "object_superclass",
    "fruit_inside_color",
    "work_location",
    "country_capital_city",
    "landmark_in_country",
    "country_language",
    "person_native_language",
    "name_religion",
    "occupation_age",
    "occupation_gender",
    "name_birthplace",
)


def transfer_matrices(
    model: Any,
    results: Sequence[RelationCircuit],
    metrics: Sequence[str] = ("hit@10", "hit@1"),
    split: str = "test",
    ablation: Ablation = "patch",
    batch_size: int | None = 32,
) -> dict[str, pd.DataFrame]:
    """Does relation b's circuit serve relation a? ``matrices[metric][a][b]`` = a's ``split`` metric under b's circuit.

    Every metric comes from the same evaluation pass.

    b's circuit is re-selected from b's scores at a's circuit size (top-n, the same pruning rule),
    so every cell compares circuits of one size (for ACDC circuits, b's top edges by ACDC damage);
    the diagonal is a's own circuit. A cell whose re-selected circuit is empty after pruning is NaN.
    """
    from_input = ablation == "patch"
    names = [r.relation for r in results]
    matrices = {metric: pd.DataFrame(np.nan, index=names, columns=names) for metric in metrics}
    for a in results:
        facts = a.dataset.test if split == "test" else a.dataset.val
        if not facts:
            continue
        batch = facts_to_batch(model, facts)
        masks, columns = [], []
        for b in results:
            if b is a:  # the diagonal is the relation's own circuit, however it was selected
                masks.append(a.graph.in_graph)
            elif b.scored is None:
                continue
            else:
                try:
                    masks.append(b.scored.copy().top_n(a.n_edges, from_input=from_input).in_graph)
                except CircuitError:
                    continue
            columns.append(b.relation)
        values = evaluate_masks(model, a.graph, batch, masks, list(metrics), ablation, batch_size=batch_size)
        for column, value in zip(columns, values):
            for metric, matrix in matrices.items():
                matrix.loc[a.relation, column] = value[metric]
    return matrices


def table1(results: Sequence[RelationCircuit], transfers: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per relation plus the average: sizes, knees, and every metric for every kind and split.

    Columns: ``type``, ``relation``, ``budget``, ``#edges``, ``% edges``, ``knee70``/``knee90``
    (edges; NaN = never reached), ``#Dval``, ``#Dtest``, ``#objects``; then ``{split} {metric}
    {kind}`` for splits Dval/Dtest, metrics hit@10/hit@1 and kinds of :data:`KINDS`, with
    ``{split} hit@10 random std`` and ``… nodes std``; ``Dval faithfulness``/``Dtest faithfulness``
    (normalised logit difference); ``Dtest {metric} other`` for each of ``transfers``
    (:func:`transfer_matrices`: the mean over the other relations); ``corrupt high`` (the empty
    circuit already has Dtest Hit@10 ≥ 0.5).
    """
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "type": r.relation_type,
            "relation": r.relation,
            "budget": r.budget,
            "#edges": r.n_edges,
            "% edges": 100 * r.n_edges / r.graph.n_edges,
        }
        for level, edges in sorted(r.knees.items()):
            row[f"knee{round(100 * level)}"] = np.nan if edges is None else edges
        row.update({"#Dval": len(r.dataset.val), "#Dtest": len(r.dataset.test), "#objects": r.n_objects})
        for split, label in (("val", "Dval"), ("test", "Dtest")):
            for metric in ("hit@10", "hit@1"):
                for kind in KINDS:
                    row[f"{label} {metric} {kind}"] = r.metrics.get(split, {}).get(kind, {}).get(metric, np.nan)
                for kind in ("random", "nodes"):
                    row[f"{label} {metric} {kind} std"] = r.random_std.get(split, {}).get(kind, {}).get(metric, np.nan)
            row[f"{label} faithfulness"] = r.faithfulness.get(split, np.nan)
        for metric, matrix in (transfers or {}).items():
            if r.relation in matrix.index:
                others = matrix.loc[r.relation].drop(r.relation, errors="ignore")
                row[f"Dtest {metric} other"] = float(others.mean()) if others.notna().any() else np.nan
        row["corrupt high"] = (
            bool(row["Dtest hit@10 empty"] >= 0.5) if not np.isnan(row["Dtest hit@10 empty"]) else False
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        numeric = table.select_dtypes("number").mean().to_dict()
        average = {
            "type": "",
            "relation": "average",
            "budget": "",
            **numeric,
            "corrupt high": bool(table["corrupt high"].any()),
        }
        table = pd.concat([table, pd.DataFrame([average])], ignore_index=True)
        for column in ("#edges", "#Dval", "#Dtest", "#objects"):
            table[column] = table[column].round(1)
    return table


def method_comparison(first: Sequence[RelationCircuit], second: Sequence[RelationCircuit]) -> pd.DataFrame:
    """Two methods' circuits of the same relations side by side (e.g. EAP-IG and ACDC).

    One row per relation present in both: each circuit's edges and nodes, the Jaccard overlap of
    their edge sets and of their node sets, and each circuit's Dval/Dtest faithfulness and Dtest
    Hit@1. Method names come from the circuits' provenance.
    """
    by_name = {r.relation: r for r in second}
    rows = []
    for a in first:
        b = by_name.get(a.relation)
        if b is None:
            continue
        name_a, name_b = a.graph.provenance.get("method", "first"), b.graph.provenance.get("method", "second")
        edges_a, edges_b = a.graph.in_graph, b.graph.in_graph
        nodes_a, nodes_b = set(a.graph.nodes_in_graph()), set(b.graph.nodes_in_graph())
        union = int((edges_a | edges_b).sum())
        rows.append(
            {
                "relation": a.relation,
                f"{name_a} edges": a.n_edges,
                f"{name_b} edges": b.n_edges,
                f"{name_a} nodes": len(nodes_a),
                f"{name_b} nodes": len(nodes_b),
                "edge overlap": int((edges_a & edges_b).sum()) / union if union else np.nan,
                "node overlap": len(nodes_a & nodes_b) / max(1, len(nodes_a | nodes_b)),
                f"{name_a} Dtest faithfulness": a.faithfulness.get("test", np.nan),
                f"{name_b} Dtest faithfulness": b.faithfulness.get("test", np.nan),
                f"{name_a} Dtest hit@1": a.metrics.get("test", {}).get("circuit", {}).get("hit@1", np.nan),
                f"{name_b} Dtest hit@1": b.metrics.get("test", {}).get("circuit", {}).get("hit@1", np.nan),
            }
        )
    return pd.DataFrame(rows)
