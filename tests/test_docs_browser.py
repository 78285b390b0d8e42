"""In a real browser, notebook 01's page draws its plotly figures (their SVG is in the DOM).

Headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs) loads the built page from the disk with no
network, runs its scripts and dumps the DOM. Without a Chromium the test skips and says how to get one.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from docs_site import SITE, built_site

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def test_notebook_01_page_draws_its_plotly_figures_in_headless_chromium():
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run installs it in CI)")
    site = built_site()
    page = SITE / "notebooks" / "01_knowledge_circuits" / "index.html"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    figures = dom.split('class="kc-plotly')[1:]
    assert len(figures) == site.figures["01_knowledge_circuits"] > 0
    undrawn = [i for i, figure in enumerate(figures) if 'class="main-svg"' not in figure.split("kc-plotly")[0]]
    assert not undrawn, f"figures {undrawn} of {len(figures)} have no plotly SVG: plotly.js did not draw them"
