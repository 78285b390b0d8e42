"""What a wrong answer is: another attribute of the subject, another subject's object, or neither.

Yao et al. (2024, §6) read GPT-2's "The official currency of Malaysia is called → Malaysian" as a
circuit that builds the right attribute (Ringgit) and a wrong one, then moves the wrong one. Whether
a wrong answer is *knowledge in the wrong place* is a question about the facts, not the model:

==================  ===========================================================================
kind                the wrong answer's first token is …
==================  ===========================================================================
``same_subject``    the first token of an object of the **same subject** under another relation
                    (``Fermi`` asked for his occupation, answered with his native language
                    ``Italian``); ``relations`` names which relation(s)
``relation_object`` not that, but the first token of an object of the **asked relation** for
                    another subject (a plausible answer to the question, about someone else);
                    ``other_subjects`` lists up to ``max_listed`` of them
``other``           neither
==================  ===========================================================================

``same_subject`` wins when both hold; ``also_relation_object`` says whether it is also an object
of the asked relation. Tokens are compared, not strings: an object counts by its first token after
its own prompt (:func:`kc_utils.models.continuation_first_token`), the convention by which every
answer in this package is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kc_utils import models
from kc_utils.data.relations import Relation

__all__ = ["WRONG_ANSWER_KINDS", "AttributeIndex", "name_wrong_answers"]

#: The kinds :func:`name_wrong_answers` gives, in priority order.
WRONG_ANSWER_KINDS = ("same_subject", "relation_object", "other")


@dataclass(frozen=True)
class AttributeIndex:
    """First tokens of every known object, by subject and by relation.

    Attributes:
        by_subject: ``subject -> {token id -> relation keys}``: the relations in which the subject
            has an object starting with that token.
        by_relation: ``relation key -> {token id -> subjects}``: the subjects whose object in that
            relation starts with that token.
    """

    by_subject: Mapping[str, Mapping[int, tuple[str, ...]]]
    by_relation: Mapping[str, Mapping[int, tuple[str, ...]]]

    @classmethod
    def from_token_facts(cls, facts: Iterable[tuple[str, str, int]]) -> AttributeIndex:
        """Build from ``(relation key, subject, object's first token)`` triples (duplicates kept once)."""
        by_subject: dict[str, dict[int, list[str]]] = {}
        by_relation: dict[str, dict[int, list[str]]] = {}
        for relation, subject, token in facts:
            relations = by_subject.setdefault(subject, {}).setdefault(int(token), [])
            if relation not in relations:
                relations.append(relation)
            subjects = by_relation.setdefault(relation, {}).setdefault(int(token), [])
            if subject not in subjects:
                subjects.append(subject)

        def freeze(d: dict[str, dict[int, list[str]]]) -> dict[str, dict[int, tuple[str, ...]]]:
            return {k: {t: tuple(v) for t, v in inner.items()} for k, inner in d.items()}

        return cls(freeze(by_subject), freeze(by_relation))

    @classmethod
    def from_relations(cls, model: Any, relations: Mapping[str, Relation], template_index: int = 0) -> AttributeIndex:
        """Every fact of ``relations`` (keyed by relation key), each object tokenised after its own prompt.

        Objects the tokenizer cannot represent are skipped.
        """
        triples = []
        for key, relation in relations.items():
            if not 0 <= template_index < len(relation.prompt_templates):
                raise ValueError(
                    f"template_index {template_index} out of range: {key!r} has "
                    f"{len(relation.prompt_templates)} templates"
                )
            for prompt, sample in zip(relation.prompts(template_index), relation.samples):
                token = models.continuation_first_token(model, prompt, sample.object)
                if token is not None:
                    triples.append((key, sample.subject, token))
        return cls.from_token_facts(triples)


def name_wrong_answers(
    index: AttributeIndex,
    relation: str,
    subjects: Sequence[str],
    predictions: Sequence[int],
    answers: Sequence[int] | None = None,
    max_listed: int = 3,
) -> pd.DataFrame:
    """Name each prediction's kind (module table).

    Args:
        index: the known facts (:class:`AttributeIndex`).
        relation: the asked relation's key, e.g. ``"person_occupation"``.
        subjects: one subject per prompt.
        predictions: the model's top-1 token per prompt.
        answers: the correct first token per prompt; a prediction equal to it gets the kind
            ``"correct"`` (without them every prediction is treated as wrong).
        max_listed: how many other subjects ``other_subjects`` lists at most.

    Returns:
        One row per prompt: ``subject``, ``prediction`` (token id), ``kind`` (``"correct"`` or one
        of :data:`WRONG_ANSWER_KINDS`), ``relations`` (the subject's relations whose object the
        prediction starts, the asked one excluded; ``""`` if none, else joined by ``", "``),
        ``also_relation_object`` and ``other_subjects`` (``""`` or joined by ``", "``).

    Raises:
        ValueError: lengths that differ, an unknown relation, or ``max_listed`` < 0.
    """
    if len(subjects) != len(predictions) or (answers is not None and len(answers) != len(predictions)):
        raise ValueError(
            f"give one subject, one prediction (and one answer) per prompt; got {len(subjects)} subjects, "
            f"{len(predictions)} predictions" + ("" if answers is None else f", {len(answers)} answers")
        )
    if relation not in index.by_relation:
        raise ValueError(
            f"relation {relation!r} has no facts in the index; known: {sorted(index.by_relation)[:5]} … "
            "(build the index from the asked relation too)"
        )
    if max_listed < 0:
        raise ValueError(f"max_listed must be 0 or more, got {max_listed}")
    asked = index.by_relation[relation]
    records = []
    for i, (subject, token) in enumerate(zip(subjects, predictions)):
        token = int(token)
        own = [r for r in index.by_subject.get(subject, {}).get(token, ()) if r != relation]
        others = [s for s in asked.get(token, ()) if s != subject]
        if answers is not None and token == int(answers[i]):
            kind = "correct"
        elif own:
            kind = "same_subject"
        elif others:
            kind = "relation_object"
        else:
            kind = "other"
        records.append(
            {
                "subject": subject,
                "prediction": token,
                "kind": kind,
                "relations": ", ".join(own),
                "also_relation_object": bool(others),
                "other_subjects": ", ".join(others[:max_listed]),
            }
        )
    return pd.DataFrame.from_records(records)
