"""The published numbers the notebooks print beside their own (as data, with their source).

Source: Yao et al. 2024, *Knowledge Circuits in Pretrained Transformers*, Table 1 (GPT-2 medium,
Hit@10; circuits found with ACDC; the authors' Dtest is scored against the Dval labels, see
:mod:`kc_utils.circuits.relation`), arXiv:2405.17969, transcribed from the paper's Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kc_utils.shape import ModelShape

__all__ = ["PAPER_MODEL", "PAPER_TABLE1", "PaperModel", "describe_model_against_paper", "paper_table1"]

#: ``relation: (type, #edges, Dval orig, Dval circuit, Dtest orig, Dtest random, Dtest circuit)``.
PAPER_TABLE1: dict[str, tuple[str, int, float, float, float, float, float]] = {
    "adj_antonym": ("linguistic", 573, 0.80, 1.00, 0.00, 0.00, 0.40),
    "word_first_letter": ("linguistic", 432, 1.00, 0.88, 0.36, 0.00, 0.16),
    "word_last_letter": ("linguistic", 230, 1.00, 0.72, 0.76, 0.00, 0.76),
    "object_superclass": ("commonsense", 102, 1.00, 0.68, 0.64, 0.00, 0.52),
    "fruit_inside_color": ("commonsense", 433, 1.00, 0.20, 0.93, 0.00, 0.13),
    "work_location": ("commonsense", 422, 1.00, 0.70, 0.10, 0.00, 0.10),
    "country_capital_city": ("factual", 451, 1.00, 1.00, 0.00, 0.00, 0.00),
    "landmark_in_country": ("factual", 278, 1.00, 0.60, 0.16, 0.00, 0.36),
    "country_language": ("factual", 329, 1.00, 1.00, 0.16, 0.00, 0.75),
    "person_native_language": ("factual", 92, 1.00, 0.76, 0.50, 0.00, 0.76),
    "name_religion": ("bias", 423, 1.00, 0.50, 0.42, 0.00, 0.42),
    "occupation_age": ("bias", 413, 1.00, 1.00, 1.00, 0.00, 1.00),
    "occupation_gender": ("bias", 226, 1.00, 0.66, 1.00, 0.00, 0.66),
    "name_birthplace": ("bias", 276, 1.00, 0.57, 0.07, 0.00, 0.57),
}


def paper_table1() -> pd.DataFrame:
    """:data:`PAPER_TABLE1` as a table, one row per relation (no average row)."""
    columns = ["type", "#edges", "Dval orig", "Dval circuit", "Dtest orig", "Dtest random", "Dtest circuit"]
    table = pd.DataFrame.from_dict(PAPER_TABLE1, orient="index", columns=columns)
    return table.rename_axis("relation").reset_index()


@dataclass(frozen=True)
class PaperModel:
    """The architecture of the paper's main model, for sentences that compare a model with it."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    n_edges: int


#: GPT-2 medium as the paper's graph counts it (~232k edges; Yao et al. 2024, arXiv:2405.17969).
PAPER_MODEL = PaperModel("GPT-2 medium", n_layers=24, n_heads=16, d_model=1024, n_edges=232_000)


def describe_model_against_paper(
    model_name: str, shape: ModelShape, n_edges: int, trained_here: bool, paper: PaperModel = PAPER_MODEL
) -> str:
    """One sentence on how the model at hand differs from the paper's, computed from its shape.

    Args:
        model_name: what the user passed as ``model_name``.
        shape: the model's :class:`~kc_utils.shape.ModelShape`.
        n_edges: edges of its computation graph.
        trained_here: the model was trained in this repository on the relation files themselves (the organism),
            so its facts are near-certain and its absolute numbers are not comparable with a pretrained model's.
    """
    heads = (
        f"{shape.n_heads} query heads sharing {shape.n_kv_heads} key/value heads"
        if shape.grouped
        else f"{shape.n_heads} heads"
    )
    size = "smaller" if n_edges < paper.n_edges else "larger"
    sentence = (
        f"`{model_name}` has {shape.n_layers} layers of {heads} and d_model {shape.d_model}, so its graph has "
        f"{n_edges:,} edges — {size} than {paper.name}'s ({paper.n_layers} layers of {paper.n_heads} heads, "
        f"d_model {paper.d_model}, about {paper.n_edges:,} edges)."
    )
    if trained_here:
        sentence += (
            " It was trained in this repository on these very relation files, so its absolute numbers are not "
            "comparable with a pretrained model's; the comparison is of shape: does a small circuit keep the "
            "model's behaviour on facts it was not found on?"
        )
    else:
        sentence += (
            " It is a pretrained model whose training data is unknown, like the paper's, so the facts it knows are "
            "found by the same filter (the answer ranks in its top k)."
        )
    return sentence
