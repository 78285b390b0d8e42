"""Where outputs go: the project root when inside a checkout, else the working directory.

Notebooks are run from ``notebooks/`` (Jupyter) or from the root (``make reproduce``); both must
write to the same ``figures/`` and ``runs/``, so paths are resolved from the checkout's root, found
by walking up from the working directory to the ``pyproject.toml`` of this project.
"""

from __future__ import annotations

from pathlib import Path


def project_root(start: str | Path | None = None) -> Path:
    """The knowledge-circuits checkout containing ``start`` (default: cwd), else ``start`` itself."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and 'name = "knowledge-circuits"' in pyproject.read_text(encoding="utf-8"):
            return folder
    return here


def figures_dir() -> Path:
    """``<root>/figures``."""
    return project_root() / "figures"


def output_dir(relative: str | Path) -> Path:
    """A folder for run outputs, relative to the root unless absolute; created if missing."""
    path = Path(relative)
    folder = path if path.is_absolute() else project_root() / path
    folder.mkdir(parents=True, exist_ok=True)
    return folder
