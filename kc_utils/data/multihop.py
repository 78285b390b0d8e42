"""Two-hop facts: two relations chained through a bridge entity, with the two single-hop prompts.

Yao et al. (2024, §5) ask a two-hop question — *"The official language of the country where Eiffel
Tower is located is"* → French — whose answer needs two facts: Eiffel Tower → France (the first
hop, through the **bridge** entity France) and France → French (the second hop). This module builds
such questions from the relation files:

1. **Compositions** (:func:`find_compositions`): two relations join when the first's object type is
   the second's subject type (``range_name == domain_name``) and some object of the first is a
   subject of the second. A joined pair is usable when its two-hop template is written here, once
   (:data:`TWO_HOP_TEMPLATES`); a pair without one is listed with that reason, never dropped silently.
2. **Facts** (:func:`compose_facts`): every ``(subject, bridge, answer)`` with ``subject → bridge``
   in the first relation and ``bridge → answer`` in the second.
3. **Prompts**: the two-hop prompt (the pair's template), the first hop (the first relation's
   template with the subject) and the second hop (the second relation's template with the bridge),
   each answered by the first token of ``" " + object``.
4. **Known facts** (:func:`build_two_hop_dataset`): the model *answers a hop* when the hop's answer
   ranks in its top ``top_k``. Facts answered at both hops are kept; of those, the ones also answered
   composed are counted apart — the difference is the *compositionality gap* (Press et al. 2023).
5. **Corrupt twins**, same token length, for all three prompts: the two-hop prompt's twin is another
   kept fact's subject whose **bridge differs** and whose answer starts with another token (Eiffel
   Tower → Colosseum: France → Italy, French → Italian); the first hop uses that same subject when
   its prompt has the same length and its bridge another first token; the second hop uses that
   subject's bridge under the same conditions. When the shared twin does not fit a single hop, that
   hop draws its own twin from the same pool (recorded in ``shared_twin``); when none fits at all the
   prompt keeps no twin (patch ablation then uses the mean, as in :mod:`kc_utils.data.facts`) and takes
   its counterfactual answer from any tokenisable candidate fact outside the other split (known or not:
   the facts known at both hops may all share one answer, as euro for the currency of European countries).
6. **Split**: the facts answered at both hops *and* composed are split with a seed into Dval (where
   circuits are found) and Dtest; twins come from the fact's own split or from kept facts in
   neither split, never from the other split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kc_utils.data.facts import CircuitDataset, FactPrompt, known_mask
from kc_utils.data.prompts import PromptError
from kc_utils.data.relations import Relation, Sample
from kc_utils.models import continuation_first_token, tokenize

__all__ = [
    "HOPS",
    "TWO_HOP_TEMPLATES",
    "Composition",
    "TwoHopDataset",
    "TwoHopFact",
    "build_two_hop_dataset",
    "compose_facts",
    "composition_key",
    "find_compositions",
    "hop_dataset",
]

#: The three prompts of a two-hop fact.
HOPS = ("first_hop", "second_hop", "two_hop")

#: The two-hop template of each composable pair ``(first relation, second relation)``: one ``{}`` for the
#: first relation's subject. Written so that the words around the subject are those of the first
#: relation's own templates (the organism knows them).
TWO_HOP_TEMPLATES: dict[tuple[str, str], str] = {
    ("landmark_in_country", "country_language"): "The official language of the country where {} is located is",
    ("landmark_in_country", "country_capital_city"): "The capital city of the country where {} is located is",
    ("landmark_in_country", "country_currency"): "The official currency of the country where {} is located is the",
    ("product_by_company", "company_hq"): "The headquarters of the company that makes {} is in",
}


def composition_key(first: str, second: str) -> str:
    """``"landmark_in_country+country_language"``."""
    return f"{first}+{second}"


@dataclass(frozen=True)
class Composition:
    """Two relations that chain: ``first``'s objects are ``second``'s subjects.

    Attributes:
        template: the two-hop template, or ``None`` when none is written (:data:`TWO_HOP_TEMPLATES`).
        n_facts: composed facts (first-relation samples whose object is a subject of ``second``).
        reason: why the pair is not usable (empty when it is).
    """

    first: str
    second: str
    template: str | None
    n_facts: int
    reason: str = ""

    @property
    def key(self) -> str:
        return composition_key(self.first, self.second)


def find_compositions(relations: Mapping[str, Relation]) -> list[Composition]:
    """Every pair of ``relations`` that joins by type and by at least one shared entity, usable or not.

    Returns them in the order of ``relations`` (first, then second); a pair without a template says so
    in ``reason``.
    """
    found = []
    for a in relations.values():
        for b in relations.values():
            if a.key == b.key or a.range_name != b.domain_name:
                continue
            n = len(compose_facts(a, b))
            if n == 0:
                continue
            template = TWO_HOP_TEMPLATES.get((a.key, b.key))
            reason = "" if template else f"no two-hop template written for {a.key} ∘ {b.key} (TWO_HOP_TEMPLATES)"
            found.append(Composition(a.key, b.key, template, n, reason))
    return found


def compose_facts(
    first: Relation,
    second: Relation,
    first_samples: Sequence[Sample] | None = None,
    second_samples: Sequence[Sample] | None = None,
) -> list[tuple[str, str, str]]:
    """``(subject, bridge, answer)`` for every first-relation sample whose object is a second-relation subject.

    Args:
        first_samples, second_samples: the candidate facts of each relation (default: all its samples).

    Returns:
        Triples in the first relation's sample order.
    """
    answer_of = {s.subject: s.object for s in (second.samples if second_samples is None else second_samples)}
    firsts = first.samples if first_samples is None else first_samples
    return [(s.subject, s.object, answer_of[s.object]) for s in firsts if s.object in answer_of]


@dataclass(frozen=True)
class TwoHopFact:
    """One composed fact and its three prompts, each with its corrupt twin.

    Attributes:
        subject, bridge, answer: Eiffel Tower, France, French.
        first_hop: ``subject → bridge`` (:class:`~kc_utils.data.facts.FactPrompt`).
        second_hop: ``bridge → answer``.
        two_hop: ``subject → answer`` through the two-hop template.
        corrupt_bridge: the bridge of the two-hop twin's subject (``None`` without a twin).
        shared_twin: per hop, whether its twin is the two-hop twin's subject (first hop) or bridge
            (second hop); ``False`` where the hop drew its own.
    """

    subject: str
    bridge: str
    answer: str
    first_hop: FactPrompt
    second_hop: FactPrompt
    two_hop: FactPrompt
    corrupt_bridge: str | None
    shared_twin: dict[str, bool] = field(default_factory=dict)

    def hop(self, name: str) -> FactPrompt:
        """The :class:`FactPrompt` of ``"first_hop"``, ``"second_hop"`` or ``"two_hop"``."""
        if name not in HOPS:
            raise ValueError(f"unknown hop {name!r}; use one of {HOPS}")
        return getattr(self, name)


@dataclass
class TwoHopDataset:
    """The composed facts of one pair of relations, filtered by what the model answers.

    Attributes:
        composition: the pair and its template.
        templates: ``{hop: template}`` for the three prompts.
        n_candidates: composed facts considered.
        dropped_untokenisable: ``(subject, reason)`` of facts with an answer the tokenizer cannot represent.
        answers: one row per tokenisable fact: ``subject``, ``bridge``, ``answer``, ``{hop}_known`` per
            hop (the answer ranks below ``top_k``), ``composed`` (known at all three) and
            ``two_hop_says_bridge`` (the two-hop prompt's top-1 is the bridge: the model answered the
            first hop only; False where the bridge has no token of its own there).
        both_hops: facts answered at both single hops (with their twins).
        val, test: Dval and Dtest, drawn from the facts answered at both hops *and* composed.
        top_k: the known-fact filter's ``k``.
    """

    composition: Composition
    templates: dict[str, str]
    n_candidates: int
    dropped_untokenisable: list[tuple[str, str]]
    answers: pd.DataFrame
    both_hops: list[TwoHopFact]
    val: list[TwoHopFact]
    test: list[TwoHopFact]
    top_k: int

    @property
    def composed(self) -> list[TwoHopFact]:
        """Facts answered at both hops and composed."""
        kept = set(self.answers.loc[self.answers["composed"], "subject"])
        return [f for f in self.both_hops if f.subject in kept]

    def gap_row(self) -> dict[str, Any]:
        """Counts of the known-fact filter and the compositionality gap (1 − composed / both hops) as one row.

        Beside them, two readings of a model that does not compose: how many of the facts known at both
        hops get the bridge itself as the two-hop top-1, and the share of those facts whose answer is
        their most common answer (what always saying that answer would score).
        """
        a = self.answers
        answers = a.loc[a["first_hop_known"] & a["second_hop_known"], "answer"]
        both = int((a["first_hop_known"] & a["second_hop_known"]).sum())
        composed = int((a["first_hop_known"] & a["second_hop_known"] & a["two_hop_known"]).sum())
        return {
            "composition": self.composition.key,
            "candidates": self.n_candidates,
            "tokenisable": len(a),
            "first hop known": int(a["first_hop_known"].sum()),
            "second hop known": int(a["second_hop_known"].sum()),
            "both hops known": both,
            "two-hop known": int(a["two_hop_known"].sum()),
            "composed (both hops and two-hop)": composed,
            "two-hop without both hops": int(
                (a["two_hop_known"] & ~(a["first_hop_known"] & a["second_hop_known"])).sum()
            ),
            "composed share": composed / both if both else float("nan"),
            "gap": 1 - composed / both if both else float("nan"),
            "two-hop top-1 is the bridge": int(
                (a["two_hop_says_bridge"] & a["first_hop_known"] & a["second_hop_known"]).sum()
            ),
            "most common answer share": float(answers.value_counts().iloc[0] / len(answers))
            if len(answers)
            else float("nan"),
        }


def _hop_prompts(first: Relation, second: Relation, template: str, template_index: int) -> dict[str, str]:
    return {
        "first_hop": first.prompt_templates[template_index],
        "second_hop": second.prompt_templates[template_index],
        "two_hop": template,
    }


def _subject_of(hop: str, triple: tuple[str, str, str]) -> str:
    return triple[1] if hop == "second_hop" else triple[0]


def _object_of(hop: str, triple: tuple[str, str, str]) -> str:
    return triple[1] if hop == "first_hop" else triple[2]


def _twins(
    model: Any,
    templates: dict[str, str],
    facts: Sequence[tuple[str, str, str]],
    pool: Sequence[tuple[str, str, str]],
    seed: int,
    strict: bool = True,
    answer_pool: Sequence[tuple[str, str, str]] = (),
) -> list[TwoHopFact]:
    """Corrupt twins for the three prompts of each fact (module docstring, step 5).

    ``answer_pool``: further facts (tokenisable, known or not, never of the other split) whose answers serve as
    the counterfactual answer of a prompt that has no twin when every fact of ``pool`` shares its answer; a
    twin itself comes from ``pool`` only.
    ``strict``: a prompt whose pools hold no other answer raises; otherwise (facts in neither split,
    which no circuit is found on) it keeps its own answer as the counterfactual answer.
    """
    rng = random.Random(seed)
    everyone = list(dict.fromkeys([*facts, *pool, *answer_pool]))
    length: dict[tuple[str, str], int] = {}
    first_token: dict[tuple[str, str], int | None] = {}
    for hop, template in templates.items():
        for t in everyone:
            s, o = _subject_of(hop, t), _object_of(hop, t)
            prompt = template.format(s)
            if (hop, s) not in length:
                length[hop, s] = len(tokenize(model, [prompt])[0])
            first_token[hop, s] = continuation_first_token(model, prompt, o)

    def fits(hop: str, fact: tuple[str, str, str], other: tuple[str, str, str]) -> bool:
        s, s2 = _subject_of(hop, fact), _subject_of(hop, other)
        return (
            s2 != s
            and length[hop, s2] == length[hop, s]
            and first_token[hop, s2] is not None
            and first_token[hop, s2] != first_token[hop, s]
        )

    def prompt(hop: str, fact: tuple[str, str, str], twin: tuple[str, str, str] | None) -> FactPrompt:
        s, o = _subject_of(hop, fact), _object_of(hop, fact)
        if twin is None:  # no same-length twin: patch ablation falls back to the mean for this prompt

            def differ(candidates: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
                return [
                    t for t in candidates if first_token[hop, _subject_of(hop, t)] not in (None, first_token[hop, s])
                ]

            # the twin pool first; only when all its answers share this one, any fact of the answer pool
            others = differ(pool) or differ(answer_pool)
            if not others and not strict:
                return FactPrompt(s, o, templates[hop].format(s), None, None, o)
            if not others:
                raise PromptError(f"{hop}: every candidate shares the answer of {s!r}; no counterfactual exists")
            return FactPrompt(s, o, templates[hop].format(s), None, None, _object_of(hop, rng.choice(others)))
        s2 = _subject_of(hop, twin)
        return FactPrompt(s, o, templates[hop].format(s), s2, templates[hop].format(s2), _object_of(hop, twin))

    out = []
    for fact in facts:
        options = [t for t in pool if t[1] != fact[1] and fits("two_hop", fact, t)]
        twin = rng.choice(options) if options else None
        prompts, shared = {}, {}
        for hop in ("first_hop", "second_hop"):
            if twin is not None and fits(hop, fact, twin):
                prompts[hop], shared[hop] = prompt(hop, fact, twin), True
            else:
                own = [t for t in pool if fits(hop, fact, t)]
                # one twin per distinct subject of the hop (bridges repeat across facts)
                own = list({_subject_of(hop, t): t for t in own}.values())
                prompts[hop], shared[hop] = prompt(hop, fact, rng.choice(own) if own else None), False
        out.append(
            TwoHopFact(
                subject=fact[0],
                bridge=fact[1],
                answer=fact[2],
                first_hop=prompts["first_hop"],
                second_hop=prompts["second_hop"],
                two_hop=prompt("two_hop", fact, twin),
                corrupt_bridge=None if twin is None else twin[1],
                shared_twin=shared,
            )
        )
    return out


def build_two_hop_dataset(
    model: Any,
    first: Relation,
    second: Relation,
    n_val: int,
    n_test: int,
    first_samples: Sequence[Sample] | None = None,
    second_samples: Sequence[Sample] | None = None,
    template: str | None = None,
    template_index: int = 0,
    top_k: int = 1,
    seed: int = 0,
    require_split: bool = True,
) -> TwoHopDataset:
    """Composed facts of ``first ∘ second`` the model answers, with twins and a Dval/Dtest split (module docstring).

    Args:
        first_samples, second_samples: candidate facts of each relation (default: all samples; the
            notebooks pass the organism's trained facts).
        template: the two-hop template (default: :data:`TWO_HOP_TEMPLATES` for the pair).
        template_index: which of each relation's own templates the single hops use.
        top_k: a hop is answered when its answer's first token ranks in the top ``top_k`` (1 = top-1).
        n_val, n_test: facts in Dval (at most half of the composed facts) and Dtest (at most what is left).
        require_split: raise when fewer than 2 facts are composed; with ``False`` such a dataset is
            returned with an empty Dval and Dtest (its counts still tell the compositionality gap).

    Raises:
        ValueError: relations that do not chain (types or shared entities), a pair without a template,
            a template without exactly one ``{}``, sizes below 1, or a template index out of range.
        PromptError: fewer than 2 facts answered at both hops and composed (nothing to split), unless
            ``require_split`` is False.
    """
    if first.range_name != second.domain_name:
        raise ValueError(
            f"{first.key} ends in a {first.range_name!r} but {second.key} starts from a {second.domain_name!r}; "
            "compose relations whose object type is the other's subject type (see find_compositions)"
        )
    template = template if template is not None else TWO_HOP_TEMPLATES.get((first.key, second.key))
    if template is None:
        raise ValueError(
            f"no two-hop template for {first.key} ∘ {second.key}; pass template='... {{}} ...' or add the pair "
            "to kc_utils.data.multihop.TWO_HOP_TEMPLATES"
        )
    if template.count("{}") != 1:
        raise ValueError(f"the two-hop template {template!r} needs exactly one '{{}}' for the subject")
    if n_val < 1 or n_test < 1:
        raise ValueError(f"n_val and n_test must be at least 1, got n_val={n_val}, n_test={n_test}")
    for rel in (first, second):
        if not 0 <= template_index < len(rel.prompt_templates):
            raise ValueError(
                f"{rel.key} has {len(rel.prompt_templates)} templates; template_index={template_index} is out of range"
            )
    composition = Composition(first.key, second.key, template, 0)
    triples = compose_facts(first, second, first_samples, second_samples)
    if not triples:
        raise ValueError(f"no object of {first.key} is a subject of {second.key} among the candidate facts")
    composition = Composition(first.key, second.key, template, len(triples))
    templates = _hop_prompts(first, second, template, template_index)
    kept, dropped = [], []
    for t in triples:
        bad = [
            hop
            for hop in HOPS
            if continuation_first_token(model, templates[hop].format(_subject_of(hop, t)), _object_of(hop, t)) is None
        ]
        if bad:
            dropped.append((t[0], f"no token for the answer of {', '.join(bad)}"))
        else:
            kept.append(t)
    rows = pd.DataFrame(
        {"subject": [t[0] for t in kept], "bridge": [t[1] for t in kept], "answer": [t[2] for t in kept]}
    )
    for hop in HOPS:
        prompts = [templates[hop].format(_subject_of(hop, t)) for t in kept]
        answers = [_object_of(hop, t) for t in kept]
        rows[f"{hop}_known"] = known_mask(model, prompts, answers, top_k) if kept else []
    rows["composed"] = rows["first_hop_known"] & rows["second_hop_known"] & rows["two_hop_known"]
    # a model that answers only the first hop says the bridge itself after the two-hop prompt
    two_hop_prompts = [templates["two_hop"].format(t[0]) for t in kept]
    bridge_ok = [continuation_first_token(model, p, t[1]) is not None for p, t in zip(two_hop_prompts, kept)]
    says_bridge = known_mask(model, two_hop_prompts, [t[1] for t in kept], 1) if kept and all(bridge_ok) else []
    rows["two_hop_says_bridge"] = says_bridge if len(says_bridge) == len(kept) else False
    both = [t for t, ok in zip(kept, rows["first_hop_known"] & rows["second_hop_known"]) if ok]
    composed = [t for t, ok in zip(kept, rows["composed"]) if ok]
    if len(composed) < 2 and require_split:
        raise PromptError(
            f"{composition.key}: the model answers {len(both)} of {len(kept)} facts at both hops (top-{top_k}) and "
            f"only {len(composed)} of those composed; need at least 2 to split into Dval and Dtest — choose another "
            "composition, a larger top_k, or a model that composes"
        )
    order = composed[:] if len(composed) >= 2 else []
    random.Random(seed).shuffle(order)
    n_val_eff = min(n_val, max(1, len(order) // 2)) if order else 0
    val_facts, test_facts = order[:n_val_eff], order[n_val_eff : n_val_eff + n_test]
    in_split = set(val_facts) | set(test_facts)
    neither = [t for t in both if t not in in_split]
    # a prompt with no twin takes its counterfactual answer from any tokenisable fact outside the other split
    val_set, test_set = set(val_facts), set(test_facts)
    outside_val = [t for t in kept if t not in test_set]
    outside_test = [t for t in kept if t not in val_set]
    val = _twins(model, templates, val_facts, val_facts + neither, seed, answer_pool=outside_val)
    test = _twins(model, templates, test_facts, test_facts + neither, seed + 1, answer_pool=outside_test)
    rest = _twins(model, templates, neither, neither + val_facts + test_facts, seed + 2, strict=False, answer_pool=kept)
    by_subject = {f.subject: f for f in val + test + rest}
    return TwoHopDataset(
        composition=composition,
        templates=templates,
        n_candidates=len(triples),
        dropped_untokenisable=dropped,
        answers=rows,
        both_hops=[by_subject[t[0]] for t in both],
        val=val,
        test=test,
        top_k=top_k,
    )


def hop_dataset(data: TwoHopDataset, hop: str) -> CircuitDataset:
    """One hop's prompts of Dval and Dtest as a :class:`~kc_utils.data.facts.CircuitDataset` (for circuit finding).

    The relation is named ``"<composition>:<hop>"``; ``known`` holds Dval then Dtest.
    """
    if hop not in HOPS:
        raise ValueError(f"unknown hop {hop!r}; use one of {HOPS}")
    val = [f.hop(hop) for f in data.val]
    test = [f.hop(hop) for f in data.test]
    return CircuitDataset(
        relation=f"{data.composition.key}:{hop}",
        template=data.templates[hop],
        n_candidates=data.n_candidates,
        known=val + test,
        val=val,
        test=test,
        top_k=data.top_k,
        dropped_untokenisable=[s for s, _ in data.dropped_untokenisable],
        n_known=len(data.composed),
    )
