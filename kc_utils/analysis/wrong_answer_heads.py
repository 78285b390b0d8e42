"""Hallucinations, step 2: the components that choose the wrong answer.

The wrong answer is stored as the batch's contrast answer (:func:`with_wrong_answers`), so the metric
``logit(wrong) − logit(correct)`` (:func:`wrong_minus_correct`) survives any chunking of the batch.
:func:`wrong_answer_circuit` scores every edge for it with EAP-IG; :func:`head_logit_difference` gives
each head's direct logit attribution (DLA) to both answers and where its last-token attention goes;
:func:`explaining_heads` finds, per prompt, the fewest heads whose direct contribution to
``logit(wrong) − logit(correct)`` is larger than the model's margin (without it, the correct answer
would win); :func:`rank_heads` ranks the heads over the prompts. The prompts come from
:mod:`kc_utils.analysis.failure_kinds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.heads import position_masks, resolve_heads
from kc_utils.analysis.lens import component_logits, decompose_residual_with_cache, parse_node
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.graph import Graph
from kc_utils.data.metrics import logit_diff
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "explaining_heads",
    "head_logit_difference",
    "rank_heads",
    "upstream_node_scores",
    "with_wrong_answers",
    "wrong_answer_circuit",
    "wrong_minus_correct",
]


def with_wrong_answers(batch: PromptBatch, wrong: Int[Tensor, "b"] | Sequence[int]) -> PromptBatch:
    """The batch with each prompt's wrong answer (token id) stored as its contrast answer.

    ``batch.answer`` stays the correct answer; ``batch.corrupt_answer`` becomes the wrong one, so
    sub-batches carry it along and ``logit_diff`` = logit(correct) − logit(wrong).

    Raises:
        ValueError: not one token per prompt, a negative id, or a wrong answer equal to the correct one.
    """
    wrong = torch.as_tensor(wrong, dtype=torch.long, device=batch.answer.device).reshape(-1)
    if wrong.shape != (len(batch),):
        raise ValueError(f"give one wrong-answer token per prompt ({len(batch)}); got {tuple(wrong.shape)}")
    if bool((wrong < 0).any()):
        raise ValueError("wrong-answer tokens must be token ids ≥ 0")
    same = (wrong == batch.answer).nonzero().flatten().tolist()
    if same:
        raise ValueError(
            f"prompts {same[:5]} have the correct answer as their 'wrong' answer; keep only the prompts the model "
            "gets wrong (kind != 'correct')"
        )
    return replace(batch, corrupt_answer=wrong)


def wrong_minus_correct(logits: Float[Tensor, "b p v"], batch: PromptBatch) -> Float[Tensor, "b"]:
    """Metric ``logit(wrong) − logit(correct)`` at the last position (batch from :func:`with_wrong_answers`)."""
    return -logit_diff(logits, batch)


def wrong_answer_circuit(
    model: Any,
    batch: PromptBatch,
    ablation: str = "mean",
    ig_steps: int = 5,
    mean_reference: PromptBatch | None = None,
    progress: bool = True,
) -> Graph:
    """Every edge scored by EAP-IG for :func:`wrong_minus_correct` (positive: the edge favours the wrong answer).

    Args:
        batch: from :func:`with_wrong_answers`.
        ablation: ``"mean"`` (default; over ``mean_reference`` or the batch), ``"zero"``, or ``"patch"``
            (needs corrupted prompts of the same token length in the batch).
    """
    if bool((batch.corrupt_answer < 0).any()):
        raise ValueError("the batch has no wrong answers; build it with with_wrong_answers(batch, wrong)")
    graph = Graph.from_model(model)
    return attribute(
        model,
        graph,
        batch,
        metric=wrong_minus_correct,
        method="eap-ig",
        ig_steps=ig_steps,
        ablation=ablation,
        mean_reference=mean_reference,
        progress=progress,
    )


def upstream_node_scores(graph: Graph) -> pd.DataFrame:
    """Per upstream node: the summed signed and absolute scores of its outgoing edges, largest |score| first."""
    scores = graph.scores
    return (
        pd.DataFrame(
            {
                "node": graph.upstream_names,
                "score": scores.sum(1).tolist(),
                "abs_score": scores.abs().sum(1).tolist(),
            }
        )
        .sort_values("abs_score", ascending=False, ignore_index=True)
        .assign(share=lambda t: t["abs_score"] / max(float(t["abs_score"].sum()), 1e-30))
    )


def head_logit_difference(
    model: Any, batch: PromptBatch, subjects: Sequence[str], heads: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per prompt × head: direct logit attribution to the wrong and the correct answer, and attention.

    Args:
        batch: from :func:`with_wrong_answers`.
        subjects: one subject per prompt (for the attention split).
        heads: heads to read (default all).

    Returns:
        One row per prompt × head: ``prompt_index``, ``head``, ``layer``, ``head_index``,
        ``dla_wrong``, ``dla_correct``, ``dla_diff`` (wrong − correct), ``logit_diff`` (the
        model's logit(wrong) − logit(correct) for that prompt), ``attn_subject``,
        ``attn_relation`` (last token's attention to the subject and to the other prompt words)
        and ``top_key`` (the token the head attends to most).
    """
    if bool((batch.corrupt_answer < 0).any()):
        raise ValueError("the batch has no wrong answers; build it with with_wrong_answers(batch, wrong)")
    names = resolve_heads(model, heads)
    if not names:
        raise ValueError("no heads to read")
    subject, relation = position_masks(model, batch, subjects)[:2]
    layers = sorted({int(parse_node(model, n)[1]) for n in names})
    dec, cache = decompose_residual_with_cache(
        model, batch, extra_hooks=[models.attn_pattern_hook(layer) for layer in layers]
    )
    components, wrong = component_logits(model, batch, batch.corrupt_answer, dec)
    correct = component_logits(model, batch, batch.answer, dec)[1]
    total = (wrong - correct).sum(0)  # the model's logit(wrong) − logit(correct)
    row_of = {n: i for i, n in enumerate(components)}
    rows = torch.arange(len(batch), device=batch.clean.device)
    records = []
    for name in names:
        _, layer, head = parse_node(model, name)
        pattern = cache[models.attn_pattern_hook(int(layer))][rows, int(head), batch.last_pos].float()  # [b, p]
        top_key = pattern.argmax(-1)
        keys = models.token_strings(model, batch.clean[rows, top_key].tolist())
        for i in range(len(batch)):
            c = row_of[name]
            records.append(
                {
                    "prompt_index": i,
                    "head": name,
                    "layer": int(layer),
                    "head_index": int(head),
                    "dla_wrong": float(wrong[c, i]),
                    "dla_correct": float(correct[c, i]),
                    "dla_diff": float(wrong[c, i] - correct[c, i]),
                    "logit_diff": float(total[i]),
                    "attn_subject": float((pattern[i] * subject[i]).sum()),
                    "attn_relation": float((pattern[i] * relation[i]).sum()),
                    "top_key": keys[i],
                }
            )
    return pd.DataFrame.from_records(records)


def explaining_heads(head_table: pd.DataFrame, max_size: int = 3) -> pd.DataFrame:
    """Per prompt: the fewest heads whose direct contribution outweighs the model's margin for the wrong answer.

    Heads are taken in decreasing ``dla_diff``; ``n_heads`` is the smallest ``k ≤ max_size`` with
    ``logit_diff − Σ_top-k dla_diff < 0`` (removing those heads' direct effect would make the
    correct answer's logit the larger), NaN when no such ``k``, or when the prompt is not a failure
    (``logit_diff ≤ 0``).

    Args:
        head_table: a :func:`head_logit_difference` frame (or one with its columns).

    Returns:
        One row per prompt: ``prompt_index``, ``logit_diff``, ``top_head``, ``top_dla_diff``,
        ``heads`` (the explaining set, ``""`` if none, joined by ``", "``), ``n_heads``,
        ``by_one_head`` and ``by_small_set`` (``n_heads ≤ max_size``).
    """
    needed = {"prompt_index", "head", "dla_diff", "logit_diff"}
    if not needed <= set(head_table.columns):
        raise ValueError(f"not a head_logit_difference table: it lacks {sorted(needed - set(head_table.columns))}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a whole number ≥ 1, got {max_size!r}")
    records = []
    for index, rows in head_table.groupby("prompt_index", sort=True):
        rows = rows.sort_values("dla_diff", ascending=False, kind="stable")
        margin = float(rows["logit_diff"].iloc[0])
        cumulative = rows["dla_diff"].cumsum().to_numpy()[:max_size]
        reached = np.nonzero(margin - cumulative < 0)[0]
        n = int(reached[0]) + 1 if margin > 0 and len(reached) else None
        records.append(
            {
                "prompt_index": int(index),
                "logit_diff": margin,
                "top_head": rows["head"].iloc[0],
                "top_dla_diff": float(rows["dla_diff"].iloc[0]),
                "heads": ", ".join(rows["head"].iloc[:n]) if n else "",
                "n_heads": float(n) if n else float("nan"),
                "by_one_head": n == 1,
                "by_small_set": n is not None,
            }
        )
    return pd.DataFrame.from_records(records)


def rank_heads(head_table: pd.DataFrame) -> pd.DataFrame:
    """One row per head, by mean ``dla_diff`` (largest first): how much it favours the wrong answer.

    Returns:
        ``head``, ``mean_dla_diff``, ``mean_dla_wrong``, ``mean_dla_correct``, ``top_share`` (share
        of prompts where it is the head with the largest ``dla_diff``), ``attn_subject``,
        ``attn_relation`` (means) and ``top_key`` (its most frequent top-attended token).
    """
    needed = {"prompt_index", "head", "dla_diff", "dla_wrong", "dla_correct", "attn_subject", "attn_relation"}
    if not needed <= set(head_table.columns):
        raise ValueError(f"not a head_logit_difference table: it lacks {sorted(needed - set(head_table.columns))}")
    best = head_table.loc[head_table.groupby("prompt_index")["dla_diff"].idxmax(), "head"]
    n_prompts = head_table["prompt_index"].nunique()
    grouped = head_table.groupby("head", sort=False)
    table = pd.DataFrame(
        {
            "mean_dla_diff": grouped["dla_diff"].mean(),
            "mean_dla_wrong": grouped["dla_wrong"].mean(),
            "mean_dla_correct": grouped["dla_correct"].mean(),
            "top_share": best.value_counts().reindex(grouped.size().index, fill_value=0) / n_prompts,
            "attn_subject": grouped["attn_subject"].mean(),
            "attn_relation": grouped["attn_relation"].mean(),
        }
    )
    if "top_key" in head_table:
        table["top_key"] = grouped["top_key"].agg(lambda s: s.value_counts().index[0])
    return table.rename_axis("head").reset_index().sort_values("mean_dla_diff", ascending=False, ignore_index=True)
