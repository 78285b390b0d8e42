"""Edge patching in one forward pass.

The circuit's semantics: receiver ``v`` reads ``Σ_u keep[u,v]·z_u + (1 − keep[u,v])·ẑ_u`` (plus
the input-independent constants such as the attention output bias), where ``z_u`` is upstream
node ``u``'s output in *this* run and ``ẑ_u`` its ablated output (from the corrupted prompt, zero,
or a mean). Since the residual stream already holds ``Σ_u z_u``, each receiver hook subtracts

    Σ_u (1 − keep[u, v]) · (z_u − ẑ_u)

with one einsum per hook over a buffer ``delta[u] = z_u − ẑ_u`` filled as the forward pass goes.
``keep`` may be a float tensor that requires grad: that gives the mask-gradient view of EAP.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.batch import PromptBatch
from kc_utils.graph import Graph

Ablation = Literal["patch", "zero", "mean"]
ABLATIONS = ("patch", "zero", "mean")


def upstream_hooks(graph: Graph, write: Any) -> list[tuple[str, Any]]:
    """Forward hooks that hand each upstream node's output to ``write(slice, z)``.

    ``z`` is ``[n_nodes_in_slice, b, p, d]``.
    """
    hooks: list[tuple[str, Any]] = [(models.INPUT_HOOK, lambda act, hook: write(slice(0, 1), act[None]))]
    for layer in range(graph.shape.n_layers):
        heads = graph.head_upstream_slice(layer)
        mlp = graph.mlp_upstream_index(layer)
        hooks.append((models.head_result_hook(layer), lambda act, hook, s=heads: write(s, act.permute(2, 0, 1, 3))))
        hooks.append((models.mlp_out_hook(layer), lambda act, hook, i=mlp: write(slice(i, i + 1), act[None])))
    return hooks


def collect_outputs(model: Any, graph: Graph, tokens: Tensor) -> Float[Tensor, "up b p d"]:
    """Every upstream node's output on ``tokens`` (no grad)."""
    b, p = tokens.shape
    buffer = torch.zeros(graph.n_upstream, b, p, graph.shape.d_model, device=tokens.device, dtype=models.model_dtype(model))

    def write(s: slice, z: Tensor) -> None:
        buffer[s] = z.detach()

    with torch.no_grad():
        models.run_with_hooks(model, tokens, upstream_hooks(graph, write))
    return buffer


def ablated_outputs(
    model: Any,
    graph: Graph,
    batch: PromptBatch,
    ablation: Ablation,
    mean_reference: PromptBatch | None = None,
) -> Float[Tensor, "up b p d"]:
    """The outputs ``ẑ`` that replace ablated edges' upstream outputs, shaped like the batch.

    * ``patch``: outputs on the corrupted prompts (same token length as the clean ones); examples
      flagged in ``batch.mean_fallback`` (no corrupt twin) get the mean over the batch's clean tokens;
    * ``zero``: zeros;
    * ``mean``: each node's output averaged over every real (non-pad) token of
      ``mean_reference`` (default: the clean prompts of ``batch``), the same at every position.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    b, p = batch.clean.shape
    if ablation == "patch":
        if batch.corrupt is None:
            raise ValueError(
                "ablation='patch' needs corrupted prompts; build the batch with corrupt_prompts, "
                "or use ablation='mean' or 'zero'"
            )
        outputs = collect_outputs(model, graph, batch.corrupt)
        if batch.mean_fallback is not None and bool(batch.mean_fallback.any()):
            mean = _token_mean(collect_outputs(model, graph, batch.clean), batch.padding_mask)
            outputs[:, batch.mean_fallback] = mean[:, None, None, :]
        return outputs
    if ablation == "zero":
        return torch.zeros(graph.n_upstream, b, p, graph.shape.d_model, device=batch.clean.device, dtype=models.model_dtype(model))
    reference = mean_reference if mean_reference is not None else batch
    mean = _token_mean(collect_outputs(model, graph, reference.clean), reference.padding_mask)
    return mean[:, None, None, :].expand(-1, b, p, -1).contiguous()


def _token_mean(outputs: Float[Tensor, "up b p d"], real: Tensor) -> Float[Tensor, "up d"]:
    """Mean of each node's output over the real (non-pad) tokens ``real`` ``[b, p]``."""
    mask = real.to(outputs.dtype)
    return torch.einsum("ubpd,bp->ud", outputs, mask) / mask.sum()


def receiver_hooks(graph: Graph, delta: Tensor, drop: Tensor) -> list[tuple[str, Any]]:
    """Forward hooks that subtract ``Σ_u drop[u, v]·delta[u]`` from each receiver's input.

    Args:
        delta: ``[up, b, p, d]`` buffer of ``z_u − ẑ_u``, filled by the upstream hooks.
        drop: ``[up, rx]`` weight of each edge's ablation (``1 − keep``).
    """

    def correction(visible: int, rx: slice, per_head: bool):
        weights = drop[:visible, rx]
        if not bool(weights.detach().any()) and not weights.requires_grad:
            return None

        def hook(act: Tensor, hook: Any) -> Tensor:
            d = delta[:visible].to(act.dtype)
            w = weights.to(act.dtype)
            if per_head:
                return act - torch.einsum("ubpd,uh->bphd", d, w)
            return act - torch.einsum("ubpd,u->bpd", d, w[:, 0])

        return hook

    hooks: list[tuple[str, Any]] = []
    for layer in range(graph.shape.n_layers):
        visible = graph.n_upstream_before_attention(layer)
        for letter in ("q", "k", "v"):
            fn = correction(visible, graph.receiver_slice(layer, letter), per_head=True)
            if fn is not None:
                hooks.append((models.qkv_input_hook(layer, letter), fn))
        fn = correction(graph.n_upstream_before_mlp(layer), graph.receiver_slice(layer, "mlp"), per_head=False)
        if fn is not None:
            hooks.append((models.mlp_in_hook(layer), fn))
    fn = correction(graph.n_upstream, slice(graph.logits_receiver, graph.logits_receiver + 1), per_head=False)
    if fn is not None:
        hooks.append((models.LOGITS_INPUT_HOOK, fn))
    return hooks


def run_masked(
    model: Any,
    graph: Graph,
    tokens: Tensor,
    ablated: Float[Tensor, "up b p d"],
    keep: Tensor,
) -> Float[Tensor, "b p vocab"]:
    """Forward pass in which each edge ``(u, v)`` carries ``keep[u,v]·z_u + (1−keep[u,v])·ẑ_u``.

    Args:
        tokens: ``[b, p]`` clean tokens.
        ablated: ``[up, b, p, d]`` ablated outputs from :func:`ablated_outputs`.
        keep: ``[up, rx]`` bool or float mask (float with ``requires_grad`` for mask gradients);
            entries outside ``graph.real_edges`` are ignored.
    """
    keep = keep.to(tokens.device)
    real = graph.real_edges.to(tokens.device)
    drop = (1 - keep.to(ablated.dtype)) * real.to(ablated.dtype)
    delta = torch.zeros_like(ablated)
    if delta.requires_grad:  # pragma: no cover - ablated values are always detached
        delta = delta.detach()
    buffers: dict[str, Tensor] = {"delta": delta}

    def write(s: slice, z: Tensor) -> None:
        # out-of-place so autograd can track z through the buffer when gradients are needed
        current = buffers["delta"]
        update = z - ablated[s]
        if update.requires_grad or current.requires_grad:
            buffers["delta"] = torch.cat([current[: s.start], update, current[s.stop :]], dim=0)
        else:
            current[s] = update

    class _Lazy:
        """Receivers must read the buffer as it is when they run, not when hooks are built."""

        def __getitem__(self, item: Any) -> Tensor:
            return buffers["delta"][item]

    hooks = upstream_hooks(graph, write) + receiver_hooks(graph, _Lazy(), drop)  # type: ignore[arg-type]
    return models.run_with_hooks(model, tokens, hooks)
