"""The errors of the model door (no imports, so that every module of :mod:`kc_utils.models` can raise them)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


class UnsupportedFamilyError(ModelLoadError):
    """A family whose bridge lacks a piece the edge graph needs and that no route can compute; the message names the
    family, the block, what is missing and why no route stands in."""
