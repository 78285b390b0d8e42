"""One relation's knowledge circuit, end to end: find it on Dval, score it on Dval and Dtest.

The experiment behind the paper's Table 1 (Yao et al. 2024), with baselines that can fail:

1. Score every edge on Dval (``eap``, ``eap-ig`` or ``exact``) — or run ``acdc`` (the paper's
   method: removal by threshold).
2. Choose the size: a fixed budget, or the knee of the faithfulness curve
   (:mod:`kc_utils.circuits.budget`); the knees at 70% and 90% of the logit difference are
   reported either way.
3. Evaluate on Dval and Dtest, with every edge outside the circuit ablated: the full model, the
   circuit, and four baselines —

   * ``empty``: every edge ablated (under ``patch`` ablation: the corrupted run);
   * ``random``: random circuits of the same size connected to the logits (the paper's baseline;
     on a small model it often *is* the empty circuit, since it misses the few edges that carry
     the fact — :func:`kc_utils.circuits.table1_text.describe_table1` says so when it happens);
   * ``nodes``: random circuits of the same size drawn from the edges among the circuit's own
     nodes — the same components, wired at random;
   * ``other relation`` (:func:`kc_utils.circuits.table1.transfer_matrices`): another relation's
     circuit of the same size.
4. Metrics: Hit@10 (the paper's), Hit@1, the answer's probability, the logit difference and its
   normalised faithfulness; the number of distinct answers flags relations whose corrupted run
   already scores high (few objects).

Differences from the authors' code, kept on purpose: Hit@k reads the answer's **first** token
after the prompt (theirs the *last* token of a teacher-forced answer, identical for one-token
answers); Dval and Dtest hold **different facts** (theirs split rows of templates × samples, so
their Dtest shares subjects with Dval under another template), and counterfactuals never cross
the split; Dtest is scored against its own answers (their script scores it against Dval's).

Choices made for the caller are said, never silent: ``n_edges="auto"`` on a graph of more than
:data:`~kc_utils.circuits.budget.KNEE_MAX_EDGES` edges keeps a fixed
:data:`~kc_utils.circuits.budget.LARGE_GRAPH_BUDGET` edges instead of searching the knee, and facts
without a same-length counterfactual get mean ablation under ``patch``
(:func:`kc_utils.data.facts.build_circuit_dataset`'s ``without_twin``); each raises a
:class:`~kc_utils.data.facts.DefaultChoiceWarning` naming the argument that decides it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kc_utils.circuits.ablation import ABLATIONS, Ablation
from kc_utils.circuits.acdc import acdc, candidate_edges
from kc_utils.circuits.attribute import METHODS, attribute
from kc_utils.circuits.budget import (
    KNEE_MAX_EDGES,
    LARGE_GRAPH_BUDGET,
    check_budget,
    edge_budget,
    knee,
    size_curve,
    size_grid,
)
from kc_utils.circuits.evaluate import (
    evaluate_masks,
    full_and_empty,
    mean_and_std,
    node_set_edges,
    normalised_faithfulness,
    random_circuit,
)
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.facts import CircuitDataset, DefaultChoiceWarning, FactPrompt, facts_to_batch

__all__ = [
    "FIND_METHODS",
    "KINDS",
    "RelationCircuit",
    "find_relation_circuit",
]

#: The ``format`` of a file written by :meth:`RelationCircuit.to_json`.
RESULT_FORMAT = "kc_utils.relation_circuit/1"
#: Circuit-finding methods: the attribution methods plus ACDC.
FIND_METHODS = (*METHODS, "acdc")
#: What is evaluated on each split, in order.
KINDS = ("full", "circuit", "empty", "random", "nodes")
#: The largest circuit the knee search tries on a large graph.
_KNEE_SEARCH_CAP = 5000
#: Sizes on the faithfulness curve of a graph larger than KNEE_MAX_EDGES.
_LARGE_GRAPH_CURVE_POINTS = 16
#: What :func:`find_relation_circuit`'s size curve scores at least (the size-curve figure reads them).
_CURVE_METRICS = ("logit_diff", "hit@10", "hit@1")


@dataclass
class RelationCircuit:
    """A relation's circuit, its scores and baselines.

    Attributes:
        graph: the circuit (``in_graph``) with the edge scores it was selected by.
        metrics: ``metrics[split][kind][metric]`` batch means, ``split`` in ``val``/``test``,
            ``kind`` in :data:`KINDS` (``random`` and ``nodes`` are means over draws).
        random_std: ``random_std[split][kind][metric]`` standard deviations over draws.
        faithfulness: normalised logit-difference faithfulness per split.
        curve: the Dval size curve (:func:`kc_utils.circuits.budget.size_curve`).
        knees: ``{level: edges}`` — the smallest top-n circuit reaching each level (``None``: never).
        n_objects: distinct first answer tokens among Dval and Dtest.
        budget: the budget asked (``"knee"``, ``40`` …; ``"acdc τ=…"`` for ACDC).
        scored: every edge's score (``in_graph``: every edge, or ACDC's circuit).
        extra: method-specific counts (ACDC's trials and passes).
    """

    relation: str
    relation_type: str
    dataset: CircuitDataset
    graph: Graph
    metrics: dict[str, dict[str, dict[str, float]]]
    random_std: dict[str, dict[str, dict[str, float]]]
    faithfulness: dict[str, float]
    curve: pd.DataFrame
    knees: dict[float, int | None]
    n_objects: int
    budget: str
    scored: Graph | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges_in_graph

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``<relation>.json`` (with its provenance; round-trips into :class:`Graph`) and ``<relation>.gv``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, gv_path = folder / f"{self.relation}.json", folder / f"{self.relation}.gv"
        self.graph.to_json(json_path)
        self.graph.to_graphviz(gv_path)
        return json_path, gv_path

    def to_json(self, path: str | Path | None = None) -> dict[str, Any]:
        """Everything (circuit, scores, dataset, metrics, curve) as one JSON-able dict; :meth:`from_json` reads it.

        Parameters
        ----------
        path
            A file to write it to (parent folders are made); ``None`` only returns it.

        Returns
        -------
        dict
            With ``"format": "kc_utils.relation_circuit/1"``; the circuit under ``"graph"``
            (:meth:`Graph.to_json`).
        """
        scored_mask = None
        if self.scored is not None and not bool((self.scored.in_graph == self.scored.real_edges).all()):
            scored_mask = self.scored.in_graph.flatten().nonzero().flatten().tolist()
        data = {
            "format": RESULT_FORMAT,
            "relation": self.relation,
            "relation_type": self.relation_type,
            "dataset": {
                **{k: getattr(self.dataset, k) for k in ("relation", "template", "n_candidates", "top_k", "n_known")},
                "dropped_untokenisable": self.dataset.dropped_untokenisable,
                "dropped_without_twin": self.dataset.dropped_without_twin,
                "val": [vars(f) for f in self.dataset.val],
                "test": [vars(f) for f in self.dataset.test],
            },
            "graph": self.graph.to_json(),
            "scored": None if self.scored is None else {"in_graph": scored_mask},
            "metrics": self.metrics,
            "random_std": self.random_std,
            "faithfulness": self.faithfulness,
            "curve": {"rows": self.curve.to_dict(orient="records"), "attrs": dict(self.curve.attrs)},
            "knees": [[level, edges] for level, edges in self.knees.items()],
            "n_objects": self.n_objects,
            "budget": self.budget,
            "extra": self.extra,
        }
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data))
        return data

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> RelationCircuit:
        """Read what :meth:`to_json` wrote (a path or the dict): the same circuit, scores, dataset and metrics.

        Raises
        ------
        CircuitError
            Not what :meth:`to_json` writes.
        """
        data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            where = "this dict" if isinstance(source, dict) else str(source)
            raise CircuitError(f"{where} is not a circuit result written by RelationCircuit.to_json ({RESULT_FORMAT})")
        d = data["dataset"]
        val = [FactPrompt(**f) for f in d["val"]]
        test = [FactPrompt(**f) for f in d["test"]]
        dataset = CircuitDataset(
            d["relation"], d["template"], d["n_candidates"], val + test, val, test, d["top_k"],
            d["dropped_untokenisable"], d["n_known"], d["dropped_without_twin"],
        )  # fmt: skip
        graph = Graph.from_json(data["graph"])
        scored = None
        if data["scored"] is not None:
            scored = graph.copy()
            scored.in_graph = graph.real_edges.clone()
            if data["scored"]["in_graph"] is not None:
                scored.in_graph.zero_()
                scored.in_graph.view(-1)[data["scored"]["in_graph"]] = True
        curve = pd.DataFrame(data["curve"]["rows"])
        curve.attrs.update(data["curve"]["attrs"])
        return cls(
            relation=data["relation"],
            relation_type=data["relation_type"],
            dataset=dataset,
            graph=graph,
            metrics=data["metrics"],
            random_std=data["random_std"],
            faithfulness=data["faithfulness"],
            curve=curve,
            knees={float(level): edges for level, edges in data["knees"]},
            n_objects=data["n_objects"],
            budget=data["budget"],
            scored=scored,
            extra=data["extra"],
        )


def _select(scored: Graph, budget: Any, curve: pd.DataFrame, knee_level: float, from_input: bool) -> tuple[Graph, str]:
    if budget == "auto":
        budget = "knee" if scored.n_edges <= KNEE_MAX_EDGES else LARGE_GRAPH_BUDGET
    if budget == "knee":
        row = knee(curve, knee_level)
        if row is None:  # never reached: the largest size tried
            row = curve.sort_values("n_edges").iloc[-1]
        return scored.copy().top_n(int(row["asked"]), from_input=from_input), f"knee {knee_level:g}"
    return scored.copy().top_n(edge_budget(budget, scored), from_input=from_input), str(budget)


def _baselines(
    scored: Graph, circuit: Graph, n_random: int, seed: int, from_input: bool
) -> tuple[list[Graph], list[Graph]]:
    size = circuit.n_edges_in_graph
    randoms = [random_circuit(scored, size, seed=seed + i, from_input=from_input) for i in range(n_random)]
    allowed = node_set_edges(scored, circuit)
    on_nodes = []
    for i in range(n_random):
        try:
            on_nodes.append(random_circuit(scored, size, seed=seed + 1000 + i, allowed=allowed, from_input=from_input))
        except CircuitError:
            continue
    return randoms, on_nodes


def find_relation_circuit(
    model: Any,
    dataset: CircuitDataset,
    relation_type: str = "",
    n_edges: int | float | str = "auto",
    method: str = "eap-ig",
    ig_steps: int = 5,
    ablation: Ablation = "patch",
    metric: str = "logit_diff",
    knee_level: float = 0.9,
    knee_levels: Sequence[float] = (0.7, 0.9),
    acdc_threshold: float = 0.01,
    acdc_metric: str = "kl",
    acdc_candidates: int | None = None,
    n_random: int = 5,
    seed: int = 0,
    metrics: Sequence[str] = ("hit@10", "hit@1", "prob", "logit_diff"),
    batch_size: int | None = 32,
    provenance: dict[str, Any] | None = None,
    evaluate: bool = True,
) -> RelationCircuit:
    """Find a relation's circuit on Dval and score it with its baselines on Dval and Dtest (module docstring).

    :func:`kc_utils.find_circuit` is the short way in: it builds the dataset from a relation or typed facts
    and calls this.

    Parameters
    ----------
    model
        A booted model (:func:`kc_utils.models.load_model`).
    dataset
        Dval and Dtest with their corrupt twins (:func:`kc_utils.data.facts.build_circuit_dataset`).
    relation_type
        A label for the Table-1 ``type`` column (e.g. ``relation.relation_type``); nothing else reads it.
    n_edges
        An edge count, a fraction of all edges, ``"knee"`` or ``"auto"`` (:mod:`kc_utils.circuits.budget`);
        ``"auto"`` is the knee up to :data:`~kc_utils.circuits.budget.KNEE_MAX_EDGES` edges and a fixed
        :data:`~kc_utils.circuits.budget.LARGE_GRAPH_BUDGET` above (with a ``DefaultChoiceWarning``).
        Ignored by ``method="acdc"``, whose threshold sets the size.
    method
        ``"eap"``, ``"eap-ig"``, ``"exact"`` or ``"acdc"``.
    ig_steps
        Integrated-gradient steps of EAP-IG (and of the EAP-IG ranking ``acdc_candidates`` uses).
    ablation
        What an edge outside the circuit carries: ``"patch"`` (the corrupted run's activation), ``"mean"`` or
        ``"zero"`` (:mod:`kc_utils.circuits.ablation`).
    metric
        What attribution explains (``"logit_diff"``; faithfulness always uses the logit difference).
    knee_level
        The faithfulness level ``"knee"`` aims for.
    knee_levels
        Levels whose knees are reported.
    acdc_threshold, acdc_metric
        ACDC's τ and metric (:func:`kc_utils.circuits.acdc.acdc`).
    acdc_candidates
        ``None`` runs plain ACDC (a trial per edge); a count tries only the edges that ``ig_steps``-step
        EAP-IG ranks highest, every other edge removed up front (the hybrid of
        :func:`kc_utils.circuits.acdc.acdc`: not the sequential algorithm's circuit).
    n_random
        Draws of each random baseline.
    seed
        Seeds the random baselines.
    metrics
        Metrics evaluated for every kind (:mod:`kc_utils.data.metrics`); ``logit_diff`` is always added.
    batch_size
        Prompts per forward pass (``None``: all at once); results do not depend on it.
    provenance
        Recorded in the saved circuit (e.g. ``{"model": "kc-organism"}``); the settings of this call are
        added.
    evaluate
        ``False`` only finds the circuit (the same one): no scores, baselines or knees (``metrics``,
        ``random_std``, ``faithfulness`` and ``knees`` empty), and the Dval size curve only where the budget
        is a knee. On a real model's graph that saves 16 masked passes and the baselines' per relation.

    Returns
    -------
    RelationCircuit
        The circuit (``graph``), every edge's score (``scored``), ``metrics[split][kind][metric]``, the
        faithfulness per split, the size curve and knees; :func:`kc_utils.circuits.table1.table1` lays it out.

    Raises
    ------
    ValueError
        An unknown method or ablation, a malformed budget, or an empty Dval.

    Warns
    -----
    DefaultChoiceWarning
        ``n_edges="auto"`` chose the fixed large-graph budget, or some facts have no corrupt twin and get
        mean ablation under ``patch``.

    Examples
    --------
    >>> model = load_model("kc-organism")  # doctest: +SKIP
    >>> data = build_circuit_dataset(model, load_relation("company_hq"), None, None)  # doctest: +SKIP
    >>> result = find_relation_circuit(model, data, n_edges="knee")  # doctest: +SKIP
    >>> result.n_edges, round(result.faithfulness["test"], 2)  # doctest: +SKIP
    """
    if method not in FIND_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {FIND_METHODS}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    check_budget(n_edges, knee_level)
    if not dataset.val:
        raise ValueError(f"{dataset.relation}: Dval is empty; nothing to find a circuit on")
    from_input = ablation == "patch"
    if ablation == "patch" and dataset.n_mean_fallback:
        warnings.warn(
            f"{dataset.relation}: {dataset.n_mean_fallback} of {len(dataset.val) + len(dataset.test)} facts have no "
            "counterfactual subject with the same number of tokens, so patch ablation uses the batch-mean "
            "activation for them. Build the dataset with without_twin='drop' to leave them out, or 'error'.",
            DefaultChoiceWarning,
            stacklevel=2,
        )
    val = facts_to_batch(model, dataset.val)
    test = facts_to_batch(model, dataset.test) if dataset.test else None
    base = Graph.from_model(model)
    run_info: dict[str, Any] = {}
    if method == "acdc":
        candidates = None
        if acdc_candidates is not None:
            ranked = attribute(
                model,
                Graph.from_model(model),
                val,
                metric="logit_diff",
                method="eap-ig",
                ig_steps=ig_steps,
                ablation=ablation,
                batch_size=batch_size,
                progress=False,
            )
            candidates = candidate_edges(ranked, min(acdc_candidates, int(ranked.real_edges.sum())))
        scored, run = acdc(
            model,
            base,
            val,
            threshold=acdc_threshold,
            metric=acdc_metric,
            ablation=ablation,
            batch_size=batch_size,
            progress=False,
            candidates=candidates,
        )
        circuit = scored.copy()
        budget = f"acdc τ={acdc_threshold:g}" + (
            "" if candidates is None else f" on {int(candidates.sum())} EAP-IG edges"
        )
        run_info = {"acdc_trials": run.trials, "acdc_passes": run.passes, "acdc_removed_up_front": run.removed_up_front}
    else:
        scored = attribute(
            model,
            base,
            val,
            metric=metric,
            method=method,
            ig_steps=ig_steps,
            ablation=ablation,
            batch_size=batch_size,
            progress=False,
        )
    resolved = n_edges
    if n_edges == "auto" and method != "acdc":
        resolved = "knee" if scored.n_edges <= KNEE_MAX_EDGES else LARGE_GRAPH_BUDGET
        if resolved != "knee":
            warnings.warn(
                f"{dataset.relation}: the budget 'auto' (n_edges=, or find_circuit's budget=) keeps a fixed "
                f"{LARGE_GRAPH_BUDGET} edges, since this graph has {scored.n_edges} edges (> {KNEE_MAX_EDGES}), where "
                "the knee search costs a masked pass per size. Pass 'knee' or a count to choose.",
                DefaultChoiceWarning,
                stacklevel=2,
            )
    scored_metrics = list(dict.fromkeys([*metrics, "logit_diff"]))
    curve, knees = pd.DataFrame(), {}
    if evaluate or (method != "acdc" and resolved == "knee"):
        if scored.n_edges <= KNEE_MAX_EDGES:
            grid = size_grid(scored.n_edges)
        else:  # a real model's graph: fewer, log-spaced sizes (each costs a masked forward pass)
            grid = size_grid(scored.n_edges, _KNEE_SEARCH_CAP, n_points=_LARGE_GRAPH_CURVE_POINTS)
        # every scored metric on the curve too, so that its full and empty rows serve Dval's scores below
        curve_metrics = list(dict.fromkeys([*_CURVE_METRICS, *scored_metrics]))
        curve = size_curve(
            model, scored, val, grid, ablation, curve_metrics, from_input=from_input, batch_size=batch_size
        )
    if evaluate:
        for level in knee_levels:
            row = knee(curve, level)
            knees[level] = None if row is None else int(row["n_edges"])
    if method != "acdc":
        circuit, budget = _select(scored, resolved, curve, knee_level, from_input)
    randoms, on_nodes = _baselines(scored, circuit, n_random, seed, from_input) if evaluate else ([], [])
    full, empty = full_and_empty(scored)
    results: dict[str, dict[str, dict[str, float]]] = {}
    spread: dict[str, dict[str, dict[str, float]]] = {}
    faithfulness: dict[str, float] = {}
    for split, batch in (("val", val), ("test", test)):
        if batch is None or not evaluate:
            continue
        masks = [circuit.in_graph] + [r.in_graph for r in randoms] + [r.in_graph for r in on_nodes]
        # Dval's full model and empty circuit were scored on the curve, by the same passes (the same chunks)
        ends = [] if split == "val" else [full, empty]
        values = evaluate_masks(model, scored, batch, ends + masks, scored_metrics, ablation, batch_size=batch_size)
        if split == "val":
            whole, none = ({m: curve.attrs[end][m] for m in values[0]} for end in ("full", "empty"))
        else:
            whole, none, values = values[0], values[1], values[2:]
        kept = values[0]
        random_values, node_values = values[1 : 1 + len(randoms)], values[1 + len(randoms) :]
        random_mean, random_sd = mean_and_std(random_values)
        nodes_mean, nodes_sd = mean_and_std(node_values)
        results[split] = {"full": whole, "circuit": kept, "empty": none, "random": random_mean, "nodes": nodes_mean}
        spread[split] = {"random": random_sd, "nodes": nodes_sd}
        try:
            faithfulness[split] = normalised_faithfulness(
                kept["logit_diff"], whole["logit_diff"], none["logit_diff"], "logit_diff"
            )
        except CircuitError:
            faithfulness[split] = float("nan")
    answers = {f.object for f in dataset.val + dataset.test}
    circuit.provenance = {
        **(provenance or {}),
        "relation": dataset.relation,
        "method": method,
        "ablation": ablation,
        "metric": metric if method != "acdc" else acdc_metric,
        "ig_steps": ig_steps if method == "eap-ig" else None,
        "n_edges": n_edges if method != "acdc" else None,
        "knee_level": knee_level if method != "acdc" and n_edges in ("knee", "auto") else None,
        "acdc_threshold": acdc_threshold if method == "acdc" else None,
        "acdc_candidates": acdc_candidates if method == "acdc" else None,
        "n_val": len(dataset.val),
        "seed": seed,
        "version": _version(),
    }
    return RelationCircuit(
        relation=dataset.relation,
        relation_type=relation_type,
        dataset=dataset,
        graph=circuit,
        metrics=results,
        random_std=spread,
        faithfulness=faithfulness,
        curve=curve,
        knees=knees,
        n_objects=len(answers),
        budget=budget,
        scored=scored,
        extra=run_info,
    )


def _version() -> str:
    from kc_utils.version import __version__

    return __version__
