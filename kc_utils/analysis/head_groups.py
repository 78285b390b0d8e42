"""Heads as a group: ablate a set together against random sets of the same size; patch their outputs.

Single-head ablations understate redundant heads (the organism's movers each move the answer's
probability by at most a few hundredths). The causal evidence for a *role* is a group test:

1. **Group ablation** (:func:`group_ablation`): mean- or zero-ablate every head of a set at once
   (:func:`kc_utils.analysis.head_ablation.run_with_heads_ablated`) and measure top-1 accuracy and the
   answer's probability; do the same for ``n_random`` (≥ 20) random head sets of the same size
   drawn from the heads *not* in the set (:func:`random_head_sets`), and report their mean ± std.
   Means for ``"mean"`` ablation are computed once, over the whole batch, for every head that any
   set can contain.
2. **Head-output patching** (:func:`patch_head_outputs`): replace the set's outputs at the last
   position with their outputs on the corrupted prompt (another subject, same token length), every
   other component untouched; :func:`patching_effect` reports how often the answer flips to the
   corrupt answer — the set carries the subject's attribute to the last token if it does.

Both return tidy tables (one row per evaluated set) that the notebooks show and their sentence
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
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.head_ablation import HEAD_ABLATIONS, head_mean_outputs, run_with_heads_ablated
from kc_utils.analysis.heads import resolve_heads
from kc_utils.analysis.lens import parse_node
from kc_utils.data.metrics import answer_logits, rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "all_heads",
    "answer_scores",
    "group_ablation",
    "group_ablation_summary",
    "patch_head_outputs",
    "patching_effect",
    "random_head_sets",
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


def _row(kind: str, heads: Sequence[str], logits: Tensor, batch: PromptBatch, draw: int | None) -> dict[str, Any]:
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
    progress: bool = True,
) -> pd.DataFrame:
    """Ablate ``heads`` together, and ``n_random`` random same-size sets from ``pool`` minus ``heads``.

    Args:
        heads: the set under test (names such as ``"a3.h1"``).
        n_random: random sets of the same size (≥ 1; the notebooks use ≥ 20).
        ablation: ``"mean"`` (each head's mean output over ``mean_reference``, default the whole
            batch, computed once) or ``"zero"``.
        pool: heads the random sets are drawn from (default: every head of the model). Pass the
            heads that can matter (e.g. those of layers with attention) so that the baseline is not
            made of heads that never write anything.

    Returns:
        One row per evaluated set: ``set`` (``"none"`` = the unablated model, ``"group"``,
        ``"random"``), ``draw`` (random draw index), ``heads``, ``n_heads``, ``top1`` (accuracy)
        and ``prob`` (mean answer probability).
    """
    if ablation not in HEAD_ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {HEAD_ABLATIONS}")
    group = resolve_heads(model, list(heads))
    if not group:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    pool_heads = resolve_heads(model, list(pool)) if pool is not None else all_heads(model)
    draws = random_head_sets(pool_heads, len(group), n_random, exclude=group, seed=seed)
    means = None
    if ablation == "mean":
        needed = sorted(set(group) | {h for d in draws for h in d})
        means = head_mean_outputs(model, mean_reference if mean_reference is not None else batch, needed)
    with torch.no_grad():
        rows = [_row("none", (), models.run_with_hooks(model, batch.clean), batch, None)]
    rows.append(_row("group", group, run_with_heads_ablated(model, batch, group, ablation, means=means), batch, None))
    for i, draw in enumerate(tqdm(draws, desc="random head sets", disable=not progress, leave=False)):
        rows.append(_row("random", draw, run_with_heads_ablated(model, batch, draw, ablation, means=means), batch, i))
    return pd.DataFrame.from_records(rows)


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
    names = resolve_heads(model, list(heads))
    if not names:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    by_layer: dict[int, list[int]] = {}
    for name in names:
        _, layer, head = parse_node(model, name)
        by_layer.setdefault(int(layer), []).append(int(head))
    hook_names = [models.head_result_hook(layer) for layer in by_layer]
    with torch.no_grad():
        _, corrupt_cache = models.run_with_cache(model, batch.corrupt, hook_names)
    rows = torch.arange(len(batch), device=batch.clean.device)

    def patch(layer: int, head_ids: list[int]):
        def hook(result: Tensor, hook: Any) -> Tensor:
            result = result.clone()
            source = corrupt_cache[models.head_result_hook(layer)].to(result.dtype)
            for h in head_ids:
                if position == "all":
                    result[:, :, h] = source[:, :, h]
                else:
                    result[rows, batch.last_pos, h] = source[rows, batch.last_pos, h]
            return result

        return hook

    hooks = [(models.head_result_hook(layer), patch(layer, ids)) for layer, ids in by_layer.items()]
    with torch.no_grad():
        return models.run_with_hooks(model, batch.clean, hooks)


def patching_effect(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    n_random: int = 20,
    pool: Sequence[str] | None = None,
    seed: int = 0,
    position: str = "last",
    progress: bool = True,
) -> pd.DataFrame:
    """Patch ``heads`` (and ``n_random`` random same-size sets) from the corrupt run; who flips the answer?

    Returns:
        One row per set like :func:`group_ablation` (``set`` = ``"none"``/``"group"``/``"random"``),
        with ``top1`` (clean answer still first), ``prob`` and ``flip`` (share of prompts whose
        top-1 became the corrupt answer).
    """
    if bool((batch.corrupt_answer < 0).any()):
        raise ValueError(
            "patching_effect needs a corrupt answer for every prompt (build the batch with corrupt_answers)"
        )
    group = resolve_heads(model, list(heads))
    pool_heads = resolve_heads(model, list(pool)) if pool is not None else all_heads(model)
    draws = random_head_sets(pool_heads, len(group), n_random, exclude=group, seed=seed) if n_random else []

    def row(kind: str, names: Sequence[str], logits: Tensor, draw: int | None) -> dict[str, Any]:
        base = _row(kind, names, logits, batch, draw)
        base["flip"] = float(answer_scores(logits, batch)["corrupt_top1"].mean())
        return base

    with torch.no_grad():
        rows = [row("none", (), models.run_with_hooks(model, batch.clean), None)]
    rows.append(row("group", group, patch_head_outputs(model, batch, group, position), None))
    for i, draw in enumerate(tqdm(draws, desc="random head sets", disable=not progress, leave=False)):
        rows.append(row("random", draw, patch_head_outputs(model, batch, draw, position), i))
    return pd.DataFrame.from_records(rows)
