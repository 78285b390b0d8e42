"""Heads as a group: ablate a set together against random sets of the same size; patch their outputs.

Single-head ablations understate redundant heads (the organism's movers each move the answer's
probability by at most a few hundredths). The causal evidence for a *role* is a group test:

1. **Group ablation** (:func:`group_ablation`): mean- or zero-ablate every head of a set at once
   (:func:`kc_utils.analysis.head_ablation.run_with_heads_ablated`) and measure top-1 accuracy and the
   answer's probability; do the same for ``n_random`` (≥ 20) random head sets of the same size
   drawn from the heads *not* in the set (:func:`random_head_sets`), and report their mean ± std.
   Means for ``"mean"`` ablation are computed once, over the whole batch, for every head that any
   set can contain.
2. **Head-output patching** (:func:`patch_head_outputs`, one set; :func:`group_vs_random` with
   ``test="patching"``, many): replace the set's outputs at the last position with their outputs on
   the corrupted prompt (another subject, same token length), every other component untouched, and
   count how often the answer flips to the corrupt answer — the set carries the subject's attribute
   to the last token if it does.

3. **Roles as groups** (:func:`group_vs_random`, notebook 02): either test for a role's heads against
   random same-size sets drawn from the heads that write anything (:func:`writing_heads`), which
   may share heads with the group; :func:`group_test_summary` reduces it to one line.

All return tidy tables (one row per evaluated set) that the notebooks show and their sentence
builders read.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.head_ablation import (
    HEAD_ABLATIONS,
    head_mean_outputs,
    heads_by_layer,
    run_with_head_writes,
)
from kc_utils.analysis.heads import resolve_heads
from kc_utils.analysis.lens import parse_node
from kc_utils.circuits.nodes import head_name
from kc_utils.data.metrics import answer_logits, rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "GROUP_TESTS",
    "all_heads",
    "answer_scores",
    "group_ablation",
    "group_ablation_summary",
    "group_test_summary",
    "group_vs_random",
    "patch_head_outputs",
    "evaluate_head_sets",
    "random_head_sets",
    "score_row",
    "writing_heads",
]


def all_heads(model: Any) -> list[str]:
    """Every attention head of the model, in layer order (``a0.h0`` …)."""
    return resolve_heads(model, None)


def random_head_sets(
    pool: Sequence[str], size: int, n: int, exclude: Collection[str] = (), seed: int = 0
) -> list[list[str]]:
    """``n`` random sets of ``size`` heads drawn from ``pool`` minus ``exclude`` (deterministic in ``seed``).

    Each set is drawn without replacement and sorted in ``pool`` order; different draws may repeat
    when the pool is small.

    Raises:
        ValueError: ``size`` < 1, ``n`` < 1, or fewer than ``size`` heads left after excluding.
    """
    if size < 1 or n < 1:
        raise ValueError(f"size and n must be at least 1, got size={size}, n={n}")
    excluded = set(exclude)
    candidates = [h for h in dict.fromkeys(pool) if h not in excluded]
    if len(candidates) < size:
        raise ValueError(
            f"cannot draw {size} heads from the {len(candidates)} heads left after excluding {len(excluded)}; "
            "use a smaller set or a larger pool"
        )
    order = {h: i for i, h in enumerate(candidates)}
    rng = random.Random(seed)
    return [sorted(rng.sample(candidates, size), key=order.__getitem__) for _ in range(n)]


def answer_scores(logits: Float[Tensor, "b p v"], batch: PromptBatch) -> dict[str, Float[Tensor, "b"]]:
    """Per-prompt ``top1`` (answer ranks first), ``prob`` of the answer and, with corrupt answers,
    ``corrupt_top1`` (the corrupt answer ranks first)."""
    final = answer_logits(logits, batch).float()
    scores = {
        "top1": (rank_of(final, batch.answer) == 0).float(),
        "prob": final.softmax(-1).gather(1, batch.answer[:, None])[:, 0],
    }
    if bool((batch.corrupt_answer >= 0).all()):
        scores["corrupt_top1"] = (rank_of(final, batch.corrupt_answer) == 0).float()
    return scores


def score_row(kind: str, heads: Sequence[str], logits: Tensor, batch: PromptBatch, draw: int | None) -> dict[str, Any]:
    """One row of a head-set table: which set (``kind``, ``draw``, ``heads``) and its mean ``top1`` and ``prob``."""
    scores = answer_scores(logits, batch)
    return {
        "set": kind,
        "draw": draw,
        "heads": tuple(heads),
        "n_heads": len(heads),
        "top1": float(scores["top1"].mean()),
        "prob": float(scores["prob"].mean()),
    }


def group_ablation(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    n_random: int = 20,
    ablation: str = "mean",
    pool: Sequence[str] | None = None,
    seed: int = 0,
    mean_reference: PromptBatch | None = None,
) -> pd.DataFrame:
    """Ablate ``heads`` together, and ``n_random`` random same-size sets from ``pool`` minus ``heads``.

    :func:`group_vs_random` with ``test="ablation"`` and random sets disjoint from the group.

    Args:
        heads: the set under test (names such as ``"a3.h1"``).
        n_random: random sets of the same size (≥ 1; the notebooks use ≥ 20).
        ablation: ``"mean"`` (each head's mean output over ``mean_reference``, default the whole
            batch, computed once) or ``"zero"``.
        pool: heads the random sets are drawn from (default: every head of the model). Pass the
            heads that can matter (e.g. :func:`writing_heads`) so that the baseline is not made of
            heads that never write anything.

    Returns:
        One row per evaluated set: ``set`` (``"none"`` = the unablated model, ``"group"``,
        ``"random"``), ``draw`` (random draw index), ``heads``, ``n_heads``, ``top1`` (accuracy)
        and ``prob`` (mean answer probability), plus :func:`group_vs_random`'s ``flip`` and ``overlap``.
    """
    pool_heads = list(pool) if pool is not None else all_heads(model)
    return group_vs_random(
        model,
        batch,
        heads,
        pool_heads,
        "ablation",
        n_random,
        ablation,
        overlap=False,
        seed=seed,
        mean_reference=mean_reference,
    )


def group_ablation_summary(table: pd.DataFrame) -> dict[str, float]:
    """``original``, ``group``, ``random_mean``, ``random_std`` and ``n_random`` for ``top1`` and ``prob``.

    Reads a :func:`group_ablation` table (or a hand-made one with the same columns).
    """
    for column in ("set", "top1", "prob"):
        if column not in table:
            raise ValueError(f"the group-ablation table has no {column!r} column")
    out: dict[str, float] = {}
    randoms = table[table["set"] == "random"]
    for metric in ("top1", "prob"):
        out[f"{metric}_original"] = float(table.loc[table["set"] == "none", metric].mean())
        out[f"{metric}_group"] = float(table.loc[table["set"] == "group", metric].mean())
        out[f"{metric}_random_mean"] = float(randoms[metric].mean()) if len(randoms) else float("nan")
        out[f"{metric}_random_std"] = float(np.std(randoms[metric])) if len(randoms) else float("nan")
    out["n_random"] = float(len(randoms))
    return out


def patch_head_outputs(
    model: Any, batch: PromptBatch, heads: Sequence[str], position: str = "last"
) -> Float[Tensor, "b p v"]:
    """Logits with ``heads``' outputs replaced by their outputs on the corrupted prompts.

    Args:
        position: ``"last"`` (only at each prompt's last token — the path from those heads to the
            prediction) or ``"all"`` (every position).

    Raises:
        ValueError: a batch without corrupted prompts, an unknown position, or an empty set.
    """
    if batch.corrupt is None:
        raise ValueError("head-output patching needs corrupted prompts; build the batch with corrupt_prompts")
    if position not in ("last", "all"):
        raise ValueError(f"unknown position {position!r}; use 'last' or 'all'")
    by_layer = heads_by_layer(model, heads)
    with torch.no_grad(), models.only_head_results(model):
        corrupt = models.cache_activations(model, batch.corrupt, [models.head_result_hook(i) for i in by_layer])
    rows = torch.arange(len(batch), device=batch.clean.device)

    def write(layer: int, head: int, result: Tensor) -> None:
        source = corrupt[models.head_result_hook(layer)].to(result.dtype)
        if position == "all":
            result[:, :, head] = source[:, :, head]
        else:
            result[rows, batch.last_pos, head] = source[rows, batch.last_pos, head]

    return run_with_head_writes(model, batch.clean, by_layer, write)


# ----------------------------------------------------------------------------- roles tested as groups (notebook 02)
def writing_heads(model: Any, batch: PromptBatch, heads: Sequence[str] | None = None, atol: float = 0.0) -> list[str]:
    """The heads (default: all) whose output is nonzero at some real token of the batch.

    A head that writes nothing (the organism's block 0 has no attention: its heads output exactly
    zero) cannot be part of a meaningful random baseline; leave it out of the pool.
    """
    names = resolve_heads(model, list(heads)) if heads is not None else all_heads(model)
    layers = sorted({int(parse_node(model, h)[1]) for h in names})
    with torch.no_grad(), models.only_head_results(model):
        cache = models.cache_activations(model, batch.clean, [models.head_result_hook(layer) for layer in layers])
    real = batch.padding_mask.bool()
    kept = []
    for name in names:
        _, layer, head = parse_node(model, name)
        result = cache[models.head_result_hook(int(layer))][:, :, int(head)]  # [b, p, d]
        if float(result[real].abs().max()) > atol:
            kept.append(name)
    return kept


#: The two group tests of :func:`group_vs_random`.
GROUP_TESTS = ("ablation", "patching")


def evaluate_head_sets(
    model: Any,
    batch: PromptBatch,
    sets: Sequence[Sequence[str]],
    test: str = "ablation",
    ablation: str = "mean",
    means: dict[str, Tensor] | None = None,
    position: str = "last",
    sets_per_pass: int = 8,
    patch_values: dict[int, Tensor] | None = None,
) -> Float[Tensor, "s b v"]:
    """Last-position logits with each set of heads ablated (or patched) together, several sets per pass.

    The batch is repeated once per set and each copy gets its own set: one forward pass evaluates
    ``sets_per_pass`` sets. The sets are grouped by their lowest layer, and each pass resumes at its sets' lowest
    layer from the batch's streams, recorded once (:func:`kc_utils.models.logits_from_layer`). The result equals
    running :func:`run_with_heads_ablated` (``test = "ablation"``) or :func:`patch_head_outputs` (``"patching"``)
    once per set, in the order given (tested).

    Args:
        sets: head sets (an empty set = the unablated model).
        means: for mean ablation, :func:`head_mean_outputs` of every head in the sets (computed
            over the batch when not given).
        position: for patching, ``"last"`` or ``"all"``.
        sets_per_pass: sets per forward pass (memory grows with it).
        patch_values: for patching, the head outputs to write instead of the corrupt run's: ``{layer: [b, p, h, d]}``
            for every layer of the sets (e.g. another prompt's outputs placed at this batch's last positions, as
            :func:`kc_utils.analysis.head_repair.repair` does); the batch then needs no corrupt prompts.

    Returns:
        ``[n_sets, b, vocab]`` logits at each prompt's last position.
    """
    if test not in GROUP_TESTS:
        raise ValueError(f"unknown test {test!r}; use one of {GROUP_TESTS}")
    if ablation not in HEAD_ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {HEAD_ABLATIONS}")
    if position not in ("last", "all"):
        raise ValueError(f"unknown position {position!r}; use 'last' or 'all'")
    if sets_per_pass < 1:
        raise ValueError(f"sets_per_pass must be at least 1, got {sets_per_pass}")
    resolved = [resolve_heads(model, list(s)) for s in sets]
    if not resolved:
        raise ValueError("no head sets to evaluate")
    n_heads = models.model_shape(model).n_heads
    named = sorted({h for s in resolved for h in s})
    layers = sorted({int(parse_node(model, h)[1]) for h in named})
    device, b = batch.clean.device, len(batch)
    replacement: dict[int, Tensor] = {}  # layer -> [b, p, n_heads, d] (or broadcastable) values to write
    if patch_values is not None and test != "patching":
        raise ValueError(f"patch_values are written by test='patching', not test={test!r}")
    if test == "patching" and patch_values is not None:
        absent = [layer for layer in layers if layer not in patch_values]
        if absent:
            raise ValueError(f"patch_values lack the layers {absent} of the head sets; give [b, p, h, d] for each")
        replacement = {layer: patch_values[layer] for layer in layers}
    elif test == "patching":
        if batch.corrupt is None:
            raise ValueError("head-output patching needs corrupted prompts; build the batch with corrupt_prompts")
        with torch.no_grad(), models.only_head_results(model):
            cache = models.cache_activations(model, batch.corrupt, [models.head_result_hook(layer) for layer in layers])
        replacement = {layer: cache[models.head_result_hook(layer)] for layer in layers}
    elif ablation == "mean":
        means = means if means is not None else head_mean_outputs(model, batch, named)
        d_model = models.model_shape(model).d_model
        for layer in layers:
            table = torch.zeros(n_heads, d_model, device=device, dtype=models.model_dtype(model))
            for h in range(n_heads):
                if head_name(layer, h) in means:
                    table[h] = means[head_name(layer, h)].to(table.dtype)
            replacement[layer] = table[None, None]
    rows = torch.arange(b, device=device)
    at = torch.zeros(batch.clean.shape, dtype=torch.bool, device=device)
    if test == "patching" and position == "last":
        at[rows, batch.last_pos] = True
    else:
        at[:] = True
    # sets sorted by their lowest layer, highest first, so that a pass's sets share a high lowest layer: each pass
    # resumes there from the batch's streams, recorded once (the unablated set can resume anywhere)
    n_layers = models.model_shape(model).n_layers
    lowest = [min((int(parse_node(model, h)[1]) for h in names), default=n_layers - 1) for names in resolved]
    order = sorted(range(len(resolved)), key=lambda i: -lowest[i])
    chunks = [order[start : start + sets_per_pass] for start in range(0, len(order), sets_per_pass)]
    entering = models.streams_entering(model, batch.clean, sorted({min(lowest[i] for i in c) for c in chunks}))
    out: list[Tensor] = [torch.empty(0)] * len(resolved)
    for chunk_index in chunks:
        chunk = [resolved[i] for i in chunk_index]
        start = min(lowest[i] for i in chunk_index)
        masks = {layer: torch.zeros(len(chunk), n_heads, dtype=torch.bool, device=device) for layer in layers}
        for i, names in enumerate(chunk):
            for name in names:
                _, layer, head = parse_node(model, name)
                masks[int(layer)][i, int(head)] = True

        def hook_for(layer: int, mask: Tensor):
            def hook(result: Tensor, hook: Any) -> Tensor:  # result [s*b, p, h, d]
                shaped = result.reshape(len(chunk), b, *result.shape[1:])
                where = mask[:, None, None, :, None] & at[None, :, :, None, None]
                value = replacement.get(layer)
                value = torch.zeros((), dtype=result.dtype, device=result.device) if value is None else value
                return torch.where(where, value.to(result.dtype), shaped).reshape(result.shape)

            return hook

        hooks = [(models.head_result_hook(layer), hook_for(layer, masks[layer])) for layer in layers if layer >= start]
        k = len(chunk)
        with torch.no_grad(), models.only_head_results(model):  # no pass here reads an edge's input
            logits = models.logits_from_layer(
                model,
                start,
                entering[start].repeat(k, 1, 1),
                batch.clean.repeat(k, 1),
                torch.arange(k * b, device=device),
                batch.last_pos.repeat(k),
                hooks,
            )
        for i, logits_of_set in zip(chunk_index, logits.reshape(k, b, -1)):
            out[i] = logits_of_set
    return torch.stack(out)


def group_vs_random(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    pool: Sequence[str],
    test: str = "ablation",
    n_random: int = 20,
    ablation: str = "mean",
    position: str = "last",
    overlap: bool = True,
    seed: int = 0,
    mean_reference: PromptBatch | None = None,
) -> pd.DataFrame:
    """A head set and ``n_random`` random same-size sets from ``pool``, ablated or patched together.

    By default the random sets may share heads with the group (``overlap=True``): when the group is
    half of a small pool (the organism's movers are about 6 of its 12 writing heads), the sets
    disjoint from it are one set repeated, and "random heads" must mean any heads.
    :func:`group_ablation` is this function with ``overlap=False``.

    Args:
        test: ``"ablation"`` (``ablation``-ablate the set at every position) or ``"patching"``
            (replace the set's outputs at ``position`` with their outputs on the corrupted prompt).
        pool: heads the random sets are drawn from (e.g. :func:`writing_heads`); the group must be
            in it when ``overlap``.
        overlap: draw random sets from the whole pool (``True``) or from the pool minus the group.

    Returns:
        One row per set like :func:`group_ablation` (``set`` = ``"none"``/``"group"``/``"random"``,
        ``draw``, ``heads``, ``n_heads``, ``top1``, ``prob``), plus ``flip`` (share of prompts whose
        top-1 became the corrupt answer; NaN without corrupt answers) and ``overlap`` (heads shared
        with the group).

    Raises:
        ValueError: an unknown test or ablation, an empty group, or a pool too small.
    """
    if test not in GROUP_TESTS:
        raise ValueError(f"unknown test {test!r}; use one of {GROUP_TESTS}")
    if ablation not in HEAD_ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {HEAD_ABLATIONS}")
    group = resolve_heads(model, list(heads))
    if not group:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    pool_heads = resolve_heads(model, list(pool))
    draws = random_head_sets(pool_heads, len(group), n_random, exclude=() if overlap else group, seed=seed)
    has_corrupt = bool((batch.corrupt_answer >= 0).all())
    means = None
    if test == "ablation" and ablation == "mean":
        needed = sorted(set(group) | {h for d in draws for h in d})
        means = head_mean_outputs(model, mean_reference if mean_reference is not None else batch, needed)
    sets: list[tuple[str, int | None, Sequence[str]]] = [("none", None, ()), ("group", None, group)]
    sets += [("random", i, draw) for i, draw in enumerate(draws)]
    final = evaluate_head_sets(model, batch, [names for _, _, names in sets], test, ablation, means, position)
    rows = []
    for (kind, draw, names), logits in zip(sets, final):
        top1 = (rank_of(logits.float(), batch.answer) == 0).float()
        prob = logits.float().softmax(-1).gather(1, batch.answer[:, None])[:, 0]
        flip = (rank_of(logits.float(), batch.corrupt_answer) == 0).float().mean() if has_corrupt else torch.nan
        rows.append(
            {
                "set": kind,
                "draw": draw,
                "heads": tuple(names),
                "n_heads": len(names),
                "top1": float(top1.mean()),
                "prob": float(prob.mean()),
                "flip": float(flip),
                "overlap": len(set(names) & set(group)),
            }
        )
    return pd.DataFrame.from_records(rows)


def group_test_summary(table: pd.DataFrame) -> dict[str, float]:
    """One line of a :func:`group_vs_random` table (or a hand-made one with its columns).

    Returns:
        For ``top1`` and ``flip``: ``<m>_original`` (unablated model), ``<m>_group``,
        ``<m>_random_mean``, ``<m>_random_std`` (population std); ``top1_random_at_most_group``:
        the share of random sets whose accuracy is no higher than the group's (small: the group
        is special); ``flip_random_at_least_group``: likewise for flips; ``n_heads``,
        ``n_random``, ``n_distinct`` (distinct random sets) and ``mean_overlap`` (group heads per
        random set).
    """
    for column in ("set", "heads", "top1", "flip", "overlap"):
        if column not in table:
            raise ValueError(f"the group-test table has no {column!r} column (see group_vs_random)")
    randoms = table[table["set"] == "random"]
    group = table[table["set"] == "group"]
    if len(group) != 1:
        raise ValueError(f"the group-test table needs exactly one 'group' row, found {len(group)}")
    out: dict[str, float] = {}
    for metric in ("top1", "flip"):
        out[f"{metric}_original"] = float(table.loc[table["set"] == "none", metric].mean())
        out[f"{metric}_group"] = float(group[metric].iloc[0])
        out[f"{metric}_random_mean"] = float(randoms[metric].mean()) if len(randoms) else float("nan")
        out[f"{metric}_random_std"] = float(np.std(randoms[metric])) if len(randoms) else float("nan")
    g_top1, g_flip = out["top1_group"], out["flip_group"]
    out["top1_random_at_most_group"] = float((randoms["top1"] <= g_top1 + 1e-9).mean()) if len(randoms) else np.nan
    out["flip_random_at_least_group"] = float((randoms["flip"] >= g_flip - 1e-9).mean()) if len(randoms) else np.nan
    out["n_heads"] = float(len(group["heads"].iloc[0]))
    out["n_random"] = float(len(randoms))
    out["n_distinct"] = float(len({tuple(sorted(h)) for h in randoms["heads"]}))
    out["mean_overlap"] = float(randoms["overlap"].mean()) if len(randoms) else float("nan")
    return out
