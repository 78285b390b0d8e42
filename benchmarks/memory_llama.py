"""Peak memory of EAP-IG on CPU in bfloat16, on random-weight Llama shapes: which model fits in 24 GiB?

Run with ``.venv/bin/python benchmarks/memory_llama.py`` (not part of CI; ``benchmarks/README.md`` says how
to read it). For each Llama shape (TinyLlama-1.1B, Llama-3.2-1B, Llama-3.2-3B, Llama-2-7B: their widths,
heads, key/value heads, MLP widths and vocabularies) and each layer count asked for, a random checkpoint
is saved in bfloat16 with a word-level tokenizer of the shape's vocabulary, then a fresh worker process

1. boots it with ``load_model(folder, device="cpu", dtype=torch.bfloat16)`` (the decomposition check on),
2. builds notebook 01's batch shape (24 prompts × 8 tokens, each with a corrupt twin) and the graph,
3. runs ``attribute(method="eap-ig", ig_steps=5, batch_size=chunk)`` once (``chunk``: prompts per pass, the
   whole batch by default; the scores do not depend on it, so a smaller chunk trades passes for memory),

and records its peak resident set size (``ru_maxrss``) after each step. Memory grows linearly with the
layer count at a fixed width (weights, activations and the graph's per-layer tensors are all per layer),
so the peak at the full depth is predicted from a straight line through the measured layer counts, and
measured outright where the full depth is among them. Each worker runs alone (one at a time); the
machine's free memory at the start is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "memory_llama.md"
RAW_RESULTS = HERE / "memory_llama.json"
LIMIT_GIB = 24.0
N_PROMPTS = 24  # notebook 01's Dval
N_TOKENS = 8  # its country_capital_city prompts after padding, BOS included
IG_STEPS = 5

#: Llama shapes (Hugging Face ``LlamaConfig`` fields); ``layers`` is the real model's depth
SHAPES: dict[str, dict[str, Any]] = {
    "tinyllama-1.1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, intermediate_size=5632,
                           layers=22, vocab_size=32000, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                         layers=16, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, num_attention_heads=24, num_key_value_heads=8, intermediate_size=8192,
                         layers=28, vocab_size=128256, tie_word_embeddings=True),
    "llama-2-7b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                       layers=32, vocab_size=32000, tie_word_embeddings=False),
}  # fmt: skip


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def available_gib() -> float:
    """MemAvailable of ``/proc/meminfo`` in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def build_checkpoint(shape: str, layers: int, folder: Path, seed: int = 0) -> None:
    """A random bfloat16 Llama of ``shape`` with ``layers`` blocks and a word-level tokenizer, saved to ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = dict(SHAPES[shape])
    spec.pop("layers")
    vocab = spec["vocab_size"]
    words = ["<s>", "<unk>"] + [f"w{i}" for i in range(2, vocab)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<s>", pad_token="<s>", unk_token="<unk>"
    )
    config = LlamaConfig(num_hidden_layers=layers, bos_token_id=0, eos_token_id=0, max_position_embeddings=64, **spec)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bfloat16: no float32 copy of the weights
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def prompt_texts(vocab: int, seed: int = 1) -> tuple[list[str], list[str], list[str], list[str]]:
    """``N_PROMPTS`` prompts of ``N_TOKENS - 1`` words; each corrupt twin redraws two words (the 'subject')."""
    from attribution import prompt_texts as random_prompts  # the sibling benchmark's prompts, at this shape

    return random_prompts(seed, vocab=vocab, n_prompts=N_PROMPTS, n_tokens=N_TOKENS, subject=slice(1, 3))


def worker(shape: str, layers: int, folder: Path, threads: int, chunk: int, out: Path) -> None:
    """Boot, batch, graph and one EAP-IG; the peak RSS after each, written as JSON to ``out``."""
    import torch

    torch.set_num_threads(threads)
    from kc_utils import Graph, attribute, make_batch
    from kc_utils.models import load_model

    res: dict[str, Any] = {"shape": shape, "layers": layers, "chunk": chunk, "threads": threads}
    res["rss_start_gib"] = peak_rss_gib()
    start = time.perf_counter()
    model = load_model(str(folder), device="cpu", dtype=torch.bfloat16)
    res["load_s"] = time.perf_counter() - start
    res["rss_loaded_gib"] = peak_rss_gib()
    res["parameters"] = sum(p.numel() for p in model.parameters())
    batch = make_batch(model, *prompt_texts(SHAPES[shape]["vocab_size"]))
    assert tuple(batch.clean.shape) == (N_PROMPTS, N_TOKENS), batch.clean.shape
    graph = Graph.from_model(model)
    res["edges"] = graph.n_edges
    res["rss_graph_gib"] = peak_rss_gib()
    start = time.perf_counter()
    attribute(model, graph, batch, "logit_diff", method="eap-ig", ig_steps=IG_STEPS, batch_size=chunk, progress=False)
    res["eap_ig_s"] = time.perf_counter() - start
    res["rss_eap_ig_gib"] = peak_rss_gib()
    res["finite_scores"] = bool(torch.isfinite(graph.scores).all())
    out.write_text(json.dumps(res, indent=1))


def measure(shape: str, layers: int, threads: int, chunk: int = N_PROMPTS) -> dict[str, Any]:
    """Build the checkpoint and run the worker in fresh processes (each peak is its own)."""
    script = str(Path(__file__).resolve())
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="kc-memory-") as tmp:
        folder, out = Path(tmp) / "checkpoint", Path(tmp) / "result.json"
        free = available_gib()
        print(f"== {shape} with {layers} layers: building (available {free:.1f} GiB)", flush=True)
        subprocess.run([sys.executable, script, "--build", shape, str(layers), str(folder)], check=True, env=env)
        command = [sys.executable, script, "--worker", shape, str(layers), str(folder), str(threads), str(chunk)]
        command.append(str(out))
        proc = subprocess.run(command, env=env)
        if proc.returncode != 0:
            return {"shape": shape, "layers": layers, "chunk": chunk, "failed": f"worker exited with {proc.returncode}"}
        res = json.loads(out.read_text())
    res["available_at_start_gib"] = free
    res["load_average"] = round(os.getloadavg()[0], 2)
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    print(f"   peak RSS {res['rss_eap_ig_gib']:.2f} GiB (loaded {res['rss_loaded_gib']:.2f}), "
          f"EAP-IG {res['eap_ig_s']:.0f} s", flush=True)  # fmt: skip
    return res


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``y = a + b·x``; needs two distinct ``x``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("a line needs at least two different layer counts")
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def chunk_of(result: dict[str, Any]) -> int:
    """Prompts per pass of a result (rows written before the knob existed ran the whole batch)."""
    return int(result.get("chunk", N_PROMPTS))


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shape and chunk: the line through the peaks measured below full depth, the peak at full depth
    (measured, else predicted by the line)."""
    rows = []
    for shape, spec in SHAPES.items():
        for chunk in sorted({chunk_of(r) for r in results if r["shape"] == shape}, reverse=True):
            done = [r for r in results if r["shape"] == shape and chunk_of(r) == chunk and "failed" not in r]
            if not done:
                continue
            full = next((r for r in done if r["layers"] == spec["layers"]), None)
            shallow = [r for r in done if r["layers"] != spec["layers"]]
            row: dict[str, Any] = {
                "shape": shape,
                "chunk": chunk,
                "full_layers": spec["layers"],
                "measured_layers": sorted(r["layers"] for r in done),
            }
            if len({r["layers"] for r in shallow}) >= 2:
                a, b = fit_line([(r["layers"], r["rss_eap_ig_gib"]) for r in shallow])
                row.update(intercept_gib=a, per_layer_gib=b, predicted_gib=a + b * spec["layers"])
            if full is not None:
                row["measured_gib"] = full["rss_eap_ig_gib"]
            peak = row.get("measured_gib", row.get("predicted_gib"))
            row["peak_gib"] = peak
            row["fits"] = None if peak is None else peak <= LIMIT_GIB
            rows.append(row)
    return rows


def write_report(results: list[dict[str, Any]]) -> None:
    rows = summarise(results)
    lines = [
        "# EAP-IG in bfloat16 on a CPU: peak memory by Llama shape (`benchmarks/memory_llama.py`)",
        "",
        f"Batch {N_PROMPTS} prompts × {N_TOKENS} tokens (notebook 01's), EAP-IG m = {IG_STEPS}, random weights, "
        "`load_model(folder, device='cpu', dtype=torch.bfloat16)`; peak RSS = `ru_maxrss` of a fresh worker.",
        "",
        "| shape | layers | prompts per pass | parameters | edges | RSS loaded GiB | RSS after EAP-IG GiB | EAP-IG s | "
        "threads | load | available at start GiB | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "failed" in r:
            lines.append(
                f"| {r['shape']} | {r['layers']} | {chunk_of(r)} | – | – | – | – | – | – | – | – | {r['failed']} |"
            )
            continue
        lines.append(
            f"| {r['shape']} | {r['layers']} | {chunk_of(r)} | {r['parameters'] / 1e6:.0f} M | {r['edges']} | "
            f"{r['rss_loaded_gib']:.2f} | "
            f"**{r['rss_eap_ig_gib']:.2f}** | {r['eap_ig_s']:.0f} | {r['threads']} | {r['load_average']} | "
            f"{r['available_at_start_gib']:.1f} | {r['date']} |"
        )
    lines += [
        "",
        f"| shape | prompts per pass | full depth | measured at | GiB per layer | peak at full depth, GiB | "
        f"within {LIMIT_GIB:.0f} GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        per_layer = f"{s['per_layer_gib']:.3f}" if "per_layer_gib" in s else "–"
        if "measured_gib" in s:
            peak = f"**{s['measured_gib']:.2f}** measured" + (
                f" (the line predicts {s['predicted_gib']:.2f})" if "predicted_gib" in s else ""
            )
        elif "predicted_gib" in s:
            peak = f"**{s['predicted_gib']:.2f}** predicted"
        else:
            peak = "– (one layer count: no line)"
        fits = "–" if s["fits"] is None else ("yes" if s["fits"] else "**no**")
        lines.append(
            f"| {s['shape']} | {s['chunk']} | {s['full_layers']} | "
            f"{', '.join(map(str, s['measured_layers']))} layers | {per_layer} | "
            f"{peak} | {fits} |"
        )
    fitting = [s for s in rows if s["fits"]]
    if fitting:
        largest = max(fitting, key=lambda s: SHAPES[s["shape"]]["hidden_size"] * SHAPES[s["shape"]]["layers"])
        lines += [
            "",
            f"Largest shape within {LIMIT_GIB:.0f} GiB: **{largest['shape']}** ({largest['peak_gib']:.1f} GiB with "
            f"{largest['chunk']} prompts per pass).",
        ]
    RESULTS.write_text("\n".join(lines) + "\n")
    RAW_RESULTS.write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 2], help="layer counts (full: the model's depth)")
    parser.add_argument("--full", nargs="*", choices=list(SHAPES), default=[], help="also measure these at full depth")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunks", nargs="+", type=int, default=[N_PROMPTS], help="prompts per pass (batch_size)")
    parser.add_argument("--merge", action="store_true", help="keep earlier results of other (shape, layers, chunk)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--build", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_checkpoint(args.build[0], int(args.build[1]), Path(args.build[2]))
        return
    if args.worker:
        shape, layers, folder, threads, chunk, out = args.worker
        worker(shape, int(layers), Path(folder), int(threads), int(chunk), Path(out))
        return
    results = json.loads(RAW_RESULTS.read_text()) if (args.merge or args.report_only) and RAW_RESULTS.exists() else []
    if not args.report_only:
        depths = [(s, n) for s in args.shapes for n in args.layers] + [(s, SHAPES[s]["layers"]) for s in args.full]
        for (shape, layers), chunk in [(d, c) for d in depths for c in args.chunks]:
            results = [r for r in results if (r["shape"], r["layers"], chunk_of(r)) != (shape, layers, chunk)]
            results.append(measure(shape, layers, args.threads, chunk))
            results.sort(key=lambda r: (list(SHAPES).index(r["shape"]), -chunk_of(r), r["layers"]))
            write_report(results)  # after each: a crash keeps the rest
    write_report(results)


if __name__ == "__main__":
    main()
