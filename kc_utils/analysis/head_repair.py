"""Hallucinations, step 3: repair the wrong answer by intervening on heads, against random head sets.

:func:`repair` patches the chosen heads' last-position output from the same fact asked in another prompt
(a training template; :func:`patch_heads_from_prompts` allows another token length), or mean/zero-ablates
them, and counts how often the correct answer becomes top-1 — beside ``n_random`` (≥ 20) random head sets
of the same size (:func:`baseline_head_sets`), summarised with :func:`repair_summary` (mean ± std and a
permutation p-value, :func:`permutation_p_value`). :func:`split_failures` splits the failures into a half
that chooses the heads and a held-out half that scores them, so a head is never scored on the failures it
was picked on; :func:`repair_by_each_head` patches every head alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.head_ablation import head_mean_outputs
from kc_utils.analysis.head_groups import (
    all_heads,
    evaluate_head_sets,
    group_ablation_summary,
    heads_by_layer,
    random_head_sets,
    run_with_head_writes,
    score_row,
)
from kc_utils.analysis.heads import resolve_heads
from kc_utils.data.metrics import rank_of
from kc_utils.data.prompts import PromptBatch

__all__ = [
    "ALPHA",
    "INTERVENTIONS",
    "MIN_HOLDOUT_FAILURES",
    "baseline_head_sets",
    "last_position_head_outputs",
    "patch_heads_from_prompts",
    "permutation_p_value",
    "repair",
    "repair_by_each_head",
    "repair_summary",
    "split_failures",
]


#: How :func:`repair` intervenes on a head set.
INTERVENTIONS = ("patch", "mean", "zero")

MIN_HOLDOUT_FAILURES = 4
"""Fewest knowledge-present failures a repair is scored on: two to choose heads on, two held out."""

ALPHA = 0.05
"""A tested head set "beats" its random sets when its permutation p-value is below this."""


def last_position_head_outputs(model: Any, source: PromptBatch) -> Float[Tensor, "layer b head d"]:
    """Every head's output at each prompt's last position (computed once, reused by every patch)."""
    n_layers = models.model_shape(model).n_layers
    with torch.no_grad(), models.only_head_results(model):
        cache = models.cache_activations(model, source.clean, [models.head_result_hook(i) for i in range(n_layers)])
    rows = torch.arange(len(source), device=source.clean.device)
    return torch.stack([cache[models.head_result_hook(i)][rows, source.last_pos] for i in range(n_layers)])


def patch_heads_from_prompts(
    model: Any,
    batch: PromptBatch,
    source: PromptBatch,
    heads: Sequence[str],
    source_outputs: Float[Tensor, "layer b head d"] | None = None,
    last_only: bool = False,
    entering: dict[int, Tensor] | None = None,
) -> Float[Tensor, "b p v"]:
    """Logits of ``batch`` with ``heads``' last-position outputs taken from ``source``'s last positions.

    ``source`` holds one prompt per prompt of ``batch`` (e.g. the same fact in a training template);
    it may have another token length: the head output at ``source.last_pos[i]`` is written at
    ``batch.last_pos[i]``. Every other component runs on ``batch`` as usual.

    Args:
        source_outputs: :func:`last_position_head_outputs` of ``source``, when already computed.
        last_only: unembed each prompt's last position alone: logits ``[b, 1, v]``, read with
            ``batch.at_last_position()``.
        entering: with ``last_only``, :func:`kc_utils.models.streams_entering` of ``batch.clean``: the pass
            resumes at the lowest patched layer (the same logits).

    Raises:
        ValueError: batches of different sizes, or an empty head set.
    """
    if len(source) != len(batch):
        raise ValueError(f"the source has {len(source)} prompts but the batch {len(batch)}; pair them one to one")
    by_layer = heads_by_layer(model, heads)
    taken = source_outputs if source_outputs is not None else last_position_head_outputs(model, source)
    if taken.shape[1] != len(batch):
        raise ValueError(f"source_outputs hold {taken.shape[1]} prompts but the batch {len(batch)}")
    rows = torch.arange(len(batch), device=batch.clean.device)

    def write(layer: int, head: int, result: Tensor) -> None:
        result[rows, batch.last_pos, head] = taken[layer, :, head].to(result.dtype)

    return run_with_head_writes(model, batch.clean, by_layer, write, batch.last_pos if last_only else None, entering)


def baseline_head_sets(
    pool: Sequence[str], size: int, n: int, exclude: Sequence[str] = (), seed: int = 0
) -> list[list[str]]:
    """The random-set baseline of a ``size``-head set: **every** set of ``size`` heads from ``pool`` minus
    ``exclude`` when there are at most ``n`` of them (the exact permutation distribution; a small pool
    such as the organism's 11 other writing heads gives 11 single heads, not ``n`` draws that repeat
    them), otherwise ``n`` random sets (:func:`kc_utils.analysis.head_groups.random_head_sets`).

    Raises:
        ValueError: like :func:`~kc_utils.analysis.head_groups.random_head_sets`.
    """
    excluded = set(exclude)
    candidates = [h for h in dict.fromkeys(pool) if h not in excluded]
    if size >= 1 and len(candidates) >= size and math.comb(len(candidates), size) <= n:
        return [list(c) for c in itertools.combinations(candidates, size)]
    return random_head_sets(pool, size, n, exclude=exclude, seed=seed)


def repair(
    model: Any,
    batch: PromptBatch,
    heads: Sequence[str],
    intervention: str = "patch",
    source: PromptBatch | None = None,
    n_random: int = 20,
    pool: Sequence[str] | None = None,
    seed: int = 0,
    mean_reference: PromptBatch | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Intervene on ``heads`` and on ``n_random`` random same-size sets; how often is the correct answer top-1?

    The random sets are :func:`baseline_head_sets`: every same-size set of the pool minus ``heads`` when
    there are at most ``n_random`` of them (an exact baseline), else ``n_random`` random draws.

    Args:
        batch: the failing prompts, ``batch.answer`` = the correct answers.
        heads: the set under test.
        intervention: ``"patch"`` (outputs at the last position from ``source``,
            :func:`patch_heads_from_prompts`), ``"mean"`` or ``"zero"`` (ablation at every position,
            :func:`kc_utils.analysis.head_groups.group_ablation`).
        source: for ``"patch"``: the same facts in prompts the model answers (e.g. a training template).
        pool: heads the random sets are drawn from, minus ``heads`` (default every head; pass
            :func:`kc_utils.analysis.head_groups.writing_heads` so that silent heads do not flatter the
            baseline).

    Returns:
        One row per set: ``set`` (``"none"``, ``"group"``, ``"random"``), ``draw``, ``heads``,
        ``n_heads``, ``top1`` (**the repair rate**: share of prompts whose top-1 is now correct)
        and ``prob`` (mean probability of the correct answer). Summarise it with
        :func:`kc_utils.analysis.head_groups.group_ablation_summary`.

    Raises:
        ValueError: an unknown intervention, ``"patch"`` without a source, an empty set, or too
            few heads in the pool for the random sets.
    """
    if intervention not in INTERVENTIONS:
        raise ValueError(f"unknown intervention {intervention!r}; use one of {INTERVENTIONS}")
    if intervention == "patch" and source is None:
        raise ValueError("intervention='patch' needs a source batch (the same facts in a template the model answers)")
    group = resolve_heads(model, list(heads))
    if not group:
        raise ValueError("the head set is empty; pass at least one head such as 'a3.h1'")
    pool_heads = resolve_heads(model, list(pool)) if pool is not None else all_heads(model)
    draws = baseline_head_sets(pool_heads, len(group), n_random, exclude=group, seed=seed)
    sets = [("none", None, []), ("group", None, group)] + [("random", i, d) for i, d in enumerate(draws)]
    rows = []
    if intervention != "patch":
        needed = sorted({h for _, _, names in sets for h in names})
        means = head_mean_outputs(model, mean_reference if mean_reference is not None else batch, needed)
        final = evaluate_head_sets(model, batch, [names for _, _, names in sets], "ablation", intervention, means)
        for (kind, draw, names), logits in zip(sets, final):
            logits = logits.float()
            rows.append(
                {
                    "set": kind,
                    "draw": draw,
                    "heads": tuple(names),
                    "n_heads": len(names),
                    "top1": float((rank_of(logits, batch.answer) == 0).float().mean()),
                    "prob": float(logits.softmax(-1).gather(1, batch.answer[:, None])[:, 0].mean()),
                }
            )
        return pd.DataFrame.from_records(rows)
    with torch.no_grad(), models.without_edge_hooks(model):
        plain = models.last_logits(model, batch.clean, batch.last_pos)[:, None]
    seen = batch.at_last_position()  # only the last positions are unembedded: logits [b, 1, v]
    rows.append(score_row("none", (), plain, seen, None))
    patched = _patched_sets(model, batch, source, [names for _, _, names in sets[1:]], progress)
    for (kind, draw, names), logits in zip(sets[1:], patched):
        rows.append(score_row(kind, names, logits[:, None], seen, draw))
    return pd.DataFrame.from_records(rows)


def _patched_sets(
    model: Any, batch: PromptBatch, source: PromptBatch, sets: Sequence[Sequence[str]], progress: bool = False
) -> Float[Tensor, "s b v"]:
    """Last-position logits of ``batch`` with each set's last-position outputs taken from ``source``.

    The same as :func:`patch_heads_from_prompts` once per set (tested), with several sets side by side in each
    pass, each pass resumed at its sets' lowest layer (:func:`~kc_utils.analysis.head_groups.evaluate_head_sets`):
    a baseline of 100 single heads over a few short prompts is 100 passes of a few rows each otherwise.
    """
    if len(source) != len(batch):
        raise ValueError(f"the source has {len(source)} prompts but the batch {len(batch)}; pair them one to one")
    taken = last_position_head_outputs(model, source)  # [layer, b, head, d]
    rows = torch.arange(len(batch), device=batch.clean.device)
    values = {}
    for layer in sorted({layer for names in sets for layer in heads_by_layer(model, names)}):
        value = torch.zeros((*batch.clean.shape, *taken.shape[2:]), dtype=taken.dtype, device=taken.device)
        value[rows, batch.last_pos] = taken[layer]
        values[layer] = value
    chunk = 64  # sets per call: the progress bar moves between calls
    parts = [
        evaluate_head_sets(model, batch, sets[start : start + chunk], "patching", position="last", patch_values=values)
        for start in tqdm(range(0, len(sets), chunk), desc="head sets", disable=not progress, leave=False)
    ]
    return torch.cat(parts)


def repair_by_each_head(
    model: Any, batch: PromptBatch, source: PromptBatch, heads: Sequence[str] | None = None
) -> pd.DataFrame:
    """Patch each head alone from ``source``: per prompt × head, is the correct answer top-1 afterwards?

    Returns:
        One row per prompt × head: ``prompt_index``, ``head``, ``repaired`` (bool), ``answer_rank``.
    """
    names = resolve_heads(model, heads)
    records = []
    for name, final in zip(names, _patched_sets(model, batch, source, [[name] for name in names])):
        ranks = rank_of(final.float(), batch.answer)
        records += [
            {"prompt_index": i, "head": name, "repaired": bool(ranks[i] == 0), "answer_rank": int(ranks[i])}
            for i in range(len(batch))
        ]
    return pd.DataFrame.from_records(records)


def split_failures(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``n`` failures (positions ``0 … n-1``) into a half that chooses heads and a held-out half that scores them.

    Deterministic in ``seed``; the choosing half gets the extra failure when ``n`` is odd. Both halves
    are returned sorted.

    Raises:
        ValueError: fewer than :data:`MIN_HOLDOUT_FAILURES` failures (a held-out score needs two on each side).
    """
    if n < MIN_HOLDOUT_FAILURES:
        raise ValueError(
            f"{n} failures cannot be split into heads chosen on some and scored on others; "
            f"at least {MIN_HOLDOUT_FAILURES} are needed (raise n_prompts or max_failures)"
        )
    order = list(range(n))
    np.random.default_rng(seed).shuffle(order)
    cut = (n + 1) // 2
    return sorted(order[:cut]), sorted(order[cut:])


def permutation_p_value(group: float, randoms: Sequence[float]) -> float:
    """One-sided permutation p-value of a head set's repair rate against random sets of the same size.

    ``(1 + #{random ≥ group}) / (1 + #random)``: under the null that the tested set is one more
    random set, the chance that it ranks this high among them (the +1 counts the tested set, so the
    p-value is never 0). NaN without random sets.
    """
    values = np.asarray(list(randoms), dtype=float)
    if values.size == 0:
        return float("nan")
    return float((1 + np.sum(values >= group - 1e-9)) / (1 + values.size))


def repair_summary(table: pd.DataFrame) -> dict[str, float]:
    """:func:`kc_utils.analysis.head_groups.group_ablation_summary` of a :func:`repair` table plus
    ``p_value`` (:func:`permutation_p_value` of the tested set's ``top1`` among the random sets'),
    ``n_prompts`` (the prompts the rates are measured on) and ``n_distinct`` (distinct random sets)."""
    summary = group_ablation_summary(table)
    randoms = table[table["set"] == "random"]
    summary["p_value"] = permutation_p_value(summary["top1_group"], randoms["top1"].tolist())
    summary["n_distinct"] = float(len({tuple(sorted(h)) for h in randoms["heads"]})) if "heads" in table else np.nan
    if "n_prompts" in table:
        summary["n_prompts"] = float(table["n_prompts"].iloc[0])
    return summary
