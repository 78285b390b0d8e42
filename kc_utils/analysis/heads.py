"""Attention-head roles in a knowledge circuit: mover, relation and mix heads (Yao et al. 2024, §4.1).

**The paper's words.** *Mover heads* attend from the last token to the subject and copy the
subject's attribute (L14H7 attends 0.60 to "France"; its top tokens are *French*/*France*);
*relation heads* attend to the relation words and output relation-type tokens (L14H13, L7H14,
L18H14); *mix heads* do both.

**What is measured** (:func:`head_scores`), per head and prompt, at the prompt's **last token**
(where the answer is predicted):

* where the head reads — the last token's attention split over four kinds of position
  (:func:`position_masks`), which sum to 1:

  - ``attn_subject``: the subject's tokens (:func:`kc_utils.analysis.lens.subject_positions`);
  - ``attn_relation``: the **relation words** — the template's *content* words, e.g. ``official
    language`` in ``"The official language of {} is"``;
  - ``attn_function``: the template's **function words** (:data:`FUNCTION_WORDS`: articles,
    prepositions, auxiliaries, pronouns, punctuation), e.g. ``The`` and ``of``. They do **not**
    count as relation words: ``The``, ``of`` and ``is`` open or close the templates of most
    relations (``The`` and ``is`` are in all 21 relation files of this project), so a head that
    reads them learns nothing about *which* relation is asked; such heads are usually attention
    sinks, like the BOS;
  - ``attn_other``: the BOS and the last token itself (the reading position);

* what the head writes — its output at the last token read through the unembedding with the
  final norm's scale frozen (:mod:`kc_utils.analysis.lens`):

  - ``dla``: its direct logit attribution to the answer (logits it adds to the answer);
  - ``answer_rank``: the answer's rank among all tokens in its projection (0 = top);
  - ``relation_type_auc``: how strongly it promotes the relation's **other** objects (its
    relation-type tokens, the prompt's own answer excluded) over the rest of the vocabulary — the
    probability that a random other object outranks a random non-object in its projection (0.5 =
    no preference, 1 = every object above every non-object). Scale-free and defined for every
    head, unlike the share among the top ``k``, which on the organism (59 language tokens of
    2,607) has a chance level of 0.02 and moves in steps of 0.1;
  - ``relation_token_share``: that share — of its top ``k`` tokens, those that are objects of the
    relation (reported, not used by the rule);
  - ``top_tokens``: its ``k`` most promoted tokens.

:func:`summarise_heads` averages over prompts (median for ranks).

**The rule** (:func:`assign_head_roles`; thresholds are parameters, defaults in brackets)::

    reads_subject    = attn_subject      >= subject_threshold   (0.3)
    reads_relation   = attn_relation     >= relation_threshold  (0.3)
    writes_answer    = dla               >= min_dla             (1.0 logit: multiplies the answer's odds by e)
    writes_relation  = relation_type_auc >= min_type_auc        (0.75)

    mover evidence    = reads_subject  and writes_answer      "attend to the subject and write the attribute"
    relation evidence = reads_relation and writes_relation    "attend to relation words and output relation-type tokens"

    mix       both kinds of evidence                          "mix heads do both"
    mover     mover evidence only
    relation  relation evidence only
    other     neither (e.g. heads reading "The" or the BOS, heads that read the relation words but
              suppress its objects)

Attention in the model organism is nearly one-hot, so any attention threshold between about 0.1
and 0.9 gives the same reads_* flags; the output thresholds decide the roles.
:func:`role_sensitivity` counts the roles as each threshold moves over a grid, the others at their
defaults. The answer rank is no longer part of the rule: the organism's strongest writers (DLA
+3.24 and +2.66 for the language of a country) rank the answer 36th and 26th among 2,607 tokens,
because a head's projection also carries large logits for unrelated tokens that the other heads
cancel.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
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
from kc_utils.circuits.nodes import head_name
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FUNCTION_WORDS",
    "ROLES",
    "SENSITIVITY_GRID",
    "assign_head_roles",
    "attention_patterns",
    "head_roles",
    "head_scores",
    "is_function_word",
    "object_auc",
    "position_labels",
    "position_masks",
    "resolve_heads",
    "role_sensitivity",
    "summarise_heads",
]

#: The roles :func:`assign_head_roles` can give.
ROLES = ("mover", "mix", "relation", "other")

#: Default thresholds of :func:`assign_head_roles` (module docstring).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "subject_threshold": 0.3,
    "relation_threshold": 0.3,
    "min_dla": 1.0,
    "min_type_auc": 0.75,
}

#: Values each threshold takes in :func:`role_sensitivity` (the others stay at their defaults).
SENSITIVITY_GRID: dict[str, tuple[float, ...]] = {
    "subject_threshold": (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    "relation_threshold": (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    "min_dla": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
    "min_type_auc": (0.55, 0.6, 0.65, 0.75, 0.85, 0.9, 0.95),
}

#: Words that never count as relation words (lower case): articles, prepositions, auxiliaries,
#: conjunctions and pronouns. Punctuation-only tokens and the possessive ``'s`` count too.
FUNCTION_WORDS = frozenset(
    """a an the this that these those some any each every
    of in on at to for from by with as into onto about over under than
    is are was were be been being am has have had do does did can could will would shall should may might must
    and or but nor not so if then there here
    it its he him his she her they them their we us our you your i me my who whom whose which what where when how
    's""".split()
)

_REQUIRED = ("attn_subject", "attn_relation", "dla", "relation_type_auc")
_TOKEN_MARKS = " \t\n\u0120\u2581"  # whitespace, GPT-2's "Ġ" and SentencePiece's "▁"


def is_function_word(token: str) -> bool:
    """True for a function word of :data:`FUNCTION_WORDS` or a punctuation-only token (case and
    leading-space markers ignored: ``" The"``, ``"ĠThe"`` and ``"the"`` are all function words)."""
    word = token.strip(_TOKEN_MARKS).lower()
    return word in FUNCTION_WORDS or all(c in string.punctuation for c in word)


def resolve_heads(model: Any, heads: Graph | Sequence[str] | None = None) -> list[str]:
    """Head names to study: all heads (``None``), a circuit's heads (a :class:`Graph`), or names.

    Raises:
        ValueError: a name that is not a head of this model (``"a{layer}.h{head}"``).
    """
    if heads is None:
        shape = models.model_shape(model)
        return [head_name(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]
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
) -> tuple[Bool[Tensor, "b p"], Bool[Tensor, "b p"], Bool[Tensor, "b p"]]:
    """``(subject, relation, function)`` position masks of the batch's prompts.

    Of the real tokens, the BOS and each prompt's last token are in none of them; the other
    non-subject tokens are relation words, or function words when :func:`is_function_word`.
    """
    subject = subject_mask(model, batch, subjects)
    positions = torch.arange(batch.clean.shape[1], device=batch.clean.device)
    bos_id = models.bos_token_id(model)
    bos = torch.zeros_like(subject)
    if bos_id is not None:
        bos[:, 0] = batch.clean[:, 0] == bos_id
    last = positions[None, :] == batch.last_pos[:, None]
    template = batch.padding_mask & ~subject & ~bos & ~last
    ids = sorted(set(batch.clean[template].tolist()))
    function_ids = [i for i, text in zip(ids, models.token_strings(model, ids)) if is_function_word(text)]
    function = template & torch.isin(batch.clean, torch.tensor(function_ids, dtype=torch.long, device=subject.device))
    return subject, template & ~function, function


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
        subject, relation, function and other.
    """
    names = resolve_heads(model, heads)
    labels = position_labels(model, batch, prompt_index)
    n = len(labels)
    layers = sorted({int(parse_node(model, h)[1]) for h in names})
    with torch.no_grad(), models.without_edge_hooks(model):  # patterns only
        cache = models.cache_activations(
            model, batch.clean[prompt_index : prompt_index + 1], [models.attn_pattern_hook(layer) for layer in layers]
        )
    out = {}
    for name in names:
        _, layer, head = parse_node(model, name)
        pattern = cache[models.attn_pattern_hook(int(layer))][0, int(head), :n, :n].float().cpu().numpy()
        out[name] = pd.DataFrame(pattern, index=labels, columns=labels)
    return out


def object_auc(
    scores: Float[Tensor, "... v"], objects: Int[Tensor, "o"], answer: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """Probability that a random object token outscores a random non-object token, per row.

    The row's ``answer`` is left out of both sets (it is neither "another object" nor a
    non-object). Ties count one half. NaN where a set is empty.

    Args:
        scores: ``[..., vocab]`` a head's logit contributions.
        objects: token ids of the relation's objects.
        answer: ``[...]`` each row's answer token.
    """
    vocab = scores.shape[-1]
    scores = scores.float()
    objects = objects.to(scores.device)
    answer = answer.to(scores.device)
    # the excluded tokens of a row: the objects and the answer (counted once when the answer is an object)
    excluded = torch.cat([objects.expand(*scores.shape[:-1], -1), answer[..., None]], -1)  # [..., o+1]
    valid = torch.ones_like(excluded, dtype=torch.bool)
    valid[..., -1] = ~(objects == answer[..., None]).any(-1)
    positive = valid[..., :-1] & (objects != answer[..., None])  # [..., o]
    excluded_scores = scores.gather(-1, excluded)  # [..., o+1]
    object_scores = excluded_scores[..., :-1]  # [..., o]
    # only the objects are looked up in the sorted row (o queries, not vocab): tokens strictly below / at most each
    ordered = scores.sort(-1).values
    below_all = torch.searchsorted(ordered, object_scores.contiguous(), right=False).float()
    through_all = torch.searchsorted(ordered, object_scores.contiguous(), right=True).float()
    # minus the excluded tokens among them: the negatives strictly below, and at most equal to, each object
    lower = (excluded_scores[..., None, :] < object_scores[..., :, None]) & valid[..., None, :]
    equal_or_lower = (excluded_scores[..., None, :] <= object_scores[..., :, None]) & valid[..., None, :]
    below = below_all - lower.sum(-1)
    through = through_all - equal_or_lower.sum(-1)
    wins = below + (through - below) / 2  # ties count one half
    total = (wins * positive).sum(-1)
    n_pos = positive.sum(-1).float()
    n_neg = vocab - valid.sum(-1).float()
    return torch.where((n_pos > 0) & (n_neg > 0), total / (n_pos * n_neg), torch.full_like(total, float("nan")))


def head_scores(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    heads: Graph | Sequence[str] | None = None,
    object_tokens: Collection[int] | None = None,
    k: int = 10,
) -> pd.DataFrame:
    """Per prompt × head: where the head reads (attention split) and what it writes (module docstring).

    Args:
        batch: prompts and answers (read at ``batch.last_pos``).
        subjects: one subject per prompt, as written in the prompt.
        heads: heads to score (see :func:`resolve_heads`); default all.
        object_tokens: first tokens of the relation's objects
            (:func:`kc_utils.analysis.head_ablation.relation_object_tokens`); gives
            ``relation_type_auc`` and ``relation_token_share`` (NaN without them).
        k: number of top projected tokens to keep per head.

    Returns:
        One row per prompt × head with ``prompt_index``, ``head``, ``layer``, ``head_index``,
        ``attn_subject``, ``attn_relation``, ``attn_function``, ``attn_other`` (these four sum to
        1), ``dla``, ``answer_rank``, ``relation_type_auc``, ``relation_token_share`` and
        ``top_tokens`` (``k`` strings).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = resolve_heads(model, heads)
    if not names:
        raise ValueError("no heads to score: the circuit has no attention heads")
    subject, relation, function = position_masks(model, batch, subjects)
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
        shares = [(pattern * mask[:, None]).sum(-1) for mask in (subject, relation, function)]
        outputs = dec.outputs[[dec.index(n) for n in in_layer]]  # [h_sel, b, d]
        projected = project_to_vocab(model, outputs, dec.scale[None]).float()  # [h_sel, b, v]
        answers = batch.answer[None, :].expand(len(in_layer), -1)
        ranks = rank_of(projected, answers)  # [h_sel, b]
        top = projected.topk(min(k, projected.shape[-1]), dim=-1).indices  # [h_sel, b, k]
        nan = torch.full(ranks.shape, float("nan"))
        share = torch.isin(top, objects).float().mean(-1) if objects is not None else nan
        auc = object_auc(projected, objects, answers) if objects is not None else nan
        for j, name in enumerate(in_layer):
            for i in range(len(batch)):
                att_subj, att_rel, att_fun = (float(s[i, j]) for s in shares)
                records.append(
                    {
                        "prompt_index": i,
                        "head": name,
                        "layer": layer,
                        "head_index": head_ids[j],
                        "attn_subject": att_subj,
                        "attn_relation": att_rel,
                        "attn_function": att_fun,
                        "attn_other": 1.0 - att_subj - att_rel - att_fun,
                        "dla": float(dla[dla_index[name], i]),
                        "answer_rank": int(ranks[j, i]),
                        "relation_type_auc": float(auc[j, i]),
                        "relation_token_share": float(share[j, i]),
                        "top_tokens": models.token_strings(model, top[j, i].tolist()),
                    }
                )
    return pd.DataFrame.from_records(records)


def summarise_heads(scores: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Average :func:`head_scores` over prompts: one row per head.

    Means of the attention shares, ``dla``, ``relation_type_auc`` and ``relation_token_share``;
    the **median** of ``answer_rank``; ``top_tokens`` = the ``k`` tokens most often among the
    head's top tokens across prompts; ``n_prompts``.
    """
    if scores.empty:
        raise ValueError("no head scores to summarise")
    means = [
        "attn_subject",
        "attn_relation",
        "attn_function",
        "attn_other",
        "dla",
        "relation_type_auc",
        "relation_token_share",
    ]
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


def _check_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(thresholds) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; the rule has {list(DEFAULT_THRESHOLDS)}")
    merged = {**DEFAULT_THRESHOLDS, **thresholds}
    for name in ("subject_threshold", "relation_threshold", "min_type_auc"):
        if not 0.0 <= merged[name] <= 1.0:
            raise ValueError(f"{name} is a share or a probability and must lie in [0, 1], got {merged[name]}")
    return merged


def assign_head_roles(summary: pd.DataFrame, **thresholds: float) -> pd.DataFrame:
    """Give each head a role (mover, mix, relation, other) by the rule in the module docstring.

    Args:
        summary: one row per head with columns ``attn_subject``, ``attn_relation``, ``dla`` and
            ``relation_type_auc`` (:func:`summarise_heads`, or a hand-made table).
        thresholds: any of :data:`DEFAULT_THRESHOLDS` (``subject_threshold``,
            ``relation_threshold``, ``min_dla``, ``min_type_auc``); the rest keep their defaults.

    Returns:
        A copy of ``summary`` with boolean columns ``reads_subject``, ``reads_relation``,
        ``writes_answer``, ``writes_relation`` and the ``role``.

    Raises:
        ValueError: missing columns, an unknown threshold, or a share outside [0, 1].
    """
    missing = [c for c in _REQUIRED if c not in summary]
    if missing:
        raise ValueError(f"the head table lacks columns {missing}; it needs {list(_REQUIRED)} (see summarise_heads)")
    t = _check_thresholds(thresholds)
    out = summary.copy()
    out["reads_subject"] = out["attn_subject"] >= t["subject_threshold"]
    out["reads_relation"] = out["attn_relation"] >= t["relation_threshold"]
    out["writes_answer"] = out["dla"] >= t["min_dla"]
    out["writes_relation"] = out["relation_type_auc"] >= t["min_type_auc"]  # NaN (no objects given) -> False
    mover = out["reads_subject"] & out["writes_answer"]
    relation = out["reads_relation"] & out["writes_relation"]
    out["role"] = "other"
    out.loc[relation, "role"] = "relation"
    out.loc[mover, "role"] = "mover"
    out.loc[mover & relation, "role"] = "mix"
    return out


def role_sensitivity(
    summary: pd.DataFrame, grid: Mapping[str, Sequence[float]] | None = None, **thresholds: float
) -> pd.DataFrame:
    """Role counts as each threshold moves over ``grid``, the others held at ``thresholds``.

    Args:
        summary: the head table given to :func:`assign_head_roles` (several relations may be
            stacked: counts are over all rows).
        grid: ``{threshold: values}`` (default :data:`SENSITIVITY_GRID`).
        thresholds: the reference setting (default :data:`DEFAULT_THRESHOLDS`).

    Returns:
        One row per threshold × value: ``threshold``, ``value``, ``is_reference`` (the value of
        the reference setting), a count per role of :data:`ROLES`, and ``changed`` — heads whose
        role differs from the reference assignment.
    """
    reference = _check_thresholds(thresholds)
    grid = SENSITIVITY_GRID if grid is None else grid
    base = assign_head_roles(summary, **reference)["role"].to_numpy()
    rows = []
    for name, values in grid.items():
        for value in values:
            roles = assign_head_roles(summary, **{**reference, name: value})["role"]
            counts = roles.value_counts()
            rows.append(
                {
                    "threshold": name,
                    "value": float(value),
                    "is_reference": bool(value == reference[name]),
                    **{role: int(counts.get(role, 0)) for role in ROLES},
                    "changed": int((roles.to_numpy() != base).sum()),
                }
            )
    return pd.DataFrame.from_records(rows)


def head_roles(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    heads: Graph | Sequence[str] | None = None,
    object_tokens: Collection[int] | None = None,
    k: int = 10,
    **thresholds: float,
) -> pd.DataFrame:
    """:func:`head_scores` → :func:`summarise_heads` → :func:`assign_head_roles` in one call.

    ``thresholds`` are passed to :func:`assign_head_roles`. Rows are sorted by role (mover, mix,
    relation, other), then by ``|dla|`` (largest first).
    """
    _check_thresholds(thresholds)
    summary = summarise_heads(head_scores(model, batch, subjects, heads, object_tokens, k))
    roles = assign_head_roles(summary, **thresholds)
    order = {role: i for i, role in enumerate(ROLES)}
    return roles.sort_values(
        by=["role", "dla"], key=lambda c: c.map(order) if c.name == "role" else -c.abs(), ignore_index=True
    )
