"""Each notebook's knobs are declared once (kc_utils.notebook_specs): its parameters cell is their rendering, one call
checks them, and its Checks cell asks the spec whether this is the run it records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kc_utils.notebook import ANY, Knob, NotebookSpec, number, one_of
from kc_utils.notebook_specs import SPECS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_every_notebook_has_a_spec():
    assert sorted(SPECS) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_is_the_spec_rendered(path):
    (cell,) = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert _source(cell) == SPECS[path.stem].parameters_cell()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_call_checks_the_knobs_and_the_checks_cell_reads_the_spec(path):
    code = [_source(c) for c in _cells(path) if c["cell_type"] == "code"]
    setup = next(i for i, c in enumerate(code) if "SPEC.check(globals())" in c)
    assert f'SPEC = SPECS["{path.stem}"]' in code[setup]
    assert "check_range(" not in code[setup].split("start(")[0], "knob checks belong in the spec"
    checks = [c for c in code if "SPEC.changed(globals())" in c]
    assert len(checks) == 1 and "defaults = " not in checks[0], "the Checks cell reads the defaults from the spec"


@pytest.mark.parametrize("notebook", sorted(SPECS))
def test_the_defaults_pass_and_are_the_recorded_run_once_resolved(notebook):
    spec = SPECS[notebook]
    values = spec.defaults()
    spec.check(values)
    resolved = {k.name: k.recorded_value for k in spec.knobs if k.recorded_value is not ANY}
    assert spec.changed({**values, **resolved}) == []
    assert spec.changed({**values, **resolved, "model_name": "smollm2-135m"}) == ["model_name"]


@pytest.mark.parametrize(
    ("notebook", "knobs", "match"),
    [
        ("01_knowledge_circuits", {"relations": ["no_such"]}, "unknown relations \\['no_such'\\]"),
        ("01_knowledge_circuits", {"method": "eapp"}, "method='eapp' is not one of"),
        ("02_head_roles", {"prompt_index": 24}, "prompt_index=24 is outside \\[0, 23\\]"),
        ("02_head_roles", {"n_edges": -3}, "n_edges=-3: use an edge count"),
        ("03_knowledge_editing", {"n_edits": 19}, "n_edits=19 is outside \\[20, inf\\]"),
        ("03_knowledge_editing", {"n_edits": "x"}, "n_edits must be a number"),
        ("03_knowledge_editing", {"case_index": 20}, "case_index=20 is outside \\[0, 19\\]"),
        ("03_knowledge_editing", {"model_name": "smollm2-135m", "covariance": "corpus"}, "organism's own training"),
        ("03_knowledge_editing", {"ftm_norm_constraint": -1.0}, "ftm_norm_constraint=-1.0 is outside"),
        ("04_hallucination", {"n_random": 19}, "n_random=19 is outside \\[20, inf\\]"),
        ("04_hallucination", {"survey_relations": "no_such"}, "survey_relations='no_such' is not one of"),
        ("05_in_context_learning", {"relations": []}, "relations is empty"),
        ("05_in_context_learning", {"max_k": 2}, "max_k=2 is outside \\[3, inf\\]"),
        ("06_query_localization", {"cas_betas": [1.0]}, "cas_betas must be \\[beta1, beta2\\]"),
        ("07_multi_hop", {"unrelated_relations": ["country_language"]}, "a relation of the composition"),
        ("07_multi_hop", {"unrelated_relations": []}, "unrelated_relations is empty"),
    ],
)
def test_a_bad_knob_is_refused_naming_it(notebook, knobs, match):
    spec = SPECS[notebook]
    with pytest.raises(ValueError, match=match):
        spec.check({**spec.defaults(), **knobs})


def test_a_spec_renders_checks_and_compares_its_knobs():
    spec = NotebookSpec(
        "00_toy",
        (
            Knob("relation", "auto", one_of(["auto", "a", "b"]), "the relation", recorded="a"),
            Knob("n", 3, number(1, lambda knobs: knobs["m"], integer=True), "at most m"),
            Knob("m", 5, number(1, integer=True), "the bound"),
            Knob("lr", 5e-4, number(0), "a step", literal="5e-4"),
            Knob("device", "auto", None, "where", recorded=ANY),
        ),
    )
    assert spec.parameters_cell() == (
        'relation = "auto"  # the relation\nn = 3  # at most m\nm = 5  # the bound\nlr = 5e-4  # a step\n'
        'device = "auto"  # where'
    )
    values = spec.defaults()
    assert spec.changed(values) == ["relation"]
    assert spec.changed({**values, "relation": "a", "device": "cpu"}) == []
    with pytest.raises(ValueError, match="n=6 is outside \\[1, 5\\]"):
        spec.check({**values, "n": 6})
    with pytest.raises(ValueError, match="m must be a number"):  # n's bound is left to m's own check
        spec.check({**values, "m": "x"})
    with pytest.raises(ValueError, match="declared twice"):
        NotebookSpec("00_toy", (spec["n"], spec["n"]))
