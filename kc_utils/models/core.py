"""The vocabulary the rest of the package talks to a model in: hook names, hooked runs, tokens.

Every hook name here is *logical*: :func:`hooks` hands it to the model's edge points
(:mod:`kc_utils.models.edge_points`), which route it to the bridge's own hook points, or, for a family whose
bridge lacks a split or places a norm on a node's output, compute it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from kc_utils.models.edge_points import route
from kc_utils.shape import ModelShape

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def model_shape(model: Any) -> ModelShape:
    """Read the :class:`~kc_utils.shape.ModelShape` of a booted ``TransformerBridge``."""
    return ModelShape.from_config(model.cfg)


def model_device(model: Any) -> torch.device:
    """The device the model's weights live on (never assumed to be CUDA)."""
    return next(model.parameters()).device


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of the model's weights."""
    return next(model.parameters()).dtype


def model_family(model: Any) -> str:
    """The checkpoint's ``model_type`` (``"gpt2"``, ``"gemma3_text"`` …): the family a booted model belongs to."""
    return str(getattr(hf_model(model).config, "model_type", type(hf_model(model)).__name__))


def hf_model(model: Any) -> torch.nn.Module:
    """The Hugging Face model wrapped by a ``TransformerBridge`` (it shares every parameter with the bridge)."""
    return model.original_model


# ----------------------------------------------------------------------------- hook names
INPUT_HOOK = "blocks.0.hook_in"
LOGITS_INPUT_HOOK = "ln_final.hook_in"


def head_result_hook(layer: int) -> str:
    """Hook holding every head's output of ``layer``: ``[b, p, h, d]``."""
    return f"blocks.{layer}.attn.hook_result"


def mlp_out_hook(layer: int) -> str:
    """Hook holding MLP ``layer``'s output: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_mlp_out"


def qkv_input_hook(layer: int, letter: str) -> str:
    """Hook holding the residual stream read by the ``letter`` (q, k or v) inputs of ``layer``."""
    if letter not in ("q", "k", "v"):
        raise ValueError(f"letter must be 'q', 'k' or 'v', got {letter!r}")
    return f"blocks.{layer}.hook_{letter}_input"


def mlp_in_hook(layer: int) -> str:
    """Hook holding the residual stream read by MLP ``layer``: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_mlp_in"


def resid_post_hook(layer: int) -> str:
    """Residual stream after block ``layer``: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_out"


def attn_pattern_hook(layer: int) -> str:
    """Attention pattern of ``layer``: ``[b, h, query_pos, key_pos]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def final_norm_scale_hook() -> str:
    """Divisor of the final norm (LayerNorm std or RMS, eps included): ``[b, p, 1]``.

    Replacing it with a fixed value makes ``unembed`` an affine map of the residual stream.
    """
    return "ln_final.hook_scale"


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def hooks(
    model: Any,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    bwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[Any]:
    """Context manager that attaches forward/backward hooks and removes them on exit.

    A forward hook receives ``(activation, hook)`` and may return a replacement activation. Logical edge points
    that a family's bridge does not serve itself (post-norm head shares, per-head results or q/k/v inputs it does
    not split, the MLP input of a one-norm parallel block) are routed by :func:`kc_utils.models.edge_points.route`.
    """
    with model.hooks(fwd_hooks=route(model, fwd_hooks), bwd_hooks=list(bwd_hooks)):
        yield model


def run_with_hooks(model: Any, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Forward pass with hooks; returns logits ``[b, p, vocab]``."""
    with hooks(model, fwd_hooks):
        return model(tokens)


def run_with_cache(
    model: Any, tokens: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass that records the activations at ``names``; returns ``(logits, cache)``."""
    cache: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> HookFn:
        def record(activation: torch.Tensor, hook: Any) -> None:
            cache[name] = activation.detach()

        return record

    logits = run_with_hooks(model, tokens, [(n, recorder(n)) for n in dict.fromkeys(names)])
    return logits, cache


class _AllRecorded(Exception):
    """Raised by :func:`cache_activations` once every requested activation is recorded, to end the pass there."""


def cache_activations(
    model: Any, tokens: torch.Tensor, names: Sequence[str], fwd_hooks: Sequence[tuple[str, HookFn]] = ()
) -> dict[str, torch.Tensor]:
    """The activations at ``names`` (detached) of a forward pass over ``tokens`` ``[b, p]``, and nothing more.

    Unlike :func:`run_with_cache`, the pass ends as soon as the last of ``names`` is recorded: the layers after it
    and the ``b·p·vocab`` unembedding (on Gemma-3's 262,144-word vocabulary, more arithmetic per position than the
    rest of the model) are never computed. The cache equals :func:`run_with_cache`'s (tested). ``fwd_hooks`` run
    before the recording at their points.

    Example:
        >>> cache = cache_activations(model, tokens, [mlp_out_hook(0)])  # doctest: +SKIP
        >>> cache[mlp_out_hook(0)].shape  # doctest: +SKIP
        torch.Size([2, 7, 64])
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    cache: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> HookFn:
        def record(activation: torch.Tensor, hook: Any) -> None:
            cache[name] = activation.detach()
            if len(cache) == len(wanted):
                raise _AllRecorded

        return record

    try:
        run_with_hooks(model, tokens, [*fwd_hooks, *((n, recorder(n)) for n in wanted)])
    except _AllRecorded:
        return cache
    missing = [n for n in wanted if n not in cache]
    raise RuntimeError(f"the forward pass never reached the hook point(s) {missing}")


def last_logits(
    model: Any, tokens: torch.Tensor, last: torch.Tensor | Sequence[int], fwd_hooks: Sequence[tuple[str, HookFn]] = ()
) -> torch.Tensor:
    """Logits ``[b, vocab]`` at one position per row of ``tokens`` ``[b, p]`` (``last[i]`` in row ``i``).

    The same as ``model(tokens)[arange(b), last]`` with only those ``b`` positions unembedded (see
    :func:`logits_at`).

    Example:
        >>> last_logits(model, tokens, [6, 4]).shape  # doctest: +SKIP
        torch.Size([2, 49152])
    """
    device = tokens.device
    positions = torch.as_tensor(last, device=device, dtype=torch.long).reshape(-1)
    return logits_at(model, tokens, torch.arange(len(tokens), device=device), positions, fwd_hooks)


def unembed(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding of a residual stream ``[..., d]`` → logits ``[..., vocab]``.

    The family's own transform of the logits comes last, as in the model's forward pass: Gemma 2's final softcap,
    Cohere's logit scale, Granite's logit scaling (the logits node holds them; ``model(tokens)`` applies them, and a
    lens or a last-position pass must too — tested on each family against the full pass).
    """
    logits = model.unembed(model.ln_final(resid))
    transform = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    return transform(logits) if callable(transform) else logits


class _FinalResidual(Exception):
    """Raised by :func:`logits_at`'s hook to stop a forward pass at the final norm's input."""

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__("final residual reached")
        self.resid = resid


def logits_at(
    model: Any,
    tokens: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> torch.Tensor:
    """Logits ``[k, vocab]`` at the ``k`` pairs ``(rows[i], positions[i])`` of ``tokens`` ``[b, p]`` only.

    The forward pass stops at the final norm's input and unembeds the chosen positions alone: the same logits as
    ``model(tokens)[rows, positions]`` (tested) without the ``b·p·vocab`` unembedding and its backward, which on a
    small model with a large vocabulary is a fifth of a pass's arithmetic (SmolLM2-135M: 49,152 × 576 per
    position; measured: about 10% of a circuit evaluation's time). Gradients flow as through a full pass.
    """

    def stop(resid: torch.Tensor, hook: Any) -> None:
        raise _FinalResidual(resid)

    try:
        # the stop runs after every hook of the same point (hooks run in the order given): a correction of the
        # final norm's input, as a masked run makes, is in what it unembeds
        with hooks(model, [*fwd_hooks, (LOGITS_INPUT_HOOK, stop)]):
            model(tokens)
    except _FinalResidual as reached:
        return unembed(model, reached.resid[rows, positions])
    raise RuntimeError(f"the forward pass never reached the final norm's input (hook {LOGITS_INPUT_HOOK})")


#: Attribute of a booted model that records whether prompts start with BOS (set by :func:`load_model`).
PREPEND_BOS_ATTRIBUTE = "kc_prepend_bos"

#: Attribute of a booted model that records the checkpoint it was booted from (set by :func:`load_model`).
SOURCE_ATTRIBUTE = "kc_source"


def model_source(model: Any) -> str | None:
    """The checkpoint folder or hub id a model was booted from by :func:`load_model` (``None``: unknown)."""
    return getattr(model, SOURCE_ATTRIBUTE, None)


def bos_token_id(model: Any) -> int | None:
    """The token every prompt starts with, or ``None`` when this model's prompts have no BOS.

    One explicit choice per model, made at load (:func:`load_model`): a shipped GGUF model says it in its
    :class:`~kc_utils.gguf.PackagedModel` (measured on the relation files), a user's GGUF file by its own
    ``tokenizer.ggml.add_bos_token``; other checkpoints use their tokenizer's BOS when it has one.
    """
    tokenizer = model.tokenizer
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    if not getattr(model, PREPEND_BOS_ATTRIBUTE, True):
        return None
    return int(tokenizer.bos_token_id)


def tokenize(model: Any, texts: Sequence[str], prepend_bos: bool = True) -> list[list[int]]:
    """Token ids of each text, BOS prepended when the model uses one (:func:`bos_token_id`); no padding."""
    tokenizer = model.tokenizer
    bos = bos_token_id(model) if prepend_bos else None
    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append(ids if bos is None else [bos, *ids])
    return out


def continuation_first_token(model: Any, prompt: str, continuation: str) -> int | None:
    """The first token the model must produce after ``prompt`` to continue with ``continuation``.

    ``continuation`` is appended after one space (``prompt + " " + continuation``) and the first
    token past the prompt's own tokens is returned; ``None`` when the tokenizer cannot represent
    it (an unknown word of a word-level vocabulary) or merges it into the prompt's last token.
    """
    tokenizer = model.tokenizer
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + " " + continuation, add_special_tokens=False)["input_ids"]
    if len(full_ids) <= len(prompt_ids) or full_ids[: len(prompt_ids)] != prompt_ids:
        return None
    token = full_ids[len(prompt_ids)]
    if tokenizer.unk_token_id is not None and token == tokenizer.unk_token_id:
        return None
    return int(token)


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Readable string of each token id."""
    return [model.tokenizer.decode([int(i)]) for i in ids]
