"""Plotly figures of the logit lens: the target's rank and probability along the layers.

Takes the table of :func:`kc_utils.analysis.lens.logit_lens`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kc_utils.viz.save import show_in_output as _show
from kc_utils.viz.style import TEMPLATE

__all__ = ["logit_lens_explorer", "plot_logit_lens"]

_LAST, _SUBJECT = "#2166ac", "#b2182b"


def plot_logit_lens(table: pd.DataFrame, prompt_index: int) -> go.Figure:
    """The target's rank (log scale, 1 = top-1) and probability after each block, for one prompt.

    Two lines per panel: the last position (where the answer is predicted) and the best subject
    position (:func:`kc_utils.analysis.lens.logit_lens`'s ``subject_rank``/``subject_prob``).
    """
    rows = table[table["prompt_index"] == prompt_index].sort_values("layer")
    if rows.empty:
        raise ValueError(f"prompt_index {prompt_index} is not in the table (0 … {table['prompt_index'].max()})")
    labels = rows["stage"].tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rank of the target (1 = top-1)", "probability of the target"))
    for column, name, colour in (("rank", "last position", _LAST), ("subject_rank", "best subject position", _SUBJECT)):
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=rows[column] + 1,
                mode="lines+markers",
                name=name,
                line=dict(color=colour),
                legendgroup=name,
                hovertemplate="%{x}: rank + 1 = %{y:.0f}",
            ),
            row=1,
            col=1,
        )
        prob = column.replace("rank", "prob")
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=rows[prob],
                mode="lines+markers",
                name=name,
                line=dict(color=colour),
                legendgroup=name,
                showlegend=False,
                hovertemplate="%{x}: probability %{y:.3f}",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", autorange="reversed", title="rank + 1 (log)", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title="probability", row=1, col=2)
    fig.update_xaxes(title="residual stream after")
    first = rows.iloc[0]
    fig.update_layout(title=f"logit lens: {first['prompt']!r} → {first['target']!r}", template=TEMPLATE, height=420)
    return fig


def logit_lens_explorer(table: pd.DataFrame, initial: int = 0) -> Any:
    """ipywidgets: a dropdown over the table's prompts that redraws :func:`plot_logit_lens` live."""
    import ipywidgets as widgets

    firsts = table.sort_values("layer").groupby("prompt_index").first()
    options = [(f"{i}: {r['prompt']} → {r['target']}", int(i)) for i, r in firsts.iterrows()]
    dropdown = widgets.Dropdown(
        options=options, value=initial, description="prompt", layout=widgets.Layout(width="90%")
    )
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        _show(out, plot_logit_lens(table, dropdown.value))

    dropdown.observe(redraw, names="value")
    redraw()
    return widgets.VBox([dropdown, out])
