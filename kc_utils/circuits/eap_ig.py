"""Circuits in EAP-IG's graph JSON, the edge-level format the MIB benchmark's circuit track also reads.

The format (``Graph.to_json``/``Graph.from_json`` of Hanna et al.'s EAP-IG, ``src/eap/graph.py``)::

    {"cfg":   {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 64},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m1": {...}, "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": true}, ..., "m1->logits": {...}}}

Node and edge names are ours (:mod:`kc_utils.circuits.nodes`): ``input``, ``a{l}.h{h}``, ``m{l}``,
``logits``; an edge into a head names the head's input, ``<q>``, ``<k>`` or ``<v>``. Both graphs have the
same edges (every upstream node to every receiver it can reach through the residual stream), so without
grouped-query attention an edge maps to the edge of the same name, its score and ``in_graph`` unchanged.

**Grouped-query attention.** EAP-IG's graph has a key and a value receiver for every *query* head
(``a5.h4<k>``); ours has one per key/value head (``a5.g1<k>``, shared by the ``k = n_heads / n_kv_heads``
query heads ``a5.h{k·g}`` … ``a5.h{k·g+k-1}``), since patching a shared key changes all of them at once.
Writing, each group edge ``u->a5.g1<k>`` becomes the ``k`` edges ``u->a5.h{k·1+j}<k>``, each with the
group edge's ``in_graph`` and **an even share** (score / k) of its score, so that the copies sum to it: an
attribution score is linear in the gradient, and the gradient at a shared input is the sum over the heads
that read it — the copies are what the per-head scores would sum to, not each head's own score (which our
graph never computes). Reading does the inverse: the ``k`` copies' scores are summed (exact for a file
written here, and the group's score for a per-head file EAP-IG wrote on an ungrouped model), and their
``in_graph`` must agree — a file that keeps a shared key for some of a group's heads but not others cannot
be one of our circuits, so it is refused unless ``partial_kv`` says how to read it. The number of
key/value heads is not one of the four ``cfg`` fields: it is written beside them under the top-level key
``"kc_utils"`` (which EAP-IG's reader ignores), with the circuit's provenance.

Node ``in_graph`` is written as EAP-IG derives it: a node is in the graph when an edge of the circuit
leaves or enters it (``logits`` always, as in EAP-IG). Reading, the circuit is its edges; node flags are
checked against them (a warning when an edge of the circuit touches a node marked out), and node or
neuron scores, which our graph has no place for, are refused with an error that says so.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from kc_utils.circuits import nodes
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.shape import ModelShape

__all__ = ["PARTIAL_KV", "from_eap_ig_json", "to_eap_ig_json"]

#: How :func:`from_eap_ig_json` reads a key/value group whose per-head copies disagree on ``in_graph``.
PARTIAL_KV = ("error", "any", "all")


def _eap_ig_receivers(graph: Graph, receiver: str) -> list[str]:
    """EAP-IG's receiver names for one of ours: itself, or a key/value group's per-query-head copies."""
    parsed = nodes.parse_node(receiver)
    if parsed.kind != "group":
        return [receiver]
    return [f"{head}<{parsed.letter}>" for head in nodes.heads_of(receiver, graph.shape)]


def to_eap_ig_json(graph: Graph, path: str | Path | None = None) -> dict[str, Any]:
    """A graph and its circuit in EAP-IG's graph JSON (module docstring); writes ``path`` when given.

    Parameters
    ----------
    graph
        Any :class:`Graph`: its ``scores`` (``Float[n_upstream, n_receivers]``) and ``in_graph``
        (``Bool[n_upstream, n_receivers]``) are written for every real edge.
    path
        Where to write the JSON (parent folders are made); ``None`` only returns it.

    Returns
    -------
    dict
        ``{"cfg", "nodes", "edges", "kc_utils"}``: ``cfg`` holds EAP-IG's four fields; ``edges`` one
        entry per EAP-IG edge (under grouped-query attention, ``k`` per key/value group edge of ours).

    Examples
    --------
    >>> from kc_utils.shape import ModelShape
    >>> g = Graph(ModelShape(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8))
    >>> data = to_eap_ig_json(g)
    >>> data["cfg"], len(data["edges"]), "input->a0.h1<k>" in data["edges"]
    ({'n_layers': 1, 'n_heads': 2, 'parallel_attn_mlp': False, 'd_model': 8}, 13, True)
    """
    shape = graph.shape
    scores = graph.scores.detach().double().cpu()
    in_graph = graph.in_graph.cpu()
    edges: dict[str, dict[str, Any]] = {}
    for u, r in graph.real_edges.nonzero().tolist():
        upstream, targets = graph.upstream_names[u], _eap_ig_receivers(graph, graph.receiver_names[r])
        share = float(scores[u, r]) / len(targets)
        for target in targets:
            edges[nodes.edge_name(upstream, target)] = {"score": share, "in_graph": bool(in_graph[u, r])}
    used = set(graph.nodes_in_graph()) if bool(in_graph.any()) else set()
    node_dict = {name: {"in_graph": name in used} for name in graph.upstream_names}
    node_dict["logits"] = {"in_graph": True}
    data = {
        "cfg": {
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "parallel_attn_mlp": shape.parallel_attn_mlp,
            "d_model": shape.d_model,
        },
        "nodes": node_dict,
        "edges": edges,
        "kc_utils": {"n_key_value_heads": shape.n_kv_heads, "provenance": graph.provenance},
    }
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data))
    return data


def from_eap_ig_json(
    source: str | Path | dict[str, Any],
    n_kv_heads: int | None = None,
    partial_kv: Literal["error", "any", "all"] = "error",
) -> Graph:
    """Read a circuit from EAP-IG's graph JSON (inverse of :func:`to_eap_ig_json`; module docstring).

    Parameters
    ----------
    source
        A path to the JSON file, or the decoded dict.
    n_kv_heads
        Key/value heads per layer. ``None`` takes the number this package wrote under ``"kc_utils"``, or, in
        a file from elsewhere, ``cfg["n_heads"]`` (no grouped-query attention).
    partial_kv
        Under grouped-query attention, a key/value group whose per-head copies disagree on ``in_graph``:
        ``"error"`` refuses the file, ``"any"`` keeps the group edge when any copy is in the circuit,
        ``"all"`` only when every copy is.

    Returns
    -------
    Graph
        Scores and ``in_graph`` of every edge; ``provenance`` as written here (empty for a file from
        elsewhere).

    Raises
    ------
    CircuitError
        Not EAP-IG's format (a missing key or ``cfg`` field), an edge name this architecture does not have,
        an edge of the architecture missing from the file, node or neuron scores, or copies of a key/value
        group that disagree (with ``partial_kv="error"``).

    Examples
    --------
    >>> from kc_utils.shape import ModelShape
    >>> g = Graph(ModelShape(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8))
    >>> _ = g.set_edges(["input->a0.g0<k>", "a0.h1->logits"])
    >>> data = to_eap_ig_json(g)
    >>> edges = data["edges"]
    >>> edges.get("input->a0.h0<k>")["in_graph"], edges.get("input->a0.h1<k>")["in_graph"]
    (True, True)
    >>> back = from_eap_ig_json(data)
    >>> bool((back.in_graph == g.in_graph).all()), back.shape.n_kv_heads
    (True, 1)
    """
    data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    where = "the EAP-IG graph" if isinstance(source, dict) else str(source)
    missing = [key for key in ("cfg", "nodes", "edges") if key not in data]
    if missing:
        raise CircuitError(f"{where}: not EAP-IG graph JSON (keys 'cfg', 'nodes', 'edges'); missing {missing}")
    cfg = data["cfg"]
    absent = [key for key in ("n_layers", "n_heads", "d_model") if key not in cfg]
    if absent:
        raise CircuitError(f"{where}: cfg lacks {absent}; EAP-IG's has n_layers, n_heads, parallel_attn_mlp, d_model")
    if partial_kv not in PARTIAL_KV:
        raise ValueError(f"partial_kv={partial_kv!r}: use one of {PARTIAL_KV}")
    extra = data.get("kc_utils", {})
    n_kv = n_kv_heads or extra.get("n_key_value_heads") or int(cfg["n_heads"])
    shape = ModelShape(
        n_layers=int(cfg["n_layers"]),
        n_heads=int(cfg["n_heads"]),
        n_kv_heads=int(n_kv),
        d_model=int(cfg["d_model"]),
        parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
    )
    scored_nodes = [n for n, v in data["nodes"].items() if {"score", "neurons", "neurons_scores"} & set(v)]
    if scored_nodes:
        raise CircuitError(
            f"{where}: {len(scored_nodes)} nodes carry node or neuron scores (e.g. {scored_nodes[0]!r}); a kc_utils "
            "graph holds edge scores only, so they cannot be read. Write the file from an edge-level EAP-IG graph "
            "(node_scores=False, neuron_level=False)"
        )
    graph = Graph(shape)
    graph.in_graph = torch.zeros_like(graph.real_edges)
    scores = torch.zeros(graph.scores.shape, dtype=torch.float64)
    edges = data["edges"]
    seen = 0
    disagree: list[str] = []
    for u, r in graph.real_edges.nonzero().tolist():
        upstream, receiver = graph.upstream_names[u], graph.receiver_names[r]
        names = [nodes.edge_name(upstream, t) for t in _eap_ig_receivers(graph, receiver)]
        absent_edges = [n for n in names if n not in edges]
        if absent_edges:
            raise CircuitError(
                f"{where}: edge {absent_edges[0]!r} of this architecture is not in the file ({shape}); the file "
                "is not a whole EAP-IG graph of it — check cfg, and n_kv_heads under grouped-query attention"
            )
        flags = [bool(edges[n]["in_graph"]) for n in names]
        scores[u, r] = sum(float(edges[n]["score"]) for n in names)
        if len(set(flags)) > 1:
            disagree.append(nodes.edge_name(upstream, receiver))
        graph.in_graph[u, r] = all(flags) if partial_kv == "all" else any(flags)
        seen += len(names)
    if seen != len(edges):
        unknown = sorted(set(edges) - _all_names(graph))[:3]
        raise CircuitError(f"{where}: {len(edges) - seen} edges are not edges of this architecture (e.g. {unknown})")
    if disagree and partial_kv == "error":
        raise CircuitError(
            f"{where}: {len(disagree)} shared key/value inputs are in the circuit for some of their query heads and "
            f"not others (e.g. {disagree[0]}); a kc_utils circuit patches a shared input for all its heads at once. "
            "Pass partial_kv='any' (keep it if any head keeps it) or 'all' (only if every head does)"
        )
    graph.scores = scores.float()
    graph.provenance = dict(extra.get("provenance", {}))
    _check_node_flags(graph, data["nodes"], where)
    return graph


def _all_names(graph: Graph) -> set[str]:
    return {
        nodes.edge_name(graph.upstream_names[u], t)
        for u, r in graph.real_edges.nonzero().tolist()
        for t in _eap_ig_receivers(graph, graph.receiver_names[r])
    }


def _check_node_flags(graph: Graph, node_flags: dict[str, Any], where: str) -> None:
    """Warn when an edge of the circuit touches a node the file marks as out of the graph."""
    if not bool(graph.in_graph.any()):
        return
    out = [n for n in graph.nodes_in_graph() if n in node_flags and not node_flags[n].get("in_graph", True)]
    out = [n for n in out if n != "logits"]
    if out:
        warnings.warn(
            f"{where}: edges of the circuit touch {len(out)} nodes the file marks as not in the graph "
            f"(e.g. {out[0]!r}); the circuit read is its edges, those nodes included",
            UserWarning,
            stacklevel=3,
        )
