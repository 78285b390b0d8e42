"""The steps the notebook chains, one call each: a relation's facts → their queries' knowledge neurons → consistency.

:func:`query_neurons` attributes every query of every fact and selects its knowledge neurons;
:func:`relations_consistency` does that for many relations (the all-relations summary) and returns
one row per fact (:func:`kc_utils.neurons.consistency.consistency_table`) plus what was skipped and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils.data.prompts import PromptBatch
from kc_utils.data.relations import load_relation
from kc_utils.neurons.attribution import neuron_attribution
from kc_utils.neurons.consistency import consistency_table
from kc_utils.neurons.positions import NeuronError, check_layers, query_positions
from kc_utils.neurons.queries import RelationQueries, facts_batch, relation_queries
from kc_utils.neurons.selection import select_neurons

__all__ = ["QueryNeurons", "mask_agreement", "query_neurons", "relations_consistency"]


@dataclass
class QueryNeurons:
    """Knowledge neurons of every query of a relation's facts.

    Attributes:
        queries: the facts and templates.
        batch: every query, fact-major (``fact * q + query``).
        positions: ``Int[f * q]`` where each query's neurons are read.
        layers: the MLP layers searched.
        scores: ``Float[f, q, l, n]`` integrated-gradients scores.
        masks: ``Bool[f, q, l, n]`` knowledge neurons.
    """

    queries: RelationQueries
    batch: PromptBatch
    positions: Int[Tensor, "fq"]
    layers: list[int]
    scores: Float[Tensor, "f q l n"]
    masks: Bool[Tensor, "f q l n"]


def query_neurons(
    model: Any,
    queries: RelationQueries,
    position: str = "last",
    steps: int = 20,
    threshold: float = 0.3,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> QueryNeurons:
    """Attribute every query of ``queries.facts`` and keep neurons above ``threshold`` × each query's max.

    Raises:
        NeuronError: no fact to analyse (the message says how many candidates were answered).
    """
    if not queries.facts:
        raise NeuronError(
            f"relation {queries.key!r}: no fact is answered top-1 in all of its {len(queries.templates)} queries "
            f"({queries.n_candidates} candidates tested; dropped templates: {queries.dropped or 'none'})"
        )
    layers = check_layers(model, layers)
    batch = facts_batch(model, queries.facts)
    subjects = [f.subject for f in queries.facts for _ in f.prompts]
    positions = query_positions(model, batch, position, subjects)
    scores = neuron_attribution(model, batch, positions, layers, steps=steps, progress=progress)
    scores = scores.reshape(len(queries.facts), len(queries.templates), *scores.shape[1:])
    return QueryNeurons(queries, batch, positions, layers, scores, select_neurons(scores, threshold))


def relations_consistency(
    model: Any,
    relations: Sequence[str],
    model_name: str,
    n_facts: int,
    position: str = "last",
    steps: int = 20,
    threshold: float = 0.3,
    static_threshold: float = 0.5,
    min_template_accuracy: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Consistency rows for up to ``n_facts`` facts of each relation, and the relations skipped with the reason.

    Candidates are sampled (``4 × n_facts``, at least 16) before the top-1 filter, to keep it fast.
    """
    tables, skipped = [], {}
    for key in tqdm(relations, desc="relations", disable=not progress, leave=False):
        try:
            found = relation_queries(
                model, load_relation(key), model_name, n_facts=n_facts, min_template_accuracy=min_template_accuracy,
                max_candidates=max(16, 4 * n_facts), seed=seed,
            )  # fmt: skip
            neurons = query_neurons(model, found, position, steps, threshold)
        except NeuronError as error:
            skipped[key] = str(error)
            continue
        subjects = [f.subject for f in found.facts]
        tables.append(consistency_table(key, subjects, neurons.masks, static_threshold))
    if not tables:
        raise NeuronError(f"no relation could be analysed: {skipped}")
    return pd.concat(tables, ignore_index=True), skipped


def mask_agreement(a: Bool[Tensor, "... l n"], b: Bool[Tensor, "... l n"]) -> float:
    """Mean Jaccard overlap of two selections of the same queries (e.g. with fewer integrated-gradients steps)."""
    a, b = a.flatten(0, -3), b.flatten(0, -3)
    union = (a | b).flatten(1).sum(1).float()
    inter = (a & b).flatten(1).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
