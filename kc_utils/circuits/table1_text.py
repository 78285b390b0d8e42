"""Sentences about Table 1, built only from the table shown beside them (:func:`kc_utils.circuits.table1.table1`).

Each function takes the table (per-relation rows plus the ``average`` row) and returns Markdown;
tests run them on hand-made tables whose answers are known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["degenerate_random_relations", "describe_method_comparison", "describe_table1", "paper_claim_holds"]

#: Two evaluations closer than this (Hit@10, a share of prompts) count as the same.
SAME = 0.01

#: A mean gain over random circuits on the circuit's own nodes above this (Hit@10 or Hit@1) says the wiring matters.
WIRING_GAIN = 0.1


def _rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["relation"] != "average"]


def degenerate_random_relations(table: pd.DataFrame, split: str = "Dtest") -> list[str]:
    """Relations whose random connected circuits score like the empty circuit, every draw (std ≈ 0)."""
    rows = _rows(table)
    same = (rows[f"{split} hit@10 random"] - rows[f"{split} hit@10 empty"]).abs() < SAME
    flat = rows[f"{split} hit@10 random std"].fillna(0) < SAME
    return list(rows.loc[same & flat, "relation"])


def paper_claim_holds(table: pd.DataFrame, split: str = "Dtest", share: float = 0.7) -> list[str]:
    """Relations whose circuit keeps at least ``share`` of the full model's Hit@10 on ``split``."""
    rows = _rows(table)
    keeps = rows[f"{split} hit@10 circuit"] >= share * rows[f"{split} hit@10 full"]
    return list(rows.loc[keeps, "relation"])


def _range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "never reached"
    return f"{values.mean():.1f} edges on average (range {values.min():.0f}–{values.max():.0f})"


def describe_table1(table: pd.DataFrame) -> str:
    """The findings of a Table-1 table in a few sentences (Markdown)."""
    rows = _rows(table)
    n = len(rows)
    if n == 0:
        raise ValueError("the table has no relation rows")
    mean = rows.mean(numeric_only=True)
    parts = [
        f"Circuits keep **{mean['#edges']:.1f} edges** on average ({mean['% edges']:.2f}% of the graph). "
        f"The smallest circuit that keeps 90% of the full model's logit difference on Dval: "
        f"{_range(rows['knee90'])}; for 70%: {_range(rows['knee70'])}."
    ]
    parts.append(
        f"On Dtest, Hit@10 is {mean['Dtest hit@10 full']:.2f} for the full model and "
        f"**{mean['Dtest hit@10 circuit']:.2f} for the circuit**, against {mean['Dtest hit@10 empty']:.2f} for the "
        f"empty circuit (every edge ablated), {mean['Dtest hit@10 random']:.2f} for random connected circuits of the "
        f"same size and {mean['Dtest hit@10 nodes']:.2f} for random circuits on the circuit's own nodes"
        + (
            f", and {mean['Dtest hit@10 other']:.2f} for another relation's circuit of the same size."
            if "Dtest hit@10 other" in rows and rows["Dtest hit@10 other"].notna().any()
            else "."
        )
        + f" Hit@1: circuit {mean['Dtest hit@1 circuit']:.2f}, full model {mean['Dtest hit@1 full']:.2f}, "
        f"empty {mean['Dtest hit@1 empty']:.2f}. Faithfulness (normalised logit difference) averages "
        f"{mean['Dval faithfulness']:.2f} on Dval and {mean['Dtest faithfulness']:.2f} on Dtest."
    )
    degenerate = degenerate_random_relations(table)
    if degenerate:
        parts.append(
            f"**The random-circuit baseline is degenerate** in {len(degenerate)} of {n} relations: every random "
            "circuit scores exactly like the empty circuit (the corrupted run), because it misses the few edges that "
            "carry the fact. There it measures nothing the empty circuit does not."
        )
    else:
        parts.append("Random connected circuits differ from the empty circuit in every relation.")
    nodes_like_empty = (rows["Dtest hit@1 nodes"] - rows["Dtest hit@1 empty"]).abs() < 0.05
    if nodes_like_empty.all():
        parts.append(
            "Random circuits on the circuit's own nodes score like the empty circuit too (Dtest Hit@1 "
            f"{mean['Dtest hit@1 nodes']:.2f} vs {mean['Dtest hit@1 empty']:.2f}): the fact flows through a specific "
            "wiring of these components, not through the components alone."
        )
    if "Dtest hit@1 other" in rows and rows["Dtest hit@1 other"].notna().any():
        share = mean["Dtest hit@1 other"] / mean["Dtest hit@1 circuit"] if mean["Dtest hit@1 circuit"] > 0 else np.nan
        parts.append(
            f"Another relation's circuit of the same size keeps Dtest Hit@1 "
            f"{mean['Dtest hit@1 other']:.2f} against {mean['Dtest hit@1 circuit']:.2f} for the relation's own circuit "
            f"({share:.0%} of it) — "
            + (
                "relations share most of their circuit, as the paper's reuse of components across related knowledge "
                "suggests."
                if share >= 0.5
                else "each relation needs much of its own circuit."
            )
        )
    gap = rows["Dtest hit@10 circuit"] - rows["Dtest hit@10 nodes"]
    gap1 = rows["Dtest hit@1 circuit"] - rows["Dtest hit@1 nodes"]
    matters = gap.mean() > WIRING_GAIN or gap1.mean() > WIRING_GAIN  # either measure: a small Hit@1 can hide it
    wiring = "The circuit's wiring matters" if matters else "The wiring adds little beyond the components here"
    parts.append(
        f"{wiring}: against random circuits on its own nodes the circuit gains "
        f"{gap.mean():+.2f} Dtest Hit@10 and {gap1.mean():+.2f} Hit@1 on average "
        f"(more than {SAME:.2f} Hit@1 in {int((gap1 > SAME).sum())} of {n} relations)."
    )
    flagged = list(rows.loc[rows["corrupt high"].astype(bool), "relation"])
    if flagged:
        objects = rows.set_index("relation").loc[flagged, "#objects"]
        parts.append(
            f"{len(flagged)} relation(s) already reach Dtest Hit@10 ≥ 0.5 with every edge ablated — "
            + ", ".join(f"{k} ({int(v)} distinct answers)" for k, v in objects.items())
            + ": with so few answers Hit@10 is near-trivial there; read Hit@1 and faithfulness."
        )
    holds = paper_claim_holds(table)
    small = mean["% edges"] <= 10
    parts.append(
        f"The paper's claim that a small circuit keeps at least 70% of the model's Hit@10 holds on Dtest for "
        f"{len(holds)} of {n} relations"
        + ("" if len(holds) in (0, n) else f" (not for {', '.join(sorted(set(rows['relation']) - set(holds)))})")
        + (
            f", with circuits of {mean['% edges']:.1f}% of the edges."
            if small
            else f" — but these circuits are not small: they keep {mean['% edges']:.0f}% of the edges."
        )
    )
    return "\n\n".join(parts)


def describe_method_comparison(table: pd.DataFrame, first: str, second: str) -> str:
    """Sentences on a :func:`kc_utils.circuits.table1.method_comparison` table of methods ``first`` and ``second``."""
    if table.empty:
        raise ValueError("the comparison table is empty")
    mean = table.mean(numeric_only=True)
    n = len(table)
    smaller = int((table[f"{second} edges"] < table[f"{first} edges"]).sum())
    better = int((table[f"{second} Dtest faithfulness"] > table[f"{first} Dtest faithfulness"]).sum())
    return (
        f"Over {n} relation{'s' if n != 1 else ''}, {second} keeps {mean[f'{second} edges']:.1f} edges "
        f"on average against "
        f"{mean[f'{first} edges']:.1f} for {first} (smaller in {smaller} of {n}). The two circuits share "
        f"{mean['edge overlap']:.0%} of their edges and {mean['node overlap']:.0%} of their nodes on average "
        f"(Jaccard). Dtest faithfulness: {first} {mean[f'{first} Dtest faithfulness']:.2f}, "
        f"{second} {mean[f'{second} Dtest faithfulness']:.2f} ({second} higher in {better} of {n}); "
        f"Dtest Hit@1: {first} {mean[f'{first} Dtest hit@1']:.2f}, {second} {mean[f'{second} Dtest hit@1']:.2f}."
    )
