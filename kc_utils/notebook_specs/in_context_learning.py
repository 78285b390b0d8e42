"""The knobs of notebook 05 (in-context learning, Table 2), declared once: :data:`IN_CONTEXT_LEARNING`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kc_utils.data.fewshot import CORRUPTIONS, FORMATS
from kc_utils.notebook import Knob, NotebookSpec, as_list, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, fixed_budget, output_knobs

__all__ = ["IN_CONTEXT_LEARNING"]


def _some_relations(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    if not as_list(value, name):
        raise ValueError("relations is empty; name at least one relation such as adj_comparative")


IN_CONTEXT_LEARNING = NotebookSpec(
    "05_in_context_learning",
    (
        MODEL_NAME,
        Knob(
            "relations",
            ["adj_comparative", "word_sentiment", "substance_phase", "occupation_gender", "person_occupation"],
            _some_relations,
            "the five relations of the paper Table 2",
        ),
        Knob(
            "n_shots", 3, number(1, integer=True), "demonstrations in the k-shot prompts of the circuits and of Table 2"
        ),
        Knob(
            "prompt_format",
            "auto",
            one_of(("auto", *FORMATS)),
            (
                '"auto" (arrow on kc-organism, which was trained on it; sentence on any other model), "arrow" (s -> o '
                ';) or "sentence" (the template written out, as in the paper)'
            ),
        ),
        Knob(
            "max_k",
            4,
            number(lambda knobs: knobs["n_shots"], integer=True),
            "the accuracy curve runs from 0 to max_k demonstrations in both formats",
        ),
        Knob(
            "n_prompts",
            32,
            number(2, integer=True),
            "query facts per relation (the same facts with and without demonstrations)",
        ),
        Knob(
            "corruption",
            "subject",
            one_of(CORRUPTIONS),
            (
                'twin of the attribution: "subject" (another query subject, same demonstrations) or "both" (also '
                "shuffles the demonstrations objects)"
            ),
        ),
        Knob(
            "n_edges",
            "auto",
            fixed_budget,
            (
                "edges kept in each circuit: a count, a fraction, or auto (48, about 10 percent of the organism graph,"
                " on graphs up to 2,000 edges; else 400, the paper scale)"
            ),
        ),
        Knob("ig_steps", 5, number(1, integer=True), "EAP-IG interpolation steps (the paper default is 5)"),
        Knob(
            "n_attention_heads",
            3,
            number(1, integer=True),
            "heads with the most attention to the demonstrations, ablated when no head is new (and reported beside)",
        ),
        Knob(
            "ablate_attention_heads",
            "auto",
            one_of(("auto", True, False)),
            (
                "also ablate the heads with the most attention to the demonstrations beside the new heads (a Table 2 "
                "row each, with its own random sets): True, False or auto (graphs up to 2,000 edges; they always "
                "stand in where no head is new)"
            ),
        ),
        Knob(
            "n_random", 20, number(20, integer=True), "random head sets of the same size for the baseline (at least 20)"
        ),
        Knob(
            "ablation",
            "mean",
            one_of(["mean", "zero"]),
            'how Table 2 knocks heads out: "mean" (mean output over the k-shot prompts) or "zero"',
        ),
        Knob("seed", 0, None, "fixes the query facts, the demonstrations, the corrupt twins and the random head sets"),
        *output_knobs("05_in_context_learning"),
    ),
)
