"""Speed and memory of kc_utils attribution and circuit evaluation, against floors and peers.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/attribution.py [--quick]``); not part of CI.

What is measured, per model shape (random-weight GPT-2-small 12×12×768 and GPT-2-medium 24×16×1024,
vocabulary 50257, booted through :func:`kc_utils.models.load_model` like any local checkpoint),
on one batch of 16 prompts × 16 tokens with corrupted twins, ``torch.set_num_threads(2)``:

1. **Attribution vs. its floor.** EAP needs two plain forwards (clean and corrupt outputs) and one
   forward/backward pass; EAP-IG with ``m`` steps needs two forwards and ``m`` forward/backward
   passes. The floor is exactly those passes through the same bridge model on the same batch with
   no kc_utils hooks: parameters frozen, gradient taken with respect to the input embedding only.
   Everything else — hooks, buffers, the scoring einsums — is overhead, and ``ours / floor`` says
   how much.
2. **Circuit evaluation vs. one forward.** ``circuit_logits`` on a top-n circuit with patch
   ablation, split into the corrupt-output collection (one hooked forward on the corrupt prompts)
   and the masked forward (``run_masked``).
3. **Peak RSS** of the process that does all of this (one subprocess per shape, so each shape's
   ``ru_maxrss`` is its own), before and after the peers run.
4. **Peers.** TransformerLens 4.3's edge attribution patching (``attribution_patch`` with
   ``granularity="edge"``; one prompt pair at a time, per-position edges), timed on the first
   ``--peer-pairs`` pairs and scaled to the batch (its cost is linear in pairs by construction);
   its edge scores summed over positions map one-to-one onto kc_utils edges and are correlated
   with ours. Optionally auto-circuit's EAP in its own virtual environment
   (``benchmarks/peer_auto_circuit.py``; skipped with a message when that environment is absent).

Every timing uses ``time.perf_counter`` after a warm-up pass; each repeat runs the floor, EAP,
EAP-IG and the evaluation back to back, so ratios are taken within a repeat (the machine may be
shared) and the median over repeats is reported, next to the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
RAW_RESULTS = HERE / "results.json"  # the raw numbers behind results.md, for --merge
AUTO_CIRCUIT_PYTHON = os.environ.get("KC_AUTO_CIRCUIT_PYTHON", "/tmp/ac-venv/bin/python")

SHAPES = {
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64},  # smoke test of this script only (--shapes tiny)
}
VOCAB = 50257
N_PROMPTS = 16
N_TOKENS = 16
IG_STEPS = 5
CIRCUIT_EDGES = 1000
EVAL_ROUNDS = 3
THREADS = 2


# ----------------------------------------------------------------------------- helpers
def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def peak_rss_gb() -> float:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall-clock seconds (``perf_counter``) and CPU seconds of this process (``process_time``) of one call.

    On a shared machine the wall clock of a pass can swing tenfold within a minute; the CPU time
    of the process is what the pass itself costs and barely moves, so both are kept.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def pearson(a, b) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman(a, b) -> float:
    """Pearson correlation of ordinal ranks (ties are rare for these float scores)."""
    return pearson(a.argsort().argsort().double(), b.argsort().argsort().double())


# ----------------------------------------------------------------------------- checkpoint
def word(i: int) -> str:
    return f"w{i}"


def build_checkpoint(shape: str, folder: Path, seed: int = 0) -> None:
    """A random GPT-2 of ``shape`` with a word-level tokenizer of ``VOCAB`` words, saved to ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<unk>"] + [word(i) for i in range(2, VOCAB)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0, **SHAPES[shape])
    model = GPT2LMHeadModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def prompt_texts(seed: int = 1) -> tuple[list[str], list[str], list[str], list[str]]:
    """16 prompts of 15 words (16 tokens with BOS); each corrupt twin swaps a two-word 'subject'."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=g).tolist()

    prompts, corrupt, answers, corrupt_answers = [], [], [], []
    for _ in range(N_PROMPTS):
        ids = draw(N_TOKENS - 1)
        twin = list(ids)
        twin[3:5] = draw(2)
        a, ca = draw(2)
        prompts.append(" ".join(map(word, ids)))
        corrupt.append(" ".join(map(word, twin)))
        answers.append(word(a))
        corrupt_answers.append(word(ca))
    return prompts, answers, corrupt, corrupt_answers


# ----------------------------------------------------------------------------- worker
def tl_peer(model: Any, graph_cls: Any, batch: Any, pairs: int) -> dict:
    """TransformerLens 4.3 edge attribution patching on the first ``pairs`` pairs, mapped to our edges."""
    import torch

    try:
        from transformer_lens.tools.analysis.attribution_patching import (
            EdgeAttributionConfig,
            attribution_patch,
        )
    except ImportError as err:
        return {"skipped": f"TransformerLens attribution_patch not available ({err})"}

    graph = graph_cls.from_model(model)
    config = EdgeAttributionConfig(granularity="edge")
    total = torch.zeros(graph.n_upstream, graph.n_receivers, dtype=torch.float64)
    seconds = {clock: 0.0 for clock in CLOCKS}
    for i in range(pairs):
        last, a, ca = int(batch.last_pos[i]), int(batch.answer[i]), int(batch.corrupt_answer[i])

        def metric(logits, last=last, a=a, ca=ca):
            return logits[0, last, a] - logits[0, last, ca]

        result = None

        def run(i=i, metric=metric):
            nonlocal result
            result = attribution_patch(model, batch.clean[i : i + 1], batch.corrupt[i : i + 1], metric, config)

        for clock, value in timed(run).items():
            seconds[clock] += value
        for (writer, reader), score in result.edge_scores.items():  # sum over positions
            total[graph.upstream_index[_tl_writer(writer)], graph.receiver_index[_tl_reader(reader)]] += score
    return {
        "seconds_per_pair": {c: v / pairs for c, v in seconds.items()},
        "pairs": pairs,
        "scores": (total / pairs).float(),
    }


def _tl_writer(node: Any) -> str:
    if node.kind == "embed":
        return "input"
    if node.kind == "attn_head_out":
        return f"a{node.layer}.h{node.head}"
    return f"m{node.layer}"


def _tl_reader(node: Any) -> str:
    if node.kind in ("q_input", "k_input", "v_input"):
        return f"a{node.layer}.h{node.head}<{node.kind[0]}>"
    if node.kind == "mlp_in":
        return f"m{node.layer}"
    return "logits"


CLOCKS = ("wall", "cpu")
#: ratio name → (numerator, denominator) keys of a repeat's timings
RATIOS = {
    "eap/floor": ("eap", "floor_eap"),
    "eap_ig/floor": ("eap_ig", "floor_ig"),
    "eap/fwd": ("eap", "fwd_ref"),
    "fb/fwd": ("fb", "fwd"),
    "circuit_logits/fwd": ("circuit_logits", "fwd_eval"),
    "masked_fwd/fwd": ("masked_fwd", "fwd_eval"),
    "corrupt_collect/fwd": ("corrupt_collect", "fwd_eval"),
}


def ratio_estimates(rows: list[dict], minima: dict, num: str, den: str) -> dict[str, float]:
    """Three estimates of ``num / den``: median of per-repeat wall ratios, ratio of wall minima,
    median of per-repeat CPU-time ratios."""
    return {
        "wall": median([r["wall"][num] / r["wall"][den] for r in rows]),
        "wall_min": minima["wall"][num] / minima["wall"][den],
        "cpu": median([r["cpu"][num] / r["cpu"][den] for r in rows]),
    }


def worker(shape: str, checkpoint: Path, repeats: int, peer_pairs: int, out: Path) -> None:
    """Measure one shape; write a JSON of timings, ratios and RSS to ``out``."""
    import torch

    torch.set_num_threads(THREADS)
    from kc_utils import Graph, attribute, make_batch
    from kc_utils import models as kc_models
    from kc_utils.circuits.ablation import ablated_outputs
    from kc_utils.circuits.attribute import frozen_parameters
    from kc_utils.circuits.evaluate import circuit_logits
    from kc_utils.circuits.patching import run_masked
    from kc_utils.data.metrics import logit_diff

    res: dict[str, Any] = {"shape": shape, "load_start": load_avg()}
    res["rss_before_load_gb"] = peak_rss_gb()
    model = kc_models.load_model(str(checkpoint), device="cpu")
    res["rss_after_load_gb"] = peak_rss_gb()
    batch = make_batch(model, *prompt_texts())
    assert tuple(batch.clean.shape) == (N_PROMPTS, N_TOKENS), batch.clean.shape
    graph = Graph.from_model(model)
    res["n_edges"] = graph.n_edges
    n = len(batch)

    def forward() -> None:
        with torch.no_grad():
            model(batch.clean)

    def forward_backward() -> None:
        """One pass with gradient w.r.t. the input embedding only (EAP's backward work)."""
        with frozen_parameters(model), torch.enable_grad():
            leaf = {}

            def as_leaf(act, hook):
                leaf["x"] = act.detach().requires_grad_(True)
                return leaf["x"]

            logits = kc_models.run_with_hooks(model, batch.clean, [(kc_models.INPUT_HOOK, as_leaf)])
            (logit_diff(logits, batch).sum() / n).backward()

    def floor_sequence() -> dict[str, dict[str, float]]:
        """2 forwards + IG_STEPS forward/backward passes: the EAP floor, the EAP-IG floor, one fwd, one fwd/bwd."""
        fwd = [timed(forward) for _ in range(2)]
        fb = [timed(forward_backward) for _ in range(IG_STEPS)]
        return {
            clock: {
                "floor_eap": sum(t[clock] for t in fwd) + fb[0][clock],
                "floor_ig": sum(t[clock] for t in fwd) + sum(t[clock] for t in fb),
                "fwd": median([t[clock] for t in fwd]),
                "fb": median([t[clock] for t in fb]),
            }
            for clock in CLOCKS
        }

    def eap() -> None:
        attribute(model, graph, batch, "logit_diff", method="eap", progress=False)

    def eap_ig() -> None:
        attribute(model, graph, batch, "logit_diff", method="eap-ig", ig_steps=IG_STEPS, progress=False)

    # warm-up: every code path once
    forward()
    forward_backward()
    eap()
    circuit = graph.copy().top_n(min(CIRCUIT_EDGES, graph.n_edges // 10))
    res["circuit_edges"] = circuit.n_edges_in_graph
    circuit_logits(model, circuit, batch, "patch")

    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        row: dict[str, Any] = {"load": load_avg(), **floor_sequence()}
        times = {"eap": timed(eap), "eap_ig": timed(eap_ig)}
        # evaluation passes are short: EVAL_ROUNDS interleaved rounds, the fastest of each kind kept
        rounds: list[dict[str, dict[str, float]]] = []
        with torch.no_grad():
            ablated = ablated_outputs(model, circuit, batch, "patch")
            for _ in range(EVAL_ROUNDS):
                rounds.append(
                    {
                        "fwd_eval": timed(forward),
                        "corrupt_collect": timed(lambda: ablated_outputs(model, circuit, batch, "patch")),
                        "masked_fwd": timed(lambda: run_masked(model, circuit, batch.clean, ablated, circuit.in_graph)),
                        "circuit_logits": timed(lambda: circuit_logits(model, circuit, batch, "patch")),
                    }
                )
            del ablated
        for key in rounds[0]:
            times[key] = {clock: min(r[key][clock] for r in rounds) for clock in CLOCKS}
        for clock in CLOCKS:
            row[clock].update({k: t[clock] for k, t in times.items()})
            row[clock]["fwd_ref"] = min(row[clock]["fwd"], row[clock]["fwd_eval"])
        rows.append(row)
        print(
            f"  [{shape}] repeat {rep + 1}/{repeats} (load {row['load']}): "
            + ", ".join(f"{k} {v:.2f}/{row['cpu'][k]:.2f}" for k, v in row["wall"].items())
            + "  (wall/CPU s)",
            flush=True,
        )
    res["rows"] = rows
    res["median"] = {clock: {k: median([r[clock][k] for r in rows]) for k in rows[0][clock]} for clock in CLOCKS}
    res["min"] = {clock: {k: min(r[clock][k] for r in rows) for k in rows[0][clock]} for clock in CLOCKS}
    res["median"]["load"] = median([r["load"] for r in rows])
    res["ratio"] = {name: ratio_estimates(rows, res["min"], num, den) for name, (num, den) in RATIOS.items()}
    res["rss_kc_gb"] = peak_rss_gb()

    # ---- peer: TransformerLens attribution patching, first `peer_pairs` pairs
    if peer_pairs > 0:
        sub = batch.select(list(range(peer_pairs)))
        tl = tl_peer(model, Graph, sub, peer_pairs)
        if "skipped" in tl:
            res["tl"] = tl
        else:
            ours_time = timed(lambda: attribute(model, graph, sub, "logit_diff", method="eap", progress=False))
            ours = graph.scores.clone()
            med = res["median"]
            # The same linearisation point as TL (gradient on the corrupt run): swap clean and
            # corrupt, keep the clean answers in the metric, and negate.
            from dataclasses import replace

            rows_idx = torch.arange(peer_pairs)

            def clean_logit_diff(logits, b):
                final = logits[rows_idx, sub.last_pos]
                return final[rows_idx, sub.answer] - final[rows_idx, sub.corrupt_answer]

            swapped = replace(sub, clean=sub.corrupt, corrupt=sub.clean)
            attribute(model, graph, swapped, clean_logit_diff, method="eap", progress=False)
            ours_at_corrupt = -graph.scores.clone()
            real = graph.real_edges
            theirs = tl["scores"]
            res["tl"] = {
                "pairs": peer_pairs,
                "seconds_per_pair": tl["seconds_per_pair"],
                "seconds_batch_extrapolated": {c: tl["seconds_per_pair"][c] * n for c in CLOCKS},
                "ours_eap_same_pairs_s": ours_time,
                "ours/tl_same_pairs": {c: ours_time[c] / (tl["seconds_per_pair"][c] * peer_pairs) for c in CLOCKS},
                "ours_batch/tl_batch": {c: med[c]["eap"] / (tl["seconds_per_pair"][c] * n) for c in CLOCKS},
                "pearson": pearson(ours[real], theirs[real]),
                "spearman": spearman(ours[real], theirs[real]),
                "pearson_same_point": pearson(ours_at_corrupt[real], theirs[real]),
                "max_rel_diff_same_point": float(
                    (ours_at_corrupt[real] - theirs[real]).abs().max() / theirs[real].abs().max()
                ),
            }
        res["rss_with_tl_gb"] = peak_rss_gb()

    # scores for the auto-circuit comparison: EAP on the whole batch
    attribute(model, graph, batch, "logit_diff", method="eap", progress=False)
    torch.save(
        {
            "clean": batch.clean,
            "corrupt": batch.corrupt,
            "answer": batch.answer,
            "corrupt_answer": batch.corrupt_answer,
            "last_pos": batch.last_pos,
            "scores": graph.scores,
            "upstream": graph.upstream_names,
            "receivers": graph.receiver_names,
            "eap_seconds": res["median"]["wall"]["eap"],
            "eap_cpu_seconds": res["median"]["cpu"]["eap"],
        },
        checkpoint / "kc_batch_and_scores.pt",
    )
    res["load_end"] = load_avg()
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    out.write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------- driver
def run_shape(shape: str, args: argparse.Namespace, workdir: Path) -> dict:
    checkpoint = workdir / shape
    script = str(Path(__file__).resolve())
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    print(f"== {shape}: building a random checkpoint (vocab {VOCAB}) in {checkpoint}", flush=True)
    subprocess.run([sys.executable, script, "--build", shape, str(checkpoint)], check=True, env=env)
    out = workdir / f"{shape}.json"
    repeats = args.repeats_medium if shape == "gpt2-medium" and args.repeats_medium else args.repeats
    print(f"== {shape}: measuring ({repeats} repeats, load {load_avg()})", flush=True)
    subprocess.run(
        [
            sys.executable,
            script,
            "--worker",
            shape,
            str(checkpoint),
            "--repeats",
            str(repeats),
            "--peer-pairs",
            str(args.peer_pairs_medium if shape == "gpt2-medium" else args.peer_pairs),
            "--out",
            str(out),
        ],
        check=True,
        env=env,
    )
    res = json.loads(out.read_text())
    res["auto_circuit"] = run_auto_circuit(shape, checkpoint, args, env)
    return res


def run_auto_circuit(shape: str, checkpoint: Path, args: argparse.Namespace, env: dict) -> dict:
    if args.no_auto_circuit:
        return {"skipped": "--no-auto-circuit"}
    if shape == "gpt2-medium":
        return {"skipped": "run on gpt2-small only (its memory use on medium would crowd a 24 GB machine)"}
    python = Path(AUTO_CIRCUIT_PYTHON)
    if not python.exists():
        msg = (
            f"auto-circuit peer skipped: no interpreter at {python} (set KC_AUTO_CIRCUIT_PYTHON, "
            "or see benchmarks/README.md to create /tmp/ac-venv)"
        )
        print(msg, flush=True)
        return {"skipped": msg}
    out = checkpoint / "auto_circuit.json"
    print(f"== {shape}: auto-circuit peer ({python})", flush=True)
    proc = subprocess.run(
        [
            str(python),
            str(HERE / "peer_auto_circuit.py"),
            str(checkpoint),
            "--repeats",
            str(args.repeats),
            "--out",
            str(out),
        ],
        env=env,
    )
    if proc.returncode != 0 or not out.exists():
        msg = f"auto-circuit peer skipped: its script exited with {proc.returncode} (see output above)"
        print(msg, flush=True)
        return {"skipped": msg}
    return json.loads(out.read_text())


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def triple(q: dict[str, float]) -> str:
    """A ratio's three estimates: median of per-repeat wall ratios · ratio of wall minima · CPU-time ratio."""
    return f"**{q['wall']:.2f}** · {q['wall_min']:.2f} · {q['cpu']:.2f}"


def table(results: list[dict]) -> str:
    lines = [
        "| shape | edges | load | EAP s | **EAP / floor** | EAP-IG s | **EAP-IG / floor** | fwd s "
        "| circuit_logits s | **eval / fwd** | masked fwd / fwd | corrupt collect / fwd | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        w, c, q = r["median"]["wall"], r["median"]["cpu"], r["ratio"]
        lines.append(
            f"| {r['shape']} | {r['n_edges']} | {r['median']['load']:.1f} | {w['eap']:.2f} ({c['eap']:.2f}) | "
            f"{triple(q['eap/floor'])} | {w['eap_ig']:.2f} ({c['eap_ig']:.2f}) | {triple(q['eap_ig/floor'])} | "
            f"{w['fwd_eval']:.2f} ({c['fwd_eval']:.2f}) | {w['circuit_logits']:.2f} ({c['circuit_logits']:.2f}) | "
            f"{triple(q['circuit_logits/fwd'])} | {triple(q['masked_fwd/fwd'])} | {triple(q['corrupt_collect/fwd'])} | "
            f"{r['rss_kc_gb']:.2f} |"
        )
    peers = [
        "",
        "| shape | peer | peer s for the batch of 16, wall (CPU) | **ours / peer**, wall · CPU | Pearson | Spearman | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tl = r.get("tl")
        if tl and "skipped" not in tl:
            s, q, same = tl["seconds_batch_extrapolated"], tl["ours_batch/tl_batch"], tl["ours/tl_same_pairs"]
            peers.append(
                f"| {r['shape']} | TransformerLens 4.3 `attribution_patch` (edge) | {s['wall']:.1f} ({s['cpu']:.1f}); "
                f"{tl['pairs']} pairs timed, ×{N_PROMPTS / tl['pairs']:g} | **{q['wall']:.3f}** · {q['cpu']:.3f}; on the same "
                f"{tl['pairs']} pairs, timed right after it: {same['wall']:.3f} · {same['cpu']:.3f} | "
                f"{tl['pearson']:.3f} | {tl['spearman']:.3f} | its gradient is taken on the corrupt run; taken there too, "
                f"ours agrees: r = {tl['pearson_same_point']:.6f}, max rel. diff {tl['max_rel_diff_same_point']:.1e} |"
            )
        elif tl:
            peers.append(f"| {r['shape']} | TransformerLens | – | – | – | – | {tl['skipped']} |")
        ac = r.get("auto_circuit", {})
        if ac and "skipped" not in ac:
            # our EAP time from the run that wrote the peer's input (the same machine conditions)
            w = ac.get("ours_eap_seconds", r["median"]["wall"]["eap"])
            c = ac.get("ours_eap_cpu_seconds", r["median"]["cpu"]["eap"])
            peers.append(
                f"| {r['shape']} | auto-circuit 1.0.1 `mask_gradient_prune_scores` (EAP) | {ac['seconds']:.1f} ({ac['cpu_seconds']:.1f}) | "
                f"**{w / ac['seconds']:.3f}** · {c / ac['cpu_seconds']:.3f} | {ac['pearson']:.6f} | {ac['spearman']:.6f} | "
                f"own process, peak RSS {ac['rss_gb']:.2f} GB, max rel. diff {ac['max_rel_diff']:.1e}; {ac['note']} |"
            )
        elif ac and r["shape"] != "gpt2-medium":
            peers.append(f"| {r['shape']} | auto-circuit | – | – | – | – | {ac['skipped']} |")
    return "\n".join(lines + peers)


def machine_line(results: list[dict]) -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    loads = ", ".join(f"{r['shape']} {r['load_start']}→{r['load_end']} ({r.get('date', '?')})" for r in results)
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"({THREADS} threads), Python {platform.python_version()}; 1-min load average at start→end: {loads}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="GPT-2-small shape only")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported; ≥ 3)")
    parser.add_argument("--repeats-medium", type=int, help="repeats for GPT-2-medium (default: --repeats)")
    parser.add_argument(
        "--peer-pairs", type=int, default=4, help="prompt pairs the TransformerLens peer is timed on (0: skip)"
    )
    parser.add_argument("--peer-pairs-medium", type=int, default=1, help="the same for GPT-2-medium (its peer is slow)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="shapes to run (default: small and medium)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other shapes' rows from the last run (benchmarks/results.json) in the report",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite results.md from results.json, measure nothing"
    )
    parser.add_argument("--no-auto-circuit", action="store_true", help="skip the auto-circuit peer")
    parser.add_argument("--build", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.build:
        build_checkpoint(args.build[0], Path(args.build[1]))
        return
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.repeats, args.peer_pairs, args.out)
        return

    if args.report_only:
        write_report(json.loads(RAW_RESULTS.read_text()), args, 0.0)
        return
    shapes = args.shapes or (["gpt2-small"] if args.quick else ["gpt2-small", "gpt2-medium"])
    start = time.perf_counter()
    kept: list[dict] = []
    if args.merge and RAW_RESULTS.exists():
        kept = [r for r in json.loads(RAW_RESULTS.read_text()) if r["shape"] not in shapes]
    results: list[dict] = []
    previous = (
        {r["shape"]: r for r in json.loads(RAW_RESULTS.read_text())} if args.merge and RAW_RESULTS.exists() else {}
    )
    with tempfile.TemporaryDirectory(prefix="kc-bench-") as tmp:
        for shape in shapes:
            res = run_shape(shape, args, Path(tmp))
            old_ac = previous.get(shape, {}).get("auto_circuit", {})
            if args.no_auto_circuit and old_ac and "skipped" not in old_ac:  # keep the last measured peer
                res["auto_circuit"] = dict(
                    old_ac, note=old_ac.get("note", "") + f"; kept from the run of {previous[shape].get('date', '?')}"
                )
            results.append(res)
            merged = sorted(kept + results, key=lambda r: list(SHAPES).index(r["shape"]))
            write_report(merged, args, time.perf_counter() - start)  # after each shape: a crash keeps the rest


def write_report(results: list[dict], args: argparse.Namespace, seconds: float) -> None:
    text = table(results)
    medium = next((r for r in results if r["shape"] == "gpt2-medium"), None)
    notes = [
        f"Batch {N_PROMPTS} prompts × {N_TOKENS} tokens, random weights, vocabulary {VOCAB}, EAP-IG m = {IG_STEPS}, "
        f"circuit = top {CIRCUIT_EDGES} edges by |EAP score|, then pruned ({', '.join(str(r['circuit_edges']) + ' kept on ' + r['shape'] for r in results)}), "
        f"patch ablation; {', '.join(str(len(r['rows'])) + ' repeats on ' + r['shape'] for r in results)}."
        + (f" Wall time of the last invocation {seconds:.0f} s." if seconds else ""),
        "Times: median wall seconds (median CPU seconds of the process). Ratios: **median of the per-repeat wall-clock "
        "ratios** · ratio of the wall-clock minima · median of the per-repeat CPU-time ratios. The machine is shared, so a "
        "pass's wall time can swing several-fold; the CPU-time ratio is the steadiest estimate of the work done.",
        "Floors: EAP = 2 plain forwards + 1 forward/backward (grad w.r.t. the input embedding only, parameters frozen); "
        f"EAP-IG = 2 forwards + {IG_STEPS} forward/backward passes; same bridge model, same batch, no kc_utils hooks. "
        f"eval / fwd = `circuit_logits` (corrupt collection + masked forward) over one plain forward, each the fastest of "
        f"{EVAL_ROUNDS} interleaved rounds within a repeat; masked fwd and corrupt collect are its two parts.",
        "Peak RSS = `ru_maxrss` of the measuring process (kc_utils work only; TransformerLens peer excluded: "
        + ", ".join(f"{r['shape']} {fmt(r.get('rss_with_tl_gb'))} GB with it" for r in results)
        + ").",
    ]
    if medium is not None:
        notes.append(
            f"GPT-2-medium peak RSS {medium['rss_kc_gb']:.2f} GB: {'within' if medium['rss_kc_gb'] < 24 else 'OVER'} 24 GB."
        )
    report = f"{machine_line(results)}\n\n{text}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + report)
    RESULTS.write_text("# Benchmark results (`benchmarks/attribution.py`)\n\n" + report)
    RAW_RESULTS.write_text(json.dumps(results, indent=1))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
