"""Merged tables of a sweep: every table a notebook writes, concatenated over jobs.

A job's table ``01_table1_kc-organism.csv`` is the table ``01_table1`` (the model tag that
:class:`kc_utils.notebook.RunOutputs` appends is dropped, so the models of a sweep share one file).
The merged file ``merged/01_table1.csv`` holds each job's rows as one block, in job order, preceded by
the columns ``job``, ``notebook`` and the swept knobs; a knob whose name is already a column of the
table is written as ``<knob> (knob)``. ``summary.csv`` has one row per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kc_utils.notebook import write_table
from kc_utils.sweep.grid import Job, format_value

__all__ = ["merge_tables", "summary_table", "table_name"]


def table_name(file_name: str, model_name: str) -> str:
    """``01_table1_kc-organism.csv`` → ``01_table1`` (the model tag removed when it is there)."""
    stem = Path(file_name).stem
    tag = format_value(model_name)
    return stem[: -len(tag) - 1] if stem.endswith(f"_{tag}") else stem


def _job_columns(job: Job, taken: set[str]) -> dict[str, Any]:
    columns: dict[str, Any] = {"job": job.name, "notebook": job.notebook.stem}
    for knob, value in job.swept.items():
        columns[f"{knob} (knob)" if knob in taken else knob] = format_value(value)
    return columns


def merge_tables(jobs: Sequence[Job], records: dict[str, dict[str, Any]], merged_dir: Path) -> dict[str, Path]:
    """Write one CSV per table name over the finished jobs; returns table name → merged file.

    Args:
        jobs: the sweep's jobs, in order.
        records: job name → provenance record; only jobs whose status is ``done`` are merged.
        merged_dir: where ``<table>.csv`` files are written (created; earlier merged files removed).
    """
    blocks: dict[str, list[pd.DataFrame]] = {}
    for job in jobs:
        record = records.get(job.name)
        if not record or record.get("status") != "done":
            continue
        for file_name in record.get("tables", []):
            table = pd.read_csv(job.folder / file_name)
            columns = _job_columns(job, set(table.columns))
            for position, (column, value) in enumerate(columns.items()):
                table.insert(position, column, value)
            blocks.setdefault(table_name(file_name, job.parameters.get("model_name", "")), []).append(table)
    merged_dir.mkdir(parents=True, exist_ok=True)
    for stale in merged_dir.glob("*.csv"):
        stale.unlink()
    return {
        name: write_table(pd.concat(parts, ignore_index=True), merged_dir / f"{name}.csv")
        for name, parts in sorted(blocks.items())
    }


def _last_line(lines: Sequence[str]) -> str:
    """The last non-empty line of a log (where the runner prints the exception)."""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def summary_table(jobs: Sequence[Job], records: dict[str, dict[str, Any]], skipped: set[str]) -> pd.DataFrame:
    """One row per job: its knobs, status (``done``, ``skipped`` = done earlier, ``failed``), time and host."""
    rows = []
    for job in jobs:
        record = records.get(job.name, {})
        status = record.get("status", "not run")
        rows.append(
            {
                **_job_columns(job, set()),
                "status": "skipped" if job.name in skipped and status == "done" else status,
                "wall_s": record.get("wall_s"),
                "host": record.get("host"),
                "commit": (record.get("commit") or "")[:12],
                "tables": len(record.get("tables", [])),
                "error": _last_line(record.get("log_tail") or []) if status == "failed" else "",
            }
        )
    return pd.DataFrame(rows)
