"""Knowledge editing seen through circuits (notebook 03): ROME and FT-M, reversible edits, metrics.

To come here: ROME (rank-one MLP update, key averaged over templates and prefixes, covariance from
the model's own text), FT-M (masked fine-tuning of one MLP), a context manager that restores the
exact original weights, and batch evaluation (reliability, generalisation, locality, leak). Weights
are read and written only through :mod:`kc_utils.models`.
"""
