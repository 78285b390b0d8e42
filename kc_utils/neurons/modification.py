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
from kc_utils.data.prompts import PromptBatch, answer_token, make_batch
from kc_utils.neurons.attribution import neuron_activations
from kc_utils.neurons.positions import NeuronError, check_layers
from kc_utils.neurons.queries import FactQueries
from kc_utils.neurons.selection import check_threshold, random_like, select_neurons

__all__ = [
    "METHODS",
    "cas_neurons",
    "cas_scores",
    "edit_hooks",
    "erased_neurons",
    "modification_effects",
    "modification_summary",
    "paper_layout",
    "update_direction",
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
    unit = update_direction(model, old_token, new_token)

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


def update_direction(model: Any, old_token: int, new_token: int) -> Float[Tensor, "d"]:
    """Unit vector from the old answer's unembedding direction to the new one's (final norm's linear map included)."""
    directions = unembedding_directions(model, torch.tensor([old_token, new_token]))  # [d, 2]
    step = directions[:, 1] - directions[:, 0]
    return step / step.norm().clamp_min(1e-12)


def edit_hooks(
    model: Any,
    layers: Sequence[int],
    masks: Bool[Tensor, "r l n"],
    task: str,
    direction: Float[Tensor, "d"] | None = None,
    strength: float = 1.0,
    signs: Float[Tensor, "l n"] | None = None,
) -> list[tuple[str, Any]]:
    """Hooks doing, row by row of a batch, what :func:`erased_neurons` / :func:`updated_neurons` do to the weights.

    Row ``r`` of the batch gets the edit of ``masks[r]``, so many neuron sets (the random baseline) are
    evaluated in one forward pass. Erasing rows of the output weights is zeroing those neurons at every
    position; adding ``Δ_i`` to row ``i`` adds ``activation_i × Δ_i`` to the MLP's output (tested equal).
    """
    if task not in ("erase", "update"):
        raise NeuronError(f"task must be 'erase' or 'update', got {task!r}")
    layers = check_layers(model, layers)
    hooks: list[tuple[str, Any]] = []
    for j, layer in enumerate(layers):
        keep = (~masks[:, j]).to(torch.float32)  # [r, n]
        if task == "erase":

            def erase(activation: Tensor, hook: Any, keep: Tensor = keep) -> Tensor:
                return activation * keep[:, None, :].to(activation.dtype)

            hooks.append((models.mlp_hidden_hook(layer), erase))
            continue
        if direction is None:
            raise NeuronError("an update needs the direction of the change (update_direction)")
        chosen = masks[:, j].to(torch.float32)
        norms = models.neuron_output_weights(model, layer).norm(dim=-1).float()  # [n]
        mean_norm = (chosen * norms).sum(-1) / chosen.sum(-1).clamp_min(1)  # [r]
        weight = chosen * (1.0 if signs is None else signs[j].float())[None, :]  # [r, n]
        coefficient: dict[str, Tensor] = {}

        def read(activation: Tensor, hook: Any, weight: Tensor = weight, store: dict = coefficient) -> None:
            store["c"] = (activation.float() * weight[:, None, :]).sum(-1)  # [r, p]

        def write(out: Tensor, hook: Any, mean_norm: Tensor = mean_norm, store: dict = coefficient) -> Tensor:
            added = store["c"][..., None] * (strength * mean_norm)[:, None, None] * direction.to(out.device)
            return out + added.to(out.dtype)

        hooks += [(models.mlp_hidden_hook(layer), read), (models.mlp_out_hook(layer), write)]
    return hooks


def _probabilities(
    model: Any, batch: PromptBatch, new_token: int, hooks: Sequence[tuple[str, Any]] = ()
) -> tuple[Float[Tensor, "b"], Float[Tensor, "b"]]:
    """p(answer) and p(new answer) of every prompt, from one forward pass."""
    with torch.no_grad(), models.without_edge_hooks(model):
        final = models.last_logits(model, batch.clean, batch.last_pos, hooks).float().softmax(-1)
    rows = torch.arange(len(batch), device=final.device)
    return final[rows, batch.answer], final[:, new_token]


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

    The query-local, global and CAS sets are edited in the weights (:func:`erased_neurons`,
    :func:`updated_neurons`); the ``n_random`` random sets of the CAS set's size are evaluated together
    with the equivalent :func:`edit_hooks`.

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
        q = len(fact.prompts)
        old_token = int(batch.answer[0])
        new_token = answer_token(model, fact.prompts[0], new_objects[f])
        direction = update_direction(model, old_token, new_token)
        p0, new0 = _probabilities(model, batch, new_token)
        signs = torch.sign(neuron_activations(model, batch.select(range(q)), positions[f], layers).mean(0))
        sets = {
            "query-local": masks[f, 0],
            "global": masks[f].any(0),
            "CAS": cas_neurons(scores[f], threshold, beta1, beta2),
        }
        draws = torch.stack([random_like(sets["CAS"], generator) for _ in range(n_random)]) if n_random else None

        def metrics(task: str, p1: Tensor, new1: Tensor) -> tuple[float, float, float]:
            locality = 1 - ((p1[q:] - p0[q:]).abs() / p0[q:]).clamp(max=1)
            effect = (p0[:q] - p1[:q]) / p0[:q] if task == "erase" else new1[:q] - new0[:q]
            return float(effect[0]), float(effect[1:].mean()), float(locality.mean())

        for task in ("erase", "update"):
            for method, mask in sets.items():
                edit = (
                    erased_neurons(model, layers, mask)
                    if task == "erase"
                    else updated_neurons(model, layers, mask, old_token, new_token, strength, signs)
                )
                with edit:
                    p1, new1 = _probabilities(model, batch, new_token)
                rel, gen, loc = metrics(task, p1, new1)
                rows.append(dict(subject=fact.subject, task=task, method=method, n_neurons=int(mask.sum()),
                                 reliability=rel, generalisation=gen, locality=loc))  # fmt: skip
            if draws is not None:
                repeated = batch.select(torch.arange(len(batch)).repeat(n_random))
                hooks = edit_hooks(
                    model, layers, draws.repeat_interleave(len(batch), 0), task, direction, strength, signs
                )
                p1, new1 = _probabilities(model, repeated, new_token, hooks)
                per_draw = [
                    metrics(
                        task, p1[d * len(batch) : (d + 1) * len(batch)], new1[d * len(batch) : (d + 1) * len(batch)]
                    )
                    for d in range(n_random)
                ]
                rel, gen, loc = np.mean(per_draw, axis=0)
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


def paper_layout(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's table layout: one row per method, one column per (task, metric), cells ``mean ± std``."""
    metrics = ["reliability", "generalisation", "locality"]
    out = {}
    for task in summary["task"].drop_duplicates():
        rows = summary[summary["task"] == task].set_index("method")
        for metric in metrics:
            out[(task, metric)] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(rows[metric], rows[f"{metric}_std"])]
        out[(task, "neurons")] = [f"{n:.1f}" for n in rows["n_neurons"]]
        index = rows.index
    return pd.DataFrame(out, index=index)
