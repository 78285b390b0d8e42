"""Sentences of notebook 05 (in-context learning), built only from the tables it shows.

Each function reads tables of :mod:`kc_utils.analysis.icl` (the columns its docstring names) and returns
plain text; each is tested on a hand-made table whose sentence is known.
"""

from __future__ import annotations

import pandas as pd

from kc_utils.circuits.budget import SMALL_GRAPH_EDGES

__all__ = [
    "accuracy_sentence",
    "attention_sets_left_out_sentence",
    "circuit_change_sentence",
    "departures_sentence",
    "table2_sentence",
]


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.0f}%"


def _duration(seconds: float) -> str:
    """``"3 min 05 s"``, or ``"42 s"`` under a minute."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def _points(x: float) -> str:
    """A whole number of points, without a negative zero."""
    text = f"{x:.0f}"
    return "0" if text == "-0" else text


def accuracy_sentence(table: pd.DataFrame, n_shots: int) -> str:
    """Zero-shot vs ``n_shots``-shot accuracy per format, from an :func:`~kc_utils.analysis.icl.accuracy_by_k` table."""
    parts = []
    for fmt, group in table.groupby("format", sort=False):
        zero = group[group["k"] == 0].set_index("relation")["top1"]
        shot = group[group["k"] == n_shots].set_index("relation")["top1"]
        if not len(zero) or not len(shot):
            continue
        gain = shot - zero.reindex(shot.index)
        mean_by_k = group.groupby("k")["top1"].mean()
        best_k = int(mean_by_k.idxmax())
        with_demos = mean_by_k[mean_by_k.index > 0]
        text = (
            f"In the {fmt} format, mean accuracy goes from {_pct(100 * zero.mean())} with no demonstration to "
            f"{_pct(100 * shot.mean())} with {n_shots} (it rises in {int((gain > 0).sum())} of {len(gain)} relations, "
            f"falls in {int((gain < 0).sum())}); the best k on average is {best_k} ({_pct(100 * mean_by_k.max())})"
        )
        if len(with_demos):
            text += f", the worst k ≥ 1 is {int(with_demos.idxmin())} ({_pct(100 * with_demos.min())})"
        text += "."
        shuffled = group[group["k"] == n_shots]["top1_shuffled"].dropna() if n_shots else pd.Series(dtype=float)
        if len(shuffled):
            text += (
                f" With the demonstrations' objects shuffled, {n_shots}-shot accuracy is "
                f"{_pct(100 * shuffled.mean())}, so the content of the demonstrations "
                f"{'matters' if shuffled.mean() < shot.mean() - 0.05 else 'barely matters'}."
            )
        parts.append(text)
    return " ".join(parts)


def circuit_change_sentence(changes: pd.DataFrame, n_shots: int, max_listed: int = 12) -> str:
    """Which heads are new in the k-shot circuits, from a :func:`~kc_utils.analysis.icl.circuit_changes_table`.

    The ``max_listed`` heads new in the most relations are named; the rest are counted (the table
    beside the sentence names them all).
    """
    n = len(changes)
    with_new = changes[changes["n_new_heads"] > 0]
    counts: dict[str, int] = {}
    for heads in with_new["new_heads"]:
        for h in heads.split(", "):
            counts[h] = counts.get(h, 0) + 1
    if not len(with_new):
        head_text = f"No head is new in the {n_shots}-shot circuit of any of the {n} relations."
    else:
        ranked = sorted(counts.items(), key=lambda x: (-x[1], x[0]))
        listed = ", ".join(f"{h} ({c} of {n})" for h, c in ranked[:max_listed])
        if len(ranked) > max_listed:
            rest = ranked[max_listed:]
            most = max(c for _, c in rest)
            listed += f" and {len(rest)} more heads, each new in at most {most} of {n} (in the table)"
        head_text = (
            f"Heads new in the {n_shots}-shot circuit appear in {len(with_new)} of {n} relations: {listed}; "
            f"{n - len(with_new)} relations gain no head."
        )
    dropped = int((changes["n_dropped_heads"] > 0).sum())
    return (
        f"{head_text} {dropped} of {n} relations lose at least one zero-shot head; on average the two circuits "
        f"share {changes['node_jaccard'].mean():.0%} of their nodes (Jaccard)."
    )


def table2_sentence(table: pd.DataFrame, n_sigma: float = 2.0, min_points: float = 5.0) -> str:
    """What Table 2 says: does ablating the head set cost more than random heads, here and in the paper?

    A row counts as *specific* when its ablated accuracy is below the random mean by more than
    ``n_sigma`` random standard deviations and by more than ``min_points`` accuracy points.
    """
    parts = []
    specific = []
    for _, r in table.iterrows():
        if r["n_random"] == 0 or r["random_mean"] != r["random_mean"]:
            parts.append(f"{r['relation']}: no random baseline (too few other heads)")
            continue
        gap = r["random_mean"] - r["ablated"]
        is_specific = gap > max(n_sigma * r["random_std"], min_points)
        specific.append(is_specific)
        parts.append(
            f"{r['relation']} ({r['heads']}): {_pct(r['original'])} → {_pct(r['ablated'])} vs random "
            f"{r['random_mean']:.0f} ± {r['random_std']:.0f}%"
        )
    n_specific = int(sum(specific))
    text = (
        f"Ablating the chosen heads costs more than as many random heads (by more than {n_sigma:g} standard "
        f"deviations and {min_points:g} points) in {n_specific} of {len(specific)} rows. " + "; ".join(parts) + "."
    )
    paper = table.dropna(subset=["paper_original"])
    if len(paper):
        ours_drop = (paper["original"] - paper["ablated"]).mean()
        paper_drop = (paper["paper_original"] - paper["paper_ablated"]).mean()
        paper_random_drop = (paper["paper_original"] - paper["paper_random"]).mean()
        ours_random_drop = (paper["original"] - paper["random_mean"]).mean()
        text += (
            f" Over the {len(paper)} rows of relations the paper also reports, ablation costs "
            f"{_points(ours_drop)} points here ({_points(ours_random_drop)} for random heads) against "
            f"{_points(paper_drop)} in the paper ({_points(paper_random_drop)} for random heads)."
        )
    return text


def attention_sets_left_out_sentence(left_out: list[str], n_edges: int, n_rows: int, seconds: float) -> str:
    """What ``ablate_attention_heads="auto"`` left out of Table 2, and what adding it costs, from this run's timing.

    Args:
        left_out: relations whose heads with the most attention to the demonstrations were not ablated
            (:func:`kc_utils.analysis.icl.table2_head_sets`).
        n_edges: edges of the model's graph.
        n_rows: Table-2 rows this run computed; ``seconds``: the time they took.

    Returns:
        ``""`` when nothing was left out; else the sentence.

    Example:
        >>> attention_sets_left_out_sentence(["adj_comparative", "word_sentiment"], 70_651, 5, 250.0)[:60]
        'Left out on this graph of 70,651 edges (`ablate_attention_he'
    """
    if not left_out:
        return ""
    average = seconds / n_rows if n_rows else float("nan")
    timing = (
        f"here the {n_rows} rows above took {_duration(seconds)}, {_duration(average)} each on average"
        if n_rows
        else "no row was computed here to time"
    )
    return (
        f'Left out on this graph of {n_edges:,} edges (`ablate_attention_heads="auto"` ablates them on graphs up '
        f"to {SMALL_GRAPH_EDGES:,} edges): the ablation of the heads with the most attention to the demonstrations, "
        f"beside the new heads, in {len(left_out)} relation{'s' if len(left_out) != 1 else ''} "
        f"({', '.join(left_out)}). Where those heads look is in the section above. `ablate_attention_heads=True` "
        f"adds one row for each, with its own random sets; {timing}. Table 2 above, one row per relation, does not "
        "change with them."
    )


def departures_sentence(
    n_layers: int, n_heads: int, n_writing: int, fmt: str, n_shots: int, organism: bool = True
) -> str:
    """Where the model departs from the paper's GPT-2 medium setting, in plain words.

    ``organism``: the shipped model organism (block 0 without attention, arrow-format few-shot training,
    accuracies over its trained facts); otherwise a pretrained model, described without those assumptions.
    """
    silent = n_layers * n_heads - n_writing
    shape = f"The model has {n_layers} layers of {n_heads} heads against GPT-2 medium's 24 of 16; "
    if not organism:
        fmt_text = (
            "the paper's layout: the relation's template written out for each demonstration, ended by a period"
            if fmt == "sentence"
            else "the arrow format `s -> o ;`, not the paper's sentences"
        )
        silent_text = (
            f"{silent} of its heads write nothing on these prompts and are left out of the random baselines"
            if silent
            else "every head writes something, so random baselines draw from all of them"
        )
        return (
            shape + f"{silent_text}. Its {n_shots}-shot prompts use {fmt_text}. Accuracies are over a sample of "
            "each relation file's facts, the paper's over all facts of a relation."
        )
    fmt_text = (
        "the arrow format `s -> o ;` it was trained on (60 few-shot documents of 4 pairs per relation), "
        "so demonstrations are in distribution"
        if fmt == "arrow"
        else "sentences of a training template one after another, a layout it never saw in training (each "
        "training document holds one fact)"
    )
    return (
        shape + f"{silent} heads (block 0) have no attention and write nothing, so circuits and random baselines "
        f"use the {n_writing} others. Its {n_shots}-shot prompts use {fmt_text}. The paper's accuracies are over "
        "all facts of a relation; ours are over facts the organism was trained on."
    )
