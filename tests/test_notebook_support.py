"""Notebook support: knob checks, where outputs go, rounded tables, circuit reuse; a real run from an empty folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kc_utils.circuits.graph import Graph
from kc_utils.notebook import (
    as_list,
    check_choice,
    check_range,
    load_circuit_if_matching,
    project_root,
    run_outputs,
    write_table,
)
from kc_utils.shape import ModelShape

ROOT = Path(__file__).resolve().parents[1]


def test_a_single_name_is_a_list_of_one():
    assert as_list("country_language", "relations") == ["country_language"]
    assert as_list(["a", "b"], "relations") == ["a", "b"] and as_list(None, "relations") is None
    with pytest.raises(ValueError, match="relations must be a name or a list"):
        as_list(3, "relations")


def test_knob_checks_name_the_knob_and_the_allowed_values():
    assert check_choice("eap", "method", ("eap", "acdc")) == "eap"
    with pytest.raises(ValueError, match="method='eapp' is not one of"):
        check_choice("eapp", "method", ("eap", "acdc"))
    with pytest.raises(ValueError, match=r"threshold=1.5 is outside \[0, 1\]"):
        check_range(1.5, "threshold", 0, 1)
    with pytest.raises(ValueError, match="whole number"):
        check_range(2.5, "n_val", 1, integer=True)
    with pytest.raises(ValueError, match="must be a number"):
        check_range("3", "n_val", 1)


def test_outputs_go_where_out_dir_or_publish_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a checkout: the working directory stands for it
    assert project_root() == tmp_path.resolve()
    given = run_outputs("01_x", "org/model", tmp_path / "mine", publish=True)
    assert given.folder == (tmp_path / "mine").resolve() and not given.published and given.model_tag == "org_model"
    published = run_outputs("01_x", "m", None, publish=True)
    assert published.folder == (tmp_path / "figures").resolve() and published.published
    default = run_outputs("01_x", "m", None, publish=False)
    assert default.folder == (tmp_path / "runs" / "01_x").resolve() and default.folder.is_dir()


def test_tables_are_rounded_so_reruns_are_byte_identical(tmp_path):
    a = pd.DataFrame({"x": [0.1 + 0.2, 1 / 3], "n": [1, 2], "name": ["a", "b"]})
    b = pd.DataFrame({"x": [0.3, 0.33333333333333337], "n": [1, 2], "name": ["a", "b"]})
    write_table(a, tmp_path / "a.csv")
    write_table(b, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_text() == "x,n,name\n0.3000,1,a\n0.3333,2,b\n"


def test_a_saved_circuit_is_reused_only_when_its_provenance_matches(tmp_path):
    graph = Graph(ModelShape(2, 2, 2, 8))
    graph.provenance = {"model": "m", "method": "eap-ig", "seed": 0}
    graph.to_json(tmp_path / "r.json")
    reused, reason = load_circuit_if_matching(tmp_path / "r.json", {"model": "m", "method": "eap-ig"})
    assert reused is not None and reason.startswith("reused")
    refused, reason = load_circuit_if_matching(tmp_path / "r.json", {"model": "m", "method": "acdc"})
    assert refused is None and "method: saved 'eap-ig' vs asked 'acdc'" in reason
    missing, reason = load_circuit_if_matching(tmp_path / "none.json", {})
    assert missing is None and "no saved circuit" in reason


def test_notebook_01_runs_from_an_empty_folder_and_writes_only_where_out_dir_says(tmp_path):
    """As on Colab: the kernel starts in an empty folder; a non-default run writes under out_dir only."""
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    tracked_before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    command = [
        sys.executable,
        "-m",
        "kc_utils.execute",
        str(ROOT / "notebooks" / "01_knowledge_circuits.ipynb"),
        str(tmp_path / "run.ipynb"),
        "--cwd",
        str(cwd),
        "-p",
        "relations",
        "company_hq",
        "-p",
        "n_val",
        "8",
        "-p",
        "n_test",
        "8",
        "-p",
        "n_random",
        "2",
        "-p",
        "compare_acdc",
        "False",
        "-p",
        "out_dir",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(cwd.iterdir())
    assert (out / "01_table1_kc-organism.csv").exists() and (out / "circuits" / "company_hq.json").exists()
    table = pd.read_csv(out / "01_table1_kc-organism.csv")
    assert list(table["relation"]) == ["company_hq", "average"]
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked_after == tracked_before
