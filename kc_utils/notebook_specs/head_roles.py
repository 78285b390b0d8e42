"""The knobs of notebook 02 (head roles), declared once: :data:`HEAD_ROLES`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.analysis.head_ablation import HEAD_ABLATIONS
from kc_utils.circuits.ablation import ABLATIONS
from kc_utils.circuits.attribute import METHODS as CIRCUIT_METHODS
from kc_utils.data.relations import list_relations
from kc_utils.notebook import ANY, Knob, NotebookSpec, as_list, check_choice, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, output_knobs, relation_names

__all__ = ["HEAD_ROLES"]


def _each_relation(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    for key in as_list(value, name) or []:
        check_choice(key, "relation", list_relations())


def _circuit_budget(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    count = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if not (count or value in ("knee", "auto")):
        raise ValueError(f"n_edges={value!r}: use an edge count, a fraction in (0, 1), knee or auto")


HEAD_ROLES = NotebookSpec(
    "02_head_roles",
    (
        MODEL_NAME,
        Knob(
            "relation",
            "country_language",
            one_of(relation_names),
            "the relation read in detail (the paper example: the official language of France)",
        ),
        Knob(
            "relations_for_layers",
            [
                "adj_antonym",
                "word_first_letter",
                "object_superclass",
                "work_location",
                "country_capital_city",
                "country_language",
                "person_native_language",
                "name_birthplace",
            ],
            _each_relation,
            "relations of the cross-relation tables and group tests",
        ),
        Knob(
            "prompt_index",
            0,
            number(0, lambda knobs: knobs["n_prompts"] - 1, integer=True),
            "which prompt the per-prompt figures show (the dropdowns show any)",
            recorded=ANY,
        ),
        Knob(
            "n_prompts",
            24,
            number(2, integer=True),
            "facts per relation: notebook 01 Dval, the facts its circuit was found on",
        ),
        Knob(
            "top_k",
            10,
            number(1, integer=True),
            "top tokens kept per head projection and gaining tokens per ablation (the paper: top-10)",
        ),
        Knob(
            "ablation",
            "mean",
            one_of(HEAD_ABLATIONS),
            "how heads are knocked out: mean (their mean output over the prompts) or zero",
        ),
        Knob(
            "n_random",
            20,
            number(2, integer=True),
            "random same-size head sets per group test (mean and std over them)",
        ),
        Knob(
            "max_other_heads",
            24,
            number(0, integer=True, optional=True),
            "one-at-a-time ablations: every head with a role, and at most this many role-less heads (None: all)",
        ),
        Knob("subject_threshold", 0.3, number(0, 1), "attention to the subject that counts as reading it"),
        Knob("relation_threshold", 0.3, number(0, 1), "attention to the relation words that counts as reading them"),
        Knob("min_dla", 1.0, number(), "logits a head must add to the answer to count as writing it"),
        Knob(
            "min_type_auc",
            0.75,
            number(0, 1),
            "relation-type AUC a head needs to count as promoting the relation objects (0.5 is chance)",
        ),
        Knob(
            "circuits_from",
            None,
            None,
            (
                "folder holding notebook 01 circuits as RELATION.json; None: the notebook 01 run folder for this "
                "publish setting"
            ),
            recorded=ANY,
        ),
        Knob(
            "circuit_method",
            "eap-ig",
            one_of([*CIRCUIT_METHODS, "acdc"]),
            "the circuit settings asked for: a saved circuit is reused only if it was made with them",
        ),
        Knob(
            "circuit_ablation",
            "patch",
            one_of(ABLATIONS),
            "ablation of the circuit search (patch, zero or mean), as in notebook 01",
        ),
        Knob(
            "n_edges",
            "auto",
            _circuit_budget,
            "circuit budget as in notebook 01: an edge count, a fraction, knee or auto",
        ),
        Knob("seed", 0, None, "fixes the Dval/Dtest split (as in notebook 01) and the random head sets"),
        *output_knobs("02_head_roles"),
    ),
)
