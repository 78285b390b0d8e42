"""Which relation shows hallucinations worth tracing on a model: the one with the most knowledge-present failures.

Notebook 04 reads one relation in detail. On the organism that is ``person_occupation``, whose never-trained
template makes it answer the subject's native language. A real model fails elsewhere: SmolLM2-135M answers none
of 135 occupations in "The job title of {} is" and shows no knowledge of them at the subject, so there is
nothing to trace. :func:`failure_counts` classifies every relation's facts in the template the notebook asks
(:func:`kc_utils.analysis.failure_kinds.classify_and_name`), and :func:`pick_failing_relation` takes the
relation with the most knowledge-present failures (ties: the relation's name), so the choice is read off a
table the notebook shows. :func:`split_classifications` classifies each relation once for the notebook's survey;
the counts then read their first facts from it (``reuse``) instead of running the logit lens again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from kc_utils.analysis.failure_kinds import Classification, classify_and_name, classify_relation
from kc_utils.analysis.wrong_answers import AttributeIndex

__all__ = [
    "COUNT_COLUMNS",
    "PICKING_PROMPTS",
    "count_kinds",
    "failure_counts",
    "pick_failing_relation",
    "split_classifications",
    "split_failure_counts",
]

#: Facts per relation :func:`split_failure_counts` classifies by default: enough to rank relations by their
#: failures, and 21 relations of SmolLM2-135M take about 2 minutes on 2 cores instead of 20 with every fact.
PICKING_PROMPTS = 32

#: The columns of :func:`failure_counts`' table after ``relation`` and ``template``.
COUNT_COLUMNS = ("n_prompts", "correct", "knowledge_present", "knowledge_absent")


def count_kinds(kinds: pd.DataFrame) -> dict[str, int]:
    """Prompts of each kind in a classification table (its ``kind`` column), with ``n_prompts``."""
    counts = kinds["kind"].value_counts()
    return {"n_prompts": len(kinds), **{kind: int(counts.get(kind, 0)) for kind in COUNT_COLUMNS[1:]}}


def failure_counts(
    model: Any,
    facts: Mapping[str, tuple[str, Sequence[tuple[str, str]]]],
    index: AttributeIndex,
    progress: bool = True,
    reuse: Sequence[Classification] = (),
    **thresholds: Any,
) -> pd.DataFrame:
    """Classify each relation's facts and count the kinds.

    Args:
        facts: ``{relation: (template, [(subject, answer), ...])}``, the template with a ``{}``.
        reuse: classifications already made (:func:`split_classifications`), read where they serve
            (:meth:`~kc_utils.analysis.failure_kinds.Classification.serves`).
        thresholds: ``subject_max_rank``, ``last_max_rank`` and ``rule`` of
            :func:`kc_utils.analysis.failure_kinds.classify_prompts`.

    Returns:
        One row per relation with facts: ``relation``, ``template`` and :data:`COUNT_COLUMNS`.
    """
    rows = []
    for relation, (template, pairs) in tqdm(facts.items(), desc="relations classified", disable=not progress):
        if not pairs:
            continue
        subjects, answers = zip(*pairs)
        kinds, _ = classify_and_name(model, relation, subjects, answers, template, index, **thresholds, reuse=reuse)
        rows.append({"relation": relation, "template": template, **count_kinds(kinds)})
    return pd.DataFrame(rows, columns=["relation", "template", *COUNT_COLUMNS])


def _split_facts(split: Any, relations: Sequence[str], n_prompts: int) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each relation's first unseen template and its first ``n_prompts`` trained facts (on a pretrained model: its
    facts in file order), as notebook 04 asks them."""
    facts = {}
    for key in relations:
        rel = split.relations[key]
        facts[key] = (rel.unseen_templates[0], [(f.subject, f.object) for f in list(rel.trained)[:n_prompts]])
    return facts


def split_failure_counts(
    model: Any,
    split: Any,
    relations: Sequence[str],
    index: AttributeIndex,
    n_prompts: int = PICKING_PROMPTS,
    progress: bool = True,
    reuse: Sequence[Classification] = (),
    **thresholds: Any,
) -> pd.DataFrame:
    """:func:`failure_counts` of a :class:`kc_utils.data.split.Split`'s relations: each relation's first
    ``n_prompts`` trained facts (on a pretrained model: its facts in file order) asked in its first unseen
    template, as notebook 04 asks them; ``reuse`` as in :func:`failure_counts`."""
    return failure_counts(model, _split_facts(split, relations, n_prompts), index, progress, reuse, **thresholds)


def split_classifications(
    model: Any,
    split: Any,
    relations: Sequence[str],
    index: AttributeIndex,
    n_prompts: int,
    progress: bool = True,
    **thresholds: Any,
) -> list[Classification]:
    """Each relation's first ``n_prompts`` facts in its first unseen template, classified once
    (:func:`~kc_utils.analysis.failure_kinds.classify_relation`): what notebook 04's survey asks of every relation,
    and what :func:`split_failure_counts` and :func:`kc_utils.analysis.hallucination.analyse_failures` read back
    through ``reuse``. Relations without facts are left out.

    Example:
        >>> done = split_classifications(model, split, ["adj_comparative"], index, 200)  # doctest: +SKIP
        >>> counts = split_failure_counts(model, split, ["adj_comparative"], index, 32, reuse=done)  # doctest: +SKIP
    """
    out = []
    facts = _split_facts(split, relations, n_prompts)
    for relation, (template, pairs) in tqdm(facts.items(), desc="relations classified", disable=not progress):
        if pairs:
            subjects, answers = zip(*pairs)
            out.append(classify_relation(model, relation, subjects, answers, template, index, **thresholds))
    return out


def pick_failing_relation(counts: pd.DataFrame, minimum: int = 1) -> str:
    """The relation of a :func:`failure_counts` table with the most knowledge-present failures (ties: by name).

    Raises:
        ValueError: no relation has ``minimum`` knowledge-present failures (the message gives the largest count).
    """
    if counts.empty:
        raise ValueError("no relation was classified: give failure_counts at least one relation with facts")
    ranked = counts.sort_values(["knowledge_present", "relation"], ascending=[False, True], kind="stable")
    best = ranked.iloc[0]
    if best["knowledge_present"] < minimum:
        raise ValueError(
            f"no relation has {minimum} knowledge-present failure(s) (the most: {int(best['knowledge_present'])}, "
            f"{best['relation']}); loosen subject_max_rank or knowledge_rule"
        )
    return str(best["relation"])
