"""bfloat16 against float32 on a CPU, in the same run: what it costs, and how far it moves EAP-IG's circuits.

``load_model(name, dtype="bfloat16")`` halves the weights' memory. Whether it is also faster on a CPU depends on
the CPU: bfloat16 matrix products are native with AVX512_BF16 or AMX and emulated (converted to float32) without
them, so the report names the CPU and those flags. bfloat16 is for exploration runs only; reference numbers (the
tables, the findings) are float32.

On SmolLM2-135M (``load_model("smollm2-135m", device="cpu", dtype=...)``, offline from its wheel; ``--model`` takes
any name ``load_model`` boots), both dtypes loaded side by side, one torch thread, notebook 01's batch
(country_capital_city's Dval of 24 prompts, built as ``benchmarks/attribution.py`` builds it):

1. **Speed**: per repeat, in both dtypes (the order alternating between repeats), a bridge forward and a bridge
   forward/backward (gradient w.r.t. the input embedding only; each the median of 2) and one EAP-IG attribution
   (``kc_utils.circuits.attribute``, 5 steps); the bfloat16 / float32 ratio is taken within each repeat, and the
   median over repeats reported (process CPU time first, wall clock second).
2. **Scores**: Spearman (and Pearson) correlation of the two runs' EAP-IG edge scores over the graph's real edges.
3. **Circuits**: Jaccard overlap of the edge sets of the two runs' top-n circuits (pruned, as
   ``find_relation_circuit`` prunes them) at fixed budgets (400 = what notebook 01's ``n_edges="auto"`` keeps on a
   graph this large) and at each run's own knee (0.9 of the logit difference on Dval, found on each run's own size
   curve, as ``find_relation_circuit(n_edges="knee")`` does).
4. **Evaluation**: faithfulness (normalised logit difference) and Hit@10 of both runs' circuits on Dval and Dtest,
   with patch ablation, through ``kc_utils.circuits.evaluate`` (``evaluate_masks`` + ``normalised_faithfulness``,
   as ``find_relation_circuit`` evaluates them): judged by the float32 model (the same judge for both circuits), and
   the bfloat16 circuit judged by the bfloat16 model (what an all-bfloat16 exploration run prints).
5. **Load-time checks**: the worst relative remainders of the residual decomposition and of the edge-point round
   trip in both dtypes, against their tolerance (1e-4 in float32, 5e-2 in bfloat16), for the model and the organism.

Writes ``benchmarks/bfloat16.md`` and ``benchmarks/bfloat16.json``. Not part of ``make bench``:
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bfloat16.py [--repeats 3] [--model smollm2-135m]`` (about 8 minutes
on one thread of an Intel Xeon without AVX512_BF16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attribution import N_VAL, cpu_model, load_avg, median, peak_rss_gb, pearson, relation_batch, spearman, timed  # noqa: E402

RELATION = "country_capital_city"  # the batch: this Table-1 relation's Dval and Dtest, as notebook 01 builds them
IG_STEPS = 5  # notebook 01's default
DTYPES = ("float32", "bfloat16")
SIZES = (100, 400, 1000)  # fixed budgets (before pruning); 400 is notebook 01's "auto" on a graph this large
KNEE_LEVEL = 0.9  # notebook 01's knee_level
METRICS = ("hit@10", "logit_diff")
#: CPU flags that decide bfloat16 speed: native bf16 dot products (AVX512_BF16), AMX tiles, and the float32 baseline.
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx512_vnni", "avx2")


# ----------------------------------------------------------------------------- machine
def cpu_name() -> str:
    """``lscpu``'s "Model name" (``/proc/cpuinfo``'s model name when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return cpu_model()


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`FLAGS` the first CPU of ``/proc/cpuinfo`` lists."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in FLAGS}


def matmul_ms(model: Any, repeats: int = 100) -> dict[str, float]:
    """Milliseconds of one matrix product of the model's MLP-in shape (192 tokens × d_model by d_model × d_mlp), as
    ``torch.nn.functional.linear`` on one thread, in each dtype (this thread's CPU time, median of 5 blocks)."""
    import torch

    from kc_utils.models.loading import DTYPE_NAMES

    d_model, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(192, d_model, generator=generator)
    w = torch.randn(d_mlp, d_model, generator=generator)
    found: dict[str, Any] = {"shape": f"192 × {d_model} by {d_model} × {d_mlp}"}
    for name in DTYPES:
        a, b = x.to(DTYPE_NAMES[name]), w.to(DTYPE_NAMES[name])
        torch.nn.functional.linear(a, b)
        blocks = []
        for _ in range(5):
            start = time.thread_time()
            for _ in range(repeats // 5):
                torch.nn.functional.linear(a, b)
            blocks.append((time.thread_time() - start) / (repeats // 5) * 1e3)
        found[name] = median(blocks)
    found["ratio"] = found["bfloat16"] / found["float32"]
    return found


# ----------------------------------------------------------------------------- measure
def splits(model: Any, name: str) -> tuple[Any, Any]:
    """Dval and Dtest of the relation (seed 0); Dval is the batch ``relation_batch`` gives every benchmark."""
    import torch

    from kc_utils.data.facts import build_circuit_dataset, facts_to_batch
    from kc_utils.data.relations import load_relation
    from kc_utils.notebook import candidate_samples

    relation = load_relation(RELATION)
    dataset = build_circuit_dataset(model, relation, N_VAL, N_VAL, samples=candidate_samples(name, relation), seed=0)
    val, test = facts_to_batch(model, dataset.val), facts_to_batch(model, dataset.test)
    assert torch.equal(val.clean, relation_batch(model, name, RELATION).clean), "Dval is not notebook 01's batch"
    return val, test


def check_margins(model: Any) -> dict[str, float]:
    """The load-time checks' worst relative remainders, and their tolerance in the model's dtype."""
    from kc_utils.models import model_dtype
    from kc_utils.models.decomposition import decomposition_tolerance, edge_point_round_trip, residual_decomposition

    worst = max(residual_decomposition(model), key=lambda c: c.relative)
    found = {
        "residual decomposition": worst.relative,
        "where": f"block {worst.block}, {worst.where}: {worst.mismatch:.3g} on a scale of {worst.scale:.3g}",
    }
    found.update(edge_point_round_trip(model))
    found["tolerance"] = decomposition_tolerance(model_dtype(model))
    return found


def jaccard(a: Any, b: Any) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def measure(name: str, repeats: int) -> dict[str, Any]:
    import torch

    from kc_utils import Graph, attribute
    from kc_utils import models as kc_models
    from kc_utils.circuits.attribute import frozen_parameters
    from kc_utils.circuits.budget import KNEE_MAX_EDGES, knee, size_curve, size_grid
    from kc_utils.circuits.evaluate import evaluate_masks, full_and_empty, normalised_faithfulness
    from kc_utils.circuits.relation import _KNEE_SEARCH_CAP, _LARGE_GRAPH_CURVE_POINTS  # find_relation_circuit's grid
    from kc_utils.data.metrics import logit_diff

    result: dict[str, Any] = {"model": name, "cpu": cpu_name(), "flags": cpu_flags(), "load_start": load_avg()}
    result["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    result["threads"] = torch.get_num_threads()
    result["checks"] = {}
    for dtype in DTYPES:  # the organism's margins (it loads in a second); load_model has already run the checks
        organism = kc_models.load_model(kc_models.ORGANISM_NAME, device="cpu", dtype=dtype)
        result["checks"][f"{kc_models.ORGANISM_NAME} {dtype}"] = check_margins(organism)
    models = {dtype: kc_models.load_model(name, device="cpu", dtype=dtype) for dtype in DTYPES}
    for dtype, model in models.items():
        result["checks"][f"{name} {dtype}"] = check_margins(model)
    result["matmul_ms"] = matmul_ms(models["float32"])
    result["weights_mb"] = {
        dtype: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20 for dtype, m in models.items()
    }
    val, test = splits(models["float32"], name)  # the same token ids for both dtypes
    graphs = {dtype: Graph.from_model(m) for dtype, m in models.items()}
    result["n_edges"], result["batch"], result["n_test"] = graphs["float32"].n_edges, list(val.clean.shape), len(test)
    n = len(val)

    def forward(model: Any) -> None:
        with torch.no_grad():
            model(val.clean)

    def forward_backward(model: Any) -> None:
        """One bridge pass with the gradient w.r.t. the input embedding only (what each EAP-IG step runs)."""
        with frozen_parameters(model), torch.enable_grad():

            def as_leaf(act, hook):
                return act.detach().requires_grad_(True)

            logits = kc_models.run_with_hooks(model, val.clean, [(kc_models.INPUT_HOOK, as_leaf)])
            (logit_diff(logits, val).sum() / n).backward()

    scored: dict[str, Any] = {}

    def eap_ig(dtype: str) -> None:
        graph = attribute(models[dtype], graphs[dtype], val, method="eap-ig", ig_steps=IG_STEPS, progress=False)
        if dtype in scored:  # deterministic: every repeat gives the same scores
            assert torch.equal(scored[dtype].scores, graph.scores), f"EAP-IG in {dtype} is not deterministic"
        scored[dtype] = graph

    for dtype, model in models.items():  # warm-up: every path once
        forward(model), forward_backward(model), eap_ig(dtype)
    rows = []
    for repeat in range(repeats):
        row: dict[str, Any] = {}
        for dtype in DTYPES if repeat % 2 == 0 else DTYPES[::-1]:
            model = models[dtype]
            row[dtype] = {
                "fwd": [timed(lambda model=model: forward(model)) for _ in range(2)],
                "fwd_bwd": [timed(lambda model=model: forward_backward(model)) for _ in range(2)],
                "eap_ig": [timed(lambda dtype=dtype: eap_ig(dtype))],
            }
        for what in ("fwd", "fwd_bwd", "eap_ig"):
            for clock in ("cpu", "wall"):
                seconds = {d: median([t[clock] for t in row[d][what]]) for d in DTYPES}
                row[f"{what}_{clock}"] = seconds
                row[f"{what}_ratio_{clock}"] = seconds["bfloat16"] / seconds["float32"]
        rows.append(row)
    result["rows"] = rows
    result["speed"] = {
        what: {
            "ratio": {c: median([r[f"{what}_ratio_{c}"] for r in rows]) for c in ("cpu", "wall")},
            "seconds": {d: {c: median([r[f"{what}_{c}"][d] for r in rows]) for c in ("cpu", "wall")} for d in DTYPES},
        }
        for what in ("fwd", "fwd_bwd", "eap_ig")
    }
    result["peak_rss_gb"] = peak_rss_gb()

    # scores and circuits
    real = graphs["float32"].real_edges
    s32, s16 = scored["float32"].scores[real], scored["bfloat16"].scores[real]
    result["scores"] = {
        "spearman": spearman(s32, s16),
        "spearman_abs": spearman(s32.abs(), s16.abs()),
        "pearson": pearson(s32, s16),
        "relative_l2": float((s16 - s32).double().norm() / s32.double().norm()),
        "max_abs_diff_over_max": float((s16 - s32).abs().max() / s32.abs().max()),
        "sign_flips_top_1000": int(
            (torch.sign(s32) != torch.sign(s16))[s32.abs().argsort(descending=True)[:1000]].sum()
        ),
    }
    circuits: dict[str, dict[str, Any]] = {d: {} for d in DTYPES}
    for size in (s for s in SIZES if s <= result["n_edges"]):
        for dtype in DTYPES:
            circuits[dtype][str(size)] = scored[dtype].copy().top_n(size, from_input=True)
    total = result["n_edges"]
    grid = (
        size_grid(total) if total <= KNEE_MAX_EDGES else size_grid(total, _KNEE_SEARCH_CAP, _LARGE_GRAPH_CURVE_POINTS)
    )
    result["knee"] = {}
    for dtype in DTYPES:  # each run's own size curve, evaluated by its own model (as an exploration run finds it)
        curve = size_curve(models[dtype], scored[dtype], val, grid, "patch", from_input=True)
        row = knee(curve, KNEE_LEVEL)
        asked = int(curve.sort_values("n_edges").iloc[-1]["asked"] if row is None else row["asked"])
        circuits[dtype]["knee"] = scored[dtype].copy().top_n(asked, from_input=True)
        result["knee"][dtype] = {"asked": asked, "reached": row is not None, "curve": curve.to_dict("records")}
    result["circuits"] = {
        budget: {
            "edges": {d: circuits[d][budget].n_edges_in_graph for d in DTYPES},
            "jaccard": jaccard(circuits["float32"][budget].in_graph, circuits["bfloat16"][budget].in_graph),
        }
        for budget in circuits["float32"]
    }

    # evaluation, the way find_relation_circuit evaluates: [full, circuit, empty] masks, faithfulness of logit_diff
    budgets = [b for b in ("400", "knee") if b in circuits["float32"]]
    judged: dict[str, Any] = {}
    for judge, kinds in (("float32", DTYPES), ("bfloat16", ("bfloat16",))):
        full, empty = full_and_empty(graphs[judge])
        keys = [(kind, b) for b in budgets for kind in kinds]
        masks = [full, empty] + [circuits[kind][b].in_graph for kind, b in keys]
        for split, batch in (("val", val), ("test", test)):
            values = evaluate_masks(models[judge], graphs[judge], batch, masks, METRICS, "patch")
            whole, none = values[0], values[1]
            judged[f"{judge} model, {split}"] = {
                "full": whole,
                "empty": none,
                **{
                    f"{kind} circuit, {b}": {
                        **value,
                        "faithfulness": normalised_faithfulness(
                            value["logit_diff"], whole["logit_diff"], none["logit_diff"]
                        ),
                    }
                    for (kind, b), value in zip(keys, values[2:])
                },
            }
    result["evaluation"] = judged
    result["load_end"] = load_avg()
    return result


# ----------------------------------------------------------------------------- report
def verdict(result: dict[str, Any]) -> str:
    speed, scores, circuits, knees = result["speed"], result["scores"], result["circuits"], result["knee"]
    ratio = speed["eap_ig"]["ratio"]["cpu"]
    native = result["flags"].get("avx512_bf16") or result["flags"].get("amx_bf16")
    pays = ratio < 0.9
    matmul = result.get("matmul_ms")
    faith = []
    for budget in ("400", "knee"):
        for split in ("val", "test"):
            judge = result["evaluation"][f"float32 model, {split}"]
            if f"float32 circuit, {budget}" in judge:
                a, b = judge[f"float32 circuit, {budget}"], judge[f"bfloat16 circuit, {budget}"]
                faith.append(
                    f"{'400 edges' if budget == '400' else 'knee'} D{split} {a['faithfulness']:.3f} → "
                    f"{b['faithfulness']:.3f} (Hit@10 {a['hit@10']:.3f} → {b['hit@10']:.3f})"
                )
    return (
        f"**Verdict: bfloat16 {'pays' if pays else 'does not pay'} on this CPU** ({result['cpu']}, "
        f"{'with' if native else 'without'} AVX512_BF16/AMX): one EAP-IG attribution takes **{ratio:.2f}×** the CPU "
        f"time of float32 (a bridge forward {speed['fwd']['ratio']['cpu']:.2f}×, a forward/backward "
        f"{speed['fwd_bwd']['ratio']['cpu']:.2f}×)"
        + (
            f"; a single matrix product of the model's MLP shape costs {matmul['ratio']:.1f}× in bfloat16"
            + (
                ""
                if native
                else " (without bfloat16 dot-product instructions the kernel converts its operands to float32; our reading, "
                "not profiled)"
            )
            if matmul
            else ""
        )
        + f". What it saves is memory: the weights take {result['weights_mb']['bfloat16']:.0f} MB instead of "
        f"{result['weights_mb']['float32']:.0f} MB.\n\n"
        f"**How far the results move:** the EAP-IG scores barely move (Spearman {scores['spearman']:.3f} over all "
        f"edges; Pearson, which the large scores dominate, {scores['pearson']:.4f}; relative L2 difference "
        f"{scores['relative_l2']:.4f}; {scores['sign_flips_top_1000']} sign flips among the top 1000); the circuits "
        "share most of "
        "their edges (Jaccard "
        + ", ".join(
            f"{c['jaccard']:.2f} at {'each run' + chr(39) + 's own 0.9 knee' if b == 'knee' else b + ' edges'}"
            for b, c in circuits.items()
        )
        + (
            f"; the knee asks {knees['float32']['asked']} edges in float32 and {knees['bfloat16']['asked']} in bfloat16"
            if "knee" in circuits
            else ""
        )
        + "); judged by the float32 model, the circuits' faithfulness moves by at most "
        + f"{max_faith_shift(result):.3f}: "
        + "; ".join(faith)
        + ". With 24 prompts a Hit@10 step of 0.042 is one prompt.\n\n"
        "**bfloat16 is for exploration only** (a first look, a model that does not fit in float32's memory); every "
        "reference number (tables, findings, golden values) is float32, and a circuit found in bfloat16 that you keep "
        "should be found again in float32."
    )


def max_faith_shift(result: dict[str, Any]) -> float:
    """The largest change of faithfulness between the float32 and the bfloat16 run's circuit, judged in float32."""
    shifts = []
    for key, values in result["evaluation"].items():
        if key.startswith("float32 model"):
            for budget in ("400", "knee"):
                if f"float32 circuit, {budget}" in values:
                    a, b = values[f"float32 circuit, {budget}"], values[f"bfloat16 circuit, {budget}"]
                    shifts.append(abs(b["faithfulness"] - a["faithfulness"]))
    return max(shifts, default=float("nan"))


def report(result: dict[str, Any]) -> str:
    import torch
    import transformers

    speed, scores = result["speed"], result["scores"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in result["flags"].items())
    lines = [
        "# bfloat16 against float32 on a CPU (`benchmarks/bfloat16.py`)",
        "",
        verdict(result),
        "",
        f"Model: {result['model']} (`load_model({result['model']!r}, device='cpu', dtype=...)`), "
        f"{result['n_edges']:,} edges; Dval {result['batch'][0]} × {result['batch'][1]} tokens "
        f"({RELATION}, as notebook 01 builds it), Dtest {result['n_test']} prompts; EAP-IG with {IG_STEPS} steps. "
        f"**CPU: {result['cpu']}** (lscpu); flags: {flags}; torch's CPU capability {result['torch_cpu_capability']}. "
        f"{result['threads']} torch thread; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}; {len(result['rows'])} repeats; 1-minute load average "
        f"{result['load_start']} → {result['load_end']} (2 cores, shared); peak RSS {result['peak_rss_gb']:.2f} GB "
        f"with both models loaded; {time.strftime('%Y-%m-%d')}.",
        "",
        "## Speed (bfloat16 / float32, median of per-repeat ratios)",
        "",
        "| pass | float32 s (CPU) | bfloat16 s (CPU) | **ratio, CPU time** | ratio, wall clock |",
        "|---|---|---|---|---|",
    ]
    labels = {"fwd": "bridge forward", "fwd_bwd": "bridge forward/backward", "eap_ig": f"EAP-IG ({IG_STEPS} steps)"}
    for what, label in labels.items():
        s = speed[what]
        lines.append(
            f"| {label} | {s['seconds']['float32']['cpu']:.2f} | {s['seconds']['bfloat16']['cpu']:.2f} | "
            f"**{s['ratio']['cpu']:.2f}** | {s['ratio']['wall']:.2f} |"
        )
    lines += [
        "",
        "Per repeat (CPU time): "
        + "; ".join(
            ", ".join(f"{labels[w].split(' (')[0]} {r[f'{w}_ratio_cpu']:.2f}" for w in labels) for r in result["rows"]
        )
        + ". Wall clock over CPU time (waiting for a core on the shared machine): "
        + ", ".join(
            f"{d} {speed['eap_ig']['seconds'][d]['wall'] / speed['eap_ig']['seconds'][d]['cpu']:.2f}" for d in DTYPES
        )
        + " for EAP-IG, so the wall-clock ratios mix in the load and the CPU-time ratios are the ones to read."
        + (
            f" One matrix product {result['matmul_ms']['shape']} (`torch.nn.functional.linear`, this thread's CPU "
            f"time): float32 {result['matmul_ms']['float32']:.2f} ms, bfloat16 {result['matmul_ms']['bfloat16']:.2f} "
            f"ms, **{result['matmul_ms']['ratio']:.2f}×**"
            + (f" ({result['matmul_ms']['note']})" if result["matmul_ms"].get("note") else "")
            + "."
            if result.get("matmul_ms")
            else ""
        )
        + " Weights: "
        + ", ".join(f"{d} {mb:.0f} MB" for d, mb in result["weights_mb"].items())
        + ".",
        "",
        "## EAP-IG scores and circuits (bfloat16 run against float32 run)",
        "",
        f"Over the {result['n_edges']:,} real edges: Spearman **{scores['spearman']:.4f}** (signed scores), "
        f"{scores['spearman_abs']:.4f} (|score|, what `top_n` ranks by); Pearson {scores['pearson']:.4f}; relative L2 "
        f"difference {scores['relative_l2']:.4f}; largest difference {scores['max_abs_diff_over_max']:.4f} of the "
        f"largest |score|; {scores['sign_flips_top_1000']} sign flips among the float32 top 1000. Scores are "
        "accumulated in float32 in both runs; what differs is the activations and gradients they come from.",
        "",
        "| circuit (top-n by \\|score\\|, pruned) | edges, float32 run | edges, bfloat16 run | **Jaccard** |",
        "|---|---|---|---|",
    ]
    for budget, c in result["circuits"].items():
        label = (
            f"own knee {KNEE_LEVEL} (asked: {result['knee']['float32']['asked']} float32, "
            f"{result['knee']['bfloat16']['asked']} bfloat16)"
            if budget == "knee"
            else f"{budget} edges" + (" (notebook 01's `auto`)" if budget == "400" else "")
        )
        lines.append(f"| {label} | {c['edges']['float32']} | {c['edges']['bfloat16']} | **{c['jaccard']:.3f}** |")
    lines += [
        "",
        "## Faithfulness and Hit@10 of the circuits (patch ablation, `evaluate_masks` + `normalised_faithfulness`)",
        "",
        "| judged by, split | full model Hit@10 | circuit | faithfulness | Hit@10 |",
        "|---|---|---|---|---|",
    ]
    for judge, values in result["evaluation"].items():
        for key, value in values.items():
            if key in ("full", "empty"):
                continue
            lines.append(
                f"| {judge} | {values['full']['hit@10']:.3f} | {key} | {value['faithfulness']:.3f} | "
                f"{value['hit@10']:.3f} |"
            )
    lines += [
        "",
        "## Load-time checks in both dtypes (worst relative remainder; `load_model` refuses above the tolerance)",
        "",
        "| model, dtype | residual decomposition (where) | edge points hooked | last position | tolerance |",
        "|---|---|---|---|---|",
    ]
    for key, c in result["checks"].items():
        lines.append(
            f"| {key} | {c['residual decomposition']:.2g} ({c['where']}) | {c['routed hooks']:.2g} | "
            f"{c['last position']:.2g} | {c['tolerance']:.0e} |"
        )
    lines += [
        "",
        "The bfloat16 remainders are rounding: the block's parts are stored, summed and subtracted in bfloat16, whose "
        "unit roundoff is 2⁻⁸ ≈ 3.9e-3 relative to each value, and a block output is a sum of a dozen rounded terms, "
        "so a remainder of a few units of roundoff against the stream's largest value is what an exact decomposition "
        "looks like in bfloat16. Both models pass the 16-bit tolerance (5e-2) with a margin of "
        + ", ".join(
            f"{c['tolerance'] / max(c['residual decomposition'], 1e-30):.1f}× ({k.split()[0]})"
            for k, c in result["checks"].items()
            if k.endswith("bfloat16")
        )
        + "; the edge-point round trip and the last-position logits are exact (0) in bfloat16. No tolerance was "
        "changed.",
        "",
        "## Method",
        "",
        "Both models are loaded side by side; each repeat times, in both dtypes (float32 first in even repeats, "
        "bfloat16 first in odd ones), two forwards, two forward/backward passes and one EAP-IG on the same batch, "
        "and each ratio is taken within the repeat. CPU time is the process's (`time.process_time`), the primary "
        "clock on a shared machine; wall clock second. The circuits come from the EAP-IG scores of the timed runs "
        "(identical in every repeat: checked). The knee circuits come from each run's own size curve "
        "(`size_curve` on Dval over `find_relation_circuit`'s grid of sizes, evaluated by that run's own model). "
        "The dataset (known facts, Dval/Dtest split, corrupt twins) is built once, by the float32 model, so both "
        "runs see the same token ids.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m", help="a name load_model boots (default: smollm2-135m)")
    parser.add_argument("--out", type=Path, default=HERE / "bfloat16", help="report path, without .md/.json")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json, measure nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if args.report_only:
        result = json.loads(json_path.read_text())
    else:
        import torch

        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        result = measure(args.model, args.repeats)
        result["seconds"] = time.perf_counter() - start
        json_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    md_path.write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
