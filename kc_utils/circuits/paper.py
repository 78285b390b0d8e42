"""The published numbers the notebooks print beside their own (as data, with their source).

Source: Yao et al. 2024, *Knowledge Circuits in Pretrained Transformers*, Table 1 (GPT-2 medium,
Hit@10; circuits found with ACDC; the authors' Dtest is scored against the Dval labels, see
:mod:`kc_utils.circuits.table1`). Transcribed in ``../shared/PAPERS.md``.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["PAPER_TABLE1", "paper_table1"]

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
