"""Plotly figures of notebook 04: hallucinations traced through circuits.

Each takes a table of :mod:`kc_utils.analysis.hallucination` and its steps; attention maps and circuits reuse
:func:`kc_utils.viz.heads.plot_attention` and :func:`kc_utils.viz.circuits.plot_circuit`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.style import TEMPLATE

__all__ = ["plot_answer_lens", "plot_confidence", "plot_head_dla", "plot_rank_curves", "plot_repair"]

_KIND_COLOURS = {"correct": "#1a9850", "knowledge_present": "#d73027", "knowledge_absent": "#4575b4"}
_CORRECT, _WRONG = "#1a9850", "#d73027"


def plot_confidence(kinds: pd.DataFrame, group_column: str = "group", title: str = "") -> go.Figure:
    """Top-1 confidence of every prompt, one box per group × kind (points shown)."""
    for column in (group_column, "kind", "confidence"):
        if column not in kinds:
            raise ValueError(f"the classification table has no {column!r} column")
    fig = go.Figure()
    for kind, colour in _KIND_COLOURS.items():
        rows = kinds[kinds["kind"] == kind]
        if rows.empty:
            continue
        fig.add_trace(
            go.Box(
                x=rows[group_column],
                y=rows["confidence"],
                name=kind.replace("_", "-"),
                marker_color=colour,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                text=rows.get("prompt"),
                hoveron="points",
                hovertemplate="%{text}<br>top-1 probability %{y:.2f}",
            )
        )
    fig.update_layout(
        boxmode="group",
        template=TEMPLATE,
        height=420,
        title=title or "how sure the model is of its top-1 answer",
        yaxis=dict(title="top-1 probability", range=[0, 1.02]),
    )
    return fig


def plot_answer_lens(correct: pd.DataFrame, wrong: pd.DataFrame, prompt_index: int, title: str = "") -> go.Figure:
    """Logit lens of the correct and of the wrong answer, at the subject and at the last position.

    Args:
        correct, wrong: :func:`kc_utils.analysis.lens.logit_lens` tables of the same prompts with the
            correct and with the wrong answer as targets.
    """
    lines = []
    for table, label, colour in ((correct, "correct", _CORRECT), (wrong, "wrong", _WRONG)):
        rows = table[table["prompt_index"] == prompt_index].sort_values("layer")
        if rows.empty:
            raise ValueError(f"prompt_index {prompt_index} is not in the {label} table")
        lines.append((rows, label, colour))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rank (1 = top-1)", "probability"))
    for rows, label, colour in lines:
        answer = rows["target"].iloc[0]
        for column, where, dash in (("subject_rank", "subject", "dot"), ("rank", "last position", "solid")):
            name = f"{label} ({answer}) at the {where}"
            fig.add_trace(
                go.Scatter(
                    x=rows["stage"],
                    y=rows[column] + 1,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    line=dict(color=colour, dash=dash),
                    hovertemplate="after %{x}: rank %{y:.0f}",
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=rows["stage"],
                    y=rows[column.replace("rank", "prob")],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=False,
                    line=dict(color=colour, dash=dash),
                    hovertemplate="after %{x}: probability %{y:.3f}",
                ),
                row=1,
                col=2,
            )
    fig.update_yaxes(type="log", autorange="reversed", title="rank (1 = top-1, log)", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title="probability", row=1, col=2)
    fig.update_xaxes(title="residual stream after")
    prompt = lines[0][0]["prompt"].iloc[0] if "prompt" in lines[0][0] else ""
    fig.update_layout(title=title or f"logit lens of both answers: {prompt!r}", template=TEMPLATE, height=440)
    return fig


def plot_head_dla(heads: pd.DataFrame, title: str = "") -> go.Figure:
    """Each head's direct logit attribution to the wrong and to the correct answer (bars), and their difference.

    Args:
        heads: rows with ``head``, ``dla_wrong``/``dla_correct`` (one prompt) or
            ``mean_dla_wrong``/``mean_dla_correct`` (:func:`kc_utils.analysis.wrong_answer_heads.rank_heads`).
    """
    prefix = "mean_" if "mean_dla_wrong" in heads else ""
    for column in ("head", f"{prefix}dla_wrong", f"{prefix}dla_correct"):
        if column not in heads:
            raise ValueError(f"the head table has no {column!r} column")
    fig = go.Figure()
    number = "%{x}: %{y:+.2f}"
    fig.add_bar(
        x=heads["head"],
        y=heads[f"{prefix}dla_wrong"],
        name="to the wrong answer",
        marker_color=_WRONG,
        hovertemplate=number,
    )
    fig.add_bar(
        x=heads["head"],
        y=heads[f"{prefix}dla_correct"],
        name="to the correct answer",
        marker_color=_CORRECT,
        hovertemplate=number,
    )
    fig.add_scatter(
        x=heads["head"],
        y=heads[f"{prefix}dla_wrong"] - heads[f"{prefix}dla_correct"],
        mode="markers",
        name="wrong − correct",
        marker=dict(color="black", symbol="diamond", size=9),
        hovertemplate=number,
    )
    fig.update_layout(
        barmode="group",
        template=TEMPLATE,
        height=400,
        title=title or "direct logit attribution of each head",
        yaxis_title="logit contribution",
    )
    return fig


def plot_repair(
    tables: Mapping[str, pd.DataFrame], each_head: pd.DataFrame | None = None, title: str = ""
) -> go.Figure:
    """Repair rates: for each labelled :func:`~kc_utils.analysis.head_repair.repair` table, the tested set
    (diamond), the random sets (points) and the rate before intervening (line); then, optionally, every
    head patched alone (bars, from :func:`~kc_utils.analysis.head_repair.repair_by_each_head`)."""
    cols = 2 if each_head is not None else 1
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=(
            "held-out failures: tested sets vs random sets",
            "each head patched alone, every failure (exploration)",
        )[:cols],
        column_widths=[0.45, 0.55][:cols] if cols == 2 else None,
    )
    for label, table in tables.items():
        randoms = table[table["set"] == "random"]
        group = table[table["set"] == "group"]
        fig.add_trace(
            go.Box(
                x=[label] * len(randoms),
                y=randoms["top1"],
                name="random sets",
                boxpoints="all",
                marker_color="#999999",
                showlegend=label == next(iter(tables)),
                legendgroup="random",
                text=[", ".join(h) for h in randoms["heads"]],
                hoveron="points",
                hovertemplate="%{text}: repairs %{y:.0%}",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[label],
                y=group["top1"],
                mode="markers",
                name="tested set",
                marker=dict(color=_WRONG, symbol="diamond", size=14),
                showlegend=label == next(iter(tables)),
                legendgroup="group",
                text=[", ".join(h) for h in group["heads"]],
                hovertemplate="%{text}: repairs %{y:.0%}",
            ),
            row=1,
            col=1,
        )
    if each_head is not None:
        rates = each_head.groupby("head", sort=False)["repaired"].mean()
        fig.add_bar(
            x=rates.index,
            y=rates.values,
            name="one head patched (every failure)",
            marker_color="#4575b4",
            hovertemplate="%{x}: repairs %{y:.0%}",
            row=1,
            col=cols,
        )
    fig.update_yaxes(range=[-0.02, 1.02], title="correct answer top-1 (share of prompts)")
    fig.update_layout(template=TEMPLATE, height=420, title=title or "repairing the wrong answer")
    return fig


def plot_rank_curves(curves: Mapping[str, pd.DataFrame], title: str = "") -> go.Figure:
    """Median rank of the correct answer per layer, at the subject and at the last position, one line per group.

    Args:
        curves: ``{group: rank_curves table}`` (:func:`kc_utils.analysis.failure_kinds.rank_curves`).
    """
    palette = ["#1a9850", "#4575b4", "#d73027", "#984ea3"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("at the subject", "at the last position"))
    for k, (group, table) in enumerate(curves.items()):
        x = table["stage"] if "stage" in table else table["layer"]
        colour = palette[k % len(palette)]
        for col, column in ((1, "subject_median_rank"), (2, "last_median_rank")):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=table[column] + 1,
                    mode="lines+markers",
                    name=group,
                    legendgroup=group,
                    showlegend=col == 1,
                    line=dict(color=colour),
                    hovertemplate="after %{x}: median rank %{y:.1f}",
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(type="log", autorange="reversed", title="median rank (1 = top-1, log)")
    fig.update_xaxes(title="residual stream after")
    fig.update_layout(template=TEMPLATE, height=420, title=title or "where the correct answer appears")
    return fig
