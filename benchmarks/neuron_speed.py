"""Knowledge-neuron attribution (notebook 06's integrated gradients) in this checkout against another one, same run.

Each checkout runs in its own worker process (one torch thread) on the same facts: the queries notebook 06 finds for
``--relation`` on the model, ``--facts`` of them, every query, every MLP layer, ``--steps`` Riemann steps. The worker
reports its CPU time and the scores' and masks' checksums; the driver prints the ratio ``this / other`` and whether
the two checkouts' scores agree (max absolute difference, masks that differ).

Usage::

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/neuron_speed.py --other /tmp/before [--model smollm2-135m] [--facts 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker

HERE = Path(__file__).resolve().parent


def _worker(model_name: str, relation: str, n_facts: int, steps: int, out: Path) -> dict:
    """Score the neurons in this process (the checkout on ``sys.path`` is the one measured); scores go to ``out``."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.data.relations import load_relation
    from kc_utils.neurons.queries import relation_queries, template_accuracy_floor
    from kc_utils.neurons.study import query_neurons

    model = models.load_model(model_name, device="cpu")
    floor = template_accuracy_floor("auto", model_name)
    found = relation_queries(
        model, load_relation(relation), model_name, n_facts=n_facts, min_template_accuracy=floor,
        max_candidates=8 * n_facts, seed=0,
    )  # fmt: skip
    started = time.process_time()
    neurons = query_neurons(model, found, "last", steps, 0.3)
    seconds = time.process_time() - started
    torch.save({"scores": neurons.scores, "masks": neurons.masks}, out)
    return {"cpu_s": seconds, "prompts": int(neurons.masks.shape[0] * neurons.masks.shape[1])}


def _run(checkout: Path, args: argparse.Namespace, out: Path) -> dict:
    worker = ["--worker", str(out), "--model", args.model, "--relation", args.relation]
    worker += ["--facts", str(args.facts), "--steps", str(args.steps)]
    return run_worker(Path(__file__), checkout, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="country_capital_city")
    parser.add_argument("--facts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "neuron_speed.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.model, args.relation, args.facts, args.steps, args.worker)))
        return
    other_root = other_checkout(parser, args.other)
    import torch

    scratch = Path(tempfile.mkdtemp(prefix="neuron_speed_"))
    results = other_then_this(other_root, lambda which, checkout: _run(checkout, args, scratch / f"{which}.pt"))
    saved = {which: torch.load(scratch / f"{which}.pt") for which in results}
    report = {
        "model": args.model,
        "relation": args.relation,
        "facts": args.facts,
        "steps": args.steps,
        "other": str(args.other),
        **cpu_ratio(results),
        "prompts": results["this"]["prompts"],
        "max_abs_score_difference": float((saved["this"]["scores"] - saved["other"]["scores"]).abs().max()),
        "largest_score": float(saved["other"]["scores"].abs().max()),
        "masks_differing": int((saved["this"]["masks"] != saved["other"]["masks"]).sum()),
        "neurons_in_masks": int(saved["other"]["masks"].sum()),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
