"""Where a notebook run spends its time, phase by phase: the cell durations papermill recorded in executed notebooks.

A phase is a section of the notebook: the cells from one Markdown heading (``## ...``) to the next. Each executed
notebook (``runs/*.ipynb`` after ``make reproduce MODEL=...``) records every cell's duration in its metadata, so the
profile costs no extra run and describes exactly the run it comes from.

Usage::

    python benchmarks/notebook_profile.py runs/ --title "smollm2-135m, make reproduce, 2 cores" --out profile.md
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Phase:
    """One section of an executed notebook: its heading, how many code cells it ran and their total seconds."""

    notebook: str
    heading: str
    cells: int
    seconds: float


def notebook_phases(path: Path) -> list[Phase]:
    """The phases of one executed notebook, in order (cells before the first heading form ``"(setup)"``).

    Raises:
        ValueError: a notebook without papermill's cell durations (not executed by papermill).
    """
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if "papermill" not in notebook.get("metadata", {}):
        raise ValueError(f"{path} holds no papermill metadata: run it with make reproduce or kc_utils.execute first")
    phases: list[Phase] = []
    heading, cells, seconds = "(setup)", 0, 0.0
    for cell in notebook["cells"]:
        source = "".join(cell.get("source", ""))
        if cell["cell_type"] == "markdown":
            first = next((line for line in source.splitlines() if line.startswith("## ")), None)
            if first is not None:
                if cells:
                    phases.append(Phase(path.stem, heading, cells, seconds))
                heading, cells, seconds = first[3:].strip(), 0, 0.0
            continue
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell["cell_type"] == "code" and duration is not None:
            cells += 1
            seconds += float(duration)
    if cells:
        phases.append(Phase(path.stem, heading, cells, seconds))
    return phases


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {rest:02d} s" if hours else f"{minutes} min {rest:02d} s"


def profile_markdown(notebooks: list[Path], title: str, min_share: float = 0.02) -> str:
    """A Markdown profile: each notebook's total, then its phases of at least ``min_share`` of that total."""
    lines = [f"### {title}", "", "| notebook | phase | cells | time | share |", "|---|---|---|---|---|"]
    for path in notebooks:
        phases = notebook_phases(path)
        total = sum(p.seconds for p in phases)
        lines.append(f"| **{path.stem}** | all | {sum(p.cells for p in phases)} | **{_clock(total)}** | 100% |")
        small = [p for p in phases if total and p.seconds / total < min_share]
        for phase in phases:
            if phase not in small:
                lines.append(
                    f"| | {phase.heading} | {phase.cells} | {_clock(phase.seconds)} | {phase.seconds / total:.0%} |"
                )
        if small:
            rest = sum(p.seconds for p in small)
            lines.append(
                f"| | {len(small)} other phases | {sum(p.cells for p in small)} | {_clock(rest)} | {rest / total:.0%} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of executed notebooks (runs/) or one notebook")
    parser.add_argument("--title", default="notebook profile")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = parser.parse_args()
    notebooks = sorted(args.runs.glob("[0-9][0-9]_*.ipynb")) if args.runs.is_dir() else [args.runs]
    if not notebooks:
        parser.error(f"no executed notebooks (NN_*.ipynb) in {args.runs}")
    text = profile_markdown(notebooks, args.title)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
