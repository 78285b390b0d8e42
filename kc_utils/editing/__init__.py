"""Knowledge editing seen through circuits (notebook 03): ROME and FT-M, reversible edits, metrics.

* :mod:`~kc_utils.editing.request` — what an edit asks for (subject, prompt, new object), checked against the model;
* :mod:`~kc_utils.editing.covariance` — ROME's key statistics ``C = E[k kᵀ]`` over text the model has read;
* :mod:`~kc_utils.editing.rome` — ROME as its authors run it, and the departures the organism needs;
* :mod:`~kc_utils.editing.ft_m` — FT-M, EasyEdit's masked fine-tuning of one MLP;
* :mod:`~kc_utils.editing.reversible` — what an edit changed, and a context manager that restores the exact weights;
* :mod:`~kc_utils.editing.evaluation` — reliability, generalisation, locality and leak in batches; where an edit lives;
* :mod:`~kc_utils.editing.readout` — reading one edit: top answers, lens, head DLA, the circuit before and after;
* :mod:`~kc_utils.editing.layer_sweep` — every edit at every layer, applied alone, measured and undone;
* :mod:`~kc_utils.editing.edits_text` — notebook 03's sentences, built from its tables.

Weights are read and written only through :mod:`kc_utils.models`.
"""
