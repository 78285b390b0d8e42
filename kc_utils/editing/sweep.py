"""ROME and FT-M at every layer: each edit applied alone, measured, and undone.

:func:`edit_sweep` runs, for each method and layer, every request as a separate edit of the unedited model
(ROME's ``(k*, v*)`` of all requests of a layer are optimised in one batch first), evaluates it with an
:class:`~kc_utils.editing.evaluation.EditEvaluator` and restores the weights bit-identically before the next
edit. :func:`summarise_sweep` gives the mean ± std per method and layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from kc_utils.editing.covariance import KeyStatistics
from kc_utils.editing.evaluation import METRICS, EditEvaluator
from kc_utils.editing.ft_m import FtmConfig, ft_m_edit
from kc_utils.editing.request import EditError, check_layer
from kc_utils.editing.rome import RomeConfig, rome_edit, rome_targets

__all__ = ["LOCATION_COLUMNS", "METHODS", "edit_sweep", "location_table", "summarise_sweep"]

METHODS = ("rome", "ft-m")
LOCATION_COLUMNS = ("new_top1", "new_top1_subject_restored", "new_top1_last_restored")


def edit_sweep(
    model: Any,
    evaluator: EditEvaluator,
    layers: Sequence[int],
    methods: Sequence[str] = METHODS,
    stats: dict[int, KeyStatistics] | None = None,
    rome_config: RomeConfig | None = None,
    ftm_config: FtmConfig | None = None,
    locate: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (method, layer, request): the six metrics, the update's size and, with ``locate``, where
    the edit lives (:meth:`EditEvaluator.location`; ``locate`` needs the evaluator built with these layers).

    Args:
        stats: ROME's ``C`` per layer (missing layers fall back to ``C = I``).

    Raises:
        EditError: an unknown method or a layer out of range.
    """
    for method in methods:
        if method not in METHODS:
            raise EditError(f"unknown edit method {method!r}; use one of {list(METHODS)}")
    for layer in layers:
        check_layer(model, layer)
    rome_config = rome_config or RomeConfig()
    ftm_config = ftm_config or FtmConfig()
    stats = stats or {}
    records = []
    bar = tqdm(total=len(methods) * len(layers) * len(evaluator), desc="edits", disable=not progress)
    for method in methods:
        for layer in layers:
            targets = rome_targets(model, evaluator.prepared, layer, rome_config) if method == "rome" else None
            for index, prepared in enumerate(evaluator.prepared):
                if method == "rome":
                    layer_stats = stats.get(layer)
                    edit = rome_edit(model, prepared, layer, layer_stats, rome_config, target=targets[index])
                else:
                    edit = ft_m_edit(model, prepared, layer, ftm_config)
                with edit:
                    row = {"method": method, "layer": layer, "edit": index, "subject": prepared.request.subject}
                    row.update(evaluator.evaluate(index))
                    row.update({"update_norm": edit.info["update_norm"], "steps": edit.info["steps"]})
                    if locate:
                        row.update(evaluator.location(index, layer))
                records.append(row)
                bar.update()
    bar.close()
    return pd.DataFrame.from_records(records)


def summarise_sweep(sweep: pd.DataFrame, columns: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) of ``columns`` per method and layer, with the number of edits:
    columns ``method``, ``layer``, ``n_edits``, then ``<metric>_mean`` and ``<metric>_std`` for each."""
    grouped = sweep.groupby(["method", "layer"], sort=False)
    out = grouped.size().rename("n_edits").reset_index()
    for column in columns:
        stats = grouped[column].agg(["mean", "std"]).reset_index(drop=True)
        out[f"{column}_mean"] = stats["mean"].to_numpy()
        out[f"{column}_std"] = stats["std"].to_numpy()
    return out


def location_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """Where the edits live, per method and layer, among the edits that work (new object top-1):
    ``n_working``, and the share undone (new object no longer top-1) when the edited MLP's original output is
    restored at the subject's positions (``undone_by_subject``) or at the last position (``undone_by_last``)."""
    working = sweep[sweep["new_top1"] == 1.0]
    records = []
    for (method, layer), group in sweep.groupby(["method", "layer"], sort=False):
        ok = working[(working["method"] == method) & (working["layer"] == layer)]
        n = len(ok)
        records.append(
            {
                "method": method,
                "layer": layer,
                "n_edits": len(group),
                "n_working": n,
                "undone_by_subject": float((ok["new_top1_subject_restored"] == 0).mean()) if n else float("nan"),
                "undone_by_last": float((ok["new_top1_last_restored"] == 0).mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame.from_records(records)
