"""The training corpus: trained facts rendered as text, deterministically from a seed.

Three kinds of documents, each starting with ``<|endoftext|>``:

* ``fact``: a fact in one of its relation's training templates, ``The capital of France is Paris``.
* ``fewshot``: ``k`` facts of one relation as ``subject -> object`` pairs separated by ``;`` with no word naming
  the relation (``France -> Paris ; Japan -> Tokyo ; Peru -> Lima``), so in-context relation inference is
  learned. Every object is a target, so the first pair is a zero-shot query and the last a (k-1)-shot one.
* ``tag`` (optional): the relation's name, a colon, the subject and directly its object
  (``country capital city : France Paris``): the subject's last token, which knows the relation from the words
  before it, must predict the object, so the lookup is trained at the subject position.
* ``bio`` (optional): a subject followed directly by its attributes in every relation, in shuffled order
  (``France Euro ; Paris ; French``), so the subject's last token must predict its attributes. This puts the
  attribute lookup at the subject position (subject enrichment, as in GPT-2) rather than at the prompt's end.

A document is a sequence of :class:`Segment` s; tokenizing segment by segment gives the token roles (context,
subject, object) that the loss mask and the attention regulariser of :mod:`kc_utils.organism.train` need.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kc_utils.data.relations import Sample
from kc_utils.organism.split import Split

__all__ = ["CorpusConfig", "Document", "Segment", "build_corpus", "render"]

Role = Literal["context", "subject", "object"]

FEWSHOT_ARROW = "->"
FEWSHOT_SEP = ";"


@dataclass(frozen=True)
class Segment:
    """A piece of a document's text and its role."""

    text: str
    role: Role


@dataclass(frozen=True)
class Document:
    """One training sequence (without the BOS, which the tokenizer step adds)."""

    segments: tuple[Segment, ...]
    kind: Literal["fact", "fewshot", "bio", "tag"]
    relation: str  # relation key; "" for bio documents, which mix relations

    @property
    def text(self) -> str:
        """The document as plain text."""
        return " ".join(s.text for s in self.segments if s.text)


@dataclass(frozen=True)
class CorpusConfig:
    """What goes into one epoch of the corpus.

    Attributes:
        seed: seed for every random choice.
        fewshot_per_relation: few-shot documents per relation per epoch.
        fewshot_pairs: ``subject -> object`` pairs per few-shot document.
        bio_per_subject: bio documents per subject per epoch (0 disables them).
        bio_exclude: relations whose objects bio documents leave out (e.g. the linguistic ones: spelling and
            word forms are no knowledge about an entity, and an unlabelled list holding a word's first and last
            letter is ambiguous).
        tag_per_fact: tag documents per trained fact per epoch (0 disables them).
        template_fraction: fraction of each relation's trained facts that appear in ``fact`` documents (the
            same facts every epoch); the others are taught only by ``bio`` and ``fewshot`` documents, so the
            model can answer them in a template only by reading attributes stored at the subject.
    """

    seed: int = 0
    fewshot_per_relation: int = 60
    fewshot_pairs: int = 4
    bio_per_subject: int = 0
    bio_exclude: tuple[str, ...] = ()
    tag_per_fact: int = 0
    template_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.template_fraction <= 1.0:
            raise ValueError(
                f"template_fraction must be in (0, 1], got {self.template_fraction}: it is the "
                "fraction of each relation's trained facts rendered in templates"
            )


def render(template: str, subject: str, obj: str | None = None) -> tuple[Segment, ...]:
    """Split ``template`` (one ``{}``) around the subject; append the object when given."""
    before, after = template.split("{}")
    segments = [Segment(before.strip(), "context"), Segment(subject, "subject"), Segment(after.strip(), "context")]
    if obj is not None:
        segments.append(Segment(obj, "object"))
    return tuple(s for s in segments if s.text)


def fewshot_segments(pairs: list[tuple[str, str]], query: str | None = None) -> tuple[Segment, ...]:
    """``s1 -> o1 ; s2 -> o2 ; ... ; query ->`` as segments (``query`` optional)."""
    segments: list[Segment] = []
    for i, (s, o) in enumerate(pairs):
        if i:
            segments.append(Segment(FEWSHOT_SEP, "context"))
        segments += [Segment(s, "subject"), Segment(FEWSHOT_ARROW, "context"), Segment(o, "object")]
    if query is not None:
        if pairs:
            segments.append(Segment(FEWSHOT_SEP, "context"))
        segments += [Segment(query, "subject"), Segment(FEWSHOT_ARROW, "context")]
    return tuple(segments)


def relation_words(key: str) -> str:
    """The relation's key as words (``country_capital_city -> country capital city``)."""
    return key.replace("_", " ")


def tag_segments(key: str, subject: str, obj: str | None = None) -> tuple[Segment, ...]:
    """``country capital city : France Paris`` (object optional)."""
    segments = [Segment(relation_words(key) + " :", "context"), Segment(subject, "subject")]
    if obj is not None:
        segments.append(Segment(obj, "object"))
    return tuple(segments)


def templated_facts(trained: Sequence[Sample], config: CorpusConfig, key: str) -> list[Sample]:
    """The trained facts of relation ``key`` that appear in ``fact`` documents: a fixed random
    ``template_fraction`` of them (all by default)."""
    if config.template_fraction >= 1.0:
        return list(trained)
    n = round(config.template_fraction * len(trained))
    return random.Random(f"{config.seed}-templated-{key}").sample(list(trained), n)


def build_corpus(
    split: Split, config: CorpusConfig, epoch: int = 0, kinds: tuple[str, ...] | None = None
) -> list[Document]:
    """One epoch of documents (only those of ``kinds`` if given), shuffled; the same arguments always give the
    same list."""
    unknown = sorted(set(config.bio_exclude) - set(split.relations))
    if unknown:
        raise ValueError(
            f"bio_exclude names relations the split does not have: {unknown}; use keys among {sorted(split.relations)}"
        )
    rng = random.Random(f"{config.seed}-{epoch}")
    docs: list[Document] = []
    for key in sorted(split.relations):
        rs = split.relations[key]
        for sample in templated_facts(rs.trained, config, key):
            for template in rs.train_templates:
                docs.append(Document(render(template, sample.subject, sample.object), "fact", key))
        for sample in rs.trained * config.tag_per_fact:
            docs.append(Document(tag_segments(key, sample.subject, sample.object), "tag", key))
        facts = [(s.subject, s.object) for s in rs.trained]
        if len(facts) >= config.fewshot_pairs:
            for _ in range(config.fewshot_per_relation):
                docs.append(Document(fewshot_segments(rng.sample(facts, config.fewshot_pairs)), "fewshot", key))
    if config.bio_per_subject:
        attributes: dict[str, list[str]] = {}
        for key in sorted(split.relations):
            if key in config.bio_exclude:
                continue
            for sample in split.relations[key].trained:
                attributes.setdefault(sample.subject, []).append(sample.object)
        for subject in sorted(attributes):
            for _ in range(config.bio_per_subject):
                objs = list(attributes[subject])
                rng.shuffle(objs)
                segments = [Segment(subject, "subject")]
                for i, o in enumerate(objs):
                    if i:
                        segments.append(Segment(FEWSHOT_SEP, "context"))
                    segments.append(Segment(o, "object"))
                docs.append(Document(tuple(segments), "bio", ""))
    rng.shuffle(docs)
    return docs if kinds is None else [d for d in docs if d.kind in kinds]
