"""``python -m kc_utils.sweep``: run a grid of notebooks as papermill jobs on Dask.

    python -m kc_utils.sweep sweeps/table1.yaml
    python -m kc_utils.sweep -n 01 -g model_name=kc-organism,smollm2-135m -g method=eap-ig,acdc \\
        -s relations=country_language -s compare_acdc=False --name table1-methods
    python -m kc_utils.sweep sweeps/table1.yaml --scheduler tcp://10.0.0.5:8786

``-g knob=v1,v2`` sweeps a knob (a value that is a list is written as YAML: ``-g 'relations=[[a, b], c]'``),
``-s knob=value`` fixes one for every job; both add to (and override) the grid file. Each job writes into
``runs/sweeps/<name>/<notebook>/<knob>=<value>,.../``; merged tables go to ``runs/sweeps/<name>/merged/``.
Exit status: 0 when every job is done, 1 when one failed, 2 for a grid refused before any job started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kc_utils.execute import parse_value
from kc_utils.sweep.cluster import SchedulerError
from kc_utils.sweep.grid import GridError, load_grid_file


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    knob, sep, value = text.partition("=")
    if not sep or not knob.strip():
        raise GridError(f"{option} takes knob=value, got {text!r}")
    return knob.strip(), value


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``method=eap-ig,acdc`` → ``("method", ["eap-ig", "acdc"])``; a ``[...]`` value is one YAML list."""
    knob, value = _split_assignment(text, "-g")
    if value.strip().startswith("["):
        values = parse_value(value)
        if not isinstance(values, list):
            raise GridError(f"-g {text!r}: the value list does not parse as YAML")
        return knob, values
    return knob, [parse_value(v.strip()) for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kc_utils.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", nargs="?", help="a YAML grid file (keys name, notebooks, grid, set)")
    parser.add_argument("-n", "--notebook", action="append", default=[], help="a notebook (path, stem or number)")
    parser.add_argument("-g", "--grid-knob", action="append", default=[], metavar="KNOB=V1,V2", help="swept knob")
    parser.add_argument("-s", "--set", action="append", default=[], metavar="KNOB=VALUE", help="fixed knob")
    parser.add_argument("--name", help="the sweep's folder under --root (default: the grid file's name, or 'sweep')")
    parser.add_argument("--root", type=Path, help="the sweeps folder (default: runs/sweeps of the checkout)")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--jobs", type=int, help="jobs at once on the local cluster (default: sized to the machine)")
    parser.add_argument("--timeout", type=float, help="seconds after which a job is stopped and counted failed")
    parser.add_argument("--force", action="store_true", help="rerun jobs that are already done")
    parser.add_argument("--dry-run", action="store_true", help="check the grid and list its jobs; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from kc_utils.sweep.run import prepare_sweep, run_sweep

    try:
        spec = load_grid_file(args.grid) if args.grid else {"name": "sweep"}
        notebooks = args.notebook or list(spec.get("notebooks") or [])
        axes = dict(spec.get("grid") or {})
        fixed = dict(spec.get("set") or {})
        for text in args.grid_knob:
            knob, values = parse_axis(text)
            axes[knob] = values
            fixed.pop(knob, None)
        for text in args.set:
            knob, value = _split_assignment(text, "-s")
            fixed[knob] = parse_value(value)
            axes.pop(knob, None)
        prepared = prepare_sweep(notebooks, axes, fixed, name=args.name or spec["name"], root=args.root)
        if args.dry_run:
            print(f"sweep {prepared.grid.name!r}: {len(prepared.jobs)} jobs in {prepared.folder}")
            for job in prepared.jobs:
                print(f"  {job.name}")
            return 0
        result = run_sweep(
            prepared,
            scheduler=args.scheduler,
            jobs_at_once=args.jobs,
            force=args.force,
            timeout_s=args.timeout,
            progress=not args.no_progress,
        )
    except (GridError, SchedulerError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
