"""Do a fact's queries share their knowledge neurons? (Chen et al. 2025, §3)

A fact has ``q`` queries (its relation's templates filled with its subject), each with a set of
knowledge neurons ``N_1 … N_q`` (:func:`kc_utils.neurons.selection.select_neurons`).

**Consistency score** used here: the mean pairwise Jaccard overlap (intersection over union)

    CS = mean over pairs i < j of |N_i ∩ N_j| / |N_i ∪ N_j|

It is 1 when every query uses the same neurons and 0 when no two share one. The mean over pairs is
preferred to the overlap of all ``q`` sets at once (:func:`strict_overlap`, also reported): the
latter falls towards 0 as queries are added even when each pair overlaps well, so facts of relations
with more templates would look less consistent for that reason alone.

**Consistent / inconsistent facts** (the paper's K_C / K_I): a fact is inconsistent when its score
is below a threshold: a static one, or one found by Otsu's method on the scores of all facts
(:func:`otsu_threshold`: the cut maximising the between-class variance).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from jaxtyping import Bool
from torch import Tensor

from kc_utils.neurons.positions import NeuronError

__all__ = [
    "consistency_score",
    "consistency_summary",
    "consistency_table",
    "jaccard",
    "label_by_otsu",
    "otsu_threshold",
    "pairwise_jaccard",
    "strict_overlap",
]


def jaccard(a: Bool[Tensor, "..."], b: Bool[Tensor, "..."]) -> float:
    """|a ∩ b| / |a ∪ b| of two neuron masks; NaN when both are empty."""
    union = int((a | b).sum())
    return float("nan") if union == 0 else int((a & b).sum()) / union


def pairwise_jaccard(masks: Bool[Tensor, "q l n"]) -> np.ndarray:
    """``[q, q]`` matrix of the queries' pairwise Jaccard overlaps (diagonal 1)."""
    q = masks.shape[0]
    out = np.eye(q)
    for i, j in combinations(range(q), 2):
        out[i, j] = out[j, i] = jaccard(masks[i], masks[j])
    return out


def consistency_score(masks: Bool[Tensor, "q l n"]) -> float:
    """Mean pairwise Jaccard overlap of the queries' neuron sets (the module's CS).

    Raises:
        NeuronError: fewer than two queries.
    """
    q = masks.shape[0]
    if q < 2:
        raise NeuronError(f"a consistency score needs at least two queries of the fact, got {q}")
    values = [jaccard(masks[i], masks[j]) for i, j in combinations(range(q), 2)]
    return float(np.nanmean(values)) if not all(np.isnan(values)) else float("nan")


def strict_overlap(masks: Bool[Tensor, "q l n"]) -> float:
    """|N_1 ∩ … ∩ N_q| / |N_1 ∪ … ∪ N_q|: the neurons every query shares, over all neurons used."""
    union = int(masks.any(0).sum())
    return float("nan") if union == 0 else int(masks.all(0).sum()) / union


def otsu_threshold(values: Sequence[float] | np.ndarray) -> float:
    """Otsu's threshold of 1-d values: the cut between two sorted neighbours maximising between-class variance.

    Every gap between distinct sorted values is tried (no histogram); the threshold returned is the
    midpoint of the best gap, so ``values >= threshold`` is the upper class. NaNs are ignored.

    Raises:
        NeuronError: fewer than two distinct values.
    """
    x = np.sort(np.asarray(values, dtype=float))
    x = x[~np.isnan(x)]
    if len(np.unique(x)) < 2:
        raise NeuronError(f"Otsu's method needs at least two distinct values, got {x.tolist()}")
    n = len(x)
    cumulative = np.cumsum(x)
    best, best_cut = -1.0, 0
    for k in range(1, n):  # lower class x[:k], upper class x[k:]
        if x[k] == x[k - 1]:
            continue
        w0, w1 = k / n, (n - k) / n
        mu0, mu1 = cumulative[k - 1] / k, (cumulative[-1] - cumulative[k - 1]) / (n - k)
        between = w0 * w1 * (mu0 - mu1) ** 2
        if between > best:
            best, best_cut = between, k
    return float((x[best_cut - 1] + x[best_cut]) / 2)


def consistency_table(
    relation: str, subjects: Sequence[str], masks: Bool[Tensor, "f q l n"], static_threshold: float
) -> pd.DataFrame:
    """One row per fact: its consistency score, strict overlap, neurons per query, and the static label.

    Columns: ``relation, subject, n_queries, neurons_per_query, cs, strict, inconsistent_static``.
    """
    rows = []
    for f, subject in enumerate(subjects):
        cs = consistency_score(masks[f])
        rows.append(dict(relation=relation, subject=subject, n_queries=int(masks.shape[1]),
                         neurons_per_query=float(masks[f].sum((1, 2)).float().mean()), cs=cs,
                         strict=strict_overlap(masks[f]), inconsistent_static=bool(cs < static_threshold)))  # fmt: skip
    return pd.DataFrame(rows)


def label_by_otsu(table: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Add ``inconsistent_otsu`` (cs below Otsu's threshold over all rows); returns ``(table, threshold)``."""
    threshold = otsu_threshold(table["cs"].to_numpy())
    return table.assign(inconsistent_otsu=table["cs"] < threshold), threshold


def consistency_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per relation: facts, mean ± std of the score, share of inconsistent facts under both thresholds."""
    grouped = table.groupby("relation", sort=False)
    return grouped.agg(
        n_facts=("cs", "size"),
        n_queries=("n_queries", "first"),
        neurons_per_query=("neurons_per_query", "mean"),
        cs_mean=("cs", "mean"),
        cs_std=("cs", lambda x: x.std(ddof=0)),
        cs_min=("cs", "min"),
        cs_max=("cs", "max"),
        inconsistent_static=("inconsistent_static", "mean"),
        inconsistent_otsu=("inconsistent_otsu", "mean"),
    ).reset_index()
