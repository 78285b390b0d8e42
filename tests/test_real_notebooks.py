"""Smoke runs on the real models, small knobs, outputs in a temporary folder: notebooks 01 and 06 on SmolLM2-135M,
notebook 03 on Gemma-3-270M (a post-norm family; its first default run found ROME writing in the wrong space).

They check that no organism assumption stops a notebook on a real model: the notebook runs to the end, a relation
the model cannot serve is left out with its reason, outputs land where ``out_dir`` says, tracked files stay as
they are, and no computed sentence speaks of the organism.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(
    name: str, tmp_path: Path, knobs: dict[str, object], yaml: str | None = None, model: str = "smollm2-135m"
) -> tuple[Path, str]:
    """Execute ``notebooks/<name>.ipynb`` on ``model`` with ``knobs`` (and a YAML mapping of list knobs)."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "kc_utils.execute",
        str(ROOT / "notebooks" / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        "--cwd",
        str(tmp_path),
        "-p",
        "model_name",
        model,
        "-p",
        "device",
        "cpu",
        "-p",
        "out_dir",
        str(out),
        *[part for knob, value in knobs.items() for part in ("-p", knob, str(value))],
        *(["-y", yaml] if yaml else []),
    ]
    tracked_before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    tracked_after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked_after == tracked_before
    executed = json.loads((tmp_path / f"{name}.ipynb").read_text())
    text = "\n".join(
        "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/markdown", ""))
        for cell in executed["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    )
    return out, text


@pytest.mark.usefixtures("smollm2_checkpoint")
def test_notebook_01_on_smollm2_leaves_out_what_it_cannot_serve(tmp_path):
    out, text = run_notebook(
        "01_knowledge_circuits",
        tmp_path,
        {"n_val": 6, "n_test": 6, "ig_steps": 2, "n_edges": 200, "n_random": 1},
        yaml="relations: [country_capital_city, word_last_letter]",
    )
    table = pd.read_csv(out / "01_table1_smollm2-135m.csv")
    assert list(table["relation"]) == ["country_capital_city", "average"]
    assert "word_last_letter: every known fact has the same answer" in text
    assert "ACDC comparison skipped: compare_acdc='auto' skips ACDC on this graph of 70,651 edges" in text
    row = table.iloc[0]
    assert row["Dval hit@10 full"] >= 0.8  # known facts only
    assert row["#edges"] <= 200
    assert row["Dval hit@10 circuit"] > row["Dval hit@10 empty"]
    assert "the organism" not in text.lower()


@pytest.mark.usefixtures("smollm2_checkpoint")
def test_notebook_06_on_smollm2_runs_to_the_end(tmp_path):
    out, text = run_notebook(
        "06_query_localization",
        tmp_path,
        {"n_facts": 2, "ig_steps": 2, "summary_facts": 0, "summary_steps": 2, "n_random": 2},
    )
    assert (out / "06_consistency_facts_smollm2-135m.csv").exists()
    assert "30 MLPs x 1536 neurons = 46,080 neurons searched" in text
    assert "the organism" not in text.lower()


def _gemma3_installed() -> bool:
    from kc_utils import gguf

    spec = gguf.PACKAGED_MODELS["gemma-3-270m"]
    return all(gguf._package_folder(m) is not None for m in (spec.module, *(c.module for c in spec.chunks)))


@pytest.mark.skipif(not _gemma3_installed(), reason="the Gemma 3 packages are not installed: run `make install`")
def test_notebook_03_on_gemma3_edits_with_the_scale_behind_its_post_norm(tmp_path):
    out, text = run_notebook(
        "03_knowledge_editing",
        tmp_path,
        {
            "edit_method": "ft-m",
            "edit_layer": 3,
            "sweep_layers": 3,
            "comparison_layers": 3,
            "n_prefixes": 2,
            "rome_steps": 8,
            "n_covariance_texts": 20,
            "n_neighbours": 2,
            "leak_edits": 1,
            "n_edges": 100,
            "seed": 2,
        },
        model="gemma-3-270m",
    )
    assert "ROME's scale: authors ('auto': a post-feedforward norm stands between" in text
    assert "'auto' leaves out on a model of 18 layers" in text
    sweep = pd.read_csv(out / "03_sweep_gemma-3-270m.csv")
    assert set(sweep["method"]) == {"rome", "ft-m"} and set(sweep["layer"]) == {3}
    rome = sweep[sweep["method"] == "rome"].iloc[0]
    assert rome["reliability_mean"] >= 0.5  # the residual scale in the value's space edited none of 6 at layer 6
    assert "the organism" not in text.lower()
