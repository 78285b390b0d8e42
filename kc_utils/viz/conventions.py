"""Checks every figure of the project must pass: what a reader sees on hover and in the legend.

:func:`figure_problems` lists, in words, each place where a figure breaks the conventions:

* every trace has a name (legend entries and hover boxes say what a line is);
* hover labels show names whole (``hoverlabel.namelength = -1``, :data:`kc_utils.viz.style.TEMPLATE`);
* a trace that shows fractional numbers on hover formats them: it has a ``hovertemplate`` (or
  preformatted ``hovertext``) and each ``%{x}``/``%{y}``/``%{z}`` of fractional data carries a
  format such as ``%{y:.2f}`` (no "0.4565217");
* no text a reader sees (trace text, hover text, annotations, titles) reads "nan".
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["figure_problems"]

_PLACEHOLDER = re.compile(r"%\{(x|y|z)(:[^}]*)?\}")
_NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def _fractional(values: Any) -> bool:
    """Whether ``values`` (a trace's x/y/z) hold numbers that are not whole."""
    if values is None:
        return False
    try:
        array = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return False  # categories (head names, tokens)
    array = array[np.isfinite(array)]
    return bool(array.size) and not np.allclose(array, np.round(array))


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        return [str(v) for v in np.asarray(value, dtype=object).ravel() if v is not None]
    except TypeError:
        return [str(value)]


def _namelength(fig: go.Figure) -> Any:
    own = fig.layout.hoverlabel.namelength
    if own is not None:
        return own
    template = fig.layout.template
    return template.layout.hoverlabel.namelength if template is not None else None


def figure_problems(fig: go.Figure) -> list[str]:
    """Every breach of the figure conventions (module docstring) in ``fig``, one sentence each; empty when none."""
    problems: list[str] = []
    if _namelength(fig) != -1:
        problems.append("hover labels cut trace names: use template=kc_utils.viz.style.TEMPLATE")
    for i, trace in enumerate(fig.data):
        label = f"trace {i} ({trace.type}{', ' + trace.name if getattr(trace, 'name', None) else ''})"
        if not getattr(trace, "name", None):
            problems.append(f"trace {i} ({trace.type}) has no name")
        hoverinfo = getattr(trace, "hoverinfo", None)
        template = getattr(trace, "hovertemplate", None)
        template = template if isinstance(template, str) else ""
        if hoverinfo != "skip":
            binned = ("x", "y") if trace.type in ("histogram", "histogram2d") else ()  # hover shows bin ranges
            axes = {a: getattr(trace, a, None) for a in ("x", "y", "z") if a not in binned}
            fractional = [a for a, v in axes.items() if _fractional(v)]
            preformatted = hoverinfo in ("text", "name", "none") and (
                getattr(trace, "hovertext", None) is not None or getattr(trace, "text", None) is not None
            )
            if fractional and not template and not preformatted:
                problems.append(f"{label} shows {', '.join(fractional)} unformatted on hover: give it a hovertemplate")
            for axis, spec in _PLACEHOLDER.findall(template):
                if axis in fractional and not spec:
                    problems.append(f"{label}: %{{{axis}}} in its hovertemplate has no number format")
        for field in ("text", "hovertext", "texttemplate"):
            if any(_NAN.search(t) for t in _texts(getattr(trace, field, None))):
                problems.append(f"{label} shows 'nan' in its {field}")
    texts = [a.text for a in fig.layout.annotations] + [fig.layout.title.text]
    if any(t and _NAN.search(t) for t in texts):
        problems.append("an annotation or the title shows 'nan'")
    return problems
