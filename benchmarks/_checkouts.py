"""Same-run comparisons of two checkouts: each benchmark's worker runs once per checkout, in its own process.

The speed benchmarks (``editing_speed.py``, ``head_passes_speed.py``, ``neuron_speed.py``,
``relation_circuit_speed.py``) measure this checkout against another one — usually a ``git worktree`` of the
commit before a change — in the same run, so that the ratio does not depend on how busy the machine was on
another day. Each runs its own script again with ``--worker …`` in a fresh Python whose ``PYTHONPATH`` is the
checkout measured, on one torch thread, and reads the one JSON line the worker prints last.

Example::

    from _checkouts import other_checkout, run_worker

    other = other_checkout(parser, args.other)
    result = run_worker(Path(__file__), other, ["--worker", "--model", "smollm2-135m"])
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ROOT", "cpu_name", "cpu_ratio", "other_checkout", "other_then_this", "run_worker"]

#: This checkout: the folder above ``benchmarks/``.
ROOT = Path(__file__).resolve().parent.parent


def other_checkout(parser: argparse.ArgumentParser, other: Path | None) -> Path:
    """``other`` resolved, or a usage error (``parser.error``) when it is not a checkout of the project.

    Examples:
        >>> import argparse
        >>> other_checkout(argparse.ArgumentParser(), ROOT) == ROOT
        True
    """
    if other is None or not (other / "kc_utils").is_dir():
        parser.error("--other must name another checkout of the project (a folder with kc_utils/)")
    return other.resolve()


def run_worker(script: Path, checkout: Path, worker_args: Sequence[str], threads: int = 1) -> dict:
    """Run ``script`` with ``worker_args`` against ``checkout``'s ``kc_utils``; the JSON line it printed last.

    The process imports the project from ``checkout`` (``PYTHONPATH``, and ``checkout`` as its working
    folder) and runs on ``threads`` OpenMP/MKL threads; ``script`` itself is this checkout's, so both sides run
    the same measurement.

    Raises:
        RuntimeError: the worker exited non-zero (the end of its stderr is in the message), or printed no JSON.

    Examples:
        >>> import sys, tempfile
        >>> script = Path(tempfile.mkdtemp()) / "w.py"
        >>> _ = script.write_text("import json, os; print(json.dumps({'threads': os.environ['OMP_NUM_THREADS']}))")
        >>> run_worker(script, ROOT, [])
        {'threads': '1'}
    """
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(script), *worker_args]
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(worker_args)} in {checkout} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as error:
        raise RuntimeError(f"worker in {checkout} printed no JSON result last: {done.stdout[-500:]!r}") from error


def other_then_this(other: Path, run: Callable[[str, Path], dict]) -> dict[str, dict]:
    """``run("other", other)`` then ``run("this", ROOT)``; each result's ``cpu_s`` printed as it comes.

    Examples:
        >>> results = other_then_this(ROOT, lambda which, checkout: {"cpu_s": 2.0 if which == "this" else 4.0})
        other      4.0 s of CPU
        this       2.0 s of CPU
        >>> cpu_ratio(results)["ratio"]
        0.5
    """
    results = {}
    for which, checkout in (("other", other), ("this", ROOT)):
        results[which] = run(which, checkout)
        print(f"{which:5s} {results[which]['cpu_s']:8.1f} s of CPU", flush=True)
    return results


def cpu_ratio(results: dict[str, dict]) -> dict[str, float]:
    """The report's CPU fields from :func:`other_then_this`'s results: both times and ``this / other``."""
    this, other = results["this"]["cpu_s"], results["other"]["cpu_s"]
    return {"this_cpu_s": this, "other_cpu_s": other, "ratio": this / other}


def cpu_name() -> str:
    """The CPU's model name (``lscpu``), for the record beside a timing.

    Examples:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
