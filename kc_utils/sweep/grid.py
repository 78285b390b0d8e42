"""A sweep's grid: notebooks × knob values, checked and expanded into jobs before anything runs.

A grid is written as YAML (or given on the command line, see :mod:`kc_utils.sweep.__main__`)::

    name: table1-methods              # the sweep's folder: runs/sweeps/<name>/
    notebooks: [01_knowledge_circuits]
    grid:                             # every combination of these values is one job
      model_name: [kc-organism, smollm2-135m]
      method: [eap-ig, acdc]
    set:                              # the same value for every job
      relations: country_language
      compare_acdc: false

A value of a list-valued knob is itself a list: ``relations: [[company_hq, country_language], table1]``
is two jobs. A knob applies to the notebooks that declare it; a knob that no selected notebook declares
is an error. ``out_dir`` and ``publish`` belong to the sweep (each job writes into its own folder).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RESERVED_KNOBS",
    "Grid",
    "GridError",
    "Job",
    "expand_jobs",
    "format_value",
    "load_grid_file",
    "resolve_notebook",
]

#: Knobs the sweep sets itself: every job writes into its own folder and never publishes.
RESERVED_KNOBS = ("out_dir", "publish")

#: Folder names longer than this are shortened to a prefix and a hash of the parameters.
MAX_NAME_LENGTH = 120


class GridError(ValueError):
    """A grid that cannot run: said before any job starts, with what to change."""


@dataclass(frozen=True)
class Grid:
    """What a sweep runs.

    Attributes:
        notebooks: notebook files (resolved, existing).
        axes: knob → the values it takes, one job per combination (``model_name`` always among them).
        fixed: knob → the one value every job gets.
        name: the sweep's name (its folder under the sweeps root).
    """

    notebooks: tuple[Path, ...]
    axes: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    name: str = "sweep"


@dataclass(frozen=True)
class Job:
    """One notebook run of the grid.

    Attributes:
        notebook: the notebook file.
        swept: the axis values of this job (what names its folder and becomes columns of merged tables).
        parameters: everything passed to the notebook (swept, fixed and ``out_dir``).
        folder: where the job writes its executed notebook, tables, log and provenance record.
    """

    notebook: Path
    swept: dict[str, Any]
    parameters: dict[str, Any]
    folder: Path

    @property
    def name(self) -> str:
        """``<notebook>/<knob>=<value>,...``: the folder relative to the sweep's root."""
        return f"{self.folder.parent.name}/{self.folder.name}"


def format_value(value: Any) -> str:
    """A knob value as written in folder names and table columns: lists joined by ``+``."""
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return str(value).replace("/", "_").replace("\\", "_")


def resolve_notebook(name: str | Path, notebooks_dir: Path) -> Path:
    """A notebook given as a path, a file name, a stem (``01_knowledge_circuits``) or its number (``01``).

    Raises:
        GridError: no such notebook, or a number that matches several; the message lists the notebooks.
    """
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path.resolve()
    candidates = sorted(notebooks_dir.glob("*.ipynb"))
    matches = [p for p in candidates if p.stem == str(name) or p.name == str(name)]
    if not matches:
        matches = [p for p in candidates if p.stem.startswith(f"{name}_")]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in candidates) or "none"
        what = "matches several notebooks" if matches else "is not a notebook"
        raise GridError(f"{str(name)!r} {what}; the notebooks in {notebooks_dir} are: {known}")
    return matches[0].resolve()


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML grid file (keys ``name``, ``notebooks``, ``grid``, ``set``).

    Raises:
        GridError: a missing file, a file that is not a mapping, or an unknown top-level key.
    """
    import yaml

    path = Path(path)
    if path.suffix == ".ipynb":
        raise GridError(f"{path} is a notebook, not a grid file; give notebooks with -n {path}")
    if not path.exists():
        raise GridError(f"grid file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise GridError(f"{path} must be a YAML mapping with keys name, notebooks, grid, set")
    unknown = sorted(set(data) - {"name", "notebooks", "grid", "set"})
    if unknown:
        raise GridError(f"{path}: unknown key(s) {unknown}; a grid file has name, notebooks, grid and set")
    data.setdefault("name", path.stem)
    return data


def build_grid(
    notebooks: Sequence[str | Path],
    axes: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any],
    name: str,
    notebooks_dir: Path,
    default_model: str,
) -> Grid:
    """Check a grid's shape and resolve its notebooks (knob names are checked by :func:`check_knobs`).

    Raises:
        GridError: no notebooks, an axis with no values, a knob both swept and fixed, a reserved
            knob, or a sweep name that is not a plain folder name.
    """
    if not notebooks:
        raise GridError("the grid names no notebook; give one or more (e.g. -n 01_knowledge_circuits)")
    axes = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in axes.items()}
    empty = [k for k, v in axes.items() if not v]
    if empty:
        raise GridError(f"the grid is empty: knob(s) {empty} have no values; give at least one value each")
    both = sorted(set(axes) & set(fixed))
    if both:
        raise GridError(f"knob(s) {both} are both swept (grid) and fixed (set); keep one")
    reserved = sorted(set(RESERVED_KNOBS) & (set(axes) | set(fixed)))
    if reserved:
        raise GridError(f"{reserved} are set by the sweep (each job writes into its own folder); leave them out")
    if not name or Path(name).name != name or name in (".", ".."):
        raise GridError(f"sweep name {name!r} must be a plain folder name")
    if "model_name" not in axes:
        model = fixed.get("model_name", default_model)
        axes = {"model_name": [model], **axes}
        fixed = {k: v for k, v in fixed.items() if k != "model_name"}
    resolved = tuple(dict.fromkeys(resolve_notebook(n, notebooks_dir) for n in notebooks))
    return Grid(resolved, axes, dict(fixed), name)


def check_knobs(grid: Grid, declared: Mapping[Path, Sequence[str]]) -> None:
    """Every swept or fixed knob must be declared by at least one of the grid's notebooks.

    Raises:
        GridError: naming the knob(s) and the knobs each notebook declares.
    """
    knobs = set(grid.axes) | set(grid.fixed)
    everywhere = set().union(*(set(v) for v in declared.values())) if declared else set()
    unknown = sorted(knobs - everywhere)
    if unknown:
        import difflib

        hints = []
        for knob in unknown:
            close = difflib.get_close_matches(knob, sorted(everywhere), n=1)
            hints.append(f"{knob!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        listing = "; ".join(f"{p.stem}: {', '.join(v)}" for p, v in declared.items())
        raise GridError(f"no selected notebook declares {', '.join(hints)}. Declared knobs — {listing}")


def _folder_name(swept: Mapping[str, Any]) -> str:
    name = ",".join(f"{k}={format_value(v)}" for k, v in swept.items())
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(json.dumps(swept, sort_keys=True, default=str).encode()).hexdigest()[:12]
        name = f"{name[: MAX_NAME_LENGTH - 13]}-{digest}"
    return name


def expand_jobs(grid: Grid, declared: Mapping[Path, Sequence[str]], root: Path) -> list[Job]:
    """One job per notebook and combination of the values of the knobs that notebook declares.

    A notebook that does not declare an axis is not multiplied by it (its jobs are not duplicated).
    Jobs are in grid order: notebooks, then axes as written.
    """
    jobs: list[Job] = []
    for notebook in grid.notebooks:
        known = set(declared[notebook])
        axes = {k: v for k, v in grid.axes.items() if k in known}
        fixed = {k: v for k, v in grid.fixed.items() if k in known}
        for values in itertools.product(*axes.values()):
            swept = dict(zip(axes, values))
            folder = (root / grid.name / notebook.stem / _folder_name(swept)).resolve()
            parameters = {**swept, **fixed, "out_dir": str(folder)}
            jobs.append(Job(notebook, swept, parameters, folder))
    return jobs
