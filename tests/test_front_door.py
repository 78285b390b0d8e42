"""The front door: Relation.from_facts, find_circuit and FoundCircuit; the choices a default makes, said aloud."""

from __future__ import annotations

import doctest
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from relations import factual_relation

import kc_utils
from kc_utils import (
    DefaultChoiceWarning,
    FoundCircuit,
    PromptError,
    Relation,
    RelationFileError,
    build_circuit_dataset,
    find_circuit,
    find_relation_circuit,
    from_eap_ig_json,
    load_model,
)
from kc_utils.circuits import relation as relation_module
from kc_utils.data import relations as relations_module
from kc_utils.models import ModelLoadError, bos_token_id, tokenize

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [("France", "Paris"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Italy", "Rome")]
TEMPLATE = "the capital of {} is"


# ---------------------------------------------------------------------------------------------- Relation.from_facts
def test_from_facts_takes_pairs_mappings_and_samples_alike():
    rel = Relation.from_facts(PAIRS, TEMPLATE, name="tiny capital")
    assert rel.key == "tiny_capital" and rel.path is None and rel.relation_type == "user"
    assert rel.prompt_templates == (TEMPLATE,) and rel.answers() == [o for _, o in PAIRS]
    assert Relation.from_facts(dict(PAIRS), [TEMPLATE], name="tiny capital") == rel
    assert Relation.from_facts(rel.samples, TEMPLATE, name="tiny capital") == rel
    typed = Relation.from_facts(PAIRS, TEMPLATE, relation_type="factual", domain_name="country", range_name="city")
    assert (typed.relation_type, typed.domain_name, typed.range_name, typed.symmetric) == (
        "factual",
        "country",
        "city",
        False,
    )


@pytest.mark.parametrize(
    ("facts", "templates", "message"),
    [
        ([("France", "Paris"), "Spain"], TEMPLATE, "fact 1 is 'Spain'; give each fact as a \\(subject, object\\) pair"),
        ([("France", "Paris"), ("France", "Lyon")], TEMPLATE, "each subject needs exactly one object"),
        ([("France", " Paris")], TEMPLATE, "leading or trailing whitespace"),
        ([], TEMPLATE, "'samples' is empty"),
        (PAIRS, "the capital of France is", "contains '\\{\\}' 0 times"),
    ],
)
def test_from_facts_names_the_bad_fact_or_template(facts, templates, message):
    with pytest.raises(RelationFileError, match=message):
        Relation.from_facts(facts, templates, name="bad")


def test_docstring_examples_run():
    import kc_utils.find

    assert doctest.testmod(relations_module).failed == 0
    assert doctest.testmod(kc_utils.find).failed == 0


# ---------------------------------------------------------------------------------------------- cheap refusals
class NoModel:
    """Fails the test if find_circuit touches the model before refusing."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the request was refused")

    def __call__(self, *args, **kwargs):
        raise AssertionError("the model was run before the request was refused")


@pytest.mark.parametrize(
    ("facts", "kwargs", "error", "message"),
    [
        ([(c, "Paris") for c, _ in PAIRS], {}, PromptError, "every fact has the answer 'Paris'.*add facts"),
        (PAIRS[:1], {}, PromptError, "1 fact; .*give at least 2"),
        (PAIRS, {"templates": None}, ValueError, "typed facts need a prompt template"),
        (PAIRS, {"method": "acdcc"}, ValueError, "unknown method"),
        (PAIRS, {"ablation": "resample"}, ValueError, "unknown ablation"),
        (PAIRS, {"budget": "lots"}, ValueError, "n_edges='lots'"),
    ],
)
def test_find_circuit_refuses_before_any_model_run(facts, kwargs, error, message):
    kwargs = {"templates": TEMPLATE, **kwargs}
    with pytest.raises(error, match=message):
        find_circuit(NoModel(), facts, **kwargs)


def test_find_circuit_does_not_take_templates_for_a_relation():
    with pytest.raises(ValueError, match="a Relation has its own"):
        find_circuit(NoModel(), Relation.from_facts(PAIRS, TEMPLATE), templates=TEMPLATE)


def test_facts_the_model_does_not_know_are_refused_with_what_to_do(tiny_gpt2):
    with pytest.raises(PromptError, match="only 0 of 5 facts are known.*give facts this model knows"):
        find_circuit(tiny_gpt2, PAIRS, templates=TEMPLATE, top_k=0)


# ---------------------------------------------------------------------------------------------- stated choices
def test_n_val_and_n_test_beyond_the_known_facts_are_cut_with_a_warning(tiny_gpt2):
    rel = Relation.from_facts(PAIRS, TEMPLATE, name="tiny capital")
    with pytest.warns(DefaultChoiceWarning, match="n_val=4 asked.*at most half of them \\(2\\)"):
        data = build_circuit_dataset(tiny_gpt2, rel, 4, 1, top_k=1000)
    assert len(data.val) == 2
    with pytest.warns(DefaultChoiceWarning, match="n_test=9 asked.*Dtest holds 3"):
        data = build_circuit_dataset(tiny_gpt2, rel, 2, 9, top_k=1000)
    assert len(data.test) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = build_circuit_dataset(tiny_gpt2, rel, None, None, top_k=1000)
    assert (len(data.val), len(data.test)) == (2, 3)


LONELY = factual_relation("lonely", TEMPLATE, [*PAIRS, ("New Zealand", "Wellington")])


def test_a_fact_without_a_same_length_twin_is_a_stated_choice(tiny_gpt2):
    mean = build_circuit_dataset(tiny_gpt2, LONELY, None, None, top_k=1000, without_twin="mean")
    assert mean.n_mean_fallback == 1 and mean.dropped_without_twin == []
    with pytest.warns(DefaultChoiceWarning, match="1 of 6 facts have no counterfactual.*without_twin='drop'"):
        find_relation_circuit(tiny_gpt2, mean, n_edges=20, n_random=0, evaluate=False)
    with warnings.catch_warnings():  # other ablations do not use the twins
        warnings.simplefilter("error")
        find_relation_circuit(tiny_gpt2, mean, n_edges=20, ablation="mean", n_random=0, evaluate=False)
    dropped = build_circuit_dataset(tiny_gpt2, LONELY, None, None, top_k=1000, without_twin="drop")
    assert dropped.n_mean_fallback == 0 and dropped.dropped_without_twin == ["New Zealand"]
    assert len(dropped.val) + len(dropped.test) == 5
    with pytest.raises(PromptError, match="1 facts have no counterfactual.*'New Zealand'"):
        build_circuit_dataset(tiny_gpt2, LONELY, None, None, top_k=1000, without_twin="error")
    with pytest.raises(ValueError, match="without_twin='skip'"):
        build_circuit_dataset(tiny_gpt2, LONELY, None, None, without_twin="skip")  # type: ignore[arg-type]


def test_auto_budget_on_a_large_graph_says_it_keeps_a_fixed_count(tiny_gpt2, monkeypatch):
    data = build_circuit_dataset(tiny_gpt2, Relation.from_facts(PAIRS, TEMPLATE), None, None, top_k=1000)
    monkeypatch.setattr(relation_module, "KNEE_MAX_EDGES", 10)
    monkeypatch.setattr(relation_module, "LARGE_GRAPH_BUDGET", 30)
    with pytest.warns(
        DefaultChoiceWarning,
        match="budget 'auto' \\(n_edges=, or find_circuit's budget=\\) keeps a fixed 30 edges.*'knee'",
    ):
        found = find_relation_circuit(tiny_gpt2, data, n_edges="auto", n_random=0, evaluate=False)
    assert found.budget == "30" and found.n_edges <= 30


def test_load_model_prepend_bos_is_an_argument(tmp_path):
    with pytest.raises(ModelLoadError, match="prepend_bos must be True, False or None"):
        load_model("kc-organism", prepend_bos="yes")  # type: ignore[arg-type]
    with_bos = load_model("kc-organism", device="cpu")
    without = load_model("kc-organism", device="cpu", prepend_bos=False)
    assert bos_token_id(with_bos) is not None and bos_token_id(without) is None
    assert len(tokenize(with_bos, ["The capital of France is"])[0]) == 1 + len(
        tokenize(without, ["The capital of France is"])[0]
    )


# ---------------------------------------------------------------------------------------------- the whole path
def test_found_circuit_tables_saves_loads_and_exports(tiny_gpt2, tmp_path):
    found = find_circuit(
        tiny_gpt2, dict(PAIRS), templates=TEMPLATE, name="tiny capital", budget=30, n_random=2, top_k=1000
    )
    assert isinstance(found, FoundCircuit) and 0 < found.n_edges <= 30
    assert repr(found).startswith("FoundCircuit('tiny_capital': ")
    table = found.table()
    assert len(table) == 1 and table.loc[0, "relation"] == "tiny_capital" and table.loc[0, "#edges"] == found.n_edges
    for column in ("Dval hit@10 full", "Dtest hit@10 circuit", "Dtest hit@10 random", "Dtest hit@10 empty"):
        assert column in table.columns
    assert table.loc[0, "Dtest hit@10 circuit"] == found.result.metrics["test"]["circuit"]["hit@10"]

    back = FoundCircuit.load(found.save(tmp_path / "c" / "tiny.kc.json"))
    assert back.relation == found.relation and back.model == found.model
    assert torch.equal(back.graph.in_graph, found.graph.in_graph) and torch.equal(back.graph.scores, found.graph.scores)
    assert torch.equal(back.result.scored.in_graph, found.result.scored.in_graph)
    assert back.result.metrics == found.result.metrics and back.result.knees == found.result.knees
    assert back.dataset == found.dataset
    assert back.table().equals(found.table())

    data = found.to_eap_ig_json(tmp_path / "tiny.eap-ig.json")
    assert sum(e["in_graph"] for e in data["edges"].values()) == found.n_edges  # no key/value groups here
    read = from_eap_ig_json(tmp_path / "tiny.eap-ig.json")
    assert torch.equal(read.in_graph, found.graph.in_graph)
    assert read.provenance["relation"] == "tiny_capital"

    with pytest.raises(kc_utils.CircuitError, match="not a circuit written by FoundCircuit.save"):
        FoundCircuit.load(tmp_path / "tiny.eap-ig.json")


def test_explore_draws_the_widget(tiny_gpt2):
    pytest.importorskip("ipywidgets")
    found = find_circuit(tiny_gpt2, PAIRS, templates=TEMPLATE, budget=20, n_random=0, top_k=1000)
    widget = found.explore()
    slider = widget.children[0].children[1]
    assert slider.value == max(found.n_edges, slider.min)
    # without initial_edges, the explorer starts at a found circuit's size (kc_utils.circuit_explorer: lazy import)
    plain = kc_utils.circuit_explorer({"tiny": found.graph}).children[0].children[1]
    assert plain.value == slider.value


def test_every_exported_function_has_parameters_returns_and_an_example():
    for name in ("find_circuit", "to_eap_ig_json", "from_eap_ig_json", "find_relation_circuit"):
        doc = getattr(kc_utils, name).__doc__
        assert all(section in doc for section in ("Parameters", "Returns", "Examples")), name
    doc = kc_utils.Relation.from_facts.__doc__
    assert all(section in doc for section in ("Parameters", "Returns", "Examples"))


def test_the_worked_example_runs_on_the_organism(tmp_path):
    """docs/your-model.md's example, as the docs show it."""
    spec = importlib.util.spec_from_file_location("your_facts", ROOT / "docs" / "examples" / "your_facts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main("kc-organism", tmp_path)
    found, table = out["found"], out["table"]
    assert found.relation.key == "capital" and len(found.relation) == 20
    assert found.dataset.n_known >= 10  # the organism was taught these capitals
    assert table.loc[0, "Dtest hit@10 circuit"] >= 0.5 and found.faithfulness["test"] > 0.5
    assert FoundCircuit.load(tmp_path / "capital.kc.json").n_edges == found.n_edges
    assert from_eap_ig_json(tmp_path / "capital.eap-ig.json").n_edges_in_graph == found.n_edges
    page = (ROOT / "docs" / "your-model.md").read_text()
    assert "docs/examples/your_facts.py" in page
