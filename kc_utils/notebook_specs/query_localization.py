"""The knobs of notebook 06 (knowledge neurons and query localization), declared once: :data:`QUERY_LOCALIZATION`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.neurons.positions import POSITIONS
from kc_utils.neurons.queries import template_accuracy_floor
from kc_utils.neurons.selection import check_threshold
from kc_utils.notebook import Knob, NotebookSpec, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, output_knobs, relation_names

__all__ = ["QUERY_LOCALIZATION"]


def _threshold(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    check_threshold(value)


def _template_floor(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    template_accuracy_floor(value, knobs["model_name"])


def _cas_betas(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    if len(value) != 2:
        raise ValueError(f"cas_betas must be [beta1, beta2], got {value!r}")


QUERY_LOCALIZATION = NotebookSpec(
    "06_query_localization",
    (
        MODEL_NAME,
        Knob(
            "relation",
            "auto",
            one_of(lambda knobs: ["auto", *relation_names(knobs)]),
            (
                "the relation read in detail: auto (the first of QUERY_RELATION_ORDER with 2 queries and 2 facts "
                "answered in all of them: country_capital_city, the paper's case, on the organism) or a relation"
            ),
            recorded="country_capital_city",
        ),
        Knob(
            "n_facts",
            6,
            number(2, integer=True),
            "facts of that relation analysed (among those answered top-1 in every query)",
        ),
        Knob("ig_steps", 20, number(1, integer=True), "integrated-gradients steps per layer (Dai et al.: 20)"),
        Knob(
            "threshold",
            0.3,
            _threshold,
            "knowledge neurons score at least this fraction of the query max score (Dai et al.: 0.3)",
        ),
        Knob(
            "position",
            "last",
            one_of(POSITIONS),
            "where neurons are read: last (the last token) or subject (the last token of the subject)",
        ),
        Knob(
            "static_threshold",
            0.5,
            number(0, 1),
            "a fact whose consistency score is below this is inconsistent (besides Otsu)",
        ),
        Knob("summary_facts", 2, number(0, integer=True), "facts per relation in the all-relations summary"),
        Knob(
            "summary_steps",
            5,
            number(1, integer=True),
            "integrated-gradients steps in the all-relations summary (compared with ig_steps below)",
        ),
        Knob(
            "min_template_accuracy",
            "auto",
            _template_floor,
            (
                "a template the model answers for fewer facts than this is not used as a query: auto (0.5 on the "
                "organism, 0.3 on a pretrained model, whose paraphrases are answered less evenly) or a share"
            ),
        ),
        Knob(
            "n_random",
            20,
            number(0, integer=True),
            "random same-size neuron sets and random attention keys per baseline",
        ),
        Knob(
            "cas_betas",
            [1.0, 1.0],
            _cas_betas,
            "beta1 and beta2 of CAS (beta1 times the mean minus beta2 times the std over the queries)",
        ),
        Knob(
            "update_strength", 1.0, number(0), "update edit step, in units of the mean norm of the edited output rows"
        ),
        Knob("seed", 0, None, "fixes the facts drawn and the random baselines"),
        *output_knobs("06_query_localization"),
    ),
)
