"""Sentences of notebook 07, each built from the table the notebook shows beside it.

Every function takes one table and returns Markdown text; none computes anything the table does not
hold. ``tests/test_multihop_text.py`` runs each on a hand-made table whose answer is known.

===============================  ================================================================
builder                          table
===============================  ================================================================
:func:`gap_text`                 one row per composition: :meth:`~kc_utils.data.multihop.TwoHopDataset.gap_row`
:func:`overlap_text`             one row per pair of circuits (:func:`overlap_comparison`)
:func:`movers_text`              one row: :func:`kc_utils.analysis.multihop.mover_containment`
:func:`bridge_lens_text`         one row per layer: :func:`kc_utils.analysis.multihop.bridge_lens_summary`
:func:`bridge_patching_text`     one row: :func:`kc_utils.analysis.multihop.bridge_patching_summary`
===============================  ================================================================

The published overlaps (:data:`PAPER_OVERLAPS`) are the paper's three node/edge pairs for its three
circuits; which pair of circuits each belongs to is not stated in our source, so the sentences compare
with their range.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kc_utils.analysis.head_roles_text import _need, _pct
from kc_utils.circuits.overlap import MEASURES

__all__ = [
    "PAPER_OVERLAPS",
    "PAIR_LABELS",
    "bridge_lens_text",
    "bridge_patching_text",
    "gap_text",
    "patching_sizes_text",
    "movers_text",
    "overlap_comparison",
    "overlap_text",
]

#: Yao et al. (2024, §5), GPT-2 medium: node/edge overlap (%) of the first-hop, second-hop and integrated
#: circuits, as the paper reports them (arXiv:2405.17969).
PAPER_OVERLAPS: tuple[tuple[float, float], ...] = ((83.33, 63.20), (70.27, 45.27), (71.42, 49.42))

#: Readable names of the circuit pairs the notebook compares.
PAIR_LABELS = {
    ("first_hop", "two_hop"): "first hop vs two-hop",
    ("second_hop", "two_hop"): "second hop vs two-hop",
    ("first_hop", "second_hop"): "first hop vs second hop",
}

#: How far above a baseline an overlap must lie to count as "more" (absolute share).
MARGIN = 0.05


def gap_text(gap: pd.DataFrame, top_k: int) -> str:
    """Per composition: facts known at both hops that are also answered composed, and what the model says instead."""
    _need(
        gap,
        [
            "composition",
            "both hops known",
            "composed (both hops and two-hop)",
            "composed share",
            "two-hop top-1 is the bridge",
            "most common answer share",
        ],
        "compositionality-gap",
    )
    if gap.empty:
        raise ValueError("the compositionality-gap table is empty")
    crit = "top-1" if top_k == 1 else f"top-{top_k}"
    parts = []
    for _, r in gap.iterrows():
        both, comp = int(r["both hops known"]), int(r["composed (both hops and two-hop)"])
        if both == 0:
            parts.append(f"`{r['composition']}`: no fact is answered at both hops.")
            continue
        share, chance = r["composed share"], r["most common answer share"]
        versus = "above" if share > chance + MARGIN else "not above"
        parts.append(
            f"`{r['composition']}`: {comp} of {both} facts answered at both hops are answered composed "
            f"({_pct(share)}; gap {_pct(1 - share)}), {versus} the {_pct(chance)} that always naming the most "
            f"common answer would score; the two-hop prompt's top-1 is the bridge itself in "
            f"{int(r['two-hop top-1 is the bridge'])} of {both}."
        )
    best = gap.sort_values("composed share", ascending=False, kind="stable").iloc[0]
    composes = best["composed share"] > best["most common answer share"] + MARGIN and best["composed share"] >= 0.2
    verdict = (
        f"The model composes: at best {_pct(best['composed share'])} of the facts it knows at both hops "
        f"(`{best['composition']}`)."
        if composes
        else f"The model does not compose: at best {_pct(best['composed share'])} of the facts it knows at both "
        f"hops are answered composed (`{best['composition']}`, {crit}), and never more than a model that always "
        "names the most common answer by a clear margin."
    )
    return " ".join([verdict, *parts])


def overlap_comparison(
    observed: pd.DataFrame, random: pd.DataFrame, unrelated: pd.DataFrame, labels: dict | None = None
) -> pd.DataFrame:
    """One row per pair: the observed overlaps beside random circuits (mean ± std) and unrelated relations (mean).

    Args:
        observed: :func:`kc_utils.circuits.overlap.overlap_table` of the pairs (columns ``a``, ``b``).
        random: one row per pair and draw of :func:`~kc_utils.circuits.overlap.random_overlaps`, with ``a``, ``b``.
        unrelated: one row per pair ``(unrelated relation, b)``: columns ``pair_a``, ``pair_b`` (the pair
            it is a baseline for), ``relation`` and :data:`~kc_utils.circuits.overlap.MEASURES`.

    Returns:
        Columns ``pair``, ``a``, ``b``, the four measures, ``{m}_random_mean``, ``{m}_random_std``,
        ``{m}_unrelated_mean``, ``{m}_unrelated_min``, ``{m}_unrelated_max``, ``n_random``, ``n_unrelated``.
    """
    labels = PAIR_LABELS if labels is None else labels
    rows = []
    for _, r in observed.iterrows():
        row = {"pair": labels.get((r["a"], r["b"]), f"{r['a']} vs {r['b']}"), "a": r["a"], "b": r["b"]}
        draws = random[(random["a"] == r["a"]) & (random["b"] == r["b"])]
        others = unrelated[(unrelated["pair_a"] == r["a"]) & (unrelated["pair_b"] == r["b"])]
        for m in MEASURES:
            row[m] = float(r[m])
            row[f"{m}_random_mean"] = float(draws[m].mean()) if len(draws) else math.nan
            row[f"{m}_random_std"] = float(draws[m].std(ddof=0)) if len(draws) else math.nan
            row[f"{m}_unrelated_mean"] = float(others[m].mean()) if len(others) else math.nan
            row[f"{m}_unrelated_min"] = float(others[m].min()) if len(others) else math.nan
            row[f"{m}_unrelated_max"] = float(others[m].max()) if len(others) else math.nan
        row["n_random"], row["n_unrelated"] = len(draws), len(others)
        rows.append(row)
    return pd.DataFrame(rows)


def _above(row: pd.Series, m: str) -> tuple[bool, bool]:
    above_random = row[m] > row[f"{m}_random_mean"] + max(2 * row[f"{m}_random_std"], MARGIN)
    unrelated = row[f"{m}_unrelated_max"]
    above_unrelated = not math.isnan(unrelated) and row[m] > unrelated + MARGIN
    return bool(above_random), bool(above_unrelated)


def overlap_text(comparison: pd.DataFrame) -> str:
    """The overlaps of each pair beside the paper's range and the two baselines, and what they say."""
    needed = ["pair", "a", "b"] + [f"{m}{s}" for m in MEASURES for s in ("", "_random_mean", "_random_std")]
    _need(comparison, needed + [f"{m}_unrelated_max" for m in MEASURES], "overlap-comparison")
    if comparison.empty:
        raise ValueError("the overlap-comparison table is empty")
    nodes = [n for n, _ in PAPER_OVERLAPS]
    edges = [e for _, e in PAPER_OVERLAPS]
    parts = [
        f"The paper (GPT-2 medium) reports {min(nodes):.0f}–{max(nodes):.0f}% shared nodes and "
        f"{min(edges):.0f}–{max(edges):.0f}% shared edges among its three circuits."
    ]
    for _, r in comparison.iterrows():
        parts.append(
            f"**{r['pair']}**: {_pct(r['node_overlap'])} of nodes and {_pct(r['edge_overlap'])} of edges shared "
            f"(Jaccard {_pct(r['node_jaccard'])} / {_pct(r['edge_jaccard'])}); random circuits of the same sizes "
            f"{_pct(r['node_overlap_random_mean'])} ± {_pct(r['node_overlap_random_std'])} and "
            f"{_pct(r['edge_overlap_random_mean'])} ± {_pct(r['edge_overlap_random_std'])}; unrelated relations' "
            f"circuits {_pct(r['node_overlap_unrelated_mean'])} and {_pct(r['edge_overlap_unrelated_mean'])} "
            f"(at most {_pct(r['node_overlap_unrelated_max'])} and {_pct(r['edge_overlap_unrelated_max'])})."
        )
    hops = comparison[comparison["b"] == "two_hop"]
    if len(hops):
        verdicts = [_above(r, "edge_overlap") for _, r in hops.iterrows()]
        if all(a and u for a, u in verdicts):
            parts.append(
                "Both hops' circuits share more edges with the two-hop circuit than random circuits and than any "
                "unrelated relation's circuit do: the two-hop circuit reuses the single-hop circuits."
            )
        elif all(a for a, _ in verdicts):
            parts.append(
                "The hops' circuits share more edges with the two-hop circuit than random circuits do, but not "
                "clearly more than unrelated relations' circuits do: the overlap shows a circuit common to many "
                "relations, not a reuse of these two hops in particular."
            )
        else:
            parts.append(
                "At least one hop's circuit shares no more edges with the two-hop circuit than random circuits of "
                "the same sizes do."
            )
    return " ".join(parts)


def movers_text(containment: pd.DataFrame) -> str:
    """Whether the two-hop circuit holds the first hop's movers, beside chance (one row)."""
    _need(containment, ["n_movers", "movers_in_circuit", "movers_share", "chance", "missing"], "mover-containment")
    if len(containment) != 1:
        raise ValueError(f"the mover-containment table needs exactly one row, found {len(containment)}")
    r = containment.iloc[0]
    n, held = int(r["n_movers"]), int(r["movers_in_circuit"])
    if n == 0:
        return "The first hop has no mover heads under the role thresholds, so there is nothing to look up."
    text = (
        f"The two-hop circuit holds {held} of the first hop's {n} mover heads ({_pct(r['movers_share'])}); "
        f"it holds {_pct(r['chance'])} of all the heads that write anything (chance)."
    )
    if r["chance"] >= 0.9:
        text += " With a circuit that holds nearly every head, containment says nothing about reuse."
    elif r["movers_share"] > r["chance"] + MARGIN:
        text += " The movers are held more often than heads at random."
    else:
        text += " The movers are held no more often than heads at random."
    if r["missing"]:
        text += f" Missing: {r['missing']}."
    return text


def bridge_lens_text(summary: pd.DataFrame, n_layers: int) -> str:
    """Where the bridge becomes readable (top-10 share and median rank by layer) against a control entity."""
    needed = [f"{w}_{p}_{s}" for w in ("bridge", "control") for p in ("last", "subject") for s in ("median", "top")]
    _need(summary, ["layer", "n_prompts", *needed], "bridge-lens")
    if summary.empty:
        raise ValueError("the bridge-lens table is empty")
    blocks = summary[summary["layer"] >= 0]
    parts = []
    for where, label in (("subject", "at the first hop's subject"), ("last", "at the last position")):
        gap = blocks[f"bridge_{where}_top"] - blocks[f"control_{where}_top"]
        best = blocks.loc[gap.idxmax()]
        formed = blocks[(blocks[f"bridge_{where}_top"] >= 0.5) & (gap >= 0.3)]
        if len(formed):
            when = (
                f"from block {int(formed['layer'].iloc[0])} of {n_layers} on, the bridge ranks in the top 10 for at "
                f"least half of the prompts and at least 30 points more often than the control"
            )
        else:
            when = (
                "no block puts the bridge in the top 10 for half of the prompts and 30 points more often than the "
                "control, so it is not readable there"
            )
        last = int(best["layer"]) == int(blocks["layer"].max())
        at_best = (
            f"its best block is the last (block {int(best['layer'])}), where"
            if last
            else f"at its best (block {int(best['layer'])}),"
        )
        parts.append(
            f"{label.capitalize()}, {when}; {at_best} "
            f"{_pct(best[f'bridge_{where}_top'])} of prompts have it in the top 10 (median rank "
            f"{best[f'bridge_{where}_median']:.0f}) against {_pct(best[f'control_{where}_top'])} for another "
            f"entity of its type (median {best[f'control_{where}_median']:.0f})."
        )
    return f"Over {int(summary['n_prompts'].iloc[0])} two-hop prompts: " + " ".join(parts)


def _beats_random(
    group: float | pd.Series, random_mean: float | pd.Series, random_std: float | pd.Series
) -> bool | pd.Series:
    """Whether a recovery (a number or a column) exceeds random sets' mean by twice their std and at least MARGIN."""
    return group > random_mean + np.maximum(2 * random_std, MARGIN)


def bridge_patching_text(summary: pd.DataFrame) -> str:
    """Does the answer follow the bridge when the first hop's circuit is restored? (one row)"""
    needed = [f"{m}_{k}" for m in ("follow", "recovery") for k in ("corrupt", "clean", "group")]
    needed += ["follow_random_mean", "follow_random_std", "recovery_random_mean", "recovery_random_std"]
    _need(summary, [*needed, "n_components", "n_random", "n_prompts", "pool"], "bridge-patching")
    if len(summary) != 1:
        raise ValueError(f"the bridge-patching table needs exactly one row, found {len(summary)}")
    r = summary.iloc[0]
    text = (
        f"On {int(r['n_prompts'])} two-hop prompts whose subject was swapped for one with another bridge, the "
        f"clean answer is top-1 in {_pct(r['follow_corrupt'])} (nothing restored) and {_pct(r['follow_clean'])} "
        f"(everything restored). Restoring the {int(r['n_components'])} components of the first hop's circuit "
        f"brings it back in {_pct(r['follow_group'])} and recovers {_pct(r['recovery_group'])} of the logit "
        f"difference; {int(r['n_random'])} random sets of {int(r['n_components'])} of the {int(r['pool'])} "
        f"components: {_pct(r['follow_random_mean'])} ± {_pct(r['follow_random_std'])} and "
        f"{_pct(r['recovery_random_mean'])} ± {_pct(r['recovery_random_std'])}."
    )
    if _beats_random(r["recovery_group"], r["recovery_random_mean"], r["recovery_random_std"]):
        text += " The answer follows the bridge the first hop's circuit carries, more than for random components."
    elif r["n_components"] / max(r["pool"], 1) >= 0.5:
        text += (
            f" The first hop's circuit is {_pct(r['n_components'] / r['pool'])} of all components, so random sets "
            "of its size restore nearly as much: the test cannot single it out on this model."
        )
    else:
        text += " Random component sets of the same size restore as much: the first hop's circuit is not special here."
    return text


def _join(numbers: list[int]) -> str:
    return str(numbers[0]) if len(numbers) == 1 else ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def patching_sizes_text(sizes: pd.DataFrame) -> str:
    """The first hop's strongest components restored at several sizes, each against random sets of its size.

    ``sizes`` is :func:`kc_utils.analysis.multihop.bridge_patching_by_size`'s table plus a ``pool``
    column. A size beats random when its recovery exceeds the random sets' mean by twice their
    standard deviation and at least ``MARGIN``.
    """
    needed = ["size", "pool", "follow_group", "recovery_group", "recovery_random_mean", "recovery_random_std"]
    _need(sizes, [*needed, "follow_random_mean", "follow_random_std"], "patching-by-size")
    if sizes.empty:
        raise ValueError("the patching-by-size table is empty")
    rows = sizes.sort_values("size")
    pool = int(rows["pool"].iloc[0])
    listed = "; ".join(
        f"{int(r['size'])} ({_pct(r['size'] / pool)} of the {pool} components): follow {_pct(r['follow_group'])} "
        f"against {_pct(r['follow_random_mean'])} ± {_pct(r['follow_random_std'])}, recovery "
        f"{_pct(r['recovery_group'])} against {_pct(r['recovery_random_mean'])} ± {_pct(r['recovery_random_std'])}"
        for _, r in rows.iterrows()
    )
    beats = rows[_beats_random(rows["recovery_group"], rows["recovery_random_mean"], rows["recovery_random_std"])]
    text = (
        "Restoring only the first hop's strongest components (by circuit weight), against random sets of each "
        f"size: {listed}."
    )
    if len(beats):
        won = [int(k) for k in beats["size"]]
        lost = [int(k) for k in rows["size"] if int(k) not in won]
        text += (
            f" At {_join(won)} component{'s' if won != [1] else ''} the circuit's strongest components restore more "
            f"than random sets of the same size{f' (not at {_join(lost)})' if lost else ''}: the answer follows what "
            "they carry from the clean prompt."
        )
    else:
        text += " At no size do the circuit's strongest components restore more than random sets of the same size."
    return text
