"""Interventions on knowledge neurons and on the attention that selects them.

**Neurons** (Dai et al. 2022; Chen et al. 2025, §3): multiply chosen neurons' activations at one
position by a factor — 0 suppresses them, 2 enhances them — and read p(answer) at the last token.

**Attention as selector** ("knowledge synapses", Chen et al. 2025, §4): at the position where the
neurons are read, each head's attention weights to its most-attended earlier positions are multiplied
by a factor (0 or 2; the pattern is not renormalised, as a synapse is scaled on its own). If attention
selects which neurons fire, the knowledge neurons' activations and p(answer) move with it. BOS is
excluded from "most attended" by default: heads park attention there (an attention sink) and it
carries no content. Layers whose attention writes nothing (the organism's block 0) are found by
:func:`attention_layers` and should be left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from kc_utils import models
from kc_utils.data.prompts import PromptBatch
from kc_utils.neurons.attribution import answer_probability, neuron_activations
from kc_utils.neurons.positions import NeuronError, check_layers
from kc_utils.neurons.selection import random_like

__all__ = [
    "attention_layers",
    "attention_scaling_effect",
    "attention_scaling_hooks",
    "attention_scaling_table",
    "attention_summary",
    "intervention_summary",
    "neuron_scaling_hooks",
    "random_keys",
    "scale_neurons",
    "source_vs_paraphrase",
    "top_attended_keys",
]

Hook = tuple[str, Any]


def _check_factor(factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
        raise NeuronError(f"factor must be a number >= 0 (0 suppresses, 2 enhances), got {factor!r}")
    return float(factor)


def neuron_scaling_hooks(
    layers: Sequence[int], masks: Bool[Tensor, "b l n"], positions: Int[Tensor, "b"], factor: float
) -> list[Hook]:
    """Hooks multiplying the masked neurons of each prompt at its position by ``factor``.

    ``masks[i, j]`` marks the neurons of layer ``layers[j]`` scaled in prompt ``i``.
    """
    factor = _check_factor(factor)
    if masks.shape[1] != len(layers):
        raise NeuronError(f"masks cover {masks.shape[1]} layers but {len(layers)} layers were named")
    hooks = []
    rows = torch.arange(masks.shape[0], device=masks.device)
    for j, layer in enumerate(layers):
        if not bool(masks[:, j].any()):
            continue
        scale = torch.where(masks[:, j], factor, 1.0)

        def apply(activation: Tensor, hook: Any, scale: Tensor = scale) -> Tensor:
            activation = activation.clone()
            activation[rows, positions] = activation[rows, positions] * scale.to(activation.dtype)
            return activation

        hooks.append((models.mlp_hidden_hook(layer), apply))
    return hooks


def scale_neurons(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    layers: Sequence[int],
    masks: Bool[Tensor, "b l n"],
    factor: float,
) -> tuple[Float[Tensor, "b"], Float[Tensor, "b"]]:
    """p(answer) of each prompt before and after scaling its masked neurons by ``factor``."""
    layers = check_layers(model, layers)
    if masks.shape[0] != len(batch):
        raise NeuronError(f"give one neuron mask per prompt: {len(batch)} prompts but {masks.shape[0]} masks")
    before = answer_probability(model, batch)
    after = answer_probability(model, batch, neuron_scaling_hooks(layers, masks, positions, factor))
    return before, after


# ----------------------------------------------------------------------------- attention
def attention_layers(model: Any, batch: PromptBatch) -> list[int]:
    """Layers whose attention heads write something on this batch (not the organism's block 0)."""
    names = [models.head_result_hook(layer) for layer in range(int(model.cfg.n_layers))]
    with torch.no_grad(), models.only_head_results(model):
        cache = models.cache_activations(model, batch.clean, names)
    return [layer for layer, name in enumerate(names) if bool(cache[name].abs().amax() > 0)]


def top_attended_keys(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    layers: Sequence[int],
    k: int = 1,
    exclude_bos: bool = True,
) -> Int[Tensor, "b l h k"]:
    """Each head's ``k`` most-attended key positions from each prompt's ``positions`` (-1 where none).

    Keys are positions ``0 … position`` (``1 … position`` with ``exclude_bos``); fewer than ``k``
    candidates leave ``-1``.
    """
    n_layers = int(model.cfg.n_layers)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")
    names = [models.attn_pattern_hook(layer) for layer in layers]
    with torch.no_grad(), models.without_edge_hooks(model):
        cache = models.cache_activations(model, batch.clean, names)
    rows = torch.arange(len(batch), device=batch.clean.device)
    keys = []
    for name in names:
        pattern = cache[name][rows, :, positions].float()  # [b, h, key]
        key_pos = torch.arange(pattern.shape[-1], device=pattern.device)
        valid = key_pos[None, :] <= positions[:, None]
        if exclude_bos:
            valid &= key_pos[None, :] > 0
        pattern = pattern.masked_fill(~valid[:, None, :], -1.0)
        width = min(k, pattern.shape[-1])
        values, index = pattern.topk(width, dim=-1)
        index = index.masked_fill(values < 0, -1)
        if width < k:
            index = torch.cat([index, index.new_full((*index.shape[:-1], k - width), -1)], -1)
        keys.append(index)
    return torch.stack(keys, dim=1)


def random_keys(
    positions: Int[Tensor, "b"], avoid: Int[Tensor, "b l h k"], generator: torch.Generator, exclude_bos: bool = True
) -> Int[Tensor, "b l h k"]:
    """Random key positions of the same shape as ``avoid``, never one of ``avoid`` (-1 where none is left).

    The baseline of :func:`top_attended_keys`: as many keys per head, drawn uniformly from the
    other positions a head at ``positions`` can see.
    """
    out = torch.full_like(avoid, -1)
    b, n_layers, n_heads, k = avoid.shape
    for i in range(b):
        first = 1 if exclude_bos else 0
        for j in range(n_layers):
            for h in range(n_heads):
                taken = set(avoid[i, j, h].tolist())
                pool = [p for p in range(first, int(positions[i]) + 1) if p not in taken]
                wanted = sum(x >= 0 for x in avoid[i, j, h].tolist())
                if not pool or not wanted:
                    continue
                order = torch.randperm(len(pool), generator=generator)[: min(wanted, len(pool))]
                out[i, j, h, : len(order)] = torch.tensor([pool[o] for o in order.tolist()])
    return out


def attention_scaling_hooks(
    layers: Sequence[int], positions: Int[Tensor, "b"], keys: Int[Tensor, "b l h k"], factor: float
) -> list[Hook]:
    """Hooks multiplying each head's attention from ``positions`` to ``keys`` by ``factor`` (-1 keys skipped)."""
    factor = _check_factor(factor)
    if keys.shape[1] != len(layers):
        raise NeuronError(f"keys cover {keys.shape[1]} layers but {len(layers)} layers were named")
    rows = torch.arange(keys.shape[0], device=keys.device)
    hooks = []
    for j, layer in enumerate(layers):
        chosen = keys[:, j]  # [b, h, k]

        def apply(pattern: Tensor, hook: Any, chosen: Tensor = chosen) -> Tensor:
            scale = torch.ones(pattern.shape[0], pattern.shape[1], pattern.shape[-1] + 1, device=pattern.device)
            # index -1 lands in the extra last column, which is dropped
            scale.scatter_(-1, chosen.clamp(min=-1) % (pattern.shape[-1] + 1), factor)
            pattern = pattern.clone()
            pattern[rows, :, positions] = pattern[rows, :, positions] * scale[..., :-1].to(pattern.dtype)
            return pattern

        hooks.append((models.attn_pattern_hook(layer), apply))
    return hooks


def attention_scaling_effect(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    attention: Sequence[int],
    keys: Int[Tensor, "b l h k"],
    factor: float,
    neuron_layers: Sequence[int],
    masks: Bool[Tensor, "b l n"],
    baseline: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """p(answer) and the knowledge neurons' mean activation, before and after scaling attention.

    Args:
        attention: the attention layers scaled (``keys`` has one entry per layer).
        neuron_layers, masks: each prompt's knowledge neurons (read at ``positions``).
        baseline: ``{"p_before", "kn_before"}`` from an earlier call on the same prompts (saves two passes).

    Returns:
        ``{"p_before", "p_after", "kn_before", "kn_after"}``, each ``Float[b]``; the activations are the mean
        over the prompt's knowledge neurons (NaN for a prompt without any).
    """
    hooks = attention_scaling_hooks(attention, positions, keys, factor)
    n = masks.float().sum((1, 2))
    if baseline is None:
        before = neuron_activations(model, batch, positions, neuron_layers)
        baseline = {"p_before": answer_probability(model, batch), "kn_before": (before * masks).sum((1, 2)) / n}
    rows = torch.arange(len(batch), device=batch.clean.device)
    recorded: dict[int, Tensor] = {}

    def recorder(j: int) -> Any:
        def record(activation: Tensor, hook: Any) -> None:
            recorded[j] = activation[rows, positions].detach()

        return record

    recorders = [(models.mlp_hidden_hook(layer), recorder(j)) for j, layer in enumerate(neuron_layers)]
    p_after = answer_probability(model, batch, [*hooks, *recorders])
    after = torch.stack([recorded[j] for j in range(len(neuron_layers))], dim=1)
    return {
        "p_before": baseline["p_before"],
        "p_after": p_after,
        "kn_before": baseline["kn_before"],
        "kn_after": (after * masks).sum((1, 2)) / n,
    }


# ----------------------------------------------------------------------------- experiments
def _repeat(batch: PromptBatch, times: int) -> PromptBatch:
    return batch.select(torch.arange(len(batch)).repeat(times))


def source_vs_paraphrase(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    layers: Sequence[int],
    masks: Bool[Tensor, "f q l n"],
    factors: Sequence[float] = (0.0, 2.0),
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Scale each query's knowledge neurons in that query and in the fact's other queries.

    ``batch`` holds ``f`` facts × ``q`` queries, fact-major; ``masks[f, s]`` are query ``s``'s neurons.
    For every fact, source query ``s`` and factor, the source's neurons are scaled in every query of
    the fact (each at its own position). Baseline: ``n_random`` random sets with as many neurons per
    layer as the source's, scaled in the source query.

    Returns:
        One row per (fact, source, target, factor): ``fact, source, target, kind`` (``"source"``,
        ``"paraphrase"`` or ``"random"``; random rows average the draws), ``factor, n_neurons,
        p_before, p_after, delta`` (p_after − p_before) and ``delta_logprob`` (log p_after − log p_before:
        readable where p(answer) is near 1 and Δp saturates).
    """
    layers = check_layers(model, layers)
    n_facts, q = masks.shape[:2]
    if n_facts * q != len(batch):
        raise NeuronError(f"masks describe {n_facts} facts x {q} queries but the batch has {len(batch)} prompts")
    generator = torch.Generator().manual_seed(seed)
    before = answer_probability(model, batch)
    rows = []
    for f in range(n_facts):
        index = torch.arange(f * q, (f + 1) * q)
        # row r = s * q + t: the neurons of source s, scaled in target t
        pairs = batch.select(index.repeat(q))
        sources = torch.arange(q).repeat_interleave(q)
        pair_masks = masks[f][sources]
        pair_pos = positions[index.repeat(q)]
        draws = torch.stack(
            [torch.stack([random_like(masks[f, s], generator) for _ in range(n_random)]) for s in range(q)]
        ).flatten(0, 1)  # [q * n_random, l, n], source-major
        random_batch = batch.select(index.repeat_interleave(n_random))
        random_pos = positions[index.repeat_interleave(n_random)]
        for factor in factors:
            p_pairs = answer_probability(model, pairs, neuron_scaling_hooks(layers, pair_masks, pair_pos, factor))
            for r in range(q * q):
                s, t = r // q, r % q
                rows.append(dict(fact=f, source=s, target=t, kind="source" if s == t else "paraphrase",
                                 factor=float(factor), n_neurons=int(masks[f, s].sum()),
                                 p_before=float(before[index[t]]), p_after=float(p_pairs[r])))  # fmt: skip
            if n_random:
                p_random = answer_probability(
                    model, random_batch, neuron_scaling_hooks(layers, draws, random_pos, factor)
                )
                p_random = p_random.reshape(q, n_random).mean(1)
                for s in range(q):
                    rows.append(dict(fact=f, source=s, target=s, kind="random", factor=float(factor),
                                     n_neurons=int(masks[f, s].sum()), p_before=float(before[index[s]]),
                                     p_after=float(p_random[s])))  # fmt: skip
    table = pd.DataFrame(rows)
    table["delta"] = table["p_after"] - table["p_before"]
    table["delta_logprob"] = np.log(table["p_after"]) - np.log(table["p_before"])
    return table


def intervention_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of Δp and Δlog p by factor and kind (source / paraphrase / random).

    ``table`` is :func:`source_vs_paraphrase`'s.
    """
    grouped = table.groupby(["factor", "kind"])
    out = grouped.agg(
        delta_mean=("delta", "mean"),
        delta_std=("delta", lambda x: x.std(ddof=0)),
        logprob_mean=("delta_logprob", "mean"),
        logprob_std=("delta_logprob", lambda x: x.std(ddof=0)),
        p_before_mean=("p_before", "mean"),
        n=("delta", "size"),
    ).reset_index()
    order = {"source": 0, "paraphrase": 1, "random": 2}
    out = out.sort_values(["factor", "kind"], key=lambda c: c.map(order) if c.name == "kind" else c)
    return out.reset_index(drop=True)


def attention_scaling_table(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    attention: Sequence[int],
    neuron_layers: Sequence[int],
    masks: Bool[Tensor, "b l n"],
    factors: Sequence[float] = (0.0, 2.0),
    k: int = 1,
    n_random: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Scale attention to each head's ``k`` most-attended keys, one attention layer at a time and all together.

    Baseline (all layers together only): ``n_random`` draws of as many random other keys per head.

    Returns:
        One row per (prompt, scaled, factor, keys): ``prompt, scaled`` (a layer number as text, or
        ``"all"``), ``factor, keys`` (``"top"``/``"random"``; random rows average the draws),
        ``p_before, p_after, kn_before, kn_after`` (mean activation of the prompt's knowledge neurons).
    """
    attention = list(attention)
    if not attention:
        raise NeuronError("no attention layer to scale: this model's attention writes nothing on these prompts")
    keys = top_attended_keys(model, batch, positions, attention, k=k)
    generator = torch.Generator().manual_seed(seed)
    before = neuron_activations(model, batch, positions, neuron_layers)
    n = masks.float().sum((1, 2))
    baseline = {"p_before": answer_probability(model, batch), "kn_before": (before * masks).sum((1, 2)) / n}
    repeated_baseline = {name: value.repeat(n_random) for name, value in baseline.items()}
    rows = []

    def record(effect: dict[str, Tensor], scaled: str, factor: float, kind: str, n: int = 1) -> None:
        values = {name: v.reshape(n, len(batch)).mean(0) for name, v in effect.items()} if n > 1 else effect
        for i in range(len(batch)):
            rows.append(dict(prompt=i, scaled=scaled, factor=float(factor), keys=kind,
                             **{name: float(v[i]) for name, v in values.items()}))  # fmt: skip

    for factor in factors:
        for j, layer in enumerate(attention):
            effect = attention_scaling_effect(
                model, batch, positions, [layer], keys[:, j : j + 1], factor, neuron_layers, masks, baseline
            )
            record(effect, str(layer), factor, "top")
        record(
            attention_scaling_effect(model, batch, positions, attention, keys, factor, neuron_layers, masks, baseline),
            "all", factor, "top",
        )  # fmt: skip
        if n_random:
            draws = torch.cat([random_keys(positions, keys, generator) for _ in range(n_random)])  # draw-major
            repeated = _repeat(batch, n_random)
            effect = attention_scaling_effect(
                model, repeated, positions.repeat(n_random), attention, draws, factor, neuron_layers,
                masks.repeat(n_random, 1, 1), repeated_baseline,
            )  # fmt: skip
            record(effect, "all", factor, "random", n=n_random)
    return pd.DataFrame(rows)


def attention_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over prompts of Δp and of the knowledge neurons' relative activation change.

    The relative change is ``kn_after / kn_before − 1`` (prompts without knowledge neurons are skipped).
    """
    table = table.assign(
        delta_p=table["p_after"] - table["p_before"], kn_change=table["kn_after"] / table["kn_before"] - 1
    )
    grouped = table.groupby(["scaled", "factor", "keys"], sort=False)
    out = grouped.agg(
        delta_p_mean=("delta_p", "mean"),
        delta_p_std=("delta_p", lambda x: x.std(ddof=0)),
        kn_change_mean=("kn_change", "mean"),
        kn_change_std=("kn_change", lambda x: x.std(ddof=0)),
        n=("delta_p", "size"),
    )
    return out.reset_index()
