"""Head ablation without the split edge inputs: notebook 05's Table-2 row in this checkout against another one.

Each checkout runs in its own worker process (one torch thread) on the same prompts: ``--shots``-shot sentence
prompts of ``--relation`` (notebook 05's default), ``--prompts`` of them, a set of ``--heads`` heads from the writing
heads and ``--random`` random sets of the same size, mean-ablated together
(:func:`kc_utils.analysis.icl.table2_row`, the function behind notebook 05's Table 2 and, through
``group_vs_random``, notebook 02's group tests). The worker reports its CPU time and the row; the driver prints the
ratio ``this / other`` and whether the two rows agree.

Usage::

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/head_passes_speed.py --other /tmp/before [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker

HERE = Path(__file__).resolve().parent


def _worker(args: argparse.Namespace) -> dict:
    """One Table-2 row in this process (the checkout on ``sys.path`` is the one measured)."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.analysis.head_groups import writing_heads
    from kc_utils.analysis.icl import fewshot_facts, table2_row
    from kc_utils.data.fewshot import build_fewshot_prompts, fewshot_batch

    model = models.load_model(args.model, device="cpu")
    facts, missing = fewshot_facts([args.relation], args.model, args.prompts, seed=0)
    if args.relation not in facts:
        raise SystemExit(f"{args.relation} cannot be used on {args.model}: {missing}")
    queries, pool, template = facts[args.relation]
    prompts = build_fewshot_prompts(model, queries, args.shots, "sentence", template, pool=pool, seed=0)
    batch = fewshot_batch(model, prompts, "subject")
    heads = writing_heads(model, batch)
    chosen = [heads[i] for i in torch.randperm(len(heads), generator=torch.Generator().manual_seed(0))[: args.heads]]
    started = time.process_time()
    row = table2_row(model, batch, chosen, heads, "benchmark", n_random=args.random, ablation="mean", seed=0)
    seconds = time.process_time() - started
    return {"cpu_s": seconds, "tokens": list(batch.clean.shape), "row": row}


def _run(checkout: Path, args: argparse.Namespace) -> dict:
    worker = ["--worker", "--model", args.model, "--relation", args.relation, "--prompts", str(args.prompts)]
    worker += ["--shots", str(args.shots), "--heads", str(args.heads), "--random", str(args.random)]
    return run_worker(Path(__file__), checkout, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="person_occupation")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--random", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "head_passes_speed.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    results = other_then_this(other_checkout(parser, args.other), lambda which, checkout: _run(checkout, args))
    this, other = results["this"]["row"], results["other"]["row"]
    numeric = [k for k, v in other.items() if isinstance(v, float)]
    report = {
        "model": args.model,
        "relation": args.relation,
        "shots": args.shots,
        "tokens": results["this"]["tokens"],
        "heads": this["heads"],
        "random_sets": args.random,
        "other": str(args.other),
        **cpu_ratio(results),
        "max_abs_difference_of_the_row": max(abs(this[k] - other[k]) for k in numeric),
        "row": this,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
