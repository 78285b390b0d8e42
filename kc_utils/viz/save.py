"""Saving figures and tables, and showing figures inside widgets: shared by every figure module.

Figures are saved as HTML that works offline and as PNG when the optional ``kaleido`` package can
render one. By default the HTML files of one folder share one ``plotly.min.js`` beside them (small
files, one script); ``self_contained=True`` embeds the script so a single file can be mailed (the
notebooks save their headline figures that way). A shared-script page copied away from its folder
says so on the page instead of opening blank (:data:`MISSING_SCRIPT_NOTE`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = ["MISSING_SCRIPT_NOTE", "save_figure", "show_in_output"]

MISSING_SCRIPT_NOTE = (
    "This figure needs the file plotly.min.js from the folder it was saved in; it was copied without it. "
    "Copy plotly.min.js beside this file, or save the figure with self_contained=True."
)
"""What a shared-script figure page shows when ``plotly.min.js`` is not beside it."""

_MISSING_SCRIPT_CHECK = (
    '<script>if (typeof Plotly === "undefined") { document.body.insertAdjacentHTML("afterbegin", '
    f'"<p style=\\"font:16px sans-serif;color:#b2182b\\">{MISSING_SCRIPT_NOTE}</p>"); }}</script>'
)


def save_figure(
    fig: go.Figure,
    name: str,
    folder: str | Path,
    png: bool = True,
    self_contained: bool = False,
) -> list[Path]:
    """Write ``<name>.html`` (and ``<name>.png`` when kaleido works) into ``folder`` (created).

    Args:
        self_contained: embed plotly.js in the HTML (about 4.5 MB) so the file renders anywhere;
            by default the folder's files share a ``plotly.min.js`` written beside them, and an
            HTML file copied away from that folder renders blank.

    Returns the paths written; a PNG that cannot be rendered is reported with a warning, not hidden.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{name}.html"
    fig.write_html(html, include_plotlyjs=True if self_contained else "directory", full_html=True)
    if not self_contained:
        page = html.read_text(encoding="utf-8")
        html.write_text(page.replace("</body>", _MISSING_SCRIPT_CHECK + "\n</body>", 1), encoding="utf-8")
    written = [html]
    if png:
        try:
            import kaleido  # noqa: F401
        except ImportError:
            return written
        try:
            fig.write_image(folder / f"{name}.png", scale=2)
            written.append(folder / f"{name}.png")
        except Exception as error:  # kaleido needs a Chrome; say so rather than fail the notebook
            warnings.warn(
                f"PNG for {name} not written ({type(error).__name__}: {error}); the HTML is saved", stacklevel=2
            )
    return written


def show_in_output(out: Any, content: go.Figure | str) -> None:
    """Replace an ``ipywidgets.Output``'s content with a figure (or a line of text).

    Sets the widget's ``outputs`` directly instead of capturing ``display`` inside ``with out:``:
    capture goes through the kernel's output hooks, which headless runners (papermill/nbclient)
    intermittently stall on (jupyter/nbclient#312); setting the state is a plain widget update.
    The bundle holds plotly's JSON mimetype (what JupyterLab renders) plus whatever the active
    plotly renderer adds, as a plain ``display`` would.
    """
    if isinstance(content, str):
        out.outputs = ({"output_type": "stream", "name": "stdout", "text": content + "\n"},)
        return
    bundle = {
        "text/plain": f"<plotly figure: {content.layout.title.text or ''}>",
        "application/vnd.plotly.v1+json": json.loads(content.to_json()),
        **content._repr_mimebundle_(),
    }
    out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
