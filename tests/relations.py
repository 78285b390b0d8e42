"""Hand-made relations for the tests: one factual relation built from (subject, object) pairs."""

from __future__ import annotations

from collections.abc import Sequence

from kc_utils.data.relations import Relation, Sample


def factual_relation(
    name: str,
    templates: str | Sequence[str],
    pairs: Sequence[tuple[str, str]],
    domain: str = "x",
    range_name: str = "y",
) -> Relation:
    """A factual, non-symmetric relation with ``templates`` (one string or several), no zero-shot templates and one
    sample per ``(subject, object)`` pair, in order."""
    return Relation(
        name=name,
        prompt_templates=(templates,) if isinstance(templates, str) else tuple(templates),
        prompt_templates_zs=(),
        relation_type="factual",
        domain_name=domain,
        range_name=range_name,
        symmetric=False,
        samples=tuple(Sample(s, o) for s, o in pairs),
    )
