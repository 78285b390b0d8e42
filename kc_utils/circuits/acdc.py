"""ACDC: remove edges one at a time while the model's behaviour barely changes (Conmy et al. 2023).

Yao et al. (2024) found the circuits of their Table 1 with ACDC (zero ablation; threshold τ = 0.1 in
their scripts, 0.01 in their README; metric ``match_nll``). The algorithm, as implemented here:

1. Start from the full graph; compute the metric of the full model, ``m_current``.
2. Visit receivers in reverse topological order: the logits, then for each layer from the last
   down, the MLP's input and the heads' query/key/value inputs (highest head first).
3. A receiver whose node has no kept outgoing edge is dead: its incoming edges are removed without
   a trial (they cannot change anything).
4. Otherwise try removing each kept incoming edge, upstream nodes from the latest to the
   earliest. The *damage* of a removal is ``m_new − m_current`` for ``kl`` (lower is better) and
   ``m_current − m_new`` for a metric where higher is better. If the damage is below
   ``threshold``, the edge stays removed and ``m_current = m_new``.

   Trials run **speculatively in stacks** (:func:`kc_utils.circuits.patching.run_masked_stack`):
   for a receiver's next ``stack`` edges, the masks "remove the first j of them" are evaluated in
   one forward pass over ``stack`` copies of the batch. Walking the results in order, every trial
   up to the first rejected one saw exactly the circuit the sequential algorithm would have; at a
   rejection the rest of the stack is discarded and re-run from the new state. Most edges of a
   sparse circuit are removed, so a receiver costs about one pass plus one per kept edge — and
   the result is the sequential algorithm's, trial for trial (tested).

   Stacking pays only where ``K`` copies cost less than ``K`` passes of one. ``stack="auto"``
   (:func:`acdc_stack_for`) stacks on an accelerator and for small models on a CPU, and runs one
   trial per pass for larger models on a CPU. Measured on 2 CPU cores (one thread, 24 prompts,
   a 1,000-edge circuit): the organism's pass costs 0.038 s for one copy and 0.023 s per copy for
   8; SmolLM2-135M's costs 1.39 s for one copy and 1.74 s per copy for 8 — there about 4 of a
   stack's 8 trials are used, so a stack of 8 costs about 3× more per trial than one trial per pass.
5. Prune what cannot matter (:meth:`~kc_utils.circuits.graph.Graph.prune`).

**Candidates** (``candidates=``, the hybrid of later circuit papers): only the edges of a mask are tried;
every other edge is removed before the first trial. With every real edge as candidate this is the plain
algorithm, trial for trial (tested). With the top edges of an attribution method
(:func:`candidate_edges`) it is **not** the sequential algorithm's circuit: an edge outside the candidates
is never kept, and the trials inside start from a circuit without the others. On a real model's 70,651
edges that turns one trial per edge (about 11 hours on 2 CPU cores) into one per candidate;
``benchmarks/acdc_hybrid.py`` measures how close it comes to plain ACDC on the organism, and its time on SmolLM2-135M
(1,000 candidates: 735 s on 2 CPU cores for country_capital_city).

``graph.scores`` receives each tried edge's damage (0 for edges removed without a trial), so the
usual views (plots, top edges) work on an ACDC circuit too.

Metrics: ``"kl"`` — KL(full model ‖ circuit) of the next-token distribution at each prompt's last
position, averaged over prompts (ACDC's default); ``"nll"`` — the answer's negative log-likelihood
(the authors' ``match_nll`` for single-token answers; lower is better); or any metric name of
:mod:`kc_utils.data.metrics` where higher is better (``"logprob"``, ``"logit_diff"`` …).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.circuits.ablation import Ablation, AblationValues, prepare_ablation
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.circuits.patching import run_masked_stack
from kc_utils.data.metrics import answer_logits, get_metric
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "ACDC_AUTO_MAX_EDGES",
    "AUTO_STACK",
    "AUTO_STACK_MAX_CPU_PARAMETERS",
    "LARGE_GRAPH_CANDIDATES",
    "AcdcRun",
    "acdc",
    "acdc_candidates_for",
    "acdc_stack_for",
    "acdc_wanted",
    "candidate_edges",
    "receiver_order",
]

#: ``compare_acdc="auto"`` runs ACDC on graphs up to this many edges: it tries every edge, one forward each (the
#: organism's 479 in seconds; Gemma-3-270M's 5,644 would be 5,644 forwards of a 270M model per relation).
ACDC_AUTO_MAX_EDGES = 2_000


#: Candidate edges ``acdc_candidates="auto"`` gives ACDC on a graph larger than :data:`ACDC_AUTO_MAX_EDGES`.
LARGE_GRAPH_CANDIDATES = 1000


def acdc_candidates_for(setting: int | str | None, n_edges: int) -> int | None:
    """How many EAP-IG candidate edges ACDC tries (``None``: every edge, plain ACDC), and the setting checked.

    Args:
        setting: ``"auto"`` (every edge on graphs up to :data:`ACDC_AUTO_MAX_EDGES` edges, else
            :data:`LARGE_GRAPH_CANDIDATES`), ``None`` (every edge) or a positive count (at most ``n_edges``).
        n_edges: edges of the model's graph (0: only check the setting).

    Raises:
        ValueError: any other setting.
    """
    if setting is None:
        return None
    if setting == "auto":
        return None if n_edges <= ACDC_AUTO_MAX_EDGES else LARGE_GRAPH_CANDIDATES
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"acdc_candidates must be 'auto', None or a positive edge count, got {setting!r}")
    return min(setting, n_edges) if n_edges else setting


def acdc_wanted(setting: bool | str, n_edges: int) -> tuple[bool, str]:
    """Whether to run ACDC beside another method, and the reason in words.

    Args:
        setting: ``True``, ``False`` or ``"auto"`` (run it on graphs up to :data:`ACDC_AUTO_MAX_EDGES` edges,
            where one trial per edge takes minutes; on larger graphs it would take hours on a CPU).
        n_edges: edges of the model's graph.

    Raises:
        ValueError: any other setting.
    """
    if setting is True or setting is False:
        return setting, "compare_acdc is " + str(setting)
    if setting != "auto":
        raise ValueError(f"compare_acdc must be True, False or 'auto', got {setting!r}")
    if n_edges <= ACDC_AUTO_MAX_EDGES:
        return True, f"compare_acdc='auto' and the graph has {n_edges:,} edges (≤ {ACDC_AUTO_MAX_EDGES:,})"
    return False, (
        f"compare_acdc='auto' skips ACDC on this graph of {n_edges:,} edges (> {ACDC_AUTO_MAX_EDGES:,}): ACDC tries "
        "every edge with one forward pass each, hours on a CPU; pass -p compare_acdc True to run it anyway"
    )


#: Metrics where lower is better (the damage of a removal is the increase).
LOWER_IS_BETTER = ("kl", "nll")

#: ``stack="auto"`` stacks this many trials per pass where stacking pays (:func:`acdc_stack_for`).
AUTO_STACK = 8

#: On a CPU, ``stack="auto"`` stacks trials only for models with fewer parameters than this (the organism has
#: about 1.3 M, SmolLM2-135M 135 M; measured costs in the module docstring).
AUTO_STACK_MAX_CPU_PARAMETERS = 20_000_000


def acdc_stack_for(model: Any, stack: int | str = "auto") -> int:
    """Trials per masked pass: ``stack`` itself, or for ``"auto"`` :data:`AUTO_STACK` on an accelerator or for a
    model under :data:`AUTO_STACK_MAX_CPU_PARAMETERS` parameters on a CPU, else 1.

    The choice changes the speed only: every stack size gives the sequential algorithm's circuit (tested).

    Raises:
        ValueError: a ``stack`` that is neither ``"auto"`` nor a positive integer.
    """
    if stack == "auto":
        if models.model_device(model).type != "cpu":
            return AUTO_STACK
        n_parameters = sum(p.numel() for p in model.parameters())
        return AUTO_STACK if n_parameters < AUTO_STACK_MAX_CPU_PARAMETERS else 1
    if isinstance(stack, bool) or not isinstance(stack, int) or stack < 1:
        raise ValueError(f"stack must be 'auto' or a positive number of trials per pass, got {stack!r}")
    return stack


def receiver_order(graph: Graph) -> list[int]:
    """Receiver indices in ACDC's visiting order: logits, then layers from the last down.

    Within a layer: the MLP first (it runs after the heads), then value, key and query receivers,
    highest index first.
    """
    order = [graph.logits_receiver]
    for layer in range(graph.shape.n_layers - 1, -1, -1):
        for letter in ("mlp", "v", "k", "q"):
            rx = graph.receiver_slice(layer, letter)
            order += list(range(rx.stop - 1, rx.start - 1, -1))
    return order


@dataclass
class AcdcRun:
    """What an ACDC run did.

    ``trials`` edges tried in ``passes`` forward passes; ``removed_untried`` edges of dead nodes;
    ``removed_up_front`` edges outside the candidates (0 for plain ACDC); ``metric_start`` the metric of
    the circuit the trials start from (the full model's, ``metric_full``, for plain ACDC).
    """

    trials: int
    passes: int
    removed_untried: int
    metric_full: float
    metric_circuit: float
    removed_up_front: int = 0
    metric_start: float | None = None


class _Evaluator:
    """The metric of a mask over the whole batch, with everything but the mask computed once."""

    def __init__(
        self,
        model: Any,
        graph: Graph,
        batch: PromptBatch,
        metric: str,
        values: AblationValues,
        batch_size: int | None,
    ):
        self.model, self.graph, self.metric, self.n = model, graph, metric, len(batch)
        self.chunks = list(batch.split(batch_size))
        self.ablated = [values.outputs(model, graph, chunk) for chunk in self.chunks]
        self.fn = None if metric in LOWER_IS_BETTER else get_metric(metric)
        self.reference: list[Tensor] = []
        if metric == "kl":
            with torch.no_grad():
                for chunk in self.chunks:
                    logits = models.last_logits(model, chunk.clean, chunk.last_pos)
                    self.reference.append(logits.float().log_softmax(-1))

    def __call__(self, keep: Tensor) -> float:
        return self.many(keep[None])[0]

    def many(self, keeps: Tensor) -> list[float]:
        """The metric of each of ``K`` masks ``[K, up, rx]``, in one forward pass per chunk."""
        totals = torch.zeros(keeps.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for i, (chunk, ablated) in enumerate(zip(self.chunks, self.ablated)):
                # every ACDC metric reads the last position alone, so only it is unembedded
                logits = run_masked_stack(self.model, self.graph, chunk.clean, ablated, keeps, chunk.last_pos)
                seen = chunk.at_last_position()
                for k in range(keeps.shape[0]):
                    totals[k] += float(self._per_example(logits[k], seen, i).sum())
        return (totals / self.n).tolist()

    def _per_example(self, logits: Tensor, chunk: PromptBatch, i: int) -> Tensor:
        if self.metric == "kl":
            logp = answer_logits(logits, chunk).float().log_softmax(-1)
            ref = self.reference[i]
            return (ref.exp() * (ref - logp)).sum(-1)
        if self.metric == "nll":
            logp = answer_logits(logits, chunk).float().log_softmax(-1)
            return -logp.gather(1, chunk.answer[:, None])[:, 0]
        assert self.fn is not None
        return self.fn(logits, chunk)

    def damage(self, current: float, new: float) -> float:
        return new - current if self.metric in LOWER_IS_BETTER else current - new


def _owners(graph: Graph, receiver: int) -> list[int]:
    """Upstream indices of the node(s) a receiver feeds (none for the logits)."""
    if receiver == graph.logits_receiver:
        return []
    return [graph.upstream_index[n] for n in graph.receiver_targets(graph.receiver_names[receiver])]


def _incoming(keep: Tensor, receiver: int) -> Iterator[int]:
    """Kept upstream nodes of a receiver, latest first."""
    return iter(keep[:, receiver].nonzero().flatten().flip(0).tolist())


def candidate_edges(scored: Graph, n_candidates: int) -> Tensor:
    """The ``n_candidates`` real edges of largest ``|score|`` (an attribution's), as a mask ``[up, rx]``.

    Ties are broken by the edge's index, so the same scores give the same mask.

    Raises:
        CircuitError: ``n_candidates`` below 1 or above the graph's number of edges.
    """
    total = int(scored.real_edges.sum())
    if not 1 <= n_candidates <= total:
        raise CircuitError(f"n_candidates={n_candidates}: ask for 1 to {total} candidate edges")
    flat = torch.where(scored.real_edges, scored.scores.abs(), torch.tensor(-1.0)).flatten().double()
    order = torch.argsort(-flat, stable=True)[:n_candidates]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(scored.real_edges)


def acdc(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    threshold: float = 0.01,
    metric: str = "kl",
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    batch_size: int | None = None,
    stack: int | str = "auto",
    progress: bool = True,
    candidates: Tensor | None = None,
) -> tuple[Graph, AcdcRun]:
    """Run ACDC (module docstring) on ``graph`` in place; returns it with ``in_graph`` and ``scores`` set.

    Args:
        threshold: τ — a removal whose damage is below it is kept (the paper: 0.01–0.1).
        metric: ``"kl"``, ``"nll"`` or a higher-is-better metric name.
        ablation: what a removed edge carries (``"patch"``, ``"zero"``, ``"mean"``).
        stack: trials evaluated speculatively in one forward pass (memory grows with it; 1 = sequential), or
            ``"auto"`` (:func:`acdc_stack_for`: 8 where stacking pays, else 1). Every size gives the same circuit.
        candidates: a mask ``[n_upstream, n_receivers]`` of the edges to try (module docstring); every other
            edge is removed before the first trial. ``None``: every edge (plain ACDC).

    Raises:
        ValueError: a negative threshold, an empty batch, an unknown metric, or candidates of another shape
            or with no real edge.
        CircuitError: when every edge was removed (τ too large for this task).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be ≥ 0, got {threshold}")
    stack = acdc_stack_for(model, stack)
    if len(batch) == 0:
        raise ValueError("the batch is empty; nothing to run ACDC on")
    if metric not in LOWER_IS_BETTER:
        try:
            get_metric(metric)
        except ValueError:
            raise ValueError(
                f"unknown metric {metric!r} for ACDC; use 'kl', 'nll' or a metric such as 'logit_diff' or 'logprob'"
            ) from None
    if candidates is not None:
        if tuple(candidates.shape) != tuple(graph.real_edges.shape) or candidates.dtype != torch.bool:
            raise ValueError(
                f"candidates must be a bool mask of shape {tuple(graph.real_edges.shape)} (the graph's edges), "
                f"got {candidates.dtype} {tuple(candidates.shape)}; build it with candidate_edges(scored, n)"
            )
        if not bool((candidates & graph.real_edges).any()):
            raise ValueError("candidates contain no edge of the graph; nothing to try")
    ablation_values = prepare_ablation(model, graph, ablation, batch, mean_reference, batch_size)
    evaluate = _Evaluator(model, graph, batch, metric, ablation_values, batch_size)
    keep = graph.real_edges.clone()
    scores = torch.zeros_like(graph.scores)
    full = evaluate(keep)
    up_front = 0
    if candidates is not None:
        up_front = int((keep & ~candidates).sum())
        keep &= candidates
    current = start = full if candidates is None else evaluate(keep)
    trials = untried = passes = 0
    order = receiver_order(graph)
    bar = tqdm(total=int(keep.sum()), desc=f"ACDC (τ={threshold})", disable=not progress, leave=False)
    for receiver in order:
        owners = _owners(graph, receiver)
        alive = not owners or bool(keep[owners].any())
        pending = list(_incoming(keep, receiver))
        if not alive:
            keep[pending, receiver] = False
            untried += len(pending)
            bar.update(len(pending))
            continue
        while pending:
            group = pending[:stack]
            masks = keep[None].repeat(len(group), 1, 1)
            for j in range(len(group)):
                masks[j:, group[j], receiver] = False  # mask j removes the first j + 1 edges of the group
            values = evaluate.many(masks)
            passes += 1
            consumed = len(group)
            for j, upstream in enumerate(group):
                trials += 1
                bar.update(1)
                damage = evaluate.damage(current, values[j])
                scores[upstream, receiver] = damage
                if damage < threshold:
                    keep[upstream, receiver] = False
                    current = values[j]
                else:
                    consumed = j + 1  # the rest of the stack assumed this edge removed: re-run it
                    break
            pending = pending[consumed:]
    bar.close()
    graph.scores = scores
    graph.in_graph = keep
    if not bool(keep.any()):
        raise CircuitError(
            f"ACDC removed every edge at threshold {threshold}: no single edge moves {metric} by that much. "
            "Lower the threshold."
        )
    kind = ablation_values.kind
    graph.prune(from_input=kind == "patch")
    return graph, AcdcRun(trials, passes, untried, full, current, up_front, start)
