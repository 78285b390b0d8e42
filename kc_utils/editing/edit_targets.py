"""Each edit optimised once: ROME's ``(k̄, k_e, v*)`` and FT-M's trained weights, kept for every later use.

Notebook 03 optimises every edit at each swept layer in one batch (:func:`~kc_utils.editing.layer_sweep.edit_sweep`),
then applies some of the same edits at one of those layers again: the leak circuits
(:func:`~kc_utils.editing.layer_sweep.leak_circuits`) read the first edits that leak under the case study's method
and layer. Optimising those edits a second time, one by one, was 5 of the notebook's 24 minutes on Gemma-3-270M
(its 262,144-token unembedding is in every step of ROME's value optimisation). An :class:`EditTargets` given to both
keeps what the sweep optimised and hands it back.

What an entry is keyed by: the method, the layer, the method's config and the requests in order. ROME's target
does not depend on ``C`` (the update is written with the layer's ``C`` when the edit is applied,
:func:`~kc_utils.editing.rome.rome_update`), so edits applied with another ``C`` read the same targets; FT-M's target
is the trained weight itself. A batch's targets equal a lone request's up to float round-off
(:func:`~kc_utils.editing.rome.rome_targets`, :func:`~kc_utils.editing.ft_m.ftm_targets`; tested there).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import Any

from kc_utils.editing.ft_m import FtmConfig, FtmTarget, ftm_targets
from kc_utils.editing.request import EditError, PreparedRequest
from kc_utils.editing.rome import RomeConfig, RomeTarget, rome_targets

__all__ = ["EditTargets"]

Target = RomeTarget | FtmTarget


class EditTargets:
    """Optimised edits by method, layer, config and requests: computed on the first ask, read on every later one.

    Args:
        only: the ``(method, layer)`` pairs to keep (``None``: all). FT-M's targets are whole weight deltas
            (20 edits of Gemma-3-270M: 100 MB per layer), so keep the ones that will be read again.

    Example:
        >>> targets = EditTargets(only=[("rome", 0)])
        >>> sweep = edit_sweep(model, evaluator, [0, 6], targets=targets)  # doctest: +SKIP
        >>> leaks = leak_circuits(model, evaluator, split, "rome", 0, 400, targets=targets)  # doctest: +SKIP
        >>> targets.computed  # ROME at layer 0, optimised once for both  # doctest: +SKIP
        1
    """

    def __init__(self, only: Collection[tuple[str, int]] | None = None) -> None:
        self._only = None if only is None else {(method, int(layer)) for method, layer in only}
        self._kept: dict[Hashable, list[Target]] = {}

    @property
    def computed(self) -> int:
        """How many batches of targets are kept (one per method, layer, config and requests)."""
        return len(self._kept)

    def of(
        self,
        model: Any,
        method: str,
        requests: Sequence[PreparedRequest],
        layer: int,
        rome_config: RomeConfig | None = None,
        ftm_config: FtmConfig | None = None,
    ) -> list[Target] | None:
        """Every request's target at ``layer`` in order: read back if kept, else optimised in one batch and kept.

        ``None`` where the method is not optimised in a batch (FT-M of the whole MLP, ``part="mlp"``): apply those
        edits without a target.

        Raises:
            EditError: an unknown method.
        """
        if method not in ("rome", "ft-m"):
            raise EditError(f"unknown edit method {method!r}; use 'rome' or 'ft-m'")
        rome_config, ftm_config = rome_config or RomeConfig(), ftm_config or FtmConfig()
        if method == "ft-m" and ftm_config.part != "out":
            return None
        key = self._key(method, requests, layer, rome_config, ftm_config)
        if key is not None and key in self._kept:
            return self._kept[key]
        if method == "rome":
            targets: list[Target] = list(rome_targets(model, requests, layer, rome_config))
        else:
            targets = list(ftm_targets(model, requests, layer, ftm_config))
        if key is not None:
            self._kept[key] = targets
        return targets

    def kept(
        self,
        method: str,
        requests: Sequence[PreparedRequest],
        layer: int,
        rome_config: RomeConfig | None = None,
        ftm_config: FtmConfig | None = None,
    ) -> list[Target] | None:
        """The targets :meth:`of` keeps for these arguments, or ``None`` when none were optimised (nothing is
        computed here)."""
        key = self._key(method, requests, layer, rome_config, ftm_config)
        return None if key is None else self._kept.get(key)

    def _key(
        self,
        method: str,
        requests: Sequence[PreparedRequest],
        layer: int,
        rome_config: RomeConfig | None,
        ftm_config: FtmConfig | None,
    ) -> Hashable | None:
        """What an entry is kept under (the method's own config, its default where ``None``), or ``None`` when it
        is not kept: a ``(method, layer)`` outside ``only``, or an unhashable config."""
        if self._only is not None and (method, int(layer)) not in self._only:
            return None
        config = (rome_config or RomeConfig()) if method == "rome" else (ftm_config or FtmConfig())
        key = (method, int(layer), config, tuple(p.request for p in requests))
        try:
            hash(key)
        except TypeError:  # a config built with a list where a tuple belongs: computed, never kept
            return None
        return key
