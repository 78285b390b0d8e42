"""Reading the residual stream through the unembedding: logit lens, vocabulary projections, DLA.

Yao et al. (2024, §4) read a knowledge circuit component by component. This module gives the
three readings that need only the unembedding:

1. **Logit lens** (:func:`logit_lens`): the residual stream after every block (and the embedding
   output, ``layer = -1``, stage ``"input"``) goes through the model's own final norm and
   unembedding (:func:`kc_utils.models.unembed`, the norm's scale recomputed for each vector, as
   the model would). For each prompt and layer: the target's rank (0 = top-1) and probability at
   the last position, and its best rank (and best probability) over the subject's positions.
2. **Direct logit attribution** (:func:`component_logits`, :func:`direct_logit_attribution`):
   the final residual at the last position is the sum of the node outputs — ``input``, every
   head ``a{l}.h{h}`` (``hook_result``), every MLP ``m{l}`` — plus the attention output biases
   (``attn_bias``; ``hook_result`` excludes them). With the final norm's scale **frozen** at the
   clean run's value ``s``, norm + unembedding is affine::

       logits = Σ_components (x_c / s) · M  +  unembed_bias

   where ``M`` is the linear part (centring for LayerNorm, the norm's weight, ``W_U``) and
   ``unembed_bias`` the logits of a zero residual (norm bias through ``W_U`` plus ``b_U``). Each
   component's contribution ``(x_c / s) · M`` to a token's logit is its direct logit attribution;
   the contributions plus ``unembed_bias`` add up to the model's logit exactly (tested).
3. **Vocabulary projection of one node** (:func:`project_node`): the same frozen-scale map applied
   to one head's or MLP's output — its top-k tokens and the target's contribution and rank. The
   scale is the clean run's, so the projection is the node's share of the final logits (not the
   node's output normalised on its own, which would ignore how much of the residual it is).

Subjects: :func:`subject_positions` finds the token positions of a subject inside a prompt with
the tokenizer's character offsets (positions count the prepended BOS, as in
:func:`kc_utils.data.prompts.make_batch`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kc_utils import models
from kc_utils.circuits import nodes
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "ResidualDecomposition",
    "component_logits",
    "decompose_residual",
    "decompose_residual_with_cache",
    "direct_logit_attribution",
    "final_norm_scale",
    "first_rank_layers",
    "logit_lens",
    "node_names",
    "parse_node",
    "project_node",
    "project_to_vocab",
    "residual_by_layer",
    "subject_mask",
    "subject_positions",
    "summarise_first_rank_layers",
    "unembedding_directions",
]

_CONSTANTS = ("attn_bias", "unembed_bias")


# ----------------------------------------------------------------------------- subjects
def _char_span(prompt: str, subject: str) -> tuple[int, int]:
    if not subject.strip():
        raise ValueError(f"empty subject for prompt {prompt!r}")
    # prefer a whole-word match ("France" not inside "Frances"), else any substring match
    match = re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", prompt)
    start = match.start() if match else prompt.find(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} not in prompt {prompt!r}")
    return start, start + len(subject)


def subject_positions(model: Any, prompt: str, subject: str, prepend_bos: bool = True) -> list[int]:
    """Token positions of ``subject`` inside the tokenized ``prompt``.

    The subject's character span (its first whole-word occurrence, else its first occurrence as a
    substring) is mapped to every token whose character offsets overlap it, so a multi-token
    subject ("New Zealand") gives several positions, and a subject glued to a neighbouring piece
    gives that whole token. Tokenizers without offsets fall back to tokenizing the prefixes
    ``prompt[:start]`` and ``prompt[:end]``.

    Args:
        prompt: the prompt, e.g. ``"The capital of New Zealand is"``.
        subject: the subject as written in the prompt, e.g. ``"New Zealand"``.
        prepend_bos: count a prepended BOS (as :func:`kc_utils.models.tokenize` does when the
            tokenizer has one), so positions index ``PromptBatch.clean``.

    Returns:
        Sorted positions, e.g. ``[4, 5]`` for ``"<bos> The capital of New Zealand is"``.

    Raises:
        ValueError: ``"subject X not in prompt Y"``, or an empty subject.
    """
    start, end = _char_span(prompt, subject)
    tokenizer = model.tokenizer
    shift = 1 if prepend_bos and models.bos_token_id(model) is not None else 0
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        found = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < end and b > start]
    else:
        n_before = len(tokenizer(prompt[:start], add_special_tokens=False)["input_ids"])
        n_through = len(tokenizer(prompt[:end], add_special_tokens=False)["input_ids"])
        found = list(range(n_before, n_through))
    if not found:
        raise ValueError(f"subject {subject!r} of prompt {prompt!r} covers no token of this tokenizer")
    return [i + shift for i in found]


def subject_mask(model: Any, batch: PromptBatch, subjects: Sequence[str]) -> Bool[Tensor, "b p"]:
    """True at each prompt's subject positions (:func:`subject_positions`), on the batch's device.

    Raises:
        ValueError: not one subject per prompt, or a subject absent from its prompt.
    """
    if len(subjects) != len(batch):
        raise ValueError(f"{len(batch)} prompts but {len(subjects)} subjects; give one subject per prompt")
    bos = models.bos_token_id(model)
    has_bos = bos is not None and bool((batch.clean[:, 0] == bos).all())
    mask = torch.zeros(batch.clean.shape, dtype=torch.bool, device=batch.clean.device)
    for i, (prompt, subject) in enumerate(zip(batch.prompts, subjects)):
        positions = subject_positions(model, prompt, subject, prepend_bos=has_bos)
        if max(positions) > int(batch.last_pos[i]):
            raise ValueError(f"subject positions {positions} of {subject!r} lie past the end of prompt {prompt!r}")
        mask[i, positions] = True
    return mask


# ----------------------------------------------------------------------------- logit lens
def _check_targets(batch: PromptBatch, targets: Tensor | None) -> Int[Tensor, "b"]:
    if targets is None:
        return batch.answer
    targets = torch.as_tensor(targets, dtype=torch.long, device=batch.clean.device)
    if targets.shape != (len(batch),):
        raise ValueError(
            f"targets must hold one token id per prompt, shape ({len(batch)},); got {tuple(targets.shape)}"
        )
    if bool((targets < 0).any()):
        raise ValueError("targets contain a negative token id (an unknown corrupt answer?)")
    return targets


def residual_by_layer(model: Any, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "layer b p d"]:
    """The residual stream before block 0 (index 0: embeddings) and after every block (1 … L).

    The pass runs without the per-head tensors of edge patching (:func:`kc_utils.models.without_edge_hooks`): the
    residual stream does not depend on them (tested on every exact family), and on SmolLM2-135M they cost most of a
    lens pass.

    Example:
        >>> residual_by_layer(model, tokens).shape  # doctest: +SKIP
        torch.Size([31, 2, 7, 576])
    """
    n_layers = models.model_shape(model).n_layers
    names = [models.INPUT_HOOK] + [models.resid_post_hook(layer) for layer in range(n_layers)]
    with torch.no_grad(), models.without_edge_hooks(model):
        cache = models.cache_activations(model, tokens, names)
    return torch.stack([cache[n] for n in names])


def logit_lens(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str] | None = None,
    targets: Int[Tensor, "b"] | None = None,
    residuals: Float[Tensor, "layer b p d"] | None = None,
) -> pd.DataFrame:
    """Logit lens: the target's rank and probability after every block.

    Args:
        batch: prompts (right-padded; read at ``batch.last_pos``).
        subjects: one subject per prompt; adds the best rank over the subject's positions.
        targets: ``Int[b]`` token per prompt (default: ``batch.answer``).
        residuals: :func:`residual_by_layer` of ``batch.clean``, when the caller has it already (its last layer
            also gives the model's own last-position logits: ``unembed(model, residuals[-1][rows, last_pos])``).

    Returns:
        A tidy frame, one row per prompt × layer, with columns ``prompt_index``, ``prompt``,
        ``target`` (token string), ``layer`` (``-1`` = embeddings, then ``0 … L-1`` = after that
        block), ``stage`` (``"input"``, ``"block 0"`` …), ``rank`` and ``prob`` of the target at the
        last position (rank 0 = top-1), and ``subject_rank`` (best = lowest rank over the subject
        positions) and ``subject_prob`` (highest probability there), NaN without ``subjects``.
        The last layer's ``rank``/``prob`` are the model's own.
    """
    targets = _check_targets(batch, targets)
    mask = subject_mask(model, batch, subjects) if subjects is not None else None
    stack = residual_by_layer(model, batch.clean) if residuals is None else residuals
    if stack.shape[1:3] != batch.clean.shape:
        raise ValueError(
            f"residuals of shape {tuple(stack.shape)} do not fit this batch of shape {tuple(batch.clean.shape)}: "
            "pass residual_by_layer(model, batch.clean), or leave residuals out"
        )
    rows = torch.arange(len(batch), device=batch.clean.device)
    target_strings = models.token_strings(model, targets.tolist())
    records: list[dict[str, Any]] = []
    # only the positions read (the last one, and the subject's) are unembedded: on a 49k-word vocabulary
    # the unembedding is most of the cost, and a prompt has several other positions
    read = torch.zeros(stack.shape[1:3], dtype=torch.bool, device=stack.device)  # [b, p]
    read[rows, batch.last_pos] = True
    if mask is not None:
        read |= mask
    at_prompt, at_position = read.nonzero(as_tuple=True)
    with torch.no_grad():
        for index in range(stack.shape[0]):
            logits = models.unembed(model, stack[index][at_prompt, at_position]).float()  # [n_read, v]
            wanted = targets[at_prompt]
            ranks = torch.zeros(read.shape, dtype=torch.long, device=read.device)  # [b, p]; unread positions masked
            probs = torch.zeros(read.shape, dtype=torch.float, device=read.device)
            ranks[at_prompt, at_position] = rank_of(logits, wanted)
            probs[at_prompt, at_position] = logits.softmax(-1).gather(-1, wanted[:, None])[:, 0]
            last_rank = ranks[rows, batch.last_pos]
            last_prob = probs[rows, batch.last_pos]
            if mask is not None:
                big = torch.iinfo(ranks.dtype).max
                subj_rank = ranks.masked_fill(~mask, big).min(-1).values
                subj_prob = probs.masked_fill(~mask, -1.0).max(-1).values
            for i in range(len(batch)):
                records.append(
                    {
                        "prompt_index": i,
                        "prompt": batch.prompts[i],
                        "target": target_strings[i],
                        "layer": index - 1,
                        "stage": "input" if index == 0 else f"block {index - 1}",
                        "rank": int(last_rank[i]),
                        "prob": float(last_prob[i]),
                        "subject_rank": float(subj_rank[i]) if mask is not None else float("nan"),
                        "subject_prob": float(subj_prob[i]) if mask is not None else float("nan"),
                    }
                )
    return pd.DataFrame.from_records(records).sort_values(["prompt_index", "layer"], ignore_index=True)


def first_rank_layers(table: pd.DataFrame, max_rank: int = 0) -> pd.DataFrame:
    """Per prompt: the first layer at which the target reaches rank ``max_rank`` or better.

    Read from a :func:`logit_lens` table, at the last position (``rank``) and at the best subject
    position (``subject_rank``). Layers are the table's (``-1`` = embeddings, then ``0 … L-1``).
    "First" means the first layer at or below ``max_rank``, even if the rank rises again later.

    Args:
        table: a :func:`logit_lens` frame (one row per prompt × layer).
        max_rank: the rank to reach (0 = top-1; the paper's "rank 1" in 1-based counting).

    Returns:
        One row per prompt: ``prompt_index``, ``prompt``, ``last_layer`` and ``subject_layer``
        (the first layer reaching ``max_rank``; NaN if never, or if the table has no subject
        ranks), ``subject_earlier`` (the subject reaches it at a strictly earlier layer; a
        prompt whose last position never does but whose subject does counts as earlier) and
        ``gap`` (``last_layer − subject_layer``, NaN unless both are reached).

    Raises:
        ValueError: a table without the logit-lens columns, or a negative ``max_rank``.
    """
    needed = {"prompt_index", "layer", "rank", "subject_rank"}
    if not needed <= set(table.columns):
        raise ValueError(f"not a logit_lens table: it lacks columns {sorted(needed - set(table.columns))}")
    if max_rank < 0:
        raise ValueError(f"max_rank must be 0 (top-1) or more, got {max_rank}")
    records = []
    for index, rows in table.sort_values(["prompt_index", "layer"]).groupby("prompt_index", sort=True):
        last = rows.loc[rows["rank"] <= max_rank, "layer"]
        subject = rows.loc[rows["subject_rank"] <= max_rank, "layer"]  # NaN compares False
        last_layer = float(last.iloc[0]) if len(last) else float("nan")
        subject_layer = float(subject.iloc[0]) if len(subject) else float("nan")
        both = len(last) > 0 and len(subject) > 0
        records.append(
            {
                "prompt_index": index,
                "prompt": rows["prompt"].iloc[0] if "prompt" in rows else None,
                "last_layer": last_layer,
                "subject_layer": subject_layer,
                "subject_earlier": bool(len(subject) and (not len(last) or subject_layer < last_layer)),
                "gap": last_layer - subject_layer if both else float("nan"),
            }
        )
    return pd.DataFrame.from_records(records)


def summarise_first_rank_layers(first: pd.DataFrame) -> dict[str, float]:
    """Median and spread of :func:`first_rank_layers` over prompts.

    Returns:
        ``n_prompts``; for ``last`` and ``subject``: ``{pos}_reached`` (share of prompts that
        reach the rank at all), ``{pos}_median``, ``{pos}_q25``, ``{pos}_q75``, ``{pos}_min``,
        ``{pos}_max`` (over the prompts that reach it; NaN if none); ``subject_earlier`` (share of
        prompts where the subject reaches it strictly earlier), ``same_layer`` (share where both
        reach it at the same layer) and ``median_gap`` (median of ``last − subject`` layers).
    """
    if first.empty:
        raise ValueError("no prompts to summarise")
    out: dict[str, float] = {"n_prompts": float(len(first))}
    for pos in ("last", "subject"):
        layers = first[f"{pos}_layer"].dropna()
        out[f"{pos}_reached"] = float(len(layers) / len(first))
        for stat, value in (
            ("median", layers.median()),
            ("q25", layers.quantile(0.25)),
            ("q75", layers.quantile(0.75)),
            ("min", layers.min()),
            ("max", layers.max()),
        ):
            out[f"{pos}_{stat}"] = float(value) if len(layers) else float("nan")
    out["subject_earlier"] = float(first["subject_earlier"].mean())
    out["same_layer"] = float((first["last_layer"] == first["subject_layer"]).mean())
    out["median_gap"] = float(first["gap"].median()) if first["gap"].notna().any() else float("nan")
    return out


# ----------------------------------------------------------------------------- frozen-scale unembedding
def final_norm_scale(model: Any, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p"]:
    """The final norm's divisor on a clean run (LayerNorm std or RMS, eps included)."""
    with torch.no_grad(), models.without_edge_hooks(model):
        cache = models.cache_activations(model, tokens, [models.final_norm_scale_hook()])
    return cache[models.final_norm_scale_hook()][..., 0]


def _unembed_scale_one(model: Any, resid: Float[Tensor, "n d"]) -> Float[Tensor, "n v"]:
    """Final norm with its divisor frozen at 1, then the unembedding: an affine map."""

    def ones(scale: Tensor, hook: Any) -> Tensor:
        return torch.ones_like(scale)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*edited hook_scale.*")
        with models.hooks(model, [(models.final_norm_scale_hook(), ones)]):
            return models.unembed(model, resid[None])[0]


def _unembed_bias(model: Any) -> Float[Tensor, "v"]:
    d_model = models.model_shape(model).d_model
    zero = torch.zeros(1, d_model, device=models.model_device(model), dtype=models.model_dtype(model))
    return _unembed_scale_one(model, zero)[0]


def project_to_vocab(
    model: Any, vectors: Float[Tensor, "... d"], scale: Float[Tensor, ...]
) -> Float[Tensor, "... vocab"]:
    """Direct contribution of residual-stream vectors to the logits, the norm's scale frozen.

    ``(vectors / scale) · M`` where ``M`` is the linear part of final norm + unembedding; biases
    are left out, so contributions of all components add up to ``logits − unembed_bias``.

    Args:
        vectors: ``[..., d]`` node outputs (e.g. a head's ``hook_result`` at one position).
        scale: ``[...]`` the clean run's final-norm divisor at the same positions
            (:func:`final_norm_scale`), broadcastable to ``vectors.shape[:-1]``.
    """
    d_model = vectors.shape[-1]
    scale = torch.as_tensor(scale, device=vectors.device, dtype=vectors.dtype)
    flat = (vectors / scale[..., None]).reshape(-1, d_model)
    out = _unembed_scale_one(model, flat) - _unembed_bias(model)[None]
    return out.reshape(*vectors.shape[:-1], -1)


def unembedding_directions(model: Any, tokens: Int[Tensor, "t"], chunk: int = 256) -> Float[Tensor, "d t"]:
    """Columns of the linear part ``M`` of final norm (scale 1) + unembedding, for ``tokens``.

    A residual vector ``x`` at a position whose clean divisor is ``s`` contributes
    ``(x / s) @ M[:, t]`` to token ``t``'s logit. Built from the unembedding of the identity, in
    chunks of ``chunk`` rows, so memory stays ``chunk × vocab``.
    """
    d_model = models.model_shape(model).d_model
    device, dtype = models.model_device(model), models.model_dtype(model)
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
    bias = _unembed_bias(model)
    columns = []
    for start in range(0, d_model, chunk):
        eye = torch.eye(d_model, device=device, dtype=dtype)[start : start + chunk]
        columns.append((_unembed_scale_one(model, eye) - bias[None])[:, tokens])
    return torch.cat(columns)


# ----------------------------------------------------------------------------- node outputs
def node_names(model: Any) -> list[str]:
    """Upstream node names in graph order: ``input, a0.h0 … a0.h{H-1}, m0, a1.h0 …``."""
    return nodes.upstream_node_names(models.model_shape(model))


def parse_node(model: Any, name: str) -> tuple[str, int | None, int | None]:
    """``"a3.h5"`` → ``("head", 3, 5)``, ``"m2"`` → ``("mlp", 2, None)``, ``"input"`` → ``("input", None, None)``.

    Raises:
        ValueError: (:class:`~kc_utils.circuits.nodes.NodeNameError`) not an upstream node name of
            the form ``input``/``a{l}.h{h}``/``m{l}``, or out of range for ``model``.
    """
    parsed = nodes.parse_node(name, models.model_shape(model))
    if parsed.kind not in ("input", "head", "mlp") or parsed.letter is not None:
        raise nodes.NodeNameError(
            f"{name!r} is not an upstream node; use 'input', 'a{{layer}}.h{{head}}' or 'm{{layer}}'"
        )
    return parsed.kind, parsed.layer, parsed.index


@dataclass(frozen=True)
class ResidualDecomposition:
    """The final residual stream at one position per prompt, split into node outputs.

    ``outputs.sum(0) + attn_bias == final residual`` (up to float rounding).

    Attributes:
        names: ``[n]`` node names (:func:`node_names` order).
        outputs: ``Float[n, b, d]`` each node's output at the read position.
        attn_bias: ``Float[b, d]`` the rest of the residual: the attention output biases ``b_O``
            summed over layers (zero for bias-free models).
        scale: ``Float[b]`` the clean run's final-norm divisor at the read position.
        positions: ``Int[b]`` the read position of each prompt.
        logits: ``Float[b, vocab]`` the model's logits there.
    """

    names: tuple[str, ...]
    outputs: Float[Tensor, "n b d"]
    attn_bias: Float[Tensor, "b d"]
    scale: Float[Tensor, "b"]
    positions: Int[Tensor, "b"]
    logits: Float[Tensor, "b v"]

    def index(self, name: str) -> int:
        """Row of ``name`` in ``outputs``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"{name!r} is not a node of this model ({self.names[0]}, {self.names[1]}, …)") from None


def _positions(batch: PromptBatch, positions: Tensor | int | None) -> Int[Tensor, "b"]:
    if positions is None:
        return batch.last_pos
    positions = torch.as_tensor(positions, dtype=torch.long, device=batch.clean.device)
    if positions.ndim == 0:
        positions = positions.expand(len(batch))
    if positions.shape != (len(batch),):
        raise ValueError(
            f"positions must be an int or one position per prompt ({len(batch)}); got shape {tuple(positions.shape)}"
        )
    if bool((positions < 0).any()) or bool((positions > batch.last_pos).any()):
        raise ValueError("positions must lie inside each prompt (0 … last_pos)")
    return positions


def decompose_residual(
    model: Any, batch: PromptBatch, positions: Int[Tensor, "b"] | int | None = None
) -> ResidualDecomposition:
    """Split the final residual stream at ``positions`` (default: last tokens) into node outputs."""
    return decompose_residual_with_cache(model, batch, positions)[0]


def decompose_residual_with_cache(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"] | int | None = None,
    extra_hooks: Sequence[str] = (),
) -> tuple[ResidualDecomposition, dict[str, Tensor]]:
    """:func:`decompose_residual`, also recording the activations ``extra_hooks`` (same forward)."""
    positions = _positions(batch, positions)
    n_layers = models.model_shape(model).n_layers
    names = [models.INPUT_HOOK, models.LOGITS_INPUT_HOOK, models.final_norm_scale_hook()]
    for layer in range(n_layers):
        names += [models.head_result_hook(layer), models.mlp_out_hook(layer)]
    with torch.no_grad(), models.only_head_results(model):  # head outputs, never an edge's split input
        cache = models.cache_activations(model, batch.clean, [*names, *extra_hooks])
    rows = torch.arange(len(batch), device=batch.clean.device)
    parts = [cache[models.INPUT_HOOK][rows, positions][None]]
    for layer in range(n_layers):
        parts.append(cache[models.head_result_hook(layer)][rows, positions].permute(1, 0, 2))
        parts.append(cache[models.mlp_out_hook(layer)][rows, positions][None])
    outputs = torch.cat(parts)
    final = cache[models.LOGITS_INPUT_HOOK][rows, positions]
    decomposition = ResidualDecomposition(
        names=tuple(node_names(model)),
        outputs=outputs,
        attn_bias=final - outputs.sum(0),
        scale=cache[models.final_norm_scale_hook()][rows, positions, 0],
        positions=positions,
        logits=models.unembed(model, cache[models.LOGITS_INPUT_HOOK][rows, positions]).detach(),
    )
    return decomposition, {name: cache[name] for name in extra_hooks}


# ----------------------------------------------------------------------------- attribution
def component_logits(
    model: Any,
    batch: PromptBatch,
    targets: Int[Tensor, "b"] | None = None,
    decomposition: ResidualDecomposition | None = None,
) -> tuple[list[str], Float[Tensor, "component b"]]:
    """Direct logit attribution of every component to each prompt's target at the last position.

    Components: the nodes (:func:`node_names`), then ``attn_bias`` and ``unembed_bias``; their
    sum over components is the model's logit of the target (the final norm's scale frozen at the
    clean run's value).

    Args:
        targets: ``Int[b]`` token per prompt (default ``batch.answer``).
        decomposition: a precomputed :func:`decompose_residual` of the batch (saves a forward).

    Returns:
        ``(names, contributions)`` with ``contributions[c, i]`` = component ``c``'s direct
        contribution to prompt ``i``'s target logit.
    """
    targets = _check_targets(batch, targets)
    dec = decomposition if decomposition is not None else decompose_residual(model, batch)
    unique, inverse = torch.unique(targets, return_inverse=True)
    directions = unembedding_directions(model, unique)[:, inverse]  # [d, b]
    scaled = torch.cat([dec.outputs, dec.attn_bias[None]]) / dec.scale[None, :, None]
    contributions = torch.einsum("nbd,db->nb", scaled.to(directions.dtype), directions)
    constant = _unembed_bias(model)[targets][None]
    return [*dec.names, *_CONSTANTS], torch.cat([contributions, constant]).float()


def _component_columns(model: Any, name: str) -> dict[str, Any]:
    if name in _CONSTANTS:
        return {"kind": "constant", "layer": None, "head": None}
    kind, layer, head = parse_node(model, name)
    return {"kind": kind, "layer": layer, "head": head}


def direct_logit_attribution(model: Any, batch: PromptBatch, against_corrupt: bool = False) -> pd.DataFrame:
    """Direct logit attribution of every component to the answer, as a tidy frame.

    Args:
        against_corrupt: also attribute the corrupt answer's logit and the logit difference
            (answer − corrupt answer); needs ``corrupt_answers`` in the batch.

    Returns:
        One row per prompt × component (``input``, ``a{l}.h{h}``, ``m{l}``, ``attn_bias``,
        ``unembed_bias``) with ``prompt_index``, ``component``, ``kind`` (input/head/mlp/constant),
        ``layer``, ``head``, ``logit`` (contribution to the answer's logit) and, with
        ``against_corrupt``, ``corrupt_logit`` and ``logit_diff``. Summed over components,
        ``logit`` is the model's answer logit.

    Raises:
        ValueError: ``against_corrupt`` on a batch without corrupt answers.
    """
    if against_corrupt and bool((batch.corrupt_answer < 0).any()):
        raise ValueError(
            "against_corrupt=True needs a corrupt answer for every prompt; build the batch with corrupt_answers"
        )
    dec = decompose_residual(model, batch)
    names, answer = component_logits(model, batch, batch.answer, dec)
    corrupt = component_logits(model, batch, batch.corrupt_answer, dec)[1] if against_corrupt else None
    meta = {name: _component_columns(model, name) for name in names}
    records = []
    for c, name in enumerate(names):
        for i in range(len(batch)):
            row = {"prompt_index": i, "component": name, **meta[name], "logit": float(answer[c, i])}
            if corrupt is not None:
                row["corrupt_logit"] = float(corrupt[c, i])
                row["logit_diff"] = float(answer[c, i] - corrupt[c, i])
            records.append(row)
    return pd.DataFrame.from_records(records)


def project_node(
    model: Any,
    batch: PromptBatch,
    node: str,
    k: int = 10,
    targets: Int[Tensor, "b"] | None = None,
    positions: Int[Tensor, "b"] | int | None = None,
) -> pd.DataFrame:
    """A node's output projected onto the vocabulary (frozen final-norm scale, biases left out).

    Args:
        node: ``"a{l}.h{h}"`` (its ``hook_result``), ``"m{l}"`` or ``"input"``.
        k: how many top tokens to list.
        targets: ``Int[b]`` token per prompt whose contribution and rank are reported
            (default ``batch.answer``).
        positions: where to read (default each prompt's last token).

    Returns:
        One row per prompt: ``prompt_index``, ``prompt``, ``node``, ``top_tokens`` (``k`` strings,
        highest contribution first), ``top_logits``, ``target``, ``target_logit`` (the node's direct
        contribution to the target's logit) and ``target_rank`` (0 = the node promotes the target
        most of all tokens).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    parse_node(model, node)
    targets = _check_targets(batch, targets)
    dec = decompose_residual(model, batch, positions)
    projected = project_to_vocab(model, dec.outputs[dec.index(node)], dec.scale).float()  # [b, v]
    top = projected.topk(min(k, projected.shape[-1]), dim=-1)
    ranks = rank_of(projected, targets)
    target_logits = projected.gather(-1, targets[:, None])[:, 0]
    target_strings = models.token_strings(model, targets.tolist())
    return pd.DataFrame.from_records(
        [
            {
                "prompt_index": i,
                "prompt": batch.prompts[i],
                "node": node,
                "top_tokens": models.token_strings(model, top.indices[i].tolist()),
                "top_logits": [round(float(v), 4) for v in top.values[i]],
                "target": target_strings[i],
                "target_logit": float(target_logits[i]),
                "target_rank": int(ranks[i]),
            }
            for i in range(len(batch))
        ]
    )
