"""A fact's queries: its relation's templates filled with its subject, kept where the model answers.

Chen et al. (2025) ask one fact in several ways (its "neighbour queries", ParaRel paraphrases).
Here a fact's queries are its relation's ``prompt_templates``. For the model organism the candidate
facts are those it was trained on (:func:`kc_utils.organism.load_split`), and the templates are the
organism's training templates plus the one it never saw in training.

Which facts and templates are used:

1. Facts whose answer has a token of its own after every template.
2. A template the model answers (top-1) for fewer than ``min_template_accuracy`` of those facts is
   dropped from the relation's queries (the organism never learned some unseen templates; keeping
   them would leave no fact). Dropped templates are listed with their accuracy.
3. Facts the model answers top-1 in **every** remaining query are kept; at least two queries must remain.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kc_utils.data.metrics import rank
from kc_utils.data.prompts import PromptBatch, make_batch
from kc_utils.data.relations import Relation, Sample, load_relation
from kc_utils.models import ORGANISM_NAME, continuation_first_token, without_edge_hooks
from kc_utils.neurons.positions import NeuronError

__all__ = [
    "ORGANISM_TEMPLATE_ACCURACY",
    "PRETRAINED_TEMPLATE_ACCURACY",
    "FactQueries",
    "RelationQueries",
    "QUERY_RELATION_ORDER",
    "facts_batch",
    "pick_query_relation",
    "relation_queries",
    "template_accuracy_floor",
]

#: ``min_template_accuracy="auto"`` on the organism, which was trained on every template of its facts.
ORGANISM_TEMPLATE_ACCURACY = 0.5
#: ... and on a pretrained model, which answers a relation's paraphrases far less evenly: SmolLM2-135M answers
#: its best country_capital_city template for 48% of the facts and none of the six for half of them, so a
#: floor of 0.5 leaves no query at all.
PRETRAINED_TEMPLATE_ACCURACY = 0.3


def template_accuracy_floor(setting: float | str, model_name: str) -> float:
    """The share of facts a template must be answered for to be a query: ``"auto"`` or a share in [0, 1].

    Raises:
        ValueError: any other setting.
    """
    if setting == "auto":
        return ORGANISM_TEMPLATE_ACCURACY if model_name == "kc-organism" else PRETRAINED_TEMPLATE_ACCURACY
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not 0 <= setting <= 1:
        raise ValueError(f"min_template_accuracy must be 'auto' or a share in [0, 1], got {setting!r}")
    return float(setting)


@dataclass(frozen=True)
class FactQueries:
    """One fact and its queries (one prompt per template, in template order)."""

    subject: str
    object: str
    prompts: tuple[str, ...]


@dataclass
class RelationQueries:
    """The facts of one relation usable for query-level neuron analysis.

    Attributes:
        key: the relation key.
        templates: the templates kept as queries (in the relation's order).
        unseen: for each kept template, whether the model was never trained on it (organism only).
        dropped: templates dropped for low accuracy, with that accuracy.
        n_candidates: facts considered (trained facts for the organism) with an answer token everywhere.
        template_accuracy: top-1 accuracy of every template over the candidates.
        facts: the facts answered top-1 in every kept query (sampled to ``n_facts`` when asked).
        n_correct: facts answered top-1 in every kept query, before sampling.
    """

    key: str
    templates: tuple[str, ...]
    unseen: tuple[bool, ...]
    dropped: dict[str, float]
    n_candidates: int
    template_accuracy: dict[str, float]
    facts: list[FactQueries] = field(default_factory=list)
    n_correct: int = 0


def _candidates(relation: Relation, model_name: str) -> tuple[list[Sample], set[str]]:
    if model_name != ORGANISM_NAME:
        return list(relation.samples), set()
    from kc_utils.organism import load_split

    split = load_split()
    if relation.key not in split.relations:
        raise NeuronError(f"the organism was not trained on relation {relation.key!r}")
    part = split.relations[relation.key]
    trained = set(part.trained)
    return [s for s in relation.samples if s in trained], set(part.unseen_templates)


def facts_batch(model: Any, facts: Sequence[FactQueries]) -> PromptBatch:
    """Every query of every fact as one batch, fact-major (``fact * n_queries + query``)."""
    prompts = [p for f in facts for p in f.prompts]
    answers = [f.object for f in facts for _ in f.prompts]
    return make_batch(model, prompts, answers)


def relation_queries(
    model: Any,
    relation: Relation,
    model_name: str,
    n_facts: int | None = None,
    min_template_accuracy: float = 0.5,
    max_candidates: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> RelationQueries:
    """The relation's facts answered top-1 in every query (see the module's steps).

    Args:
        n_facts: keep at most this many of them, drawn with ``seed`` (``None``: all).
        max_candidates: test only this many candidate facts, drawn with ``seed`` (``None``: all); the
            template accuracies are then estimated on them.

    Raises:
        NeuronError: fewer than two templates survive, or no fact has a token for its answer.
    """
    samples, unseen_templates = _candidates(relation, model_name)
    templates = list(relation.prompt_templates)
    if len(templates) < 2:
        raise NeuronError(f"relation {relation.key!r} has {len(templates)} template; queries need at least two")
    samples = [
        s
        for s in samples
        if all(continuation_first_token(model, t.format(s.subject), s.object) is not None for t in templates)
    ]
    if not samples:
        raise NeuronError(f"no fact of {relation.key!r} has a token for its answer after every template")
    if max_candidates is not None and max_candidates < len(samples):
        chosen = sorted(random.Random(seed).sample(range(len(samples)), max_candidates))
        samples = [samples[i] for i in chosen]
    correct = torch.zeros(len(samples), len(templates), dtype=torch.bool)
    pairs = [(i, j) for i in range(len(samples)) for j in range(len(templates))]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = make_batch(
            model, [templates[j].format(samples[i].subject) for i, j in chunk], [samples[i].object for i, _ in chunk]
        )
        with torch.no_grad(), without_edge_hooks(model):
            ranks = rank(model(batch.clean), batch).cpu()
        for (i, j), r in zip(chunk, ranks.tolist()):
            correct[i, j] = r == 0
    accuracy = correct.float().mean(0)
    keep = [j for j in range(len(templates)) if accuracy[j] >= min_template_accuracy]
    result = RelationQueries(
        key=relation.key,
        templates=tuple(templates[j] for j in keep),
        unseen=tuple(templates[j] in unseen_templates for j in keep),
        dropped={templates[j]: float(accuracy[j]) for j in range(len(templates)) if j not in keep},
        n_candidates=len(samples),
        template_accuracy={t: float(a) for t, a in zip(templates, accuracy.tolist())},
    )
    if len(keep) < 2:
        return result
    ok = [i for i in range(len(samples)) if bool(correct[i, keep].all())]
    result.n_correct = len(ok)
    if n_facts is not None and n_facts < len(ok):
        ok = sorted(random.Random(seed).sample(ok, n_facts))
    result.facts = [
        FactQueries(
            samples[i].subject, samples[i].object, tuple(t.format(samples[i].subject) for t in result.templates)
        )
        for i in ok
    ]
    return result


#: The relations ``relation="auto"`` of notebook 06 tries, in order: the paper's case (Chen et al. read
#: country_capital_city's paraphrases) first, then the relations whose queries are paraphrases of one fact.
QUERY_RELATION_ORDER = (
    "country_capital_city",
    "country_language",
    "person_native_language",
    "landmark_in_country",
    "company_hq",
    "country_currency",
    "product_by_company",
)


def pick_query_relation(
    model: Any,
    model_name: str,
    n_facts: int,
    min_template_accuracy: float,
    seed: int = 0,
    order: Sequence[str] = QUERY_RELATION_ORDER,
) -> tuple[RelationQueries, dict[str, str]]:
    """The first relation of ``order`` whose queries the model can serve: at least two templates kept as queries
    and at least two facts answered top-1 in all of them; with the reason each relation before it was passed over.

    Example:
        >>> found, passed_over = pick_query_relation(model, "gemma-3-270m", 6, 0.3)  # doctest: +SKIP
        >>> found.key, passed_over  # doctest: +SKIP
        ('country_language', {'country_capital_city': 'country_capital_city: 0 templates answered ...'})

    Raises:
        NeuronError: no relation of ``order`` can be served (the message gives every reason).
    """
    passed_over: dict[str, str] = {}
    for key in order:
        try:
            found = relation_queries(
                model, load_relation(key), model_name, n_facts=n_facts, min_template_accuracy=min_template_accuracy,
                max_candidates=8 * n_facts, seed=seed,
            )  # fmt: skip
        except NeuronError as error:
            passed_over[key] = f"{key}: {error}"
            continue
        if len(found.templates) >= 2 and len(found.facts) >= 2:
            return found, passed_over
        passed_over[key] = (
            f"{key}: {len(found.templates)} of its templates answered for at least {min_template_accuracy:.0%} of "
            f"the facts and {found.n_correct} of {found.n_candidates} candidate facts answered top-1 in all of them "
            "(at least 2 of each needed)"
        )
    raise NeuronError("no relation can be read query by query: " + "; ".join(passed_over.values()))
