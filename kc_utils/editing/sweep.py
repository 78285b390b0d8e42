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
from kc_utils.editing.evaluation import METRICS, EditEvaluator, corrupt_twin
from kc_utils.editing.ft_m import FtmConfig, ft_m_edit
from kc_utils.editing.inspect import leak_circuit_table, mlp_node
from kc_utils.editing.request import EditError, EditRequest, PreparedRequest, check_layer
from kc_utils.editing.reversible import EditResult
from kc_utils.editing.rome import RomeConfig, RomeTarget, rome_edit, rome_targets
from kc_utils.organism.split import Split

__all__ = [
    "LOCATION_COLUMNS",
    "METHODS",
    "apply_edit",
    "default_sweep_layers",
    "edit_sweep",
    "leak_circuits",
    "location_table",
    "summarise_leak_circuits",
    "summarise_sweep",
]

METHODS = ("rome", "ft-m")
LOCATION_COLUMNS = ("new_top1", "new_top1_subject_restored", "new_top1_last_restored")


def default_sweep_layers(n_layers: int) -> list[int]:
    """Every layer of a model with at most 6 layers; else the paper's five: first, quarters and last
    (GPT-2 medium: 0, 6, 12, 18, 23)."""
    if n_layers <= 6:
        return list(range(n_layers))
    return sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 1})


def apply_edit(
    model: Any,
    method: str,
    request: EditRequest | PreparedRequest,
    layer: int,
    stats: dict[int, KeyStatistics] | None = None,
    rome_config: RomeConfig | None = None,
    ftm_config: FtmConfig | None = None,
    target: RomeTarget | None = None,
) -> EditResult:
    """Apply ``method`` (``"rome"`` or ``"ft-m"``) for one request at ``layer``; a reversible edit.

    Raises:
        EditError: an unknown method (or any error of the method itself).
    """
    if method == "rome":
        return rome_edit(model, request, layer, (stats or {}).get(layer), rome_config, target=target)
    if method == "ft-m":
        return ft_m_edit(model, request, layer, ftm_config)
    raise EditError(f"unknown edit method {method!r}; use one of {list(METHODS)}")


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
                target = targets[index] if targets is not None else None
                edit = apply_edit(model, method, prepared, layer, stats, rome_config, ftm_config, target)
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


def leak_circuits(
    model: Any,
    evaluator: EditEvaluator,
    split: Split,
    method: str,
    layer: int,
    n_edges: int,
    max_edits: int = 3,
    max_prompts: int = 4,
    stats: dict[int, KeyStatistics] | None = None,
    rome_config: RomeConfig | None = None,
    ftm_config: FtmConfig | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Circuits of leaking and non-leaking subjects under the same edit, and how much they pass through the
    edited MLP.

    Edits are applied one at a time in the evaluator's order; for each of the first ``max_edits`` that leak,
    up to ``max_prompts`` leaking neighbours (answer: the new object) and as many non-leaking ones (answer:
    their own object) are attributed with EAP-IG (same-length corrupt subjects) and
    :func:`~kc_utils.editing.inspect.node_share` of the edited MLP is read in their top-``n_edges`` circuits.

    Returns:
        One row per (edit, group): ``edit``, ``subject``, ``group`` (``leaking`` / ``not leaking``), ``n``,
        ``share``, ``in_circuit``, ``edges_in_circuit``; empty when no edit leaks.
    """
    rows = []
    found = 0
    for index, prepared in enumerate(evaluator.prepared):
        if found >= max_edits:
            break
        request = prepared.request
        with apply_edit(model, method, prepared, layer, stats, rome_config, ftm_config):
            leaking, kept = evaluator.leaking_subjects(index)
            if not leaking:
                continue
            found += 1
            objects = {s.subject: s.object for s in split.relations[request.relation].trained}
            template = split.relations[request.relation].train_templates[0]
            groups: dict[str, list[tuple[str, str, str, str]]] = {"leaking": [], "not leaking": []}
            for name, subjects, answer_of in (
                ("leaking", leaking, lambda s: request.target_new),
                ("not leaking", kept, lambda s: objects[s]),
            ):
                for subject in subjects:
                    if len(groups[name]) >= max_prompts:
                        break
                    try:
                        twin, twin_object = corrupt_twin(
                            model, split, request.relation, subject, answer_of(subject), seed
                        )
                    except EditError:
                        continue
                    groups[name].append((template.replace("{}", subject), answer_of(subject), twin, twin_object))
            table = leak_circuit_table(model, groups, mlp_node(layer), n_edges)
            table.insert(0, "subject", request.subject)
            table.insert(0, "edit", index)
            rows.append(table)
    if not rows:
        return pd.DataFrame(columns=["edit", "subject", "group", "n", "share", "in_circuit", "edges_in_circuit"])
    return pd.concat(rows, ignore_index=True)


def summarise_leak_circuits(table: pd.DataFrame) -> pd.DataFrame:
    """Per group of a :func:`leak_circuits` table: ``n`` (prompts), ``n_edits``, ``share`` (mean over edits
    weighted by prompts) and ``in_circuit`` (share of edits whose group circuit touches the edited MLP)."""
    records = []
    for group in ("leaking", "not leaking"):
        rows = table[(table["group"] == group) & (table["n"] > 0)] if len(table) else table
        n = int(rows["n"].sum()) if len(rows) else 0
        records.append(
            {
                "group": group,
                "n": n,
                "n_edits": len(rows),
                "share": float((rows["share"] * rows["n"]).sum() / n) if n else float("nan"),
                "in_circuit": float(rows["in_circuit"].mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame.from_records(records)
