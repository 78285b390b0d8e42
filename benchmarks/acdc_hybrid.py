"""ACDC on EAP-IG candidates (the hybrid) against plain ACDC: how close, how much faster.

Plain ACDC tries every edge, one masked forward pass each; the hybrid
(:func:`kc_utils.circuits.acdc.acdc` with ``candidates=``) tries only the top ``K`` edges of EAP-IG and
removes the rest up front, so it is **not** the sequential algorithm's circuit. This script measures, in
one run:

- on the organism (479 edges, where plain ACDC takes seconds), for each relation and each ``K``: the
  hybrid's circuit against plain ACDC's (edge and node Jaccard, the share of plain ACDC's edges it
  keeps), both circuits' faithfulness on Dval and Dtest, trials and seconds;
- on SmolLM2-135M (70,651 edges, where plain ACDC would take hours), for one relation and each ``K``
  given: seconds, trials, masked passes, circuit size and faithfulness. Plain ACDC is not run there;
  its cost is estimated from the hybrid's seconds per trial times the graph's edges (an upper bound's
  order of magnitude: dead receivers are removed without a trial).

Datasets are notebook 01's (its defaults: 24 Dval and 24 Dtest facts known in the top 10, seed 0).
Settings are ``find_relation_circuit``'s defaults (τ = 0.01, KL, patch ablation). Results go to
``benchmarks/acdc_hybrid.json`` and a Markdown table ``benchmarks/acdc_hybrid.md``.

    .venv/bin/python benchmarks/acdc_hybrid.py                       # organism + SmolLM2 (about 25 min, 2 cores)
    .venv/bin/python benchmarks/acdc_hybrid.py --skip-smollm2        # organism only (about 3 min)
    .venv/bin/python benchmarks/acdc_hybrid.py --skip-organism       # SmolLM2 only; keeps the stored organism rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kc_utils.circuits.table1 import RelationCircuit, find_relation_circuit
from kc_utils.data.facts import build_datasets
from kc_utils.data.relations import load_relations
from kc_utils.models import load_model
from kc_utils.notebook import candidate_samples

HERE = Path(__file__).parent
ORGANISM_RELATIONS = ("country_capital_city", "country_language", "adj_antonym", "person_native_language")
ORGANISM_CANDIDATES = (25, 50, 100, 200)
SMOLLM2_RELATION = "country_capital_city"
SMOLLM2_CANDIDATES = (1000,)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _jaccard(a: set[Any], b: set[Any]) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def _edges(result: RelationCircuit) -> set[tuple[int, int]]:
    return {tuple(e) for e in result.graph.in_graph.nonzero().tolist()}


def _row(result: RelationCircuit, seconds: float) -> dict[str, Any]:
    return {
        "relation": result.relation,
        "budget": result.budget,
        "edges": result.n_edges,
        "nodes": len(result.graph.nodes_in_graph()),
        "trials": result.extra["acdc_trials"],
        "passes": result.extra["acdc_passes"],
        "seconds": round(seconds, 2),
        "Dval faithfulness": result.faithfulness.get("val", float("nan")),
        "Dtest faithfulness": result.faithfulness.get("test", float("nan")),
    }


def _datasets(model: Any, model_name: str, relations: list[str]) -> dict[str, Any]:
    data = load_relations(relations)
    samples = {key: candidate_samples(model_name, rel) for key, rel in data.items()}
    built = build_datasets(model, data, 24, 24, samples=samples, top_k=10, seed=0, progress=False)
    for key, reason in built.skipped.items():
        print(f"{model_name}: left out {key}: {reason}")
    return {key: (built.datasets[key], data[key].relation_type) for key in built.datasets}


def organism(relations: list[str], counts: list[int]) -> list[dict[str, Any]]:
    """Plain ACDC and the hybrid at each candidate count, per relation, on the organism."""
    model = load_model("kc-organism", device="cpu")
    rows = []
    for dataset, kind in _datasets(model, "kc-organism", relations).values():
        plain, seconds = _timed(lambda: find_relation_circuit(model, dataset, kind, method="acdc", n_random=0))
        rows.append(
            {
                **_row(plain, seconds),
                "candidates": "all",
                "edge jaccard": 1.0,
                "node jaccard": 1.0,
                "plain edges kept": 1.0,
            }
        )
        plain_edges, plain_nodes = _edges(plain), set(plain.graph.nodes_in_graph())
        for count in counts:
            hybrid, seconds = _timed(
                lambda: find_relation_circuit(model, dataset, kind, method="acdc", n_random=0, acdc_candidates=count)
            )
            edges, nodes = _edges(hybrid), set(hybrid.graph.nodes_in_graph())
            rows.append(
                {
                    **_row(hybrid, seconds),
                    "candidates": count,
                    "edge jaccard": _jaccard(edges, plain_edges),
                    "node jaccard": _jaccard(nodes, plain_nodes),
                    "plain edges kept": len(edges & plain_edges) / len(plain_edges) if plain_edges else float("nan"),
                }
            )
            print(rows[-1])
    return rows


def smollm2(relation: str, counts: list[int]) -> list[dict[str, Any]]:
    """The hybrid at each candidate count on SmolLM2-135M, one relation."""
    model = load_model("smollm2-135m", device="cpu")
    rows = []
    for dataset, kind in _datasets(model, "smollm2-135m", [relation]).values():
        for count in counts:
            hybrid, seconds = _timed(
                lambda: find_relation_circuit(model, dataset, kind, method="acdc", n_random=0, acdc_candidates=count)
            )
            total = int(hybrid.graph.real_edges.sum())
            trials = hybrid.extra["acdc_trials"]
            rows.append(
                {
                    **_row(hybrid, seconds),
                    "candidates": count,
                    "graph edges": total,
                    "trials per second": round(trials / seconds, 2),
                    "trials saved vs plain": round(1 - trials / total, 4),
                    "plain ACDC estimate (h)": round(seconds / max(1, hybrid.extra["acdc_trials"]) * total / 3600, 1),
                }
            )
            print(rows[-1])
    return rows


def _table(frame: Any, index: bool = False) -> str:
    """A pandas frame as a Markdown table (floats with two decimals), without the optional ``tabulate``."""
    frame = frame.reset_index() if index else frame
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [" | ".join(map(str, frame.columns)), " | ".join("---" for _ in frame.columns)]
    rows += [" | ".join(cell(v) for v in values) for values in frame.itertuples(index=False)]
    return "\n".join(f"| {row} |" for row in rows)


def markdown(results: dict[str, Any]) -> str:
    """The tables of a run, with the machine and the settings."""
    import pandas as pd

    lines = [
        "# ACDC on EAP-IG candidates against plain ACDC",
        "",
        "τ = 0.01, KL, patch ablation, notebook 01's datasets (24 Dval / 24 Dtest known facts, seed 0). Written by "
        "`benchmarks/acdc_hybrid.py`.",
        "",
    ]
    for name in ("organism", "smollm2"):
        rows = results.get(name)
        if not rows:
            continue
        table = pd.DataFrame(rows)
        run = results.get("runs", {}).get(name, results)
        where = f"Measured {run['date']} on {run['machine']} ({run['threads']} torch threads"
        where += f", load average {run['load']} before and {run['load_after']} after)." if "load" in run else ")."
        lines += [f"## {name}", "", where, "", _table(table), ""]
        if name == "organism":
            hybrid = table[table["candidates"] != "all"]
            summary = hybrid.groupby("candidates")[
                ["edge jaccard", "node jaccard", "plain edges kept", "Dtest faithfulness", "seconds"]
            ].mean()
            lines += ["Mean over relations:", "", _table(summary, index=True), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relations", nargs="+", default=list(ORGANISM_RELATIONS))
    parser.add_argument("--candidates", nargs="+", type=int, default=list(ORGANISM_CANDIDATES))
    parser.add_argument("--smollm2-relation", default=SMOLLM2_RELATION)
    parser.add_argument("--smollm2-candidates", nargs="+", type=int, default=list(SMOLLM2_CANDIDATES))
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-organism", action="store_true", help="keep the organism rows of the stored results")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(HERE / "acdc_hybrid"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    stored = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results: dict[str, Any] = {"runs": dict(stored.get("runs", {}))}
    parts = {"organism": lambda: organism(args.relations, args.candidates)}
    parts["smollm2"] = lambda: smollm2(args.smollm2_relation, args.smollm2_candidates)
    for name, part in parts.items():
        if (name == "organism" and args.skip_organism) or (name == "smollm2" and args.skip_smollm2):
            if name in stored:
                results[name] = stored[name]
                results["runs"].setdefault(name, {k: stored[k] for k in ("date", "machine", "threads") if k in stored})
            continue
        load = round(os.getloadavg()[0], 2)
        results[name] = part()
        results["runs"][name] = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
            "threads": args.threads,
            "load": load,
            "load_after": round(os.getloadavg()[0], 2),
        }
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
