"""Unembedding only the positions a computation reads: peak memory and CPU time, this checkout against another.

On Gemma-3-270M the unembedding (640 × 262,144) is more arithmetic per position than the rest of the model, and a
pass's full logits ``[b, p, 262144]`` in float32 are 1 GiB per 1,000 positions. Since commit b71d5d5 the passes
that read one position per prompt (EAP-IG's backward, ROME/FT-M, the edit evaluator, the head analyses) unembed
only that one, and the caches end their pass where their last activation is recorded. This benchmark runs, in a
fresh process per checkout, what notebook 01 does per relation — EAP-IG (5 steps) on the Dval batch of
country_language, then the circuit's evaluation — and reports the process's peak resident memory above the loaded
model and its CPU time. The other checkout is the commit before the change (``git worktree add --detach DIR
2fe9aa2``).

Usage::

    python benchmarks/read_positions.py --other /path/to/old/checkout [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(model_name: str, relation_name: str) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from attribution import relation_batch

    from kc_utils import Graph, attribute, models
    from kc_utils.circuits.evaluate import evaluate_masks

    model = models.load_model(model_name, device="cpu")
    batch = relation_batch(model, model_name, relation_name)
    graph = Graph.from_model(model)
    loaded_gb, cpu0, wall0 = _peak_gb(), _cpu_s(), time.perf_counter()
    scored = attribute(model, graph, batch, method="eap-ig", ig_steps=5, progress=False)
    attributed_gb, cpu1 = _peak_gb(), _cpu_s()
    circuit = scored.top_n(400)
    result = evaluate_masks(model, graph, batch, [circuit.in_graph])[0]
    return {
        "prompts": len(batch),
        "positions": int(batch.clean.shape[1]),
        "loaded_gb": loaded_gb,
        "eap_ig_peak_above_load_gb": attributed_gb - loaded_gb,
        "peak_above_load_gb": _peak_gb() - loaded_gb,
        "eap_ig_cpu_s": cpu1 - cpu0,
        "eap_ig_and_evaluation_cpu_s": _cpu_s() - cpu0,
        "wall_s": time.perf_counter() - wall0,
        "hit@10": result["hit@10"],
        "score_sum": float(scored.scores.abs().sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--relation", default="country_language")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "read_positions.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.model, args.relation)))
        return
    if args.other is None or not (args.other / "kc_utils").is_dir():
        parser.error("--other must name another checkout of the project (a folder with kc_utils/)")
    runs: dict[str, list[dict]] = {"this": [], "other": []}
    for repeat in range(args.repeats):
        for which in ("other", "this") if repeat % 2 == 0 else ("this", "other"):
            checkout = ROOT if which == "this" else args.other.resolve()
            env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            command = [sys.executable, str(HERE / "read_positions.py"), "--worker", "--model", args.model]
            done = subprocess.run(
                [*command, "--relation", args.relation], env=env, cwd=checkout, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"worker in {checkout} failed:\n{done.stderr[-3000:]}")
            runs[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(which, runs[which][-1], flush=True)
    report = {"model": args.model, "relation": args.relation, "other": str(args.other), "runs": runs}
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
