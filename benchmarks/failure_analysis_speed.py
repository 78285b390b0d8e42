"""One relation of notebook 04's survey in this checkout against another one, same run.

Each checkout runs in its own worker process (one torch thread) on the same facts, as notebook 04's survey reads
one relation (:func:`kc_utils.analysis.hallucination.analyse_failures`): ``--facts`` facts the model learned,
asked in the relation's unseen template, classified by the logit lens after every block (at the last position and
the subject's), their knowledge-present failures traced to heads, and the top head's repair scored against
``--random`` random heads. The worker reports its CPU time, the classification and the survey's row; the driver
prints the ratio ``this / other`` and whether the two checkouts agree (kinds, ranks and predictions of every
prompt, the survey row).

Usage::

    git worktree add --detach /tmp/before <commit before the change>
    python benchmarks/failure_analysis_speed.py --other /tmp/before [--model smollm2-135m] [--relation adj_comparative]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from _checkouts import cpu_ratio, other_checkout, other_then_this, run_worker

HERE = Path(__file__).resolve().parent
COMPARED = ("kind", "final_rank", "prediction_id")


def _worker(model_name: str, relation: str, n_facts: int, n_random: int, out: Path) -> dict:
    """Analyse the relation in this process (the checkout on ``sys.path`` is the one measured); kinds to ``out``."""
    import torch

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.analysis.hallucination import analyse_failures, failure_summary
    from kc_utils.analysis.head_groups import writing_heads
    from kc_utils.analysis.wrong_answers import AttributeIndex
    from kc_utils.data.prompts import make_batch
    from kc_utils.data.relations import list_relations, load_relations
    from kc_utils.data.split import relation_split

    model = models.load_model(model_name, device="cpu")
    facts = relation_split(model_name, list_relations()).relations[relation]
    known = list(facts.trained)[:n_facts]
    train = facts.train_templates[0]
    index = AttributeIndex.from_relations(model, load_relations(list_relations()))
    pool = writing_heads(
        model, make_batch(model, [train.replace("{}", f.subject) for f in known], [f.object for f in known])
    )
    started = time.process_time()
    result = analyse_failures(
        model, relation, [f.subject for f in known], [f.object for f in known], facts.unseen_templates[0], train,
        index, repair_sizes=(1,), max_heads=3, n_random=n_random, pool=pool, seed=0, max_failures=32, each_head=False,
    )  # fmt: skip
    seconds = time.process_time() - started
    result.kinds.to_csv(out, index=False)
    row = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in failure_summary(result, relation).items()
    }
    return {"cpu_s": seconds, "prompts": len(known), "summary": row}


def _run(checkout: Path, args: argparse.Namespace, out: Path) -> dict:
    worker = ["--worker", str(out), "--model", args.model, "--relation", args.relation]
    worker += ["--facts", str(args.facts), "--random", str(args.random)]
    return run_worker(Path(__file__), checkout, worker)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, help="the checkout to compare with (e.g. the commit before)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relation", default="adj_comparative")
    parser.add_argument("--facts", type=int, default=200)
    parser.add_argument("--random", type=int, default=100, help="random head sets of the repair (notebook 04: 100)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/failure_analysis_speed_<model>.json"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.model, args.relation, args.facts, args.random, args.worker)))
        return
    other_root = other_checkout(parser, args.other)
    import pandas as pd

    scratch = Path(tempfile.mkdtemp(prefix="failure_analysis_speed_"))
    results = other_then_this(other_root, lambda which, checkout: _run(checkout, args, scratch / f"{which}.csv"))
    this, other = (pd.read_csv(scratch / f"{which}.csv") for which in ("this", "other"))
    summaries = {which: results[which]["summary"] for which in ("this", "other")}
    report = {
        "model": args.model,
        "relation": args.relation,
        "prompts": results["this"]["prompts"],
        "random_sets": args.random,
        "other": str(args.other),
        **cpu_ratio(results),
        "rows_differing": {c: int((this[c] != other[c]).sum()) for c in COMPARED},
        "max_abs_confidence_difference": float((this["confidence"] - other["confidence"]).abs().max()),
        "summary_fields_differing": [
            k for k in summaries["this"] if not _same(summaries["this"][k], summaries["other"][k])
        ],
        "summary": summaries["this"],
    }
    out = args.out or HERE / f"failure_analysis_speed_{args.model}.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
