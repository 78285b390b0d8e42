"""ACDC's speed: trials and forward passes per second against plain forwards of the same batch.

Used by ``benchmarks/attribution.py`` (one worker process per model). What one measurement does:

- runs :func:`kc_utils.circuits.acdc.acdc` end to end (corrupt collection, the KL reference
  forward, every trial and the final prune) with ``stack=K`` for each ``K`` asked, interleaved with
  plain forwards of the same batch through the same bridge and through a plain Hugging Face model;
- counts and times each call of :func:`~kc_utils.circuits.patching.run_masked_stack` (one masked
  forward pass over ``K`` copies of the batch) through a counting wrapper installed in the acdc
  module, so the report can separate the masked passes from the rest;
- on a large graph, caps the number of trials (:func:`capped`): only the first receiver in ACDC's
  order (the logits) is visited and only its first ``max_trials`` incoming edges (latest writer
  first) are tried — exactly ACDC's first ``max_trials`` trials, the same ones for every ``K``.
  The cap wraps two module-level helpers of :mod:`kc_utils.circuits.acdc` for the duration of the
  call and restores them; the library has no ``max_trials`` argument.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

#: ACDC's settings here: Table 1's defaults in ``kc_utils.circuits.table1.find_relation_circuit``.
THRESHOLD = 0.01
METRIC = "kl"
ABLATION = "patch"


@contextlib.contextmanager
def counting_passes() -> Iterator[list[dict[str, float]]]:
    """Record ``{"k", "wall", "cpu"}`` for every masked pass ACDC runs while the context is open."""
    import kc_utils.circuits.acdc as acdc_module

    original = acdc_module.run_masked_stack
    calls: list[dict[str, float]] = []

    def counted(model: Any, graph: Any, tokens: Any, ablated: Any, keeps: Any, *rest: Any, **options: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        logits = original(model, graph, tokens, ablated, keeps, *rest, **options)
        calls.append({"k": int(keeps.shape[0]), "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
        return logits

    acdc_module.run_masked_stack = counted
    try:
        yield calls
    finally:
        acdc_module.run_masked_stack = original


@contextlib.contextmanager
def capped(max_trials: int | None) -> Iterator[None]:
    """Limit ACDC to its first ``max_trials`` trials: the logits receiver's first incoming edges only."""
    import kc_utils.circuits.acdc as acdc_module

    if max_trials is None:
        yield
        return
    order, incoming = acdc_module.receiver_order, acdc_module._incoming
    acdc_module.receiver_order = lambda graph: order(graph)[:1]
    acdc_module._incoming = lambda keep, receiver: iter(list(incoming(keep, receiver))[:max_trials])
    try:
        yield
    finally:
        acdc_module.receiver_order, acdc_module._incoming = order, incoming


class AcdcBench:
    """ACDC with each stack size, interleaved with plain forwards of the same batch; one :meth:`repeat` at a time.

    A repeat runs a bridge forward and a Hugging Face forward, then ACDC with every ``K`` in
    ``stacks``, each followed by another pair of plain forwards, so the forwards sample the same
    machine state as the trials. The caller interleaves repeats with its other measurements.
    """

    def __init__(
        self,
        model: Any,
        hf: Any,
        batch: Any,
        stacks: list[int],
        max_trials: int | None,
        timed: Callable[[Callable[[], Any]], dict[str, float]],
        label: str,
    ):
        self.model, self.hf, self.batch, self.stacks = model, hf, batch, stacks
        self.max_trials, self.timed, self.label = max_trials, timed, label
        self.rows: list[dict[str, Any]] = []
        self.circuits: dict[int, list] = {}

    def forward(self) -> None:
        import torch

        with torch.no_grad():
            self.model(self.batch.clean)

    def hf_forward(self) -> None:
        import torch

        with torch.no_grad():  # right padding under a causal mask: no attention mask needed
            self.hf(input_ids=self.batch.clean)

    def run_acdc(self, stack: int, max_trials: int | None = -1) -> dict[str, Any]:
        from kc_utils import Graph
        from kc_utils.circuits.acdc import acdc

        out: dict[str, Any] = {}

        def go() -> None:
            with capped(self.max_trials if max_trials == -1 else max_trials), counting_passes() as calls:
                graph, run = acdc(
                    self.model,
                    Graph.from_model(self.model),
                    self.batch,
                    THRESHOLD,
                    METRIC,
                    ABLATION,
                    stack=stack,
                    progress=False,
                )
            out.update(run=run, calls=calls, edges=graph.in_graph.nonzero().tolist())

        out["time"] = self.timed(go)
        return out

    def warm_up(self) -> None:
        self.forward()
        self.hf_forward()
        self.run_acdc(2, max_trials=2)  # every code path (a stack of 2, a rejection or not) at little cost

    def repeat(self) -> dict[str, Any]:
        fwd, hf_fwd = [self.timed(self.forward)], [self.timed(self.hf_forward)]
        row: dict[str, Any] = {"stacks": {}}
        for stack in self.stacks:
            result = self.run_acdc(stack)
            fwd.append(self.timed(self.forward))
            hf_fwd.append(self.timed(self.hf_forward))
            run, calls = result["run"], result["calls"]
            row["stacks"][str(stack)] = {
                "time": result["time"],
                "trials": run.trials,
                "passes": run.passes,
                "removed_untried": run.removed_untried,
                "masked_calls": len(calls),  # run.passes + the full model's metric
                "masks_evaluated": sum(c["k"] for c in calls),
                "masked_time": {clock: sum(c[clock] for c in calls) for clock in ("wall", "cpu")},
                "metric_circuit": run.metric_circuit,
                "circuit_edges": len(result["edges"]),
            }
            self.circuits[stack] = result["edges"]
        row["fwd"] = {clock: sorted(t[clock] for t in fwd)[len(fwd) // 2] for clock in ("wall", "cpu")}
        row["hf_fwd"] = {clock: sorted(t[clock] for t in hf_fwd)[len(hf_fwd) // 2] for clock in ("wall", "cpu")}
        self.rows.append(row)
        print(
            f"  [{self.label} ACDC] repeat {len(self.rows)}: fwd {row['fwd']['wall']:.3f}/{row['fwd']['cpu']:.3f} s; "
            + "; ".join(
                f"stack {k}: {v['trials']} trials in {v['passes']} passes, "
                f"{v['time']['wall']:.2f}/{v['time']['cpu']:.2f} s"
                for k, v in row["stacks"].items()
            )
            + "  (wall/CPU)",
            flush=True,
        )
        return row

    def result(self) -> dict[str, Any]:
        reference = self.circuits[self.stacks[0]]
        raw = {
            "rows": self.rows,
            "stacks": self.stacks,
            "max_trials": self.max_trials,
            "batch": list(self.batch.clean.shape),
            "same_circuit": {str(k): self.circuits[k] == reference for k in self.stacks},
            "threshold": THRESHOLD,
            "metric": METRIC,
            "ablation": ABLATION,
        }
        raw["summary"] = summarise(raw)
        return raw


def summarise(acdc_result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stack size: medians over repeats of the rates and of the ratios (each ratio taken within a repeat)."""
    import statistics

    rows, out = acdc_result["rows"], {}
    base_key = str(acdc_result["stacks"][0])
    for key in acdc_result["rows"][0]["stacks"]:
        per: dict[str, list[float]] = {}
        for row in rows:
            s, fwd, hf = row["stacks"][key], row["fwd"], row["hf_fwd"]
            for clock in ("wall", "cpu"):
                t = s["time"][clock]
                values = {
                    "seconds": t,
                    "trials_per_s": s["trials"] / t,
                    "passes_per_s": s["masked_calls"] / t,
                    "fwd_per_s": 1 / fwd[clock],
                    "trial/fwd": t / s["trials"] / fwd[clock],
                    "trial/hf_fwd": t / s["trials"] / hf[clock],
                    # one masked pass over K copies against K plain forwards of the batch
                    "masked_pass/k_fwd": s["masked_time"][clock] / s["masks_evaluated"] / fwd[clock],
                    "speed_vs_first": (row["stacks"][base_key]["time"][clock] / t),
                }
                for name, value in values.items():
                    per.setdefault(f"{name}:{clock}", []).append(value)
        first = rows[0]["stacks"][key]
        out[key] = {name: float(statistics.median(v)) for name, v in per.items()} | {
            k: first[k]
            for k in ("trials", "passes", "masked_calls", "masks_evaluated", "removed_untried", "circuit_edges")
        }
        out[key]["same_circuit"] = acdc_result["same_circuit"][key]
    return out
