"""Hallucinations traced through circuits: does the model know the fact, and which heads pick the wrong answer?

Yao et al. (2024, §6): for "The official currency of Malaysia is called" GPT-2 medium answers
"Malaysian", not "Ringgit"; both are built up before layer 15, then a mover head moves the wrong one.
This module turns that reading into measurements over many prompts:

1. **Classify** (:func:`classify_from_lens`, :func:`classify_prompts`). Each prompt is

   ==========================  ==================================================================
   ``correct``                 the correct answer is the model's top-1
   ``knowledge_present``       wrong, but the correct answer is *in the model*: it reaches rank
                               ``≤ subject_max_rank`` at the subject's positions at some layer
                               (enrichment) and/or rank ``≤ last_max_rank`` at the last position at
                               some layer before the final one (``rule``, see below)
   ``knowledge_absent``        wrong, and neither holds: the model has nothing to retrieve
   ==========================  ==================================================================

   ``rule``: ``"subject"`` (default; only the subject counts — a never-seen subject can still rank
   the relation's most common answer high at the last position, which is a prior, not knowledge),
   ``"last"``, ``"either"`` or ``"both"``. Ranks are 0-based (0 = top-1) in the tables and the
   knobs, read from :func:`kc_utils.analysis.lens.logit_lens`; every sentence and figure shows them
   1-based (rank 1 = top-1), as "within the top ``max_rank + 1``".
2. **Components that choose the wrong answer.** The wrong answer is stored as the batch's contrast
   answer (:func:`with_wrong_answers`), so the metric ``logit(wrong) − logit(correct)``
   (:func:`wrong_minus_correct`) survives any chunking of the batch. :func:`wrong_answer_circuit`
   scores every edge for it with EAP-IG; :func:`head_logit_difference` gives each head's direct
   logit attribution (DLA) to both answers and where its last-token attention goes;
   :func:`explaining_heads` finds, per prompt, the fewest heads whose direct contribution to
   ``logit(wrong) − logit(correct)`` is larger than the model's margin (without it, the correct
   answer would win).
3. **Repair by intervention** (:func:`repair`): patch the chosen heads' last-position output from
   the same fact asked in another prompt (a training template; :func:`patch_heads_from_prompts`
   allows another token length), or mean/zero-ablate them, and count how often the correct answer
   becomes top-1 — beside ``n_random`` (≥ 20) random head sets of the same size, summarised with
   :func:`repair_summary` (mean ± std and a permutation p-value). :func:`analyse_failures` chooses
   the heads on one half of the failures and scores the repair on the other half
   (:func:`split_failures`), so a head is never scored on the failures it was picked on.
4. **One relation end to end** (:func:`analyse_failures`, :func:`failure_summary`): classify the
   facts asked in one template, name the wrong answers
   (:mod:`kc_utils.analysis.wrong_answers`), trace and repair the knowledge-present failures.
5. **Sentences** built from those tables for the notebook (:func:`describe_kinds`,
   :func:`describe_repair`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.head_ablation import head_mean_outputs
from kc_utils.analysis.head_groups import (
    all_heads,
    evaluate_head_sets,
    group_ablation_summary,
    heads_by_layer,
    random_head_sets,
    run_with_head_writes,
    score_row,
    writing_heads,
)
from kc_utils.analysis.heads import position_masks, resolve_heads
from kc_utils.analysis.lens import component_logits, decompose_residual_with_cache, logit_lens, parse_node
from kc_utils.analysis.wrong_answers import AttributeIndex, name_wrong_answers
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.graph import Graph
from kc_utils.data.metrics import answer_logits, logit_diff, rank_of
from kc_utils.data.prompts import PromptBatch, make_batch

__all__ = [
    "ALPHA",
    "INTERVENTIONS",
    "KNOWLEDGE_RULES",
    "PROMPT_KINDS",
    "FailureAnalysis",
    "analyse_failures",
    "answered_and_unknown",
    "baseline_head_sets",
    "classify_from_lens",
    "case_summary",
    "classify_and_name",
    "classify_prompts",
    "describe_case",
    "describe_departures",
    "describe_enrichment",
    "describe_explained",
    "describe_kinds",
    "describe_repair",
    "describe_survey",
    "describe_wrong_answers",
    "explaining_heads",
    "failure_summary",
    "head_logit_difference",
    "last_position_head_outputs",
    "patch_heads_from_prompts",
    "pick_case",
    "rank_curves",
    "rank_heads",
    "MIN_HOLDOUT_FAILURES",
    "permutation_p_value",
    "repair",
    "repair_by_each_head",
    "repair_summary",
    "split_failures",
    "upstream_node_scores",
    "with_wrong_answers",
    "wrong_answer_circuit",
    "wrong_minus_correct",
]

#: The classes of :func:`classify_from_lens`.
PROMPT_KINDS = ("correct", "knowledge_present", "knowledge_absent")
#: Where the correct answer must be found for the knowledge to count as present.
KNOWLEDGE_RULES = ("subject", "last", "either", "both")
#: How :func:`repair` intervenes on a head set.
INTERVENTIONS = ("patch", "mean", "zero")

MIN_HOLDOUT_FAILURES = 4
"""Fewest knowledge-present failures a repair is scored on: two to choose heads on, two held out."""

ALPHA = 0.05
"""A tested head set "beats" its random sets when its permutation p-value is below this."""

_LENS_COLUMNS = ("prompt_index", "layer", "rank", "subject_rank")


# ----------------------------------------------------------------------------- 1. classify
def _check_rank(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a whole number ≥ 0 (0 = top-1), got {value!r}")


def classify_from_lens(
    lens: pd.DataFrame, subject_max_rank: int = 2, last_max_rank: int = 2, rule: str = "subject"
) -> pd.DataFrame:
    """Classify prompts from a logit-lens table of their **correct** answers (module table).

    Args:
        lens: a :func:`kc_utils.analysis.lens.logit_lens` frame (one row per prompt × layer with
            ``prompt_index``, ``layer``, ``rank``, ``subject_rank``); its last layer is the model's output.
        subject_max_rank: the correct answer counts as known at the subject when its best rank over
            the subject's positions reaches this at some layer (0 = top-1).
        last_max_rank: the same at the last position, at some layer **before** the final one.
        rule: ``"subject"``, ``"last"``, ``"either"`` or ``"both"`` (module docstring).

    Returns:
        One row per prompt: ``prompt_index``, ``prompt`` (if the table has it), ``final_rank``,
        ``subject_best_rank`` and ``subject_best_layer`` (the first layer reaching it),
        ``last_best_rank`` and ``last_best_layer`` (layers before the final one), ``kind``.

    Raises:
        ValueError: a table without the logit-lens columns, a bad threshold or rule, or a rule that
            needs subject ranks on a table made without subjects.
    """
    missing = [c for c in _LENS_COLUMNS if c not in lens.columns]
    if missing:
        raise ValueError(f"not a logit_lens table: it lacks columns {missing}")
    if lens.empty:
        raise ValueError("the logit-lens table is empty: no prompts to classify")
    _check_rank(subject_max_rank, "subject_max_rank")
    _check_rank(last_max_rank, "last_max_rank")
    if rule not in KNOWLEDGE_RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {KNOWLEDGE_RULES}")
    if rule != "last" and lens["subject_rank"].isna().all():
        raise ValueError(
            f"rule {rule!r} reads the subject's positions, but the table has no subject ranks; "
            "run logit_lens(model, batch, subjects) or use rule='last'"
        )
    final_layer = lens["layer"].max()
    records = []
    for index, rows in lens.sort_values(["prompt_index", "layer"]).groupby("prompt_index", sort=True):
        final = rows[rows["layer"] == final_layer]
        if len(final) != 1:
            raise ValueError(f"prompt {index} has {len(final)} rows at the final layer {final_layer}; expected 1")
        subject = rows.dropna(subset=["subject_rank"])
        before = rows[rows["layer"] < final_layer]
        s_best = float(subject["subject_rank"].min()) if len(subject) else float("nan")
        l_best = float(before["rank"].min()) if len(before) else float("nan")
        record = {
            "prompt_index": int(index),
            "final_rank": int(final["rank"].iloc[0]),
            "subject_best_rank": s_best,
            "subject_best_layer": float(subject.loc[subject["subject_rank"] == s_best, "layer"].iloc[0])
            if len(subject)
            else float("nan"),
            "last_best_rank": l_best,
            "last_best_layer": float(before.loc[before["rank"] == l_best, "layer"].iloc[0])
            if len(before)
            else float("nan"),
        }
        if "prompt" in rows:
            record = {"prompt_index": record["prompt_index"], "prompt": rows["prompt"].iloc[0], **record}
        at_subject = s_best <= subject_max_rank  # NaN compares False
        at_last = l_best <= last_max_rank
        present = {
            "subject": at_subject,
            "last": at_last,
            "either": at_subject or at_last,
            "both": at_subject and at_last,
        }
        if record["final_rank"] == 0:
            record["kind"] = "correct"
        else:
            record["kind"] = "knowledge_present" if present[rule] else "knowledge_absent"
        records.append(record)
    return pd.DataFrame.from_records(records)


def classify_prompts(
    model: Any,
    batch: PromptBatch,
    subjects: Sequence[str],
    subject_max_rank: int = 2,
    last_max_rank: int = 2,
    rule: str = "subject",
) -> pd.DataFrame:
    """:func:`classify_from_lens` on the batch's correct answers, with what the model says instead.

    Returns:
        The classification plus ``subject``, ``answer`` (the correct answer's string),
        ``prediction`` (top-1 token string), ``prediction_id``, ``confidence`` (top-1 probability)
        and ``answer_prob`` (the correct answer's probability).
    """
    _check_rank(subject_max_rank, "subject_max_rank")
    _check_rank(last_max_rank, "last_max_rank")
    if rule not in KNOWLEDGE_RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {KNOWLEDGE_RULES}")
    table = classify_from_lens(logit_lens(model, batch, subjects), subject_max_rank, last_max_rank, rule)
    with torch.no_grad():
        final = answer_logits(models.run_with_hooks(model, batch.clean), batch).float().softmax(-1)
    top = final.max(-1)
    table.insert(2, "subject", list(subjects))
    table.insert(3, "answer", list(batch.answers))
    table["prediction"] = models.token_strings(model, top.indices.tolist())
    table["prediction_id"] = top.indices.tolist()
    table["confidence"] = top.values.tolist()
    table["answer_prob"] = final.gather(1, batch.answer[:, None])[:, 0].tolist()
    return table


def classify_and_name(
    model: Any,
    relation: str,
    subjects: Sequence[str],
    answers: Sequence[str],
    template: str,
    index: AttributeIndex,
    subject_max_rank: int = 2,
    last_max_rank: int = 2,
    rule: str = "subject",
) -> tuple[pd.DataFrame, PromptBatch]:
    """:func:`classify_prompts` of the facts asked with ``template``, wrong answers named.

    Returns:
        ``(kinds, batch)``: the classification with ``wrong_kind`` and ``wrong_relations``
        (:func:`kc_utils.analysis.wrong_answers.name_wrong_answers`; ``"correct"``/``""`` where
        right), and the batch it was measured on.
    """
    if "{}" not in template:
        raise ValueError(f"the template {template!r} needs a '{{}}' where the subject goes")
    if len(subjects) != len(answers):
        raise ValueError(f"{len(subjects)} subjects but {len(answers)} answers; give one answer per subject")
    batch = make_batch(model, [template.replace("{}", s) for s in subjects], list(answers))
    kinds = classify_prompts(model, batch, subjects, subject_max_rank, last_max_rank, rule)
    named = name_wrong_answers(index, relation, list(subjects), kinds["prediction_id"].tolist(), batch.answer.tolist())
    kinds["wrong_kind"] = named["kind"].to_numpy()
    kinds["wrong_relations"] = named["relations"].to_numpy()
    return kinds, batch


def answered_and_unknown(kinds: pd.DataFrame) -> dict[str, list[int]]:
    """Positions of the facts a model answers and of those it does not know, from a classification.

    The no-knowledge baseline of a model without held-out subjects: ``"answered"`` rows are ``correct``,
    ``"unknown"`` rows are ``knowledge_absent`` (knowledge-present failures belong to neither).

    Args:
        kinds: :func:`classify_and_name` (or :func:`classify_prompts`) table, one row per prompt in batch order.

    Raises:
        ValueError: the table lacks the ``kind`` column.
    """
    if "kind" not in kinds:
        raise ValueError("kinds lacks the 'kind' column; use classify_and_name")
    kind = kinds["kind"].to_numpy()
    return {
        "answered": [i for i, k in enumerate(kind) if k == "correct"],
        "unknown": [i for i, k in enumerate(kind) if k == "knowledge_absent"],
    }


def pick_case(kinds: pd.DataFrame) -> int:
    """The knowledge-present failure to read in detail: the most confident one whose wrong answer is
    another attribute of the subject, else the most confident knowledge-present failure.

    Raises:
        ValueError: no knowledge-present failure in the table.
    """
    present = kinds[kinds["kind"] == "knowledge_present"]
    if present.empty:
        raise ValueError("no knowledge-present failure to read; try another relation or looser thresholds")
    same = present[present["wrong_kind"] == "same_subject"] if "wrong_kind" in present else present.iloc[:0]
    chosen = same if len(same) else present
    return int(chosen.sort_values("confidence", ascending=False, kind="stable").index[0])


def rank_curves(lens: pd.DataFrame, max_rank: int = 0) -> pd.DataFrame:
    """Per layer: median rank of the target and share of prompts at rank ``≤ max_rank``, subject and last position.

    Returns:
        One row per layer: ``layer``, ``stage`` (if present), ``last_median_rank``,
        ``subject_median_rank``, ``last_share``, ``subject_share``, ``n_prompts``.
    """
    missing = [c for c in _LENS_COLUMNS if c not in lens.columns]
    if missing:
        raise ValueError(f"not a logit_lens table: it lacks columns {missing}")
    _check_rank(max_rank, "max_rank")
    records = []
    for layer, rows in lens.groupby("layer", sort=True):
        records.append(
            {
                "layer": int(layer),
                **({"stage": rows["stage"].iloc[0]} if "stage" in rows else {}),
                "last_median_rank": float(rows["rank"].median()),
                "subject_median_rank": float(rows["subject_rank"].median()),
                "last_share": float((rows["rank"] <= max_rank).mean()),
                "subject_share": float((rows["subject_rank"] <= max_rank).mean()),
                "n_prompts": int(rows["prompt_index"].nunique()),
            }
        )
    return pd.DataFrame.from_records(records)


# ----------------------------------------------------------------------------- 2. components
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


# ----------------------------------------------------------------------------- 3. repair
def last_position_head_outputs(model: Any, source: PromptBatch) -> Float[Tensor, "layer b head d"]:
    """Every head's output at each prompt's last position (computed once, reused by every patch)."""
    n_layers = models.model_shape(model).n_layers
    with torch.no_grad():
        _, cache = models.run_with_cache(model, source.clean, [models.head_result_hook(i) for i in range(n_layers)])
    rows = torch.arange(len(source), device=source.clean.device)
    return torch.stack([cache[models.head_result_hook(i)][rows, source.last_pos] for i in range(n_layers)])


def patch_heads_from_prompts(
    model: Any,
    batch: PromptBatch,
    source: PromptBatch,
    heads: Sequence[str],
    source_outputs: Float[Tensor, "layer b head d"] | None = None,
) -> Float[Tensor, "b p v"]:
    """Logits of ``batch`` with ``heads``' last-position outputs taken from ``source``'s last positions.

    ``source`` holds one prompt per prompt of ``batch`` (e.g. the same fact in a training template);
    it may have another token length: the head output at ``source.last_pos[i]`` is written at
    ``batch.last_pos[i]``. Every other component runs on ``batch`` as usual.

    Args:
        source_outputs: :func:`last_position_head_outputs` of ``source``, when already computed.

    Raises:
        ValueError: batches of different sizes, or an empty head set.
    """
    if len(source) != len(batch):
        raise ValueError(f"the source has {len(source)} prompts but the batch {len(batch)}; pair them one to one")
    by_layer = heads_by_layer(model, heads)
    taken = source_outputs if source_outputs is not None else last_position_head_outputs(model, source)
    if taken.shape[1] != len(batch):
        raise ValueError(f"source_outputs hold {taken.shape[1]} prompts but the batch {len(batch)}")
    rows = torch.arange(len(batch), device=batch.clean.device)

    def write(layer: int, head: int, result: Tensor) -> None:
        result[rows, batch.last_pos, head] = taken[layer, :, head].to(result.dtype)

    return run_with_head_writes(model, batch.clean, by_layer, write)


def baseline_head_sets(
    pool: Sequence[str], size: int, n: int, exclude: Sequence[str] = (), seed: int = 0
) -> list[list[str]]:
    """The random-set baseline of a ``size``-head set: **every** set of ``size`` heads from ``pool`` minus
    ``exclude`` when there are at most ``n`` of them (the exact permutation distribution; a small pool
    such as the organism's 11 other writing heads gives 11 single heads, not ``n`` draws that repeat
    them), otherwise ``n`` random sets (:func:`kc_utils.analysis.head_groups.random_head_sets`).

    Raises:
        ValueError: like :func:`~kc_utils.analysis.head_groups.random_head_sets`.
    """
    excluded = set(exclude)
    candidates = [h for h in dict.fromkeys(pool) if h not in excluded]
    if size >= 1 and len(candidates) >= size and math.comb(len(candidates), size) <= n:
        return [list(c) for c in itertools.combinations(candidates, size)]
    return random_head_sets(pool, size, n, exclude=exclude, seed=seed)


def repair(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    intervention: str = "patch",
    source: PromptBatch | None = None,
    n_random: int = 20,
    pool: Sequence[str] | None = None,
    seed: int = 0,
    mean_reference: PromptBatch | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Intervene on ``heads`` and on ``n_random`` random same-size sets; how often is the correct answer top-1?

    The random sets are :func:`baseline_head_sets`: every same-size set of the pool minus ``heads`` when
    there are at most ``n_random`` of them (an exact baseline), else ``n_random`` random draws.

    Args:
        batch: the failing prompts, ``batch.answer`` = the correct answers.
        heads: the set under test.
        intervention: ``"patch"`` (outputs at the last position from ``source``,
            :func:`patch_heads_from_prompts`), ``"mean"`` or ``"zero"`` (ablation at every position,
            :func:`kc_utils.analysis.head_groups.group_ablation`).
        source: for ``"patch"``: the same facts in prompts the model answers (e.g. a training template).
        pool: heads the random sets are drawn from, minus ``heads`` (default every head; pass
            :func:`kc_utils.analysis.head_groups.writing_heads` so that silent heads do not flatter the
            baseline).

    Returns:
        One row per set: ``set`` (``"none"``, ``"group"``, ``"random"``), ``draw``, ``heads``,
        ``n_heads``, ``top1`` (**the repair rate**: share of prompts whose top-1 is now correct)
        and ``prob`` (mean probability of the correct answer). Summarise it with
        :func:`kc_utils.analysis.head_groups.group_ablation_summary`.

    Raises:
        ValueError: an unknown intervention, ``"patch"`` without a source, an empty set, or too
            few heads in the pool for the random sets.
    """
    if intervention not in INTERVENTIONS:
        raise ValueError(f"unknown intervention {intervention!r}; use one of {INTERVENTIONS}")
    if intervention == "patch" and source is None:
        raise ValueError("intervention='patch' needs a source batch (the same facts in a template the model answers)")
    group = resolve_heads(model, list(heads))
    if not group:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    pool_heads = resolve_heads(model, list(pool)) if pool is not None else all_heads(model)
    draws = baseline_head_sets(pool_heads, len(group), n_random, exclude=group, seed=seed)
    sets = [("none", None, []), ("group", None, group)] + [("random", i, d) for i, d in enumerate(draws)]
    rows = []
    if intervention != "patch":
        needed = sorted({h for _, _, names in sets for h in names})
        means = head_mean_outputs(model, mean_reference if mean_reference is not None else batch, needed)
        final = evaluate_head_sets(model, batch, [names for _, _, names in sets], "ablation", intervention, means)
        for (kind, draw, names), logits in zip(sets, final):
            logits = logits.float()
            rows.append(
                {
                    "set": kind,
                    "draw": draw,
                    "heads": tuple(names),
                    "n_heads": len(names),
                    "top1": float((rank_of(logits, batch.answer) == 0).float().mean()),
                    "prob": float(logits.softmax(-1).gather(1, batch.answer[:, None])[:, 0].mean()),
                }
            )
        return pd.DataFrame.from_records(rows)
    taken = last_position_head_outputs(model, source) if len(source) == len(batch) else None
    with torch.no_grad():
        rows.append(score_row("none", (), models.run_with_hooks(model, batch.clean), batch, None))
    for kind, draw, names in tqdm(sets[1:], desc="head sets", disable=not progress, leave=False):
        rows.append(score_row(kind, names, patch_heads_from_prompts(model, batch, source, names, taken), batch, draw))
    return pd.DataFrame.from_records(rows)


def repair_by_each_head(
    model: Any, batch: PromptBatch, source: PromptBatch, heads: Sequence[str] | None = None
) -> pd.DataFrame:
    """Patch each head alone from ``source``: per prompt × head, is the correct answer top-1 afterwards?

    Returns:
        One row per prompt × head: ``prompt_index``, ``head``, ``repaired`` (bool), ``answer_rank``.
    """
    names = resolve_heads(model, heads)
    taken = last_position_head_outputs(model, source) if len(source) == len(batch) else None
    records = []
    for name in names:
        final = answer_logits(patch_heads_from_prompts(model, batch, source, [name], taken), batch).float()
        ranks = rank_of(final, batch.answer)
        records += [
            {"prompt_index": i, "head": name, "repaired": bool(ranks[i] == 0), "answer_rank": int(ranks[i])}
            for i in range(len(batch))
        ]
    return pd.DataFrame.from_records(records)


def split_failures(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``n`` failures (positions ``0 … n-1``) into a half that chooses heads and a held-out half that scores them.

    Deterministic in ``seed``; the choosing half gets the extra failure when ``n`` is odd. Both halves
    are returned sorted.

    Raises:
        ValueError: fewer than :data:`MIN_HOLDOUT_FAILURES` failures (a held-out score needs two on each side).
    """
    if n < MIN_HOLDOUT_FAILURES:
        raise ValueError(
            f"{n} failures cannot be split into heads chosen on some and scored on others; "
            f"at least {MIN_HOLDOUT_FAILURES} are needed (raise n_prompts or max_failures)"
        )
    order = list(range(n))
    np.random.default_rng(seed).shuffle(order)
    cut = (n + 1) // 2
    return sorted(order[:cut]), sorted(order[cut:])


def permutation_p_value(group: float, randoms: Sequence[float]) -> float:
    """One-sided permutation p-value of a head set's repair rate against random sets of the same size.

    ``(1 + #{random ≥ group}) / (1 + #random)``: under the null that the tested set is one more
    random set, the chance that it ranks this high among them (the +1 counts the tested set, so the
    p-value is never 0). NaN without random sets.
    """
    values = np.asarray(list(randoms), dtype=float)
    if values.size == 0:
        return float("nan")
    return float((1 + np.sum(values >= group - 1e-9)) / (1 + values.size))


def repair_summary(table: pd.DataFrame) -> dict[str, float]:
    """:func:`kc_utils.analysis.head_groups.group_ablation_summary` of a :func:`repair` table plus
    ``p_value`` (:func:`permutation_p_value` of the tested set's ``top1`` among the random sets'),
    ``n_prompts`` (the prompts the rates are measured on) and ``n_distinct`` (distinct random sets)."""
    summary = group_ablation_summary(table)
    randoms = table[table["set"] == "random"]
    summary["p_value"] = permutation_p_value(summary["top1_group"], randoms["top1"].tolist())
    summary["n_distinct"] = float(len({tuple(sorted(h)) for h in randoms["heads"]})) if "heads" in table else np.nan
    if "n_prompts" in table:
        summary["n_prompts"] = float(table["n_prompts"].iloc[0])
    return summary


# ----------------------------------------------------------------------------- 4. one relation, end to end
@dataclass(frozen=True)
class FailureAnalysis:
    """Everything :func:`analyse_failures` measured for one relation.

    Attributes:
        kinds: :func:`classify_prompts` of every prompt, with the wrong answers named
            (``wrong_kind``, ``wrong_relations``; :func:`kc_utils.analysis.wrong_answers.name_wrong_answers`).
        failures: ``prompt_index`` of the knowledge-present failures traced (rows of ``kinds``; at most
            ``max_failures`` of them).
        batch: those failures, correct answers in ``answer``, wrong ones in ``corrupt_answer``.
        source: the same facts in the source template (what the patch reads), or ``None``.
        subjects: the failures' subjects.
        head_table: :func:`head_logit_difference` on the failures.
        explained: :func:`explaining_heads`.
        heads: :func:`rank_heads` on every traced failure (descriptive).
        choose, held_out: positions in ``failures`` (and rows of ``batch``) of the half that chooses the
            heads and of the half the repairs are scored on (:func:`split_failures`); both empty when
            there are fewer than :data:`MIN_HOLDOUT_FAILURES` failures (then no repair is scored).
        chosen_heads: :func:`rank_heads` on the choosing half only (what the repaired sets are picked from).
        repairs: ``{n: repair table}`` for the top-``n`` heads of ``chosen_heads`` by ``mean_dla_diff``,
            scored on the held-out half (:func:`repair`; the table has an ``n_prompts`` column).
        each_head: :func:`repair_by_each_head` on every traced failure (an exploration), or ``None``
            (no source, or ``each_head=False``).
        best_single: the head whose patch alone repairs most failures of the choosing half, scored on the
            held-out half against random single heads (a :func:`repair` table), or ``None``.
    """

    kinds: pd.DataFrame
    failures: list[int]
    batch: PromptBatch | None
    source: PromptBatch | None
    subjects: list[str]
    head_table: pd.DataFrame | None
    explained: pd.DataFrame | None
    heads: pd.DataFrame | None
    repairs: dict[int, pd.DataFrame]
    each_head: pd.DataFrame | None
    choose: list[int] = field(default_factory=list)
    held_out: list[int] = field(default_factory=list)
    chosen_heads: pd.DataFrame | None = None
    best_single: pd.DataFrame | None = None


def analyse_failures(
    model: Any,
    relation: str,
    subjects: Sequence[str],
    answers: Sequence[str],
    template: str,
    source_template: str | None,
    index: AttributeIndex,
    repair_sizes: Sequence[int] = (1,),
    max_heads: int = 3,
    n_random: int = 20,
    intervention: str = "patch",
    pool: Sequence[str] | None = None,
    seed: int = 0,
    subject_max_rank: int = 2,
    last_max_rank: int = 2,
    rule: str = "subject",
    max_failures: int | None = None,
    each_head: bool = True,
    progress: bool = False,
) -> FailureAnalysis:
    """Classify ``relation``'s facts asked with ``template``; trace and repair the knowledge-present failures.

    Args:
        subjects, answers: the facts (subject and correct object strings).
        template: the query, with ``{}`` for the subject (e.g. a template the model never saw).
        source_template: the same facts asked in a template the model answers (the patch source);
            ``None`` for ``intervention`` ``"mean"``/``"zero"`` only.
        index: the known facts, to name the wrong answers.
        repair_sizes: repair the top-``n`` heads by ``mean_dla_diff`` for each ``n`` given. The heads
            are ranked on one half of the failures and the repair is scored on the other
            (:func:`split_failures`, seeded by ``seed``); with fewer than :data:`MIN_HOLDOUT_FAILURES`
            failures no repair is scored (``repairs`` is empty).
        max_heads: the largest set :func:`explaining_heads` looks for.
        pool: heads of the random sets (default :func:`kc_utils.analysis.head_groups.writing_heads` on the failures).
        max_failures: trace and repair at most this many knowledge-present failures (the first
            ones, in prompt order; ``None``: all). The classification always covers every prompt.
        each_head: also patch every pool head alone (:func:`repair_by_each_head`; needs a source), and
            score the head that repairs most of the choosing half on the held-out half (``best_single``).
    """
    if "{}" not in template or (source_template is not None and "{}" not in source_template):
        raise ValueError("templates need a '{}' where the subject goes")
    if intervention == "patch" and source_template is None:
        raise ValueError("intervention='patch' needs a source_template")
    subjects, answers = list(subjects), list(answers)
    kinds, batch = classify_and_name(
        model, relation, subjects, answers, template, index, subject_max_rank, last_max_rank, rule
    )
    if max_failures is not None and (isinstance(max_failures, bool) or max_failures < 1):
        raise ValueError(f"max_failures must be a whole number ≥ 1 or None, got {max_failures!r}")
    failures = kinds.index[kinds["kind"] == "knowledge_present"].tolist()[:max_failures]
    if not failures:
        return FailureAnalysis(kinds, [], None, None, [], None, None, None, {}, None)
    fail_subjects = [subjects[i] for i in failures]
    wrong = with_wrong_answers(batch.select(failures), kinds.loc[failures, "prediction_id"].tolist())
    source = None
    if source_template is not None:
        source = make_batch(
            model, [source_template.replace("{}", s) for s in fail_subjects], [answers[i] for i in failures]
        )
    head_table = head_logit_difference(model, wrong, fail_subjects)
    ranked = rank_heads(head_table)
    pool = list(pool) if pool is not None else writing_heads(model, wrong)
    each = repair_by_each_head(model, wrong, source, pool) if source is not None and each_head else None
    explained = explaining_heads(head_table, max_heads)
    if len(failures) < MIN_HOLDOUT_FAILURES:
        return FailureAnalysis(kinds, failures, wrong, source, fail_subjects, head_table, explained, ranked, {}, each)
    choose, held = split_failures(len(failures), seed)
    chosen = rank_heads(head_table[head_table["prompt_index"].isin(choose)])
    test_batch = wrong.select(held)
    test_source = source.select(held) if source is not None else None

    def scored(heads: Sequence[str]) -> pd.DataFrame:
        table = repair(model, test_batch, heads, intervention, test_source, n_random, pool, seed, progress=progress)
        return table.assign(n_prompts=len(held))

    repairs = {n: scored(chosen["head"].tolist()[:n]) for n in repair_sizes}
    best_single = None
    if each is not None:
        on_choose = each[each["prompt_index"].isin(choose)].groupby("head", sort=False)["repaired"].mean()
        best_single = scored([on_choose.sort_values(ascending=False, kind="stable").index[0]])
    return FailureAnalysis(
        kinds,
        failures,
        wrong,
        source,
        fail_subjects,
        head_table,
        explained,
        ranked,
        repairs,
        each,
        choose,
        held,
        chosen,
        best_single,
    )


def failure_summary(analysis: FailureAnalysis, relation: str = "") -> dict[str, Any]:
    """One row of numbers for a :class:`FailureAnalysis` (the cross-relation table).

    Keys: ``relation``, ``n_prompts``, ``n_wrong``, ``n_present``, ``present_share`` (of the wrong),
    ``n_traced`` (the failures the head numbers below are measured on),
    ``same_subject_share`` (of the present failures, the wrong answer is another attribute of the
    subject), ``top_wrong_relation``, ``top_head``, ``top_head_share`` (prompts where it has the
    largest ``dla_diff``), ``by_one_head``, ``by_small_set``, and for the smallest repair size
    ``n``, chosen on half the failures and scored on the other half: ``n_held_out``,
    ``repair_heads``, ``repaired``, ``random_mean``, ``random_std``, ``n_random``, ``p_value``
    (:func:`repair_summary`); then ``best_single_head`` (the head whose patch alone repairs most of
    the choosing half), ``best_single_repair``, ``best_single_random_mean``, ``best_single_random_std``
    and ``best_single_p_value`` on the held-out half. Without a held-out repair these are NaN (or "").
    """
    kinds = analysis.kinds
    wrong = kinds[kinds["kind"] != "correct"]
    present = kinds[kinds["kind"] == "knowledge_present"]
    same = present[present["wrong_kind"] == "same_subject"] if "wrong_kind" in present else present.iloc[:0]
    nan = float("nan")
    row: dict[str, Any] = {
        "relation": relation,
        "n_prompts": len(kinds),
        "n_wrong": len(wrong),
        "n_present": len(present),
        "present_share": len(present) / len(wrong) if len(wrong) else nan,
        "n_traced": len(analysis.failures),
        "same_subject_share": len(same) / len(present) if len(present) else nan,
        "top_wrong_relation": same["wrong_relations"].value_counts().index[0] if len(same) else "",
        "top_head": "",
        "top_head_share": nan,
        "by_one_head": nan,
        "by_small_set": nan,
        "n_held_out": len(analysis.held_out),
        "repair_heads": "",
        "repaired": nan,
        "random_mean": nan,
        "random_std": nan,
        "n_random": 0,
        "p_value": nan,
        "best_single_head": "",
        "best_single_repair": nan,
        "best_single_random_mean": nan,
        "best_single_random_std": nan,
        "best_single_p_value": nan,
    }
    if analysis.heads is None or analysis.explained is None:
        return row
    row |= {
        "top_head": analysis.heads["head"].iloc[0],
        "top_head_share": float(analysis.heads["top_share"].iloc[0]),
        "by_one_head": float(analysis.explained["by_one_head"].mean()),
        "by_small_set": float(analysis.explained["by_small_set"].mean()),
    }
    if analysis.repairs:
        table = analysis.repairs[min(analysis.repairs)]
        summary = repair_summary(table)
        row |= {
            "repair_heads": ", ".join(table.loc[table["set"] == "group", "heads"].iloc[0]),
            "repaired": summary["top1_group"],
            "random_mean": summary["top1_random_mean"],
            "random_std": summary["top1_random_std"],
            "n_random": int(summary["n_random"]),
            "p_value": summary["p_value"],
        }
    if analysis.best_single is not None:
        summary = repair_summary(analysis.best_single)
        row |= {
            "best_single_head": analysis.best_single.loc[analysis.best_single["set"] == "group", "heads"].iloc[0][0],
            "best_single_repair": summary["top1_group"],
            "best_single_random_mean": summary["top1_random_mean"],
            "best_single_random_std": summary["top1_random_std"],
            "best_single_p_value": summary["p_value"],
        }
    return row


# ----------------------------------------------------------------------------- 5. sentences
def _share(n: float, total: float) -> str:
    return f"{n:.0f} of {total:.0f} ({n / total:.0%})" if total else f"{n:.0f} of 0"


def describe_kinds(kinds: pd.DataFrame, group_column: str = "group") -> str:
    """One sentence per group of a classification table: how many prompts of each kind, and confidence.

    Args:
        kinds: rows with ``group_column``, ``kind`` (:data:`PROMPT_KINDS`) and ``confidence``.

    Returns:
        E.g. ``"unseen template: 10 prompts, 6 of 10 (60%) correct; of the 4 wrong, 3 of 4 (75%) are
        knowledge-present (mean confidence 0.80) and 1 of 4 (25%) knowledge-absent (0.55)."``, one
        line per group in order of appearance.
    """
    needed = {group_column, "kind", "confidence"}
    if not needed <= set(kinds.columns):
        raise ValueError(f"the classification table lacks columns {sorted(needed - set(kinds.columns))}")
    unknown = set(kinds["kind"]) - set(PROMPT_KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; expected {PROMPT_KINDS}")
    lines = []
    for group, rows in kinds.groupby(group_column, sort=False):
        wrong = rows[rows["kind"] != "correct"]
        parts = [f"{group}: {len(rows)} prompts, {_share((rows['kind'] == 'correct').sum(), len(rows))} correct"]
        if len(wrong):
            detail = []
            for kind, label in (("knowledge_present", "knowledge-present"), ("knowledge_absent", "knowledge-absent")):
                these = wrong[wrong["kind"] == kind]
                conf = f"mean confidence {these['confidence'].mean():.2f}" if len(these) else "none"
                detail.append(f"{_share(len(these), len(wrong))} {label} ({conf})")
            parts.append(f"of the {len(wrong)} wrong, " + " and ".join(detail))
        lines.append("; ".join(parts) + ".")
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"p = {value:.3f}" if value < 0.01 else f"p = {value:.2f}"


def describe_repair(
    summary: Mapping[str, float], heads: Sequence[str], intervention: str = "patch", chosen: str = ""
) -> str:
    """A sentence from a :func:`repair_summary` of a :func:`repair` table.

    Says how often the correct answer is top-1 before, after the intervention on ``heads``, and after
    the random sets (mean ± std, how many), with the permutation p-value; the set "beats" the random
    sets when ``p < ALPHA`` (0.05) — or the baseline is said to be degenerate (std 0).

    Args:
        chosen: how the heads were chosen, shown after them (e.g. "chosen on the other 23 failures").
    """
    needed = ("top1_original", "top1_group", "top1_random_mean", "top1_random_std", "n_random", "p_value")
    missing = [k for k in needed if k not in summary]
    if missing:
        raise ValueError(f"not a repair_summary: it lacks {missing}")
    if not heads:
        raise ValueError("name the head set the summary belongs to")
    before, group = summary["top1_original"], summary["top1_group"]
    mean, std, n = summary["top1_random_mean"], summary["top1_random_std"], int(summary["n_random"])
    verb = {"patch": "patching", "mean": "mean-ablating", "zero": "zero-ablating"}.get(intervention, intervention)
    on = f"Of {summary['n_prompts']:.0f} held-out failures" if "n_prompts" in summary else "Of the prompts"
    text = (
        f"{on}, the correct answer is top-1 for {before:.0%} before any intervention; {verb} {', '.join(heads)}"
        f"{f' ({chosen})' if chosen else ''} makes it top-1 for {group:.0%}, against {mean:.0%} ± {std:.0%} for "
        f"{n} random sets of {len(heads)} head{'s' if len(heads) != 1 else ''}"
    )
    if n == 0 or math.isnan(mean):
        return text + ". There is no random baseline to compare with."
    text += f" ({_p(summary['p_value'])}, permutation over the random sets)."
    if std == 0:
        return text + (
            f" The random baseline is degenerate: every random set gives {mean:.0%}, so the comparison rests "
            "on a single value."
        )
    verdict = "beats the random sets" if summary["p_value"] < ALPHA else "does not beat the random sets"
    text += f" The set {verdict} at p < {ALPHA:g}."
    if 1 / (n + 1) >= ALPHA:
        text += (
            f" With {n} random sets the smallest p-value possible is 1/{n + 1} = {1 / (n + 1):.2f}, so no set of this "
            f"size can reach p < {ALPHA:g} here."
        )
    return text


def describe_wrong_answers(kinds: pd.DataFrame, group_column: str = "group") -> str:
    """One sentence per group: what the wrong answers are (``wrong_kind`` of :func:`classify_and_name`).

    E.g. ``"known subjects: of 4 wrong answers, 3 of 4 (75%) are another attribute of the subject
    (most often person_native_language, 3), 1 of 4 (25%) an object of the asked relation for another
    subject and 0 of 4 (0%) neither."``
    """
    needed = {group_column, "wrong_kind", "wrong_relations"}
    if not needed <= set(kinds.columns):
        raise ValueError(f"the table lacks columns {sorted(needed - set(kinds.columns))}; use classify_and_name")
    lines = []
    for group, rows in kinds.groupby(group_column, sort=False):
        wrong = rows[rows["wrong_kind"] != "correct"]
        if wrong.empty:
            lines.append(f"{group}: no wrong answers.")
            continue
        same = wrong[wrong["wrong_kind"] == "same_subject"]
        which = ""
        if len(same):
            counts = same["wrong_relations"].value_counts()
            which = f" (most often {counts.index[0]}, {counts.iloc[0]})"
        n = len(wrong)
        lines.append(
            f"{group}: of {n} wrong answers, {_share(len(same), n)} are another attribute of the subject{which}, "
            f"{_share((wrong['wrong_kind'] == 'relation_object').sum(), n)} an object of the asked relation for "
            f"another subject and {_share((wrong['wrong_kind'] == 'other').sum(), n)} neither."
        )
    return "\n".join(lines)


def case_summary(
    correct_lens: pd.DataFrame, wrong_lens: pd.DataFrame, head_rows: pd.DataFrame, top_tokens: Sequence[str] = ()
) -> dict[str, Any]:
    """The numbers of one case (one prompt): where each answer appears, and the head that favours the wrong one.

    Args:
        correct_lens, wrong_lens: :func:`kc_utils.analysis.lens.logit_lens` rows of the prompt with the
            correct and the wrong answer as target.
        head_rows: :func:`head_logit_difference` rows of the prompt.
        top_tokens: the chosen head's top tokens (e.g. from :func:`kc_utils.analysis.lens.project_node`).

    Returns:
        ``prompt``, ``correct``, ``wrong``; for each answer ``a`` in (``correct``, ``wrong``):
        ``{a}_subject_rank``/``{a}_subject_layer`` (best rank at the subject and the first layer with
        it), ``{a}_last_top1_layer`` (first layer where it is top-1 at the last position, NaN if
        never); ``head``, ``head_dla_wrong``, ``head_dla_correct``, ``head_attn_subject``,
        ``head_top_key``, ``head_share`` (its ``dla_diff`` over the model's margin), ``logit_diff``
        and ``top_tokens``.
    """
    if head_rows.empty or correct_lens.empty or wrong_lens.empty:
        raise ValueError("the case has no rows; pass one prompt's lens tables and head rows")
    out: dict[str, Any] = {
        "prompt": correct_lens["prompt"].iloc[0] if "prompt" in correct_lens else "",
        "correct": correct_lens["target"].iloc[0],
        "wrong": wrong_lens["target"].iloc[0],
    }
    for label, table in (("correct", correct_lens), ("wrong", wrong_lens)):
        table = table.sort_values("layer")
        best = float(table["subject_rank"].min())
        out[f"{label}_subject_rank"] = best
        out[f"{label}_subject_layer"] = float(table.loc[table["subject_rank"] == best, "layer"].iloc[0])
        top = table.loc[table["rank"] == 0, "layer"]
        out[f"{label}_last_top1_layer"] = float(top.iloc[0]) if len(top) else float("nan")
    head = head_rows.sort_values("dla_diff", ascending=False, kind="stable").iloc[0]
    margin = float(head["logit_diff"])
    out |= {
        "head": head["head"],
        "head_dla_wrong": float(head["dla_wrong"]),
        "head_dla_correct": float(head["dla_correct"]),
        "head_dla_diff": float(head["dla_diff"]),
        "head_attn_subject": float(head["attn_subject"]),
        "head_top_key": head.get("top_key", ""),
        "head_share": float(head["dla_diff"]) / margin if margin else float("nan"),
        "logit_diff": margin,
        "top_tokens": list(top_tokens),
    }
    return out


def _layer(value: float) -> str:
    return "never" if math.isnan(value) else ("the embeddings" if value < 0 else f"block {value:.0f}")


def _top1(value: float) -> str:
    return "never becomes top-1" if math.isnan(value) else f"becomes top-1 after {_layer(value)}"


def describe_case(case: Mapping[str, Any], max_rank: int = 2) -> str:
    """Paragraph reading one case like the paper's Malaysia example, from :func:`case_summary`.

    ``max_rank``: an answer counts as built up at the subject when its best 0-based rank there is at most
    this; the paragraph shows ranks 1-based (rank 1 = top-1), like the figures.
    """
    needed = ("prompt", "correct", "wrong", "head", "head_dla_wrong", "head_dla_correct", "logit_diff")
    missing = [k for k in needed if k not in case]
    if missing:
        raise ValueError(f"not a case_summary: it lacks {missing}")
    c, w = case["correct"], case["wrong"]
    built = [a for a, key in ((c, "correct"), (w, "wrong")) if case[f"{key}_subject_rank"] <= max_rank]
    verdict = {
        2: "both attributes are built up at the subject",
        1: f"only {built[0]!r} is built up at the subject" if built else "",
        0: "neither is built up at the subject",
    }[len(built)]
    where = (
        f"At the subject, {c!r} reaches rank {case['correct_subject_rank'] + 1:.0f} (1 = top-1) after "
        f"{_layer(case['correct_subject_layer'])} and {w!r} rank {case['wrong_subject_rank'] + 1:.0f} after "
        f"{_layer(case['wrong_subject_layer'])}: {verdict} (within the top {max_rank + 1}). At the last position {c!r} "
        f"{_top1(case['correct_last_top1_layer'])} and {w!r} {_top1(case['wrong_last_top1_layer'])}."
    )
    head = (
        f"The head that favours {w!r} most is {case['head']}: it adds {case['head_dla_wrong']:+.2f} to the logit of "
        f"{w!r} and {case['head_dla_correct']:+.2f} to that of {c!r} ({case['head_share']:.0%} of the model's margin "
        f"of {case['logit_diff']:.2f} for the wrong answer), and puts {case['head_attn_subject']:.2f} of the last "
        f"token's attention on the subject (most on {case['head_top_key']!r})."
    )
    tokens = f" Its top tokens at the last position: {', '.join(case['top_tokens'])}." if case.get("top_tokens") else ""
    return f"For {case['prompt']!r} the model answers {w!r}, not {c!r}. {where} {head}{tokens}"


def describe_explained(explained: pd.DataFrame, ranked: pd.DataFrame, max_size: int) -> str:
    """How often one head, or at most ``max_size`` heads, explain the wrong answer (:func:`explaining_heads`,
    :func:`rank_heads`)."""
    for column in ("by_one_head", "by_small_set", "top_head"):
        if column not in explained:
            raise ValueError(f"not an explaining_heads table: it lacks {column!r}")
    if explained.empty or ranked.empty:
        raise ValueError("no failures to describe")
    n = len(explained)
    top = ranked.iloc[0]
    one, small = _share(explained["by_one_head"].sum(), n), _share(explained["by_small_set"].sum(), n)
    return (
        f"Over {n} knowledge-present failures, one head's direct contribution to logit(wrong) − logit(correct) is "
        f"larger than the model's margin in {one}, and at most {max_size} heads' in {small}. The head with the "
        f"largest mean contribution is {top['head']} ({top['mean_dla_diff']:+.2f} on average; the largest of all "
        f"heads in {top['top_share']:.0%} of the failures; {top['attn_subject']:.2f} of its attention on the subject)."
    )


def describe_survey(table: pd.DataFrame) -> str:
    """Across relations (:func:`failure_summary` rows): where knowledge-present failures occur, what repairs them
    on held-out failures (p-values), and which relations have too few failures to hold any out."""
    needed = {"relation", "n_present", "same_subject_share", "repaired", "random_mean", "random_std", "repair_heads"}
    needed |= {"p_value", "n_held_out"}
    if not needed <= set(table.columns):
        raise ValueError(f"not a failure_summary table: it lacks {sorted(needed - set(table.columns))}")
    with_failures = table[table["n_present"] > 0]
    if with_failures.empty:
        return f"None of the {len(table)} relations has a knowledge-present failure."
    scored = with_failures[with_failures["n_held_out"] > 0]
    beats = scored[scored["p_value"] < ALPHA]
    same = with_failures[with_failures["same_subject_share"] > 0.5]

    def one(r: Any) -> str:
        if r.n_held_out == 0:
            return f"{r.relation} ({r.n_present:.0f}; too few to hold out)"
        return (
            f"{r.relation} ({r.n_present:.0f}; {r.repair_heads} repairs {r.repaired:.0%} of {r.n_held_out:.0f} "
            f"held out vs {r.random_mean:.0%} ± {r.random_std:.0%}, {_p(r.p_value)})"
        )

    listed = ", ".join(one(r) for r in with_failures.itertuples())
    text = (
        f"{len(with_failures)} of {len(table)} relations have knowledge-present failures: {listed}. In "
        f"{len(same)} of them most wrong answers are another attribute of the subject "
        f"({', '.join(same['relation']) or 'none'}). Patching the single head with the largest mean contribution on "
        f"half the failures beats random heads on the other half (p < {ALPHA:g}) in {len(beats)} of the "
        f"{len(scored)} relations with enough failures to hold out ({', '.join(beats['relation']) or 'none'})."
    )
    if "n_random" in scored and len(scored) and (1 / (scored["n_random"] + 1) >= ALPHA).all():
        floor = scored[np.isclose(scored["p_value"], 1 / (scored["n_random"] + 1)) & (scored["repaired"] > 0)]
        n = int(scored["n_random"].max())
        text += (
            f" With at most {n} other heads to compare with, no single head can reach p < {ALPHA:g} (the smallest "
            f"p-value is 1/{n + 1}); the head repairs more than every other head in {len(floor)} of them "
            f"({', '.join(floor['relation']) or 'none'})."
        )
    return text


def describe_enrichment(curves: Mapping[str, pd.DataFrame], max_rank: int, layer: int = 0) -> str:
    """Subject enrichment per group from :func:`rank_curves` tables: the correct answer at the subject after a block."""
    if len(curves) < 1:
        raise ValueError("give at least one group's rank curves")
    parts = []
    for group, table in curves.items():
        rows = table[table["layer"] == layer]
        last = table[table["layer"] == table["layer"].max()]
        if rows.empty:
            raise ValueError(f"the curves of {group!r} have no layer {layer}")
        parts.append(
            f"{group}: {rows['subject_share'].iloc[0]:.0%} within the top {max_rank + 1} at the subject after "
            f"block {layer} (median rank {rows['subject_median_rank'].iloc[0] + 1:.0f}, 1 = top-1), "
            f"{last['last_share'].iloc[0]:.0%} at the last position after the final block (median rank "
            f"{last['last_median_rank'].iloc[0] + 1:.0f})"
        )
    return "The correct answer — " + "; ".join(parts) + "."


def describe_departures(
    n_layers: int,
    relation: str,
    unseen_template: str,
    train_template: str,
    kinds: pd.DataFrame,
    known_kinds: pd.DataFrame,
    survey: pd.DataFrame | None = None,
    paper_relation: str = "country_currency",
    organism: bool = True,
) -> str:
    """Where the model departs from GPT-2 medium, from the tables of the run.

    Args:
        kinds: the relation's classification in the template the failures come from (:func:`classify_and_name`).
        known_kinds: the same facts in the training (first) template.
        survey: :func:`failure_summary` rows; adds a sentence on ``paper_relation`` (the paper's case).
        organism: the model is the organism (trained on the relation files, with held-out subjects); otherwise a
            pretrained model, described from its layer count and the tables only.
    """
    for table, name in ((kinds, "kinds"), (known_kinds, "known_kinds")):
        if "kind" not in table:
            raise ValueError(f"{name} lacks the 'kind' column; use classify_and_name")
    wrong = int((kinds["kind"] != "correct").sum())
    present = int((kinds["kind"] == "knowledge_present").sum())
    measured = (
        f"For {relation}, {_share(present, wrong)} wrong answers to {unseen_template!r} are knowledge-present, while "
        f"the same facts asked with {train_template!r} are answered {(known_kinds['kind'] == 'correct').mean():.0%} "
        f"correctly."
    )
    if organism:
        text = (
            f"The model has {n_layers} layers, not GPT-2 medium's 24, and was trained on the 21 relation files only. "
            f"Its knowledge-present failures do not come from web-scale noise: they come from a template it never "
            f"saw. {measured} Held-out subjects are the no-knowledge case by construction: they never occur in the "
            f"corpus."
        )
    else:
        layers = "as GPT-2 medium has" if n_layers == 24 else "not GPT-2 medium's 24"
        text = (
            f"The model has {n_layers} layers ({layers}) and is pretrained on web text, as GPT-2 is, so its "
            f"failures are of the paper's kind: no template or subject is unseen by construction. {measured}"
        )
    if survey is not None and paper_relation in set(survey["relation"]):
        row = survey[survey["relation"] == paper_relation].iloc[0]
        asked = "with a never-trained template as well" if organism else "in its last template"
        text += (
            f" The paper's own case, {paper_relation}, is asked here {asked}: "
            f"{_share(row['n_present'], row['n_wrong'])} of its wrong answers are knowledge-present, and "
            f"{row['same_subject_share']:.0%} of those are another attribute of the subject (the paper's "
            f"'Malaysian' is one)."
        )
    return text
