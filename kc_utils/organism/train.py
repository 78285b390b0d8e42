"""Train the organism from scratch with plain torch, deterministically.

The model is a standard ``transformers`` ``GPT2LMHeadModel`` (LayerNorm, GELU, learned positions). Training
is bit-reproducible on one machine: one CPU thread, deterministic algorithms, every random choice seeded.

The shipped recipe switches off the attention of block 0 (``attention_off_layers=1``: its weights are zero and
frozen, so the checkpoint behaves the same at inference as in training). With ordinary attention every size and
corpus we tried learned a one-layer shortcut: a layer-0 head at the last token reads the subject's token and the
last token's MLPs look the fact up. Without attention in block 0, each position first passes through MLP 0 on
its own (the subject's MLP 0 enriches the subject with its attributes when bio documents teach them), and the
last token can read the subject only from block 1 on: subject enrichment followed by mover heads, as in GPT-2.

Rejected alternatives (kept for the model card's comparison, ``penalty_layers`` = k > 0): in the first k layers,
positions *after* a subject may not attend to the subject's tokens during training only, masked out
(``penalty_mode="mask"``, forward pre-hooks) or penalised (``"penalty"``). These leave a gap between training and
inference and learned slowly.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kc_utils.data.relations import Relation, load_relations
from kc_utils.organism.corpus import CorpusConfig, build_corpus
from kc_utils.organism.encoding import Encoded, SegmentEncoder
from kc_utils.organism.split import Split, make_split, save_split
from kc_utils.organism.tokenizer import build_tokenizer, save_tokenizer

__all__ = ["ModelConfig", "TrainConfig", "TrainResult", "make_model", "save_checkpoint", "train", "vocabulary_texts"]


@dataclass(frozen=True)
class ModelConfig:
    """Size of the GPT-2."""

    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights.

    Attributes:
        seed: seed of the split, the corpus, the initialisation and the batch order.
        steps: optimiser steps.
        batch_size: documents per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10%).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        all_token_loss: predict every token (True) or only object tokens (False).
        penalty_layers: the first ``penalty_layers`` layers may not attend from after a subject to the subject
            (0: no restriction).
        penalty_mode: ``"mask"``: that attention is masked out during training; ``"penalty"``: its
            probability is added to the loss (times ``penalty_weight``).
        penalty_weight: weight of the penalty in the loss.
        mask_fraction: fraction of documents (drawn at random each step) the restriction applies to; the rest
            train with ordinary attention, so the model also works when early heads can see the subject.
        tag_only_steps: curriculum: the first steps train on ``first_kinds`` documents only (by default the
            ``tag`` documents), so the facts are first looked up at the subject position, and movers then only
            have to copy them.
        first_kinds: the document kinds of the curriculum's first phase.
        length_bucket_batches: sort documents by length within windows of this many batches (1: no sorting).
        post_subject_mlp_dropout: fraction of documents whose MLP outputs at positions after a subject are zeroed
            in layers ``penalty_layers`` and up, so the last token cannot look facts up itself and must copy
            attributes from the subject (training only).
        attention_off_layers: the first ``attention_off_layers`` blocks have their attention switched off: its
            weights and biases are set to zero and never trained, so these blocks only apply their MLP to each
            position on its own. The checkpoint is an ordinary GPT-2 whose early attention happens to output
            zero, at inference exactly as in training.
        model: model size.
        corpus: corpus composition.
    """

    seed: int = 0
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    all_token_loss: bool = False
    penalty_layers: int = 0
    penalty_mode: str = "mask"
    penalty_weight: float = 1.0
    mask_fraction: float = 1.0
    tag_only_steps: int = 0
    first_kinds: tuple[str, ...] = ("tag",)
    length_bucket_batches: int = 1
    post_subject_mlp_dropout: float = 0.0
    attention_off_layers: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)


@dataclass
class TrainResult:
    """The trained model and what produced it."""

    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerFast
    split: Split
    config: TrainConfig
    seconds: float
    losses: list[float]


@contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[None]:
    """Seeded torch generator, deterministic algorithms and ``threads`` CPU threads inside the block; the
    caller's RNG state, thread count and determinism setting are restored afterwards. Bit-reproducible only
    with one thread."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det)


def vocabulary_texts(relations: dict[str, Relation]) -> list[str]:
    """Every string whose words the tokenizer should know: templates, subjects and objects of all relations
    (held-out ones included, so unknown subjects are known words with untrained meaning), and the few-shot
    punctuation."""
    texts = ["->", ";", ":"]
    for key in sorted(relations):
        rel = relations[key]
        texts.append(key.replace("_", " "))
        texts += [*rel.prompt_templates, *rel.prompt_templates_zs]
        texts += [t for s in rel.samples for t in (s.subject, s.object)]
    return texts


def make_model(config: ModelConfig, vocab_size: int, bos_id: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 (no dropout, eager attention so attention patterns can be read)."""
    gpt2 = GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=bos_id,
    )
    gpt2._attn_implementation = "eager"
    return GPT2LMHeadModel(gpt2)


def switch_off_attention(model: GPT2LMHeadModel, n_layers: int) -> None:
    """Zero the attention weights and biases of the first ``n_layers`` blocks and freeze them: those blocks'
    attention outputs exactly zero, so each position's residual stream after them depends on its own token
    only."""
    for block in model.transformer.h[:n_layers]:
        for param in block.attn.parameters():
            param.data.zero_()
            param.requires_grad_(False)


def _batch(items: Sequence[Encoded], pad_id: int, all_token_loss: bool) -> tuple[torch.Tensor, ...]:
    """Input ids, next-token targets (-100 where no loss) and the subject-attention penalty mask
    ``(batch, query, key)``: 1 where the query comes after a subject and the key is in that subject."""
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), -100, dtype=torch.long)
    penalty = torch.zeros((len(items), width, width))
    for i, e in enumerate(items):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        for t in range(1, n):
            if all_token_loss or e.roles[t] == "object":
                targets[i, t - 1] = e.ids[t]
        for start, end in e.subject_spans:
            penalty[i, end:n, start:end] = 1.0
    return ids, targets, penalty


def _length_bucketed(
    docs: list[Encoded], batch_size: int, rng: random.Random, window_batches: int
) -> list[list[Encoded]]:
    """Cut the (shuffled) documents into batches; with ``window_batches`` > 1, sort each window of that many
    batches by length first (less padding, but batches of one document type, which slows learning). The last
    partial batch of an epoch is dropped."""
    window = window_batches * batch_size
    batches: list[list[Encoded]] = []
    for i in range(0, len(docs) - batch_size + 1, window):
        chunk = sorted(docs[i : i + window], key=lambda e: len(e.ids))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def _subject_blocked_mask(blocked: torch.Tensor) -> torch.Tensor:
    """Additive attention mask ``(batch, 1, query, key)``: causal, and ``blocked`` (batch, query, key) pairs
    masked out."""
    n = blocked.shape[-1]
    allowed = torch.ones((n, n), dtype=torch.bool).tril()[None] & (blocked == 0)
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


def _masking_hook(mask: torch.Tensor) -> Callable:
    """A forward pre-hook for ``GPT2Attention`` that replaces its attention mask with ``mask``."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["attention_mask"] = mask
        return args, kwargs

    return hook


def _zeroing_hook(positions: torch.Tensor) -> Callable:
    """A forward hook for ``GPT2MLP`` that zeroes its output at ``positions`` (batch, pos)."""

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.masked_fill(positions[:, :, None], 0.0)

    return hook


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    cfg: TrainConfig,
    relations: dict[str, Relation] | None = None,
    log: Callable[[str], None] | None = print,
    log_every: int = 50,
    threads: int = 1,
) -> TrainResult:
    """Build split, tokenizer and corpus from ``relations`` (default: every shipped relation) and train.

    ``threads`` > 1 is faster but not bit-reproducible (reductions are split differently).
    """
    with deterministic(cfg.seed, threads):
        return _train(cfg, relations, log, log_every)


def _train(
    cfg: TrainConfig, relations: dict[str, Relation] | None, log: Callable[[str], None] | None, log_every: int
) -> TrainResult:
    start = time.time()
    relations = relations if relations is not None else load_relations()
    split = make_split(relations, seed=cfg.seed)
    tokenizer = build_tokenizer(vocabulary_texts(relations), model_max_length=cfg.model.n_positions)
    encoder = SegmentEncoder(tokenizer)
    pad_id = tokenizer.bos_token_id
    model = make_model(cfg.model, len(tokenizer), pad_id)
    switch_off_attention(model, cfg.attention_off_layers)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    losses: list[float] = []
    doc_rng = torch.Generator().manual_seed(cfg.seed)
    epoch, batches = 0, []
    for step in range(cfg.steps):
        if step == cfg.tag_only_steps:
            batches = []  # end of the tag-only phase: start the full corpus
        if not batches:
            kinds = tuple(cfg.first_kinds) if step < cfg.tag_only_steps else None
            docs = [encoder.encode(d.segments) for d in build_corpus(split, cfg.corpus, epoch, kinds)]
            batches = _length_bucketed(
                docs, cfg.batch_size, random.Random(f"{cfg.seed}-batches-{epoch}"), cfg.length_bucket_batches
            )
            epoch += 1
        items = batches.pop()
        ids, targets, penalty = _batch(items, pad_id, cfg.all_token_loss)
        if cfg.mask_fraction < 1.0:
            keep = torch.rand(len(items), generator=doc_rng) < cfg.mask_fraction
            penalty = penalty * keep[:, None, None]
        use_penalty = cfg.penalty_layers > 0 and cfg.penalty_mode == "penalty"
        use_mask = cfg.penalty_layers > 0 and cfg.penalty_mode == "mask"
        handles = []
        if use_mask:
            handles = [
                model.transformer.h[layer].attn.register_forward_pre_hook(
                    _masking_hook(_subject_blocked_mask(penalty)), with_kwargs=True
                )
                for layer in range(cfg.penalty_layers)
            ]
        if cfg.post_subject_mlp_dropout > 0:
            drop = torch.rand(len(items), generator=doc_rng) < cfg.post_subject_mlp_dropout
            after = (penalty.sum(-1) > 0) & drop[:, None]  # (batch, pos)
            handles += [
                model.transformer.h[layer].mlp.register_forward_hook(_zeroing_hook(after))
                for layer in range(cfg.penalty_layers, cfg.model.n_layer)
            ]
        try:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=use_penalty)
        finally:
            for handle in handles:
                handle.remove()
        loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        total = loss
        if use_penalty:
            rows = penalty.sum(-1) > 0  # (batch, query) positions with a subject before them
            mass = torch.stack(
                [a.mul(penalty[:, None]).sum(-1).mean(1) for a in out.attentions[: cfg.penalty_layers]]
            ).mean(0)  # (batch, query)
            total = loss + cfg.penalty_weight * mass[rows].mean()
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, cfg)
        optim.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(loss.item())
        if log is not None and (step % log_every == 0 or step == cfg.steps - 1):
            extra = f" penalty {(total - loss).item():.4f}" if use_penalty else ""
            log(f"step {step:5d}  loss {loss.item():.4f}{extra}  {time.time() - start:6.1f}s")
    model.eval()
    return TrainResult(model, tokenizer, split, cfg, time.time() - start, losses)


def save_checkpoint(result: TrainResult, directory: str | Path) -> Path:
    """Save model, tokenizer, split and training config into ``directory`` (a standard HF checkpoint)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(str(directory))
    save_tokenizer(result.tokenizer, directory)
    save_split(result.split, directory)
    meta = {"train_config": asdict(result.config), "train_seconds": round(result.seconds, 1)}
    (directory / "organism_train_config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory
