"""What every numbered notebook must honour, checked without running it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from kc_utils.execute import UnknownParameterError, check_parameters, declared_parameters, main, parse_value
from kc_utils.notebook import REPOSITORY_URL

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COMMON = {"model_name", "seed", "device", "out_dir", "publish"}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_there_are_numbered_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_parses_cleanly_and_has_the_common_knobs(path, caplog):
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    lines = [line for line in "".join(tagged[0]["source"]).splitlines() if line.strip()]
    with caplog.at_level(logging.WARNING):
        declared = declared_parameters(path)
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert len(declared) == len(lines), "every line of the parameters cell is one knob papermill understands"
    assert COMMON <= set(declared)
    assert declared["out_dir"] == "None" and declared["publish"] == "False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_hold_no_algorithm_code_and_one_repository_address(path):
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    assert not re.search(r"^\s*(def|class)\s", code, re.M), "notebooks import from kc_utils; they define nothing"
    assert "sys.path" not in code
    addresses = set(re.findall(r"https://github\.com/[\w-]+/[\w-]+", code))
    assert addresses <= {REPOSITORY_URL}


def test_readme_uses_the_one_repository_address():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    owners = {m for m in re.findall(r"github(?:\.com|/)/?([\w-]+/[\w-]+)", readme) if "knowledge" in m}
    assert owners <= {REPOSITORY_URL.removeprefix("https://github.com/")}


def test_unknown_parameters_are_refused_with_the_known_ones(tmp_path):
    notebook = NOTEBOOKS[0]
    with pytest.raises(UnknownParameterError, match="has no parameter 'n_edge' \\(did you mean 'n_edges'\\?\\)"):
        check_parameters(notebook, {"n_edge": 400})
    check_parameters(notebook, {"seed": 1})
    assert main([str(notebook), str(tmp_path / "out.ipynb"), "-p", "n_edge", "400"]) == 2
    assert not (tmp_path / "out.ipynb").exists()  # refused before anything ran


def test_values_parse_as_literals():
    assert parse_value("40") == 40 and parse_value("0.1") == 0.1 and parse_value("None") is None
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("country_language") == "country_language"
    assert parse_value("True") is True
