"""Assemble the documentation site's page sources (``make docs`` runs this, then ``mkdocs build --strict``).

MkDocs reads one folder, ``build/docs/`` (ignored by git), which this script fills from what the project
already holds, so nothing tracked is written and no text exists twice:

1. every file of ``docs/`` except its scripts (the hand-written pages, ``docs/findings/*.md`` and images), and the
   README as the home page (``index.md``) with its findings table as the notebooks' index;
2. one page per notebook, ``notebooks/<name>.ipynb``: the **executed copy** ``runs/<name>.ipynb`` that
   ``make reproduce`` writes (never the stripped notebook in ``notebooks/``, which holds no outputs), with the
   notebook's findings (``docs/findings/<name>.md``) and a line saying which model ran it put after its
   title cell. Every plotly output becomes a ``<div class="kc-plotly">`` holding the figure's JSON, which
   ``docs/js/plotly-figures.js`` draws with the ``plotly.min.js`` of the installed plotly (copied here), so
   the figures are interactive and need no network;
3. the model card of the organism (``kc_utils/organism/README.md``), the benchmark reports
   (``benchmarks/*.md``), ``CHANGELOG.md`` and ``CONTRIBUTING.md``;
4. one API page per subpackage, ``api/<subpackage>.md``, each a list of ``::: module`` blocks that mkdocstrings
   fills from the docstrings.

Links from a page to a file of the repository outside ``docs/`` (``../kc_utils/models.py``) work on GitHub; in
the site they become links to the file on GitHub (``REPO_URL``).

Run ``python docs/build.py --help``; ``--runs DIR`` takes the executed notebooks from another folder (a real
model's run, e.g. ``make reproduce MODEL=smollm2-135m`` followed by ``make docs``).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REPO_URL = "https://github.com/knowledge-circuits/knowledge-circuits"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

#: Files outside docs/ that become site pages: source -> page.
COPIED_PAGES = {
    "kc_utils/organism/README.md": "models/kc-organism.md",
    "benchmarks/README.md": "performance/benchmarks.md",
    "benchmarks/results.md": "performance/results.md",
    "benchmarks/acdc_hybrid.md": "performance/acdc_hybrid.md",
    "benchmarks/memory_llama.md": "performance/memory_llama.md",
    "benchmarks/post_norm.md": "performance/post_norm.md",
    "benchmarks/bfloat16.md": "performance/bfloat16.md",
    "benchmarks/speed.md": "performance/speed.md",
    "benchmarks/device_check.md": "performance/device_check.md",
    "CHANGELOG.md": "changelog.md",
    "CONTRIBUTING.md": "contributing.md",
}

#: The API reference: one page per entry, the modules it documents.
API_PAGES = {
    "kc_utils": ["kc_utils"],
    "models": ["kc_utils.models", "kc_utils.gguf", "kc_utils.placement", "kc_utils.shape"],
    "data": ["kc_utils.data"],
    "circuits": ["kc_utils.circuits"],
    "analysis": ["kc_utils.analysis"],
    "editing": ["kc_utils.editing"],
    "neurons": ["kc_utils.neurons"],
    "viz": ["kc_utils.viz"],
    "notebook": ["kc_utils.notebook", "kc_utils.execute", "kc_utils.sweep"],
    "organism": ["kc_utils.organism"],
}


class DocsBuildError(RuntimeError):
    """The page sources cannot be assembled (an executed notebook is missing, a findings page is missing...)."""


def notebook_names() -> list[str]:
    """The numbered notebooks, e.g. ``01_knowledge_circuits``."""
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))


def _submodules(package: str) -> list[str]:
    """``package`` and its modules (not ``__main__``), as dotted names, package first."""
    path = ROOT / package.replace(".", "/")
    if not path.is_dir():
        return [package]
    names = [package]
    for child in sorted(path.iterdir()):
        if child.suffix == ".py" and child.stem not in ("__init__", "__main__"):
            names.append(f"{package}.{child.stem}")
        elif child.is_dir() and (child / "__init__.py").exists():
            names.extend(_submodules(f"{package}.{child.name}"))
    return names


def _api_page(title: str, packages: list[str]) -> str:
    lines = [f"# API: `{title}`", "", "Generated from the docstrings by mkdocstrings.", ""]
    for package in packages:
        modules = [package] if package == "kc_utils" else _submodules(package)
        for module in modules:
            lines += [f"::: {module}", "    options:", "      show_submodules: false", ""]
    return "\n".join(lines)


_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def rewrite_links(text: str, source: Path, page: Path) -> str:
    """Point each relative link of ``text`` (a file at ``source``, to become ``page`` in the site) at its target.

    A target inside ``docs/`` stays a page link (re-rooted for ``page``); a target elsewhere in the repository
    becomes its address on GitHub. Absolute URLs are left alone.
    """

    def fix(match: re.Match[str]) -> str:
        target, anchor = match.group(2), match.group(3) or ""
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return match.group(0)
        resolved = (source.parent / target).resolve()
        try:
            inside_docs = resolved.relative_to(DOCS)
        except ValueError:
            inside_docs = None
        if inside_docs is not None and inside_docs.parts[0] == "findings":  # a notebook's findings: its page
            inside_docs = Path("notebooks", f"{inside_docs.stem}.ipynb")
        if inside_docs is not None:
            new = Path(*[".."] * (len(page.parts) - 1), inside_docs).as_posix()
        else:
            pages = {**COPIED_PAGES, "README.md": "index.md"}
            mapped = {Path(s): Path(p) for s, p in pages.items()}.get(resolved.relative_to(ROOT))
            if mapped is not None:
                new = Path(*[".."] * (len(page.parts) - 1), mapped).as_posix()
            else:
                kind = "tree" if resolved.is_dir() else "blob"
                new = f"{REPO_URL}/{kind}/main/{resolved.relative_to(ROOT).as_posix()}"
        return f"{match.group(1)}{new}{anchor}{match.group(4)}"

    return _LINK.sub(fix, text)


def _plotly_html(figure: dict) -> str:
    """A figure's placeholder: a div holding its JSON, drawn by ``js/plotly-figures.js``."""
    payload = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")
    return f'<div class="kc-plotly"><script type="application/json">{payload}</script></div>'


def _model_of(notebook: dict) -> str:
    parameters = notebook.get("metadata", {}).get("papermill", {}).get("parameters", {})
    if "model_name" in parameters:
        return str(parameters["model_name"])
    for cell in notebook["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            match = re.search(r"model_name\s*=\s*['\"]([^'\"]+)", "".join(cell["source"]))
            if match:
                return match.group(1)
    return "the notebook's default model"


def notebook_page(name: str, executed: Path, findings: str) -> tuple[dict, int]:
    """The page of notebook ``name``: its executed copy with its findings first; plotly outputs as divs.

    Returns the notebook and the number of plotly figures it shows.
    """
    notebook = json.loads(executed.read_text(encoding="utf-8"))
    n_figures = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                output["data"] = {"text/html": _plotly_html(data[PLOTLY_MIME])}
                n_figures += 1
    run = notebook.get("metadata", {}).get("papermill", {})
    if not run.get("end_time") or run.get("exception"):
        state = "failed" if run.get("exception") else "did not finish (it may still be running)"
        raise DocsBuildError(
            f"runs/{name}.ipynb {state}: its page needs a complete run; see runs/{name}.log and rerun make reproduce"
        )
    when = datetime.fromisoformat(run["end_time"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    minutes, seconds = divmod(round(run.get("duration") or 0), 60)
    model = _model_of(notebook)
    source_link = f"{REPO_URL}/blob/main/notebooks/{name}.ipynb"
    intro = (
        f"{findings.rstrip()}\n\n"
        f"> **This page** holds the executed copy `runs/{name}.ipynb` of [`notebooks/{name}.ipynb`]({source_link}), "
        "run on "
        f"**{html.escape(model)}** (finished {when}, {minutes} min {seconds} s) by `make reproduce`; {n_figures} "
        "interactive figure(s). "
        f"Widget explorers need a live kernel: open the notebook in JupyterLab (`make lab`).\n"
    )
    # after the notebook's title cell, so that the page opens with its title, then its findings
    at = 1 if notebook["cells"] and notebook["cells"][0]["cell_type"] == "markdown" else 0
    notebook["cells"].insert(at, {"cell_type": "markdown", "id": "kc-findings", "metadata": {}, "source": intro})
    return notebook, n_figures


def build(runs: Path = ROOT / "runs", out: Path = ROOT / "build" / "docs") -> dict[str, int]:
    """Fill ``out`` with the site's page sources; returns the number of plotly figures per notebook page.

    Raises :class:`DocsBuildError` naming what is missing (an executed notebook, a findings page).
    """
    names = notebook_names()
    missing = [n for n in names if not (runs / f"{n}.ipynb").exists()]
    if missing:
        raise DocsBuildError(
            f"no executed copy of {', '.join(missing)} in {runs}/: the notebook pages are built from the executed "
            "notebooks that `make reproduce` writes; run `make reproduce` (or `make docs`, which runs them if missing)"
        )
    no_findings = [n for n in names if not (DOCS / "findings" / f"{n}.md").exists()]
    if no_findings:
        raise DocsBuildError(f"docs/findings/ has no page for {', '.join(no_findings)}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted(DOCS.rglob("*")):
        if path.is_dir() or path.suffix == ".py" or "__pycache__" in path.parts:
            continue
        target = out / path.relative_to(DOCS)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".md":
            page = path.relative_to(DOCS)
            target.write_text(rewrite_links(path.read_text(encoding="utf-8"), path, page), encoding="utf-8")
        else:
            shutil.copy2(path, target)
    for source, page in COPIED_PAGES.items():
        text = rewrite_links((ROOT / source).read_text(encoding="utf-8"), ROOT / source, Path(page))
        (out / page).parent.mkdir(parents=True, exist_ok=True)
        (out / page).write_text(text, encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (out / "index.md").write_text(rewrite_links(readme, ROOT / "README.md", Path("index.md")), encoding="utf-8")
    glance = "## Findings at a glance"
    if glance not in readme:
        raise DocsBuildError(f"README.md has no section {glance!r} (the notebooks' index page)")
    table = glance + readme.split(glance, 1)[1].split("\n## ", 1)[0]
    (out / "notebooks").mkdir(exist_ok=True)
    (out / "notebooks" / "index.md").write_text(
        "# Notebooks\n\n" + rewrite_links(table, ROOT / "README.md", Path("notebooks/index.md")), encoding="utf-8"
    )
    figures: dict[str, int] = {}
    for name in names:
        findings = (DOCS / "findings" / f"{name}.md").read_text(encoding="utf-8")
        findings = rewrite_links(findings, DOCS / "findings" / f"{name}.md", Path("notebooks") / f"{name}.ipynb")
        notebook, figures[name] = notebook_page(name, runs / f"{name}.ipynb", findings)
        (out / "notebooks" / f"{name}.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    shutil.rmtree(out / "findings")  # their text is on the notebook pages
    import plotly

    (out / "js").mkdir(exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "js" / "plotly.min.js")
    (out / "api").mkdir(exist_ok=True)
    for title, packages in API_PAGES.items():
        (out / "api" / f"{title}.md").write_text(_api_page(title, packages), encoding="utf-8")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="folder of the executed notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "docs", help="where the page sources go")
    args = parser.parse_args(argv)
    try:
        figures = build(args.runs.resolve(), args.out.resolve())
    except DocsBuildError as error:
        print(f"docs: {error}", file=sys.stderr)
        return 1
    print(f"docs: page sources in {args.out} ({sum(figures.values())} plotly figures over {len(figures)} notebooks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
