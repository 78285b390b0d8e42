"""Prepare a sweep (every check before any job) and run it on Dask, with progress, resume and merged tables.

:func:`prepare_sweep` raises :class:`~kc_utils.sweep.grid.GridError` for an empty grid, an unknown
notebook, a knob no selected notebook declares, a reserved knob or an unknown model; :func:`run_sweep`
raises :class:`~kc_utils.sweep.cluster.SchedulerError` for a scheduler it cannot reach — both before
any job starts. A failing job never stops the others.

On another machine's scheduler (``--scheduler``) the workers must see the same checkout at the same
path (a shared file system) and have knowledge-circuits installed; each job's folder is written there.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kc_utils.sweep.cluster import LocalPlan, connect, plan_local_cluster
from kc_utils.sweep.grid import Grid, GridError, Job, build_grid, check_knobs, expand_jobs
from kc_utils.sweep.jobs import already_done, git_state, model_files_hash, package_version, read_record, run_job
from kc_utils.sweep.merge import merge_tables, summary_table

__all__ = ["PreparedSweep", "SweepResult", "prepare_sweep", "run_sweep"]

#: Seconds between two looks at the running jobs (the progress bar's refresh).
POLL_S = 0.5


@dataclass
class PreparedSweep:
    """A checked grid, its jobs and what their provenance records share."""

    grid: Grid
    jobs: list[Job]
    folder: Path
    cwd: Path
    record: dict[str, Any]
    model_hashes: dict[str, str | None]
    model_bytes: dict[str, int | None]


@dataclass
class SweepResult:
    """What a sweep did: every job's record, which were skipped or failed, and the files it wrote."""

    jobs: list[Job]
    records: dict[str, dict[str, Any]]
    skipped: set[str]
    failed: list[str]
    merged: dict[str, Path]
    summary: Path
    lines: list[str] = field(default_factory=list)


def _model_source(name: str) -> str | Path:
    from kc_utils.models import ModelLoadError, resolve_model_name

    try:
        return resolve_model_name(str(name))
    except ModelLoadError as error:
        raise GridError(f"model_name={name!r}: {error}") from error


def _size(source: str | Path) -> int | None:
    if not isinstance(source, Path):
        return None
    return (
        source.stat().st_size if source.is_file() else sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    )


def prepare_sweep(
    notebooks: Sequence[str | Path],
    axes: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    name: str = "sweep",
    root: Path | None = None,
    checkout: Path | None = None,
) -> PreparedSweep:
    """Check the grid completely and expand it into jobs (nothing runs).

    Args:
        notebooks: notebook paths, stems or numbers (``01``).
        axes: swept knobs and their values; ``model_name`` defaults to the organism.
        fixed: knobs with one value for every job.
        root: the sweeps folder (default ``<checkout>/runs/sweeps``).
        checkout: the repository (default: the one containing the working directory).

    Raises:
        GridError: anything that would make a job fail before it starts (module docstring).
    """
    from kc_utils.execute import declared_parameters
    from kc_utils.models import ORGANISM_NAME
    from kc_utils.notebook import project_root

    checkout = (checkout or project_root()).resolve()
    root = (root or checkout / "runs" / "sweeps").resolve()
    grid = build_grid(notebooks, axes, dict(fixed or {}), name, checkout / "notebooks", ORGANISM_NAME)
    declared = {notebook: list(declared_parameters(notebook)) for notebook in grid.notebooks}
    check_knobs(grid, declared)
    missing_model = [p.stem for p, knobs in declared.items() if "model_name" not in knobs]
    if missing_model:
        raise GridError(f"{missing_model} declare no model_name knob, so a sweep cannot choose their model")
    sources = {str(m): _model_source(m) for m in grid.axes["model_name"]}
    jobs = expand_jobs(grid, declared, root)
    if not jobs:
        raise GridError("the grid expands to no job")
    return PreparedSweep(
        grid=grid,
        jobs=jobs,
        folder=root / grid.name,
        cwd=checkout,
        record={"package": package_version(), **git_state(checkout)},
        model_hashes={m: model_files_hash(s) for m, s in sources.items()},
        model_bytes={m: _size(s) for m, s in sources.items()},
    )


def _spec(
    prepared: PreparedSweep, job: Job, plan: LocalPlan | None, timeout_s: float | None, submission: str
) -> dict[str, Any]:
    model = str(job.parameters["model_name"])
    return {
        "notebook": str(job.notebook),
        "folder": str(job.folder),
        "parameters": job.parameters,
        "cwd": str(prepared.cwd),
        "record": {
            **prepared.record,
            "model_hash": prepared.model_hashes.get(model),
            "job": job.name,
            "submission": submission,
        },
        "threads": plan.threads_per_job if plan else None,
        "gpu_per_worker": bool(plan and plan.gpu_per_worker),
        "timeout_s": timeout_s,
    }


def _started(job: Job, submission: str) -> bool:
    """Whether the job of this submission has begun (its record, written first thing, carries the submission)."""
    record = read_record(job.folder)
    return record is not None and record.get("submission") == submission


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sweep", unit="job", disable=not enabled, file=sys.stderr)


def run_sweep(
    prepared: PreparedSweep,
    scheduler: str | None = None,
    jobs_at_once: int | None = None,
    force: bool = False,
    timeout_s: float | None = None,
    progress: bool = True,
    connect_timeout_s: float = 10,
) -> SweepResult:
    """Run every job not already done (same parameters, same commit), then merge the tables.

    Args:
        scheduler: ``tcp://host:port`` of a running Dask scheduler; ``None`` starts a ``LocalCluster``.
        jobs_at_once: local jobs at once (default: :func:`~kc_utils.sweep.cluster.plan_local_cluster`).
        force: rerun jobs that are already done.
        timeout_s: stop a job that runs longer (it is reported as failed).

    Raises:
        SchedulerError: ``scheduler`` cannot be reached (before any job starts).
    """
    records: dict[str, dict[str, Any]] = {}
    skipped: set[str] = set()
    todo: list[Job] = []
    for job in prepared.jobs:
        done = None if force else already_done(job.folder, job.parameters, prepared.record.get("commit"))
        if done is not None:
            records[job.name] = done
            skipped.add(job.name)
        else:
            todo.append(job)
    plan = None if scheduler else plan_local_cluster(list(prepared.model_bytes.values()), jobs=jobs_at_once)
    lines = [f"sweep {prepared.grid.name!r}: {len(prepared.jobs)} jobs, {len(skipped)} already done"]
    client = cluster = None
    if scheduler or todo:
        client, cluster = connect(scheduler, plan, timeout_s=connect_timeout_s)
        where = scheduler or f"a LocalCluster, {plan.reason}"  # type: ignore[union-attr]
        lines[0] += f", {len(todo)} to run on {where}"
    print(lines.pop(0), file=sys.stderr)
    failed: list[str] = []
    try:
        if todo:
            submission = uuid.uuid4().hex
            futures = {
                client.submit(
                    run_job, _spec(prepared, job, plan, timeout_s, submission), key=f"kc-job-{submission}-{i}"
                ): job
                for i, job in enumerate(todo)
            }
            pending = set(futures)
            bar = _progress(len(prepared.jobs), len(skipped), progress)
            shown: tuple[int, int] | None = None
            begun: set[Any] = set()
            while pending:
                finished = {future for future in pending if future.done()}
                pending -= finished
                for future in finished:
                    job = futures[future]
                    try:
                        records[job.name] = future.result()
                    except Exception as error:  # noqa: BLE001 - a worker that died: the job failed, the rest go on
                        records[job.name] = {"status": "failed", "log_tail": [f"{type(error).__name__}: {error}"]}
                    if records[job.name]["status"] != "done":
                        failed.append(job.name)
                    bar.update(1)
                begun.update(f for f in pending - begun if _started(futures[f], submission))
                running = len(pending & begun)
                if (running, len(failed)) != shown:
                    shown = (running, len(failed))
                    bar.set_postfix(running=running, failed=len(failed), skipped=len(skipped))
                if pending and not finished:
                    time.sleep(POLL_S)
            bar.close()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    merged = merge_tables(prepared.jobs, records, prepared.folder / "merged")
    summary_path = prepared.folder / "summary.csv"
    from kc_utils.notebook import write_table

    write_table(summary_table(prepared.jobs, records, skipped), summary_path)
    done = sum(1 for job in prepared.jobs if records.get(job.name, {}).get("status") == "done")
    lines.append(
        f"done {done} of {len(prepared.jobs)} ({len(skipped)} skipped: already done at this commit), "
        f"failed {len(failed)}"
    )
    for name in failed:
        tail = records[name].get("log_tail") or []
        lines.append(f"FAILED {name} (log: {prepared.folder / name / 'job.log'}):")
        lines.extend(f"    {line}" for line in tail)
    lines.append(f"merged tables ({len(merged)}) in {prepared.folder / 'merged'}; summary {summary_path}")
    return SweepResult(prepared.jobs, records, skipped, failed, merged, summary_path, lines)
