"""Plotly figures and ipywidgets explorers, one module per topic (never per notebook).

* :mod:`~kc_utils.viz.save` — saving figures (shared or self-contained HTML, PNG) and widget output;
* :mod:`~kc_utils.viz.circuits` — circuits, faithfulness curves, overlaps;
* :mod:`~kc_utils.viz.lens` — logit-lens curves;
* :mod:`~kc_utils.viz.heads` — attention patterns, head roles, head ablations;
* :mod:`~kc_utils.viz.multihop` — three circuits side by side, overlaps, the bridge lens, bridge patching.

Nothing in the core imports this package (an import-linter contract checks it).
"""
