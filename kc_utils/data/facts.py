"""Circuit-finding datasets built from relations: known facts, corrupted twins, Dval/Dtest.

Recipe (Yao et al. 2024, §3, with the counterfactual corruption of their code):

1. Render each fact of a relation with one template: ``"The capital of France is"`` → ``Paris``.
2. Keep the facts the model under study *knows*: its answer's first token ranks in the top ``k``.
3. Split the known facts with a seed into Dval (finds the circuit), Dtest (held out) and the
   rest (known facts in neither split).
4. Pair every fact with a corrupted prompt: the same template with another subject that has the
   same number of tokens and a different answer (first token), drawn from the fact's **own split
   or from the facts in neither split** — never from the other split, so Dtest subjects do not
   leak into Dval through the counterfactuals (and vice versa). The choice is deterministic for a
   seed. If no subject fits, ``without_twin`` decides: ``"mean"`` keeps the fact without a corrupt
   prompt, so that patch ablation uses the batch-mean activation for it (counted in
   :attr:`CircuitDataset.n_mean_fallback`; :func:`kc_utils.circuits.relation.find_relation_circuit`
   warns when it happens), ``"drop"`` leaves the fact out of its split (listed in
   :attr:`CircuitDataset.dropped_without_twin`), ``"error"`` refuses.

Sizes: ``n_val=None`` puts half of the known facts (rounded down, at least 1) in Dval and
``n_test=None`` the rest in Dtest. A Dval asked larger than half of the known facts is cut to half
(so that Dtest has facts), and a Dtest larger than what is left is cut to it; either cut raises a
:class:`DefaultChoiceWarning` that says so.

The candidate facts are an argument (``samples``): all of the relation by default; for the model
organism, the notebooks pass the facts it was trained on (:func:`kc_utils.organism.trained_samples`);
notebook 04 passes the held-out ones; a user passes their own.

Dtest Hit@10 is scored against Dtest's own answers. (The authors' script scores Dtest against the
Dval labels, which likely explains some of its zeros.)
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from kc_utils.data.metrics import rank
from kc_utils.data.prompts import PromptBatch, PromptError, make_batch
from kc_utils.data.relations import Relation, Sample
from kc_utils.models import continuation_first_token, tokenize

#: What :func:`build_circuit_dataset` does with a fact that has no same-length counterfactual subject.
WITHOUT_TWIN = ("mean", "drop", "error")


class DefaultChoiceWarning(UserWarning):
    """A default made a choice the result depends on; the message names it and the argument that decides it."""


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
        known: the facts used (Dval then Dtest), with their corrupt twins.
        val: Dval — finds the circuit.
        test: Dtest — held out.
        top_k: the filter's ``k``.
        dropped_untokenisable: subjects whose answer the tokenizer cannot represent.
        n_known: facts the model answers within its top ``top_k`` (used or not).
        dropped_without_twin: subjects left out of their split for want of a counterfactual subject of the
            same token length (``without_twin="drop"``).
    """

    relation: str
    template: str
    n_candidates: int
    known: list[FactPrompt]
    val: list[FactPrompt]
    test: list[FactPrompt]
    top_k: int
    dropped_untokenisable: list[str] = field(default_factory=list)
    n_known: int = 0
    dropped_without_twin: list[str] = field(default_factory=list)

    @property
    def n_mean_fallback(self) -> int:
        """Facts without a same-length corrupt subject (mean ablation used for them)."""
        return sum(f.corrupt_prompt is None for f in self.val + self.test)


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
                f"every known fact has the same answer (first token) for template {template!r}, so no "
                "counterfactual answer exists and no circuit can tell the facts apart — add facts with other "
                "answers"
            )
    return out


def build_circuit_dataset(
    model: Any,
    relation: Relation,
    n_val: int | None,
    n_test: int | None,
    samples: Sequence[Sample] | None = None,
    template_index: int = 0,
    top_k: int = 10,
    seed: int = 0,
    without_twin: Literal["mean", "drop", "error"] = "mean",
) -> CircuitDataset:
    """Known facts of ``relation`` split into Dval and Dtest, each paired with corrupt twins of its own.

    Parameters
    ----------
    model
        A booted model (:func:`kc_utils.models.load_model`).
    relation
        The relation; its template ``template_index`` renders the prompts.
    n_val, n_test
        Facts in Dval and Dtest; ``None``: half of the known facts (at least 1) and the rest. Dval is cut to
        half of the known facts and Dtest to what is left, with a :class:`DefaultChoiceWarning`.
    samples
        The candidate facts (default: every sample of the relation); each must be a sample of ``relation``.
    template_index
        Which of ``relation.prompt_templates`` to use.
    top_k
        A fact is known when its answer's first token ranks in the model's top ``top_k``.
    seed
        Seeds the split and the choice of counterfactuals.
    without_twin
        A fact with no counterfactual subject of the same token length: ``"mean"`` keeps it without one
        (patch ablation then uses the batch mean for it), ``"drop"`` leaves it out of its split, ``"error"``
        refuses (module docstring).

    Returns
    -------
    CircuitDataset
        Dval and Dtest facts with their corrupt prompts, and what was left out.

    Raises
    ------
    PromptError
        Fewer than 2 known facts, a single answer among them (no counterfactual exists), or a fact without a
        twin under ``without_twin="error"``; each message says what to do.
    ValueError
        A template index out of range, sizes below 1, samples not of the relation, or an unknown
        ``without_twin``.

    Examples
    --------
    >>> model = load_model("kc-organism")  # doctest: +SKIP
    >>> data = build_circuit_dataset(model, load_relation("company_hq"), None, None)  # doctest: +SKIP
    >>> len(data.val), len(data.test), data.n_mean_fallback  # doctest: +SKIP
    (12, 12, 0)
    """
    if not 0 <= template_index < len(relation.prompt_templates):
        raise ValueError(
            f"{relation.key} has {len(relation.prompt_templates)} templates; "
            f"template_index={template_index} is out of range"
        )
    if (n_val is not None and n_val < 1) or (n_test is not None and n_test < 1):
        raise ValueError(f"n_val and n_test must be at least 1 (or None), got n_val={n_val}, n_test={n_test}")
    if without_twin not in WITHOUT_TWIN:
        raise ValueError(f"without_twin={without_twin!r}: use one of {WITHOUT_TWIN}")
    template = relation.prompt_templates[template_index]
    candidates = list(relation.samples) if samples is None else list(samples)
    foreign = [s.subject for s in candidates if s not in set(relation.samples)]
    if foreign:
        raise ValueError(f"{len(foreign)} samples are not facts of {relation.key} (e.g. {foreign[0]!r})")
    candidates, _, dropped = _first_tokens(model, template, candidates)
    prompts = [template.format(s.subject) for s in candidates]
    mask = known_mask(model, prompts, [s.object for s in candidates], top_k) if candidates else []
    known = [s for s, ok in zip(candidates, mask) if ok]
    if len(known) < 2:
        raise PromptError(
            f"{relation.key}: only {len(known)} of {len(candidates)} facts are known to the model (top-{top_k}); "
            "need at least 2 to split into Dval and Dtest — give facts this model knows (more of them, or "
            "another template), a larger top_k, or a larger model"
        )
    order = known[:]
    random.Random(seed).shuffle(order)
    half = max(1, len(order) // 2)
    n_val_eff = half if n_val is None else min(n_val, half)
    rest = len(order) - n_val_eff
    n_test_eff = rest if n_test is None else min(n_test, rest)
    cuts = [
        (n_val, n_val_eff, f"the model knows {len(order)} of the facts; Dval takes at most half of them ({half}) so "
         "that Dtest has facts"),
        (n_test, n_test_eff, f"only {rest} known facts are left after Dval; Dtest holds {rest}"),
    ]  # fmt: skip
    for (asked, kept, why), knob in zip(cuts, ("n_val", "n_test")):
        if asked is not None and kept < asked:
            message = f"{relation.key}: {knob}={asked} asked, but {why}. Pass {knob}<={kept} (or None) to choose."
            warnings.warn(message, DefaultChoiceWarning, stacklevel=2)
    val_facts, test_facts = order[:n_val_eff], order[n_val_eff : n_val_eff + n_test_eff]
    neither = order[n_val_eff + n_test_eff :]
    val = pair_corrupt(model, template, val_facts, val_facts + neither, seed)
    test = pair_corrupt(model, template, test_facts, test_facts + neither, seed + 1)
    lonely = [f.subject for f in val + test if f.corrupt_prompt is None]
    if lonely and without_twin == "error":
        raise PromptError(
            f"{relation.key}: {len(lonely)} facts have no counterfactual subject with the same number of tokens "
            f"(e.g. {lonely[0]!r}); add facts whose subjects tokenize to the same length, or pass "
            "without_twin='mean' (mean ablation for them) or 'drop' (leave them out)"
        )
    if without_twin == "drop":
        val = [f for f in val if f.corrupt_prompt is not None]
        test = [f for f in test if f.corrupt_prompt is not None]
        if not val or not test:
            raise PromptError(
                f"{relation.key}: leaving out the {len(lonely)} facts without a same-length counterfactual leaves "
                f"Dval or Dtest empty; add facts or pass without_twin='mean'"
            )
    return CircuitDataset(
        relation.key,
        template,
        len(candidates) + len(dropped),
        val + test,
        val,
        test,
        top_k,
        dropped,
        len(known),
        lonely if without_twin == "drop" else [],
    )


def facts_to_batch(model: Any, facts: Sequence[FactPrompt]) -> PromptBatch:
    """A :class:`PromptBatch` of facts; a fact without a twin gets mean ablation under ``patch``."""
    corrupt = [f.corrupt_prompt for f in facts]
    return make_batch(
        model, [f.prompt for f in facts], [f.object for f in facts], corrupt, [f.corrupt_object for f in facts]
    )


@dataclass(frozen=True)
class DatasetBuild:
    """The datasets of several relations, and the relations left out with the reason why.

    Attributes:
        datasets: relation key → its :class:`CircuitDataset`, in the order asked.
        skipped: relation key → why the model cannot serve it (too few known facts, a single answer, …).
    """

    datasets: dict[str, CircuitDataset]
    skipped: dict[str, str]

    def skipped_table(self) -> pd.DataFrame:
        """One row per left-out relation: ``relation``, ``reason``."""
        return pd.DataFrame({"relation": list(self.skipped), "reason": list(self.skipped.values())})

    def describe_skipped(self) -> str:
        """One sentence naming the left-out relations and why, or saying that none was."""
        if not self.skipped:
            return f"All {len(self.datasets)} relations can be served by this model."
        reasons = "; ".join(f"{key}: {why}" for key, why in self.skipped.items())
        return (
            f"{len(self.skipped)} of {len(self.skipped) + len(self.datasets)} relations are left out, since this model "
            f"cannot serve them — {reasons}."
        )


def build_datasets(
    model: Any,
    relations: dict[str, Relation],
    n_val: int | None,
    n_test: int | None,
    samples: dict[str, Sequence[Sample]] | None = None,
    top_k: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> DatasetBuild:
    """:func:`build_circuit_dataset` for several relations (``samples`` per relation key), with a progress bar.

    A relation the model cannot serve — fewer than 2 known facts, or a single answer among them so that no
    counterfactual exists — is left out and recorded with its reason in :attr:`DatasetBuild.skipped`; it
    never stops the others.

    Raises:
        PromptError: when no relation at all can be served (the message lists every reason).
    """
    datasets: dict[str, CircuitDataset] = {}
    skipped: dict[str, str] = {}
    for key, rel in tqdm(relations.items(), desc="known facts", disable=not progress):
        try:
            datasets[key] = build_circuit_dataset(
                model, rel, n_val, n_test, samples=None if samples is None else samples[key], top_k=top_k, seed=seed
            )
        except PromptError as error:
            skipped[key] = str(error).removeprefix(f"{key}: ")
    if not datasets:
        raise PromptError(
            "the model can serve none of the relations asked: "
            + "; ".join(f"{k}: {why}" for k, why in skipped.items())
            + " — choose other relations or a larger top_k"
        )
    return DatasetBuild(datasets, skipped)
