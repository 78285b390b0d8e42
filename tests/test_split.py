"""The facts and templates a model is asked with (kc_utils.data.split)."""

from __future__ import annotations

import pytest

from kc_utils.data.relations import list_relations, load_relation
from kc_utils.data.split import relation_split, single_template_relations
from kc_utils.organism.split import RelationSplit, Split, load_split


def test_a_pretrained_model_gets_every_fact_and_the_last_template_as_unseen() -> None:
    split = relation_split("smollm2-135m", ["country_language", "adj_antonym"])
    assert sorted(split.relations) == ["adj_antonym", "country_language"]
    for key, rs in split.relations.items():
        rel = load_relation(key)
        assert rs.trained == rel.samples and rs.held_out == ()
        if len(rel.prompt_templates) > 1:
            assert rs.train_templates + rs.unseen_templates == rel.prompt_templates
            assert len(rs.unseen_templates) == 1


def test_the_organism_gets_its_own_split() -> None:
    assert relation_split("kc-organism", []) == load_split()


def test_single_template_relations_are_named_with_a_reason() -> None:
    split = relation_split("any-model", list_relations())
    singles = single_template_relations(split)
    expected = {k for k in list_relations() if len(load_relation(k).prompt_templates) == 1}
    assert set(singles) == expected
    for key, reason in singles.items():
        assert key in reason and "single prompt template" in reason
    one = RelationSplit("one", (), (), (), ("T {}",), ())
    assert single_template_relations(Split(seed=0, relations={"one": one, **split.relations})) == {
        **singles,
        "one": "one has a single prompt template ('T {}'), and the analysis asks in one and repairs from another",
    }


def test_an_unknown_relation_is_refused() -> None:
    with pytest.raises((KeyError, FileNotFoundError, ValueError)):
        relation_split("any-model", ["no_such_relation"])
