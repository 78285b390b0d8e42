"""The prepared GPU check (benchmarks/device_check.sh): its dry run passes every step on the CPU, a GPU run on a
machine without CUDA says so and fails, and its comparisons catch a difference.

``make test`` runs the dry run once (``make device-check-dry``) and hands its JSON over in ``KC_DEVICE_CHECK_JSON``;
without it (``pytest tests/test_device_check.py``) the test runs the dry run itself (about 30 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def _module():
    """benchmarks/device_check.py, imported once (registered first: its dataclass reads its own module)."""
    if "device_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["device_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["device_check"]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    given = os.environ.get("KC_DEVICE_CHECK_JSON")
    if given:
        return json.loads(Path(given).read_text())
    out = tmp_path_factory.mktemp("device_check") / "dry.json"
    env = {k: v for k, v in _environment().items() if k != "OUT"}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "5 of 5 steps passed" in done.stdout
    return json.loads(out.read_text())


def test_the_dry_run_passes_every_step(dry_run):
    steps = _module().STEPS
    assert dry_run["mode"] == "dry-run" and dry_run["settings"]["device"] == "cpu"
    assert list(dry_run["steps"]) == list(steps)
    failed = {name: s["summary"] for name, s in dry_run["steps"].items() if s["status"] != "PASS"}
    assert not failed, failed
    assert dry_run["all_passed"] is True


def test_the_dry_runs_numbers_are_what_each_step_claims(dry_run):
    steps = dry_run["steps"]
    for dtype in ("float32", "bfloat16"):
        checks = steps["exact"][dtype]["checks"]
        assert [c["name"] for c in checks] == [
            "full circuit vs plain transformers",
            "empty circuit vs corrupt run",
            "EAP vs mask gradient",
        ]
        assert all(c["ok"] and c["max_abs_diff"] <= c["atol"] + c["rtol"] * c["scale"] for c in checks), checks
        assert checks[2]["correlation"] > 0.999 and checks[2]["scale"] > 0
    # the organism in float32 on one CPU: the same kernels, so the split run is bit for bit the plain one
    assert [c["max_abs_diff"] for c in steps["split"]["checks"]] == [0.0, 0.0]
    assert len(steps["split"]["device_map"]) > 1, "a per-unit map, not one entry"
    acdc = steps["speed"]["acdc"]["stacks"]
    assert set(acdc) == {"1", "4"} and all(s["same_circuit"] and s["trials"] == 8 for s in acdc.values())
    assert steps["speed"]["eap_ig_vs_hf"] > 0
    assert steps["notebook"]["returncode"] == 0 and steps["notebook"]["relations"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: a GPU run would run")
def test_a_gpu_run_without_cuda_says_so_and_fails(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--steps", "exact,speed", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**_environment(), "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "skipped: no CUDA" in done.stdout
    steps = json.loads(out.read_text())["steps"]
    assert steps["preflight"]["status"] == "FAIL"
    assert [steps[s]["summary"] for s in ("exact", "speed")] == ["skipped: no CUDA"] * 2


def test_the_comparison_catches_a_difference():
    compare = _module().compare
    reference = torch.tensor([[10.0, -2.0], [0.5, 3.0]])
    assert compare(reference.clone(), reference, atol=1e-3)["ok"]
    moved = reference.clone()
    moved[1, 0] += 2e-3
    check = compare(moved, reference, atol=1e-3)
    assert not check["ok"] and check["max_abs_diff"] == pytest.approx(2e-3, rel=1e-3)
    # relative: atol times the largest |value| (10), so 2e-3 passes at 1e-3 and 0.02 does not
    assert compare(moved, reference, atol=1e-3, relative=True)["ok"]
    moved[0, 1] += 0.02
    assert not compare(moved, reference, atol=1e-3, relative=True)["ok"]
    assert not compare(reference * float("nan"), reference, atol=1e9)["ok"], "NaN never passes"
