"""Forward passes that resume at a block from a residual stream computed before, skipping the blocks below.

Many passes differ from one already run only from some block up: every step of ROME's value optimisation and of
FT-M changes nothing below the edited MLP, an edit's evaluation runs the unedited blocks below the edit, and a
knowledge neuron's integrated gradients scale one MLP. Each can record the residual stream entering block ``L``
once (:func:`resid_pre_hook`, from :func:`~kc_utils.models.core.cache_activations`) and run blocks ``L…`` alone:

    residual = cache_activations(model, tokens, [resid_pre_hook(layer)])[resid_pre_hook(layer)]
    logits = logits_from_layer(model, layer, residual, tokens, rows, positions, hooks)

TransformerLens 4's own ``start_at_layer`` still runs blocks ``0…L−1`` on the injected stream and discards what
they produce; here they are skipped (:func:`blocks_skipped`): each returns its input, in the form its family's
loop expects (a tensor, or a tuple whose other items are empty), and block ``L``'s input is replaced by the recorded
stream. The result equals the full pass with the same hooks (tested on every exact family), at the cost of the blocks
from ``L`` up.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from kc_utils.models.core import HookFn, cache_activations, logits_at
from kc_utils.models.weights import without_edge_hooks

__all__ = ["blocks_skipped", "logits_from_layer", "resid_pre_hook", "streams_entering"]

_BLOCK_OF_HOOK = re.compile(r"^blocks\.(\d+)\.")
#: attribute of a booted model caching how many items its blocks return (0: a tensor; found once, by a one-token pass)
_TUPLE_ATTRIBUTE = "kc_block_output_items"


def resid_pre_hook(layer: int) -> str:
    """Hook holding the residual stream entering block ``layer``: ``[b, p, d]`` (block 0: the embeddings)."""
    return f"blocks.{layer}.hook_in"


def streams_entering(model: Any, tokens: Int[Tensor, "b p"], layers: Sequence[int]) -> dict[int, Tensor]:
    """``{layer: the residual stream entering block layer}`` ``[b, p, d]`` of an unpatched pass over ``tokens``
    (one pass, ended after the highest layer; no gradient), for :func:`logits_from_layer`.

    Example:
        >>> entering = streams_entering(model, batch.clean, range(model.cfg.n_layers))  # doctest: +SKIP
    """
    names = {layer: resid_pre_hook(layer) for layer in dict.fromkeys(int(x) for x in layers)}
    if not names:
        return {}
    with torch.no_grad(), without_edge_hooks(model):
        cache = cache_activations(model, tokens, list(names.values()))
    return {layer: cache[name] for layer, name in names.items()}


def _block_output_items(model: Any) -> int:
    """How the family's blocks hand their output to its model's loop: 0 for a tensor, else the tuple's length
    (GPT-Neo's loop reads ``outputs[0]`` and, as the bridge runs it, ``outputs[1]``, the attention pattern)."""
    if not hasattr(model, _TUPLE_ATTRIBUTE):
        seen: list[int] = []
        handle = model.blocks[0].register_forward_hook(
            lambda m, i, out: seen.append(len(out) if isinstance(out, tuple) else 0)
        )
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                model(torch.zeros(1, 1, dtype=torch.long, device=device))
        finally:
            handle.remove()
        setattr(model, _TUPLE_ATTRIBUTE, seen[0] if seen else 0)
    return int(getattr(model, _TUPLE_ATTRIBUTE))


@contextlib.contextmanager
def blocks_skipped(model: Any, below: int) -> Iterator[None]:
    """Within the block, blocks ``0 … below−1`` return their input unchanged (no arithmetic, no hooks).

    Only meaningful with block ``below``'s input replaced (:func:`logits_from_layer` does both).

    Raises:
        ValueError: ``below`` outside ``0 … n_layers − 1``.
    """
    n_layers = len(model.blocks)
    if not 0 <= below < n_layers:
        raise ValueError(f"a pass can resume at blocks 0 … {n_layers - 1}, not {below}")
    items = _block_output_items(model) if below else 0
    skipped = list(model.blocks[:below])

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *([None] * (items - 1))) if items else hidden

    # the instance's own forward, set past the bridge's __setattr__ (which hands attributes to the wrapped module)
    for block in skipped:
        object.__setattr__(block, "forward", passthrough)
    try:
        yield
    finally:
        for block in skipped:
            block.__dict__.pop("forward", None)


def logits_from_layer(
    model: Any,
    layer: int,
    residual: Float[Tensor, "b p d"],
    tokens: Int[Tensor, "b p"],
    rows: Int[Tensor, " k"],
    positions: Int[Tensor, " k"],
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Float[Tensor, "k vocab"]:
    """:func:`~kc_utils.models.core.logits_at` resumed at block ``layer`` from ``residual``.

    Args:
        residual: the stream entering block ``layer`` for these ``tokens`` (``cache[resid_pre_hook(layer)]``
            of the same rows and width); it carries no gradient into the blocks below, which do not run.
        tokens: the prompts (they set the positions, the masks and the batch's shape).
        fwd_hooks: hooks at block ``layer`` and above (a hook below never fires: refused).

    Returns:
        The logits at the ``k`` pairs ``(rows[i], positions[i])``, equal to ``logits_at(model, tokens, rows,
        positions, fwd_hooks)`` when ``residual`` is what the blocks below compute (tested on every exact family).

    Raises:
        ValueError: a hook below ``layer``, or a residual of another shape than ``tokens``' stream.

    Example:
        >>> name = resid_pre_hook(10)  # doctest: +SKIP
        >>> residual = cache_activations(model, tokens, [name])[name]  # doctest: +SKIP
        >>> logits_from_layer(model, 10, residual, tokens, rows, last).shape  # doctest: +SKIP
        torch.Size([2, 49152])
    """
    below = [name for name, _ in fwd_hooks if (m := _BLOCK_OF_HOOK.match(name)) and int(m.group(1)) < layer]
    if below:
        raise ValueError(f"the pass resumes at block {layer}, so hooks below it never fire: {below}")
    expected = (*tokens.shape, int(model.cfg.d_model))
    if tuple(residual.shape) != expected:
        raise ValueError(
            f"residual must be the stream entering block {layer}, shape {expected}, got {tuple(residual.shape)}"
        )

    def inject(stream: Tensor, hook: Any) -> Tensor:
        return residual.to(stream.device, stream.dtype)

    with blocks_skipped(model, layer):
        return logits_at(model, tokens, rows, positions, [(resid_pre_hook(layer), inject), *fwd_hooks])
