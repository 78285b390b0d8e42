"""One relation's knowledge circuit, end to end: find it on Dval, score it on Dval and Dtest.

The experiment behind the paper's Table 1 (Yao et al. 2024), with baselines that can fail:

1. Score every edge on Dval (``eap``, ``eap-ig`` or ``exact``) — or run ``acdc`` (the paper's
   method: removal by threshold).
2. Choose the size: a fixed budget, or the knee of the faithfulness curve
   (:mod:`kc_utils.circuits.budget`); the knees at 70% and 90% of the logit difference are
   reported either way.
3. Evaluate on Dval and Dtest, with every edge outside the circuit ablated: the full model, the
   circuit, and four baselines —

   * ``empty``: every edge ablated (under ``patch`` ablation: the corrupted run);
   * ``random``: random circuits of the same size connected to the logits (the paper's baseline;
     on a small model it often *is* the empty circuit, since it misses the few edges that carry
     the fact — :func:`kc_utils.circuits.table1_text.describe_table1` says so when it happens);
   * ``nodes``: random circuits of the same size drawn from the edges among the circuit's own
     nodes — the same components, wired at random;
   * ``other relation`` (:func:`transfer_matrices`): another relation's circuit of the same size.
4. Metrics: Hit@10 (the paper's), Hit@1, the answer's probability, the logit difference and its
   normalised faithfulness; the number of distinct answers flags relations whose corrupted run
   already scores high (few objects).

Differences from the authors' code, kept on purpose: Hit@k reads the answer's **first** token
after the prompt (theirs the *last* token of a teacher-forced answer, identical for one-token
answers); Dval and Dtest hold **different facts** (theirs split rows of templates × samples, so
their Dtest shares subjects with Dval under another template), and counterfactuals never cross
the split; Dtest is scored against its own answers (their script scores it against Dval's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kc_utils.circuits.ablation import ABLATIONS, Ablation
from kc_utils.circuits.acdc import acdc, candidate_edges
from kc_utils.circuits.attribute import METHODS, attribute
from kc_utils.circuits.budget import (
    KNEE_MAX_EDGES,
    LARGE_GRAPH_BUDGET,
    check_budget,
    edge_budget,
    knee,
    size_curve,
    size_grid,
)
from kc_utils.circuits.evaluate import (
    evaluate_masks,
    full_and_empty,
    mean_and_std,
    node_set_edges,
    normalised_faithfulness,
    random_circuit,
)
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.facts import CircuitDataset, facts_to_batch

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

#: Circuit-finding methods: the attribution methods plus ACDC.
FIND_METHODS = (*METHODS, "acdc")
#: What is evaluated on each split, in order.
KINDS = ("full", "circuit", "empty", "random", "nodes")
#: The largest circuit the knee search tries on a large graph.
_KNEE_SEARCH_CAP = 5000
#: Sizes on the faithfulness curve of a graph larger than KNEE_MAX_EDGES.
_LARGE_GRAPH_CURVE_POINTS = 16


@dataclass
class RelationCircuit:
    """A relation's circuit, its scores and baselines.

    Attributes:
        graph: the circuit (``in_graph``) with the edge scores it was selected by.
        metrics: ``metrics[split][kind][metric]`` batch means, ``split`` in ``val``/``test``,
            ``kind`` in :data:`KINDS` (``random`` and ``nodes`` are means over draws).
        random_std: ``random_std[split][kind][metric]`` standard deviations over draws.
        faithfulness: normalised logit-difference faithfulness per split.
        curve: the Dval size curve (:func:`kc_utils.circuits.budget.size_curve`).
        knees: ``{level: edges}`` — the smallest top-n circuit reaching each level (``None``: never).
        n_objects: distinct first answer tokens among Dval and Dtest.
        budget: the budget asked (``"knee"``, ``40`` …; ``"acdc τ=…"`` for ACDC).
    """

    relation: str
    relation_type: str
    dataset: CircuitDataset
    graph: Graph
    metrics: dict[str, dict[str, dict[str, float]]]
    random_std: dict[str, dict[str, dict[str, float]]]
    faithfulness: dict[str, float]
    curve: pd.DataFrame
    knees: dict[float, int | None]
    n_objects: int
    budget: str
    scored: Graph | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges_in_graph

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``<relation>.json`` (with its provenance; round-trips into :class:`Graph`) and ``<relation>.gv``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, gv_path = folder / f"{self.relation}.json", folder / f"{self.relation}.gv"
        self.graph.to_json(json_path)
        self.graph.to_graphviz(gv_path)
        return json_path, gv_path


def _select(scored: Graph, budget: Any, curve: pd.DataFrame, knee_level: float, from_input: bool) -> tuple[Graph, str]:
    if budget == "auto":
        budget = "knee" if scored.n_edges <= KNEE_MAX_EDGES else LARGE_GRAPH_BUDGET
    if budget == "knee":
        row = knee(curve, knee_level)
        if row is None:  # never reached: the largest size tried
            row = curve.sort_values("n_edges").iloc[-1]
        return scored.copy().top_n(int(row["asked"]), from_input=from_input), f"knee {knee_level:g}"
    return scored.copy().top_n(edge_budget(budget, scored), from_input=from_input), str(budget)


def _baselines(
    scored: Graph, circuit: Graph, n_random: int, seed: int, from_input: bool
) -> tuple[list[Graph], list[Graph]]:
    size = circuit.n_edges_in_graph
    randoms = [random_circuit(scored, size, seed=seed + i, from_input=from_input) for i in range(n_random)]
    allowed = node_set_edges(scored, circuit)
    on_nodes = []
    for i in range(n_random):
        try:
            on_nodes.append(random_circuit(scored, size, seed=seed + 1000 + i, allowed=allowed, from_input=from_input))
        except CircuitError:
            continue
    return randoms, on_nodes


def find_relation_circuit(
    model: Any,
    dataset: CircuitDataset,
    relation_type: str,
    n_edges: int | float | str = "auto",
    method: str = "eap-ig",
    ig_steps: int = 5,
    ablation: Ablation = "patch",
    metric: str = "logit_diff",
    knee_level: float = 0.9,
    knee_levels: Sequence[float] = (0.7, 0.9),
    acdc_threshold: float = 0.01,
    acdc_metric: str = "kl",
    acdc_candidates: int | None = None,
    n_random: int = 5,
    seed: int = 0,
    metrics: Sequence[str] = ("hit@10", "hit@1", "prob", "logit_diff"),
    batch_size: int | None = 32,
    provenance: dict[str, Any] | None = None,
    evaluate: bool = True,
) -> RelationCircuit:
    """Find a relation's circuit on Dval and score it with its baselines on Dval and Dtest (module docstring).

    Args:
        n_edges: an edge count, a fraction of all edges, ``"knee"`` or ``"auto"``
            (:mod:`kc_utils.circuits.budget`); ignored by ``method="acdc"``, whose threshold sets the size.
        method: ``"eap"``, ``"eap-ig"``, ``"exact"`` or ``"acdc"``.
        metric: what attribution explains (``"logit_diff"``; faithfulness always uses the logit difference).
        knee_level: the faithfulness level ``"knee"`` aims for.
        knee_levels: levels whose knees are reported.
        acdc_threshold, acdc_metric: ACDC's τ and metric (:func:`kc_utils.circuits.acdc.acdc`).
        acdc_candidates: ``None`` runs plain ACDC (a trial per edge); a count tries only the edges that
            ``ig_steps``-step EAP-IG ranks highest, every other edge removed up front (the hybrid of
            :func:`kc_utils.circuits.acdc.acdc`: not the sequential algorithm's circuit).
        n_random: draws of each random baseline.
        provenance: recorded in the saved circuit (e.g. ``{"model": "kc-organism"}``); the settings
            of this call are added.
        evaluate: ``False`` only finds the circuit (the same one): no scores, baselines or knees
            (``metrics``, ``random_std``, ``faithfulness`` and ``knees`` empty), and the Dval size curve
            only where the budget is a knee. On a real model's graph that saves 16 masked passes and
            the baselines' per relation.

    Raises:
        ValueError: an unknown method or ablation, a malformed budget, or an empty Dval.
    """
    if method not in FIND_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {FIND_METHODS}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    check_budget(n_edges, knee_level)
    if not dataset.val:
        raise ValueError(f"{dataset.relation}: Dval is empty; nothing to find a circuit on")
    from_input = ablation == "patch"
    val = facts_to_batch(model, dataset.val)
    test = facts_to_batch(model, dataset.test) if dataset.test else None
    base = Graph.from_model(model)
    run_info: dict[str, Any] = {}
    if method == "acdc":
        candidates = None
        if acdc_candidates is not None:
            ranked = attribute(
                model,
                Graph.from_model(model),
                val,
                metric="logit_diff",
                method="eap-ig",
                ig_steps=ig_steps,
                ablation=ablation,
                batch_size=batch_size,
                progress=False,
            )
            candidates = candidate_edges(ranked, min(acdc_candidates, int(ranked.real_edges.sum())))
        scored, run = acdc(
            model,
            base,
            val,
            threshold=acdc_threshold,
            metric=acdc_metric,
            ablation=ablation,
            batch_size=batch_size,
            progress=False,
            candidates=candidates,
        )
        circuit = scored.copy()
        budget = f"acdc τ={acdc_threshold:g}" + (
            "" if candidates is None else f" on {int(candidates.sum())} EAP-IG edges"
        )
        run_info = {"acdc_trials": run.trials, "acdc_passes": run.passes, "acdc_removed_up_front": run.removed_up_front}
    else:
        scored = attribute(
            model,
            base,
            val,
            metric=metric,
            method=method,
            ig_steps=ig_steps,
            ablation=ablation,
            batch_size=batch_size,
            progress=False,
        )
    resolved = n_edges
    if n_edges == "auto":
        resolved = "knee" if scored.n_edges <= KNEE_MAX_EDGES else LARGE_GRAPH_BUDGET
    curve, knees = pd.DataFrame(), {}
    if evaluate or (method != "acdc" and resolved == "knee"):
        if scored.n_edges <= KNEE_MAX_EDGES:
            grid = size_grid(scored.n_edges)
        else:  # a real model's graph: fewer, log-spaced sizes (each costs a masked forward pass)
            grid = size_grid(scored.n_edges, _KNEE_SEARCH_CAP, n_points=_LARGE_GRAPH_CURVE_POINTS)
        curve = size_curve(model, scored, val, grid, ablation, from_input=from_input, batch_size=batch_size)
    if evaluate:
        for level in knee_levels:
            row = knee(curve, level)
            knees[level] = None if row is None else int(row["n_edges"])
    if method != "acdc":
        circuit, budget = _select(scored, resolved, curve, knee_level, from_input)
    randoms, on_nodes = _baselines(scored, circuit, n_random, seed, from_input) if evaluate else ([], [])
    full, empty = full_and_empty(scored)
    scored_metrics = list(dict.fromkeys([*metrics, "logit_diff"]))
    results: dict[str, dict[str, dict[str, float]]] = {}
    spread: dict[str, dict[str, dict[str, float]]] = {}
    faithfulness: dict[str, float] = {}
    for split, batch in (("val", val), ("test", test)):
        if batch is None or not evaluate:
            continue
        masks = [full, circuit.in_graph, empty] + [r.in_graph for r in randoms] + [r.in_graph for r in on_nodes]
        values = evaluate_masks(model, scored, batch, masks, scored_metrics, ablation, batch_size=batch_size)
        whole, kept, none = values[:3]
        random_values, node_values = values[3 : 3 + len(randoms)], values[3 + len(randoms) :]
        random_mean, random_sd = mean_and_std(random_values)
        nodes_mean, nodes_sd = mean_and_std(node_values)
        results[split] = {"full": whole, "circuit": kept, "empty": none, "random": random_mean, "nodes": nodes_mean}
        spread[split] = {"random": random_sd, "nodes": nodes_sd}
        try:
            faithfulness[split] = normalised_faithfulness(
                kept["logit_diff"], whole["logit_diff"], none["logit_diff"], "logit_diff"
            )
        except CircuitError:
            faithfulness[split] = float("nan")
    answers = {f.object for f in dataset.val + dataset.test}
    circuit.provenance = {
        **(provenance or {}),
        "relation": dataset.relation,
        "method": method,
        "ablation": ablation,
        "metric": metric if method != "acdc" else acdc_metric,
        "ig_steps": ig_steps if method == "eap-ig" else None,
        "n_edges": n_edges if method != "acdc" else None,
        "knee_level": knee_level if method != "acdc" and n_edges in ("knee", "auto") else None,
        "acdc_threshold": acdc_threshold if method == "acdc" else None,
        "acdc_candidates": acdc_candidates if method == "acdc" else None,
        "n_val": len(dataset.val),
        "seed": seed,
        "version": _version(),
    }
    return RelationCircuit(
        relation=dataset.relation,
        relation_type=relation_type,
        dataset=dataset,
        graph=circuit,
        metrics=results,
        random_std=spread,
        faithfulness=faithfulness,
        curve=curve,
        knees=knees,
        n_objects=len(answers),
        budget=budget,
        scored=scored,
        extra=run_info,
    )


def _version() -> str:
    from kc_utils import __version__

    return __version__


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


def node_overlap(graphs: dict[str, Graph]) -> pd.DataFrame:
    """Jaccard overlap of the circuits' node sets (heads and MLPs; input and logits left out)."""
    nodes = {k: {n for n in g.nodes_in_graph() if n not in ("input", "logits")} for k, g in graphs.items()}
    keys = list(graphs)
    matrix = [[len(nodes[a] & nodes[b]) / max(1, len(nodes[a] | nodes[b])) for b in keys] for a in keys]
    return pd.DataFrame(matrix, index=keys, columns=keys)


def shared_nodes(graphs: dict[str, Graph]) -> pd.Series:
    """For each head/MLP, in how many relations' circuits it appears (most shared first)."""
    counts: dict[str, int] = {}
    for g in graphs.values():
        for n in g.nodes_in_graph():
            if n not in ("input", "logits"):
                counts[n] = counts.get(n, 0) + 1
    return pd.Series(counts, name="relations").sort_values(ascending=False, kind="stable")


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
