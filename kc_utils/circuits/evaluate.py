"""Running circuits: evaluation with ablated edges, faithfulness, random baselines (sizes: ``budget``).

A circuit is evaluated by running the model once with every edge outside it ablated
(:func:`kc_utils.circuits.patching.run_masked`): patched from the corrupted prompt, zeroed, or replaced by
a mean. With every edge kept the run equals the plain model; with none it equals the fully
ablated model.

Faithfulness of a circuit C for a metric m (Hanna et al. 2024 normalisation):

    (m(C) − m(∅)) / (m(full) − m(∅))

1 means the circuit does everything the model does, 0 means no more than the empty circuit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kc_utils.circuits.ablation import Ablation, AblationValues, prepare_ablation
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.circuits.patching import run_masked
from kc_utils.data.metrics import Metric, get_metric, reads_last_position_only
from kc_utils.data.prompts import PromptBatch


def circuit_logits(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """Logits ``[b, p, vocab]`` of the model restricted to ``graph.in_graph`` (or ``keep``)."""
    mask = graph.in_graph if keep is None else keep
    with torch.no_grad():
        ablated = prepare_ablation(model, graph, ablation, batch, mean_reference).outputs(model, graph, batch)
        return run_masked(model, graph, batch.clean, ablated, mask)


def evaluate_masks(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    masks: Sequence[Tensor],
    metrics: Sequence[str | Metric] = ("hit@10", "prob", "logit_diff"),
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    batch_size: int | None = None,
) -> list[dict[str, float]]:
    """Batch-mean of each metric for several circuits (``[up, rx]`` masks) on the same prompts.

    What the ablation needs (a reference mean) is computed once over the whole batch before the
    chunk loop, so the result does not depend on ``batch_size``; each chunk's ablated outputs are
    shared by every mask.
    ``logit_diff`` is skipped (absent from the result) when the batch has no corrupt answers.
    """
    fns = {m if isinstance(m, str) else m.__name__: get_metric(m) for m in metrics}
    # our metrics read the last position alone, so only it is unembedded; a caller's own gets every position
    last_only = all(reads_last_position_only(fn) for fn in fns.values())
    if batch.corrupt_answer.lt(0).any():
        fns.pop("logit_diff", None)
    sums = [{name: 0.0 for name in fns} for _ in masks]
    values = prepare_ablation(model, graph, ablation, batch, mean_reference, batch_size)
    with torch.no_grad():
        for chunk in batch.split(batch_size):
            ablated = values.outputs(model, graph, chunk)
            seen = chunk.at_last_position() if last_only else chunk
            for totals, mask in zip(sums, masks):
                logits = run_masked(model, graph, chunk.clean, ablated, mask, chunk.last_pos if last_only else None)
                for name, fn in fns.items():
                    totals[name] += float(fn(logits, seen).sum())
    return [{name: value / len(batch) for name, value in totals.items()} for totals in sums]


def evaluate_circuit(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    metrics: Sequence[str | Metric] = ("hit@10", "prob", "logit_diff"),
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    keep: Tensor | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Batch-mean of each metric for the circuit ``graph.in_graph`` (or ``keep``); see :func:`evaluate_masks`."""
    mask = graph.in_graph if keep is None else keep
    return evaluate_masks(model, graph, batch, [mask], metrics, ablation, mean_reference, batch_size)[0]


def full_and_empty(graph: Graph) -> tuple[Tensor, Tensor]:
    """Masks of the whole model and of the empty circuit."""
    return graph.real_edges.clone(), torch.zeros_like(graph.real_edges)


def faithfulness(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    metric: str | Metric = "logit_diff",
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    batch_size: int | None = None,
) -> float:
    """Normalised faithfulness ``(m(C) − m(∅)) / (m(full) − m(∅))`` of ``graph.in_graph``."""
    name = metric if isinstance(metric, str) else metric.__name__
    full, empty = full_and_empty(graph)
    values = evaluate_masks(
        model, graph, batch, [graph.in_graph, full, empty], [metric], ablation, mean_reference, batch_size
    )
    circuit, whole, none = (v[name] for v in values)
    return normalised_faithfulness(circuit, whole, none, name)


def normalised_faithfulness(circuit: float, whole: float, none: float, name: str = "metric") -> float:
    """``(circuit − none) / (whole − none)`` from the metric of the circuit, full model and empty circuit.

    Raises:
        CircuitError: when the full model and the empty circuit score the same.
    """
    if abs(whole - none) < 1e-12:
        raise CircuitError(
            f"the full model and the empty circuit score the same {name} ({whole:.4g}); faithfulness is "
            "undefined — use corrupted prompts whose answer differs, or another metric"
        )
    return (circuit - none) / (whole - none)


def mean_and_std(values: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-metric mean and standard deviation over several evaluations (empty dicts for none)."""
    if not values:
        return {}, {}
    keys = values[0]
    return (
        {k: float(np.mean([v[k] for v in values])) for k in keys},
        {k: float(np.std([v[k] for v in values])) for k in keys},
    )


def random_circuit(
    graph: Graph, n_edges: int, seed: int = 0, allowed: Tensor | None = None, from_input: bool = True
) -> Graph:
    """A random circuit connected to the logits with ``n_edges`` edges (or as close as pruning allows).

    Edges get random scores and the circuit is grown greedily from the logits; the number of
    greedy steps is searched so that the pruned circuit has ``n_edges`` edges when possible.

    Args:
        allowed: ``Bool[up, rx]`` — draw only among these edges (e.g. the edges among a circuit's
            own nodes, :func:`node_set_edges`); default every edge.
        from_input: passed to :meth:`Graph.prune` (``True``: the circuit also has a path from the input).

    Raises:
        CircuitError: when no connected circuit can be built from the allowed edges.
    """
    generator = torch.Generator().manual_seed(seed)
    pool = graph.real_edges if allowed is None else graph.real_edges & allowed
    rand = graph.copy()
    rand.scores = torch.rand(graph.scores.shape, generator=generator) * pool + 1e-9 * pool
    low, high = n_edges, int(pool.sum())
    best: Graph | None = None

    order = rand.greedy_order()  # greedy(steps) takes its first `steps` edges: grown once, cut many times

    def size(steps: int) -> tuple[int, Graph | None]:
        candidate = rand.copy()
        candidate.in_graph = torch.zeros_like(rand.real_edges)
        candidate.in_graph.view(-1)[order[:steps]] = True
        try:
            candidate.prune(from_input)
        except CircuitError:
            return 0, None
        candidate.in_graph &= pool
        return candidate.n_edges_in_graph, candidate

    while low <= high:
        mid = (low + high) // 2
        count, candidate = size(mid)
        if candidate is not None and (best is None or abs(count - n_edges) < abs(best.n_edges_in_graph - n_edges)):
            best = candidate
        if count == n_edges:
            break
        if count < n_edges:
            low = mid + 1
        else:
            high = mid - 1
    if best is None:
        raise CircuitError(f"could not build a connected random circuit of {n_edges} edges from the allowed edges")
    best.scores = graph.scores.clone()
    return best


def node_set_edges(graph: Graph, circuit: Graph) -> Tensor:
    """``Bool[up, rx]``: the edges whose upstream node and receiver node both belong to ``circuit``'s nodes.

    ``input`` and ``logits`` count as nodes of every circuit. Random circuits drawn from these
    edges use the same components as the circuit, wired at random — a baseline that is not the
    empty circuit in disguise.
    """
    nodes = set(circuit.nodes_in_graph()) | {"input", "logits"}
    up = torch.tensor([n in nodes for n in graph.upstream_names])
    rx = torch.tensor(
        [all(t in nodes for t in graph.receiver_targets(n)) or n == "logits" for n in graph.receiver_names]
    )
    return graph.real_edges & up[:, None] & rx[None, :]
