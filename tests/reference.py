"""Slow, obvious references for the fast paths, written without the library's einsums.

Every receiver input is rebuilt edge by edge in Python loops:

    in_v ← in_v − Σ_{u: edge (u, v) listed} (1 − α_uv) · diff_u

where ``diff_u`` is ``z_u(this run) − ẑ_u`` (the circuit semantics) or a fixed
``z_u(clean) − ẑ_u`` (the integrated-gradients view). ``α_uv`` are Python scalars or scalar
tensors that require grad.
"""

from __future__ import annotations

from typing import Any

import torch

from kc_utils import models
from kc_utils.circuits.graph import Graph


def reference_run(
    model: Any,
    graph: Graph,
    tokens: torch.Tensor,
    ablated: torch.Tensor,
    alphas: dict[tuple[int, int], Any],
    fixed_diff: torch.Tensor | None = None,
    input_override: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits with the listed edges scaled by their α (unlisted edges untouched)."""
    current: dict[int, torch.Tensor] = {}

    def diff(u: int) -> torch.Tensor:
        if fixed_diff is not None:
            return fixed_diff[u]
        return current[u] - ablated[u]

    def record_input(act, hook):
        if input_override is not None:
            act = input_override
        current[0] = act
        return act

    def record_heads(layer):
        def hook(act, hook):
            start = graph.head_upstream_slice(layer).start
            for h in range(graph.shape.n_heads):
                current[start + h] = act[:, :, h]

        return hook

    def record_mlp(layer):
        def hook(act, hook):
            current[graph.mlp_upstream_index(layer)] = act

        return hook

    def fix_single(receiver: int):
        def hook(act, hook):
            out = act
            for u in range(graph.n_upstream):
                if (u, receiver) in alphas:
                    out = out - (1 - alphas[(u, receiver)]) * diff(u)
            return out

        return hook

    def fix_heads(layer, letter):
        rx = graph.receiver_slice(layer, letter)

        def hook(act, hook):
            columns = []
            for i, receiver in enumerate(range(rx.start, rx.stop)):
                col = act[:, :, i]
                for u in range(graph.n_upstream):
                    if (u, receiver) in alphas:
                        col = col - (1 - alphas[(u, receiver)]) * diff(u)
                columns.append(col)
            return torch.stack(columns, dim=2)

        return hook

    hooks = [(models.INPUT_HOOK, record_input)]
    for layer in range(graph.shape.n_layers):
        for letter in ("q", "k", "v"):
            hooks.append((models.qkv_input_hook(layer, letter), fix_heads(layer, letter)))
        hooks.append((models.head_result_hook(layer), record_heads(layer)))
        hooks.append((models.mlp_in_hook(layer), fix_single(graph.receiver_slice(layer, "mlp").start)))
        hooks.append((models.mlp_out_hook(layer), record_mlp(layer)))
    hooks.append((models.LOGITS_INPUT_HOOK, fix_single(graph.logits_receiver)))
    return models.run_with_hooks(model, tokens, hooks)


def all_edges(graph: Graph) -> list[tuple[int, int]]:
    return [tuple(e) for e in graph.real_edges.nonzero().tolist()]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks are not needed for continuous scores)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
