"""Peer: auto-circuit 1.0.1's EAP on the checkpoint and batch of ``benchmarks/attribution.py``.

auto-circuit needs TransformerLens 2.x, so this script runs in its own virtual environment
(see ``benchmarks/README.md``); ``attribution.py`` calls it as a subprocess. Usage::

    /tmp/ac-venv/bin/python benchmarks/peer_auto_circuit.py CHECKPOINT_DIR --out result.json

``CHECKPOINT_DIR`` is a folder written by ``attribution.py``: a Hugging Face GPT-2 checkpoint plus
``kc_batch_and_scores.pt`` (the token batch and kc_utils' EAP scores). The checkpoint is loaded
offline — a ``HookedTransformerConfig`` built from the Hugging Face config and
``convert_gpt2_weights``, without LayerNorm folding or centring, like kc_utils' raw-weight bridge —
and wrapped with ``patchable_model``. EAP is ``mask_gradient_prune_scores(grad_function="logit",
answer_function="avg_diff", mask_val=0)``, which auto-circuit documents as exactly Syed et al.'s
EAP: one corrupt forward and one forward/backward on the clean prompts with every mask at 0.
Its score of an edge, ``(z_clean − z_corrupt)·∂(mean logit diff)/∂input``, is kc_utils' EAP score.

Writes ``{"seconds", "cpu_seconds", "rss_gb", "pearson", "spearman", "max_rel_diff", "logits_max_diff", "note"}``,
or ``{"skipped": reason}`` when auto-circuit is not importable; never exits non-zero for that.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path


def pearson(a, b) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def our_name(name: str, kind: str) -> str:
    """auto-circuit node name → kc_utils upstream (``kind="src"``) or receiver name."""
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if name.startswith("MLP "):
        return f"m{name[4:]}"
    parts = name[1:].split(".")  # A{layer}.{head}[.Q|K|V]
    base = f"a{parts[0]}.h{parts[1]}"
    return base if kind == "src" else f"{base}<{parts[2].lower()}>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    try:
        import transformer_lens as tl
        from auto_circuit.data import PromptDataLoader, PromptDataset
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
        from auto_circuit.utils.graph_utils import patchable_model
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
        from transformers import GPT2LMHeadModel
    except ImportError as err:
        args.out.write_text(json.dumps({"skipped": f"auto-circuit or TransformerLens 2.x not importable here ({err})"}))
        print(f"auto-circuit peer skipped: {err}")
        return

    data = torch.load(args.checkpoint / "kc_batch_and_scores.pt")
    hf = GPT2LMHeadModel.from_pretrained(args.checkpoint).eval()
    c = hf.config
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd,
        n_ctx=c.n_positions,
        d_vocab=c.vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        device="cpu",
    )
    model = tl.HookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    clean, corrupt = data["clean"], data["corrupt"]
    with torch.no_grad():
        logits_max_diff = float((model(clean) - hf(clean).logits).abs().max())
    del hf
    # the edge-patching configuration of auto_circuit.experiment_utils.load_tl_model
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.eval()
    for p in model.parameters():
        p.requires_grad = False

    assert bool((data["last_pos"] == clean.shape[1] - 1).all()), "last_seq slicing needs unpadded prompts"
    dataset = PromptDataset(
        clean, corrupt, [a.view(1) for a in data["answer"]], [a.view(1) for a in data["corrupt_answer"]]
    )
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=len(clean), shuffle=False)
    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))

    def eap():
        for wrapper in pm.dest_wrappers:  # mask gradients accumulate across calls
            wrapper.patch_mask.grad = None
        wall, cpu = time.perf_counter(), time.process_time()
        scores = mask_gradient_prune_scores(
            pm, loader, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0
        )
        return (time.perf_counter() - wall, time.process_time() - cpu), scores

    eap()  # warm-up
    runs = [eap() for _ in range(args.repeats)]
    seconds = statistics.median(t[0] for t, _ in runs)
    cpu_seconds = statistics.median(t[1] for t, _ in runs)
    prune_scores = runs[-1][1]

    ours = data["scores"]
    up = {n: i for i, n in enumerate(data["upstream"])}
    rx = {n: i for i, n in enumerate(data["receivers"])}
    theirs = torch.zeros_like(ours)
    mine = []
    for edge in pm.edges:
        u, r = up[our_name(edge.src.name, "src")], rx[our_name(edge.dest.name, "dest")]
        theirs[u, r] = float(edge.prune_score(prune_scores))
        mine.append((u, r))
    idx = torch.tensor(mine)
    a, b = ours[idx[:, 0], idx[:, 1]], theirs[idx[:, 0], idx[:, 1]]
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "ours_eap_seconds": data.get("eap_seconds"),  # kc_utils' EAP median in the run that wrote the batch
        "ours_eap_cpu_seconds": data.get("eap_cpu_seconds"),
        "runs": [t for t, _ in runs],
        "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "n_edges": len(mine),
        "pearson": pearson(a, b),
        "spearman": pearson(a.argsort().argsort().double(), b.argsort().argsort().double()),
        "max_rel_diff": float((a - b).abs().max() / b.abs().max()),
        "logits_max_diff": logits_max_diff,
        "note": f"{len(mine)} edges mapped; HookedTransformer vs HF logits max |Δ| {logits_max_diff:.1e}",
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"auto-circuit EAP: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU (median of {args.repeats}), r = {result['pearson']:.6f}"
    )


if __name__ == "__main__":
    main()
