"""Sweeps: notebooks × models × knob values as papermill jobs on Dask, resumable, with merged tables.

* :mod:`~kc_utils.sweep.grid` — the grid (YAML or command line), checked and expanded into jobs;
* :mod:`~kc_utils.sweep.jobs` — one job (``python -m kc_utils.execute`` in its own folder) and its
  provenance record;
* :mod:`~kc_utils.sweep.cluster` — a ``LocalCluster`` sized to the machine, or an existing scheduler;
* :mod:`~kc_utils.sweep.merge` — merged tables and the sweep's summary;
* :mod:`~kc_utils.sweep.run` — prepare (every check first) and run, with progress and resume;
* ``python -m kc_utils.sweep`` — the command (``make sweep GRID=...``).
"""

from kc_utils.sweep.cluster import SchedulerError
from kc_utils.sweep.grid import GridError
from kc_utils.sweep.run import PreparedSweep, SweepResult, prepare_sweep, run_sweep

__all__ = ["GridError", "PreparedSweep", "SchedulerError", "SweepResult", "prepare_sweep", "run_sweep"]
