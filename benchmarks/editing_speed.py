"""Notebook 03's edit sweep on a real model, phase by phase: this checkout against another one, in the same run.

Each phase runs in its own worker process (one torch thread), alternating between the two checkouts within each
repeat, on the objects notebook 03 builds by default (the relation it picks, its probes, its ROME and FT-M
settings) at one layer:

- ``evaluator``: the probes' answers before any edit and the MLP outputs ``location`` restores;
- ``key_statistics``: ROME's ``C`` from the texts the model generates itself (the texts are generated once,
  untimed, by the same code in both checkouts);
- ``rome``: the authors' ROME at the layer (``k̄, k_e, v*`` of every edit in one batch), each edit applied,
  evaluated with EasyEdit's metrics, located and undone (:func:`kc_utils.editing.layer_sweep.edit_sweep`);
- ``ft-m``: FT-M at the layer, each edit trained, evaluated, located and undone.

The other checkout is typically the commit before a speed change (``git worktree add --detach DIR COMMIT``), so the
ratio ``this / other`` is the change's gain measured on the same machine and load. Results are equal within
float round-off (checked: the sweep's metrics of both checkouts are compared and printed).

Usage::

    python benchmarks/editing_speed.py --other /path/to/old/checkout [--model smollm2-135m] [--edits 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _checkouts import ROOT, cpu_name, other_checkout, run_worker

HERE = Path(__file__).resolve().parent
PHASES = ("evaluator", "key_statistics", "rome", "ft-m")


def _worker(phase: str, model_name: str, n_edits: int, layer: int | None, seed: int) -> dict:
    """Time one phase in this process (the checkout on ``sys.path`` is the one measured)."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.data.split import relation_split
    from kc_utils.editing.covariance import KeyStatistics, generated_texts, key_statistics
    from kc_utils.editing.evaluation import EditEvaluator, build_probes, counterfactual_requests, pick_edit_relation
    from kc_utils.editing.ft_m import FtmConfig
    from kc_utils.editing.layer_sweep import edit_sweep
    from kc_utils.editing.rome import RomeConfig

    torch.manual_seed(seed)
    model = models.load_model(model_name, device="cpu")
    torch.set_grad_enabled(True)
    n_layers = models.model_shape(model).n_layers
    layer = n_layers // 3 if layer is None else layer
    relation, _ = pick_edit_relation(model, model_name, 20, seed)
    split = relation_split(model_name, [relation])
    requests = counterfactual_requests(model, split, relation, 20, seed=seed)[:n_edits]
    probes = [build_probes(split, r, 8, seed) for r in requests]
    started = time.perf_counter()
    evaluator = EditEvaluator(model, probes, layers=[layer])
    seconds = time.perf_counter() - started
    result: dict = {"relation": relation, "layer": layer, "n_edits": len(requests)}
    if phase == "key_statistics":
        texts = generated_texts(model, 200, 32, seed=seed)
        started = time.perf_counter()
        stats = key_statistics(model, [layer], texts)
        seconds = time.perf_counter() - started
        result["trace"] = float(stats[layer].inverse.trace())
    elif phase in ("rome", "ft-m"):
        prefixes = tuple(generated_texts(model, 2, 5, seed=seed + 1) + generated_texts(model, 2, 10, seed=seed + 2))
        stats = {layer: KeyStatistics.identity(layer, models.mlp_out_weight(model, layer).shape[1])}
        started = time.perf_counter()
        sweep = edit_sweep(
            model, evaluator, [layer], [phase], stats=stats, rome_config=RomeConfig(prefixes=prefixes),
            ftm_config=FtmConfig(), progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        result["metrics"] = sweep.drop(columns=["subject"]).mean(numeric_only=True).round(6).to_dict()
    result["seconds"] = seconds
    return result


def _run(checkout: Path, phase: str, args: argparse.Namespace) -> dict:
    worker = ["--worker", phase, "--model", args.model, "--edits", str(args.edits), "--seed", str(args.seed)]
    if args.layer is not None:
        worker += ["--layer", str(args.layer)]
    return run_worker(Path(__file__), checkout, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--edits", type=int, default=5, help="edits per phase (notebook 03: 20)")
    parser.add_argument("--layer", type=int, default=None, help="default: ROME's layer, a third of the depth")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    parser.add_argument("--out", type=Path, default=HERE / "editing_speed.json")
    parser.add_argument("--worker", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.edits, args.layer, args.seed)))
        return
    checkouts = {"this": ROOT, "other": other_checkout(parser, args.other)}
    runs: dict[str, dict[str, list[dict]]] = {phase: {"this": [], "other": []} for phase in args.phases}
    for repeat in range(args.repeats):
        for phase in args.phases:
            order = ("other", "this") if repeat % 2 == 0 else ("this", "other")
            for which in order:
                result = _run(checkouts[which], phase, args)
                runs[phase][which].append(result)
                print(f"repeat {repeat + 1} {phase:15s} {which:5s} {result['seconds']:8.1f} s", flush=True)
    summary = []
    for phase, by in runs.items():
        this = statistics.median(r["seconds"] for r in by["this"])
        other = statistics.median(r["seconds"] for r in by["other"])
        same = {k: (by["this"][0].get(k), by["other"][0].get(k)) for k in ("metrics", "trace")}
        summary.append({"phase": phase, "this_s": this, "other_s": other, "ratio": this / other, "results": same})
    report = {
        "cpu": cpu_name(),
        "threads": 1,
        "model": args.model,
        "edits": args.edits,
        "repeats": args.repeats,
        "other": str(args.other),
        "relation": runs[args.phases[0]]["this"][0]["relation"],
        "layer": runs[args.phases[0]]["this"][0]["layer"],
        "phases": summary,
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for row in summary:
        print(
            f"{row['phase']:15s} this {row['this_s']:8.1f} s  other {row['other_s']:8.1f} s  ratio {row['ratio']:.2f}"
        )
        print(f"{'':15s} results this/other: {row['results']}")


if __name__ == "__main__":
    main()
