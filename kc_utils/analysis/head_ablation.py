"""Knock out one attention head at a time and see what the model says instead (Yao et al. 2024, §4.1).

A head ``a{l}.h{h}`` is ablated by a forward hook on ``blocks.{l}.attn.hook_result`` that
replaces that head's output at **every** position with

* ``"zero"``: zeros (the head writes nothing; the layer's output bias stays);
* ``"mean"``: its output averaged over every real (non-pad) token of the batch (or of
  ``mean_reference``), the same vector at every position.

:func:`head_ablation_effects` records, per head, the change in the answer's probability at the
last position and the tokens that **gain** the most probability. The paper's reading — ablating a
mover head raises other objects of the same relation (Italian/English/Spanish for a language),
ablating a relation head raises filler words — is made numeric by ``same_relation_share``: the
share of each prompt's top-``k`` gaining tokens that are first tokens of *other* objects of the
relation (the prompt's own answer excluded), averaged over prompts, beside ``chance_share``, the
share expected of ``k`` tokens drawn at random from the vocabulary.
:func:`ablation_by_role` averages the effects per head role (:mod:`kc_utils.analysis.heads`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.heads import resolve_heads
from kc_utils.analysis.lens import parse_node
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.nodes import head_name
from kc_utils.data.prompts import PromptBatch
from kc_utils.data.relations import Relation

__all__ = [
    "HEAD_ABLATIONS",
    "ablation_by_role",
    "head_ablation_effects",
    "head_mean_outputs",
    "heads_by_layer",
    "object_share",
    "relation_object_tokens",
    "run_with_head_writes",
    "run_with_heads_ablated",
]

#: Ways to ablate a head (a plain ``str`` in signatures so a wrong value gets the clear ValueError).
HEAD_ABLATIONS = ("mean", "zero")


def relation_object_tokens(model: Any, relation: Relation, template_index: int = 0) -> set[int]:
    """First tokens of the relation's objects, each read after its own prompt.

    Objects the tokenizer cannot represent (see :func:`kc_utils.models.continuation_first_token`)
    are skipped.
    """
    if not 0 <= template_index < len(relation.prompt_templates):
        raise ValueError(
            f"template_index {template_index} out of range: {relation.name!r} has "
            f"{len(relation.prompt_templates)} templates"
        )
    tokens = set()
    for prompt, answer in zip(relation.prompts(template_index), relation.answers()):
        token = models.continuation_first_token(model, prompt, answer)
        if token is not None:
            tokens.add(token)
    return tokens


def head_mean_outputs(model: Any, batch: PromptBatch, heads: Sequence[str]) -> dict[str, Float[Tensor, "d"]]:
    """Each head's output (``hook_result``) averaged over the batch's real tokens."""
    layers = sorted({int(parse_node(model, h)[1]) for h in heads})
    with torch.no_grad(), models.only_head_results(model):
        cache = models.cache_activations(model, batch.clean, [models.head_result_hook(layer) for layer in layers])
    mask = batch.padding_mask.to(models.model_dtype(model))
    means = {}
    for name in heads:
        _, layer, head = parse_node(model, name)
        result = cache[models.head_result_hook(int(layer))][:, :, int(head)]  # [b, p, d]
        means[name] = torch.einsum("bpd,bp->d", result, mask) / mask.sum()
    return means


def _check_ablation(ablation: str) -> None:
    if ablation not in HEAD_ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {HEAD_ABLATIONS}")


def run_with_heads_ablated(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    ablation: str = "mean",
    mean_reference: PromptBatch | None = None,
    means: dict[str, Tensor] | None = None,
    last_only: bool = False,
    entering: dict[int, Tensor] | None = None,
) -> Float[Tensor, "b p vocab"]:
    """Logits of the batch with ``heads`` ablated together (one head: ``["a3.h5"]``).

    Args:
        ablation: ``"mean"`` or ``"zero"`` (module docstring).
        mean_reference: prompts to average over for ``"mean"`` (default: ``batch``).
        means: precomputed :func:`head_mean_outputs` (saves a forward pass per call).
        last_only: unembed each prompt's last position alone: logits ``[b, 1, vocab]``, read with
            ``batch.at_last_position()``.
        entering: with ``last_only``, :func:`kc_utils.models.streams_entering` of ``batch.clean``: the pass
            resumes at the lowest ablated layer (the same logits).
    """
    _check_ablation(ablation)
    heads = resolve_heads(model, heads)
    if ablation == "mean" and means is None:
        means = head_mean_outputs(model, mean_reference if mean_reference is not None else batch, heads)

    def write(layer: int, head: int, result: Tensor) -> None:
        result[:, :, head] = 0.0 if ablation == "zero" else means[head_name(layer, head)].to(result.dtype)

    by_layer = heads_by_layer(model, heads) if heads else {}  # no heads: the plain model
    return run_with_head_writes(model, batch.clean, by_layer, write, batch.last_pos if last_only else None, entering)


def heads_by_layer(model: Any, heads: Sequence[str]) -> dict[int, list[int]]:
    """``{layer: [head index, …]}`` of a head set, checked against the model.

    Raises:
        ValueError: an empty set or a name that is not a head of the model.
    """
    names = resolve_heads(model, list(heads))
    if not names:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    by_layer: dict[int, list[int]] = {}
    for name in names:
        _, layer, head = parse_node(model, name)
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


def run_with_head_writes(
    model: Any,
    tokens: Int[Tensor, "b p"],
    by_layer: dict[int, list[int]],
    write: Callable[[int, int, Tensor], None],
    last_pos: Int[Tensor, " b"] | None = None,
    entering: dict[int, Tensor] | None = None,
) -> Float[Tensor, "b p v"]:
    """Logits of ``tokens`` where ``write(layer, head, result)`` rewrites chosen heads' outputs in place.

    ``result`` is a copy of the layer's per-head outputs ``[b, p, h, d]``; every head not listed in
    ``by_layer`` and every other component run as usual. With ``last_pos`` ``[b]``, only each row's last
    position is unembedded and the logits are ``[b, 1, v]`` (read them with ``batch.at_last_position()``).
    With ``entering`` as well (:func:`kc_utils.models.streams_entering` of ``tokens`` on the unpatched model, at
    least at the lowest layer of ``by_layer``), the pass resumes at that layer: the same logits, without the
    blocks below, which no write changes.
    """

    def hook_for(layer: int, head_ids: list[int]):
        def hook(result: Tensor, hook: Any) -> Tensor:
            result = result.clone()
            for head in head_ids:
                write(layer, head, result)
            return result

        return hook

    hooks = [(models.head_result_hook(layer), hook_for(layer, ids)) for layer, ids in by_layer.items()]
    start = min(by_layer) if by_layer else None
    with torch.no_grad(), models.only_head_results(model):  # no pass here reads an edge's input
        if last_pos is None:
            return models.run_with_hooks(model, tokens, hooks)
        if entering is not None and start in entering:
            rows = torch.arange(len(tokens), device=tokens.device)
            resumed = models.logits_from_layer(model, start, entering[start], tokens, rows, last_pos, hooks)
            return resumed[:, None]
        return models.last_logits(model, tokens, last_pos, hooks)[:, None]


def object_share(
    tokens: Int[Tensor, "b k"], object_tokens: Collection[int], exclude: Int[Tensor, "b"] | None = None
) -> Float[Tensor, "b"]:
    """Share of each row's tokens that are relation objects, not counting ``exclude[i]`` as one.

    ``exclude`` (e.g. each prompt's own answer) is removed from the object set of its row only;
    the denominator stays ``k``.
    """
    objects = torch.tensor(sorted({int(t) for t in object_tokens}), dtype=torch.long, device=tokens.device)
    hit = torch.isin(tokens, objects)
    if exclude is not None:
        hit &= tokens != exclude.to(tokens.device)[:, None]
    return hit.float().mean(-1)


def head_ablation_effects(
    model: Any,
    batch: PromptBatch,
    heads: Graph | Sequence[str] | None = None,
    ablation: str = "mean",
    k: int = 10,
    object_tokens: Collection[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Ablate each head alone; what happens to the answer, and which tokens gain.

    Args:
        heads: heads to ablate (:func:`kc_utils.analysis.heads.resolve_heads`; default all).
        ablation: ``"mean"`` (over the batch's real tokens) or ``"zero"``.
        k: number of gaining tokens to keep.
        object_tokens: first tokens of the relation's objects (:func:`relation_object_tokens`);
            adds ``same_relation_share`` and ``chance_share``.

    Returns:
        One row per head: ``head``, ``layer``, ``head_index``, ``ablation``, ``prob_clean`` and
        ``prob_ablated`` (mean answer probability), ``delta_prob`` (mean of ablated − clean),
        ``delta_logprob``, ``top_gaining`` (the ``k`` tokens whose probability rises the most on
        average over prompts, most first) with ``top_gaining_delta``, ``same_relation_share``
        (module docstring) and ``chance_share`` (NaN without ``object_tokens``).
    """
    _check_ablation(ablation)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = resolve_heads(model, heads)
    if not names:
        raise ValueError("no heads to ablate: the circuit has no attention heads")
    with torch.no_grad(), models.without_edge_hooks(model):
        clean_logprobs = models.last_logits(model, batch.clean, batch.last_pos).float().log_softmax(-1)  # [b, v]
    clean_probs = clean_logprobs.exp()
    answer_clean = clean_logprobs.gather(1, batch.answer[:, None])[:, 0]
    vocab = clean_probs.shape[-1]
    means = head_mean_outputs(model, batch, names) if ablation == "mean" else None
    chance = float("nan")
    if object_tokens is not None:
        chance = max(len({int(t) for t in object_tokens}) - 1, 0) / vocab

    # each head's pass resumes at its layer from the batch's streams, recorded once
    entering = models.streams_entering(model, batch.clean, sorted(heads_by_layer(model, names)))
    records = []
    for name in tqdm(names, desc=f"{ablation}-ablating heads", disable=not progress, leave=False):
        logits = run_with_heads_ablated(model, batch, [name], ablation, means=means, last_only=True, entering=entering)
        logprobs = logits[:, 0].float().log_softmax(-1)
        delta = logprobs.exp() - clean_probs  # [b, v]
        answer_ablated = logprobs.gather(1, batch.answer[:, None])[:, 0]
        mean_delta = delta.mean(0)
        top = mean_delta.topk(min(k, vocab))
        share = float("nan")
        if object_tokens is not None:
            per_prompt_top = delta.topk(min(k, vocab), dim=-1).indices
            share = float(object_share(per_prompt_top, object_tokens, exclude=batch.answer).mean())
        _, layer, head = parse_node(model, name)
        records.append(
            {
                "head": name,
                "layer": layer,
                "head_index": head,
                "ablation": ablation,
                "prob_clean": float(answer_clean.exp().mean()),
                "prob_ablated": float(answer_ablated.exp().mean()),
                "delta_prob": float((answer_ablated.exp() - answer_clean.exp()).mean()),
                "delta_logprob": float((answer_ablated - answer_clean).mean()),
                "top_gaining": models.token_strings(model, top.indices.tolist()),
                "top_gaining_delta": [round(float(v), 6) for v in top.values],
                "same_relation_share": share,
                "chance_share": chance,
            }
        )
    return pd.DataFrame.from_records(records)


def ablation_by_role(effects: pd.DataFrame, roles: pd.DataFrame) -> pd.DataFrame:
    """Average :func:`head_ablation_effects` per role of :func:`kc_utils.analysis.heads.assign_head_roles`.

    Returns:
        One row per role present: ``role``, ``n_heads``, ``heads`` (names), and the means of
        ``delta_prob``, ``delta_logprob``, ``same_relation_share`` and ``chance_share``.
    """
    for frame, what, column in ((effects, "effects", "head"), (roles, "roles", "head"), (roles, "roles", "role")):
        if column not in frame:
            raise ValueError(f"the {what} table has no {column!r} column")
    merged = effects.merge(roles[["head", "role"]], on="head", how="inner")
    if merged.empty:
        raise ValueError("no head appears in both the effects and the roles tables")
    grouped = merged.groupby("role")
    out = grouped[["delta_prob", "delta_logprob", "same_relation_share", "chance_share"]].mean()
    out.insert(0, "n_heads", grouped.size())
    out.insert(1, "heads", grouped["head"].agg(list))
    return out.reset_index()


def heads_for_single_ablation(roles: pd.DataFrame, max_other: int | None = None, seed: int = 0) -> list[str]:
    """The heads to ablate one at a time: every head with a role, and the heads without one (role ``"other"``).

    On a real model nearly every head writes something, and ablating each of hundreds of heads on every relation
    costs a forward pass each; the heads with a role are what the reading needs, and a seeded random sample of
    ``max_other`` role-less heads is their comparison. ``max_other=None`` keeps every role-less head.

    Args:
        roles: a table of :func:`kc_utils.analysis.heads.head_roles` (``head``, ``role``).
        max_other: at most this many role-less heads, drawn at random with ``seed``; ``None`` keeps all.

    Returns:
        Head names in the order of ``roles``.

    Raises:
        ValueError: a table without ``head`` and ``role`` columns, or a negative ``max_other``.
    """
    for column in ("head", "role"):
        if column not in roles:
            raise ValueError(f"the roles table has no {column!r} column")
    if max_other is not None and (isinstance(max_other, bool) or not isinstance(max_other, int) or max_other < 0):
        raise ValueError(f"max_other must be None or a whole number >= 0, got {max_other!r}")
    other = roles.loc[roles["role"] == "other", "head"].tolist()
    if max_other is not None and len(other) > max_other:
        other = set(random.Random(seed).sample(other, max_other))
    keep = set(other) | set(roles.loc[roles["role"] != "other", "head"])
    return [head for head in roles["head"] if head in keep]
