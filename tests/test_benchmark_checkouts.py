"""The same-run checkout comparisons of the speed benchmarks (benchmarks/_checkouts.py) and their wiring."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SPEED_BENCHMARKS = [
    "accuracy_speed.py",
    "editing_speed.py",
    "failure_analysis_speed.py",
    "head_passes_speed.py",
    "neuron_speed.py",
    "relation_circuit_speed.py",
]

sys.path.insert(0, str(BENCHMARKS))
from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker  # noqa: E402


def _checkout(tmp_path: Path, name: str, marker: str) -> Path:
    """A fake checkout whose ``kc_utils`` says which one it is."""
    folder = tmp_path / name
    (folder / "kc_utils").mkdir(parents=True)
    (folder / "kc_utils" / "__init__.py").write_text(f"WHICH = {marker!r}\n")
    return folder


def test_the_worker_imports_the_checkout_it_is_given_on_the_threads_asked(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, kc_utils\n"
        "print('progress noise')\n"
        "print(json.dumps({'which': kc_utils.WHICH, 'threads': os.environ['OMP_NUM_THREADS'], "
        "'mkl': os.environ['MKL_NUM_THREADS'], 'cwd': os.getcwd(), 'args': sys.argv[1:]}))\n"
    )
    before, after = _checkout(tmp_path, "before", "old"), _checkout(tmp_path, "after", "new")
    old = run_worker(script, before, ["--worker", "x"])
    new = run_worker(script, after, [], threads=3)
    assert (old["which"], new["which"]) == ("old", "new")
    assert (old["threads"], old["mkl"], new["threads"]) == ("1", "1", "3")
    assert Path(old["cwd"]).resolve() == before.resolve() and old["args"] == ["--worker", "x"]


def test_a_failing_worker_raises_with_its_stderr(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.exit('the model cannot serve this relation')\n")
    with pytest.raises(RuntimeError, match="cannot serve this relation"):
        run_worker(script, _checkout(tmp_path, "c", "c"), ["--worker"])


def test_a_worker_that_prints_no_json_last_is_an_error_not_a_result(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("print('{\"cpu_s\": 1}')\nprint('done')\n")
    with pytest.raises(RuntimeError, match="no JSON result"):
        run_worker(script, _checkout(tmp_path, "c", "c"), [])


def test_other_checkout_needs_a_folder_with_kc_utils(tmp_path):
    parser = argparse.ArgumentParser()
    assert other_checkout(parser, _checkout(tmp_path, "c", "c")) == (tmp_path / "c").resolve()
    for bad in (None, tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit):
            other_checkout(parser, bad)


def test_the_other_checkout_runs_first_and_the_ratio_is_this_over_other(tmp_path, capsys):
    calls = []
    other = _checkout(tmp_path, "before", "old")

    def run(which, checkout):
        calls.append((which, checkout))
        return {"cpu_s": {"other": 8.0, "this": 2.0}[which]}

    results = other_then_this(other, run)
    assert calls == [("other", other), ("this", ROOT)]
    assert cpu_ratio(results) == {"this_cpu_s": 2.0, "other_cpu_s": 8.0, "ratio": 0.25}
    assert capsys.readouterr().out.splitlines()[0].split() == ["other", "8.0", "s", "of", "CPU"]


@pytest.mark.parametrize("script", SPEED_BENCHMARKS)
def test_each_speed_benchmark_refuses_a_folder_that_is_not_a_checkout_before_any_work(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--other", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--other must name another checkout of the project" in done.stderr
