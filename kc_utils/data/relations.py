"""Relation data: load and validate LRE-schema relation files.

The relation files follow the schema of Hernandez et al., "Linearity of Relation Decoding in Transformer
Language Models" (LRE), which the Knowledge Circuits paper (Yao et al. 2024) uses unchanged::

    {"name": "country capital city",
     "prompt_templates":    ["The capital city of {} is", ...],
     "prompt_templates_zs": ["The capital of {} is the city of", ...],
     "properties": {"relation_type": "factual", "domain_name": "country",
                    "range_name": "city", "symmetric": false},
     "samples": [{"subject": "France", "object": "Paris"}, ...]}

The package ships one file per relation under ``kc_utils/resources/relations/<relation_type>/<key>.json``
(:data:`RELATIONS_DIR`). Any other file in the same schema, e.g. an original LRE file, can be loaded by path;
unknown extra keys are ignored.

Validation is strict and never fixes anything silently: a malformed file raises :class:`RelationFileError`
naming the file, the sample (index and subject) where relevant, what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RELATIONS_DIR",
    "Relation",
    "RelationFileError",
    "Sample",
    "list_relations",
    "load_relation",
    "load_relations",
]

RELATIONS_DIR: Path = Path(__file__).resolve().parent.parent / "resources" / "relations"
"""Folder of the shipped relation files, one sub-folder per relation type."""

_ESCAPED_UNICODE = re.compile(r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})")


class RelationFileError(ValueError):
    """A relation file (or relation name) that cannot be loaded: missing, not JSON, or not in the LRE schema."""


@dataclass(frozen=True)
class Sample:
    """One fact of a relation: ``subject`` relates to ``object`` (e.g. France -> Paris)."""

    subject: str
    object: str


@dataclass(frozen=True)
class Relation:
    """A validated relation: its prompt templates, properties and samples.

    Attributes:
        name: the relation's name as written in the file, e.g. ``"country capital city"``.
        prompt_templates: templates with exactly one ``{}`` for the subject; the answer follows after a space.
        prompt_templates_zs: zero-shot templates (empty when the file has none).
        relation_type: ``"factual"``, ``"commonsense"``, ``"linguistic"`` or ``"bias"``.
        domain_name: what the subjects are, e.g. ``"country"``.
        range_name: what the objects are, e.g. ``"city"``.
        symmetric: whether the relation is symmetric (e.g. antonyms).
        samples: the facts, in file order.
        path: the file the relation was read from, or ``None`` when built in memory.
    """

    name: str
    prompt_templates: tuple[str, ...]
    prompt_templates_zs: tuple[str, ...]
    relation_type: str
    domain_name: str
    range_name: str
    symmetric: bool
    samples: tuple[Sample, ...]
    path: Path | None = None

    @property
    def key(self) -> str:
        """The name with spaces replaced by underscores, e.g. ``"country_capital_city"``."""
        return self.name.replace(" ", "_")

    def prompts(self, template_index: int = 0) -> list[str]:
        """Each sample's subject written into ``prompt_templates[template_index]``, in sample order."""
        template = self.prompt_templates[template_index]
        return [template.replace("{}", s.subject) for s in self.samples]

    def answers(self) -> list[str]:
        """Each sample's object, in sample order (aligned with :meth:`prompts`)."""
        return [s.object for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def from_facts(
        cls,
        facts: Mapping[str, str] | Iterable[tuple[str, str] | Sample],
        templates: str | Sequence[str],
        name: str = "my facts",
        *,
        relation_type: str = "user",
        domain_name: str = "subject",
        range_name: str = "object",
        symmetric: bool = False,
    ) -> Relation:
        """A relation from facts in memory, validated like a relation file.

        Parameters
        ----------
        facts
            ``(subject, object)`` pairs, :class:`Sample` objects, or a ``{subject: object}`` mapping, in the
            order they should keep. Each subject once; no leading or trailing whitespace.
        templates
            One prompt template or several, each with exactly one ``{}`` where the subject goes; the answer
            follows after a space (``"The capital of {} is"``). Circuit finding uses the first.
        name
            The relation's name; its key (:attr:`key`) names saved files and table rows.
        relation_type, domain_name, range_name, symmetric
            The LRE file's ``properties``; only labels here (the Table-1 ``type`` column and nothing else).

        Returns
        -------
        Relation
            With :attr:`path` ``None``.

        Raises
        ------
        RelationFileError
            A fact that is not a pair of non-empty strings, a subject given twice, a template without exactly
            one ``{}``, or no facts — the message names the fact or template and the fix.

        Examples
        --------
        >>> rel = Relation.from_facts([("France", "Paris"), ("Japan", "Tokyo")], "The capital of {} is",
        ...                           name="capital")
        >>> rel.key, len(rel), rel.prompts()[1]
        ('capital', 2, 'The capital of Japan is')
        """
        label = f"Relation.from_facts(name={name!r})"
        if isinstance(templates, str):
            templates = [templates]
        pairs = list(facts.items()) if isinstance(facts, Mapping) else list(facts)
        samples = []
        for i, fact in enumerate(pairs):
            if isinstance(fact, Sample):
                fact = (fact.subject, fact.object)
            if isinstance(fact, (str, bytes)) or not isinstance(fact, (tuple, list)) or len(fact) != 2:
                raise RelationFileError(
                    f"{label}: fact {i} is {fact!r}; give each fact as a (subject, object) pair, "
                    "e.g. ('France', 'Paris')."
                )
            samples.append({"subject": fact[0], "object": fact[1]})
        data = {
            "name": name,
            "prompt_templates": list(templates),
            "properties": {
                "relation_type": relation_type,
                "domain_name": domain_name,
                "range_name": range_name,
                "symmetric": symmetric,
            },
            "samples": samples,
        }
        return _parse(label, data)


# --------------------------------------------------------------------------------------------------------------
# Finding files


def _shipped_files() -> dict[str, Path]:
    """Map every shipped relation key to its file."""
    files: dict[str, Path] = {}
    for path in sorted(RELATIONS_DIR.glob("*/*.json")):
        if path.stem in files:
            raise RelationFileError(
                f"{path}: relation key {path.stem!r} is shipped twice (also {files[path.stem]}); "
                "keys must be unique across relation types, rename one of the files."
            )
        files[path.stem] = path
    return files


def _relation_types() -> list[str]:
    return sorted(p.name for p in RELATIONS_DIR.iterdir() if p.is_dir()) if RELATIONS_DIR.is_dir() else []


def list_relations(relation_type: str | None = None) -> list[str]:
    """Sorted keys of the shipped relations, optionally only those of one relation type.

    Raises:
        ValueError: ``relation_type`` is not one of the shipped types.
    """
    if relation_type is None:
        return sorted(_shipped_files())
    types = _relation_types()
    if relation_type not in types:
        raise ValueError(f"Unknown relation type {relation_type!r}; the shipped types are {types}.")
    return sorted(p.stem for p in (RELATIONS_DIR / relation_type).glob("*.json"))


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, Path):
        return name_or_path
    if name_or_path.endswith(".json") or "/" in name_or_path or "\\" in name_or_path:
        return Path(name_or_path)
    files = _shipped_files()
    key = name_or_path.strip().replace(" ", "_")
    if key not in files:
        raise RelationFileError(
            f"Unknown relation {name_or_path!r}. Pass a path to an LRE-schema .json file, "
            f"or one of the shipped relations: {', '.join(sorted(files))}."
        )
    return files[key]


# --------------------------------------------------------------------------------------------------------------
# Validation


def _check_escapes(path: Path | str, where: str, value: str) -> None:
    """Reject literally escaped unicode (the 6 characters ``\\u00ed``) left in a decoded string."""
    match = _ESCAPED_UNICODE.search(value)
    if match is None:
        return
    decoded = _ESCAPED_UNICODE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), value)
    raise RelationFileError(
        f"{path}: {where} is {value!r}, which contains the literal escape sequence {match.group(0)!r} "
        f'(the file was escaped twice, e.g. "Bras\\\\u00edlia" in the JSON). Decode the file so the value '
        f"reads {decoded!r}, e.g. write it with json.dump(..., ensure_ascii=False) after decoding."
    )


def _require(path: Path | str, data: dict[str, Any], key: str, kind: type, what: str, where: str = "") -> Any:
    if key not in data:
        raise RelationFileError(f"{path}: missing required key {where}{key!r} ({what}); add it.")
    value = data[key]
    # bool is a subclass of int, and 0/1 are not booleans: check bool exactly.
    if not (type(value) is bool if kind is bool else isinstance(value, kind)):
        raise RelationFileError(f"{path}: key {where}{key!r} must be {what}, got {type(value).__name__} {value!r}.")
    return value


def _templates(path: Path | str, data: dict[str, Any], key: str, required: bool) -> tuple[str, ...]:
    if key not in data and not required:
        return ()
    templates = _require(path, data, key, list, "a list of strings, each with exactly one '{}'")
    if required and not templates:
        raise RelationFileError(f"{path}: {key!r} is empty; give at least one template with one '{{}}'.")
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise RelationFileError(f"{path}: {key}[{i}] must be a string, got {type(template).__name__} {template!r}.")
        count = template.count("{}")
        if count != 1:
            raise RelationFileError(
                f"{path}: {key}[{i}] = {template!r} contains '{{}}' {count} times; each template needs "
                "exactly one '{}' where the subject goes."
            )
        _check_escapes(path, f"{key}[{i}]", template)
    return tuple(templates)


def _samples(path: Path | str, data: dict[str, Any]) -> tuple[Sample, ...]:
    raw = _require(path, data, "samples", list, 'a list of {"subject": ..., "object": ...} objects')
    if not raw:
        raise RelationFileError(f"{path}: 'samples' is empty; a relation needs at least one sample.")
    samples: list[Sample] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RelationFileError(f"{path}: sample {i} must be an object with 'subject' and 'object', got {item!r}.")
        label = f"sample {i}" + (f" (subject {item['subject']!r})" if isinstance(item.get("subject"), str) else "")
        for field in ("subject", "object"):
            if field not in item:
                raise RelationFileError(f"{path}: {label} has no {field!r}; add it or remove the sample.")
            value = item[field]
            if not isinstance(value, str) or not value.strip():
                raise RelationFileError(f"{path}: {label} has {field} {value!r}; it must be a non-empty string.")
            if value != value.strip():
                raise RelationFileError(
                    f"{path}: {label} has {field} {value!r} with leading or trailing whitespace; "
                    f"write it as {value.strip()!r} (templates supply the spaces)."
                )
            _check_escapes(path, f"{label} {field}", value)
        sample = Sample(subject=item["subject"], object=item["object"])
        if sample.subject in first_index:
            j = first_index[sample.subject]
            other = samples[j]
            if other.object == sample.object:
                raise RelationFileError(
                    f"{path}: {label} repeats sample {j} exactly ({sample.subject!r} -> {sample.object!r}); "
                    "remove the duplicate."
                )
            raise RelationFileError(
                f"{path}: {label} gives object {sample.object!r}, but sample {j} gives {other.object!r} for the "
                "same subject; each subject needs exactly one object, keep one of them."
            )
        first_index[sample.subject] = i
        samples.append(sample)
    return tuple(samples)


def _parse(path: Path | str, data: Any) -> Relation:
    if not isinstance(data, dict):
        raise RelationFileError(f"{path}: the top level must be a JSON object, got {type(data).__name__}.")
    name = _require(path, data, "name", str, 'a non-empty string, e.g. "country capital city"')
    if not name.strip():
        raise RelationFileError(f"{path}: 'name' is empty; give the relation a name.")
    _check_escapes(path, "'name'", name)
    props = _require(
        path, data, "properties", dict, "an object with relation_type, domain_name, range_name and symmetric"
    )
    strings = {}
    for key in ("relation_type", "domain_name", "range_name"):
        strings[key] = _require(path, props, key, str, "a string", where="properties.")
    symmetric = _require(path, props, "symmetric", bool, "true or false", where="properties.")
    return Relation(
        name=name,
        prompt_templates=_templates(path, data, "prompt_templates", required=True),
        prompt_templates_zs=_templates(path, data, "prompt_templates_zs", required=False),
        relation_type=strings["relation_type"],
        domain_name=strings["domain_name"],
        range_name=strings["range_name"],
        symmetric=symmetric,
        samples=_samples(path, data),
        path=path if isinstance(path, Path) else None,
    )


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_relation(name_or_path: str | Path) -> Relation:
    """Load and validate one relation.

    Args:
        name_or_path: a shipped key (``"country_capital_city"``; spaces are accepted for underscores), or a
            path (``Path``, or a string ending in ``.json`` or containing a slash) to any LRE-schema file.

    Raises:
        RelationFileError: unknown name, missing file, invalid JSON or a file that breaks the schema.
    """
    path = _resolve(name_or_path)
    if not path.is_file():
        raise RelationFileError(f"{path}: no such file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RelationFileError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RelationFileError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}.") from err
    return _parse(path, data)


def load_relations(names: Iterable[str] | None = None, relation_type: str | None = None) -> dict[str, Relation]:
    """Load several relations, keyed by :attr:`Relation.key`.

    Args:
        names: shipped keys or paths; ``None`` loads every shipped relation (of ``relation_type`` if given).
        relation_type: keep only relations of this type; with ``names``, every named relation must have it.

    Raises:
        RelationFileError: as :func:`load_relation`, or two of the names load relations with the same key.
        ValueError: a named relation is not of ``relation_type``, or the type is unknown.
    """
    if names is None:
        names = list_relations(relation_type)
    relations: dict[str, Relation] = {}
    for name in names:
        relation = load_relation(name)
        if relation_type is not None and relation.relation_type != relation_type:
            raise ValueError(f"Relation {name!r} has relation_type {relation.relation_type!r}, not {relation_type!r}.")
        if relation.key in relations:
            raise RelationFileError(
                f"{relation.path}: relation key {relation.key!r} was already loaded from "
                f"{relations[relation.key].path}; load only one of them."
            )
        relations[relation.key] = relation
    return relations
