"""The front door: a circuit for your own facts in one call, and one object to read, save and share it.

::

    from kc_utils import Relation, find_circuit, load_model

    model = load_model("kc-organism")
    rel = Relation.from_facts([("France", "Paris"), ...], "The capital of {} is", name="capital")
    found = find_circuit(model, rel)
    found.table()                       # the Table-1 row with its baselines (a DataFrame)
    found.explore()                     # the circuit widget (in Jupyter)
    found.to_eap_ig_json("capital.json")  # EAP-IG's graph JSON (what MIB's circuit track reads)
    found.save("capital.kc.json"); FoundCircuit.load("capital.kc.json")

:func:`find_circuit` is :func:`kc_utils.data.facts.build_circuit_dataset` followed by
:func:`kc_utils.circuits.relation.find_relation_circuit`, with the cheap checks first (the facts, the
budget, the method) so that a request that cannot work fails before any model run. This module sits above
the visualisation layer (``.explore()`` draws with :mod:`kc_utils.viz`), which the import contracts in
``pyproject.toml`` state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from kc_utils.circuits.ablation import ABLATIONS, Ablation
from kc_utils.circuits.budget import check_budget
from kc_utils.circuits.eap_ig import to_eap_ig_json
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.circuits.relation import FIND_METHODS, RelationCircuit, find_relation_circuit
from kc_utils.circuits.table1 import table1
from kc_utils.data.facts import CircuitDataset, build_circuit_dataset
from kc_utils.data.prompts import PromptError
from kc_utils.data.relations import Relation, Sample, load_relation
from kc_utils.models import load_model, model_source

__all__ = ["FOUND_FORMAT", "FoundCircuit", "find_circuit"]

#: The ``format`` of a file written by :meth:`FoundCircuit.save`.
FOUND_FORMAT = "kc_utils.found_circuit/1"

Facts = Mapping[str, str] | Iterable[tuple[str, str] | Sample]


@dataclass
class FoundCircuit:
    """A circuit found for one relation, with what it was found on and how well it does.

    Attributes
    ----------
    relation
        The relation the facts came from (:class:`~kc_utils.data.relations.Relation`).
    result
        Everything :func:`~kc_utils.circuits.relation.find_relation_circuit` returns: the circuit, every
        edge's score, Dval/Dtest, metrics of the circuit and its baselines, the size curve.
    model
        The model's name or checkpoint, as recorded in the circuit's provenance.
    """

    relation: Relation
    result: RelationCircuit
    model: str | None = None

    @property
    def graph(self) -> Graph:
        """The circuit: ``in_graph`` (``Bool[n_upstream, n_receivers]``) with every edge's score."""
        return self.result.graph

    @property
    def n_edges(self) -> int:
        """Edges in the circuit (after pruning)."""
        return self.result.n_edges

    @property
    def dataset(self) -> CircuitDataset:
        """Dval and Dtest, with the corrupt prompts used."""
        return self.result.dataset

    @property
    def faithfulness(self) -> dict[str, float]:
        """Normalised logit-difference faithfulness on ``"val"`` and ``"test"`` (1: the full model, 0: empty)."""
        return self.result.faithfulness

    def table(self) -> pd.DataFrame:
        """The Table-1 row of this circuit with its baselines, as one DataFrame row.

        Returns
        -------
        pandas.DataFrame
            One row; columns as :func:`kc_utils.circuits.table1.table1` (``#edges``, ``% edges``, knees,
            ``Dval``/``Dtest`` Hit@10 and Hit@1 of the ``full`` model, the ``circuit``, the ``empty``,
            ``random`` and ``nodes`` baselines, their spreads, and faithfulness).

        Examples
        --------
        >>> found.table()[["relation", "#edges", "Dtest hit@10 full", "Dtest hit@10 circuit"]]  # doctest: +SKIP
        """
        return table1([self.result]).iloc[:1].reset_index(drop=True)

    def explore(self, initial_edges: int | None = None) -> Any:
        """The circuit widget: an edge-count slider that re-selects the top edges and redraws (Jupyter).

        Parameters
        ----------
        initial_edges
            Where the slider starts; ``None``: this circuit's size.

        Returns
        -------
        ipywidgets.VBox
            Display it (the last line of a cell does).
        """
        from kc_utils.viz.circuits import circuit_explorer

        return circuit_explorer({self.relation.key: self.graph}, initial_edges or self.n_edges)

    def to_eap_ig_json(self, path: str | Path | None = None) -> dict[str, Any]:
        """The circuit in EAP-IG's graph JSON (:func:`kc_utils.circuits.eap_ig.to_eap_ig_json`).

        Parameters
        ----------
        path
            Where to write it; ``None`` only returns it.

        Returns
        -------
        dict
            ``{"cfg", "nodes", "edges", "kc_utils"}``; EAP-IG's ``Graph.from_json`` reads the file.
        """
        return to_eap_ig_json(self.graph, path)

    def save(self, path: str | Path) -> Path:
        """Write the relation, the model's name and the whole result to one JSON file (:meth:`load` reads it).

        Parameters
        ----------
        path
            The file (parent folders are made).

        Returns
        -------
        Path
            ``path``.
        """
        rel = self.relation
        data = {
            "format": FOUND_FORMAT,
            "model": self.model,
            "relation": {
                "name": rel.name,
                "prompt_templates": list(rel.prompt_templates),
                "prompt_templates_zs": list(rel.prompt_templates_zs),
                "properties": {
                    "relation_type": rel.relation_type,
                    "domain_name": rel.domain_name,
                    "range_name": rel.range_name,
                    "symmetric": rel.symmetric,
                },
                "samples": [{"subject": s.subject, "object": s.object} for s in rel.samples],
            },
            "result": self.result.to_json(),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FoundCircuit:
        """Read a file written by :meth:`save`: the same relation, circuit, scores and metrics.

        Raises
        ------
        CircuitError
            Not a file written by :meth:`save`.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FOUND_FORMAT:
            raise CircuitError(f"{path} is not a circuit written by FoundCircuit.save (format {FOUND_FORMAT})")
        raw = data["relation"]
        relation = Relation.from_facts(
            [(s["subject"], s["object"]) for s in raw["samples"]],
            raw["prompt_templates"],
            name=raw["name"],
            **raw["properties"],
        )
        if raw["prompt_templates_zs"]:
            relation = Relation(**{**vars(relation), "prompt_templates_zs": tuple(raw["prompt_templates_zs"])})
        return cls(relation, RelationCircuit.from_json(data["result"]), data["model"])

    def __repr__(self) -> str:
        faith = ", ".join(f"{split} {value:.2f}" for split, value in self.faithfulness.items())
        return (
            f"FoundCircuit({self.relation.key!r}: {self.n_edges} of {self.graph.n_edges} edges, "
            f"budget {self.result.budget}; faithfulness {faith or 'not evaluated'})"
        )


def _as_relation(relation_or_facts: Relation | str | Path | Facts, templates: Any, name: str | None) -> Relation:
    if isinstance(relation_or_facts, Relation):
        if templates is not None or name is not None:
            raise ValueError(
                "templates= and name= describe typed facts; a Relation has its own. "
                "Pass the facts instead, or build the relation with Relation.from_facts"
            )
        return relation_or_facts
    if isinstance(relation_or_facts, (str, Path)):
        if templates is not None:
            raise ValueError(f"{relation_or_facts!r} names a relation, which has its own templates; drop templates=")
        if isinstance(relation_or_facts, str) and Path(relation_or_facts).is_file():
            return load_relation(Path(relation_or_facts))
        return load_relation(relation_or_facts)
    if templates is None:
        raise ValueError(
            "typed facts need a prompt template: pass templates='The capital of {} is' (one '{}' for the subject; "
            "the answer follows after a space)"
        )
    return Relation.from_facts(relation_or_facts, templates, name=name or "my facts")


def find_circuit(
    model: Any,
    relation_or_facts: Relation | str | Path | Facts,
    *,
    templates: str | list[str] | None = None,
    name: str | None = None,
    method: str = "eap-ig",
    budget: int | float | str = "auto",
    ablation: Ablation = "patch",
    n_val: int | None = None,
    n_test: int | None = None,
    top_k: int = 10,
    without_twin: Literal["mean", "drop", "error"] = "mean",
    ig_steps: int = 5,
    knee_level: float = 0.9,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int | None = 32,
) -> FoundCircuit:
    """Find the circuit a model uses to recall a relation's facts, and score it against its baselines.

    Steps: keep the facts the model knows (answer's first token in its top ``top_k``), split them into Dval
    (finds the circuit) and Dtest (held out), give each fact a corrupted twin (another subject of the same
    token length), score every edge on Dval, keep ``budget`` edges, and evaluate the circuit, the full model
    and random baselines on both splits.

    Parameters
    ----------
    model
        A booted model (:func:`kc_utils.models.load_model`) or a model name to load (``"kc-organism"``,
        ``"smollm2-135m"``, a hub id or a path).
    relation_or_facts
        A :class:`~kc_utils.data.relations.Relation`, a shipped relation's key or a relation file's path, or
        typed facts: ``(subject, object)`` pairs or a ``{subject: object}`` mapping (then ``templates``).
    templates
        With typed facts: the prompt template(s), one ``{}`` for the subject (the first is used).
    name
        With typed facts: the relation's name (default ``"my facts"``).
    method
        ``"eap-ig"`` (default), ``"eap"``, ``"exact"`` or ``"acdc"``.
    budget
        Edges to keep: a count, a fraction of all edges, ``"knee"`` (the smallest circuit reaching
        ``knee_level`` of the logit difference on Dval) or ``"auto"``: the knee on graphs of up to 20,000
        edges, a fixed 400 edges above (said by a ``DefaultChoiceWarning``).
    ablation
        What an edge outside the circuit carries: ``"patch"`` (its value on the corrupted twin), ``"mean"`` or
        ``"zero"``.
    n_val, n_test
        Facts in Dval and Dtest; ``None``: half of the known facts and the rest. A larger Dval is cut to
        half of the known facts, a larger Dtest to what is left, each with a ``DefaultChoiceWarning``.
    top_k
        The known-fact filter's ``k``.
    without_twin
        A fact with no same-length counterfactual subject: ``"mean"`` (mean ablation for it under ``patch``,
        with a ``DefaultChoiceWarning``), ``"drop"`` (left out) or ``"error"``.
    ig_steps
        EAP-IG's integration steps.
    knee_level
        The faithfulness a ``"knee"`` budget aims for.
    n_random
        Draws of each random baseline.
    seed
        Seeds the split, the counterfactuals and the baselines: the same call gives the same circuit.
    batch_size
        Prompts per forward pass; results do not depend on it.

    Returns
    -------
    FoundCircuit
        ``.table()``, ``.explore()``, ``.save()``/``FoundCircuit.load()``, ``.to_eap_ig_json()``; the full
        result under ``.result``.

    Raises
    ------
    PromptError
        The model cannot serve the relation: fewer than 2 facts it knows, or a single answer among them — the
        message says which and what to do. Also, before any model run: fewer than 2 facts, or one answer
        for all of them.
    ValueError
        An unknown method or ablation, a malformed budget, or templates missing for typed facts.
    RelationFileError
        Malformed facts or templates (the message names the fact), or an unknown relation name.

    Examples
    --------
    >>> from kc_utils import Relation, find_circuit, load_model
    >>> model = load_model("kc-organism")  # doctest: +SKIP
    >>> rel = Relation.from_facts({"Apple": "Cupertino", "Toyota": "Toyota City"}, "{} has its headquarters in")
    >>> found = find_circuit(model, rel, budget="knee")  # doctest: +SKIP
    >>> found.table()  # doctest: +SKIP
    """
    if method not in FIND_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {FIND_METHODS}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")
    check_budget(budget, knee_level)
    relation = _as_relation(relation_or_facts, templates, name)
    if len(relation) < 2:
        raise PromptError(
            f"{relation.key}: {len(relation)} fact; a circuit needs facts in Dval and in Dtest — give at least 2 "
            "(20 or more make the scores meaningful)"
        )
    if len({s.object for s in relation.samples}) < 2:
        raise PromptError(
            f"{relation.key}: every fact has the answer {relation.samples[0].object!r}, so no counterfactual "
            "exists and no circuit can tell the facts apart — add facts with other answers"
        )
    name_or_source = model if isinstance(model, str) else model_source(model)
    if isinstance(model, str):
        model = load_model(model)
    dataset = build_circuit_dataset(model, relation, n_val, n_test, top_k=top_k, seed=seed, without_twin=without_twin)
    result = find_relation_circuit(
        model,
        dataset,
        relation.relation_type,
        n_edges=budget,
        method=method,
        ig_steps=ig_steps,
        ablation=ablation,
        knee_level=knee_level,
        n_random=n_random,
        seed=seed,
        batch_size=batch_size,
        provenance={"model": name_or_source},
    )
    return FoundCircuit(relation, result, name_or_source)
