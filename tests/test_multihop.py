"""Two-hop data, circuit overlaps, the bridge lens and bridge patching (notebook 07)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from relations import factual_relation

from kc_utils.analysis.multihop import (
    bridge_lens,
    bridge_lens_summary,
    bridge_patching,
    bridge_patching_by_size,
    bridge_patching_summary,
    check_patch_sizes,
    component_names,
    mover_containment,
    patching_sizes,
    random_component_sets,
    restore_components,
    strongest_components,
)
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.overlap import (
    circuit_nodes,
    overlap_scores,
    overlap_table,
    paired_overlaps,
    random_overlaps,
    set_overlap,
    summarise_overlaps,
)
from kc_utils.data.facts import facts_to_batch
from kc_utils.data.multihop import (
    build_two_hop_dataset,
    compose_facts,
    find_compositions,
    hop_dataset,
)
from kc_utils.data.prompts import PromptError, make_batch
from kc_utils.data.relations import Relation, Sample
from kc_utils.models import continuation_first_token, run_with_hooks, tokenize
from kc_utils.shape import ModelShape

# ----------------------------------------------------------------------------- relations in the tiny vocabulary
LANDMARKS = [
    ("Eiffel Tower", "France"),
    ("Great Wall", "Japan"),
    ("Bank Tower", "Peru"),
    ("River Tower", "Italy"),
    ("Great Tower", "Spain"),
    ("Wall Tower", "Kenya"),
    ("Great Bank", "France"),
    ("Eiffel Wall", "Chile"),
    ("Tower", "Japan"),  # one token: no twin of the same length in its own prompt
]
LANGUAGES = [
    ("France", "French"),
    ("Japan", "Japanese"),
    ("Peru", "Spanish"),
    ("Italy", "Italian"),
    ("Spain", "Spanish"),
    ("Kenya", "Shilling"),
    ("Chile", "Spanish"),
]


def _relation(name: str, domain: str, rng: str, template: str, samples: list[tuple[str, str]]) -> Relation:
    return factual_relation(name, template, samples, domain, rng)


FIRST = _relation("landmark in country", "landmark", "country", "{} is located in the country", LANDMARKS)
SECOND = _relation("country language", "country", "language", "the official language of {} is", LANGUAGES)
TWO_HOP = "the official language of the country {} is located in is"


def test_compose_facts_joins_objects_to_subjects():
    triples = compose_facts(FIRST, SECOND)
    assert triples[0] == ("Eiffel Tower", "France", "French")
    assert len(triples) == len(LANDMARKS)  # every landmark's country has a language
    assert compose_facts(FIRST, SECOND, second_samples=[Sample("France", "French")]) == [
        ("Eiffel Tower", "France", "French"),
        ("Great Bank", "France", "French"),
    ]


def test_find_compositions_lists_pairs_without_template_with_the_reason():
    found = {c.key: c for c in find_compositions({"landmark_in_country": FIRST, "country_language": SECOND})}
    assert list(found) == ["landmark_in_country+country_language"]
    shipped = found["landmark_in_country+country_language"]
    assert shipped.template is not None and shipped.reason == "" and shipped.n_facts == len(LANDMARKS)
    other = _relation("country hymn", "country", "hymn", "the hymn of {} is", [("France", "French")])
    found = {c.key: c for c in find_compositions({"landmark_in_country": FIRST, "country_hymn": other})}
    assert found["landmark_in_country+country_hymn"].template is None
    assert "no two-hop template" in found["landmark_in_country+country_hymn"].reason


def test_two_hop_dataset_twins_and_split(tiny_gpt2):
    vocab = len(tiny_gpt2.tokenizer)
    data = build_two_hop_dataset(tiny_gpt2, FIRST, SECOND, 3, 3, template=TWO_HOP, top_k=vocab, seed=0)
    # everything is "known" under top_k = vocabulary size
    row = data.gap_row()
    assert row["both hops known"] == row["tokenisable"] == len(LANDMARKS) - 0
    assert row["composed (both hops and two-hop)"] == row["both hops known"] and row["gap"] == 0
    assert len(data.val) == 3 and len(data.test) == 3
    val, test = {f.subject for f in data.val}, {f.subject for f in data.test}
    assert not val & test
    for split, subjects in ((data.val, val), (data.test, test)):
        for fact in split:
            assert fact.two_hop.prompt == TWO_HOP.format(fact.subject)
            assert fact.first_hop.prompt == FIRST.prompt_templates[0].format(fact.subject)
            assert fact.second_hop.prompt == SECOND.prompt_templates[0].format(fact.bridge)
            assert fact.first_hop.object == fact.bridge and fact.two_hop.object == fact.answer
            for hop in ("first_hop", "second_hop", "two_hop"):
                p = fact.hop(hop)
                if p.corrupt_prompt is None:
                    continue
                assert len(tokenize(tiny_gpt2, [p.prompt])[0]) == len(tokenize(tiny_gpt2, [p.corrupt_prompt])[0])
                first = continuation_first_token(tiny_gpt2, p.prompt, p.object)
                assert continuation_first_token(tiny_gpt2, p.corrupt_prompt, p.corrupt_object) != first
            if fact.two_hop.corrupt_subject is not None:
                assert fact.corrupt_bridge != fact.bridge
                # twins come from the fact's own split or from neither split
                other = test if subjects is val else val
                assert fact.two_hop.corrupt_subject not in other
                if fact.shared_twin["first_hop"]:
                    assert fact.first_hop.corrupt_subject == fact.two_hop.corrupt_subject
                if fact.shared_twin["second_hop"]:
                    assert fact.second_hop.corrupt_subject == fact.corrupt_bridge
    # deterministic in the seed
    again = build_two_hop_dataset(tiny_gpt2, FIRST, SECOND, 3, 3, template=TWO_HOP, top_k=vocab, seed=0)
    assert again.val == data.val and again.test == data.test
    circuit_data = hop_dataset(data, "first_hop")
    assert [f.prompt for f in circuit_data.val] == [f.first_hop.prompt for f in data.val]
    facts_to_batch(tiny_gpt2, circuit_data.val)  # same-length twins: the batch builds


def test_known_filter_counts_the_gap(tiny_gpt2):
    data = build_two_hop_dataset(
        tiny_gpt2, FIRST, SECOND, 1, 1, template=TWO_HOP, top_k=len(tiny_gpt2.tokenizer) - 1, seed=0
    )
    a = data.answers
    assert set(a.columns) >= {"first_hop_known", "second_hop_known", "two_hop_known", "composed"}
    assert (a["composed"] == (a["first_hop_known"] & a["second_hop_known"] & a["two_hop_known"])).all()
    row = data.gap_row()
    assert row["gap"] == pytest.approx(1 - row["composed (both hops and two-hop)"] / row["both hops known"])
    assert {f.subject for f in data.composed} == set(a.loc[a["composed"], "subject"])


def test_two_hop_dataset_refuses_bad_input(tiny_gpt2):
    with pytest.raises(ValueError, match="object type"):
        build_two_hop_dataset(tiny_gpt2, SECOND, FIRST, 2, 2, template=TWO_HOP)
    unnamed = _relation("landmark in town", "landmark", "country", "{} is located in the country", LANDMARKS)
    with pytest.raises(ValueError, match="no two-hop template"):
        build_two_hop_dataset(tiny_gpt2, unnamed, SECOND, 2, 2)
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        build_two_hop_dataset(tiny_gpt2, FIRST, SECOND, 2, 2, template="the language of")
    with pytest.raises(ValueError, match="n_val and n_test"):
        build_two_hop_dataset(tiny_gpt2, FIRST, SECOND, 0, 2, template=TWO_HOP)
    with pytest.raises(PromptError, match="need at least 2"):
        build_two_hop_dataset(
            tiny_gpt2,
            FIRST,
            SECOND,
            2,
            2,
            first_samples=[Sample("Eiffel Tower", "France")],
            template=TWO_HOP,
            top_k=999,
        )
    counted = build_two_hop_dataset(
        tiny_gpt2,
        FIRST,
        SECOND,
        2,
        2,
        first_samples=[Sample("Eiffel Tower", "France")],
        template=TWO_HOP,
        top_k=999,
        require_split=False,
    )
    assert counted.val == counted.test == [] and counted.gap_row()["both hops known"] == 1


# ----------------------------------------------------------------------------- overlaps on a hand-built graph
SHAPE = ModelShape(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8)


def _circuit(edges: list[str]) -> Graph:
    return Graph(SHAPE).set_edges(edges)


def test_set_overlap_by_hand():
    assert set_overlap(1, 2, 4) == (0.5, 0.2)
    assert set_overlap(0, 0, 0) == (1.0, 1.0)
    assert set_overlap(3, 3, 5) == (1.0, 0.6)
    with pytest.raises(ValueError, match="impossible"):
        set_overlap(3, 2, 5)


def test_overlaps_of_a_hand_built_graph_are_known():
    a = _circuit(["input->a0.h0<q>", "a0.h0->logits"])
    b = _circuit(["input->a0.h0<v>", "a0.h0->logits", "input->m1", "m1->logits"])
    c = _circuit(["input->a1.h1<k>", "a1.h1->logits"])
    scores = overlap_scores(a, b)
    # nodes: A = {a0.h0}, B = {a0.h0, m1}; edges: 2 and 4, one shared (a0.h0->logits)
    assert (scores["nodes_a"], scores["nodes_b"], scores["nodes_shared"]) == (1, 2, 1)
    assert scores["node_overlap"] == 1.0 and scores["node_jaccard"] == 0.5
    assert (scores["edges_a"], scores["edges_b"], scores["edges_shared"]) == (2, 4, 1)
    assert scores["edge_overlap"] == 0.5 and scores["edge_jaccard"] == pytest.approx(1 / 5)
    assert overlap_scores(a, a)["edge_jaccard"] == 1.0
    disjoint = overlap_scores(a, c)
    assert disjoint["node_overlap"] == disjoint["edge_overlap"] == 0.0
    table = overlap_table({"A": a, "B": b, "C": c}, [("A", "B"), ("B", "C")])
    assert table["a"].tolist() == ["A", "B"] and table.loc[1, "node_jaccard"] == 0.0
    with pytest.raises(KeyError, match="no circuit named 'D'"):
        overlap_table({"A": a}, [("A", "D")])


def test_random_overlaps_are_seeded_and_sized():
    graph = Graph(SHAPE)
    draws = random_overlaps(graph, 6, 9, n_random=4, seed=3)
    assert draws.equals(random_overlaps(graph, 6, 9, n_random=4, seed=3))
    assert len(draws) == 4 and draws[["node_overlap", "edge_jaccard"]].stack().between(0, 1).all()
    summary = summarise_overlaps(draws)
    assert summary["n"] == 4 and summary["edge_overlap_mean"] == pytest.approx(draws["edge_overlap"].mean())
    assert (draws["edges_a"] - 6).abs().max() <= 2 and (draws["edges_b"] - 9).abs().max() <= 2
    with pytest.raises(ValueError, match="one to one"):
        paired_overlaps([Graph(SHAPE)], [])


# ----------------------------------------------------------------------------- bridge lens, movers, restoring
def _two_hop_batch(model):
    prompts = ["the capital of France is", "the capital of New Zealand is", "the capital of Japan is"]
    corrupt = ["the capital of Peru is", "the capital of North Korea is", "the capital of Italy is"]
    return make_batch(model, prompts, ["Paris", "Wellington", "Tokyo"], corrupt, ["Lima", "Seoul", "Rome"])


def test_restoring_nothing_is_the_corrupt_run_and_everything_the_clean_run(tiny_model):
    batch = _two_hop_batch(tiny_model)
    graph = Graph.from_model(tiny_model)
    every = ["input", *component_names(graph)]
    out = restore_components(tiny_model, batch, [[], every], sets_per_pass=2)
    rows = torch.arange(len(batch))
    with torch.no_grad():
        clean = tiny_model(batch.clean)[rows, batch.last_pos]
        corrupt = tiny_model(batch.corrupt)[rows, batch.last_pos]
    torch.testing.assert_close(out[0], corrupt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], clean, atol=1e-5, rtol=1e-5)


def test_restoring_sets_in_one_pass_equals_one_run_per_set(tiny_model):
    batch = _two_hop_batch(tiny_model)
    sets = [["a0.h1"], ["m0", "a1.h0"], ["m1"], ["a0.h0", "a0.h1", "m0"]]
    together = restore_components(tiny_model, batch, sets, sets_per_pass=4)
    rows = torch.arange(len(batch))
    from kc_utils import models

    for components, got in zip(sets, together):
        # slow reference: one run per set, hooks written out by hand
        names = [
            models.head_result_hook(int(c[1])) if c.startswith("a") else models.mlp_out_hook(int(c[1]))
            for c in components
        ]
        with torch.no_grad():
            _, clean = models.run_with_cache(tiny_model, batch.clean, names)
        hooks = []
        for c in components:
            layer = int(c[1])
            if c.startswith("a"):
                head = int(c.split(".h")[1])

                def hook(act, hook, layer=layer, head=head):
                    act = act.clone()
                    act[:, :, head] = clean[models.head_result_hook(layer)][:, :, head]
                    return act

                hooks.append((models.head_result_hook(layer), hook))
            else:
                hooks.append((models.mlp_out_hook(layer), lambda act, hook, n=models.mlp_out_hook(layer): clean[n]))
        with torch.no_grad():
            expected = run_with_hooks(tiny_model, batch.corrupt, hooks)[rows, batch.last_pos]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_restore_refuses_unknown_components(tiny_gpt2):
    batch = _two_hop_batch(tiny_gpt2)
    with pytest.raises(ValueError, match="not a head, MLP or the input"):
        restore_components(tiny_gpt2, batch, [["m7"]])
    with pytest.raises(ValueError, match="component name"):
        restore_components(tiny_gpt2, batch, [["mlp three"]])
    clean_only = make_batch(tiny_gpt2, ["the capital of France is"], ["Paris"])
    with pytest.raises(ValueError, match="corrupted prompts"):
        restore_components(tiny_gpt2, clean_only, [["m0"]])


def test_bridge_patching_table(tiny_gpt2):
    batch = _two_hop_batch(tiny_gpt2)
    pool = component_names(Graph.from_model(tiny_gpt2))
    table = bridge_patching(tiny_gpt2, batch, ["m0", "a1.h2"], pool, n_random=5, seed=1)
    assert table["set"].tolist()[:3] == ["corrupt", "clean", "group"] and (table["set"] == "random").sum() == 5
    assert table.loc[0, "recovery"] == pytest.approx(0.0) and table.loc[1, "recovery"] == pytest.approx(1.0)
    with torch.no_grad():
        clean = tiny_gpt2(batch.clean)[torch.arange(len(batch)), batch.last_pos]
    assert table.loc[1, "follow"] == pytest.approx(float((clean.argmax(-1) == batch.answer).float().mean()))
    assert (table.loc[table["set"] == "random", "n_components"] == 2).all()
    assert table.equals(bridge_patching(tiny_gpt2, batch, ["m0", "a1.h2"], pool, n_random=5, seed=1))
    summary = bridge_patching_summary(table)
    assert summary["n_random"] == 5 and summary["recovery_corrupt"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the pool"):
        bridge_patching(tiny_gpt2, batch, ["a1.h2"], ["m0"], n_random=2)


def test_bridge_patching_summary_on_a_hand_made_table():
    table = pd.DataFrame(
        {
            "set": ["corrupt", "clean", "group", "random", "random"],
            "follow": [0.0, 1.0, 0.8, 0.2, 0.8],
            "recovery": [0.0, 1.0, 0.7, 0.1, 0.3],
            "n_components": [0, 9, 3, 3, 3],
            "overlap": [0, 3, 3, 1, 0],
        }
    )
    s = bridge_patching_summary(table)
    assert s["follow_group"] == 0.8 and s["follow_random_mean"] == 0.5 and s["follow_random_std"] == pytest.approx(0.3)
    assert s["follow_random_at_least_group"] == 0.5 and s["recovery_random_mean"] == pytest.approx(0.2)
    assert s["mean_overlap"] == 0.5 and s["n_components"] == 3


def test_bridge_lens_last_layer_is_the_model(tiny_model):
    batch = _two_hop_batch(tiny_model)
    bridge = [continuation_first_token(tiny_model, p, "France") for p in batch.prompts]
    control = [continuation_first_token(tiny_model, p, "Italy") for p in batch.prompts]
    lens = bridge_lens(tiny_model, batch, ["France", "New Zealand", "Japan"], bridge, control)
    last = lens[lens["layer"] == lens["layer"].max()].sort_values("prompt_index")
    with torch.no_grad():
        logits = tiny_model(batch.clean)[torch.arange(len(batch)), batch.last_pos]
    ranks = (logits > logits.gather(1, torch.tensor(bridge)[:, None])).sum(-1)
    assert last["bridge_rank"].tolist() == ranks.tolist()
    summary = bridge_lens_summary(lens, top=5)
    assert len(summary) == tiny_model.cfg.n_layers + 1 and summary["n_prompts"].eq(3).all()


def test_bridge_lens_summary_on_a_hand_made_table():
    lens = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "bridge_rank": [0, 20, 3, 5],
            "bridge_subject_rank": [1, 1, 0, 0],
            "control_rank": [30, 40, 50, 60],
            "control_subject_rank": [9, 11, 12, 2],
        }
    )
    s = bridge_lens_summary(lens, top=10).set_index("layer")
    assert s.loc[0, "bridge_last_median"] == 10 and s.loc[0, "bridge_last_top"] == 0.5
    assert s.loc[1, "bridge_last_top"] == 1.0 and s.loc[1, "control_subject_top"] == 0.5
    with pytest.raises(ValueError, match="not a bridge_lens table"):
        bridge_lens_summary(lens.drop(columns=["control_rank"]))


def test_mover_containment_by_hand():
    out = mover_containment(
        ["a2.h0", "a3.h1", "a3.h2"],
        ["a3.h1", "a2.h0", "a1.h1"],
        [f"a{layer}.h{h}" for layer in (1, 2, 3) for h in (0, 1, 2)],
    )
    assert out["movers_in_circuit"] == 2 and out["movers_share"] == pytest.approx(2 / 3)
    assert out["chance"] == pytest.approx(3 / 9) and out["missing"] == "a3.h2"
    assert math.isnan(mover_containment([], ["a1.h1"], ["a1.h1"])["movers_share"])
    with pytest.raises(ValueError, match="not in the pool"):
        mover_containment(["a9.h9"], [], ["a1.h1"])


def test_random_component_sets_are_seeded():
    pool = ["m0", "a1.h0", "a1.h1", "m1"]
    sets = random_component_sets(pool, 2, 3, seed=4)
    assert sets == random_component_sets(pool, 2, 3, seed=4)
    assert all(len(s) == 2 and s == sorted(s, key=pool.index) for s in sets)
    with pytest.raises(ValueError, match="cannot draw"):
        random_component_sets(pool, 5, 1)


def test_twinless_prompt_takes_its_counterfactual_answer_beyond_a_pool_that_shares_its_answer(tiny_gpt2):
    # both pool facts go through France (no twin with another bridge), so every pool answer is France/French
    from kc_utils.data.multihop import _hop_prompts, _twins

    templates = _hop_prompts(FIRST, SECOND, TWO_HOP, 0)
    fact, same = ("Eiffel Tower", "France", "French"), ("Great Bank", "France", "French")
    elsewhere = ("Great Wall", "Japan", "Japanese")
    with pytest.raises(PromptError, match="every candidate shares the answer"):
        _twins(tiny_gpt2, templates, [fact], [fact, same], seed=0)
    (twinless,) = _twins(tiny_gpt2, templates, [fact], [fact, same], seed=0, answer_pool=[elsewhere])
    assert twinless.corrupt_bridge is None
    for hop, answer in (("first_hop", "Japan"), ("second_hop", "Japanese"), ("two_hop", "Japanese")):
        p = twinless.hop(hop)
        assert p.corrupt_prompt is None and p.corrupt_object == answer


# ----------------------------------------------------------------------------- patching the strongest components
def _weighted_circuit() -> Graph:
    """Edges input->a0.h0 (1), a0.h0->m1 (-5), a0.h1->logits (2), m1->logits (0.5).

    Weights out: a0.h0 5, a0.h1 2, m1 0.5.
    """
    graph = _circuit(["input->a0.h0<q>", "a0.h0->m1", "a0.h1->logits", "m1->logits"])
    for name, score in (("input->a0.h0<q>", 1.0), ("a0.h0->m1", -5.0), ("a0.h1->logits", 2.0), ("m1->logits", 0.5)):
        graph.scores[graph.edge_indices(name)] = score
    return graph


def test_strongest_components_rank_by_circuit_weight():
    graph = _weighted_circuit()
    components = ["a0.h0", "a0.h1", "m1"]
    assert strongest_components(graph, components, 1) == ["a0.h0"]
    assert strongest_components(graph, components, 2) == ["a0.h0", "a0.h1"]
    assert strongest_components(graph, ["m1", "a0.h1", "a0.h0"], 2) == ["a0.h1", "a0.h0"]  # the caller's order
    assert strongest_components(graph, components, 3) == components
    with pytest.raises(ValueError, match="between 1 and the 3"):
        strongest_components(graph, components, 4)
    with pytest.raises(ValueError, match="not in the circuit"):
        strongest_components(graph, ["a1.h0"], 1)


def test_patch_sizes():
    assert patching_sizes(91) == [11, 23, 46, 91]
    assert patching_sizes(10) == [1, 2, 5, 10]
    assert patching_sizes(2) == [1, 2]
    assert patching_sizes(91, [40, 5, 40]) == [5, 40]
    for bad in ([0], [2.5], [True], []):
        with pytest.raises(ValueError, match="non-empty list of positive integers"):
            patching_sizes(91, bad)
        with pytest.raises(ValueError, match="non-empty list of positive integers"):
            check_patch_sizes(bad)
    with pytest.raises(ValueError, match=r"\[92\] exceed the first hop's 91 circuit components"):
        patching_sizes(91, [5, 92])
    check_patch_sizes([1, 500])  # the form only: the circuit's size is not known yet
    with pytest.raises(ValueError, match="'auto' or a list"):
        patching_sizes(91, "all")
    with pytest.raises(ValueError, match="no component"):
        patching_sizes(0)


def test_bridge_patching_by_size_restores_the_strongest_first(tiny_gpt2):
    batch = _two_hop_batch(tiny_gpt2)
    graph = Graph.from_model(tiny_gpt2)
    pool = component_names(graph)
    torch.manual_seed(0)
    graph.scores = torch.where(graph.real_edges, torch.randn(graph.scores.shape), 0.0)
    graph.top_n(30)
    components = [c for c in pool if c in circuit_nodes(graph)]
    table = bridge_patching_by_size(tiny_gpt2, batch, graph, components, pool, [1, len(components)], n_random=4, seed=2)
    assert table["size"].tolist() == [1, len(components)]
    assert table.loc[0, "components"] == " ".join(strongest_components(graph, components, 1))
    whole = bridge_patching_summary(bridge_patching(tiny_gpt2, batch, components, pool, n_random=4, seed=2))
    for key, value in whole.items():
        assert table.loc[1, key] == pytest.approx(value, nan_ok=True)
    assert table.loc[1, "share_of_pool"] == pytest.approx(len(components) / len(pool))
