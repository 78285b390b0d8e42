"""Reversible edits: what an edit changed, and a context manager that puts the exact weights back.

Every editing method snapshots the parameters it is about to change (copies of the tensors, bit for bit)
and returns an :class:`EditResult`. ``result.restore()`` copies them back in place, so the bridge and the
Hugging Face model inside it return to the original weights exactly (tested with ``torch.equal``). An
``EditResult`` is also a context manager::

    with rome_edit(model, request, layer=0, stats=stats) as edit:
        ...  # the model is edited here
    # ... and restored here, bit-identical

:func:`preserved` snapshots parameters around any block of code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kc_utils import models

__all__ = ["EditResult", "preserved", "snapshot"]


def snapshot(model: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (names from :func:`kc_utils.models.all_parameters`)."""
    params = models.all_parameters(model)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameters named {missing}; names come from kc_utils.models.all_parameters")
    return {n: params[n].detach().clone() for n in names}


def _write_back(model: Any, originals: dict[str, torch.Tensor]) -> None:
    params = models.all_parameters(model)
    with torch.no_grad():
        for name, value in originals.items():
            params[name].copy_(value)


@dataclass
class EditResult:
    """An edit applied to a model: the model, what changed, and how to undo it.

    Attributes:
        model: the edited model (the same object that was passed in, edited in place).
        method: ``"rome"`` or ``"ft-m"``.
        layer: the edited MLP layer.
        originals: the changed parameters' original values, by name.
        info: method-specific numbers (ROME: ``update_norm``, ``delta_norm`` …; FT-M: ``steps`` …).
        restored: whether :meth:`restore` has run.
    """

    model: Any
    method: str
    layer: int
    originals: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    restored: bool = False

    def changed_parameters(self) -> dict[str, float]:
        """Norm of the change of each snapshotted parameter (0 where it did not change)."""
        params = models.all_parameters(self.model)
        return {n: float((params[n].detach() - v).float().norm()) for n, v in self.originals.items()}

    def restore(self) -> None:
        """Write the original weights back (bit-identical). Restoring twice is harmless."""
        _write_back(self.model, self.originals)
        self.restored = True

    def __enter__(self) -> EditResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


@contextlib.contextmanager
def preserved(model: Any, names: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Snapshot the named parameters (default: all) and restore them on exit, whatever happens inside."""
    originals = snapshot(model, list(models.all_parameters(model)) if names is None else names)
    try:
        yield originals
    finally:
        _write_back(model, originals)
