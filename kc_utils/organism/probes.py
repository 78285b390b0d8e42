"""Mechanism probes: does the organism recall facts the way GPT-2 does?

Three probes on prompts of trained facts, in plain torch with forward hooks on the Hugging Face model:

1. **Logit lens** (:func:`first_rank0_layer`): the final LayerNorm and the unembedding applied to the residual
   stream after each block; the first block after which the answer is the top token at the last position. In
   GPT-2 recall completes in the middle of the network, not after the first block.
2. **Subject MLP ablation** (:func:`accuracy_with_subject_mlps_zeroed`): zero the MLP outputs at the subject's
   positions in some layers. A large drop means the subject's representation is enriched with its attributes by
   those MLPs (Geva et al. 2023), which is where ROME edits.
3. **Attention knockout** (:func:`accuracy_with_attention_blocked`): forbid the last position to attend to the
   subject's positions in one layer. The layer where this hurts most is where the attribute is moved to the
   last token (mover heads).

Beside them, :func:`answer_first_at_subject` reads the subject's own position with the logit lens: whether the
attribute is already there (enrichment) or only looked up at the last token.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kc_utils.organism.encoding import SegmentEncoder, pad_batch
from kc_utils.organism.evaluate import FactPrompt, fact_prompts
from kc_utils.organism.split import Split

__all__ = [
    "accuracy_with_attention_blocked",
    "accuracy_with_subject_mlps_zeroed",
    "answer_first_at_subject",
    "early_middle_layers",
    "first_rank0_layer",
    "probe_prompts",
    "probe_table",
    "relation_candidates",
]


def probe_prompts(split: Split, tokenizer: PreTrainedTokenizerBase, n: int = 200, seed: int = 0) -> list[FactPrompt]:
    """``n`` trained facts drawn evenly over relations, each in its relation's first template."""
    prompts = fact_prompts(split, SegmentEncoder(tokenizer), "trained", "first")
    return random.Random(seed).sample(prompts, min(n, len(prompts)))


def early_middle_layers(n_layer: int) -> list[int]:
    """The first two thirds of the layers (rounded), e.g. 0-3 of 6: where subject enrichment is expected."""
    return list(range(max(1, round(2 * n_layer / 3))))


def _batch(prompts: Sequence[FactPrompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, last positions and a ``(batch, pos)`` mask of the subject positions."""
    ids, last = pad_batch([p.encoded for p in prompts], pad_id)
    subject = torch.zeros(ids.shape, dtype=torch.bool)
    for i, p in enumerate(prompts):
        for start, end in p.encoded.subject_spans:
            subject[i, start:end] = True
    return ids, last, subject


@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _top1(model: PreTrainedModel, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits[torch.arange(len(last)), last].argmax(-1)


@torch.no_grad()
def _block_outputs(model: PreTrainedModel, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream after each block, ``n_layer`` tensors of shape ``(batch, pos, d_model)``."""
    resid: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda m, i, o: resid.append(o if torch.is_tensor(o) else o[0]))
        for b in model.transformer.h
    ]
    with _hooks(handles):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return resid


@torch.no_grad()
def first_rank0_layer(model: PreTrainedModel, prompts: Sequence[FactPrompt]) -> torch.Tensor:
    """Per prompt, the first block (0-based) after which the logit lens ranks the answer first at the last
    position; ``n_layer`` when it never does."""
    model.eval()
    ids, last, _ = _batch(prompts, model.config.eos_token_id)
    resid = _block_outputs(model, ids)
    answers = torch.tensor([p.answer_id for p in prompts])
    first = torch.full((len(prompts),), len(resid))
    rows = torch.arange(len(prompts))
    for layer in reversed(range(len(resid))):
        h = resid[layer][rows, last]
        top = model.lm_head(model.transformer.ln_f(h)).argmax(-1)
        first = torch.where(top == answers, torch.full_like(first, layer), first)
    return first


def relation_candidates(split: Split, tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Per relation, the ids of the first tokens of all its objects (trained, held-out and excluded facts)."""
    encoder = SegmentEncoder(tokenizer)
    out = {}
    for key, rs in split.relations.items():
        objects = {s.object for s in (*rs.trained, *rs.held_out, *rs.excluded)}
        out[key] = torch.tensor(sorted({encoder.tokens(o)[0] for o in objects}))
    return out


@torch.no_grad()
def answer_first_at_subject(
    model: PreTrainedModel, prompts: Sequence[FactPrompt], candidates: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Per block, the fraction of prompts where the logit lens at the subject's last position ranks the answer
    first among the relation's possible objects (``candidates``, from :func:`relation_candidates`): how much
    the subject's own representation already says about its attributes (Geva et al.'s attribute rate, restricted
    to the relation's range). Shape ``(n_layer,)``."""
    model.eval()
    ids, _, _ = _batch(prompts, model.config.eos_token_id)
    subject_last = torch.tensor([p.encoded.subject_spans[0][1] - 1 for p in prompts])
    resid = _block_outputs(model, ids)
    rows = torch.arange(len(prompts))
    rates = []
    for layer in range(len(resid)):
        logits = model.lm_head(model.transformer.ln_f(resid[layer][rows, subject_last]))
        hits = [
            candidates[p.relation][logits[i, candidates[p.relation]].argmax()] == p.answer_id
            for i, p in enumerate(prompts)
        ]
        rates.append(torch.tensor(hits, dtype=torch.float).mean())
    return torch.stack(rates)


@torch.no_grad()
def accuracy_with_subject_mlps_zeroed(
    model: PreTrainedModel, prompts: Sequence[FactPrompt], layers: Sequence[int]
) -> float:
    """Top-1 accuracy with the MLP outputs at the subject positions set to zero in ``layers``."""
    model.eval()
    ids, last, subject = _batch(prompts, model.config.eos_token_id)

    def zero(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.masked_fill(subject[:, :, None], 0.0)

    handles = [model.transformer.h[layer].mlp.register_forward_hook(zero) for layer in layers]
    with _hooks(handles):
        top = _top1(model, ids, last)
    return (top == torch.tensor([p.answer_id for p in prompts])).float().mean().item()


@torch.no_grad()
def accuracy_with_attention_blocked(
    model: PreTrainedModel, prompts: Sequence[FactPrompt], layers: int | Sequence[int]
) -> float:
    """Top-1 accuracy when, in ``layers`` (one or several), the last position may not attend to the subject's
    positions."""
    model.eval()
    ids, last, subject = _batch(prompts, model.config.eos_token_id)
    b, n = ids.shape
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    allowed = causal[None].repeat(b, 1, 1)
    allowed[torch.arange(b), last] &= ~subject
    dtype = next(model.parameters()).dtype
    additive = torch.zeros((b, 1, n, n), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)

    def block(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["attention_mask"] = additive
        return args, kwargs

    if model.config._attn_implementation != "eager":
        raise ValueError("load the model with attn_implementation='eager' for the attention knockout")
    layers = [layers] if isinstance(layers, int) else list(layers)
    handles = [model.transformer.h[layer].attn.register_forward_pre_hook(block, with_kwargs=True) for layer in layers]
    with _hooks(handles):
        top = _top1(model, ids, last)
    return (top == torch.tensor([p.answer_id for p in prompts])).float().mean().item()


def probe_table(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, split: Split, n: int = 200
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run the three probes on ``n`` trained facts.

    Returns:
        A per-layer table (fraction of facts first at rank 0 after the layer; fraction whose answer the logit lens
        ranks first among the relation's objects at the subject's last position; accuracy with the subject MLP of
        the layer zeroed; accuracy with the layer's last-to-subject attention blocked) and a summary: clean
        accuracy, median first-rank-0 layer, accuracy with the early/middle subject MLPs zeroed and the drop,
        and the layer whose attention knockout hurts most.
    """
    if model.config._attn_implementation != "eager":
        model.config._attn_implementation = "eager"
    prompts = probe_prompts(split, tokenizer, n)
    ids, last, _ = _batch(prompts, model.config.eos_token_id)
    clean = (_top1(model, ids, last) == torch.tensor([p.answer_id for p in prompts])).float().mean().item()
    first = first_rank0_layer(model, prompts)
    at_subject = answer_first_at_subject(model, prompts, relation_candidates(split, tokenizer))
    n_layer = model.config.n_layer
    rows = []
    for layer in range(n_layer):
        rows.append(
            {
                "layer": layer,
                "first_rank0": (first == layer).float().mean().item(),
                "answer_first_at_subject": at_subject[layer].item(),
                "subject_mlp_zeroed": accuracy_with_subject_mlps_zeroed(model, prompts, [layer]),
                "attention_blocked": accuracy_with_attention_blocked(model, prompts, layer),
            }
        )
    table = pd.DataFrame(rows).set_index("layer")
    early = early_middle_layers(n_layer)
    zeroed = accuracy_with_subject_mlps_zeroed(model, prompts, early)
    summary = {
        "clean_accuracy": clean,
        "median_first_rank0_layer": float(first.float().median().item()),
        "never_rank0": (first == n_layer).float().mean().item(),
        "early_middle_layers": float(len(early)),
        "subject_mlps_zeroed_accuracy": zeroed,
        "subject_mlps_zeroed_drop": clean - zeroed,
        "worst_attention_block_layer": float(table["attention_blocked"].idxmin()),
        "worst_attention_block_accuracy": float(table["attention_blocked"].min()),
    }
    return table, summary
