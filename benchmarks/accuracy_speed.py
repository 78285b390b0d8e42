"""Notebook 05's accuracy by number of demonstrations in this checkout against another one, same run.

Each checkout runs in its own worker process (one torch thread) on the same prompts: notebook 05's default
(:func:`kc_utils.analysis.icl.accuracy_by_k` over the five Table 2 relations, ``--prompts`` query facts each,
k = 0 … ``--max-k`` demonstrations in both formats, with the shuffled twins). The worker reports its CPU time and
the table; the driver prints the ratio ``this / other`` and whether the two tables agree.

Usage::

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/accuracy_speed.py --other /tmp/before [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker

HERE = Path(__file__).resolve().parent
RELATIONS = ["adj_comparative", "word_sentiment", "substance_phase", "occupation_gender", "person_occupation"]
VALUES = ("top1", "prob", "top1_shuffled", "prob_shuffled")


def _worker(model_name: str, n_prompts: int, max_k: int, out: Path) -> dict:
    """The accuracy table in this process (the checkout on ``sys.path`` is the one measured); table to ``out``."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.analysis.icl import accuracy_by_k, fewshot_facts
    from kc_utils.data.fewshot import FORMATS

    model = models.load_model(model_name, device="cpu")
    facts, _ = fewshot_facts(RELATIONS, model_name, n_prompts, seed=0)
    started = time.process_time()
    table = accuracy_by_k(model, facts, list(range(max_k + 1)), FORMATS, seed=0, progress=False)
    seconds = time.process_time() - started
    table.to_csv(out, index=False)
    return {"cpu_s": seconds, "rows": len(table)}


def _run(checkout: Path, args: argparse.Namespace, out: Path) -> dict:
    worker = ["--worker", str(out), "--model", args.model, "--prompts", str(args.prompts), "--max-k", str(args.max_k)]
    return run_worker(Path(__file__), checkout, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-k", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/accuracy_speed_<model>.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.model, args.prompts, args.max_k, args.worker)))
        return
    other_root = other_checkout(parser, args.other)
    import pandas as pd

    scratch = Path(tempfile.mkdtemp(prefix="accuracy_speed_"))
    results = other_then_this(other_root, lambda which, checkout: _run(checkout, args, scratch / f"{which}.csv"))
    this, other = (pd.read_csv(scratch / f"{which}.csv") for which in ("this", "other"))
    report = {
        "model": args.model,
        "relations": RELATIONS,
        "prompts": args.prompts,
        "max_k": args.max_k,
        "other": str(args.other),
        **cpu_ratio(results),
        "rows": results["this"]["rows"],
        "max_abs_difference": {c: float((this[c] - other[c]).abs().max()) for c in VALUES},
    }
    out = args.out or HERE / f"accuracy_speed_{args.model}.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
