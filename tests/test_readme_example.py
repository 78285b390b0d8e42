"""The README's Python example runs on the organism and prints what its comment says."""

from __future__ import annotations

import ast
import json
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pattern = (
        r"FoundCircuit\('capital': (\d+) of (\d+) edges, budget ([^;]+); faithfulness val ([\d.]+), test ([\d.]+)\)"
    )
    printed = re.search(pattern, done.stdout)
    promised = re.search(pattern, readme_example())
    assert printed and promised, done.stdout[-2000:]
    # the circuit's size and budget exactly; faithfulness within 0.01 (another CPU rounds float32 differently)
    assert printed.groups()[:3] == promised.groups()[:3]
    for got, said in zip(printed.groups()[3:], promised.groups()[3:]):
        assert abs(float(got) - float(said)) <= 0.01
    written = json.loads((tmp_path / "capital.json").read_text())
    assert set(written) >= {"cfg", "nodes", "edges"}
    assert sum(edge["in_graph"] for edge in written["edges"].values()) >= int(printed.group(1))


def test_the_relation_format_of_your_model_page_loads():
    """The page's JSON example is a relation file the loader accepts, with the facts it shows."""
    from kc_utils.data.relations import load_relation

    page = (ROOT / "docs" / "your-model.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"```json\n(.*?)```", page, re.S).group(1))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kc_relation_{os.getpid()}.json"
    path.write_text(json.dumps(example))
    try:
        relation = load_relation(str(path))
    finally:
        path.unlink()
    assert [(s.subject, s.object) for s in relation.samples][:2] == [("France", "Paris"), ("Japan", "Tokyo")]
