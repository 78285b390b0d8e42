"""Hallucinations, step 1: is the model wrong, and does it know the fact? (the logit lens says)

Yao et al. (2024, §6). Each prompt is (:func:`classify_from_lens`, :func:`classify_prompts`)

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
1-based (rank 1 = top-1), as "within the top ``max_rank + 1``". :func:`classify_and_name` also
names the wrong answers (:mod:`kc_utils.analysis.wrong_answers`); :func:`rank_curves` summarises
the ranks along the layers. The steps that follow: :mod:`kc_utils.analysis.wrong_answer_heads`,
:mod:`kc_utils.analysis.head_repair`, :mod:`kc_utils.analysis.hallucination`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from kc_utils import models
from kc_utils.analysis.lens import logit_lens, residual_by_layer
from kc_utils.analysis.wrong_answers import AttributeIndex, name_wrong_answers
from kc_utils.data.prompts import PromptBatch, make_batch

__all__ = [
    "KNOWLEDGE_RULES",
    "PROMPT_KINDS",
    "Classification",
    "answered_and_unknown",
    "classify_and_name",
    "classify_relation",
    "classify_from_lens",
    "classify_prompts",
    "pick_case",
    "rank_curves",
]


#: The classes of :func:`classify_from_lens`.
PROMPT_KINDS = ("correct", "knowledge_present", "knowledge_absent")
#: Where the correct answer must be found for the knowledge to count as present.
KNOWLEDGE_RULES = ("subject", "last", "either", "both")

_LENS_COLUMNS = ("prompt_index", "layer", "rank", "subject_rank")


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
    residuals = residual_by_layer(model, batch.clean)  # one pass: the lens, and the model's own last logits
    table = classify_from_lens(
        logit_lens(model, batch, subjects, residuals=residuals), subject_max_rank, last_max_rank, rule
    )
    rows = torch.arange(len(batch), device=residuals.device)
    with torch.no_grad():
        final = models.unembed(model, residuals[-1][rows, batch.last_pos]).float().softmax(-1)
    top = final.max(-1)
    table.insert(2, "subject", list(subjects))
    table.insert(3, "answer", list(batch.answers))
    table["prediction"] = models.token_strings(model, top.indices.tolist())
    table["prediction_id"] = top.indices.tolist()
    table["confidence"] = top.values.tolist()
    table["answer_prob"] = final.gather(1, batch.answer[:, None])[:, 0].tolist()
    return table


@dataclass(frozen=True)
class Classification:
    """:func:`classify_and_name` of one relation's facts in one template, kept so that a later call reads it again.

    Notebook 04 classifies each relation's facts once and reads the same rows three times: to pick the relation
    with the most knowledge-present failures (its first facts), in section 1 and in the survey. On a model with a
    large vocabulary the logit lens is most of that notebook's time (Gemma-3-270M unembeds every read position into
    262,144 tokens after each block).

    Attributes:
        relation, template: what was asked (the template with a ``{}``).
        subjects, answers: the facts, in batch order.
        thresholds: ``(subject_max_rank, last_max_rank, rule)`` of the classification.
        index: the known facts the wrong answers were named against.
        kinds, batch: what :func:`classify_and_name` returned.

    Example:
        >>> done = classify_relation(model, "adj_comparative", subjects, answers, "{} becomes", index)  # doctest: +SKIP
        >>> kinds, batch = classify_and_name(model, "adj_comparative", subjects[:32], answers[:32],
        ...                                  "{} becomes", index, reuse=[done])  # doctest: +SKIP
    """

    relation: str
    template: str
    subjects: tuple[str, ...]
    answers: tuple[str, ...]
    thresholds: tuple[int, int, str]
    index: AttributeIndex
    kinds: pd.DataFrame
    batch: PromptBatch

    def serves(
        self,
        relation: str,
        subjects: Sequence[str],
        answers: Sequence[str],
        template: str,
        thresholds: tuple[int, int, str],
        index: AttributeIndex,
    ) -> bool:
        """Whether these rows answer a call for ``relation``'s facts in ``template`` under ``thresholds``, named
        against the same ``index``: the same relation, template, thresholds and index object, and the facts asked
        are these facts or the first of them, in order."""
        n = len(subjects)
        return (
            relation == self.relation
            and template == self.template
            and index is self.index
            and tuple(thresholds) == self.thresholds
            and 0 < n <= len(self.subjects)
            and tuple(subjects) == self.subjects[:n]
            and tuple(answers) == self.answers[:n]
        )

    def first(self, n: int) -> tuple[pd.DataFrame, PromptBatch]:
        """``(kinds, batch)`` of the first ``n`` facts: a copy of the table's first ``n`` rows and the batch's first
        ``n`` prompts (the whole batch when ``n`` is all of them; else trimmed to the longest of the ``n``)."""
        if not 0 < n <= len(self.subjects):
            raise ValueError(f"n must be between 1 and {len(self.subjects)}, got {n}")
        if n == len(self.subjects):
            return self.kinds.copy(), self.batch
        return self.kinds.iloc[:n].copy(), self.batch.select(list(range(n)))


def classify_relation(
    model: Any,
    relation: str,
    subjects: Sequence[str],
    answers: Sequence[str],
    template: str,
    index: AttributeIndex,
    subject_max_rank: int = 2,
    last_max_rank: int = 2,
    rule: str = "subject",
) -> Classification:
    """:func:`classify_and_name`, kept with what it asked (a :class:`Classification`, for ``reuse``)."""
    kinds, batch = classify_and_name(
        model, relation, subjects, answers, template, index, subject_max_rank, last_max_rank, rule
    )
    thresholds = (subject_max_rank, last_max_rank, rule)
    return Classification(relation, template, tuple(subjects), tuple(answers), thresholds, index, kinds, batch)


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
    reuse: Sequence[Classification] = (),
) -> tuple[pd.DataFrame, PromptBatch]:
    """:func:`classify_prompts` of the facts asked with ``template``, wrong answers named.

    Args:
        reuse: earlier classifications (:func:`classify_relation`); the first that
            :meth:`~Classification.serves` this call is read instead of running the model. The first ``n`` rows
            of a larger batch are the same measurement up to round-off (tested): the model reads each prompt on
            its own, and right padding is never read.

    Returns:
        ``(kinds, batch)``: the classification with ``wrong_kind`` and ``wrong_relations``
        (:func:`kc_utils.analysis.wrong_answers.name_wrong_answers`; ``"correct"``/``""`` where
        right), and the batch it was measured on.
    """
    if "{}" not in template:
        raise ValueError(f"the template {template!r} needs a '{{}}' where the subject goes")
    if len(subjects) != len(answers):
        raise ValueError(f"{len(subjects)} subjects but {len(answers)} answers; give one answer per subject")
    thresholds = (subject_max_rank, last_max_rank, rule)
    for done in reuse:
        if done.serves(relation, subjects, answers, template, thresholds, index):
            return done.first(len(subjects))
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
