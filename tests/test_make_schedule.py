"""How `make reproduce` (and `make publish`) schedule the notebooks: threads per notebook and their order.

Two SmolLM2 notebooks of two torch threads each on two cores made every pass about 4x slower than one
thread each (measured 2026-12-06: 19.8 s against 5.0 s per forward/backward), so each notebook's kernel
gets ``OMP_NUM_THREADS`` = cores // JOBS, at least one (checked on make's dry run of one notebook). And
notebook 02, which reads 01's circuits, runs straight after 01 in the same slot (checked with faked
notebook runs that log their start and end).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "runs/07_multi_hop.ipynb"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("nproc") is None, reason="needs make")


def _threads_of_dry_run(*make_args: str) -> int:
    """The OMP_NUM_THREADS make would give the notebook's kernel (``make -n``, nothing runs)."""
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.installed", NOTEBOOK, *make_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": ""},
    ).stdout
    found = re.findall(r"OMP_NUM_THREADS=(\S+) MKL_NUM_THREADS=(\S+) \S+ -m kc_utils.execute", out)
    assert len(found) == 1, out
    omp, mkl = found[0]
    assert omp == mkl
    return int(omp)


def _cores() -> int:
    return int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)


def test_one_job_gets_every_core():
    assert _threads_of_dry_run("JOBS=1") == _cores()


def test_parallel_jobs_share_the_cores_and_never_get_zero_threads():
    cores = _cores()
    assert _threads_of_dry_run("JOBS=2") == max(1, cores // 2)
    assert _threads_of_dry_run(f"JOBS={cores * 4}") == 1


def test_threads_can_be_set_by_hand():
    assert _threads_of_dry_run("JOBS=2", "THREADS=3") == 3


# ----------------------------------------------------------------------------- the order notebooks run in
FAKE_NOTEBOOK_RUN = """#!{python}
# stands in for `python -m kc_utils.execute notebooks/X.ipynb runs/X.ipynb ...`: logs its start and end. The notebook
# named FAKE_HOLD (the longest) keeps its slot until every notebook in FAKE_OTHERS has ended, so that the others run
# one after another in the other slot and their start order is make's, not a race between two starting processes.
import os, sys, time
name = os.path.basename(sys.argv[3])[:2]
log_path = os.environ["FAKE_LOG"]
with open(log_path, "a") as log:
    log.write(f"start {{name}}\\n")
if name == os.environ.get("FAKE_HOLD"):
    others = [n for n in os.environ["FAKE_OTHERS"].split(",") if n]
    deadline = time.monotonic() + 120
    while not all(f"end {{n}}" in open(log_path).read().split("\\n") for n in others):
        if time.monotonic() > deadline:
            sys.exit(f"{{name}} waited 120 s for {{others}} to end")
        time.sleep(0.02)
else:
    time.sleep({{"01": 0.2, "02": 0.4}}.get(name, 0.1))
with open(log_path, "a") as log:
    log.write(f"end {{name}}\\n")
"""


def _run_order(tmp_path: Path, jobs: int, *make_args: str, hold: str | None = None) -> list[str]:
    """Events ('start 01', 'end 01', ...) of `make run-notebooks` with every notebook's run faked.

    ``hold`` (with ``jobs`` of 2) is the longest: it ends only after every other notebook but 01 and 02, which run
    in the other slot, so the order they start in is make's; 01 is short, so the schedule make picks decides whether
    02 follows 01 at once.
    """
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        (project / "notebooks" / notebook.name).write_text("{}")
    (project / "pyproject.toml").write_text("")
    (project / ".venv").mkdir()
    installed = project / ".venv" / ".installed"
    installed.write_text("")
    os.utime(installed, (2**31, 2**31))  # newer than pyproject.toml: nothing to install
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_NOTEBOOK_RUN.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "events.log"
    present = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    others = ",".join(n for n in present if n not in ("01", "02", hold))
    subprocess.run(
        ["make", "--no-print-directory", f"-j{jobs}", "run-notebooks", f"JOBS={jobs}", f"PY={fake}"]
        + ["PROGRESS_EVERY=0.05", *make_args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAKEFLAGS": "", "FAKE_LOG": str(log), "FAKE_HOLD": hold or "", "FAKE_OTHERS": others},
    )
    return log.read_text().split("\n")[:-1]


def _most_at_once(events: list[str]) -> int:
    running, most = 0, 0
    for event in events:
        running += 1 if event.startswith("start") else -1
        most = max(most, running)
    return most


def test_notebook_02_starts_as_soon_as_01_is_done_and_jobs_bound_the_parallel_runs(tmp_path):
    events = _run_order(tmp_path, jobs=2, hold="05")
    n_notebooks = len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    assert sorted(e for e in events if e.startswith("start")) == sorted({e for e in events if e.startswith("start")})
    assert len(events) == 2 * n_notebooks, events
    assert events.index("start 02") > events.index("end 01")
    # the pair holds one slot and 05 the other, so no third notebook starts between 01's end and 02's start
    assert events.index("start 02") == events.index("end 01") + 1, events
    assert _most_at_once(events) == 2


def test_one_job_runs_the_notebooks_in_turn(tmp_path):
    events = _run_order(tmp_path, jobs=1)
    assert _most_at_once(events) == 1
    assert events.index("start 02") == events.index("end 01") + 1


def _model_order(model: str) -> list[str]:
    """The Makefile's longest-first order for ``model``."""
    return re.search(rf"^LONGEST_FIRST_{model} := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()


def _started_after_the_pair(events: list[str]) -> list[str]:
    return [e.split()[1] for e in events if e.startswith("start") and e.split()[1] not in ("01", "02")]


def _expected(named: list[str]) -> list[str]:
    present = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [n for n in named if n in present] + [n for n in present if n not in named and n not in ("01", "02")]


@pytest.mark.parametrize("model", [None, "smollm2-135m", "gemma-3-270m"])
def test_the_other_notebooks_start_longest_first_in_the_models_order(tmp_path, model):
    """A model's longest notebook starts beside the pair, the rest in its order; a model with no measured order (the
    organism) takes SmolLM2's."""
    named = _model_order(model or "smollm2-135m")
    events = _run_order(tmp_path, 2, *([f"MODEL={model}"] if model else []), hold=named[0])
    assert _started_after_the_pair(events) == _expected(named), events
    assert events[:2] in (["start 01", f"start {named[0]}"], [f"start {named[0]}", "start 01"]), events


def test_the_two_real_models_orders_differ_and_name_each_notebook_once():
    smollm2, gemma = _model_order("smollm2-135m"), _model_order("gemma-3-270m")
    assert smollm2 != gemma
    for order in (smollm2, gemma):
        assert len(order) == len(set(order)) and not {"01", "02"} & set(order)


def test_an_order_given_by_hand_wins(tmp_path):
    events = _run_order(tmp_path, 2, "MODEL=gemma-3-270m", "LONGEST_FIRST=07 06", hold="07")
    assert _started_after_the_pair(events) == _expected(["07", "06"]), events
