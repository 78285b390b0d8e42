"""Draw the README's circuit image from notebook 01's executed copy (``make readme-figure``).

Reads ``runs/01_knowledge_circuits.ipynb`` (written by ``make reproduce``), takes the figure of the cell that draws
the first relation's circuit (``plot_circuit``) and writes it as a PNG to ``docs/images/``. Needs plotly's static
export: ``kaleido`` (1.x drives an installed Chrome or Chromium; ``pip install "kaleido>=1"``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "01_knowledge_circuits.ipynb"
OUT = ROOT / "docs" / "images" / "circuit_01_kc-organism.png"


def circuit_figure(run: Path = RUN) -> dict:
    """The plotly JSON of the first circuit the executed notebook 01 draws."""
    notebook = json.loads(run.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "plot_circuit(" in "".join(cell["source"]):
            for output in cell.get("outputs", []):
                if "application/vnd.plotly.v1+json" in output.get("data", {}):
                    return output["data"]["application/vnd.plotly.v1+json"]
    raise SystemExit(f"{run} holds no circuit figure: run notebook 01 first (make reproduce)")


def main() -> int:
    import plotly.graph_objects as go

    if not RUN.exists():
        print(f"{RUN} is missing: run make reproduce (the organism) first", file=sys.stderr)
        return 1
    figure = go.Figure(circuit_figure())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.write_image(OUT, width=1000, height=560, scale=2)
    print(f"{OUT.relative_to(ROOT)}: {figure.layout.title.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
