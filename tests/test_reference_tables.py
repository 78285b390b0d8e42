"""The versioned tables in figures/ are references: a fresh default run must match them within tolerance.

``make reproduce`` (and nbval in ``make test``, which runs every notebook's default before the unit tests)
writes the default run's tables to ``runs/<notebook>/``; here each is compared with its reference
``figures/<same name>`` within :data:`kc_utils.notebook.REFERENCE_TOLERANCE`. Refreshing a reference is
``make publish`` (explicit, never a side effect of a run). A table with no fresh copy is skipped and says
which command writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kc_utils.notebook import REFERENCE_TOLERANCE, compare_with_reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = sorted((ROOT / "figures").glob("[0-9][0-9]_*.csv"))
NOTEBOOKS = {p.stem[:2]: p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}


def _fresh_copy(reference: Path) -> Path:
    return ROOT / "runs" / NOTEBOOKS.get(reference.name[:2], "?") / reference.name


def test_every_reference_belongs_to_a_notebook():
    assert REFERENCES, "figures/ holds the versioned reference tables"
    assert {r.name[:2] for r in REFERENCES} <= set(NOTEBOOKS)


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda p: p.stem)
def test_a_fresh_default_run_matches_its_reference_table(reference):
    fresh = _fresh_copy(reference)
    if not fresh.exists():
        model = reference.stem.rsplit("_", 1)[-1]
        pytest.skip(f"no fresh {fresh.relative_to(ROOT)}: `make reproduce MODEL={model}` (or `make test`) writes it")
    problems = compare_with_reference(pd.read_csv(fresh), pd.read_csv(reference), reference.name)
    assert not problems, (
        f"{len(problems)} value(s) of {reference.name} moved past the tolerance "
        f"({REFERENCE_TOLERANCE}); if the change is intended, `make publish` refreshes the references. "
        "A non-default run without out_dir also writes runs/<notebook>/: rerun `make reproduce` first.\n"
        + "\n".join(problems[:20])
    )


# ----------------------------------------------------------------------------- the comparison itself
REFERENCE = pd.DataFrame(
    {"relation": ["company_hq", "country_language", "average"], "n_edges": [24, 19, 21], "hit1": [0.9, 0.5, 0.0]}
)


def test_last_digit_flips_are_within_tolerance_and_a_real_change_is_not():
    flipped = REFERENCE.assign(hit1=[0.9001, 0.4999, 0.0001])
    assert compare_with_reference(flipped, REFERENCE, "t.csv") == []
    moved = REFERENCE.assign(hit1=[0.9, 0.52, 0.0])
    assert compare_with_reference(moved, REFERENCE, "t.csv") == [
        "t.csv row 1 (relation=country_language) column hit1: fresh 0.52 vs reference 0.5 (tolerance 0.0010)"
    ]


def test_the_tolerance_grows_with_the_value():
    big = pd.DataFrame({"name": ["a"], "logit_diff": [10.0]})
    assert compare_with_reference(big.assign(logit_diff=[10.009]), big, "b.csv") == []
    assert len(compare_with_reference(big.assign(logit_diff=[10.02]), big, "b.csv")) == 1


def test_counts_text_nan_and_shape_must_match_exactly():
    changed = REFERENCE.assign(n_edges=[24, 20, 21], relation=["company_hq", "country_language", "mean"])
    problems = compare_with_reference(changed, REFERENCE, "t.csv")
    assert problems == [
        "t.csv row 2 column relation: fresh 'mean' vs reference 'average' (must be equal)",
        "t.csv row 1 (relation=country_language) column n_edges: fresh 20 vs reference 19 (must be equal)",
    ]
    with_nan = REFERENCE.assign(hit1=[0.9, np.nan, 0.0])
    assert compare_with_reference(with_nan, with_nan, "t.csv") == []
    assert "fresh nan vs reference 0.5" in compare_with_reference(with_nan, REFERENCE, "t.csv")[0]
    assert "2 rows in the fresh table vs 3" in compare_with_reference(REFERENCE.iloc[:2], REFERENCE, "t.csv")[0]
    assert "columns differ" in compare_with_reference(REFERENCE.rename(columns={"hit1": "h"}), REFERENCE, "t.csv")[0]
