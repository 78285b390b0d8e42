"""Tests for kc_utils.data.relations: the shipped relation files and the loader's validation."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kc_utils.data.relations import (
    RELATIONS_DIR,
    Relation,
    RelationFileError,
    Sample,
    list_relations,
    load_relation,
    load_relations,
)

EXPECTED = {
    "linguistic": {"adj_antonym", "word_first_letter", "word_last_letter", "adj_comparative"},
    "commonsense": {"object_superclass", "fruit_inside_color", "work_location", "substance_phase", "word_sentiment"},
    "factual": {
        "country_capital_city",
        "landmark_in_country",
        "country_language",
        "person_native_language",
        "country_currency",
        "person_occupation",
        "company_hq",
        "product_by_company",
    },
    "bias": {"name_religion", "occupation_age", "occupation_gender", "name_birthplace"},
}


@pytest.fixture(scope="module")
def relations() -> dict[str, Relation]:
    return load_relations()


def subjects(relation: Relation) -> set[str]:
    return {s.subject for s in relation.samples}


# ----------------------------------------------------------------------------------------------------------------
# Shipped files


def test_list_relations_matches_the_shipped_set() -> None:
    assert list_relations() == sorted(set().union(*EXPECTED.values()))
    for relation_type, keys in EXPECTED.items():
        assert list_relations(relation_type) == sorted(keys)
    with pytest.raises(ValueError, match="factual"):
        list_relations("factuall")


def test_relations_dir_does_not_depend_on_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert RELATIONS_DIR.is_absolute()
    assert load_relation("country_capital_city").path == RELATIONS_DIR / "factual" / "country_capital_city.json"


@pytest.mark.parametrize("key", sorted(set().union(*EXPECTED.values())))
def test_shipped_relation_is_well_formed(relations: dict[str, Relation], key: str) -> None:
    relation = relations[key]
    assert relation.key == key
    assert relation.path is not None and relation.path.parent.name == relation.relation_type
    assert key in EXPECTED[relation.relation_type]
    assert 30 <= len(relation.samples) <= 300
    assert len(relation.prompt_templates) >= 4
    assert len(relation.prompt_templates_zs) >= 2
    for template in relation.prompt_templates + relation.prompt_templates_zs:
        assert template == template.strip(), f"{key}: template {template!r} has surrounding whitespace"
    for sample in relation.samples:
        subject_words = re.split(r"[\s\-]+", sample.subject.lower())
        assert sample.object.lower() not in subject_words, f"{key}: {sample} leaks its object"
    # The file is plain UTF-8 with readable non-ASCII characters, not \\u escapes.
    assert "\\u" not in relation.path.read_text(encoding="utf-8")


def test_letter_relations_answer_one_lowercase_letter(relations: dict[str, Relation]) -> None:
    for key, index in (("word_first_letter", 0), ("word_last_letter", -1)):
        for sample in relations[key].samples:
            assert sample.object == sample.subject[index] and re.fullmatch("[a-z]", sample.object)


def test_closed_vocabulary_objects(relations: dict[str, Relation]) -> None:
    assert {s.object for s in relations["substance_phase"].samples} == {"solid", "liquid", "gas"}
    assert {s.object for s in relations["word_sentiment"].samples} == {"positive", "negative"}
    assert {s.object for s in relations["occupation_gender"].samples} == {"man", "woman"}
    assert {s.object for s in relations["occupation_age"].samples} == {"young", "middle-aged", "old"}


def test_country_relations_share_subjects(relations: dict[str, Relation]) -> None:
    countries = subjects(relations["country_capital_city"])
    for key in ("country_language", "country_currency"):
        others = subjects(relations[key])
        assert others <= countries, f"{key} has countries without a capital: {others - countries}"
        assert len(others) >= 0.8 * len(countries)
    assert {s.object for s in relations["landmark_in_country"].samples} <= countries
    assert {s.object for s in relations["name_birthplace"].samples} <= countries


def test_company_and_person_relations_overlap(relations: dict[str, Relation]) -> None:
    makers = {s.object for s in relations["product_by_company"].samples}
    assert len(makers & subjects(relations["company_hq"])) >= 0.8 * len(makers)
    people = subjects(relations["person_native_language"]) & subjects(relations["person_occupation"])
    assert len(people) >= 100


def test_paper_cases_are_present(relations: dict[str, Relation]) -> None:
    def answer(key: str, subject: str) -> str:
        return next(s.object for s in relations[key].samples if s.subject == subject)

    assert answer("country_currency", "Malaysia") == "Ringgit"  # the hallucination case
    assert answer("country_language", "France") == "French"
    assert answer("country_capital_city", "Brazil") == "Brasília"
    assert answer("landmark_in_country", "Eiffel Tower") == "France"


def test_relation_api(relations: dict[str, Relation]) -> None:
    relation = relations["country_capital_city"]
    assert relation.name == "country capital city"
    assert relation.samples[0] == Sample(subject="France", object="Paris")
    assert relation.prompts()[0] == "The capital city of France is"
    assert relation.prompts(1)[0] == "The capital of France is"
    assert relation.answers()[0] == "Paris"
    assert len(relation.prompts(2)) == len(relation.answers()) == len(relation.samples)


def test_load_by_key_with_spaces_and_by_path() -> None:
    by_key = load_relation("country capital city")
    by_path = load_relation(RELATIONS_DIR / "factual" / "country_capital_city.json")
    by_str_path = load_relation(str(by_path.path))
    assert by_key == by_path == by_str_path


def test_load_relations_filters_by_type() -> None:
    assert set(load_relations(relation_type="bias")) == EXPECTED["bias"]
    assert list(load_relations(["adj_antonym", "company_hq"])) == ["adj_antonym", "company_hq"]
    with pytest.raises(ValueError, match="relation_type"):
        load_relations(["adj_antonym"], relation_type="factual")


def test_unknown_name_lists_the_available_relations() -> None:
    with pytest.raises(RelationFileError, match="country_capital_city") as info:
        load_relation("country_capitol")
    assert "country_capitol" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# Third-party files and malformed files

VALID: dict[str, Any] = {
    "name": "toy capital",
    "prompt_templates": ["The capital of {} is", "{}'s capital is"],
    "prompt_templates_zs": ["The capital of {} is the city of"],
    "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city", "symmetric": False},
    "samples": [{"subject": "France", "object": "Paris"}, {"subject": "Brazil", "object": "Brasília"}],
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "toy_capital.json"
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return path


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


def test_third_party_file_with_extra_keys_and_no_zero_shot_templates(tmp_path: Path) -> None:
    data = variant(prompt_templates_zs=None, notes="from the LRE release")
    data["properties"]["fn_type"] = "ONE_TO_ONE"
    relation = load_relation(write(tmp_path, data))
    assert relation.prompt_templates_zs == ()
    assert relation.key == "toy_capital"
    assert relation.answers() == ["Paris", "Brasília"]


def expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(RelationFileError) as info:
        load_relation(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.json", "no such file")


def test_invalid_json(tmp_path: Path) -> None:
    expect_error(write(tmp_path, '{"name": "toy capital",'), "not valid JSON", "line 1")


def test_top_level_not_an_object(tmp_path: Path) -> None:
    expect_error(write(tmp_path, [VALID]), "top level must be a JSON object")


@pytest.mark.parametrize("key", ["name", "prompt_templates", "samples", "properties"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    expect_error(write(tmp_path, variant(**{key: None})), f"missing required key '{key}'")


@pytest.mark.parametrize("key", ["relation_type", "domain_name", "range_name", "symmetric"])
def test_missing_property(tmp_path: Path, key: str) -> None:
    data = variant()
    del data["properties"][key]
    expect_error(write(tmp_path, data), f"properties.'{key}'")


def test_wrongly_typed_keys(tmp_path: Path) -> None:
    data = variant()
    data["properties"]["symmetric"] = "false"
    expect_error(write(tmp_path, data), "'symmetric'", "true or false")
    expect_error(write(tmp_path, variant(name=3)), "'name'", "int")
    expect_error(write(tmp_path, variant(samples={"France": "Paris"})), "'samples'", "dict")
    expect_error(write(tmp_path, variant(prompt_templates="The capital of {} is")), "'prompt_templates'")


@pytest.mark.parametrize("template", ["The capital of France is", "{} and {} share the capital"])
def test_template_without_exactly_one_slot(tmp_path: Path, template: str) -> None:
    data = variant(prompt_templates=["The capital of {} is", template])
    expect_error(write(tmp_path, data), "prompt_templates[1]", "exactly one '{}'")


def test_empty_samples(tmp_path: Path) -> None:
    expect_error(write(tmp_path, variant(samples=[])), "'samples' is empty")


def test_sample_missing_object(tmp_path: Path) -> None:
    data = variant(samples=[{"subject": "France", "object": "Paris"}, {"subject": "Peru"}])
    expect_error(write(tmp_path, data), "sample 1", "'Peru'", "no 'object'")


@pytest.mark.parametrize("value", ["", 7, None])
def test_sample_with_empty_or_non_string_value(tmp_path: Path, value: Any) -> None:
    data = variant(samples=[{"subject": "France", "object": "Paris"}, {"subject": "Peru", "object": value}])
    expect_error(write(tmp_path, data), "sample 1", "non-empty string")


def test_sample_with_surrounding_whitespace(tmp_path: Path) -> None:
    data = variant(samples=[{"subject": " France", "object": "Paris"}])
    expect_error(write(tmp_path, data), "sample 0", "leading or trailing whitespace", "'France'")


def test_subject_with_two_objects(tmp_path: Path) -> None:
    samples = [{"subject": "France", "object": "Paris"}, {"subject": "France", "object": "Lyon"}]
    expect_error(write(tmp_path, variant(samples=samples)), "sample 1", "'Lyon'", "sample 0", "'Paris'")


def test_exact_duplicate_pair(tmp_path: Path) -> None:
    samples = [{"subject": "France", "object": "Paris"}, {"subject": "France", "object": "Paris"}]
    expect_error(write(tmp_path, variant(samples=samples)), "sample 1 (subject 'France') repeats sample 0")


def test_double_escaped_unicode(tmp_path: Path) -> None:
    # The JSON text holds "Bras\\u00edlia", so the decoded string holds the six characters \u00ed.
    path = write(tmp_path, variant(samples=[{"subject": "Brazil", "object": "Bras\\u00edlia"}]))
    assert "Bras\\\\u00edlia" in path.read_text(encoding="utf-8")
    expect_error(path, "sample 0 (subject 'Brazil')", "\\u00ed", "Decode the file", "Brasília")
