"""Circuit-finding datasets built from relations: known facts, corrupted twins, Dval/Dtest.

Recipe (Yao et al. 2024, §3, with the counterfactual corruption of their code):

1. Render each fact of a relation with one template: ``"The capital of France is"`` → ``Paris``.
2. Keep the facts the model under study *knows*: its answer's first token ranks in the top ``k``.
3. Pair every fact with a corrupted prompt: the same template with another subject of the same
   relation that has the same number of tokens and a different answer (first token). The
   choice is deterministic for a seed. If no subject fits, the fact keeps no corrupt prompt and
   patch ablation falls back to the mean activation for that example (counted in
   :attr:`CircuitDataset.n_mean_fallback`).
4. Split the known facts with a seed into Dval (finds the circuit) and Dtest (held out).

Dtest Hit@10 is scored against Dtest's own answers. (The authors' script scores Dtest against the
Dval labels, which likely explains some of its zeros.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from kc_utils.data.metrics import rank
from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.data.relations import Relation, Sample
from kc_utils.models import ORGANISM_NAME, continuation_first_token, tokenize


@dataclass(frozen=True)
class FactPrompt:
    """One fact rendered for circuit finding."""

    subject: str
    object: str
    prompt: str
    corrupt_subject: str | None
    corrupt_prompt: str | None
    corrupt_object: str


@dataclass
class CircuitDataset:
    """The facts of one relation ready for circuit finding.

    Attributes:
        relation: the relation key.
        template: the prompt template used.
        n_candidates: facts considered (before the known-fact filter).
        known: facts the model answers within its top ``top_k``.
        val: Dval — finds the circuit.
        test: Dtest — held out.
        top_k: the filter's ``k``.
    """

    relation: str
    template: str
    n_candidates: int
    known: list[FactPrompt]
    val: list[FactPrompt]
    test: list[FactPrompt]
    top_k: int
    dropped_untokenisable: list[str] = field(default_factory=list)

    @property
    def n_mean_fallback(self) -> int:
        """Facts without a same-length corrupt subject (mean ablation used for them)."""
        return sum(f.corrupt_prompt is None for f in self.val + self.test)


def candidate_samples(relation: Relation, model_name: str) -> list[Sample]:
    """The facts worth testing: for the organism, those it was trained on; otherwise all."""
    if model_name == ORGANISM_NAME:
        from kc_utils.organism.split import load_split

        split = load_split()
        if relation.key not in split.relations:
            raise ValueError(f"the organism was not trained on relation {relation.key!r}")
        trained = set(split.relations[relation.key].trained)
        return [s for s in relation.samples if s in trained]
    return list(relation.samples)


def _first_tokens(model: Any, template: str, samples: Sequence[Sample]) -> tuple[list[Sample], list[int], list[str]]:
    kept, tokens, dropped = [], [], []
    for s in samples:
        token = continuation_first_token(model, template.format(s.subject), s.object)
        if token is None:
            dropped.append(s.subject)
        else:
            kept.append(s)
            tokens.append(token)
    return kept, tokens, dropped


def known_mask(
    model: Any, prompts: Sequence[str], answers: Sequence[str], top_k: int, batch_size: int = 64
) -> list[bool]:
    """Whether each answer's first token ranks in the model's top ``top_k`` after its prompt."""
    known: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        batch = make_batch(model, prompts[start : start + batch_size], answers[start : start + batch_size])
        with torch.no_grad():
            ranks = rank(model(batch.clean), batch)
        known += (ranks < top_k).tolist()
    return known


def pair_corrupt(
    model: Any, template: str, facts: Sequence[Sample], pool: Sequence[Sample], seed: int = 0
) -> list[FactPrompt]:
    """Give each fact a corrupt twin from ``pool``: same token length, different first answer token."""
    rng = random.Random(seed)
    lengths = {s.subject: len(tokenize(model, [template.format(s.subject)])[0]) for s in [*facts, *pool]}
    first = {s.object: continuation_first_token(model, template.format(s.subject), s.object) for s in [*facts, *pool]}
    out = []
    for fact in facts:
        options = [
            s
            for s in pool
            if s.subject != fact.subject
            and lengths[s.subject] == lengths[fact.subject]
            and first[s.object] not in (None, first[fact.object])
        ]
        others = [s for s in pool if first[s.object] not in (None, first[fact.object])]
        if options:
            twin = rng.choice(options)
            out.append(
                FactPrompt(
                    fact.subject,
                    fact.object,
                    template.format(fact.subject),
                    twin.subject,
                    template.format(twin.subject),
                    twin.object,
                )
            )
        elif others:
            counter = rng.choice(others)
            out.append(FactPrompt(fact.subject, fact.object, template.format(fact.subject), None, None, counter.object))
        else:
            raise PromptError(
                f"relation has a single answer for template {template!r}: no counterfactual answer exists"
            )
    return out


def build_circuit_dataset(
    model: Any,
    relation: Relation,
    model_name: str,
    n_val: int,
    n_test: int,
    template_index: int = 0,
    top_k: int = 10,
    seed: int = 0,
) -> CircuitDataset:
    """Known facts of ``relation``, paired with corrupt twins and split into Dval and Dtest.

    Raises:
        PromptError: when fewer than 2 facts survive (nothing to split).
    """
    if not 0 <= template_index < len(relation.prompt_templates):
        raise ValueError(
            f"{relation.key} has {len(relation.prompt_templates)} templates; "
            f"template_index={template_index} is out of range"
        )
    template = relation.prompt_templates[template_index]
    candidates = candidate_samples(relation, model_name)
    candidates, _, dropped = _first_tokens(model, template, candidates)
    prompts = [template.format(s.subject) for s in candidates]
    mask = known_mask(model, prompts, [s.object for s in candidates], top_k) if candidates else []
    known = [s for s, ok in zip(candidates, mask) if ok]
    if len(known) < 2:
        raise PromptError(
            f"{relation.key}: only {len(known)} of {len(candidates)} facts are known to the model (top-{top_k}); "
            "need at least 2 to split into Dval and Dtest — choose another relation or a larger top_k"
        )
    rng = random.Random(seed)
    order = known[:]
    rng.shuffle(order)
    paired = pair_corrupt(model, template, order, known, seed)
    n_val_eff = min(n_val, max(1, len(paired) // 2))
    val = paired[:n_val_eff]
    test = paired[n_val_eff : n_val_eff + n_test]
    return CircuitDataset(relation.key, template, len(candidates) + len(dropped), paired, val, test, top_k, dropped)


def facts_to_batch(model: Any, facts: Sequence[FactPrompt]) -> PromptBatch:
    """A :class:`PromptBatch` of facts; a fact without a twin gets mean ablation under ``patch``."""
    corrupt = [f.corrupt_prompt for f in facts]
    return make_batch(
        model, [f.prompt for f in facts], [f.object for f in facts], corrupt, [f.corrupt_object for f in facts]
    )


def build_datasets(
    model: Any,
    relations: dict[str, Relation],
    model_name: str,
    n_val: int,
    n_test: int,
    top_k: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, CircuitDataset]:
    """:func:`build_circuit_dataset` for several relations, with a progress bar."""
    return {
        key: build_circuit_dataset(model, rel, model_name, n_val, n_test, top_k=top_k, seed=seed)
        for key, rel in tqdm(relations.items(), desc="known facts", disable=not progress)
    }
