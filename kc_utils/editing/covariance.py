"""ROME's key statistics: the second moment ``C = E[k kᵀ]`` of an MLP's keys over text the model has read.

ROME (Meng et al. 2022, Eq. 2) writes the new fact along ``u = C⁻¹ k*``: among all rank-one updates that map
``k*`` to ``v*``, the one that disturbs the other keys least in the least-squares sense weighted by how often
they occur. ``C`` is the uncentred second moment of the keys (the MLP's hidden vectors, the input of its output
projection) over every token of some text.

* For the organism the text is its own training corpus (:func:`organism_texts`), so ``C`` is the statistic
  ROME assumes: the keys of what the model was trained on.
* For a pretrained model nothing ships its corpus, so the text must be chosen: :func:`generated_texts` (text
  the model samples itself from its start token, as the authors' ROME makes its context prefixes; it follows
  the model's own distribution but is short and repetitive) or :func:`relation_texts` (every sentence of the
  relation files, object written in: real facts, but templated and narrow). Notebook 03 says which it used and
  measures how much the choice changes the edits.
* Without text, :meth:`KeyStatistics.identity` gives ``C = I`` (a stated fallback: the update then disturbs keys
  in proportion to their overlap with ``k*``).

A small ridge ``λ·mean(diag C)·I`` keeps ``C`` invertible when the text has fewer distinct keys than
``d_mlp``; the ridge is part of the returned ``C``, so ``C`` and ``C⁻¹`` are exactly each other's inverse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.organism.paths import WEIGHTS_DIR

__all__ = [
    "KeyStatistics",
    "generated_texts",
    "key_statistics",
    "organism_texts",
    "plain_copy",
    "relation_texts",
    "sampled_token_ids",
]


@dataclass(frozen=True)
class KeyStatistics:
    """``C`` and ``C⁻¹`` of one layer's keys.

    Attributes:
        layer: the MLP layer.
        second_moment: ``Float[d_mlp, d_mlp]`` ``C`` (ridge included), float64.
        inverse: ``Float[d_mlp, d_mlp]`` ``C⁻¹``, float64.
        n_tokens: tokens the estimate is built from (0 for the identity).
        source: where ``C`` comes from, in words (``"identity"``, ``"2000 documents of the organism's corpus"``).
    """

    layer: int
    second_moment: Float[Tensor, "m m"]
    inverse: Float[Tensor, "m m"]
    n_tokens: int
    source: str

    @classmethod
    def identity(cls, layer: int, d_mlp: int) -> KeyStatistics:
        """The fallback ``C = I``."""
        eye = torch.eye(d_mlp, dtype=torch.float64)
        return cls(layer, eye, eye.clone(), 0, "identity (C = I)")

    @classmethod
    def from_second_moment(cls, layer: int, second_moment: Tensor, n_tokens: int, source: str) -> KeyStatistics:
        """Statistics from a symmetric positive-definite ``C`` (its inverse computed here, float64)."""
        c = second_moment.double()
        c = (c + c.T) / 2
        return cls(layer, c, torch.linalg.inv(c), n_tokens, source)


def organism_texts(n_documents: int | None = None, seed: int = 0) -> list[str]:
    """Documents of the organism's training corpus (epoch 0, its own shuffled order), as plain text.

    Args:
        n_documents: how many (the first ones of the epoch); ``None`` for all ~12k.
        seed: unused beyond the corpus's recorded seed unless the recorded config is missing.
    """
    from kc_utils.organism.corpus import CorpusConfig, build_corpus
    from kc_utils.organism.split import load_split

    recorded = json.loads((WEIGHTS_DIR / "organism_train_config.json").read_text(encoding="utf-8"))
    corpus = dict(recorded.get("train_config", {}).get("corpus", {"seed": seed}))
    corpus["bio_exclude"] = tuple(corpus.get("bio_exclude", ()))
    documents = build_corpus(load_split(), CorpusConfig(**corpus), epoch=0)
    chosen = documents if n_documents is None else documents[:n_documents]
    return [d.text for d in chosen]


def plain_copy(model: Any, probe_tokens: int = 8, tolerance: float = 1e-4) -> torch.nn.Module | None:
    """A plain Hugging Face model with the bridge's weights, booted from the same checkpoint, or ``None``.

    A ``TransformerBridge``'s attention ignores Hugging Face's key/value cache; the plain copy uses it, so
    generation costs one new position per step instead of the whole sequence. The copy is accepted only if its
    logits on a probe sequence (the start token and ``probe_tokens`` - 1 others) equal the bridge's within
    ``tolerance`` times the logits' scale: a model edited since it was loaded, or a checkpoint no longer on
    disk, gives ``None``.
    """
    source = models.model_source(model)
    if source is None:
        return None
    from transformers import AutoModelForCausalLM

    hf = models.hf_model(model)
    try:
        plain = AutoModelForCausalLM.from_pretrained(source, dtype=hf.dtype, local_files_only=True)
    except (OSError, ValueError):
        return None
    plain = plain.to(models.model_device(model)).eval()
    vocab = int(hf.config.vocab_size)
    probe = (torch.arange(probe_tokens, device=models.model_device(model)) * 7919 % vocab)[None]
    with torch.no_grad():
        want, got = hf(probe).logits, plain(probe).logits
    if want.shape != got.shape or (want - got).abs().max() > tolerance * max(1.0, float(want.abs().max())):
        return None
    return plain


def sampled_token_ids(
    model: Any, n: int, n_tokens: int, seed: int = 0, top_k: int = 5, batch_size: int = 64
) -> Int[Tensor, "n n_tokens"]:
    """``n`` token sequences the model samples itself from its start token (top-``top_k`` sampling, ``n_tokens``
    new tokens each, the start token not included), deterministic for a ``seed``.

    A ``TransformerBridge``'s attention recomputes every position and does not read Hugging Face's key/value
    cache, so cached steps through the bridge would see only the newest token (measured: SmolLM2 then writes
    "-,, and---"). Generation therefore runs on :func:`plain_copy` with the cache (one new position per step);
    where no verified copy exists (an edited model), on the bridge without the cache, a full forward pass over
    the sequence so far at each step (200 texts of 32 tokens: about 25 min for SmolLM2 on 2 cores). Both draw
    from the same distributions with the same random numbers.

    Raises:
        ValueError: ``n`` or ``n_tokens`` below 1, or a tokenizer with neither a BOS nor an EOS token.
    """
    if n < 1 or n_tokens < 1:
        raise ValueError(f"n and n_tokens must be >= 1, got {n} and {n_tokens}")
    tokenizer = model.tokenizer
    start = models.bos_token_id(model)
    start = next((t for t in (start, tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    if start is None:
        raise ValueError("the tokenizer has no BOS or EOS token to start generating from; pass texts instead")
    plain = plain_copy(model)
    generator = plain if plain is not None else models.hf_model(model)
    device = models.model_device(model)
    rows_out: list[Tensor] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for first in range(0, n, batch_size):
            rows = min(batch_size, n - first)
            ids = generator.generate(
                input_ids=torch.full((rows, 1), start, device=device),
                attention_mask=torch.ones(rows, 1, dtype=torch.long, device=device),
                do_sample=True,
                top_k=top_k,
                max_new_tokens=n_tokens,
                min_new_tokens=n_tokens,
                use_cache=plain is not None,
                pad_token_id=tokenizer.pad_token_id,
            )
            rows_out.append(ids[:, 1:].cpu())
    return torch.cat(rows_out)


def generated_texts(
    model: Any, n: int, n_tokens: int, seed: int = 0, top_k: int = 5, batch_size: int = 64
) -> list[str]:
    """``n`` texts the model samples itself from its start token (top-``top_k`` sampling, ``n_tokens`` new tokens
    each, as the authors' ``generate_fast`` makes ROME's context templates), deterministic for a ``seed``; the
    tokens of :func:`sampled_token_ids`, decoded without special tokens and stripped.

    Raises:
        ValueError: ``n`` or ``n_tokens`` below 1, or a tokenizer with neither a BOS nor an EOS token.
    """
    ids = sampled_token_ids(model, n, n_tokens, seed, top_k, batch_size)
    return [t.strip() for t in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def relation_texts(relations: Sequence[str] | None = None, max_per_relation: int | None = None) -> list[str]:
    """Sentences of the relation files: every prompt template with each sample's subject and object written in
    (``"The capital of France is Paris"``), in file order; ``relations`` = keys (default: all)."""
    from kc_utils.data.relations import list_relations, load_relation

    texts = []
    for key in relations or list_relations():
        rel = load_relation(key)
        sentences = [t.replace("{}", s.subject) + " " + s.object for s in rel.samples for t in rel.prompt_templates]
        texts += sentences if max_per_relation is None else sentences[:max_per_relation]
    return texts


def key_statistics(
    model: Any,
    layers: Sequence[int],
    texts: Sequence[str],
    batch_size: int = 64,
    ridge: float = 1e-3,
    source: str | None = None,
    progress: bool = True,
) -> dict[int, KeyStatistics]:
    """Estimate ``C = E[k kᵀ]`` of each layer's keys over every (non-pad) token of ``texts``, in one pass.

    Args:
        layers: MLP layers to estimate (one forward pass serves all of them).
        texts: the text the model is assumed to have read; BOS prepended as for prompts.
        ridge: ``λ`` of the ridge ``λ·mean(diag C)·I`` added to ``C``.
        source: a description for the report (default: ``"<n> texts"``).

    Raises:
        ValueError: no texts, or a layer out of range.
    """
    if not texts:
        raise ValueError("no texts given to estimate the key covariance; pass text or use KeyStatistics.identity")
    shape = models.model_shape(model)
    for layer in layers:
        if not 0 <= layer < shape.n_layers:
            raise ValueError(f"layer {layer} is out of range: this model has MLP layers 0..{shape.n_layers - 1}")
    hooks = [models.mlp_key_hook(layer) for layer in layers]
    sums: dict[int, Tensor] = {}
    n_tokens = 0
    pad = model.tokenizer.pad_token_id
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="key covariance", disable=not progress, leave=False):
        rows = models.tokenize(model, texts[start : start + batch_size])
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=models.model_device(model))
        mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows], device=tokens.device)
        with torch.no_grad(), models.without_edge_hooks(model):
            cache = models.cache_activations(model, tokens, hooks)
        for layer, hook in zip(layers, hooks):
            keys = cache[hook][mask].double()  # [n, d_mlp]
            sums[layer] = sums.get(layer, 0) + keys.T @ keys
        n_tokens += int(mask.sum())
    out = {}
    for layer in layers:
        c = sums[layer].cpu() / n_tokens
        c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
        out[layer] = KeyStatistics.from_second_moment(layer, c, n_tokens, source or f"{len(texts)} texts")
    return out
