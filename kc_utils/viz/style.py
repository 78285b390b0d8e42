"""The one plotly template of the project's figures: ``plotly_white`` with hover labels that are never cut.

Plotly cuts a trace's name in the hover box after 15 characters ("correct (act…"), so lines of the
same colour cannot be told apart; :data:`TEMPLATE` shows names whole. Every figure module passes
``template=TEMPLATE``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["TEMPLATE"]

TEMPLATE = "kc_white"
"""Name of the registered template: ``plotly_white`` plus ``hoverlabel.namelength = -1`` (whole names)."""

if TEMPLATE not in pio.templates:
    _template = go.layout.Template(pio.templates["plotly_white"])
    _template.layout.hoverlabel.namelength = -1
    pio.templates[TEMPLATE] = _template
