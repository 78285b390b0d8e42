"""Where a sweep's jobs run: a Dask ``LocalCluster`` sized to this machine, or an existing scheduler.

Local sizing (``--jobs`` overrides it):

=====================================  ===============================================================
machine and models                     jobs at once
=====================================  ===============================================================
GPUs present                           one per GPU (worker ``i`` sees only GPU ``i``)
every model small (files < 64 MB,      one per CPU core (each runs on one thread, as
the organism is 4 MB)                  :func:`kc_utils.notebook.start` sets for small models)
any larger model                       a quarter of the cores, and no more than the memory allows
                                       (2 GiB plus eight times the model's files per job; a 4-bit file
                                       is dequantized to float32); at least one
=====================================  ===============================================================

Every job is its own process (a Jupyter kernel), so the workers are threads of this process that start
a job and wait for it; jobs get ``OMP_NUM_THREADS`` = cores / jobs so that they do not oversubscribe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LocalPlan", "SchedulerError", "connect", "plan_local_cluster"]

SMALL_MODEL_BYTES = 64 * 2**20
JOB_BASE_BYTES = 2 * 2**30
MODEL_MEMORY_FACTOR = 8


class SchedulerError(RuntimeError):
    """A scheduler address that cannot be reached."""


@dataclass(frozen=True)
class LocalPlan:
    """How many jobs run at once here, on how many threads each, and whether each owns a GPU."""

    workers: int
    threads_per_job: int
    gpu_per_worker: bool
    reason: str


def plan_local_cluster(
    model_bytes: Sequence[int | None],
    n_cpus: int | None = None,
    n_gpus: int | None = None,
    memory_bytes: int | None = None,
    jobs: int | None = None,
) -> LocalPlan:
    """Size the local cluster (module table); ``None`` arguments are read from this machine.

    Args:
        model_bytes: size of each model's files (``None``: unknown, counted as large).
        jobs: a fixed number of jobs at once (``--jobs``), which overrides the table.

    Raises:
        ValueError: ``jobs`` below 1.
    """
    n_cpus = n_cpus or os.cpu_count() or 1
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().available
    if jobs is not None:
        if jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {jobs}")
        workers, reason = jobs, f"{jobs} at once (--jobs)"
    elif n_gpus:
        workers, reason = n_gpus, f"one per GPU ({n_gpus})"
    elif all(size is not None and size < SMALL_MODEL_BYTES for size in model_bytes):
        workers, reason = n_cpus, f"one per core ({n_cpus}): small models run on one thread"
    else:
        largest = max((size or SMALL_MODEL_BYTES) for size in model_bytes)
        by_memory = max(1, memory_bytes // (JOB_BASE_BYTES + MODEL_MEMORY_FACTOR * largest))
        workers = max(1, min(n_cpus // 4, by_memory))
        reason = f"{workers} at once: large models, {n_cpus} cores, {memory_bytes / 2**30:.0f} GiB free"
    gpu = bool(n_gpus) and (jobs is None or jobs <= n_gpus)
    return LocalPlan(workers, max(1, n_cpus // workers), gpu, reason)


def quiet_dask_logs() -> None:
    """Dask's own INFO lines would bury the progress bar; warnings and errors still show."""
    for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.core"):
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(scheduler: str | None, plan: LocalPlan | None, timeout_s: float = 10) -> tuple[Any, Any]:
    """A ``distributed.Client`` on ``scheduler``, or on a new ``LocalCluster`` following ``plan``.

    Returns:
        ``(client, cluster)``; ``cluster`` is ``None`` for an existing scheduler (this process owns neither).

    Raises:
        SchedulerError: the scheduler cannot be reached within ``timeout_s``.
    """
    from distributed import Client, LocalCluster

    quiet_dask_logs()
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{timeout_s}s"), None
        except (OSError, TimeoutError, ValueError) as error:
            raise SchedulerError(
                f"cannot reach the Dask scheduler at {scheduler} within {timeout_s:g} s ({error}). Start one "
                "(`dask scheduler` and `dask worker <address>` on each machine), check the address, "
                "or leave --scheduler out to run on this machine"
            ) from error
    assert plan is not None
    cluster = LocalCluster(
        n_workers=plan.workers,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster
