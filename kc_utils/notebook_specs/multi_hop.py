"""The knobs of notebook 07 (two-hop questions), declared once: :data:`MULTI_HOP`.

``patch_sizes`` is checked in form here; its upper bound (the circuit's size) once the circuit exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.analysis.multihop import check_patch_sizes
from kc_utils.circuits.budget import check_budget
from kc_utils.data.multihop import TWO_HOP_TEMPLATES, composition_key
from kc_utils.data.relations import list_relations
from kc_utils.notebook import Knob, NotebookSpec, as_list, check_choice, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, output_knobs

__all__ = ["MULTI_HOP"]


def _pairs() -> dict[str, tuple[str, str]]:
    return {composition_key(a, b): (a, b) for a, b in TWO_HOP_TEMPLATES}


def _compositions(knobs: Mapping[str, Any]) -> list[str]:
    return list(_pairs())


def _gap_compositions(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    for key in as_list(value, name) or []:
        check_choice(key, name, list(_pairs()))


def _unrelated_relations(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    keys = as_list(value, name) or []
    composition = knobs["composition"]
    for key in keys:
        check_choice(key, name, list_relations())
        if key in _pairs().get(composition, ()):
            raise ValueError(
                f"unrelated_relations holds {key!r}, a relation of the composition {composition!r}; name others"
            )
    if not keys:
        raise ValueError("unrelated_relations is empty; name at least one relation such as adj_antonym")


def _budget(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    check_budget(value)


def _patch_sizes(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    check_patch_sizes(value)


MULTI_HOP = NotebookSpec(
    "07_multi_hop",
    (
        MODEL_NAME,
        Knob(
            "composition",
            "landmark_in_country+country_language",
            one_of(_compositions),
            (
                "the two-hop pair studied in detail, FIRST+SECOND (the paper example: the official language of the "
                "country of a landmark)"
            ),
        ),
        Knob(
            "gap_compositions",
            [
                "landmark_in_country+country_language",
                "landmark_in_country+country_capital_city",
                "landmark_in_country+country_currency",
                "product_by_company+company_hq",
            ],
            _gap_compositions,
            "pairs whose compositionality gap is measured",
        ),
        Knob(
            "unrelated_relations",
            ["adj_antonym", "word_first_letter", "object_superclass"],
            _unrelated_relations,
            "relations sharing no entity with the composition, whose circuits are the unrelated baseline",
        ),
        Knob(
            "top_k", 1, number(1, integer=True), "a hop is answered when its answer ranks in the top top_k (1: top-1)"
        ),
        Knob(
            "n_val",
            16,
            number(1, integer=True),
            "facts answered composed that find the circuits (Dval; at most half of them)",
        ),
        Knob("n_test", 16, number(1, integer=True), "held-out facts answered composed (Dtest)"),
        Knob(
            "n_edges",
            "auto",
            _budget,
            (
                "circuit budget as in notebook 01: an edge count, a fraction, knee (organism) or auto (knee up to "
                "20000 edges, else 400 edges)"
            ),
        ),
        Knob("ig_steps", 5, number(1, integer=True), "EAP-IG interpolation steps (the paper default is 5)"),
        Knob("n_random", 10, number(2, integer=True), "random circuits per circuit size for the overlap baseline"),
        Knob(
            "n_random_sets",
            20,
            number(2, integer=True),
            "random component sets of the first-hop circuit size in the bridge-patching test",
        ),
        Knob(
            "patch_sizes",
            "auto",
            _patch_sizes,
            (
                "sizes of the sets of the first hop's strongest components restored beside the whole circuit: auto (an"
                " eighth, a quarter, half and all of it) or a list of counts"
            ),
        ),
        Knob(
            "lens_top",
            10,
            number(1, integer=True),
            "the bridge counts as readable at a layer when it ranks in the top lens_top",
        ),
        Knob("seed", 0, None, "fixes the Dval/Dtest split, the corrupt twins, the random circuits and the random sets"),
        *output_knobs("07_multi_hop"),
    ),
)
