"""Which facts the organism is taught, and which it never sees.

The split is made once per seed from the relation files and saved next to the weights
(``organism_split.json``), so every notebook can ask which facts the shipped model was taught.

Held out, per relation:

* **subjects** (~10%): every fact of a held-out subject, in every relation, is left out of the corpus, and the
  subject string never appears anywhere in it. These are the *unknown facts* of the hallucination study.
  Only subjects whose answers cannot leak through their names are eligible (no object word shares its first
  four letters with a subject word, e.g. ``Germany -> German`` is never held out).
* **a template**: the last of each relation's ``prompt_templates`` is never used in training (the zero-shot
  templates ``prompt_templates_zs`` are never used either), to test generalisation to an unseen query.

Facts whose *object* is a held-out subject (``Machu Picchu -> Peru`` when ``Peru`` is held out) are neither
trained nor held out: they are listed as ``excluded``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from kc_utils.data.relations import Relation, Sample

__all__ = ["SPLIT_FILE", "RelationSplit", "Split", "make_split", "load_split", "save_split"]

SPLIT_FILE = "organism_split.json"
"""Name of the split file saved in a checkpoint folder."""

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RelationSplit:
    """The split of one relation.

    Attributes:
        key: relation key, e.g. ``"country_capital_city"``.
        trained: facts rendered into the training corpus.
        held_out: facts of held-out subjects (never seen in any form).
        excluded: facts left out because their object is a held-out subject.
        train_templates: the ``prompt_templates`` used in training.
        unseen_templates: the ``prompt_templates`` never used in training.
    """

    key: str
    trained: tuple[Sample, ...]
    held_out: tuple[Sample, ...]
    excluded: tuple[Sample, ...]
    train_templates: tuple[str, ...]
    unseen_templates: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """The whole split: one :class:`RelationSplit` per relation, and the held-out subject strings."""

    seed: int
    relations: dict[str, RelationSplit]
    held_out_subjects: frozenset[str] = field(default_factory=frozenset)

    def trained_facts(self) -> list[tuple[str, Sample]]:
        """Every trained fact as ``(relation key, sample)``, relations in sorted order."""
        return [(k, s) for k in sorted(self.relations) for s in self.relations[k].trained]

    def held_out_facts(self) -> list[tuple[str, Sample]]:
        """Every held-out fact as ``(relation key, sample)``, relations in sorted order."""
        return [(k, s) for k in sorted(self.relations) for s in self.relations[k].held_out]


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _leaks(sample: Sample) -> bool:
    """True when an object word shares its first four letters with a subject word (or contains it)."""
    subject_words = _words(sample.subject)
    for ow in _words(sample.object):
        for sw in subject_words:
            if ow == sw or (len(ow) >= 4 and len(sw) >= 4 and ow[:4] == sw[:4]):
                return True
    return False


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def make_split(
    relations: dict[str, Relation], seed: int = 0, held_out_fraction: float = 0.1, max_object_uses: int = 3
) -> Split:
    """Choose the held-out subjects and templates, deterministically from ``seed``.

    Relations are visited in sorted order; each gets held-out subjects until at least ``held_out_fraction`` of
    its facts belong to held-out subjects (subjects held out for an earlier relation count). A candidate must
    not leak its answer in any relation, must not occur inside another subject or object (``Georgia`` in
    ``South Georgia``), a template or a relation's name, and may be the object of at most ``max_object_uses``
    facts elsewhere (so holding it out does not exclude many facts).

    Args:
        relations: relations keyed by :attr:`Relation.key`.
        seed: seed of the random choice.
        held_out_fraction: target fraction of held-out facts per relation.
        max_object_uses: how often a held-out subject may appear as an object.
    """
    rng = random.Random(seed)
    facts_of: dict[str, list[Sample]] = {}
    object_uses: dict[str, int] = {}
    for rel in relations.values():
        for s in rel.samples:
            facts_of.setdefault(s.subject, []).append(s)
            object_uses[s.object] = object_uses.get(s.object, 0) + 1
    # word sequences of every string a trained document could contain
    texts = [t for rel in relations.values() for s in rel.samples for t in (s.subject, s.object)]
    texts += [t for key, rel in relations.items() for t in (key.replace("_", " "), *rel.prompt_templates)]
    strings = {tuple(w.lower() for w in _WORD.findall(t)) for t in texts}

    def hidden_elsewhere(subject: str) -> bool:
        """True when the subject occurs inside another name or a template (Georgia in South Georgia)."""
        needle = tuple(w.lower() for w in _WORD.findall(subject))
        return any(h != needle and _contains(h, needle) for h in strings)

    held: set[str] = set()
    for key in sorted(relations):
        rel = relations[key]
        target = max(1, round(held_out_fraction * len(rel.samples)))
        candidates = sorted({s.subject for s in rel.samples})
        rng.shuffle(candidates)
        for subject in candidates:
            if sum(s.subject in held for s in rel.samples) >= target:
                break
            if subject in held or object_uses.get(subject, 0) > max_object_uses:
                continue
            if any(_leaks(s) for s in facts_of[subject]) or hidden_elsewhere(subject):
                continue
            held.add(subject)
    splits: dict[str, RelationSplit] = {}
    for key in sorted(relations):
        rel = relations[key]
        trained, held_out, excluded = [], [], []
        for s in rel.samples:
            if s.subject in held:
                held_out.append(s)
            elif s.object in held:
                excluded.append(s)
            else:
                trained.append(s)
        templates = rel.prompt_templates
        n_train = max(1, len(templates) - 1)
        splits[key] = RelationSplit(
            key=key,
            trained=tuple(trained),
            held_out=tuple(held_out),
            excluded=tuple(excluded),
            train_templates=tuple(templates[:n_train]),
            unseen_templates=tuple(templates[n_train:]),
        )
    return Split(seed=seed, relations=splits, held_out_subjects=frozenset(held))


def save_split(split: Split, directory: str | Path) -> Path:
    """Write ``split`` to ``directory/organism_split.json`` and return the path."""
    path = Path(directory) / SPLIT_FILE
    data = {
        "seed": split.seed,
        "held_out_subjects": sorted(split.held_out_subjects),
        "relations": {
            key: {
                "trained": [[s.subject, s.object] for s in rs.trained],
                "held_out": [[s.subject, s.object] for s in rs.held_out],
                "excluded": [[s.subject, s.object] for s in rs.excluded],
                "train_templates": list(rs.train_templates),
                "unseen_templates": list(rs.unseen_templates),
            }
            for key, rs in sorted(split.relations.items())
        },
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_split(directory: str | Path | None = None) -> Split:
    """Read the split saved with a checkpoint (default: the shipped weights, :data:`WEIGHTS_DIR`)."""
    if directory is None:
        from kc_utils.organism.paths import WEIGHTS_DIR

        directory = WEIGHTS_DIR
    data = json.loads((Path(directory) / SPLIT_FILE).read_text(encoding="utf-8"))

    def samples(rows: list[list[str]]) -> tuple[Sample, ...]:
        return tuple(Sample(subject=a, object=b) for a, b in rows)

    relations = {
        key: RelationSplit(
            key=key,
            trained=samples(r["trained"]),
            held_out=samples(r["held_out"]),
            excluded=samples(r["excluded"]),
            train_templates=tuple(r["train_templates"]),
            unseen_templates=tuple(r["unseen_templates"]),
        )
        for key, r in data["relations"].items()
    }
    return Split(seed=data["seed"], relations=relations, held_out_subjects=frozenset(data["held_out_subjects"]))
