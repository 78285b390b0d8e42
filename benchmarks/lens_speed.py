"""The logit lens's reading of each layer's logits: the probability and rank as before against rank_and_prob, same run.

Notebook 04 classifies every fact by the logit lens (the correct answer's rank and probability after every block,
at the last position and the subject's). On Gemma-3-270M each layer unembeds every read position into 262,144
tokens; what is read from those logits was a softmax written out and a boolean copy for the rank
(:func:`kc_utils.data.metrics.rank_of`), and is now :func:`kc_utils.analysis.lens.rank_and_prob` (the log-sum-exp,
and the rank counted in place). This script runs the lens of one relation's facts on streams recorded once,
alternating the two readings ``--repeats`` times in one process (one torch thread), and reports the CPU time of
each and whether the tables agree (ranks exactly; the probabilities' largest relative difference).

Usage::

    python benchmarks/lens_speed.py [--model gemma-3-270m] [--relation adj_comparative] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _checkouts import cpu_name

HERE = Path(__file__).resolve().parent


def _before(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reading the lens had before :func:`kc_utils.analysis.lens.rank_and_prob`: a boolean copy, a softmax."""
    from kc_utils.data.metrics import rank_of

    return rank_of(logits, target), logits.softmax(-1).gather(-1, target[:, None])[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--relation", default="adj_comparative")
    parser.add_argument("--facts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/lens_speed_<model>.json")
    args = parser.parse_args()

    import numpy as np

    torch.set_num_threads(1)
    from kc_utils import models
    from kc_utils.analysis import lens
    from kc_utils.data.prompts import make_batch
    from kc_utils.data.relations import load_relation

    model = models.load_model(args.model, device="cpu")
    relation = load_relation(args.relation)
    template = relation.prompt_templates[-1]  # the template notebook 04 asks a pretrained model's facts in
    samples = relation.samples[: args.facts]
    subjects = [s.subject for s in samples]
    batch = make_batch(model, [template.replace("{}", s) for s in subjects], [s.object for s in samples])
    stack = lens.residual_by_layer(model, batch.clean)
    read = lens.subject_mask(model, batch, subjects)
    read[torch.arange(len(batch)), batch.last_pos] = True
    readings = {"before": _before, "rank_and_prob": lens.rank_and_prob}
    seconds: dict[str, list[float]] = {name: [] for name in readings}
    tables = {}
    try:
        for repeat in range(args.repeats):
            for name, reading in readings.items():
                lens.rank_and_prob = reading
                started = time.process_time()
                tables[name] = lens.logit_lens(model, batch, subjects, residuals=stack)
                seconds[name].append(time.process_time() - started)
                print(f"repeat {repeat + 1} {name:14s} {seconds[name][-1]:6.2f} s of CPU", flush=True)
    finally:
        lens.rank_and_prob = readings["rank_and_prob"]
    before, after = tables["before"], tables["rank_and_prob"]
    same_ranks = bool((before["rank"] == after["rank"]).all() and before["subject_rank"].equals(after["subject_rank"]))
    both = np.concatenate([after[["prob", "subject_prob"]].to_numpy(), before[["prob", "subject_prob"]].to_numpy()])
    half = len(both) // 2
    largest = float(np.nanmax(np.abs(both[:half] - both[half:]) / np.maximum(np.abs(both[half:]), 1e-30)))
    this, other = statistics.median(seconds["rank_and_prob"]), statistics.median(seconds["before"])
    report = {
        "benchmark": "lens_speed",
        "cpu": cpu_name(),
        "model": args.model,
        "relation": args.relation,
        "prompts": len(batch),
        "layers": int(stack.shape[0]),
        "read_positions": int(read.sum()),
        "seconds": seconds,
        "this_cpu_s": this,
        "other_cpu_s": other,
        "ratio": this / other,
        "ranks_equal": same_ranks,
        "largest_relative_probability_difference": largest,
    }
    out = args.out or HERE / f"lens_speed_{args.model}.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(
        f"median: before {other:.2f} s, rank_and_prob {this:.2f} s, ratio {this / other:.2f}; ranks equal "
        f"{same_ranks}, probabilities at most {largest:.1e} apart (relative) -> {out}"
    )


if __name__ == "__main__":
    main()
