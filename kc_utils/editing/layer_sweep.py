"""ROME and FT-M at every layer: each edit applied alone, measured, and undone.

:func:`edit_sweep` runs, for each method and layer, every request as a separate edit of the unedited model
(ROME's ``(k*, v*)`` of all requests of a layer are optimised in one batch first), evaluates it with an
:class:`~kc_utils.editing.evaluation.EditEvaluator` and restores the weights bit-identically before the next
edit. :func:`summarise_sweep` gives the mean ± std per method and layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.editing.covariance import KeyStatistics
from kc_utils.editing.edit_targets import EditTargets
from kc_utils.editing.evaluation import METRICS, EditEvaluator, corrupt_twin
from kc_utils.editing.ft_m import FtmConfig, FtmTarget, ft_m_edit
from kc_utils.editing.readout import leak_circuit_table, mlp_node
from kc_utils.editing.request import EditError, EditRequest, PreparedRequest, check_layer
from kc_utils.editing.reversible import EditResult
from kc_utils.editing.rome import ROME_DEPARTURES, RomeConfig, RomeTarget, rome_edit, rome_targets, rome_update
from kc_utils.organism.split import Split

__all__ = [
    "COMPARISONS",
    "resolve_comparisons",
    "LOCATION_COLUMNS",
    "METHODS",
    "apply_edit",
    "covariance_effect",
    "default_comparison_layers",
    "default_sweep_layers",
    "departure_table",
    "edit_sweep",
    "rome_departures",
    "leak_circuits",
    "location_table",
    "summarise_leak_circuits",
    "summarise_sweep",
]

METHODS = ("rome", "ft-m")
#: a model of at most this many layers is swept at every layer and compared at every swept layer
SHALLOW_LAYERS = 6
LOCATION_COLUMNS = ("new_top1", "new_top1_subject_restored", "new_top1_last_restored")


def default_sweep_layers(n_layers: int, n: int = 5) -> list[int]:
    """Every layer of a model with at most 6 layers; else ``n`` layers spread from the first to the last
    (``n = 5``: first, quarters and last, the paper's GPT-2 medium layers 0, 6, 12, 18, 23; ``n = 3``: first,
    middle, last), with ROME's early-middle layer (a third of the depth: GPT-2 medium's 8 of 24 in the authors'
    settings) added when it is not among them."""
    if n_layers <= SHALLOW_LAYERS:
        return list(range(n_layers))
    spread = {round(i * (n_layers - 1) / (n - 1)) for i in range(n)} if n > 1 else {0}
    return sorted(spread | {n_layers // 3})


#: notebook 03's studies within the study, each a whole ROME (or FT-M) sweep per comparison layer: knob → what it adds
COMPARISONS = {
    "rome_variant": "the template-averaged ROME variant",
    "measure_departures": "each departure from the authors' ROME and from EasyEdit's FT-M",
    "compare_covariance": "C from each other text and from the identity",
}


def resolve_comparisons(n_layers: int, **knobs: bool | str) -> tuple[dict[str, bool], str]:
    """Which of :data:`COMPARISONS` notebook 03 runs, and a sentence saying what ``"auto"`` left out.

    ``"auto"`` runs a comparison on a model of at most :data:`SHALLOW_LAYERS` layers (the organism, where each is a
    few seconds) and leaves it out on a deeper one, where each costs a ROME sweep per comparison layer (on
    SmolLM2-135M the departures alone took 41 of notebook 03's 97 one-thread minutes); ``True``/``False`` decide.

    Example:
        >>> resolve_comparisons(30, rome_variant="auto", measure_departures=True, compare_covariance="auto")[0]
        {'rome_variant': False, 'measure_departures': True, 'compare_covariance': False}

    Raises:
        ValueError: a knob of :data:`COMPARISONS` missing, or a value other than ``"auto"``, ``True``, ``False``.
    """
    chosen: dict[str, bool] = {}
    for name in COMPARISONS:
        if name not in knobs:
            raise ValueError(f"missing comparison knob {name!r}")
        value = knobs[name]
        if value not in ("auto", True, False):
            raise ValueError(f"{name}={value!r}: use 'auto', True or False")
        chosen[name] = n_layers <= SHALLOW_LAYERS if value == "auto" else bool(value)
    left_out = [name for name in COMPARISONS if knobs[name] == "auto" and not chosen[name]]
    note = ""
    if left_out:
        note = (
            f"'auto' leaves out on a model of {n_layers} layers (over {SHALLOW_LAYERS}): "
            + "; ".join(f"{COMPARISONS[n]} ({n}=True adds it)" for n in left_out)
            + ". Each is a ROME sweep per comparison layer; the location of the edits and the sweep's text do not "
            "depend on them."
        )
    return chosen, note


def default_comparison_layers(n_layers: int, sweep_layers: Sequence[int]) -> list[int]:
    """Where notebook 03 runs its comparisons (the template-averaged variant, each departure, each source of C):
    every sweep layer on a model of at most :data:`SHALLOW_LAYERS` layers; on a deeper one, ROME's early-middle
    layer alone (a third of the depth, the layer :func:`default_sweep_layers` always visits), since each
    comparison costs a whole ROME sweep per layer (on SmolLM2-135M on 2 CPU cores, 2–3 min per layer for 20 edits
    of the authors' ROME; the template-averaged one optimises about 4× as many rows). When the sweep was chosen by
    hand without that layer, the sweep layer nearest to it (the lower of two as near).

    Example:
        >>> default_comparison_layers(30, [0, 10, 19, 29]), default_comparison_layers(18, [2, 9])
        ([10], [9])
    """
    if n_layers <= SHALLOW_LAYERS:
        return list(sweep_layers)
    third = n_layers // 3
    if not sweep_layers or third in sweep_layers:
        return [third]
    return [min(sweep_layers, key=lambda layer: (abs(layer - third), layer))]


def apply_edit(
    model: Any,
    method: str,
    request: EditRequest | PreparedRequest,
    layer: int,
    stats: dict[int, KeyStatistics] | None = None,
    rome_config: RomeConfig | None = None,
    ftm_config: FtmConfig | None = None,
    target: RomeTarget | FtmTarget | None = None,
) -> EditResult:
    """Apply ``method`` (``"rome"`` or ``"ft-m"``) for one request at ``layer``; a reversible edit.

    Args:
        target: the method's outcome for this request already computed (:func:`~kc_utils.editing.rome.rome_targets`,
            :func:`~kc_utils.editing.ft_m.ftm_targets`), applied instead of computing it here.

    Raises:
        EditError: an unknown method (or any error of the method itself).
    """
    if method == "rome":
        return rome_edit(model, request, layer, (stats or {}).get(layer), rome_config, target=target)  # type: ignore[arg-type]
    if method == "ft-m":
        return ft_m_edit(model, request, layer, ftm_config, target=target)  # type: ignore[arg-type]
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
    targets: EditTargets | None = None,
) -> pd.DataFrame:
    """One row per (method, layer, request): the six metrics, the update's size and, with ``locate``, where
    the edit lives (:meth:`EditEvaluator.location`; ``locate`` needs the evaluator built with these layers).

    Args:
        stats: ROME's ``C`` per layer (missing layers fall back to ``C = I``).
        targets: where the optimised edits are kept (:class:`~kc_utils.editing.edit_targets.EditTargets`), for
            :func:`leak_circuits` to read back; those it holds already are not optimised again.

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
    kept = targets if targets is not None else EditTargets(only=())
    records = []
    bar = tqdm(total=len(methods) * len(layers) * len(evaluator), desc="edits", disable=not progress)
    for method in methods:
        for layer in layers:
            # each method's optimisation of every edit at this layer in one batch, then each edit applied in turn
            # None: the whole MLP's FT-M training is not batched
            optimised = kept.of(model, method, evaluator.prepared, layer, rome_config, ftm_config)
            for index, prepared in enumerate(evaluator.prepared):
                target = optimised[index] if optimised is not None else None
                edit = apply_edit(model, method, prepared, layer, stats, rome_config, ftm_config, target)
                with edit:
                    row = {"method": method, "layer": layer, "edit": index, "subject": prepared.request.subject}
                    row.update(evaluator.evaluate(index, edited_layer=layer))
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
    targets: EditTargets | None = None,
) -> pd.DataFrame:
    """Circuits of leaking and non-leaking subjects under the same edit, and how much they pass through the
    edited MLP.

    ``targets``: the sweep's optimised edits (:class:`~kc_utils.editing.edit_targets.EditTargets` given to
    :func:`edit_sweep`); where they hold ``method`` at ``layer`` the edits are applied from them, else each edit is
    optimised here, alone.

    Edits are applied one at a time in the evaluator's order; for each of the first ``max_edits`` that leak,
    up to ``max_prompts`` leaking neighbours (answer: the new object) and as many non-leaking ones (answer:
    their own object) are attributed with EAP-IG (same-length corrupt subjects) and
    :func:`~kc_utils.editing.readout.node_share` of the edited MLP is read in their top-``n_edges`` circuits.

    Returns:
        One row per (edit, group): ``edit``, ``subject``, ``group`` (``leaking`` / ``not leaking``), ``n``,
        ``share``, ``in_circuit``, ``edges_in_circuit``; empty when no edit leaks.
    """
    rows = []
    found = 0
    optimised = None if targets is None else targets.kept(method, evaluator.prepared, layer, rome_config, ftm_config)
    for index, prepared in enumerate(evaluator.prepared):
        if found >= max_edits:
            break
        request = prepared.request
        target = None if optimised is None else optimised[index]
        with apply_edit(model, method, prepared, layer, stats, rome_config, ftm_config, target):
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


def rome_departures(
    default: RomeConfig, templates: Sequence[str], more_prefixes: Sequence[str] = ()
) -> dict[str, tuple[str, RomeConfig]]:
    """The ROME configs that each change one thing from ``default`` (the authors' algorithm at the model's scale):
    name → (what changes, config). ``templates`` are the relation's templates (for the template-averaged key);
    ``more_prefixes`` extra prefixes for the "as many prefixes as the authors" run (skipped when empty)."""
    out = {
        "authors' scale": (
            "learning rate absolute, clamp and decay against ‖W k_e + b‖ (the authors' exact settings)",
            replace(default, lr_unit="absolute", norm_reference="output"),
        ),
        "templates": (
            ROME_DEPARTURES["templates"] + " (update still at the edit prompt's key)",
            replace(default, templates=tuple(templates)),
        ),
        "templates + denominator": (
            ROME_DEPARTURES["templates"] + ", and " + ROME_DEPARTURES["denominator"] + " (our earlier ROME)",
            replace(default, templates=tuple(templates), denominator="mean"),
        ),
        "kl": (ROME_DEPARTURES["kl"], replace(default, kl="last")),
        "weight_decay_form": (ROME_DEPARTURES["weight_decay_form"], replace(default, weight_decay_form="squared")),
        "stop": (ROME_DEPARTURES["stop"], replace(default, stop="prob")),
    }
    if default.prefixes:
        out["value_prefixes"] = (ROME_DEPARTURES["value_prefixes"], replace(default, value_prefixes=False))
    if more_prefixes:
        n = len(default.prefixes) + len(more_prefixes)
        out["prefixes"] = (
            f"{n} generated prefixes instead of {len(default.prefixes)}",
            replace(default, prefixes=(*default.prefixes, *more_prefixes)),
        )
    return out


def departure_table(
    model: Any,
    evaluator: EditEvaluator,
    layers: Sequence[int],
    default: RomeConfig | FtmConfig,
    departures: dict[str, tuple[str, RomeConfig | FtmConfig]],
    stats: dict[int, KeyStatistics] | None = None,
    columns: Sequence[str] = METRICS,
    default_what: str = "the authors' ROME at the model's scale",
    known: dict[str, tuple[str, pd.DataFrame]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One method's default and each departure from it (:func:`rome_departures`, or FT-M configs) over the same
    edits and layers; the method is ROME for :class:`RomeConfig`, FT-M for :class:`FtmConfig`.

    Args:
        known: departures already swept elsewhere on the same edits: name → (what changes, its
            :func:`summarise_sweep` table), added without running them again.

    Returns:
        One row per (``departure``, ``layer``): ``departure`` (``"default"`` first), ``what``, ``n_edits``, the
        mean of each of ``columns``, and ``reliability_change`` (departure − default, same layer).
    """
    method = "rome" if isinstance(default, RomeConfig) else "ft-m"
    known = known or {}
    runs = {"default": (default_what, default), **departures}
    runs = {name: run for name, run in runs.items() if name not in known}
    frames = []
    for name, (what, config) in tqdm(runs.items(), desc=f"{method} departures", disable=not progress):
        configs = {"rome_config": config} if method == "rome" else {"ftm_config": config}
        sweep = edit_sweep(model, evaluator, layers, [method], stats, locate=False, progress=False, **configs)
        frames.append(_departure_rows(name, what, summarise_sweep(sweep, columns), columns))
    for name, (what, summary) in known.items():
        frames.append(_departure_rows(name, what, summary[summary["layer"].isin(layers)], columns))
    out = pd.concat(frames, ignore_index=True)
    order = ["default", *(n for n in departures if n != "default"), *(n for n in known if n != "default")]
    out = out.set_index("departure").loc[list(dict.fromkeys(order))].reset_index()
    base = out[out["departure"] == "default"].set_index("layer")["reliability"]
    out["reliability_change"] = out["reliability"] - out["layer"].map(base)
    return out


def _departure_rows(name: str, what: str, summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    table = summary[["layer", "n_edits"]].copy()
    for column in columns:
        table[column] = summary[f"{column}_mean"].to_numpy()
    table.insert(0, "what", what)
    table.insert(0, "departure", name)
    return table.reset_index(drop=True)


def covariance_effect(
    model: Any,
    evaluator: EditEvaluator,
    layers: Sequence[int],
    stats_by_source: dict[str, dict[int, KeyStatistics]],
    config: RomeConfig,
    columns: Sequence[str] = METRICS,
    progress: bool = True,
) -> pd.DataFrame:
    """The same ROME edits (``k̄, k_e, v*`` computed once per layer) written with ``C`` from each source.

    Returns:
        One row per (``source``, ``layer``): ``n_edits``, the mean of each of ``columns``, and ``update_cosine``
        (mean over edits of the cosine between this source's ΔW and the first source's).
    """
    sources = list(stats_by_source)
    records = []
    bar = tqdm(total=len(layers) * len(sources) * len(evaluator), desc="C sources", disable=not progress)
    for layer in layers:
        targets = rome_targets(model, evaluator.prepared, layer, config)
        weight = models.mlp_out_weight(model, layer)
        first: list[Any] = []
        for source in sources:
            rows = []
            for index, prepared in enumerate(evaluator.prepared):
                stats = stats_by_source[source][layer]
                update = (
                    rome_update(
                        weight, targets[index].key, targets[index].value, stats.inverse, targets[index].write_key
                    )
                    - weight
                )
                if source == sources[0]:
                    first.append(update)
                cosine = float(torch.nn.functional.cosine_similarity(update.flatten(), first[index].flatten(), dim=0))
                with rome_edit(model, prepared, layer, stats, config, target=targets[index]):
                    rows.append({**evaluator.evaluate(index, edited_layer=layer), "update_cosine": cosine})
                bar.update()
            frame = pd.DataFrame.from_records(rows)
            records.append(
                {
                    "source": source,
                    "layer": layer,
                    "n_edits": len(frame),
                    **{c: float(frame[c].mean()) for c in (*columns, "update_cosine")},
                }
            )
    bar.close()
    return pd.DataFrame.from_records(records)
