"""The knobs of notebook 03 (knowledge editing), declared once: :data:`KNOWLEDGE_EDITING`.

The layers (``edit_layer``, ``sweep_layers``, ``comparison_layers``) are checked against the model's depth once it
is loaded, in the notebook.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kc_utils.data.relations import list_relations
from kc_utils.editing.layer_sweep import METHODS as EDIT_METHODS
from kc_utils.notebook import Knob, NotebookSpec, number, one_of
from kc_utils.notebook_specs.common import MODEL_NAME, fixed_budget, output_knobs

__all__ = ["KNOWLEDGE_EDITING"]

_COVARIANCE_SOURCES = ("auto", "corpus", "generated", "relations", "identity")


def _covariance(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
    if value not in _COVARIANCE_SOURCES and not Path(str(value)).is_file():
        raise ValueError(
            f"covariance={value!r} is not auto, corpus, generated, relations, identity or an existing text file"
        )
    if value == "corpus" and knobs["model_name"] != "kc-organism":
        raise ValueError(
            "covariance='corpus' is the organism's own training text; for other models use generated, relations, "
            "a text file or identity"
        )


KNOWLEDGE_EDITING = NotebookSpec(
    "03_knowledge_editing",
    (
        MODEL_NAME,
        Knob(
            "relation",
            "auto",
            one_of(lambda knobs: ["auto", *list_relations()]),
            (
                "the relation edited: auto (the first of EDIT_RELATION_ORDER with n_edits single-token edits on the "
                "model: product_by_company, the paper case, on the organism) or a relation"
            ),
            recorded="product_by_company",
        ),
        Knob(
            "edit_method",
            "rome",
            one_of(EDIT_METHODS),
            "the method of the case study and of the leak circuits: rome or ft-m",
        ),
        Knob("edit_layer", 0, number(0, integer=True), "the MLP layer the case study edits (the paper: 0)"),
        Knob(
            "case_index",
            0,
            number(0, lambda knobs: knobs["n_edits"] - 1, integer=True),
            "which of the edits is the case study",
        ),
        Knob("n_edits", 20, number(20, integer=True), "edits per method and layer in the sweep (at least 20)"),
        Knob(
            "sweep_layers",
            None,
            None,
            "None: every layer up to 6 layers, else spread layers plus ROME's third of the depth (printed)",
        ),
        Knob(
            "n_sweep_layers",
            None,
            number(1, integer=True, optional=True),
            (
                "None: 4 spread layers (first, thirds, last: 0, 8, 15, 23 on the paper's 24 layers, its ROME layer 8 "
                "among them)"
            ),
        ),
        Knob(
            "comparison_layers",
            None,
            None,
            (
                "layers of the variant, the departures and C's sources; None: every sweep layer up to 6 layers, else "
                "ROME's (a third of the depth)"
            ),
        ),
        Knob("n_neighbours", 8, number(1, integer=True), "other subjects of the relation per edit (locality and leak)"),
        Knob(
            "covariance",
            "auto",
            _covariance,
            (
                "ROME's C from: auto (corpus on the organism, generated elsewhere), corpus, generated, relations, "
                "identity, or a text file"
            ),
        ),
        Knob(
            "n_covariance_texts",
            None,
            number(1, integer=True, optional=True),
            (
                "None: 1000 corpus documents, 200 generated texts, 2000 relation sentences (the first of each "
                "relation), or every line of the file"
            ),
        ),
        Knob(
            "compare_covariance",
            "auto",
            one_of(["auto", True, False]),
            "also write the same edits with C from the other texts and from the identity (auto: on up to 6 layers)",
        ),
        Knob(
            "n_prefixes",
            4,
            number(0, integer=True),
            "texts the model generates itself before the edit prompt (the authors: 20)",
        ),
        Knob(
            "rome_variant",
            "auto",
            one_of(["auto", True, False]),
            "also sweep our earlier template-averaged ROME beside the authors' default (auto: on up to 6 layers)",
        ),
        Knob("rome_steps", 20, number(1, integer=True), "forward passes of the value optimisation (the authors: 20)"),
        Knob("rome_lr", 0.5, number(0), "Adam step of the value (the authors: 0.5)"),
        Knob(
            "rome_scale",
            "auto",
            one_of(["auto", "residual", "authors"]),
            (
                "residual (step in units of the residual RMS, clamp and decay against the residual), authors, or auto "
                "(residual, but authors where a post-feedforward norm stands between the MLP and the residual stream)"
            ),
        ),
        Knob("rome_kl_factor", 0.0625, number(0), "weight of the KL term on SUBJECT is a (the authors: 0.0625)"),
        Knob(
            "measure_departures",
            "auto",
            one_of(["auto", True, False]),
            "sweep each departure from the authors' ROME and from EasyEdit's FT-M on its own (auto: on up to 6 layers)",
        ),
        Knob(
            "ftm_part",
            "out",
            one_of(["mlp", "out"]),
            "FT-M trains the output projection (out, EasyEdit) or the whole MLP (mlp)",
        ),
        Knob("ftm_lr", 5e-4, number(0), "FT-M Adam learning rate (EasyEdit 5e-4)", literal="5e-4"),
        Knob("ftm_max_steps", 25, number(1, integer=True), "FT-M updates at most (EasyEdit 25)"),
        Knob(
            "ftm_stop",
            "loss",
            one_of(["loss", "prob"]),
            "loss (EasyEdit, stop below 0.01) or prob (stop once the target is top-1 above 0.9)",
        ),
        Knob(
            "ftm_norm_constraint",
            None,
            number(0, optional=True),
            "None, or EasyEdit's elementwise clamp of the trained weights (its GPT-2 XL file 5e-4)",
        ),
        Knob(
            "n_edges",
            "auto",
            fixed_budget,
            (
                "edges of the case-study and leak circuits: a count, a fraction, or auto (30 on graphs up to 2,000 "
                "edges, else 400, the paper scale)"
            ),
        ),
        Knob("leak_edits", 3, number(1, integer=True), "edits whose leaking subjects get circuits"),
        Knob("seed", 0, None, "seed of the edit choice, the neighbours and the generated texts"),
        *output_knobs("03_knowledge_editing"),
    ),
)
