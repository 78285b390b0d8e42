"""How much two circuits share: node and edge overlap, against random circuits of the same sizes.

Yao et al. (2024, §5) compare the circuits of a two-hop question and of its two single hops by the
share of nodes and of edges they have in common (83.33/63.20, 70.27/45.27 and 71.42/49.42 %, node/edge).
The paper does not name the denominator; we read it as the share of the **smaller** circuit that the
other also holds (the overlap coefficient, 100% when one circuit contains the other) and report the
Jaccard index (shared over either) beside it. For circuits ``A`` and ``B``:

=================  =========================================
measure            value
=================  =========================================
``overlap``        ``|A ∩ B| / min(|A|, |B|)``
``jaccard``        ``|A ∩ B| / |A ∪ B|``
=================  =========================================

each for nodes (heads and MLPs: ``input`` and ``logits`` belong to every circuit and are left out)
and for edges (the ``in_graph`` masks). Two empty sets overlap fully (1.0).

Baseline (:func:`random_overlaps`): pairs of random circuits with the sizes of ``A`` and ``B``
(:func:`kc_utils.circuits.evaluate.random_circuit`, connected to the logits), mean ± std over draws.
All functions are pure: set operations on the masks, no model run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kc_utils.circuits.evaluate import random_circuit
from kc_utils.circuits.graph import CircuitError, Graph

__all__ = [
    "MEASURES",
    "circuit_nodes",
    "node_overlap",
    "overlap_scores",
    "overlap_table",
    "paired_overlaps",
    "random_circuits",
    "random_overlaps",
    "set_overlap",
    "shared_nodes",
    "summarise_overlaps",
]

#: The four numbers of :func:`overlap_scores`.
MEASURES = ("node_overlap", "node_jaccard", "edge_overlap", "edge_jaccard")


def circuit_nodes(graph: Graph) -> set[str]:
    """Heads and MLPs of the circuit (``input`` and ``logits`` left out)."""
    return {n for n in graph.nodes_in_graph() if n not in ("input", "logits")}


def node_overlap(graphs: Mapping[str, Graph]) -> pd.DataFrame:
    """Jaccard overlap of the circuits' node sets (:func:`circuit_nodes`), every pair, as a square table."""
    sets = {key: circuit_nodes(graph) for key, graph in graphs.items()}
    keys = list(graphs)
    matrix = [[len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for b in keys] for a in keys]
    return pd.DataFrame(matrix, index=keys, columns=keys)


def shared_nodes(graphs: Mapping[str, Graph]) -> pd.Series:
    """For each head/MLP, in how many of the circuits it appears (most shared first)."""
    counts: dict[str, int] = {}
    for graph in graphs.values():
        for node in graph.nodes_in_graph():
            if node not in ("input", "logits"):
                counts[node] = counts.get(node, 0) + 1
    return pd.Series(counts, name="relations").sort_values(ascending=False, kind="stable")


def set_overlap(n_shared: int, n_a: int, n_b: int) -> tuple[float, float]:
    """``(overlap coefficient, Jaccard)`` from the sizes of ``A ∩ B``, ``A`` and ``B``.

    Raises:
        ValueError: sizes that no two sets can have (negative, or more shared than either holds).
    """
    if min(n_shared, n_a, n_b) < 0 or n_shared > min(n_a, n_b):
        raise ValueError(f"impossible set sizes: |A∩B|={n_shared}, |A|={n_a}, |B|={n_b}")
    smaller, union = min(n_a, n_b), n_a + n_b - n_shared
    return (n_shared / smaller if smaller else 1.0), (n_shared / union if union else 1.0)


def _check_pair(a: Graph, b: Graph) -> None:
    if a.shape != b.shape:
        raise CircuitError(f"cannot overlap circuits of different architectures ({a.shape} vs {b.shape})")


def overlap_scores(a: Graph, b: Graph) -> dict[str, float]:
    """Node and edge overlap and Jaccard of two circuits of one model, with the counts behind them.

    Returns:
        :data:`MEASURES` plus ``nodes_a``, ``nodes_b``, ``nodes_shared``, ``edges_a``, ``edges_b``,
        ``edges_shared``.
    """
    _check_pair(a, b)
    nodes_a, nodes_b = circuit_nodes(a), circuit_nodes(b)
    edges_a, edges_b = a.in_graph & a.real_edges, b.in_graph & b.real_edges
    shared_edges = int((edges_a & edges_b).sum())
    node_overlap, node_jaccard = set_overlap(len(nodes_a & nodes_b), len(nodes_a), len(nodes_b))
    edge_overlap, edge_jaccard = set_overlap(shared_edges, int(edges_a.sum()), int(edges_b.sum()))
    return {
        "node_overlap": node_overlap,
        "node_jaccard": node_jaccard,
        "edge_overlap": edge_overlap,
        "edge_jaccard": edge_jaccard,
        "nodes_a": float(len(nodes_a)),
        "nodes_b": float(len(nodes_b)),
        "nodes_shared": float(len(nodes_a & nodes_b)),
        "edges_a": float(edges_a.sum()),
        "edges_b": float(edges_b.sum()),
        "edges_shared": float(shared_edges),
    }


def overlap_table(circuits: Mapping[str, Graph], pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """One row per pair ``(a, b)`` of named circuits: ``a``, ``b`` and :func:`overlap_scores`.

    Raises:
        KeyError: a pair names a circuit not in ``circuits``.
    """
    rows = []
    for a, b in pairs:
        missing = [n for n in (a, b) if n not in circuits]
        if missing:
            raise KeyError(f"no circuit named {missing[0]!r}; the circuits are {sorted(circuits)}")
        rows.append({"a": a, "b": b, **overlap_scores(circuits[a], circuits[b])})
    return pd.DataFrame(rows)


def random_circuits(
    graph: Graph,
    n_edges: int,
    n: int,
    seed: int = 0,
    from_input: bool = True,
    allowed: torch.Tensor | None = None,
) -> list[Graph]:
    """``n`` random circuits of ``n_edges`` edges each (:func:`~kc_utils.circuits.evaluate.random_circuit`, seed + i).

    Args:
        graph: any graph of the model (its ``real_edges`` define what can be drawn).
        allowed: ``Bool[up, rx]`` edges to draw from (default: all).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [random_circuit(graph, n_edges, seed=seed + i, allowed=allowed, from_input=from_input) for i in range(n)]


def paired_overlaps(first: Sequence[Graph], second: Sequence[Graph]) -> pd.DataFrame:
    """:func:`overlap_scores` of ``first[i]`` with ``second[i]`` for every ``i``: one row per draw (``draw`` first).

    Raises:
        ValueError: lists of different lengths.
    """
    if len(first) != len(second):
        raise ValueError(f"pair draws one to one: got {len(first)} and {len(second)} circuits")
    return pd.DataFrame([{"draw": i, **overlap_scores(a, b)} for i, (a, b) in enumerate(zip(first, second))])


def random_overlaps(
    graph: Graph,
    n_edges_a: int,
    n_edges_b: int,
    n_random: int = 10,
    seed: int = 0,
    from_input: bool = True,
    allowed: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Overlaps of ``n_random`` pairs of independent random circuits with ``n_edges_a`` and ``n_edges_b`` edges.

    The ``a`` circuits use seeds ``seed + i``, the ``b`` circuits ``seed + n_random + i``, so the table
    is deterministic and the two sides never share a draw. (To compare several circuits pairwise, draw
    each side once with :func:`random_circuits` and pair them with :func:`paired_overlaps`.)

    Returns:
        One row per draw: ``draw`` and :func:`overlap_scores`.
    """
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}")
    a = random_circuits(graph, n_edges_a, n_random, seed, from_input, allowed)
    b = random_circuits(graph, n_edges_b, n_random, seed + n_random, from_input, allowed)
    return paired_overlaps(a, b)


def summarise_overlaps(draws: pd.DataFrame) -> dict[str, float]:
    """Mean and (population) std of each of :data:`MEASURES` over the rows of a table (``<m>_mean``, ``<m>_std``)."""
    if draws.empty:
        raise ValueError("no overlaps to summarise")
    out: dict[str, float] = {}
    for m in MEASURES:
        out[f"{m}_mean"] = float(draws[m].mean())
        out[f"{m}_std"] = float(np.std(draws[m]))
    out["n"] = float(len(draws))
    return out
