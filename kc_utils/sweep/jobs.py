"""One sweep job: a papermill run through ``python -m kc_utils.execute``, and its provenance record.

A job's folder holds ``notebook.ipynb`` (executed), the tables and figures the notebook writes (its
``out_dir`` is the folder), ``job.log`` (the runner's output) and ``provenance.json``:

================  ======================================================================
key               what
================  ======================================================================
``status``        ``running``, ``done`` or ``failed``
``parameters``    everything passed to the notebook (``out_dir`` included)
``notebook``      the notebook file that ran
``package``       knowledge-circuits version
``commit``        git commit of the checkout, and ``dirty`` (uncommitted changes to tracked files)
``model_hash``    sha256 of the model's files (``None`` for a hub model not cached here)
``wall_s``        wall time of the run, ``host`` the machine, ``started``/``finished`` (UTC)
``tables``        the CSV files the run wrote; ``returncode``; ``log_tail`` of a failed run
================  ======================================================================

:func:`run_job` is what a Dask worker executes; it never raises for a failing notebook (the record
says ``failed`` with the log's last lines), so one failure never stops the other jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROVENANCE_FILE",
    "already_done",
    "git_state",
    "model_files_hash",
    "package_version",
    "read_record",
    "run_job",
]

PROVENANCE_FILE = "provenance.json"
LOG_FILE = "job.log"
EXECUTED_NOTEBOOK = "notebook.ipynb"
#: Lines of a failed job's log kept in its record and printed in the sweep's summary.
LOG_TAIL_LINES = 15


def package_version() -> str:
    """The installed knowledge-circuits version (the source's when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("knowledge-circuits")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        import kc_utils

        return kc_utils.__version__


def git_state(root: Path) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool}`` of the checkout at ``root`` (tracked files only)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": False}
    return {"commit": commit, "dirty": bool(status.strip())}


def model_files_hash(source: str | Path) -> str | None:
    """sha256 over a checkpoint's files (relative names and bytes, in sorted order).

    ``source`` is what :func:`kc_utils.models.resolve_model_name` returns: a local folder or file, or a
    hub id (hashed from the local Hugging Face cache when it is there, else ``None``).
    """
    path = Path(source) if isinstance(source, Path) else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(source), "config.json")
        except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
            found = None
        if not isinstance(found, str):
            return None
        path = Path(found).parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    """The job's provenance record, or ``None`` when missing or unreadable."""
    try:
        return json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def already_done(folder: Path, parameters: dict[str, Any], commit: str | None) -> dict[str, Any] | None:
    """The record of a finished run of the same parameters at the same commit, else ``None``."""
    record = read_record(folder)
    if record is None or record.get("status") != "done" or commit is None:
        return None
    if record.get("parameters") != json.loads(json.dumps(parameters)) or record.get("commit") != commit:
        return None
    return record


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / (PROVENANCE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(folder / PROVENANCE_FILE)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _gpu_environment(spec: dict[str, Any]) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for a job on a local GPU worker (worker ``i`` of the cluster owns GPU ``i``)."""
    if not spec.get("gpu_per_worker"):
        return {}
    from distributed import get_worker

    return {"CUDA_VISIBLE_DEVICES": str(get_worker().name)}


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job (on a Dask worker, or anywhere) and return its provenance record.

    Args:
        spec: ``notebook``, ``folder``, ``parameters``, ``cwd`` (the kernel's working directory),
            ``record`` (fields known before the run: commit, model hash, ...), and optionally
            ``threads`` (``OMP_NUM_THREADS`` of the run), ``timeout_s`` and ``gpu_per_worker``.

    Returns:
        The record written to ``provenance.json`` (``status`` ``done`` or ``failed``).
    """
    folder = Path(spec["folder"])
    if folder.exists():
        shutil.rmtree(folder)  # a rerun starts clean, so no earlier table is merged by mistake
    folder.mkdir(parents=True)
    record = {
        **spec["record"],
        "notebook": str(spec["notebook"]),
        "parameters": spec["parameters"],
        "host": socket.gethostname(),
        "started": _now(),
        "status": "running",
    }
    _write_record(folder, record)
    env = {**os.environ, **_gpu_environment(spec)}
    if spec.get("threads"):
        env.update({"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])})
    command = [
        sys.executable,
        "-m",
        "kc_utils.execute",
        str(spec["notebook"]),
        str(folder / EXECUTED_NOTEBOOK),
        "--cwd",
        str(spec["cwd"]),
        "-y",
        yaml.safe_dump(spec["parameters"], default_flow_style=True, width=10**6),
    ]
    start = time.perf_counter()
    with (folder / LOG_FILE).open("w", encoding="utf-8") as log:
        try:
            returncode = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=spec.get("timeout_s")
            ).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\nkc_utils.sweep: the job ran past its timeout of {spec.get('timeout_s')} s and was stopped\n")
            returncode = -1
    wall = time.perf_counter() - start
    lines = (folder / LOG_FILE).read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
    record.update(
        status="done" if returncode == 0 else "failed",
        returncode=returncode,
        wall_s=round(wall, 2),
        finished=_now(),
        tables=sorted(p.name for p in folder.glob("*.csv")),
        log_tail=[] if returncode == 0 else lines[-LOG_TAIL_LINES:],
    )
    _write_record(folder, record)
    return record
