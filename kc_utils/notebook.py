"""Notebook support: what every numbered notebook repeats in its first cells.

* :func:`start` — seed everything, load the model, and decide where this run's outputs go;
* :class:`RunOutputs` — that decision: one folder per run, tables written with a fixed number of
  decimals (a rerun is byte-identical), figures saved beside them;
* :func:`as_list` — a list-valued knob given as one string means that one item;
* :func:`check_choice`, :func:`check_range` — validate knobs before any expensive step;
* :class:`Knob`, :class:`NotebookSpec` — a notebook's knobs declared once (name, default, check, meaning):
  one call checks them all, the ``parameters`` cell is their rendering, and the Checks cell asks the spec
  which knobs differ from the run it records (the specs are in :mod:`kc_utils.notebook_specs`);
* :func:`load_circuit_if_matching` — reuse a circuit saved by an earlier notebook only when the
  provenance it records matches the settings asked for;
* :func:`compare_with_reference` — a fresh table against its versioned reference in ``figures/``,
  within :data:`REFERENCE_TOLERANCE`.

Where outputs go (``out_dir`` and ``publish``, knobs of every notebook):

========================  ========================================================================
setting                   folder
========================  ========================================================================
``out_dir`` given         that folder (created), whatever else is set
``publish=True``          ``figures/`` of the checkout — the versioned reference tables; only
                          ``make publish`` (the default run of every notebook on one model) sets it
otherwise                 ``runs/<notebook>/`` of the checkout (untracked); ``make reproduce`` and
                          ``make test`` (nbval) write the default run's fresh tables here
========================  ========================================================================

The contract of the versioned tables: they are *references*. A table is written with
:data:`TABLE_DECIMALS` decimals, so a rerun on the same machine is byte-identical; on another machine
a value next to a rounding boundary may flip in its last digit (or move a little more through a
discrete choice downstream), so a fresh default run is compared with its reference within
:data:`REFERENCE_TOLERANCE` (``tests/test_reference_tables.py``) and never written over it.

Outside a checkout (Colab, a pip install), "the checkout" is the working directory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ANY",
    "REPOSITORY_URL",
    "Knob",
    "NotebookSpec",
    "RunOutputs",
    "as_list",
    "candidate_samples",
    "check_choice",
    "check_range",
    "compare_with_reference",
    "figures_dir",
    "load_circuit_if_matching",
    "number",
    "one_of",
    "project_root",
    "seed_everything",
    "start",
    "write_table",
    "REFERENCE_TOLERANCES",
    "TableTolerance",
    "tolerance_for",
]

#: The one place the repository's address is written (README badges and the notebooks' install cell).
REPOSITORY_URL = "https://github.com/knowledge-circuits/knowledge-circuits"

#: Below this many parameters :func:`start` runs torch on one CPU thread (the organism has 1.1 M).
SMALL_MODEL_PARAMETERS = 10_000_000

#: Decimals of every float written to a CSV table: last-digit float noise never reaches a file.
TABLE_DECIMALS = 4

#: A fresh value ``x`` matches its reference ``r`` when ``|x - r| <= atol + rtol * |r|``: five units of
#: the last written decimal, plus 0.1% of the value (other machines flip last digits; a real change moves more).
#: Text and integer columns must match exactly, and so must the shape and the column names.
REFERENCE_TOLERANCE = {"atol": 5e-4, "rtol": 1e-3}


@dataclass(frozen=True)
class TableTolerance:
    """A stated tolerance for tables whose numbers move with float noise more than the default allows.

    Attributes:
        atol, rtol: a fresh value ``x`` matches ``r`` when ``|x - r| <= atol + rtol·|r|``.
        why: the measurement that sets it (shown when a table fails).
        column_atol: per-column ``atol`` in place of ``atol`` (a count that one near-threshold item moves).
        match_rows_by: rows are paired by these columns (both tables sorted by them) instead of by position,
            where the table's row order follows a float that the noise reorders.
    """

    atol: float
    rtol: float
    why: str = ""
    column_atol: dict[str, float] = field(default_factory=dict)
    match_rows_by: tuple[str, ...] = ()


_ROME_CHAOS = (
    "ROME's value optimisation is chaotic in float32: every weight times (1 + 1e-7·N(0,1)) (our proxy for another "
    "CPU's rounding) moved the case edit's v* by 0.7% and flipped single edit outcomes, so a rate over 12-160 "
    "prompts moves by one prompt (measured: undone_by_last 0.0833 vs 0.1667, generalisation 0.7833 vs 0.7667, "
    "p_new 0.9277 vs 0.9291, scores after the edit by up to 0.8%)"
)
_ONE_NEURON = (
    "a knowledge neuron whose score is within float noise of 0.3 × the largest is chosen on one CPU and not on "
    "another (substance_phase/wood: 19.0 vs 18.8 neurons per query, CS 0.1526 vs 0.1517); one neuron of one "
    "query moves neurons_per_query by 1/n_queries <= 0.25 and a CS by < 0.01"
)

#: Tables (by file-name prefix, the longest matching prefix wins) whose tolerance is stated wider than
#: :data:`REFERENCE_TOLERANCE`, and why. Everything else uses the default.
_ROME_TOLERANCE = TableTolerance(atol=0.1, rtol=0.02, why=_ROME_CHAOS)
REFERENCE_TOLERANCES: dict[str, TableTolerance] = {
    "03_": _ROME_TOLERANCE,
    "03_case_circuit_diff": replace(_ROME_TOLERANCE, match_rows_by=("edge",)),
    "06_consistency_": TableTolerance(
        atol=REFERENCE_TOLERANCE["atol"],
        rtol=REFERENCE_TOLERANCE["rtol"],
        why=_ONE_NEURON,
        column_atol={"neurons_per_query": 0.25, **{c: 0.01 for c in ("cs", "cs_mean", "cs_std", "cs_min", "cs_max")}},
    ),
}


def tolerance_for(name: str) -> TableTolerance:
    """The tolerance of the table file ``name`` (e.g. ``03_case_kc-organism.csv``): its entry of
    :data:`REFERENCE_TOLERANCES` with the longest matching prefix, else :data:`REFERENCE_TOLERANCE`."""
    matches = [prefix for prefix in REFERENCE_TOLERANCES if name.startswith(prefix)]
    if not matches:
        return TableTolerance(**REFERENCE_TOLERANCE)
    return REFERENCE_TOLERANCES[max(matches, key=len)]


def project_root(start: str | Path | None = None) -> Path:
    """The knowledge-circuits checkout containing ``start`` (default: cwd), else ``start`` itself."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and 'name = "knowledge-circuits"' in pyproject.read_text(encoding="utf-8"):
            return folder
    return here


def figures_dir() -> Path:
    """``<root>/figures`` (created): where the versioned tables and published figures live."""
    folder = project_root() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_list(value: str | Iterable[Any] | None, name: str) -> list[Any] | None:
    """A list-valued knob: one string means that one item (``"country_language"`` → ``["country_language"]``).

    ``None`` stays ``None`` (the notebook's default set). Anything else must be iterable.

    Raises:
        ValueError: a value that is neither a string, ``None`` nor a list/tuple.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{name} must be a name or a list of names, got {type(value).__name__} {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    Raises:
        ValueError: naming the knob, the value and the choices.
    """
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value


def check_range(
    value: float, name: str, low: float | None = None, high: float | None = None, integer: bool = False
) -> float:
    """``value`` if ``low ≤ value ≤ high`` (and an integer when asked).

    Raises:
        ValueError: naming the knob, the value and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name}={value!r} is outside {bounds}")
    return value


#: A knob check: ``check(value, name, knobs)`` raises ``ValueError`` (naming the knob) or returns; ``knobs`` holds
#: every knob's value, for checks that depend on another knob.
Check = Callable[[Any, str, Mapping[str, Any]], object]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The :attr:`Knob.recorded` of a knob that cannot change what the Checks cell records (``device``, ``out_dir``).
ANY = _Marker("ANY")
_DEFAULT = _Marker("DEFAULT")


def one_of(choices: Sequence[Any] | Callable[[Mapping[str, Any]], Sequence[Any]]) -> Check:
    """A check by :func:`check_choice`; ``choices`` may depend on the other knobs (a function of them)."""

    def check(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
        check_choice(value, name, choices(knobs) if callable(choices) else choices)

    return check


Bound = float | Callable[[Mapping[str, Any]], float] | None


def number(low: Bound = None, high: Bound = None, integer: bool = False, optional: bool = False) -> Check:
    """A check by :func:`check_range`; ``optional``: ``None`` is allowed too. A bound may depend on the other
    knobs (a function of them); when that knob is itself invalid, the bound is left to that knob's check."""

    def bound(value: Bound, knobs: Mapping[str, Any]) -> float | None:
        if not callable(value):
            return value
        try:
            result = value(knobs)
        except (TypeError, ValueError):
            return None
        return result if isinstance(result, (int, float)) and not isinstance(result, bool) else None

    def check(value: Any, name: str, knobs: Mapping[str, Any]) -> None:
        if not (optional and value is None):
            check_range(value, name, bound(low, knobs), bound(high, knobs), integer=integer)

    return check


@dataclass(frozen=True)
class Knob:
    """One knob of a notebook, declared once.

    Attributes:
        name: the variable of the ``parameters`` cell.
        default: its value there.
        check: how it is validated before anything expensive (:data:`Check`; ``None``: any value).
        doc: what it means (the cell's comment).
        recorded: the value the notebook's Checks cell records, when it differs from ``default`` (e.g. the
            relation an ``"auto"`` default resolves to on the organism, read after the notebook resolved it);
            :data:`ANY` for a knob that cannot change the recorded numbers.
        literal: how ``default`` is written in the cell, when ``repr`` would read worse (``"5e-4"``).
    """

    name: str
    default: Any
    check: Check | None
    doc: str
    recorded: Any = _DEFAULT
    literal: str | None = None

    @property
    def recorded_value(self) -> Any:
        """What the Checks cell records: :attr:`recorded`, else the default."""
        return self.default if self.recorded is _DEFAULT else self.recorded

    def line(self) -> str:
        """The knob's line of the ``parameters`` cell (strings written in double quotes)."""
        return f"{self.name} = {self.literal or _literal(self.default)}  # {self.doc}"


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return bool(a == b)


@dataclass(frozen=True)
class NotebookSpec:
    """A notebook's knobs, in the order of its ``parameters`` cell.

    ``spec.check(globals())`` validates every knob (one call instead of a setup cell of checks);
    ``spec.changed(globals())`` names the knobs that differ from the run the Checks cell records;
    ``spec.parameters_cell()`` is the ``parameters`` cell (a test holds the notebook to it).
    """

    notebook: str
    knobs: tuple[Knob, ...]

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.notebook}: a knob is declared twice in {names}")

    def __getitem__(self, name: str) -> Knob:
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise KeyError(f"{self.notebook} has no knob {name!r}")

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` in the cell's order."""
        return {k.name: k.default for k in self.knobs}

    def check(self, values: Mapping[str, Any]) -> None:
        """Check every knob's value in ``values`` (a notebook passes ``globals()``), in the cell's order.

        Raises:
            ValueError: from the first check that fails, naming the knob.
        """
        knobs = {k.name: values[k.name] for k in self.knobs}
        for knob in self.knobs:
            if knob.check is not None:
                knob.check(knobs[knob.name], knob.name, knobs)

    def changed(self, values: Mapping[str, Any]) -> list[str]:
        """The knobs whose value in ``values`` differs from the one the Checks cell records (empty: that run)."""
        return [
            k.name for k in self.knobs if k.recorded_value is not ANY and not _same(values[k.name], k.recorded_value)
        ]

    def parameters_cell(self) -> str:
        """The notebook's ``parameters`` cell: one line per knob, ``name = default  # doc``."""
        return "\n".join(k.line() for k in self.knobs)


def write_table(table: pd.DataFrame, path: str | Path, decimals: int = TABLE_DECIMALS) -> Path:
    """Write ``table`` as CSV with floats rounded to ``decimals`` and ``\\n`` line ends; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = table.copy()
    for column in rounded.columns:
        if pd.api.types.is_float_dtype(rounded[column]):
            rounded[column] = rounded[column].round(decimals)
    rounded.to_csv(path, index=False, lineterminator="\n", float_format=f"%.{decimals}f")
    return path


@dataclass
class RunOutputs:
    """Where one notebook run writes its tables, figures and circuits.

    Attributes:
        folder: the run's folder (exists).
        published: the folder is ``figures/`` (the versioned tables are being refreshed).
        model_tag: the model name made safe for file names.
    """

    folder: Path
    published: bool
    model_tag: str
    written: list[Path] = field(default_factory=list)

    def path(self, name: str) -> Path:
        """``folder / name``."""
        return self.folder / name

    def table(self, table: pd.DataFrame, name: str) -> Path:
        """Write ``<name>_<model>.csv`` (rounded; see :func:`write_table`)."""
        path = write_table(table, self.folder / f"{name}_{self.model_tag}.csv")
        self.written.append(path)
        return path

    def figure(self, fig: Any, name: str, self_contained: bool = False) -> list[Path]:
        """Save a plotly figure as ``<name>_<model>.html`` (+ PNG when cheap) in the run's folder."""
        from kc_utils.viz.save import save_figure

        paths = save_figure(fig, f"{name}_{self.model_tag}", self.folder, self_contained=self_contained)
        self.written.extend(paths)
        return paths


def run_outputs(notebook: str, model_name: str, out_dir: str | Path | None, publish: bool) -> RunOutputs:
    """Decide the run's folder (module table) and create it."""
    tag = str(model_name).replace("/", "_").replace("\\", "_")
    if out_dir not in (None, ""):
        folder = Path(out_dir).expanduser()
        folder = folder if folder.is_absolute() else Path.cwd() / folder
        published = False
    elif publish:
        folder, published = figures_dir(), True
    else:
        folder, published = project_root() / "runs" / notebook, False
    folder.mkdir(parents=True, exist_ok=True)
    return RunOutputs(folder.resolve(), published, tag)


def start(
    notebook: str,
    model_name: str,
    seed: int = 0,
    device: str = "auto",
    out_dir: str | Path | None = None,
    publish: bool = False,
) -> tuple[Any, RunOutputs]:
    """Seed, load the model and create the run's output folder; prints one line saying where.

    Args:
        notebook: the notebook's short name (``"01_knowledge_circuits"``), used for ``runs/<notebook>``.
        model_name: anything :func:`kc_utils.models.load_model` accepts.

    Returns:
        ``(model, outputs)``.
    """
    from kc_utils.models import load_model

    seed_everything(seed)
    model = load_model(model_name, device=device)
    n_parameters = sum(p.numel() for p in model.parameters())
    if n_parameters < SMALL_MODEL_PARAMETERS and torch.get_num_threads() > 1:
        # tiny matrices: extra CPU threads only add synchronisation, and on a busy machine
        # OpenMP threads that spin-wait make every forward pass many times slower
        torch.set_num_threads(1)
    outputs = run_outputs(notebook, model_name, out_dir, publish)
    cfg = model.cfg
    where = "figures/ (versioned tables refreshed)" if outputs.published else str(outputs.folder)
    print(f"{model_name}: {cfg.n_layers} layers x {cfg.n_heads} heads on {cfg.device}; outputs -> {where}")
    return model, outputs


def candidate_samples(model_name: str, relation: Any, which: str = "trained") -> list[Any]:
    """The facts of ``relation`` worth testing on ``model_name``.

    For the organism: the facts it was trained on (``which="trained"``) or those it never saw
    (``"held_out"``); for any other model every sample of the relation (``which`` must be
    ``"trained"``: a pretrained model's training data is unknown).

    Raises:
        ValueError: an unknown ``which``, a relation the organism was not trained on, or
            ``held_out`` asked of a model that has no known split.
    """
    from kc_utils.models import ORGANISM_NAME

    check_choice(which, "which", ("trained", "held_out"))
    if model_name != ORGANISM_NAME:
        if which != "trained":
            raise ValueError(f"only the organism has held-out facts; {model_name!r} has no known training split")
        return list(relation.samples)
    from kc_utils.organism import load_split

    split = load_split()
    if relation.key not in split.relations:
        raise ValueError(f"the organism was not trained on relation {relation.key!r}")
    return list(getattr(split.relations[relation.key], which))


def load_circuit_if_matching(path: str | Path, expected: dict[str, Any]) -> tuple[Any | None, str]:
    """The circuit saved at ``path`` if its recorded provenance matches ``expected``, else ``None``.

    Returns ``(graph or None, reason)``; the reason says which happened (missing file, a
    mismatching setting by name, or a match), so the notebook can print it.
    """
    from kc_utils.circuits.graph import CircuitError, Graph

    path = Path(path)
    if not path.exists():
        return None, f"no saved circuit at {path}"
    try:
        graph = Graph.from_json(path)
    except (CircuitError, json.JSONDecodeError, KeyError) as error:
        return None, f"{path} is not a usable circuit file ({error})"
    recorded = graph.provenance
    differing = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if differing:
        detail = ", ".join(f"{k}: saved {a!r} vs asked {b!r}" for k, (a, b) in differing.items())
        return None, f"the circuit at {path} was made with other settings ({detail})"
    return graph, f"reused the circuit at {path} (its recorded settings match)"


def _shown(value: Any) -> str:
    """A cell as a reader wants it: numbers plainly (no ``np.float64(...)``), text quoted."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if hasattr(value, "item") else value)
    return repr(value)


def compare_with_reference(
    fresh: pd.DataFrame,
    reference: pd.DataFrame,
    name: str,
    tolerance: TableTolerance | None = None,
    key_columns: int = 2,
) -> list[str]:
    """Every difference between a fresh table and its reference, one sentence each (empty: they match).

    Float columns match within ``atol + rtol·|reference|`` of ``tolerance`` (default: :func:`tolerance_for`
    ``name``); NaN matches NaN only. Any other column must be
    equal. Each sentence names the table, the row (its index and its first ``key_columns`` text values),
    the column and both values, e.g. ``01_table1_kc-organism.csv row 3 (relation=company_hq) column
    hit@1: fresh 0.9123 vs reference 0.9130 (tolerance 0.0014)``. With the tolerance's ``match_rows_by``, both
    tables are first sorted by those columns, so rows pair by their key rather than their position (row numbers
    are then those of the sorted tables); its ``column_atol`` replaces ``atol`` for the columns it names.
    """
    tolerance = tolerance or tolerance_for(name)
    if list(fresh.columns) != list(reference.columns):
        return [f"{name}: columns differ: fresh {list(fresh.columns)} vs reference {list(reference.columns)}"]
    if len(fresh) != len(reference):
        return [f"{name}: {len(fresh)} rows in the fresh table vs {len(reference)} in the reference"]
    if tolerance.match_rows_by:
        order = list(tolerance.match_rows_by)
        fresh = fresh.sort_values(order, kind="stable").reset_index(drop=True)
        reference = reference.sort_values(order, kind="stable").reset_index(drop=True)
    keys = [c for c in reference.columns if not pd.api.types.is_numeric_dtype(reference[c])][:key_columns]
    problems = []
    for column in reference.columns:
        ours, theirs = fresh[column], reference[column]
        numeric = pd.api.types.is_numeric_dtype(ours) and pd.api.types.is_numeric_dtype(theirs)
        floats = numeric and (pd.api.types.is_float_dtype(ours) or pd.api.types.is_float_dtype(theirs))
        for row in range(len(reference)):
            a, b = ours.iloc[row], theirs.iloc[row]
            if floats:
                both_nan = pd.isna(a) and pd.isna(b)
                atol = tolerance.column_atol.get(column, tolerance.atol)
                allowed = atol + tolerance.rtol * abs(float(b)) if not pd.isna(b) else 0.0
                bad = not both_nan and (pd.isna(a) or pd.isna(b) or abs(float(a) - float(b)) > allowed)
                detail = f" (tolerance {allowed:.4f})"
            else:
                bad = not ((pd.isna(a) and pd.isna(b)) or a == b)
                detail = " (must be equal)"
            if bad:
                where = ", ".join(f"{k}={reference[k].iloc[row]}" for k in keys if k != column)
                problems.append(
                    f"{name} row {row}{f' ({where})' if where else ''} column {column}: "
                    f"fresh {_shown(a)} vs reference {_shown(b)}{detail}"
                )
    return problems
