"""The knobs of notebook 01 (knowledge circuits, Table 1), declared once: :data:`KNOWLEDGE_CIRCUITS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.circuits.ablation import ABLATIONS
from kc_utils.circuits.acdc import acdc_candidates_for, acdc_wanted
from kc_utils.circuits.budget import check_budget
from kc_utils.circuits.table1 import FIND_METHODS, TABLE1_RELATIONS
from kc_utils.data.relations import list_relations
from kc_utils.notebook import Knob, NotebookSpec, as_list, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, output_knobs

__all__ = ["KNOWLEDGE_CIRCUITS"]


def _table1_relations(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    chosen = list(TABLE1_RELATIONS) if value == "table1" else as_list(value, name)
    unknown = sorted(set(chosen or []) - set(list_relations()))
    if unknown:
        raise ValueError(f"unknown relations {unknown}; choose from {list_relations()} or 'table1'")


def _budget_with_knee(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    check_budget(value, knobs["knee_level"])


def _acdc_wanted(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    acdc_wanted(value, 0)


def _acdc_candidates(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    acdc_candidates_for(value, 0)


KNOWLEDGE_CIRCUITS = NotebookSpec(
    "01_knowledge_circuits",
    (
        MODEL_NAME,
        Knob(
            "relations",
            "table1",
            _table1_relations,
            "table1 (the 14 relations of Table 1), one relation name, or a list of names",
        ),
        Knob("n_val", 24, number(1, integer=True), "facts per relation that find the circuit (Dval)"),
        Knob("n_test", 24, number(1, integer=True), "held-out facts per relation (Dtest)"),
        Knob(
            "top_k_known",
            10,
            number(1, integer=True),
            "a fact is known when its answer ranks in the top k of the model (the paper filters to known facts)",
        ),
        Knob(
            "method",
            "eap-ig",
            one_of(FIND_METHODS),
            "eap, eap-ig, exact (slow per-edge reference) or acdc (the method behind the published table)",
        ),
        Knob("ig_steps", 5, number(1, integer=True), "EAP-IG interpolation steps"),
        Knob(
            "ablation",
            "patch",
            one_of(ABLATIONS),
            "what an ablated edge carries: patch (a corrupt subject run), zero or mean",
        ),
        Knob(
            "n_edges",
            "auto",
            _budget_with_knee,
            "auto (the knee on small graphs, 400 edges on large ones), knee, an edge count or a fraction",
        ),
        Knob("knee_level", 0.9, None, "share of the logit difference the knee circuit keeps on Dval"),
        Knob(
            "acdc_threshold",
            0.01,
            number(0),
            "ACDC tau (the authors use 0.01 in their README and 0.1 in their scripts)",
        ),
        Knob(
            "acdc_metric",
            "kl",
            one_of(("kl", "nll", "logit_diff", "logprob")),
            "ACDC metric: kl (to the full model), nll (of the answer) or logit_diff",
        ),
        Knob(
            "compare_acdc",
            "auto",
            _acdc_wanted,
            "also run ACDC and compare its circuits: True, False or auto (graphs up to 2,000 edges)",
        ),
        Knob(
            "acdc_candidates",
            "auto",
            _acdc_candidates,
            (
                "edges ACDC tries: auto (every edge on graphs up to 2,000 edges; else the top 1000 of EAP-IG, the "
                "rest removed up front), None (every edge) or a count"
            ),
        ),
        Knob("n_random", 5, number(0, integer=True), "draws of each random baseline"),
        Knob("seed", 0, None, "fixes the Dval/Dtest split, the corrupt pairs and the random circuits"),
        *output_knobs("01_knowledge_circuits"),
    ),
)
