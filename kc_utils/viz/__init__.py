"""Plotly figures and ipywidgets explorers, one module per topic (never per notebook).

* :mod:`~kc_utils.viz.style` — the one plotly template of the project's figures;
* :mod:`~kc_utils.viz.conventions` — what every figure must pass (hover text, legends), checked by the notebooks;
* :mod:`~kc_utils.viz.save` — saving figures (shared or self-contained HTML, PNG) and widget output;
* :mod:`~kc_utils.viz.lab` — JupyterLab saves the notebooks without outputs, so a session leaves git clean;
* :mod:`~kc_utils.viz.circuits` — circuits, a live explorer, faithfulness curves, overlaps;
* :mod:`~kc_utils.viz.lens` — logit-lens curves;
* :mod:`~kc_utils.viz.heads` — attention patterns, head roles, group tests, head ablations;
* :mod:`~kc_utils.viz.editing` — knowledge editing: the case study's lens and heads, circuit diffs, the layer sweep;
* :mod:`~kc_utils.viz.hallucination` — hallucinations: confidence, answer lens, head DLA, repairs, rank curves;
* :mod:`~kc_utils.viz.icl` — in-context learning: accuracy by k, two circuits side by side, Table 2;
* :mod:`~kc_utils.viz.neurons` — knowledge neurons and query localization;
* :mod:`~kc_utils.viz.multihop` — three circuits side by side, overlaps, the bridge lens, bridge patching.

Nothing in the core imports this package (an import-linter contract checks it).
"""
