"""The prepared GPU check: exactness, speed, notebook 01 and a device-map split, on one CUDA device.

``benchmarks/device_check.sh`` drives it (it prints the card and the times, and says where the JSON went); run
``python benchmarks/device_check.py --help`` for the options. Five steps, in this order, each printing one line
``PASS``/``FAIL``/``SKIP`` with its numbers; every step's record goes to one JSON (rewritten after each step, so a
run cut short keeps what it measured):

1. ``preflight``: Python, torch, the CUDA device and its memory, the packages the steps import, the model's files.
2. ``exact``: in float32 and in bfloat16 (weights and activations), on the device, with the library's own functions
   as the tests use them (``tests/test_families.py``, ``tests/test_real_model.py``):

   - the full circuit (``circuit_logits`` with every edge kept) equals the plain ``transformers`` model inside the
     bridge (``models.hf_model``) on the clean prompts;
   - the empty circuit (every edge patched) equals the model on the corrupt prompts;
   - EAP's scores (``attribute(method="eap")``) equal the gradient of the masked run
     (``run_masked``) with respect to a mask of ones.

   Tolerances (:data:`TOLERANCES`, with what SmolLM2 measured on the CPU): float32 as the tests state them on the
   CPU (logits within 1e-3, the gradient within 1e-5 of its scale plus 1e-4 relative); bfloat16 relative to the
   compared values' largest |value|: logits within 5e-2 (the library's 16-bit tolerance for the residual
   decomposition, ``models.decomposition_tolerance``), the gradient within 1e-2; EAP's scores correlated ≥ 0.999 with
   the mask gradient in both.
3. ``split``: the model loaded with a ``device_map`` over the GPU and the CPU (``kc_utils.placement.plan_device_map``
   over ``[0, "cpu"]``, through ``load_model(device_map=...)``) against the same model on the GPU alone: logits of
   the clean prompts within 1e-3 and EAP-IG's scores within 1e-4 of their scale (both float32).
4. ``speed``: EAP and EAP-IG (5 steps) timed against the plain ``transformers`` passes they stand for (1 forward +
   1 or 5 forward/backward passes, :func:`attribution.plain_forward`, :func:`attribution.plain_forward_backward`)
   on the same device and batch (a Table-1 relation's Dval as notebook 01 builds it), median of per-repeat ratios;
   and ACDC capped at its first trials (:class:`acdc_speed.AcdcBench`) with one and several masks per pass,
   seconds per trial over one plain forward. Every timed call ends with ``torch.cuda.synchronize()``. It passes
   when every time is finite and ACDC finds the same circuit for every stack size; the ratios are reported, not
   judged (the issue's aim for EAP-IG is ≤ 1.3× the plain passes).
5. ``notebook``: notebook 01's default run (``python -m kc_utils.execute``, ``-p device cuda``) into a temporary
   folder; it passes when the notebook runs to the end and writes its Table 1. Its tables are then compared with
   the versioned CPU references in ``figures/`` (``kc_utils.notebook.compare_with_reference``) and the count of
   values outside the tolerance reported (a GPU's float order may move a value; reported, not judged).

``--dry-run`` runs the same steps on the CPU with tiny settings (:data:`DRY_RUN`): the shipped organism, ACDC capped
at 8 trials, notebook 01 on one relation, and a per-unit device map on the one CPU booted through accelerate (two
devices cannot be simulated on a CPU: tests/test_placement.py says why). ``make test`` runs it
(``make device-check-dry``) and ``tests/test_device_check.py`` asserts that every step passed.

Exit status: 0 when every step passed, 1 when one failed, 2 when a GPU run was asked for on a machine without CUDA
(every step then says ``skipped: no CUDA``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from acdc_speed import AcdcBench  # noqa: E402
from attribution import (  # noqa: E402
    load_hf,
    median,
    pearson,
    plain_forward,
    plain_forward_backward,
    relation_batch,
    timed,
)

STEPS = ("preflight", "exact", "split", "speed", "notebook")
NOTEBOOK = "notebooks/01_knowledge_circuits.ipynb"
#: what the steps import (a missing one fails the preflight and skips the rest)
REQUIRED_MODULES = (
    "torch",
    "transformers",
    "accelerate",
    "transformer_lens",
    "gguf",
    "pandas",
    "papermill",
    "kc_utils",
)

#: per dtype, for the logits and for EAP against the mask gradient: max |Δ| ≤ atol + rtol·|reference| (``relative``:
#: atol times the reference's largest |value|), and the least correlation of EAP's scores with the mask gradient
TOLERANCES: dict[str, dict[str, Any]] = {
    # the tests' own, on the CPU: tests/test_real_model.py (SmolLM2's logits) and tests/test_families.py (the gradient,
    # atol 1e-5 times max(scale, 1)); SmolLM2 on the CPU measured 0 / 1.7e-5 (logits) and 1.9e-6 (gradient)
    "float32": {
        "logits_atol": 1e-3,
        "logits_rtol": 1e-5,
        "grad_atol": 1e-5,
        "grad_rtol": 1e-4,
        "relative": False,
        "min_correlation": 0.999,
    },
    # logits: the 16-bit tolerance of the residual decomposition (models.decomposition_tolerance), 5e-2 of the scale;
    # SmolLM2 on the CPU measured 0 (full circuit) and 0.625 of 30 = 2.1e-2 (empty circuit vs the corrupt run).
    # Gradient: 1e-2 of its scale, r ≥ 0.999; measured 0.0133 of 6.5 = 2.0e-3, r = 0.9999994
    "bfloat16": {
        "logits_atol": 5e-2,
        "logits_rtol": 0.0,
        "grad_atol": 1e-2,
        "grad_rtol": 0.0,
        "relative": True,
        "min_correlation": 0.999,
    },
}
SPLIT_LOGITS_ATOL = 1e-3
SPLIT_SCORES_RTOL = 1e-4  # of the largest |score|


@dataclass(frozen=True)
class Settings:
    """What one run does; :data:`GPU` and :data:`DRY_RUN` are the two presets."""

    mode: str  # "gpu" or "dry-run"
    device: str
    model: str
    relation: str  # the Table-1 relation whose Dval is the batch (as notebook 01 builds it)
    dtypes: tuple[str, ...]
    ig_steps: int
    repeats: int
    acdc_trials: int  # ACDC's first trials only (acdc_speed.capped)
    acdc_stacks: tuple[int, ...]  # masks per pass; the first is the base of the speed ratio
    split_devices: tuple[int | str, ...]
    notebook_params: tuple[tuple[str, str], ...]
    notebook_timeout_s: int


GPU = Settings(
    mode="gpu",
    device="cuda",
    model="smollm2-135m",
    relation="country_capital_city",
    dtypes=("float32", "bfloat16"),
    ig_steps=5,
    repeats=3,
    acdc_trials=32,
    acdc_stacks=(1, 8),
    split_devices=(0, "cpu"),
    notebook_params=(("model_name", "smollm2-135m"), ("device", "cuda")),
    notebook_timeout_s=300,
)

DRY_RUN = Settings(
    mode="dry-run",
    device="cpu",
    model="kc-organism",
    relation="country_capital_city",
    dtypes=("float32", "bfloat16"),
    ig_steps=2,
    repeats=1,
    acdc_trials=8,
    acdc_stacks=(1, 4),
    split_devices=("cpu",),
    notebook_params=(
        ("model_name", "kc-organism"),
        ("device", "cpu"),
        ("relations", "country_capital_city"),
        ("n_val", "8"),
        ("n_test", "8"),
        ("compare_acdc", "False"),
        ("n_random", "1"),
    ),
    notebook_timeout_s=120,
)


# ----------------------------------------------------------------------------- helpers
def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def synced_timer(device: Any) -> Callable[[Callable[[], Any]], dict[str, float]]:
    """:func:`attribution.timed` with the device drained before and after the call (CUDA runs asynchronously)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(fn: Callable[[], Any]) -> dict[str, float]:
        sync()
        return timed(lambda: (fn(), sync()))

    return run


def compare(
    got: Any, expected: Any, atol: float, rtol: float = 0.0, relative: bool = False, name: str = ""
) -> dict[str, Any]:
    """``|got − expected| ≤ atol + rtol·|expected|`` everywhere (``atol`` times ``max|expected|`` when ``relative``)."""
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    bound = atol * (scale if relative else 1.0) + rtol * expected.abs()
    diff = (got - expected).abs()
    finite = bool(torch_isfinite(got) and torch_isfinite(expected))
    worst = float(diff.max()) if diff.numel() else 0.0
    return {
        "name": name,
        "max_abs_diff": worst,
        "scale": scale,
        "atol": atol * (scale if relative else 1.0),
        "rtol": rtol,
        "ok": finite and bool((diff <= bound).all()),
    }


def torch_isfinite(tensor: Any) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def describe(check: dict[str, Any]) -> str:
    return f"{check['name']} {check['max_abs_diff']:.2e} (≤ {check['atol']:.1e})"


# ----------------------------------------------------------------------------- the run
class Run:
    """The loaded models and the batch, shared by the steps (each model is loaded once)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: dict[str, Any] = {}
        self._batches: dict[str, Any] = {}

    @property
    def device(self) -> Any:
        import torch

        return torch.device(self.settings.device)

    def model(self, dtype: str = "float32") -> Any:
        import torch

        from kc_utils.models import load_model

        if dtype not in self._models:
            self._models[dtype] = load_model(self.settings.model, device=self.device, dtype=getattr(torch, dtype))
        return self._models[dtype]

    def batch(self, dtype: str = "float32") -> Any:
        """The relation's Dval as notebook 01 builds it, on the model's device."""
        if dtype not in self._batches:
            self._batches[dtype] = relation_batch(self.model(dtype), self.settings.model, self.settings.relation)
        return self._batches[dtype]

    def checkpoint(self) -> Path:
        from kc_utils.models import resolve_model

        return Path(resolve_model(self.settings.model).location)


# ----------------------------------------------------------------------------- steps
def step_preflight(run: Run) -> dict[str, Any]:
    record: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}
    missing = []
    for name in REQUIRED_MODULES:
        try:
            module = importlib.import_module(name)
            record[f"{name}_version"] = getattr(module, "__version__", "?")
        except Exception as error:  # noqa: BLE001 (any import failure is reported as such)
            missing.append(f"{name} ({type(error).__name__}: {error})")
    import torch

    record["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record["gpu"] = props.name
        record["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        record["cuda_version"] = torch.version.cuda
    record["torch_threads"] = torch.get_num_threads()
    record["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # "highest": no TF32
    if not missing:
        try:
            record["checkpoint"] = str(run.checkpoint())
        except Exception as error:  # noqa: BLE001
            missing.append(f"model {run.settings.model!r} ({type(error).__name__}: {error})")
    record["missing"] = missing
    where = f"{record['gpu']}, {record['gpu_memory_gib']} GiB" if torch.cuda.is_available() else "no CUDA"
    if run.settings.mode == "gpu" and not torch.cuda.is_available():
        record.update(status="FAIL", summary="skipped: no CUDA (a GPU run was asked for)")
    elif missing:
        record.update(status="FAIL", summary="missing: " + "; ".join(missing))
    else:
        record.update(
            status="PASS",
            summary=f"Python {record['python']}, torch {torch.__version__}, {where}; model {run.settings.model}",
        )
    return record


def step_exact(run: Run) -> dict[str, Any]:
    import torch

    from kc_utils import models
    from kc_utils.circuits.ablation import ablated_outputs
    from kc_utils.circuits.attribute import attribute
    from kc_utils.circuits.evaluate import circuit_logits
    from kc_utils.circuits.graph import Graph
    from kc_utils.circuits.patching import run_masked
    from kc_utils.data.metrics import get_metric

    record: dict[str, Any] = {}
    lines, ok = [], True
    for dtype in run.settings.dtypes:
        tol = TOLERANCES[dtype]
        model, batch = run.model(dtype), run.batch(dtype)
        graph = Graph.from_model(model)
        with torch.no_grad():
            plain = models.hf_model(model)(batch.clean).logits
            corrupt = model(batch.corrupt)
        full = circuit_logits(model, graph, batch, "patch")
        empty = circuit_logits(model, graph, batch, "patch", keep=torch.zeros_like(graph.real_edges))
        logits = {"atol": tol["logits_atol"], "rtol": tol["logits_rtol"], "relative": tol["relative"]}
        checks = [
            compare(full, plain, **logits, name="full circuit vs plain transformers"),
            compare(empty, corrupt, **logits, name="empty circuit vs corrupt run"),
        ]
        attribute(model, graph, batch, metric="logit_diff", method="eap", progress=False)
        with torch.no_grad():
            ablated = ablated_outputs(model, graph, batch, "patch")
        ones = torch.ones(graph.real_edges.shape, requires_grad=True)
        value = get_metric("logit_diff")(run_masked(model, graph, batch.clean, ablated, ones), batch).mean()
        (gradient,) = torch.autograd.grad(value, ones)
        expected = torch.where(graph.real_edges, gradient.cpu(), torch.zeros_like(gradient.cpu()))
        scale = float(expected.abs().max())
        grad_check = compare(
            graph.scores,
            expected,
            atol=tol["grad_atol"] * (1.0 if tol["relative"] else max(scale, 1.0)),
            rtol=tol["grad_rtol"],
            relative=tol["relative"],
            name="EAP vs mask gradient",
        )
        real = graph.real_edges
        correlation = pearson(graph.scores[real], expected[real])
        grad_check["correlation"] = correlation
        grad_check["ok"] = grad_check["ok"] and scale > 0 and correlation >= tol["min_correlation"]
        checks.append(grad_check)
        record[dtype] = {"checks": checks, "n_edges": graph.n_edges, "batch": list(batch.clean.shape)}
        ok = ok and all(c["ok"] for c in checks)
        lines.append(f"{dtype}: " + ", ".join(describe(c) for c in checks) + f", r = {correlation:.5f}")
        del ablated, gradient, ones
    record.update(status="PASS" if ok else "FAIL", summary="; ".join(lines))
    return record


def _split_model(run: Run) -> tuple[Any, dict[str, Any]]:
    """The model over ``settings.split_devices``. Over two devices through ``load_model(device_map=...)``; over one
    (the dry run) booted with the per-unit map itself, as tests/test_placement.py does, since ``load_model`` turns a
    one-device map into a plain boot."""
    from transformers import AutoConfig

    from kc_utils.models import configure_for_patching, load_model
    from kc_utils.placement import meta_model, placement_units, plan_device_map

    source = run.checkpoint()
    device_map = plan_device_map(
        placement_units(meta_model(AutoConfig.from_pretrained(source))), run.settings.split_devices
    )
    if len(set(device_map.values())) > 1:
        return load_model(run.settings.model, device_map=device_map), device_map
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(str(source), device_map=device_map)
    return configure_for_patching(model), device_map


def step_split(run: Run) -> dict[str, Any]:
    import torch

    from kc_utils import models
    from kc_utils.circuits.attribute import attribute
    from kc_utils.circuits.graph import Graph

    single, single_batch = run.model(), run.batch()
    split, device_map = _split_model(run)
    record: dict[str, Any] = {"device_map": {k: str(v) for k, v in device_map.items()}}
    record["hf_device_map"] = {
        k: str(v) for k, v in (getattr(models.hf_model(split), "hf_device_map", None) or {}).items()
    }
    batch = relation_batch(split, run.settings.model, run.settings.relation)
    if not torch.equal(batch.clean.cpu(), single_batch.clean.cpu()):
        raise AssertionError("the split model's batch differs from the single-device model's")
    with torch.no_grad():
        logits = {"single": single(single_batch.clean), "split": split(batch.clean)}
    scores = {}
    for name, model, b in (("single", single, single_batch), ("split", split, batch)):
        graph = attribute(
            model, Graph.from_model(model), b, method="eap-ig", ig_steps=run.settings.ig_steps, progress=False
        )
        scores[name] = graph.scores.clone()
    checks = [
        compare(logits["split"], logits["single"], SPLIT_LOGITS_ATOL, name="logits"),
        compare(scores["split"], scores["single"], SPLIT_SCORES_RTOL, relative=True, name="EAP-IG scores"),
    ]
    devices = sorted({str(v) for v in device_map.values()})
    record.update(
        checks=checks,
        status="PASS" if all(c["ok"] for c in checks) else "FAIL",
        summary=f"over {', '.join(devices)} ({len(device_map)} units) vs {run.settings.device} alone: "
        + ", ".join(describe(c) for c in checks),
    )
    return record


def step_speed(run: Run) -> dict[str, Any]:
    from kc_utils.circuits.attribute import attribute
    from kc_utils.circuits.graph import Graph

    settings = run.settings
    model, batch = run.model(), run.batch()
    hf = load_hf(run.checkpoint()).to(run.device)
    graph = Graph.from_model(model)
    clock = synced_timer(run.device)
    steps = settings.ig_steps

    def eap() -> None:
        attribute(model, graph, batch, "logit_diff", method="eap", progress=False)

    def eap_ig() -> None:
        attribute(model, graph, batch, "logit_diff", method="eap-ig", ig_steps=steps, progress=False)

    def hf_forward() -> None:
        plain_forward(hf, batch.corrupt)

    def hf_fb() -> None:
        plain_forward_backward(hf, batch)

    for warm in (eap, eap_ig, hf_forward, hf_fb):
        warm()
    rows = []
    for _ in range(settings.repeats):
        row = {"eap": clock(eap), "eap_ig": clock(eap_ig), "hf_fwd": clock(hf_forward)}
        row["hf_fb"] = [clock(hf_fb) for _ in range(2)]
        fb = median([t["wall"] for t in row["hf_fb"]])
        row["eap_vs_hf"] = row["eap"]["wall"] / (row["hf_fwd"]["wall"] + fb)
        row["eap_ig_vs_hf"] = row["eap_ig"]["wall"] / (row["hf_fwd"]["wall"] + steps * fb)
        rows.append(row)
    record: dict[str, Any] = {"rows": rows, "n_edges": graph.n_edges, "batch": list(batch.clean.shape)}
    for key in ("eap_vs_hf", "eap_ig_vs_hf"):
        record[key] = median([r[key] for r in rows])
    for key in ("eap", "eap_ig", "hf_fwd"):
        record[f"{key}_s"] = median([r[key]["wall"] for r in rows])
    finite = all(math.isfinite(record[k]) for k in ("eap_vs_hf", "eap_ig_vs_hf"))
    finite = finite and bool(torch_isfinite(graph.scores))

    bench = AcdcBench(model, hf, batch, list(settings.acdc_stacks), settings.acdc_trials, clock, settings.model)
    bench.warm_up()
    for _ in range(max(1, settings.repeats - 1)):
        bench.repeat()
    acdc = bench.result()
    summary = acdc["summary"]
    record["acdc"] = {
        "max_trials": settings.acdc_trials,
        "stacks": {
            k: {
                name: v[name]
                for name in (
                    "trials",
                    "passes",
                    "trial/fwd:wall",
                    "trial/hf_fwd:wall",
                    "speed_vs_first:wall",
                    "same_circuit",
                )
            }
            for k, v in summary.items()
        },
    }
    same = all(v["same_circuit"] for v in summary.values())
    finite = finite and all(math.isfinite(v["trial/fwd:wall"]) for v in summary.values())
    base = str(settings.acdc_stacks[0])
    acdc_text = "; ".join(
        f"K={k}: {v['trial/fwd:wall']:.2f} fwd/trial"
        + ("" if k == base else f" ({v['speed_vs_first:wall']:.2f}× K={base})")
        for k, v in summary.items()
    )
    record.update(
        status="PASS" if finite and same else "FAIL",
        summary=f"EAP {record['eap_s']:.3f} s = {record['eap_vs_hf']:.2f}× plain HF passes, "
        f"EAP-IG(m={steps}) {record['eap_ig_s']:.3f} s = {record['eap_ig_vs_hf']:.2f}×; "
        f"ACDC first {settings.acdc_trials} trials: {acdc_text}; same circuit for every K: {same} "
        f"(wall clock, median of {settings.repeats})",
    )
    del hf
    return record


def step_notebook(run: Run, keep: Path | None) -> dict[str, Any]:
    import pandas as pd

    from kc_utils.notebook import compare_with_reference

    settings = run.settings
    stem = Path(NOTEBOOK).stem
    model_name = dict(settings.notebook_params)["model_name"]
    with tempfile.TemporaryDirectory(prefix="kc-device-check-") as tmp:
        out_dir = Path(tmp) / "out"
        command = [sys.executable, "-m", "kc_utils.execute", NOTEBOOK, str(Path(tmp) / f"{stem}.ipynb"), "--cwd", "."]
        for name, value in (*settings.notebook_params, ("out_dir", str(out_dir))):
            command += ["-p", name, value]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=settings.notebook_timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return {
                "status": "FAIL",
                "summary": f"notebook 01 did not finish within {settings.notebook_timeout_s} s",
                "command": command,
            }
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "command": command,
            "seconds_notebook": round(seconds, 1),
            "returncode": done.returncode,
        }
        table = out_dir / f"01_table1_{model_name}.csv"
        if done.returncode != 0 or not table.exists():
            record["log_tail"] = (done.stdout + done.stderr)[-4000:]
            record.update(status="FAIL", summary=f"notebook 01 failed after {seconds:.0f} s (exit {done.returncode})")
            return record
        fresh = pd.read_csv(table)
        record["relations"] = int((fresh["relation"] != "average").sum())
        problems: dict[str, list[str]] = {}
        default_run = settings.mode == "gpu"  # the dry run's settings are not the default: no reference applies
        for csv in sorted(out_dir.glob("*.csv")):
            reference = ROOT / "figures" / csv.name
            if default_run and reference.exists():
                problems[csv.name] = compare_with_reference(pd.read_csv(csv), pd.read_csv(reference), csv.name)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(csv, keep / f"device_check_{csv.name}")
    record["reference_differences"] = problems
    against = (
        ", ".join(f"{name}: {len(p)} value(s) outside the tolerance" for name, p in problems.items())
        if problems
        else "no reference compared (not the default run)"
    )
    record.update(
        status="PASS",
        summary=f"ran in {seconds:.0f} s, {record['relations']} relation(s) in Table 1; against the CPU references: "
        + against,
    )
    return record


# ----------------------------------------------------------------------------- driver
def run_steps(settings: Settings, steps: list[str], out: Path, keep: Path | None) -> int:
    run = Run(settings)
    result: dict[str, Any] = {
        "mode": settings.mode,
        "started": now(),
        "host": platform.node(),
        "settings": asdict(settings),
        "tolerances": TOLERANCES,
        "steps": {},
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    functions: dict[str, Callable[[], dict[str, Any]]] = {
        "preflight": lambda: step_preflight(run),
        "exact": lambda: step_exact(run),
        "split": lambda: step_split(run),
        "speed": lambda: step_speed(run),
        "notebook": lambda: step_notebook(run, keep),
    }
    blocked = None
    total = time.perf_counter()
    for name in steps:
        print(f"[{now()}] {name} ...", flush=True)
        started = time.perf_counter()
        if blocked is not None and name != "preflight":
            record = {"status": "SKIP", "summary": blocked}
        else:
            try:
                record = functions[name]()
            except Exception as error:  # noqa: BLE001 (a failed step is reported and the next one runs)
                record = {
                    "status": "FAIL",
                    "summary": f"{type(error).__name__}: {str(error)[:500]}",
                    "traceback": traceback.format_exc()[-4000:],
                }
        record["seconds"] = round(time.perf_counter() - started, 2)
        if name == "preflight" and record["status"] != "PASS":
            blocked = "skipped: no CUDA" if "no CUDA" in record["summary"] else "skipped: the preflight failed"
        result["steps"][name] = record
        print(f"  {record['status']} {name} ({record['seconds']:.1f} s): {record['summary']}", flush=True)
        save()
    result["seconds"] = round(time.perf_counter() - total, 1)
    result["finished"] = now()
    statuses = [r["status"] for r in result["steps"].values()]
    result["all_passed"] = all(s == "PASS" for s in statuses)
    save()
    no_cuda = settings.mode == "gpu" and blocked == "skipped: no CUDA"
    print(
        f"[{now()}] {sum(s == 'PASS' for s in statuses)} of {len(statuses)} steps passed in {result['seconds']:.0f} s; "
        f"results: {out}",
        flush=True,
    )
    return 2 if no_cuda else 0 if result["all_passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny settings")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "device_check.json", help="the JSON of results")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument("--notebook-timeout", type=int, default=None, help="seconds notebook 01 may take")
    parser.add_argument("--keep", type=Path, default=None, help="copy notebook 01's tables into this folder")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    settings = DRY_RUN if args.dry_run else GPU
    if args.notebook_timeout is not None:
        settings = replace(settings, notebook_timeout_s=args.notebook_timeout)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" at every load
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    return run_steps(settings, ["preflight", *[s for s in steps if s != "preflight"]], args.out, args.keep)


if __name__ == "__main__":
    sys.exit(main())
