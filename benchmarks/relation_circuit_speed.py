"""Notebook 01's work per relation — a circuit found, sized and scored with its baselines — in this checkout against
another one, same run.

Each checkout runs in its own worker process (one torch thread): the Dval/Dtest split of ``--relation`` that notebook
01 builds on the model, then :func:`kc_utils.circuits.table1.find_relation_circuit` with the notebook's defaults
(EAP-IG, 5 steps, patch ablation, ``n_edges="auto"``, 5 random draws). The worker reports its CPU time and the
circuit's metrics; the driver prints the ratio ``this / other`` and the largest difference between the two
checkouts' metrics and edge scores.

Usage::

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/relation_circuit_speed.py --other /tmp/before [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker

HERE = Path(__file__).resolve().parent


def _flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"val/circuit/hit@10": 0.9, …}`` from the nested metrics."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            out[f"{prefix}{key}"] = float(value)
    return out


def _worker(args: argparse.Namespace) -> dict:
    """The relation's circuit in this process (the checkout on ``sys.path`` is the one measured)."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.circuits.table1 import find_relation_circuit
    from kc_utils.data.facts import build_datasets
    from kc_utils.data.relations import load_relations
    from kc_utils.notebook import candidate_samples

    model = models.load_model(args.model, device="cpu")
    relations = load_relations([args.relation])
    samples = {key: candidate_samples(args.model, relation) for key, relation in relations.items()}
    built = build_datasets(model, relations, 24, 24, samples=samples, top_k=10, seed=0)
    if args.relation not in built.datasets:
        raise SystemExit(f"{args.relation} cannot be used on {args.model}: {built.describe_skipped()}")
    started = time.process_time()
    found = find_relation_circuit(
        model, built.datasets[args.relation], relations[args.relation].relation_type, n_edges="auto",
        method="eap-ig", ig_steps=5, ablation="patch", n_random=5, seed=0,
    )  # fmt: skip
    seconds = time.process_time() - started
    scores = found.scored.scores.flatten().tolist()
    return {"cpu_s": seconds, "metrics": _flat(found.metrics), "scores": scores, "edges": found.graph.n_edges_in_graph}


def _run(checkout: Path, args: argparse.Namespace) -> dict:
    return run_worker(Path(__file__), checkout, ["--worker", "--model", args.model, "--relation", args.relation])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="country_language")
    parser.add_argument("--out", type=Path, default=HERE / "relation_circuit_speed.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    results = other_then_this(other_checkout(parser, args.other), lambda which, checkout: _run(checkout, args))
    this, other = results["this"], results["other"]
    shared = sorted(set(this["metrics"]) & set(other["metrics"]))
    report = {
        "model": args.model,
        "relation": args.relation,
        "other": str(args.other),
        **cpu_ratio(results),
        "edges": this["edges"],
        "metrics_compared": len(shared),
        "max_abs_metric_difference": max((abs(this["metrics"][k] - other["metrics"][k]) for k in shared), default=None),
        "max_abs_score_difference": max((abs(a - b) for a, b in zip(this["scores"], other["scores"])), default=None),
        "metrics": {k: this["metrics"][k] for k in shared},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "metrics"}, indent=1))


if __name__ == "__main__":
    main()
