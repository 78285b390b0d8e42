"""The documentation site builds strictly, every notebook has its page with its figures, and its links resolve.

The build is ``make docs``'s (``docs/build.py``, then ``mkdocs build --strict``), once per session
(:mod:`docs_site`); the browser check that the figures draw is in ``tests/test_docs_browser.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from docs_site import ROOT, RUNS, SITE, built_site, load_builder

builder = load_builder()
NOTEBOOKS = builder.notebook_names()


def _plotly_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(builder.PLOTLY_MIME in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_the_site_builds_strictly_without_a_warning():
    site = built_site()
    assert "WARNING" not in site.output, site.output[-4000:]
    assert (SITE / "index.html").exists()
    print(f"docs build: {site.seconds:.1f} s")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_has_a_page_with_its_findings_and_figures(notebook):
    site = built_site()
    page = (SITE / "notebooks" / notebook / "index.html").read_text(encoding="utf-8")
    expected = _plotly_outputs(RUNS / f"{notebook}.ipynb")
    assert site.figures[notebook] == expected
    assert page.count('class="kc-plotly"') == expected, "every plotly output of the executed notebook is on its page"
    assert expected > 0, f"runs/{notebook}.ipynb shows no plotly figure"
    assert 'id="findings"' in page, "the notebook's findings come first on its page"
    assert "runs/" + notebook + ".ipynb" in page


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def test_every_internal_link_resolves():
    built_site()
    broken = []
    for page in SITE.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            url = urlparse(link)
            if url.scheme or url.netloc or link.startswith(("#", "mailto:", "data:")):
                continue
            base = SITE if url.path.startswith("/") else page.parent  # 404.html links from the site's root
            target = (base / unquote(url.path).lstrip("/")).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(SITE)} -> {link}")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:30])


def test_building_leaves_git_status_clean():
    site = built_site()
    if site.status_before is None:
        pytest.skip("not a git checkout")
    assert site.status_after == site.status_before, "the build wrote files git sees:\n" + site.status_after
    outputs = ["site", "build", ".cache"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == outputs


def test_a_missing_executed_notebook_is_named_with_the_fix(tmp_path):
    with pytest.raises(builder.DocsBuildError, match=r"no executed copy of 01_knowledge_circuits.*make reproduce"):
        builder.build(tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_links_to_the_repository_become_github_addresses_and_findings_their_notebook_page():
    source = ROOT / "docs" / "getting-started.md"
    text = builder.rewrite_links(
        "[a](../kc_utils/models.py) [b](concepts.md#x) [c](findings/01_knowledge_circuits.md) [d](https://x.org/y) "
        "[e](../benchmarks/README.md) [f](../README.md#findings-at-a-glance)",
        source,
        Path("getting-started.md"),
    )
    assert f"[a]({builder.REPO_URL}/blob/main/kc_utils/models.py)" in text
    assert "[b](concepts.md#x)" in text and "[d](https://x.org/y)" in text
    assert "[c](notebooks/01_knowledge_circuits.ipynb)" in text
    assert "[e](performance/benchmarks.md)" in text and "[f](index.md#findings-at-a-glance)" in text


def test_plotly_json_cannot_close_its_script_tag():
    html = builder._plotly_html({"data": [{"name": "</script><b>"}], "layout": {}})
    assert html.count("</script>") == 1 and re.search(r"<\\/script>", html)


def test_an_unfinished_or_failed_run_is_refused(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in NOTEBOOKS:
        finished = None if name == NOTEBOOKS[-1] else "2026-12-06T23:18:23+00:00"
        notebook = {"cells": [], "metadata": {"papermill": {"end_time": finished, "exception": None}}}
        (runs / f"{name}.ipynb").write_text(json.dumps(notebook))
    with pytest.raises(builder.DocsBuildError, match=rf"runs/{NOTEBOOKS[-1]}.ipynb did not finish"):
        builder.build(runs, tmp_path / "out")
