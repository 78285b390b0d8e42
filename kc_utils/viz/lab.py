"""What JupyterLab writes back: the project's notebooks are saved without outputs, so a session leaves git clean.

The notebooks are versioned without outputs, execution counts or session metadata (``.gitattributes``
names the nbstripout filter; ``make notebook-filter`` configures it). A filter alone is not enough:
git reports a file whose size changed as modified without running the filter, so a notebook saved
with its outputs shows in ``git status`` although ``git diff`` is empty. ``make lab`` therefore starts
JupyterLab with :func:`strip_on_save` as the contents manager's pre-save hook: a notebook under this
repository's ``notebooks/`` is saved exactly as git stores it (outputs stay in the open session);
every other notebook is saved untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["NBSTRIPOUT_KEYS", "clean_notebook_text", "strip_on_save"]

#: Metadata the filter strips besides nbstripout's defaults (outputs, counts, trust signature, widget state).
NBSTRIPOUT_KEYS = (
    "metadata.language_info metadata.papermill metadata.widgets cell.metadata.papermill cell.metadata.execution"
)

_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def clean_notebook_text(text: str) -> str:
    """``text`` (a notebook's JSON) as the git filter stores it: the nbstripout command line with the same keys."""
    nbstripout = Path(sys.executable).with_name("nbstripout")
    return subprocess.run(
        [str(nbstripout), "--extra-keys", NBSTRIPOUT_KEYS], input=text, capture_output=True, text=True, check=True
    ).stdout


def strip_on_save(model: dict[str, Any], path: str, contents_manager: Any, **_: Any) -> None:
    """Jupyter ``ContentsManager.pre_save_hook``: a notebook of this repository's ``notebooks/`` is saved stripped.

    ``path`` is relative to the server's root; ``model["content"]`` is the notebook (nbformat node).
    """
    if model.get("type") != "notebook":
        return
    root = Path(getattr(contents_manager, "root_dir", ".")).resolve()
    if (root / path).resolve().parent != _NOTEBOOKS:
        return
    import nbformat

    cleaned = clean_notebook_text(nbformat.writes(nbformat.from_dict(model["content"])))
    model["content"] = nbformat.reads(cleaned, as_version=nbformat.NO_CONVERT)
