"""Two circuits of the same model, aligned by node and by edge: what joined, what left, what changed.

Yao et al. (2024, §6) compare the circuit of a zero-shot prompt with the circuit of the same facts
given demonstrations, and report the attention heads that are *new* in the second. The functions
here are pure functions over two scored, selected :class:`~kc_utils.circuits.graph.Graph` s of one
architecture (``before``, ``after``):

1. **Nodes** (:func:`node_changes`): every node of either circuit, whether it is in ``before``,
   in ``after``, and its weight in each — the sum of ``|score|`` over the circuit's edges that leave
   it (``logits``: that enter it). ``status`` is ``"added"`` (only in ``after``), ``"dropped"``
   (only in ``before``) or ``"kept"``.
2. **Edges** (:func:`edge_changes`): every edge in either circuit, with both scores, their
   difference and the same ``status``. Scores are read for every edge, in or out of a circuit, so a
   kept edge whose weight changed shows it.
3. **Summary** (:func:`compare_circuits`): the added, dropped and kept nodes and heads as lists, and
   the edge counts, in one :class:`CircuitDiff`.

The node order is the graph's (``input``, ``a0.h0`` …, ``logits``), so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from kc_utils.circuits import nodes
from kc_utils.circuits.graph import CircuitError, Graph

__all__ = ["CircuitDiff", "compare_circuits", "edge_changes", "node_changes", "node_weights"]

STATUSES = ("added", "dropped", "kept")


@dataclass(frozen=True)
class CircuitDiff:
    """How circuit ``after`` differs from circuit ``before`` (names in graph order).

    Attributes:
        nodes_added, nodes_dropped, nodes_kept: nodes only in ``after``, only in ``before``, in both.
        heads_added, heads_dropped, heads_kept: the same, attention heads only.
        n_edges_before, n_edges_after: circuit sizes.
        edges_added, edges_removed, edges_kept: edge counts only in ``after``, only in ``before``, in both.
    """

    nodes_added: tuple[str, ...]
    nodes_dropped: tuple[str, ...]
    nodes_kept: tuple[str, ...]
    heads_added: tuple[str, ...]
    heads_dropped: tuple[str, ...]
    heads_kept: tuple[str, ...]
    n_edges_before: int
    n_edges_after: int
    edges_added: int
    edges_removed: int
    edges_kept: int

    @property
    def node_jaccard(self) -> float:
        """Shared nodes over nodes of either circuit (1 = the same nodes)."""
        union = len(self.nodes_added) + len(self.nodes_dropped) + len(self.nodes_kept)
        return len(self.nodes_kept) / union if union else 1.0


def _check_same_shape(before: Graph, after: Graph) -> None:
    if before.shape != after.shape:
        raise CircuitError(
            f"cannot align circuits of different architectures ({before.shape} vs {after.shape}); "
            "compare circuits of the same model"
        )


def _is_head(name: str) -> bool:
    return nodes.parse_node(name).kind == "head"


def node_weights(graph: Graph) -> dict[str, float]:
    """Each circuit node's weight: the sum of ``|score|`` of its circuit edges out (``logits``: in).

    A node fed only through a shared key/value group gets the weight of the edges it sends.
    """
    kept = graph.in_graph & graph.real_edges
    magnitude = torch.where(kept, graph.scores.abs(), torch.zeros_like(graph.scores))
    out = magnitude.sum(dim=1)
    weights = {name: 0.0 for name in graph.nodes_in_graph()}
    for name in weights:
        if name == "logits":
            weights[name] = float(magnitude[:, graph.logits_receiver].sum())
        else:
            weights[name] = float(out[graph.upstream_index[name]])
    return weights


def _status(in_before: bool, in_after: bool) -> str:
    return "kept" if in_before and in_after else "added" if in_after else "dropped"


def node_changes(before: Graph, after: Graph) -> pd.DataFrame:
    """One row per node of either circuit.

    Returns:
        Columns ``node``, ``kind`` (``input``/``head``/``mlp``/``logits``), ``layer`` (NaN for
        input/logits), ``in_before``, ``in_after``, ``status``, ``weight_before``, ``weight_after``
        (:func:`node_weights`; 0 where the node is not in that circuit), in graph order.
    """
    _check_same_shape(before, after)
    w_before, w_after = node_weights(before), node_weights(after)
    order = {n: i for i, n in enumerate(before.upstream_names + ["logits"])}
    rows = []
    for name in sorted(set(w_before) | set(w_after), key=order.__getitem__):
        parsed = nodes.parse_node(name)
        rows.append(
            {
                "node": name,
                "kind": parsed.kind,
                "layer": float("nan") if parsed.layer is None else int(parsed.layer),
                "in_before": name in w_before,
                "in_after": name in w_after,
                "status": _status(name in w_before, name in w_after),
                "weight_before": w_before.get(name, 0.0),
                "weight_after": w_after.get(name, 0.0),
            }
        )
    columns = ["node", "kind", "layer", "in_before", "in_after", "status", "weight_before", "weight_after"]
    return pd.DataFrame(rows, columns=columns)


def edge_changes(before: Graph, after: Graph) -> pd.DataFrame:
    """One row per edge in either circuit, with both scores (whether or not the edge is selected).

    Returns:
        Columns ``edge``, ``upstream``, ``receiver``, ``score_before``, ``score_after``, ``delta``
        (after − before), ``in_before``, ``in_after``, ``status``; sorted by ``|delta|``, largest first.
    """
    _check_same_shape(before, after)
    a = before.in_graph & before.real_edges
    b = after.in_graph & after.real_edges
    rows = []
    for u, r in (a | b).nonzero().tolist():
        up, rx = before.upstream_names[u], before.receiver_names[r]
        s0, s1 = float(before.scores[u, r]), float(after.scores[u, r])
        rows.append(
            {
                "edge": nodes.edge_name(up, rx),
                "upstream": up,
                "receiver": rx,
                "score_before": s0,
                "score_after": s1,
                "delta": s1 - s0,
                "in_before": bool(a[u, r]),
                "in_after": bool(b[u, r]),
                "status": _status(bool(a[u, r]), bool(b[u, r])),
            }
        )
    columns = ["edge", "upstream", "receiver", "score_before", "score_after", "delta", "in_before", "in_after"]
    table = pd.DataFrame(rows, columns=[*columns, "status"])
    if len(table):
        table = table.sort_values("delta", key=abs, ascending=False, kind="stable").reset_index(drop=True)
    return table


def compare_circuits(before: Graph, after: Graph) -> CircuitDiff:
    """The nodes and heads that join, leave or stay, and the edge counts (see :class:`CircuitDiff`)."""
    table = node_changes(before, after)

    def names(status: str, heads_only: bool = False) -> tuple[str, ...]:
        chosen = table[table["status"] == status]
        if heads_only:
            chosen = chosen[chosen["kind"] == "head"]
        return tuple(chosen["node"])

    a = before.in_graph & before.real_edges
    b = after.in_graph & after.real_edges
    return CircuitDiff(
        nodes_added=names("added"),
        nodes_dropped=names("dropped"),
        nodes_kept=names("kept"),
        heads_added=names("added", True),
        heads_dropped=names("dropped", True),
        heads_kept=names("kept", True),
        n_edges_before=int(a.sum()),
        n_edges_after=int(b.sum()),
        edges_added=int((b & ~a).sum()),
        edges_removed=int((a & ~b).sum()),
        edges_kept=int((a & b).sum()),
    )
