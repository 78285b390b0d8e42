"""`make reproduce` shares the CPU cores out among the notebooks it runs at once (``JOBS``).

Two SmolLM2 notebooks of two torch threads each on two cores made every pass about 4x slower than one
thread each (measured 2026-12-06: 19.8 s against 5.0 s per forward/backward), so each notebook's kernel
gets ``OMP_NUM_THREADS`` = cores // JOBS, at least one. Checked on make's dry run of one notebook.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
