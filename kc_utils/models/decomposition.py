"""The residual decomposition check: the residual stream is the sum of the graph's node outputs, or the model
is refused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kc_utils.models.core import (
    LOGITS_INPUT_HOOK,
    head_result_hook,
    hf_model,
    logits_at,
    mlp_in_hook,
    mlp_out_hook,
    model_device,
    model_dtype,
    model_family,
    model_shape,
    qkv_input_hook,
    resid_post_hook,
    run_with_cache,
    run_with_hooks,
    tokenize,
)
from kc_utils.models.errors import ModelLoadError

# ----------------------------------------------------------------------------- residual decomposition
#: Prompts the decomposition check runs; any text works, two of them show a remainder is input-independent.
DECOMPOSITION_PROBES = ("The capital of France is", "Water freezes at a temperature of zero degrees")


class DecompositionError(ModelLoadError):
    """A model's residual stream is not the sum of its graph's node outputs, so its edges would mean nothing."""


@dataclass(frozen=True)
class DecompositionCheck:
    """How far one block departs from ``out = in + Σ_heads result + b_O + mlp_out`` on the probe prompts.

    Attributes:
        block: the block's index.
        where: ``"block output"``, ``"MLP input"`` (the residual stream the MLP reads) or ``"next block input"``.
        mismatch: largest absolute input-dependent remainder (anything that is not a constant vector like ``b_O``).
        scale: largest absolute value of the residual stream there, for a relative reading.
    """

    block: int
    where: str
    mismatch: float
    scale: float

    @property
    def relative(self) -> float:
        """``mismatch / scale``."""
        return self.mismatch / max(self.scale, 1e-12)


def decomposition_tolerance(dtype: torch.dtype) -> float:
    """Largest relative remainder accepted as rounding: 1e-4 in float32/float64, 5e-2 in 16-bit types."""
    return 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def _probe_tokens(model: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe prompts as one right-padded batch ``[b, p]`` on the model's device, and each row's length ``[b]``."""
    rows = tokenize(model, prompts)
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model_device(model))
    return tokens, torch.tensor([len(r) for r in rows], device=tokens.device)


def residual_decomposition(model: Any, prompts: Sequence[str] = DECOMPOSITION_PROBES) -> list[DecompositionCheck]:
    """Measure, block by block, whether the residual stream is the sum of the graph's node outputs.

    The graph assumes that block ``L`` adds exactly its heads' results, an input-independent constant
    (the attention output bias ``b_O``) and its MLP output to the residual stream, that MLP ``L`` reads the
    stream after its own heads (before them when attention and MLP run in parallel), and that the next block
    and the unembedding read what the block wrote. A post-norm on a block's attention or MLP output
    (Gemma 2/3), or any other path outside the hooks, shows up as an input-dependent remainder.

    Returns:
        One :class:`DecompositionCheck` per block and place (``3 · n_layers`` rows).
    """
    shape = model_shape(model)
    names: list[str] = [LOGITS_INPUT_HOOK]
    for layer in range(shape.n_layers):
        names += [
            f"blocks.{layer}.hook_in",
            resid_post_hook(layer),
            head_result_hook(layer),
            mlp_out_hook(layer),
            mlp_in_hook(layer),
        ]
    tokens, lengths = _probe_tokens(model, prompts)
    real = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
    with torch.no_grad():  # one padded batch: attention is causal, so the real positions are exact
        cache = run_with_cache(model, tokens, names)[1]

    def remainder_spread(parts: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> float:
        rests = parts(cache)[real].double()
        return float((rests - rests[:1]).abs().max())

    def largest(name: str) -> float:
        return float(cache[name][real].abs().max())

    checks: list[DecompositionCheck] = []
    for layer in range(shape.n_layers):
        block_in, block_out = f"blocks.{layer}.hook_in", resid_post_hook(layer)
        heads, mlp, mlp_in = head_result_hook(layer), mlp_out_hook(layer), mlp_in_hook(layer)
        checks.append(
            DecompositionCheck(
                layer,
                "block output",
                remainder_spread(lambda c: c[block_out] - c[block_in] - c[heads].sum(2) - c[mlp]),
                largest(block_out),
            )
        )
        if shape.parallel_attn_mlp:
            reads = lambda c: c[mlp_in] - c[block_in]
        else:
            reads = lambda c: c[mlp_in] - c[block_in] - c[heads].sum(2)
        checks.append(DecompositionCheck(layer, "MLP input", remainder_spread(reads), largest(mlp_in)))
        following = f"blocks.{layer + 1}.hook_in" if layer + 1 < shape.n_layers else LOGITS_INPUT_HOOK
        checks.append(
            DecompositionCheck(
                layer, "next block input", remainder_spread(lambda c: c[following] - c[block_out]), largest(block_out)
            )
        )
    return checks


def check_residual_decomposition(model: Any, name: str = "this model") -> list[DecompositionCheck]:
    """Refuse a model whose blocks do not decompose into the graph's nodes (see :func:`residual_decomposition`).

    Returns:
        The checks, when every one is within :func:`decomposition_tolerance` of the model's dtype.

    Raises:
        DecompositionError: naming the first failing block, where it fails, the size of the mismatch, and
            why edges would be meaningless.
    """
    checks = residual_decomposition(model)
    tolerance = decomposition_tolerance(model_dtype(model))
    failing = [c for c in checks if c.relative > tolerance]
    if failing:
        first = failing[0]
        architecture = type(hf_model(model)).__name__
        raise DecompositionError(
            f"{name} ({architecture}) cannot be decomposed into the computation graph: at block {first.block}, "
            f"the {first.where} differs from the sum of its node outputs by {first.mismatch:.3g} on a scale of "
            f"{first.scale:.3g} (relative {first.relative:.2g}, tolerance {tolerance:.0e}); {len(failing)} of "
            f"{len(checks)} checks fail. The graph assumes each block adds exactly its head results, b_O and its "
            "MLP output to the residual stream; here something else (for example a norm applied to the attention "
            "or MLP output before it is added, as in Gemma 2 and 3) transforms them, so an edge's score or its "
            "ablation would not mean what it says. Use a model without such norms (GPT-2, Llama, Mistral, Qwen "
            "families), or load with check_decomposition=False only to inspect it, never to find circuits."
        )
    return checks


def edge_point_round_trip(model: Any, prompts: Sequence[str] = DECOMPOSITION_PROBES) -> dict[str, float]:
    """How far the model's logits move when every logical edge point is hooked with a copy of what it reads.

    A hook that returns a copy makes every route of :mod:`kc_utils.models.edge_points` compute its point and hand
    the result back (post-norm shares summed, per-head results summed with ``b_O``, q/k/v and MLP inputs through the
    block's norm and projections), so the logits match the unhooked model's only if each route reproduces what the
    model computes. Also compares the logits at each prompt's last position from :func:`logits_at` (the final norm,
    the unembedding and the family's logit transform on one position) with the full pass.

    Returns:
        ``{"routed hooks": relative max difference, "last position": relative max difference}``.
    """
    shape = model_shape(model)
    names = [LOGITS_INPUT_HOOK]
    for layer in range(shape.n_layers):
        names += [head_result_hook(layer), mlp_out_hook(layer), mlp_in_hook(layer)]
        names += [qkv_input_hook(layer, letter) for letter in "qkv"]
    tokens, lengths = _probe_tokens(model, prompts)
    last = lengths - 1
    order = torch.arange(len(tokens), device=tokens.device)
    with torch.no_grad():
        plain = model(tokens)
        copied = run_with_hooks(model, tokens, [(name, lambda act, hook: act.clone()) for name in names])
        at_last = logits_at(model, tokens, order, last)
    scale = float(plain.abs().max())
    return {
        "routed hooks": float((copied - plain).abs().max()) / max(scale, 1e-12),
        "last position": float((at_last - plain[order, last]).abs().max()) / max(scale, 1e-12),
    }


def check_edge_points(model: Any, name: str = "this model") -> dict[str, float]:
    """Refuse a model whose routed edge points or last-position logits do not reproduce its own forward pass.

    Raises:
        DecompositionError: naming the family, which check failed and by how much.
    """
    found = edge_point_round_trip(model)
    tolerance = decomposition_tolerance(model_dtype(model))
    failing = {what: value for what, value in found.items() if value > tolerance}
    if failing:
        what, value = next(iter(failing.items()))
        raise DecompositionError(
            f"{name} ({model_family(model)}): with every edge point hooked, the {what} logits differ from the "
            f"model's own by {value:.2g} relative (tolerance {tolerance:.0e}): the edge hooks of this family do not "
            "reproduce its forward pass, so edges would not mean what they say. Use a family listed as exact in the "
            "family matrix (docs/families.md), or load with check_decomposition=False only to inspect the model."
        )
    return found
