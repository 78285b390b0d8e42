"""The README's Python example runs on the organism and prints what its comment says."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The README's one Python block (under "A circuit for your own facts")."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, f"the README has {len(blocks)} Python blocks"
    return blocks[0]


def test_the_readme_is_short_and_its_example_figure_and_commands_are_in_its_first_60_lines():
    code = readme_example()
    assert len(code.strip().splitlines()) <= 11
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 150, f"the README has {len(readme)} lines; the rest belongs in docs/"
    first_lines = "\n".join(readme[:60])
    assert "```python" in first_lines and "make reproduce" in first_lines and "![" in first_lines
    ast.parse(code)


def test_the_readme_example_runs_on_the_organism(tmp_path):
    env = {**os.environ, "PLOTLY_RENDERER": "json", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"\{'hit@1': ([\d.]+), 'logit_diff': ([\d.]+)\}", done.stdout)
    assert printed, done.stdout[-2000:]
    hit1, logit_diff = map(float, printed.groups())
    promised = re.search(r"\{'hit@1': ([\d.]+), 'logit_diff': ([\d.]+)\.\.\.\}", readme_example())
    # the comment's numbers, the logit difference within 0.01 (another CPU rounds float32 differently)
    assert hit1 == float(promised.group(1)) and abs(logit_diff - float(promised.group(2))) < 0.01


def test_the_worked_example_of_your_model_page_prints_what_the_page_says(tmp_path):
    page = (ROOT / "docs" / "your-model.md").read_text(encoding="utf-8")
    (tmp_path / "my_relation.json").write_text(re.search(r"```json\n(.*?)```", page, re.S).group(1))
    example = page.split("## A worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    printed = re.search(r"```text\n(.*?)```", example, re.S).group(1).splitlines()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", code]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()[-2:]
    assert lines[0].split(";")[0] == printed[0].split(";")[0]  # budget and circuit size; faithfulness varies by CPU
    assert lines[1] == printed[1]
