"""Consistency-aware knowledge-neuron modification (Chen et al. 2025, §5), against query-local and global sets.

For one fact with ``q`` queries and attribution scores ``S[q, layer, neuron]``:

* **query-local** set: the knowledge neurons of one query (the first template's);
* **global** set: the union of every query's knowledge neurons;
* **CAS** set: neurons whose consistency-aware score ``CAS = β1·mean_q S − β2·std_q S`` is at least
  ``threshold`` × the largest CAS — high on average over the queries *and* steady across them;
* **random** baseline: as many random neurons per layer as the CAS set (``n_random`` draws).

Each set is edited through the neurons' output weights (rows of
:func:`kc_utils.models.neuron_output_weights`; the model is restored afterwards):

* **erase**: the rows are set to 0 (the neurons write nothing, at every position);
* **update**: ``strength × (mean row norm)`` times the unit vector from the old answer's unembedding
  direction to the new answer's is added to each row (Dai et al.'s update, with the final norm's
  linear map in place of word embeddings).

Measured per fact (before vs after the edit, p read at the last token):

==================  ===========================================================================
column              erase                                      update
==================  ===========================================================================
reliability         relative drop of p(answer) on the first     rise of p(new answer) on the first
                    query: (p0 − p1) / p0                       query: p1(new) − p0(new)
generalisation      the same, mean over the other queries       the same, mean over the other queries
locality            other facts of the relation (first template): mean of 1 − min(1, |Δp| / p0)
                    of their own answers (1 = untouched)
==================  ===========================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.analysis.lens import unembedding_directions
from kc_utils.data.prompts import make_batch
from kc_utils.neurons.attribution import answer_probability, neuron_activations
from kc_utils.neurons.positions import NeuronError, check_layers
from kc_utils.neurons.queries import FactQueries
from kc_utils.neurons.selection import check_threshold, random_like, select_neurons

__all__ = [
    "METHODS",
    "cas_neurons",
    "cas_scores",
    "erased_neurons",
    "modification_effects",
    "modification_summary",
    "updated_neurons",
]

#: The neuron sets compared, in table order.
METHODS = ("query-local", "global", "CAS", "random")


def cas_scores(scores: Float[Tensor, "q l n"], beta1: float = 1.0, beta2: float = 1.0) -> Float[Tensor, "l n"]:
    """``β1 · mean − β2 · std`` of each neuron's score over the fact's queries (population std)."""
    if scores.shape[0] < 2:
        raise NeuronError(f"CAS needs at least two queries of the fact, got {scores.shape[0]}")
    return beta1 * scores.mean(0) - beta2 * scores.std(0, unbiased=False)


def cas_neurons(
    scores: Float[Tensor, "q l n"], threshold: float = 0.3, beta1: float = 1.0, beta2: float = 1.0
) -> Bool[Tensor, "l n"]:
    """Neurons with CAS ≥ ``threshold`` × the largest CAS (and CAS > 0)."""
    return select_neurons(cas_scores(scores, beta1, beta2), threshold)


@contextlib.contextmanager
def _edited_rows(
    model: Any, layers: Sequence[int], mask: Bool[Tensor, "l n"], edit: Callable[[Tensor, int], Tensor]
) -> Iterator[Any]:
    """Replace the masked rows of each layer ``j`` by ``edit(rows, j)`` inside; restore them on exit."""
    layers = check_layers(model, layers)
    if mask.shape[0] != len(layers):
        raise NeuronError(f"the mask covers {mask.shape[0]} layers but {len(layers)} layers were named")
    saved = []
    try:
        with torch.no_grad():
            for j, layer in enumerate(layers):
                chosen = mask[j].nonzero().flatten()
                if len(chosen) == 0:
                    continue
                rows = models.neuron_output_weights(model, layer)
                saved.append((rows, chosen, rows[chosen].clone()))
                rows[chosen] = edit(rows[chosen], j).to(rows.dtype)
        yield model
    finally:
        with torch.no_grad():
            for rows, chosen, original in saved:
                rows[chosen] = original


def erased_neurons(model: Any, layers: Sequence[int], mask: Bool[Tensor, "l n"]) -> contextlib.AbstractContextManager:
    """Context manager: the masked neurons' output rows are 0 inside, restored on exit."""
    return _edited_rows(model, layers, mask, lambda rows, j: torch.zeros_like(rows))


def updated_neurons(
    model: Any,
    layers: Sequence[int],
    mask: Bool[Tensor, "l n"],
    old_token: int,
    new_token: int,
    strength: float = 1.0,
    signs: Float[Tensor, "l n"] | None = None,
) -> contextlib.AbstractContextManager:
    """Context manager: the masked neurons' rows move from the old answer towards the new one (restored on exit).

    A neuron writes ``activation × row``, so for a neuron that fires negatively (gated MLPs) the row must
    move the other way: ``signs`` (e.g. the sign of each neuron's activation on the fact's queries;
    default +1) multiplies each row's step.
    """
    directions = unembedding_directions(model, torch.tensor([old_token, new_token]))  # [d, 2]
    step = directions[:, 1] - directions[:, 0]
    unit = step / step.norm().clamp_min(1e-12)

    def edit(rows: Tensor, j: int) -> Tensor:
        sign = torch.ones(len(rows)) if signs is None else signs[j][mask[j]]
        step = strength * rows.norm(dim=-1).mean() * unit.to(rows.device, rows.dtype)
        return rows + sign.to(rows.device, rows.dtype)[:, None] * step[None, :]

    return _edited_rows(model, layers, mask, edit)


def _new_objects(facts: Sequence[FactQueries], model: Any) -> list[str]:
    """For each fact, the object of the next fact (cyclically) whose answer's first token differs."""
    first = [models.continuation_first_token(model, f.prompts[0], f.object) for f in facts]
    out = []
    for i in range(len(facts)):
        for step in range(1, len(facts)):
            j = (i + step) % len(facts)
            if first[j] != first[i]:
                out.append(facts[j].object)
                break
        else:
            raise NeuronError("an update needs facts with at least two different answers")
    return out


def modification_effects(
    model: Any,
    facts: Sequence[FactQueries],
    scores: Float[Tensor, "f q l n"],
    masks: Bool[Tensor, "f q l n"],
    positions: Int[Tensor, "f q"],
    layers: Sequence[int],
    threshold: float = 0.3,
    beta1: float = 1.0,
    beta2: float = 1.0,
    strength: float = 1.0,
    n_locality: int = 10,
    n_random: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Erase and update each fact with each neuron set of :data:`METHODS`; one row per (fact, task, method).

    Args:
        scores, masks: each fact's per-query attribution scores and knowledge-neuron masks.
        positions: where each query's neurons were read (their activation signs steer an update).
        n_locality: other facts (first template) whose answers measure locality.
        n_random: random same-size sets per fact (the ``random`` row is their mean).

    Returns:
        Columns ``subject, task, method, n_neurons, reliability, generalisation, locality``
        (see the module table).
    """
    check_threshold(threshold)
    layers = check_layers(model, layers)
    if len(facts) < 2:
        raise NeuronError("modification needs at least two facts (locality is measured on the others)")
    generator = torch.Generator().manual_seed(seed)
    new_objects = _new_objects(facts, model)
    rows = []
    for f, fact in enumerate(tqdm(facts, desc="editing facts", disable=not progress, leave=False)):
        others = [facts[(f + k) % len(facts)] for k in range(1, min(n_locality, len(facts) - 1) + 1)]
        prompts = [*fact.prompts, *(o.prompts[0] for o in others)]
        batch = make_batch(model, prompts, [fact.object] * len(fact.prompts) + [o.object for o in others])
        new_batch = make_batch(model, list(fact.prompts), [new_objects[f]] * len(fact.prompts))
        q = len(fact.prompts)
        old_token, new_token = int(batch.answer[0]), int(new_batch.answer[0])
        p0 = answer_probability(model, batch)
        new0 = answer_probability(model, new_batch)
        signs = torch.sign(neuron_activations(model, new_batch, positions[f], layers).mean(0))
        sets = {
            "query-local": masks[f, 0],
            "global": masks[f].any(0),
            "CAS": cas_neurons(scores[f], threshold, beta1, beta2),
        }
        draws = [random_like(sets["CAS"], generator) for _ in range(n_random)]
        for task in ("erase", "update"):

            def measure(mask: Tensor) -> tuple[float, float, float]:
                edit = (
                    erased_neurons(model, layers, mask)
                    if task == "erase"
                    else updated_neurons(model, layers, mask, old_token, new_token, strength, signs)
                )
                with edit:
                    p1 = answer_probability(model, batch)
                    new1 = answer_probability(model, new_batch) if task == "update" else None
                locality = 1 - ((p1[q:] - p0[q:]).abs() / p0[q:]).clamp(max=1)
                if task == "erase":
                    effect = (p0[:q] - p1[:q]) / p0[:q]
                else:
                    effect = new1 - new0
                return float(effect[0]), float(effect[1:].mean()), float(locality.mean())

            for method, mask in sets.items():
                rel, gen, loc = measure(mask)
                rows.append(dict(subject=fact.subject, task=task, method=method, n_neurons=int(mask.sum()),
                                 reliability=rel, generalisation=gen, locality=loc))  # fmt: skip
            if n_random:
                rel, gen, loc = np.mean([measure(d) for d in draws], axis=0)
                rows.append(dict(subject=fact.subject, task=task, method="random", n_neurons=int(sets["CAS"].sum()),
                                 reliability=rel, generalisation=gen, locality=loc))  # fmt: skip
    return pd.DataFrame(rows)


def modification_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """The paper's table: one row per (task, method), mean and std over facts of each metric."""
    metrics = ["n_neurons", "reliability", "generalisation", "locality"]
    grouped = effects.groupby(["task", "method"], sort=False)[metrics]
    table = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std")).reset_index()
    order = {m: i for i, m in enumerate(METHODS)}
    table = table.sort_values(["task", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    table.insert(2, "n_facts", effects.groupby(["task", "method"], sort=False).size().reindex(
        pd.MultiIndex.from_frame(table[["task", "method"]])).to_numpy())  # fmt: skip
    return table.reset_index(drop=True)
