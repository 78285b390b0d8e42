"""Hallucinations traced through circuits, one relation end to end: does the model know the fact, and which
heads pick the wrong answer?

Yao et al. (2024, §6): for "The official currency of Malaysia is called" GPT-2 medium answers
"Malaysian", not "Ringgit"; both are built up before layer 15, then a mover head moves the wrong one.
The reading is measured over many prompts in three steps, one module each:

1. **Classify** (:mod:`kc_utils.analysis.failure_kinds`): correct, knowledge-present or
   knowledge-absent, by where the correct answer ranks in the logit lens.
2. **Components that choose the wrong answer** (:mod:`kc_utils.analysis.wrong_answer_heads`): the
   wrong-answer circuit, each head's direct logit attribution, the fewest heads that explain it.
3. **Repair by intervention** (:mod:`kc_utils.analysis.head_repair`): patch or ablate the chosen heads,
   against random head sets, with a permutation p-value.

This module runs them on one relation (:func:`analyse_failures`, :func:`failure_summary`): classify the
facts asked in one template, name the wrong answers (:mod:`kc_utils.analysis.wrong_answers`), trace the
knowledge-present failures, choose heads on one half of them and score the repair on the other half.
:func:`case_summary` gathers the numbers of one case. The sentences built from these tables are in
:mod:`kc_utils.analysis.hallucination_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kc_utils.analysis.failure_kinds import Classification, classify_and_name
from kc_utils.analysis.head_groups import writing_heads
from kc_utils.analysis.head_repair import (
    MIN_HOLDOUT_FAILURES,
    repair,
    repair_by_each_head,
    repair_summary,
    split_failures,
)
from kc_utils.analysis.wrong_answer_heads import explaining_heads, head_logit_difference, rank_heads, with_wrong_answers
from kc_utils.analysis.wrong_answers import AttributeIndex
from kc_utils.data.prompts import PromptBatch, make_batch

__all__ = [
    "FailureAnalysis",
    "analyse_failures",
    "case_summary",
    "failure_summary",
]


@dataclass(frozen=True)
class FailureAnalysis:
    """Everything :func:`analyse_failures` measured for one relation.

    Attributes:
        kinds: :func:`~kc_utils.analysis.failure_kinds.classify_prompts` of every prompt, with the wrong answers named
            (``wrong_kind``, ``wrong_relations``; :func:`kc_utils.analysis.wrong_answers.name_wrong_answers`).
        failures: ``prompt_index`` of the knowledge-present failures traced (rows of ``kinds``; at most
            ``max_failures`` of them).
        batch: those failures, correct answers in ``answer``, wrong ones in ``corrupt_answer``.
        source: the same facts in the source template (what the patch reads), or ``None``.
        subjects: the failures' subjects.
        head_table: :func:`~kc_utils.analysis.wrong_answer_heads.head_logit_difference` on the failures.
        explained: :func:`~kc_utils.analysis.wrong_answer_heads.explaining_heads`.
        heads: :func:`~kc_utils.analysis.wrong_answer_heads.rank_heads` on every traced failure (descriptive).
        choose, held_out: positions in ``failures`` (and rows of ``batch``) of the half that chooses the
            heads and of the half the repairs are scored on
            (:func:`~kc_utils.analysis.head_repair.split_failures`); both empty when there are fewer than
            :data:`~kc_utils.analysis.head_repair.MIN_HOLDOUT_FAILURES` failures (then no repair is scored).
        chosen_heads: :func:`~kc_utils.analysis.wrong_answer_heads.rank_heads` on the choosing half only
            (what the repaired sets are picked from).
        repairs: ``{n: repair table}`` for the top-``n`` heads of ``chosen_heads`` by ``mean_dla_diff``,
            scored on the held-out half (:func:`~kc_utils.analysis.head_repair.repair`; the table has an
            ``n_prompts`` column).
        each_head: :func:`~kc_utils.analysis.head_repair.repair_by_each_head` on every traced failure (an
            exploration), or ``None`` (no source, or ``each_head=False``).
        best_single: the head whose patch alone repairs most failures of the choosing half, scored on the
            held-out half against random single heads (a :func:`~kc_utils.analysis.head_repair.repair`
            table), or ``None``.
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
    reuse: Sequence[Classification] = (),
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
            (:func:`~kc_utils.analysis.head_repair.split_failures`, seeded by ``seed``); with fewer than
            :data:`~kc_utils.analysis.head_repair.MIN_HOLDOUT_FAILURES`
            failures no repair is scored (``repairs`` is empty).
        max_heads: the largest set :func:`~kc_utils.analysis.wrong_answer_heads.explaining_heads` looks for.
        pool: heads of the random sets (default :func:`kc_utils.analysis.head_groups.writing_heads` on the failures).
        max_failures: trace and repair at most this many knowledge-present failures (the first
            ones, in prompt order; ``None``: all). The classification always covers every prompt.
        each_head: also patch every pool head alone
            (:func:`~kc_utils.analysis.head_repair.repair_by_each_head`; needs a source), and score the head
            that repairs most of the choosing half on the held-out half (``best_single``).
        reuse: classifications already made of these facts in ``template``
            (:func:`kc_utils.analysis.failing_relation.split_classifications`), read instead of running the
            lens again where one serves (:func:`~kc_utils.analysis.failure_kinds.classify_and_name`).
    """
    if "{}" not in template or (source_template is not None and "{}" not in source_template):
        raise ValueError("templates need a '{}' where the subject goes")
    if intervention == "patch" and source_template is None:
        raise ValueError("intervention='patch' needs a source_template")
    subjects, answers = list(subjects), list(answers)
    kinds, batch = classify_and_name(
        model, relation, subjects, answers, template, index, subject_max_rank, last_max_rank, rule, reuse
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
    (:func:`~kc_utils.analysis.head_repair.repair_summary`); then ``best_single_head`` (the head whose patch alone
    repairs most of
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


def case_summary(
    correct_lens: pd.DataFrame, wrong_lens: pd.DataFrame, head_rows: pd.DataFrame, top_tokens: Sequence[str] = ()
) -> dict[str, Any]:
    """The numbers of one case (one prompt): where each answer appears, and the head that favours the wrong one.

    Args:
        correct_lens, wrong_lens: :func:`kc_utils.analysis.lens.logit_lens` rows of the prompt with the
            correct and the wrong answer as target.
        head_rows: :func:`~kc_utils.analysis.wrong_answer_heads.head_logit_difference` rows of the prompt.
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
