"""Opening and running a notebook in JupyterLab leaves ``git status`` clean.

The notebooks are versioned without outputs, execution counts or session metadata; ``.gitattributes``
names the nbstripout filter and ``make notebook-filter`` (run by ``make lab``) configures it; ``make lab``
saves through :func:`kc_utils.viz.lab.strip_on_save`. Here a notebook is committed through that filter in
a scratch repository, then run and saved the way a JupyterLab session does (outputs, execution counts,
kernel and widget metadata, papermill records): through the save hook git must see no change at all,
and through the filter alone no change in content. Also: the versioned notebooks are already in the
filtered form (so opening one changes nothing) and none carries papermill's injected-parameters cell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kc_utils.viz import lab
from kc_utils.viz.lab import NBSTRIPOUT_KEYS

ROOT = Path(__file__).resolve().parents[1]
NBSTRIPOUT = Path(sys.executable).with_name("nbstripout")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

pytestmark = pytest.mark.skipif(not NBSTRIPOUT.exists() or shutil.which("git") is None, reason="needs git, nbstripout")


def filter_keys() -> str:
    """The extra keys ``make notebook-filter`` strips (read from the Makefile, so the test follows it)."""
    match = re.search(r"^NBSTRIPOUT_KEYS := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile defines NBSTRIPOUT_KEYS"
    return match.group(1).strip()


def test_the_filter_keys_agree_everywhere():
    assert filter_keys() == NBSTRIPOUT_KEYS
    assert f"--extra-keys '{NBSTRIPOUT_KEYS}'" in (ROOT / "postBuild").read_text()
    assert "kc_utils.viz.lab.strip_on_save" in (ROOT / "Makefile").read_text()


def clean(text: str) -> str:
    """The filter's output, in process (the same function the nbstripout command runs)."""
    from nbstripout._nbstripout import main  # noqa: F401  (the command's module: its defaults below)
    from nbstripout._utils import strip_output

    defaults = "metadata.signature metadata.widgets cell.metadata.collapsed cell.metadata.ExecuteTime "
    defaults += "cell.metadata.execution cell.metadata.heading_collapsed cell.metadata.hidden cell.metadata.scrolled "
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    return nbformat.writes(strip_output(nb, False, False, False, (defaults + filter_keys()).split())) + "\n"


def git(repo: Path, *args: str) -> str:
    config = ["-c", f"filter.nbstripout.clean={NBSTRIPOUT} --extra-keys '{filter_keys()}'"]
    config += ["-c", "filter.nbstripout.smudge=cat", "-c", "filter.nbstripout.required=true"]
    config += ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.autocrlf=false"]
    return subprocess.run(["git", *config, *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def session_rewrite(path: Path) -> None:
    """What a JupyterLab session writes back: outputs, counts, trust, kernel, widget state, timings."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output {i} at 0x7f{i:04x}\n")]
        cell.metadata["execution"] = {"iopub.execute_input": "2026-12-02T10:00:00Z"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.12.1"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["papermill"] = {"duration": 12.5}
    nbformat.write(nb, path)


def _scratch_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository holding the smallest notebook, committed through the filter and checked out again."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", repo / ".gitattributes")
    smallest = min(NOTEBOOKS, key=lambda p: p.stat().st_size)
    notebook = repo / "notebooks" / smallest.name
    shutil.copy(smallest, notebook)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "notebooks")
    notebook.unlink()
    git(repo, "checkout", "--", ".")  # the working copy a fresh clone gets: the stored form
    return repo, notebook


def test_a_jupyterlab_session_saved_through_the_hook_leaves_git_status_clean(tmp_path, monkeypatch):
    repo, notebook = _scratch_repo(tmp_path)
    stored = git(repo, "show", f"HEAD:notebooks/{notebook.name}")
    assert '"outputs": []' in stored and '"execution_count": null' in stored
    session_rewrite(notebook)  # what the kernel produced, as JupyterLab would hand it to the save
    model = {"type": "notebook", "content": nbformat.read(notebook, as_version=4)}
    monkeypatch.setattr(lab, "_NOTEBOOKS", repo / "notebooks")
    lab.strip_on_save(model, f"notebooks/{notebook.name}", type("CM", (), {"root_dir": str(repo)})())
    nbformat.write(model["content"], notebook)
    assert notebook.read_text() == stored
    assert git(repo, "status", "--porcelain") == ""
    # a change of a cell's source is still seen
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[0].source += "\nedited"
    nbformat.write(nb, notebook)
    assert git(repo, "status", "--porcelain").strip() == f"M notebooks/{notebook.name}"


def test_the_filter_alone_keeps_outputs_out_of_what_git_stores(tmp_path):
    repo, notebook = _scratch_repo(tmp_path)
    session_rewrite(notebook)
    assert "output 0" in notebook.read_text()  # papermill or another editor kept its outputs in the file
    assert git(repo, "diff", "--stat") == ""  # git sees no change of content (status may list it: size changed)


def test_the_hook_leaves_other_notebooks_alone(tmp_path):
    model = {"type": "notebook", "content": nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])}
    model["content"].cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    lab.strip_on_save(model, "mine.ipynb", type("CM", (), {"root_dir": str(tmp_path)})())
    assert model["content"].cells[0].outputs  # a user's own notebook keeps its outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_versioned_notebooks_carry_no_injected_parameters(path):
    nb = nbformat.read(path, as_version=4)
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])], (
        f"{path.name} holds papermill's injected-parameters cell; execute into runs/, not over the notebook"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_versioned_notebooks_are_already_filtered(path):
    """A notebook stored through the filter opens and saves unchanged (its clean form is itself)."""
    text = subprocess.run(["git", "show", f"HEAD:notebooks/{path.name}"], cwd=ROOT, capture_output=True, text=True)
    if text.returncode != 0:
        pytest.skip("not committed yet")
    assert clean(text.stdout) == text.stdout
