"""The documentation site, built once per test session for tests/test_docs.py and tests/test_docs_browser.py.

:func:`built_site` runs what ``make docs`` runs — ``docs/build.py`` (the page sources in ``build/docs/``) and
``mkdocs build --strict`` (``site/``) — once, and returns its result. The notebook pages are built from the executed
notebooks in ``runs/``; without them the docs tests skip with the reason, unless ``KC_DOCS_REQUIRED`` is set (as
``make test`` sets it, after running every notebook on the organism), where they fail.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
SITE = ROOT / "site"


def load_builder():
    """``docs/build.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("kc_docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class BuiltSite:
    figures: dict[str, int]  # plotly figures per notebook page, as the page sources hold them
    output: str  # what mkdocs printed
    seconds: float  # the build's wall time, both steps
    status_before: str | None  # `git status --porcelain` before and after the build (None outside a git checkout)
    status_after: str | None


def require_executed_notebooks() -> None:
    """Skip (or fail, under ``KC_DOCS_REQUIRED``) when an executed notebook is missing from ``runs/``."""
    builder = load_builder()
    missing = [n for n in builder.notebook_names() if not (RUNS / f"{n}.ipynb").exists()]
    if missing:
        reason = (
            f"no executed notebook in runs/ for {', '.join(missing)}: the docs' notebook pages are built from "
            "make reproduce's executed copies (make test and make docs run them when missing)"
        )
        if os.environ.get("KC_DOCS_REQUIRED"):
            pytest.fail(reason)
        pytest.skip(reason)


def _git_status() -> str | None:
    if not (ROOT / ".git").exists():
        return None
    command = ["git", "status", "--porcelain", "--untracked-files=all"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


@functools.lru_cache(maxsize=1)
def _build() -> BuiltSite:
    before = _git_status()
    start = time.perf_counter()
    figures = load_builder().build(RUNS, ROOT / "build" / "docs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{output[-4000:]}"
    return BuiltSite(figures, output, time.perf_counter() - start, before, _git_status())


def built_site() -> BuiltSite:
    require_executed_notebooks()
    return _build()
