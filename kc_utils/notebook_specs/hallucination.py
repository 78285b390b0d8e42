"""The knobs of notebook 04 (hallucinations), declared once: :data:`HALLUCINATION`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.analysis.failure_kinds import KNOWLEDGE_RULES
from kc_utils.data.relations import list_relations
from kc_utils.data.split import Split, relation_split, single_template_relations
from kc_utils.notebook import Knob, NotebookSpec, as_list, check_choice, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, fixed_budget, output_knobs

__all__ = ["HALLUCINATION"]


def _split(knobs: Mapping[str, Any]) -> tuple[Split, dict[str, str]]:
    split = relation_split(knobs["model_name"], list_relations())
    return split, single_template_relations(split)


def _servable_relation(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    split, single_template = _split(knobs)
    servable = sorted(set(split.relations) - set(single_template))
    if value in single_template:
        raise ValueError(f"relation: {single_template[value]}; pick one of {servable}")
    check_choice(value, name, ["auto", *servable])


def _survey_relations(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    split, _ = _split(knobs)
    for key in as_list(value, name) or []:
        check_choice(key, name, sorted(split.relations))


HALLUCINATION = NotebookSpec(
    "04_hallucination",
    (
        MODEL_NAME,
        Knob(
            "relation",
            "auto",
            _servable_relation,
            (
                "the relation read in detail: auto (person_occupation on the organism, whose never-trained template "
                "makes it answer the native language; elsewhere the relation with the most knowledge-present failures,"
                " shown in a table) or a relation"
            ),
            recorded="person_occupation",
        ),
        Knob(
            "n_prompts",
            200,
            number(2, integer=True),
            "facts per relation and group at most (known facts in the unseen template, held-out subjects)",
        ),
        Knob(
            "subject_max_rank",
            2,
            number(0, integer=True),
            (
                "the correct answer counts as known when it reaches the top subject_max_rank + 1 at the subject at "
                "some layer (2: the top 3)"
            ),
        ),
        Knob(
            "last_max_rank",
            2,
            number(0, integer=True),
            "the same at the last position before the final block (used by the rules last, either and both)",
        ),
        Knob(
            "knowledge_rule",
            "subject",
            one_of(KNOWLEDGE_RULES),
            'where the knowledge must show: "subject", "last", "either" or "both"',
        ),
        Knob(
            "max_heads",
            3,
            number(1, integer=True),
            "the largest head set that may explain a wrong answer (and the second repaired set)",
        ),
        Knob(
            "n_edges",
            "auto",
            fixed_budget,
            (
                "edges kept in the circuit drawn: an edge count, a fraction, or auto (40, about 8 percent of the "
                "organism graph, on graphs up to 2,000 edges; else 400, the paper scale)"
            ),
        ),
        Knob("ig_steps", 5, number(1, integer=True), "EAP-IG interpolation steps (the paper default is 5)"),
        Knob(
            "n_random",
            100,
            number(20, integer=True),
            "random head sets of the same size for every repair baseline and its p-value (at least 20)",
        ),
        Knob(
            "ablation",
            "mean",
            one_of(["mean", "zero"]),
            'the second repair: "mean" or "zero" ablation of the same heads at every position',
        ),
        Knob("survey_relations", None, _survey_relations, "relations of the cross-relation survey (None: all of them)"),
        Knob(
            "max_failures", 32, number(1, integer=True), "knowledge-present failures traced per relation in the survey"
        ),
        Knob(
            "n_circuit", 32, number(1, integer=True), "facts per group in the circuits of known and held-out subjects"
        ),
        Knob("seed", 0, None, "fixes the random head sets"),
        *output_knobs("04_hallucination"),
    ),
)
