"""Edge attribution: how much does each edge matter for the metric?

Every method fills ``graph.scores[u, v]`` with an estimate of

    S(u→v) = m(full model) − m(model with edge u→v ablated)

(Yao et al. 2024, eq. 1), where ``m`` is the batch-mean metric; positive means the edge helps.

Methods:

1. ``"exact"`` — the slow reference: ablate each edge alone and run the model (one forward
   pass per edge).
2. ``"eap"`` — attribution patching (Syed et al. 2023): one clean forward and one backward pass;
   ``S ≈ Σ_{b,p} (z_u − ẑ_u) · ∂m/∂in_v`` with ``z`` the clean and ``ẑ`` the ablated output of
   ``u``, ``in_v`` the residual stream read by receiver ``v``.
3. ``"eap-ig"`` — EAP with integrated gradients over the input (Hanna et al. 2024): the gradient
   is averaged over ``ig_steps`` forward/backward passes whose input embedding is
   ``ẑ_input + (k/m)(z_input − ẑ_input)``, ``k = 1 … m``.

EAP and EAP-IG accumulate the gradient at every receiver hook during the backward passes and
score all edges at the end with one einsum per receiver hook — no Python loop over edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.circuits.ablation import Ablation, AblationValues, prepare_ablation
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.patching import run_masked, upstream_hooks
from kc_utils.data.metrics import Metric, get_metric, reads_last_position_only
from kc_utils.data.prompts import PromptBatch

Method = Literal["eap", "eap-ig", "exact"]
METHODS = ("eap", "eap-ig", "exact")


@contextlib.contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
    """Turn off parameter gradients (only activation gradients are needed); restore on exit."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _receiver_keys(graph: Graph) -> list[tuple[str, tuple[int, str]]]:
    keys = []
    for layer in range(graph.shape.n_layers):
        for letter in ("q", "k", "v"):
            keys.append((models.qkv_input_hook(layer, letter), (layer, letter)))
        keys.append((models.mlp_in_hook(layer), (layer, "mlp")))
    keys.append((models.LOGITS_INPUT_HOOK, (-1, "logits")))
    return keys


def receiver_gradients(
    model: Any,
    graph: Graph,
    tokens: Tensor,
    alphas: Sequence[float],
    ablated_input: Tensor | None,
    objective: Any,
    read_positions: Tensor | None = None,
) -> tuple[dict[tuple[int, str], Tensor], Float[Tensor, "up b p d"]]:
    """Sum over ``alphas`` of ∂objective/∂(each receiver's input), and the clean node outputs.

    The input embedding of the pass for ``α`` is ``ablated_input + α·(clean_input − ablated_input)``.
    The ``α = 1`` pass (the clean run, which must be among ``alphas``) runs first and also records
    every upstream node's clean output, so no separate clean forward pass is needed.

    Args:
        tokens: ``[b, p]`` clean token ids (they fix everything but the input embedding).
        alphas: interpolation points, e.g. ``[1.0]`` for EAP or ``[k/m for k in 1..m]`` for EAP-IG.
        ablated_input: ``[b, p, d]`` the input node's ablated output (needed when any ``α ≠ 1``).
        objective: ``logits → scalar`` to differentiate.
        read_positions: ``[b]`` the one position per row the objective reads: only those are unembedded and
            ``objective`` gets ``[b, 1, vocab]`` logits (:func:`kc_utils.models.last_logits`; read them with
            :meth:`~kc_utils.data.prompts.PromptBatch.at_last_position`); ``None``: the whole ``[b, p, vocab]``.

    Returns:
        ``(grads, clean)``: ``grads`` maps ``(layer, "q"|"k"|"v")`` to ``[b, p, heads, d]``,
        ``(layer, "mlp")`` and ``(-1, "logits")`` to ``[b, p, d]``; ``clean`` is ``[up, b, p, d]``.
    """
    if 1.0 not in alphas:
        raise ValueError("alphas must include 1.0 (the clean run)")
    grads: dict[tuple[int, str], Tensor] = {}
    b, p = tokens.shape
    clean = torch.zeros(
        graph.n_upstream, b, p, graph.shape.d_model, device=tokens.device, dtype=models.model_dtype(model)
    )

    def capture(key: tuple[int, str]):
        def store(grad: Tensor) -> None:
            if key in grads:
                grads[key].add_(grad.detach())
            else:
                grads[key] = grad.detach().clone()

        # hook_mlp_in hands on the very tensor that also carries the residual stream onwards:
        # a fresh copy makes only the MLP's own branch count. The per-head q/k/v inputs are
        # fresh per-head tensors already.
        fresh_copy = key[1] in ("mlp", "logits")

        def hook(act: Tensor, hook: Any) -> Tensor:
            if fresh_copy:
                act = act.clone()
            if act.requires_grad:
                act.register_hook(store)
            return act

        return hook

    def record(s: slice, z: Tensor) -> None:
        clean[s] = z.detach().to(clean.device)  # under a device_map, blocks live on several devices

    capture_hooks = [(name, capture(key)) for name, key in _receiver_keys(graph)]
    ordered = [1.0] + [a for a in alphas if a != 1.0] + [1.0] * (list(alphas).count(1.0) - 1)
    with frozen_parameters(model):
        for i, alpha in enumerate(ordered):
            if i == 0:
                hooks = [(models.INPUT_HOOK, lambda act, hook: act.detach().clone().requires_grad_(True))]
                hooks += upstream_hooks(graph, record)[1:] + [
                    (models.INPUT_HOOK, lambda act, hook: record(slice(0, 1), act[None]))
                ]
            else:
                if ablated_input is None:
                    raise ValueError("ablated_input is needed for interpolation steps α ≠ 1")
                embedding = ablated_input + alpha * (clean[0] - ablated_input)
                leaf = embedding.detach().clone().requires_grad_(True)
                hooks = [(models.INPUT_HOOK, lambda act, hook, leaf=leaf: leaf.to(act.device))]
            with torch.enable_grad():
                if read_positions is None:
                    logits = models.run_with_hooks(model, tokens, hooks + capture_hooks)
                else:
                    logits = models.last_logits(model, tokens, read_positions, hooks + capture_hooks)[:, None]
                objective(logits).backward()
    return grads, clean


def scores_from_gradients(
    graph: Graph, delta: Float[Tensor, "up b p d"], grads: dict[tuple[int, str], Tensor]
) -> Float[Tensor, "up rx"]:
    """``S[u, v] = Σ_{b,p,d} delta[u] · grad[v]`` for every real edge.

    One matrix product per layer: the layer's q, k, v gradients and its MLP gradient are stacked
    as columns of ``[b·p·d, receivers]`` and multiplied by the flattened deltas of the upstream
    nodes the MLP sees (attention receivers see a prefix of those; the extra rows are masked by
    ``real_edges``).
    """
    up = graph.n_upstream
    flat = delta.float().reshape(up, -1)
    scores = torch.zeros(up, graph.n_receivers, device=delta.device, dtype=torch.float32)
    for layer in range(graph.shape.n_layers):
        columns = []
        for letter in ("q", "k", "v"):
            g = grads.get((layer, letter))
            n = graph.receiver_slice(layer, letter).stop - graph.receiver_slice(layer, letter).start
            columns.append(
                g.float().to(flat.device).permute(0, 1, 3, 2).reshape(-1, n)
                if g is not None
                else flat.new_zeros(flat.shape[1], n)
            )
        g = grads.get((layer, "mlp"))
        columns.append(g.float().to(flat.device).reshape(-1, 1) if g is not None else flat.new_zeros(flat.shape[1], 1))
        visible = graph.n_upstream_before_mlp(layer)
        start = graph.receiver_slice(layer, "q").start
        block = torch.cat(columns, dim=1)
        scores[:visible, start : start + block.shape[1]] = flat[:visible] @ block
    g = grads.get((-1, "logits"))
    if g is not None:
        scores[:, graph.logits_receiver] = flat @ g.float().to(flat.device).reshape(-1)
    return scores * graph.real_edges.to(scores.device)


def _eap_scores(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    metric: Metric,
    ablation: AblationValues,
    ig_steps: int,
    n_total: int,
) -> Tensor:
    ablated = ablation.outputs(model, graph, batch)
    alphas = [k / ig_steps for k in range(1, ig_steps + 1)]
    if reads_last_position_only(metric):  # only the last positions are unembedded: logits [b, 1, vocab]
        at_last = batch.at_last_position()
        objective = lambda logits: metric(logits, at_last).sum() / n_total  # noqa: E731
        read = batch.last_pos
    else:  # a metric of the caller's may read any position
        objective = lambda logits: metric(logits, batch).sum() / n_total  # noqa: E731
        read = None
    grads, clean = receiver_gradients(model, graph, batch.clean, alphas, ablated[0], objective, read)
    return scores_from_gradients(graph, clean - ablated, grads) / ig_steps


def _exact_scores(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    metric: Metric,
    ablation: AblationValues,
    n_total: int,
    edges: Tensor,
    progress: bool,
) -> Tensor:
    scores = torch.zeros(graph.n_upstream, graph.n_receivers)
    ablated = ablation.outputs(model, graph, batch)
    full = graph.real_edges.clone()
    with torch.no_grad():
        base = metric(run_masked(model, graph, batch.clean, ablated, full), batch).sum().item()
        for u, r in tqdm(edges.tolist(), desc="exact edge ablation", disable=not progress, leave=False):
            keep = full.clone()
            keep[u, r] = False
            value = metric(run_masked(model, graph, batch.clean, ablated, keep), batch).sum().item()
            scores[u, r] = (base - value) / n_total
    return scores


def attribute(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    metric: str | Metric = "logit_diff",
    method: Method = "eap-ig",
    ig_steps: int = 5,
    ablation: Ablation | AblationValues = "patch",
    mean_reference: PromptBatch | None = None,
    batch_size: int | None = None,
    edges: list[str] | None = None,
    progress: bool = True,
) -> Graph:
    """Score every edge of ``graph`` (in place) and return it.

    Args:
        model: a model from :func:`kc_utils.models.load_model`.
        graph: ``Graph.from_model(model)``.
        batch: prompts from :func:`kc_utils.data.prompts.make_batch`.
        metric: a metric name (``"logit_diff"``, ``"logprob"`` …) or callable; batch mean is used.
        method: ``"eap"``, ``"eap-ig"`` or ``"exact"`` (see the module docstring).
        ig_steps: interpolation steps of EAP-IG (the paper's default is 5).
        ablation: ``"patch"`` (corrupted prompts), ``"zero"`` or ``"mean"``, or an
            :class:`~kc_utils.circuits.ablation.AblationValues` prepared beforehand.
        mean_reference: prompts whose mean activations ``"mean"`` ablation uses (default: all of
            ``batch``; computed once before the batch loop).
        batch_size: examples per forward pass (memory); the scores do not depend on it.
        edges: with ``method="exact"``, score only these edges (names); others stay 0.

    Returns:
        ``graph`` with ``scores`` set (float32, on the CPU).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if ig_steps < 1:
        raise ValueError(f"ig_steps must be ≥ 1, got {ig_steps}")
    if len(batch) == 0:
        raise ValueError("the batch is empty; nothing to attribute")
    if models.model_shape(model) != graph.shape:
        raise ValueError(f"graph shape {graph.shape} does not match the model's {models.model_shape(model)}")
    metric_fn = get_metric(metric)
    steps = 1 if method == "eap" else ig_steps
    if method == "exact":
        if edges is None:
            chosen = graph.real_edges.nonzero()
        else:
            chosen = torch.tensor([graph.edge_indices(name) for name in edges], dtype=torch.long).reshape(-1, 2)
    values = prepare_ablation(model, graph, ablation, batch, mean_reference, batch_size)
    total = torch.zeros(graph.n_upstream, graph.n_receivers)
    chunks = list(batch.split(batch_size))
    for chunk in tqdm(chunks, desc=f"{method} attribution", disable=not progress or len(chunks) == 1, leave=False):
        if method == "exact":
            total += _exact_scores(model, graph, chunk, metric_fn, values, len(batch), chosen, progress)
        else:
            total += _eap_scores(model, graph, chunk, metric_fn, values, steps, len(batch)).cpu()
    if not bool(torch.isfinite(total).all()):
        bad = (~torch.isfinite(total) & graph.real_edges).nonzero()
        names = ", ".join(graph.edge_name_at(i) for i in bad[:5].tolist())
        raise FloatingPointError(
            f"{len(bad)} edge scores are NaN or infinite (e.g. {names}). Likely causes: a metric that is "
            "infinite for some prompt (log-prob of an answer with probability 0), or float16/bfloat16 "
            "overflow — use float32 or metric='logit_diff'"
        )
    graph.scores = total
    return graph
