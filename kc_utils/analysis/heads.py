"""Attention-head roles in a knowledge circuit: mover, relation and mix heads (Yao et al. 2024, §4.1).

For each head and prompt, read at the prompt's **last token** (where the answer is predicted):

* ``attn_subject`` — attention from the last token to the subject's tokens
  (:func:`kc_utils.analysis.lens.subject_positions`);
* ``attn_relation`` — attention to the **relation words**: the prompt's real tokens that are not
  the subject, not the prepended BOS and not the last token itself. For the template
  ``"The capital of {} is"`` these are ``The capital of``; the final ``is`` is the reading position;
* ``attn_other`` — the rest (``1 − attn_subject − attn_relation``): the BOS (often an attention
  sink) and the last token itself;
* ``dla`` — the head's direct logit attribution to the answer (:func:`kc_utils.analysis.lens.component_logits`);
* ``answer_rank`` — the answer's rank among all tokens in the head's vocabulary projection
  (0 = the head promotes the answer more than any other token);
* ``top_tokens`` — the head's ``k`` most promoted tokens, and, given the relation's object
  tokens, ``relation_token_share``: the share of them that are objects of the relation.

:func:`summarise_heads` averages over prompts (median for ranks) and :func:`assign_head_roles`
turns the averages into a role, keeping every score beside it. The rule, with its defaults::

    attends_subject  = attn_subject  >= subject_threshold   (0.3)
    attends_relation = attn_relation >= relation_threshold  (0.3)
    promotes_answer  = dla > min_dla (0.0)  and  answer_rank <= max_answer_rank (20)

    mix       if attends_subject and promotes_answer and attends_relation
    mover     if attends_subject and promotes_answer
    relation  if attends_relation
    other     otherwise

A mover head moves the subject's attribute to the last token (the paper's L14H7: attention to
"France" 0.60, top tokens French/France); a relation head reads the relation words (and tends to
output relation-type tokens: see ``relation_token_share``); a mix head does both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.lens import (
    component_logits,
    decompose_residual_with_cache,
    parse_node,
    project_to_vocab,
    subject_mask,
)
from kc_utils.circuits.graph import Graph
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "ROLES",
    "assign_head_roles",
    "attention_patterns",
    "head_roles",
    "head_scores",
    "position_masks",
    "position_labels",
    "resolve_heads",
    "summarise_heads",
]

#: The roles :func:`assign_head_roles` can give.
ROLES = ("mover", "relation", "mix", "other")

_REQUIRED = ("attn_subject", "attn_relation", "dla", "answer_rank")


def resolve_heads(model: Any, heads: Graph | Sequence[str] | None = None) -> list[str]:
    """Head names to study: all heads (``None``), a circuit's heads (a :class:`Graph`), or names.

    Raises:
        ValueError: a name that is not a head of this model (``"a{layer}.h{head}"``).
    """
    if heads is None:
        shape = models.model_shape(model)
        return [f"a{layer}.h{h}" for layer in range(shape.n_layers) for h in range(shape.n_heads)]
    if isinstance(heads, Graph):
        return [n for n in heads.nodes_in_graph() if n.startswith("a")]
    if isinstance(heads, str):
        raise ValueError(f"heads must be a list of names, not the string {heads!r}; write [{heads!r}]")
    names = list(dict.fromkeys(heads))
    for name in names:
        if parse_node(model, name)[0] != "head":
            raise ValueError(f"{name!r} is not an attention head; use names like 'a3.h5'")
    return names


def position_masks(
    model: Any, batch: PromptBatch, subjects: Sequence[str]
) -> tuple[Bool[Tensor, "b p"], Bool[Tensor, "b p"]]:
    """``(subject, relation)`` position masks; relation = real, non-subject, non-BOS, non-last tokens."""
    subject = subject_mask(model, batch, subjects)
    positions = torch.arange(batch.clean.shape[1], device=batch.clean.device)
    bos_id = model.tokenizer.bos_token_id
    bos = torch.zeros_like(subject)
    if bos_id is not None:
        bos[:, 0] = batch.clean[:, 0] == bos_id
    last = positions[None, :] == batch.last_pos[:, None]
    relation = batch.padding_mask & ~subject & ~bos & ~last
    return subject, relation


def position_labels(model: Any, batch: PromptBatch, prompt_index: int) -> list[str]:
    """``"<pos>:<token>"`` for each real token of one prompt (unique, for plot axes)."""
    if not 0 <= prompt_index < len(batch):
        raise ValueError(f"prompt_index {prompt_index} out of range: the batch has {len(batch)} prompts")
    n = int(batch.last_pos[prompt_index]) + 1
    tokens = models.token_strings(model, batch.clean[prompt_index, :n].tolist())
    return [f"{i}:{t}" for i, t in enumerate(tokens)]


def attention_patterns(
    model: Any, batch: PromptBatch, prompt_index: int, heads: Graph | Sequence[str] | None = None
) -> dict[str, pd.DataFrame]:
    """Attention patterns of ``heads`` on one prompt, labelled with its tokens.

    Args:
        prompt_index: which prompt of the batch.
        heads: heads to read (:func:`resolve_heads`; default all).

    Returns:
        ``{head: frame}`` where ``frame`` is ``[query × key]`` over the prompt's real tokens
        (padding dropped), index and columns :func:`position_labels`; each row sums to 1 and the
        upper triangle is 0 (causal). The last row is what :func:`head_scores` splits into
        subject, relation and other.
    """
    names = resolve_heads(model, heads)
    labels = position_labels(model, batch, prompt_index)
    n = len(labels)
    layers = sorted({int(parse_node(model, h)[1]) for h in names})
    with torch.no_grad():
        _, cache = models.run_with_cache(
            model, batch.clean[prompt_index : prompt_index + 1], [models.attn_pattern_hook(layer) for layer in layers]
        )
    out = {}
    for name in names:
        _, layer, head = parse_node(model, name)
        pattern = cache[models.attn_pattern_hook(int(layer))][0, int(head), :n, :n].float().cpu().numpy()
        out[name] = pd.DataFrame(pattern, index=labels, columns=labels)
    return out


def head_scores(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    heads: Graph | Sequence[str] | None = None,
    object_tokens: Collection[int] | None = None,
    k: int = 10,
) -> pd.DataFrame:
    """Per prompt × head: attention split, direct logit attribution and vocabulary projection.

    Args:
        batch: prompts and answers (read at ``batch.last_pos``).
        subjects: one subject per prompt, as written in the prompt.
        heads: heads to score (see :func:`resolve_heads`); default all.
        object_tokens: first tokens of the relation's objects
            (:func:`kc_utils.analysis.head_ablation.relation_object_tokens`); adds ``relation_token_share``.
        k: number of top projected tokens to keep per head.

    Returns:
        One row per prompt × head with ``prompt_index``, ``head``, ``layer``, ``head_index``,
        ``attn_subject``, ``attn_relation``, ``attn_other`` (these three sum to 1), ``dla``,
        ``answer_rank``, ``top_tokens`` (``k`` strings) and ``relation_token_share``
        (NaN without ``object_tokens``).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = resolve_heads(model, heads)
    if not names:
        raise ValueError("no heads to score: the circuit has no attention heads")
    subject, relation = position_masks(model, batch, subjects)
    layers = sorted({parse_node(model, n)[1] for n in names})
    dec, cache = decompose_residual_with_cache(
        model, batch, extra_hooks=[models.attn_pattern_hook(layer) for layer in layers]
    )
    rows = torch.arange(len(batch), device=batch.clean.device)
    component_names, dla = component_logits(model, batch, batch.answer, dec)
    dla_index = {n: i for i, n in enumerate(component_names)}
    objects = None
    if object_tokens is not None:
        objects = torch.tensor(sorted({int(t) for t in object_tokens}), dtype=torch.long, device=batch.clean.device)

    records = []
    for layer in layers:
        in_layer = [n for n in names if parse_node(model, n)[1] == layer]
        head_ids = [int(parse_node(model, n)[2]) for n in in_layer]
        # attention of the last token: [b, h_sel, p]
        pattern = cache[models.attn_pattern_hook(layer)][rows, :, batch.last_pos][:, head_ids].float()
        att_subj = (pattern * subject[:, None]).sum(-1)
        att_rel = (pattern * relation[:, None]).sum(-1)
        outputs = dec.outputs[[dec.index(n) for n in in_layer]]  # [h_sel, b, d]
        projected = project_to_vocab(model, outputs, dec.scale[None]).float()  # [h_sel, b, v]
        ranks = rank_of(projected, batch.answer[None, :].expand(len(in_layer), -1))  # [h_sel, b]
        top = projected.topk(min(k, projected.shape[-1]), dim=-1).indices  # [h_sel, b, k]
        share = torch.isin(top, objects).float().mean(-1) if objects is not None else None
        for j, name in enumerate(in_layer):
            for i in range(len(batch)):
                records.append(
                    {
                        "prompt_index": i,
                        "head": name,
                        "layer": layer,
                        "head_index": head_ids[j],
                        "attn_subject": float(att_subj[i, j]),
                        "attn_relation": float(att_rel[i, j]),
                        "attn_other": float(1.0 - att_subj[i, j] - att_rel[i, j]),
                        "dla": float(dla[dla_index[name], i]),
                        "answer_rank": int(ranks[j, i]),
                        "top_tokens": models.token_strings(model, top[j, i].tolist()),
                        "relation_token_share": float(share[j, i]) if share is not None else float("nan"),
                    }
                )
    return pd.DataFrame.from_records(records)


def summarise_heads(scores: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Average :func:`head_scores` over prompts: one row per head.

    Means of the attention shares, ``dla`` and ``relation_token_share``; the **median** of
    ``answer_rank``; ``top_tokens`` = the ``k`` tokens most often among the head's top tokens
    across prompts; ``n_prompts``.
    """
    if scores.empty:
        raise ValueError("no head scores to summarise")
    means = ["attn_subject", "attn_relation", "attn_other", "dla", "relation_token_share"]
    grouped = scores.groupby("head", sort=False)
    summary = grouped[[c for c in means if c in scores]].mean()
    summary["answer_rank"] = grouped["answer_rank"].median()
    summary["n_prompts"] = grouped.size()
    if "top_tokens" in scores:
        summary["top_tokens"] = grouped["top_tokens"].agg(
            lambda lists: [t for t, _ in Counter(t for tokens in lists for t in tokens).most_common(k)]
        )
    for column in ("layer", "head_index"):
        if column in scores:
            summary[column] = grouped[column].first()
    return summary.reset_index()


def assign_head_roles(
    summary: pd.DataFrame,
    subject_threshold: float | int = 0.3,
    relation_threshold: float | int = 0.3,
    max_answer_rank: float | int = 20,
    min_dla: float | int = 0.0,
) -> pd.DataFrame:
    """Give each head a role (mover, relation, mix, other) by the rule in the module docstring.

    Args:
        summary: one row per head with columns ``attn_subject``, ``attn_relation``, ``dla`` and
            ``answer_rank`` (:func:`summarise_heads`, or a hand-made table).
        subject_threshold: minimal attention to the subject for a mover/mix head.
        relation_threshold: minimal attention to the relation words for a relation/mix head.
        max_answer_rank: largest answer rank in the head's projection that counts as promoting.
        min_dla: direct logit attribution to the answer must exceed this to count as promoting.

    Returns:
        A copy of ``summary`` with boolean columns ``attends_subject``, ``attends_relation``,
        ``promotes_answer`` and the ``role``.

    Raises:
        ValueError: missing columns, or thresholds outside [0, 1].
    """
    missing = [c for c in _REQUIRED if c not in summary]
    if missing:
        raise ValueError(f"the head table lacks columns {missing}; it needs {list(_REQUIRED)} (see summarise_heads)")
    for name, value in (("subject_threshold", subject_threshold), ("relation_threshold", relation_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is an attention share and must lie in [0, 1], got {value}")
    out = summary.copy()
    out["attends_subject"] = out["attn_subject"] >= subject_threshold
    out["attends_relation"] = out["attn_relation"] >= relation_threshold
    out["promotes_answer"] = (out["dla"] > min_dla) & (out["answer_rank"] <= max_answer_rank)
    mover = out["attends_subject"] & out["promotes_answer"]
    out["role"] = "other"
    out.loc[out["attends_relation"], "role"] = "relation"
    out.loc[mover, "role"] = "mover"
    out.loc[mover & out["attends_relation"], "role"] = "mix"
    return out


def head_roles(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    heads: Graph | Sequence[str] | None = None,
    object_tokens: Collection[int] | None = None,
    k: int = 10,
    **thresholds: float | int,
) -> pd.DataFrame:
    """:func:`head_scores` → :func:`summarise_heads` → :func:`assign_head_roles` in one call.

    ``thresholds`` are passed to :func:`assign_head_roles`. Rows are sorted by role, then by
    ``|dla|`` (largest first).
    """
    summary = summarise_heads(head_scores(model, batch, subjects, heads, object_tokens, k))
    roles = assign_head_roles(summary, **thresholds)
    order = {role: i for i, role in enumerate(("mover", "mix", "relation", "other"))}
    return roles.sort_values(
        by=["role", "dla"], key=lambda c: c.map(order) if c.name == "role" else -c.abs(), ignore_index=True
    )
