"""The computation graph of a transformer, as dense tensors.

Nodes (Yao et al. 2024, §2): ``input`` (token + positional embeddings), every attention head
``a{l}.h{h}``, every MLP ``m{l}`` and ``logits``. An *upstream* node writes to the residual stream
(``input``, heads, MLPs); a *receiver* reads from it: each head's query, key and value inputs
(``a5.h1<q>``), each MLP, and the logits. An edge joins every upstream node to every receiver it
can reach through the residual stream, e.g. ``m3->a5.h1<q>``.

Grouped-query attention: key and value receivers exist once per key/value head, named
``a{l}.g{g}<k>``/``<v>``, so an edge into a shared key is counted once. Without GQA the names
are the paper's ``a{l}.h{h}<k>``.

Everything lives in ``[n_upstream, n_receivers]`` tensors — ``scores``, ``in_graph`` and the
fixed ``real_edges`` mask — with name↔index maps; :class:`Edge` is a thin view. Upstream index
order is ``input, a0.h0 … a0.h{H-1}, m0, a1.h0 …``, so the upstream nodes visible to a receiver
form a prefix of that order.

Selection (:meth:`Graph.top_n`, :meth:`Graph.threshold`, :meth:`Graph.greedy`) sets ``in_graph``
and then :meth:`Graph.prune` removes edges of nodes with no path from ``input`` or to ``logits``.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kc_utils.circuits import nodes
from kc_utils.shape import ModelShape


class CircuitError(ValueError):
    """A circuit request that cannot be honoured (too many edges, empty circuit, bad file)."""


@dataclass(frozen=True)
class Edge:
    """One edge, a view into its :class:`Graph`."""

    upstream: str
    receiver: str
    score: float
    in_graph: bool

    @property
    def name(self) -> str:
        """``"m3->a5.h1<q>"``."""
        return f"{self.upstream}->{self.receiver}"


class Graph:
    """Dense computation graph of one model architecture.

    Attributes:
        shape: the architecture.
        upstream_names: ``[n_upstream]`` node names (``input``, ``a0.h0`` …, ``m0`` …).
        receiver_names: ``[n_receivers]`` receiver names (``a0.h0<q>`` …, ``m0`` …, ``logits``).
        real_edges: ``Bool[n_upstream, n_receivers]`` — which pairs are edges at all.
        scores: ``Float[n_upstream, n_receivers]`` — attribution scores (0 where not an edge).
        in_graph: ``Bool[n_upstream, n_receivers]`` — the current circuit.
        provenance: how it was made (a JSON-able dict; see :meth:`to_json`).
    """

    def __init__(self, shape: ModelShape):
        self.shape = shape
        L, H, G = shape.n_layers, shape.n_heads, shape.n_kv_heads
        if H % G:
            raise CircuitError(f"n_heads={H} is not a multiple of n_kv_heads={G}")
        self.upstream_names: list[str] = nodes.upstream_node_names(shape)
        self.receiver_names: list[str] = []
        # receiver block layout per layer: q (H), k (G), v (G), mlp (1)
        self._layer_receiver_start: list[int] = []
        for layer in range(L):
            self._layer_receiver_start.append(len(self.receiver_names))
            self.receiver_names += [nodes.receiver_name(layer, h, "q") for h in range(H)]
            self.receiver_names += [nodes.kv_receiver_name(shape, layer, g, "k") for g in range(G)]
            self.receiver_names += [nodes.kv_receiver_name(shape, layer, g, "v") for g in range(G)]
            self.receiver_names.append(nodes.mlp_name(layer))
        self.receiver_names.append("logits")
        self.upstream_index = {n: i for i, n in enumerate(self.upstream_names)}
        self.receiver_index = {n: i for i, n in enumerate(self.receiver_names)}

        n_up, n_rx = len(self.upstream_names), len(self.receiver_names)
        self.real_edges: Bool[Tensor, "up rx"] = torch.zeros(n_up, n_rx, dtype=torch.bool)
        for layer in range(L):
            attn_visible = self.n_upstream_before_attention(layer)
            mlp_visible = self.n_upstream_before_mlp(layer)
            start = self._layer_receiver_start[layer]
            self.real_edges[:attn_visible, start : start + H + 2 * G] = True
            self.real_edges[:mlp_visible, start + H + 2 * G] = True
        self.real_edges[:, -1] = True
        self.scores: Float[Tensor, "up rx"] = torch.zeros(n_up, n_rx)
        self.in_graph: Bool[Tensor, "up rx"] = self.real_edges.clone()
        #: How the scores and circuit were made (model, method, ablation, metric, budget, …);
        #: written to and read from JSON so a later notebook can check before reusing a circuit.
        self.provenance: dict[str, Any] = {}

    # ------------------------------------------------------------------ layout
    @classmethod
    def from_model(cls, model: Any) -> Graph:
        """The graph of a booted model (its shape read from ``model.cfg``)."""
        return cls(ModelShape.from_config(model.cfg))

    @property
    def n_upstream(self) -> int:
        return len(self.upstream_names)

    @property
    def n_receivers(self) -> int:
        return len(self.receiver_names)

    @property
    def n_edges(self) -> int:
        """Number of real edges of the full model."""
        return int(self.real_edges.sum())

    @property
    def n_edges_in_graph(self) -> int:
        return int(self.in_graph.sum())

    def n_upstream_before_attention(self, layer: int) -> int:
        """Upstream nodes visible to layer ``layer``'s attention: a prefix of the order."""
        return 1 + layer * (self.shape.n_heads + 1)

    def n_upstream_before_mlp(self, layer: int) -> int:
        """Upstream nodes visible to MLP ``layer`` (its own layer's heads unless parallel)."""
        extra = 0 if self.shape.parallel_attn_mlp else self.shape.n_heads
        return self.n_upstream_before_attention(layer) + extra

    def head_upstream_slice(self, layer: int) -> slice:
        """Upstream indices of the heads of ``layer``."""
        start = self.n_upstream_before_attention(layer)
        return slice(start, start + self.shape.n_heads)

    def mlp_upstream_index(self, layer: int) -> int:
        return self.n_upstream_before_attention(layer) + self.shape.n_heads

    def receiver_slice(self, layer: int, letter: str) -> slice:
        """Receiver indices of ``letter`` ∈ {q, k, v, mlp} in ``layer``."""
        H, G = self.shape.n_heads, self.shape.n_kv_heads
        start = self._layer_receiver_start[layer]
        offsets = {"q": (0, H), "k": (H, G), "v": (H + G, G), "mlp": (H + 2 * G, 1)}
        if letter not in offsets:
            raise ValueError(f"letter must be q, k, v or mlp, got {letter!r}")
        off, size = offsets[letter]
        return slice(start + off, start + off + size)

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    # ------------------------------------------------------------------ views
    def edges(self, only_in_graph: bool = False) -> Iterator[Edge]:
        """Iterate over edges (slow; for display and tests, not hot paths)."""
        mask = self.in_graph if only_in_graph else self.real_edges
        for u, r in mask.nonzero().tolist():
            yield Edge(
                self.upstream_names[u],
                self.receiver_names[r],
                float(self.scores[u, r]),
                bool(self.in_graph[u, r]),
            )

    def edge(self, name: str) -> Edge:
        """The edge called ``"upstream->receiver"``."""
        u, r = self.edge_indices(name)
        return Edge(self.upstream_names[u], self.receiver_names[r], float(self.scores[u, r]), bool(self.in_graph[u, r]))

    def edge_indices(self, name: str) -> tuple[int, int]:
        """``(upstream index, receiver index)`` of the edge called ``"upstream->receiver"``."""
        try:
            up, rx = nodes.parse_edge(name)
            u, r = self.upstream_index[up], self.receiver_index[rx]
        except (ValueError, KeyError):
            raise CircuitError(f"{name!r} is not an edge name like 'm3->a5.h1<q>' of this graph") from None
        if not self.real_edges[u, r]:
            raise CircuitError(f"{name!r} joins nodes that the residual stream does not connect")
        return u, r

    def set_edges(self, names: list[str], in_graph: bool = True, exclusive: bool = True) -> Graph:
        """Put the named edges in (or out of) the circuit; ``exclusive`` clears the rest first."""
        if exclusive:
            self.in_graph[:] = not in_graph
            self.in_graph &= self.real_edges
        for name in names:
            u, r = self.edge_indices(name)
            self.in_graph[u, r] = in_graph
        return self

    def receiver_node(self, receiver: int) -> str:
        """Node a receiver belongs to: ``a5.h1<q>`` → ``a5.h1``; kv receivers → their group."""
        return nodes.parse_node(self.receiver_names[receiver]).node

    def nodes_in_graph(self) -> list[str]:
        """Names of the nodes touched by at least one edge of the circuit (``input`` … ``logits``)."""
        used_up = self.in_graph.any(dim=1)
        names = {self.upstream_names[i] for i in used_up.nonzero().flatten().tolist()}
        for r in self.in_graph.any(dim=0).nonzero().flatten().tolist():
            # a shared key/value group stands for the query heads that read it
            names.update(self.receiver_targets(self.receiver_names[r]))
        order = {n: i for i, n in enumerate(self.upstream_names + ["logits"])}
        return sorted(names, key=lambda n: order[n])

    # ------------------------------------------------------------------ selection
    def _check_count(self, n: int) -> None:
        if n <= 0:
            raise CircuitError(f"asked for {n} edges; a circuit needs at least 1 edge")
        if n > self.n_edges:
            raise CircuitError(
                f"asked for {n} edges but this model's graph has only {self.n_edges}; "
                f"pass n ≤ {self.n_edges} (or a fraction of edges)"
            )

    def _require_scores(self) -> None:
        real = self.scores[self.real_edges]
        if not bool(torch.isfinite(real).all()):
            bad = [
                self.edge_name_at(i) for i in (~torch.isfinite(self.scores) & self.real_edges).nonzero()[:5].tolist()
            ]
            raise CircuitError(
                f"{int((~torch.isfinite(real)).sum())} edge scores are NaN or infinite (e.g. {', '.join(bad)}); "
                "selection would rank them arbitrarily. Likely causes: a metric that is infinite for some "
                "prompt (log of a zero probability), or a model run in float16/bfloat16 overflowing — use "
                "float32 or a logit-difference metric"
            )
        if not bool((real != 0).any()):
            raise CircuitError("the graph has no scores yet: run kc_utils.circuits.attribute(...) first")

    def edge_name_at(self, index: list[int] | tuple[int, int]) -> str:
        """The name ``"upstream->receiver"`` of the edge at ``(upstream index, receiver index)``."""
        u, r = index
        return nodes.edge_name(self.upstream_names[u], self.receiver_names[r])

    def top_n(self, n: int, absolute: bool = True, prune: bool = True, from_input: bool = True) -> Graph:
        """Keep the ``n`` highest-scoring edges (by ``|score|`` when ``absolute``), then prune.

        Ties are broken by edge index, so the result is deterministic. ``from_input`` is passed to
        :meth:`prune`.
        """
        self._check_count(n)
        self._require_scores()
        values = self.scores.abs() if absolute else self.scores
        flat = torch.where(self.real_edges, values, torch.tensor(float("-inf"))).flatten()
        order = torch.sort(flat, descending=True, stable=True).indices[:n]
        self.in_graph = torch.zeros_like(self.real_edges)
        self.in_graph.view(-1)[order] = True
        return self.prune(from_input) if prune else self

    def threshold(self, t: float, absolute: bool = True, prune: bool = True, from_input: bool = True) -> Graph:
        """Keep the edges whose score (``|score|`` when ``absolute``) is at least ``t``, then prune."""
        self._require_scores()
        values = self.scores.abs() if absolute else self.scores
        self.in_graph = self.real_edges & (values >= t)
        if not bool(self.in_graph.any()):
            raise CircuitError(f"no edge has a score ≥ {t}; lower the threshold")
        return self.prune(from_input) if prune else self

    def greedy(self, n: int, absolute: bool = True, prune: bool = True, from_input: bool = True) -> Graph:
        """Grow the circuit from the logits: repeatedly add the best edge into a node already in it.

        Every edge added reaches the logits, so the circuit is connected on the output side. The circuit is the
        first ``n`` edges of :meth:`greedy_order`.
        """
        self._check_count(n)
        order = self.greedy_order(absolute)
        self.in_graph = torch.zeros_like(self.real_edges)
        self.in_graph.view(-1)[order[:n]] = True
        return self.prune(from_input) if prune else self

    def greedy_order(self, absolute: bool = True) -> Int[Tensor, "k"]:
        """Flat edge indices (``u · n_receivers + r``) in the order the greedy growth from the logits adds them.

        Step by step: the best-scoring edge (by ``|score|`` when ``absolute``; ties to the lower index) among
        the edges not yet taken whose receiver belongs to a node already in the circuit; taking it brings its
        upstream node's receivers in. A heap holding each active receiver's best edge not yet taken (its edges sorted
        once) makes the whole order cost ``O(E log R)`` instead of one scan of every edge per step: a random
        circuit on a real model's tens of thousands of edges takes a fraction of a second, and the order is the
        one the step-by-step rule gives (tested).
        """
        self._require_scores()
        values = (self.scores.abs() if absolute else self.scores).detach().double().cpu().numpy()
        real = self.real_edges.cpu().numpy()
        n_rx = self.n_receivers
        # each receiver's real edges, best first (ties to the lower upstream index, hence the lower flat index):
        # the heap holds one edge per active receiver, its best not yet taken (a k-way merge of these lists),
        # which pops the same sequence as a heap of every available edge at a fraction of the pushes
        upstream, receiver = np.nonzero(real.T)[::-1]  # grouped by receiver, upstream ascending within each
        key = -values[upstream, receiver]
        by = np.lexsort((upstream, key, receiver))
        upstream, receiver, key = upstream[by], receiver[by], key[by]
        starts = np.searchsorted(receiver, np.arange(n_rx + 1))
        flat = (upstream.astype(np.int64) * n_rx + receiver).tolist()
        keys = key.tolist()
        owned = [np.flatnonzero(row).tolist() for row in self._receivers_of_upstream().numpy()]
        ends = starts[1:].tolist()
        active = [False] * n_rx
        heap: list[tuple[float, int, int]] = []  # (−score, flat index, position in the receiver's list)

        def activate(receivers: list[int]) -> None:
            for r in receivers:
                if active[r]:
                    continue
                active[r] = True
                i = int(starts[r])
                if i < ends[r]:
                    heapq.heappush(heap, (keys[i], flat[i], i))

        activate([self.logits_receiver])
        order: list[int] = []
        while heap:
            _, edge, i = heapq.heappop(heap)
            order.append(edge)
            r = edge % n_rx
            if i + 1 < ends[r]:
                heapq.heappush(heap, (keys[i + 1], flat[i + 1], i + 1))
            activate(owned[edge // n_rx])
        return torch.tensor(order, dtype=torch.long)

    def _receivers_of_upstream(self) -> Bool[Tensor, "up rx"]:
        """``[u, r]`` is True when receiver ``r`` reads into upstream node ``u``'s computation."""
        owns = torch.zeros(self.n_upstream, self.n_receivers, dtype=torch.bool)
        H, k = self.shape.n_heads, self.shape.heads_per_kv
        for layer in range(self.shape.n_layers):
            heads = self.head_upstream_slice(layer)
            q, kk, v, mlp = (self.receiver_slice(layer, x) for x in ("q", "k", "v", "mlp"))
            for h in range(H):
                owns[heads.start + h, q.start + h] = True
                owns[heads.start + h, kk.start + h // k] = True
                owns[heads.start + h, v.start + h // k] = True
            owns[self.mlp_upstream_index(layer), mlp.start] = True
        return owns

    def prune(self, from_input: bool = True) -> Graph:
        """Remove edges that cannot change the circuit's output, and (``from_input``) edges of input-less nodes.

        Always removed: edges of nodes with no path **to** ``logits`` — their output reaches
        nothing, so removing them changes no run of the circuit (lossless under every ablation).

        With ``from_input`` (the paper's rule) also removed: edges of nodes with no path **from**
        ``input``. Under ``patch`` ablation that is lossless too — a node all of whose inputs are
        ablated computes exactly its corrupted output, which is what its ablated out-edges carry.
        Under ``zero`` and ``mean`` ablation it is not: such a node still computes something from
        the zero/mean inputs (its biases, its norm), so pass ``from_input=False`` to keep them.

        Raises:
            CircuitError: when nothing is left.
        """
        owns = self._receivers_of_upstream()
        edges = self.in_graph & self.real_edges
        if from_input:
            # forward reachability in topological (upstream index) order
            reachable = torch.zeros(self.n_upstream, dtype=torch.bool)
            reachable[0] = True
            for u in range(1, self.n_upstream):
                inputs = edges[:, owns[u]]  # [up, receivers of u]
                reachable[u] = bool((inputs & reachable[:, None]).any())
            edges &= reachable[:, None]
        # backward: a receiver is useful if its node reaches the logits
        useful_node = torch.zeros(self.n_upstream, dtype=torch.bool)
        useful_rx = torch.zeros(self.n_receivers, dtype=torch.bool)
        useful_rx[self.logits_receiver] = True
        for u in range(self.n_upstream - 1, -1, -1):
            useful_node[u] = bool(edges[u, useful_rx].any())
            if useful_node[u]:
                useful_rx |= owns[u]
        edges &= useful_rx[None, :] & useful_node[:, None]
        self.in_graph = edges
        if not bool(edges.any()):
            what = "from input to logits" if from_input else "to the logits"
            raise CircuitError(
                f"the circuit is empty after pruning: no kept edge lies on a path {what}. Keep more edges "
                "(larger n), use greedy(n), which grows from the logits, or, under zero/mean ablation, "
                "prune with from_input=False."
            )
        return self

    def copy(self) -> Graph:
        other = Graph(self.shape)
        other.scores = self.scores.clone()
        other.in_graph = self.in_graph.clone()
        other.provenance = dict(self.provenance)
        return other

    # ------------------------------------------------------------------ files
    def to_json(self, path: str | Path | None = None) -> dict:
        """Serialise shape, provenance, scores of real edges and the circuit; writes ``path`` when given.

        ``provenance`` records how the circuit was made — model, method, ablation, metric,
        ig_steps, budget, relation, number of prompts, seed, package version — as set by
        :func:`kc_utils.circuits.relation.find_relation_circuit` (or by hand).
        """
        data = {
            "format": "kc_utils.graph/1",
            "shape": {
                "n_layers": self.shape.n_layers,
                "n_heads": self.shape.n_heads,
                "n_kv_heads": self.shape.n_kv_heads,
                "d_model": self.shape.d_model,
                "parallel_attn_mlp": self.shape.parallel_attn_mlp,
            },
            "provenance": self.provenance,
            "edges": {e.name: [e.score, e.in_graph] for e in self.edges()},
        }
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data, indent=None, sort_keys=False))
        return data

    @classmethod
    def from_json(cls, source: str | Path | dict) -> Graph:
        """Inverse of :meth:`to_json` (a dict, or a path to a file)."""
        data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        if data.get("format") != "kc_utils.graph/1":
            raise CircuitError(f"{source!r} is not a kc_utils graph file (format kc_utils.graph/1)")
        graph = cls(ModelShape(**data["shape"]))
        graph.in_graph = torch.zeros_like(graph.real_edges)
        for name, (score, kept) in data["edges"].items():
            u, r = graph.edge_indices(name)
            graph.scores[u, r] = score
            graph.in_graph[u, r] = bool(kept)
        graph.provenance = dict(data.get("provenance", {}))
        return graph

    def to_graphviz(self, path: str | Path | None = None) -> str:
        """Graphviz ``.gv`` text of the circuit; edge colour by sign, width by ``|score|``."""
        lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, style=filled, fillcolor="#eeeeee"];']
        max_abs = float(self.scores[self.in_graph].abs().max()) if self.in_graph.any() else 1.0
        for node in self.nodes_in_graph():
            colour = "#c6dbef" if node.startswith("a") else "#fdd0a2" if node.startswith("m") else "#d9d9d9"
            lines.append(f'  "{node}" [fillcolor="{colour}"];')
        for e in self.edges(only_in_graph=True):
            colour = "#2166ac" if e.score >= 0 else "#b2182b"
            width = 0.5 + 4.5 * abs(e.score) / (max_abs or 1.0)
            letter = nodes.parse_node(e.receiver).letter or ""
            label = f' label="{letter}"' if letter else ""
            for target in self.receiver_targets(e.receiver):
                lines.append(f'  "{e.upstream}" -> "{target}" [color="{colour}", penwidth={width:.2f}{label}];')
        lines.append("}")
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def receiver_targets(self, receiver: str) -> list[str]:
        """The node(s) a receiver feeds: ``a5.h1<q>`` → ``["a5.h1"]``; a key/value group → its query heads."""
        return nodes.heads_of(receiver, self.shape)

    def __repr__(self) -> str:
        return (
            f"Graph({self.shape.n_layers} layers × {self.shape.n_heads} heads, {self.n_edges} edges, "
            f"{self.n_edges_in_graph} in circuit)"
        )
