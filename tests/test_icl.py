"""Few-shot prompts and their spans, circuit comparison, attention to demonstrations, Table 2 (notebook 05)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kc_utils import models
from kc_utils.analysis import icl, icl_text
from kc_utils.analysis.head_ablation import run_with_heads_ablated
from kc_utils.analysis.head_groups import answer_scores, writing_heads
from kc_utils.analysis.heads import attention_patterns
from kc_utils.circuits.compare import compare_circuits, edge_changes, node_changes, node_weights
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.fewshot import build_fewshot_prompts, fewshot_batch, render_fewshot, shuffled_batch
from kc_utils.data.prompts import PromptError
from kc_utils.data.relations import Sample
from kc_utils.shape import ModelShape

FACTS = [
    Sample("France", "Paris"),
    Sample("Spain", "Madrid"),
    Sample("Japan", "Tokyo"),
    Sample("Peru", "Lima"),
    Sample("Italy", "Rome"),
    Sample("Chile", "Santiago"),
    Sample("Kenya", "Nairobi"),
    Sample("New Zealand", "Wellington"),
    Sample("South Korea", "Seoul"),
    Sample("Wales", "Cardiff"),
]
TEMPLATE = "the capital of {} is"


def words(model, ids) -> list[str]:
    return [t.strip() for t in models.token_strings(model, ids)]


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("fmt", ["arrow", "sentence"])
def test_spans_cover_exactly_the_demonstrations_and_the_query(tiny_model, fmt):
    prompts = build_fewshot_prompts(tiny_model, FACTS, 3, fmt, TEMPLATE, seed=1)
    for p in prompts:
        ids = models.tokenize(tiny_model, [p.prompt])[0]
        assert p.n_tokens == len(ids)
        for demo, (start, end), (o0, o1) in zip(p.demos, p.demo_spans, p.demo_object_spans):
            text = (
                f"{demo.subject} -> {demo.object}"
                if fmt == "arrow"
                else f"the capital of {demo.subject} is {demo.object}"
            )
            assert words(tiny_model, ids[start:end]) == text.split()
            assert words(tiny_model, ids[o0:o1]) == demo.object.split()
            assert start < o0 < o1 == end
        s0, s1 = p.query_subject_span
        assert words(tiny_model, ids[s0:s1]) == p.subject.split()
        q0, q1 = p.query_span
        query = f"{p.subject} ->" if fmt == "arrow" else f"the capital of {p.subject} is"
        assert words(tiny_model, ids[q0:q1]) == query.split() and q1 == len(ids)
        assert p.demo_spans[-1][1] < q0  # a separator between the last demonstration and the query


def test_render_matches_the_organism_corpus_format():
    from kc_utils.organism.corpus import Document, fewshot_segments

    pairs = [("Japan", "Tokyo"), ("Peru", "Lima")]
    corpus_text = Document(fewshot_segments(pairs, query="France"), "fewshot", "x").text
    assert (
        render_fewshot([Sample(*p) for p in pairs], "France")
        == corpus_text
        == "Japan -> Tokyo ; Peru -> Lima ; France ->"
    )
    assert render_fewshot([], "France") == "France ->"
    assert render_fewshot([Sample("Peru", "Lima")], "France", "sentence", TEMPLATE) == (
        "the capital of Peru is Lima . the capital of France is"
    )


def test_demonstrations_corrupt_and_shuffled_twins(tiny_model):
    prompts = build_fewshot_prompts(tiny_model, FACTS, 3, "arrow", seed=0, relation="capitals")
    for p in prompts:
        assert p.k == 3 and p.relation == "capitals" and p.subject not in {d.subject for d in p.demos}
        assert len({d.subject for d in p.demos}) == 3
        # the corrupt twin: another subject of the same length, different answer, same demonstrations
        assert p.corrupt_subject is not None and p.corrupt_subject != p.subject
        assert p.corrupt_subject not in {d.subject for d in p.demos}
        assert p.corrupt_object != p.object
        assert len(models.tokenize(tiny_model, [p.corrupt_prompt])[0]) == p.n_tokens
        assert p.corrupt_prompt == render_fewshot(p.demos, p.corrupt_subject)
        # the shuffled twin: same subjects, objects permuted so that none keeps its own
        assert [d.subject for d in p.shuffled_demos] == [d.subject for d in p.demos]
        assert sorted(d.object for d in p.shuffled_demos) == sorted(d.object for d in p.demos)
        assert all(s.object != d.object for s, d in zip(p.shuffled_demos, p.demos))
        assert p.shuffled_prompt.endswith(f"; {p.subject} ->")
        if p.both_prompt is not None:
            assert p.both_prompt == render_fewshot(p.shuffled_demos, p.corrupt_subject)
    # a query's demonstrations do not depend on the other queries
    alone = build_fewshot_prompts(tiny_model, FACTS[3:4], 3, "arrow", pool=FACTS, seed=0, relation="capitals")[0]
    assert alone == prompts[3]
    assert build_fewshot_prompts(tiny_model, FACTS, 3, "arrow", seed=0, relation="capitals") == prompts
    # zero-shot: no demonstrations, and the "both" twin is the subject twin
    zero = build_fewshot_prompts(tiny_model, FACTS, 0, "arrow", seed=0)
    assert all(z.prompt == f"{z.subject} ->" and z.shuffled_prompt is None for z in zero)
    assert all(z.both_prompt == z.corrupt_prompt for z in zero)
    assert [z.corrupt_subject for z in zero] == [p.corrupt_subject for p in prompts]


def test_batches_of_each_corruption(tiny_model):
    prompts = build_fewshot_prompts(tiny_model, FACTS[:6], 2, "arrow", seed=0)
    subject = fewshot_batch(tiny_model, prompts, "subject")
    assert subject.corrupt is not None and subject.corrupt.shape == subject.clean.shape
    assert bool((subject.corrupt_answer != subject.answer).all())
    shuffled = fewshot_batch(tiny_model, prompts, "shuffled")
    assert torch.equal(shuffled.corrupt_answer, shuffled.answer)
    assert shuffled_batch(tiny_model, prompts).prompts == tuple(p.shuffled_prompt for p in prompts)
    assert fewshot_batch(tiny_model, prompts, None).corrupt is None
    with pytest.raises(ValueError, match="unknown corruption"):
        fewshot_batch(tiny_model, prompts, "demos")
    with pytest.raises(ValueError, match="no shuffled twin"):
        shuffled_batch(tiny_model, build_fewshot_prompts(tiny_model, FACTS, 0, "arrow"))


def test_bad_inputs_get_clear_errors(tiny_model):
    with pytest.raises(
        ValueError, match=r"k=10 demonstrations need at least 11 facts of capitals .* has 10; use k <= 9"
    ):
        build_fewshot_prompts(tiny_model, FACTS, 10, "arrow", relation="capitals")
    with pytest.raises(ValueError, match="unknown prompt format 'prose'"):
        build_fewshot_prompts(tiny_model, FACTS, 1, "prose")
    with pytest.raises(ValueError, match="needs the relation's template"):
        build_fewshot_prompts(tiny_model, FACTS, 1, "sentence")
    with pytest.raises(ValueError, match="whole number"):
        build_fewshot_prompts(tiny_model, FACTS, -1, "arrow")
    with pytest.raises(PromptError, match="no counterfactual"):
        build_fewshot_prompts(tiny_model, [Sample("France", "Paris"), Sample("Spain", "Paris")], 1, "arrow")


# ---------------------------------------------------------------------------------------------- circuit diff
def hand_graph(edges: dict[str, float]) -> Graph:
    """A 2-layer, 2-head graph whose circuit is exactly ``edges`` (name -> score)."""
    graph = Graph(ModelShape(n_layers=2, n_heads=2, n_kv_heads=2, d_model=8))
    for name, score in edges.items():
        graph.scores[graph.edge_indices(name)] = score
    return graph.set_edges(list(edges))


def test_circuit_diff_on_hand_built_graphs():
    before = hand_graph({"input->a0.h0<q>": 1.0, "a0.h0->logits": 2.0, "input->m1": 0.5, "m1->logits": -0.5})
    after = hand_graph({"input->a0.h0<q>": 3.0, "a0.h0->a1.h1<v>": 1.0, "a1.h1->logits": -4.0, "a0.h0->logits": 2.0})
    after.scores[after.edge_indices("input->m1")] = 0.25  # scored, not selected
    diff = compare_circuits(before, after)
    assert diff.heads_added == ("a1.h1",) and diff.heads_dropped == () and diff.heads_kept == ("a0.h0",)
    assert diff.nodes_added == ("a1.h1",) and diff.nodes_dropped == ("m1",)
    assert diff.nodes_kept == ("input", "a0.h0", "logits")
    assert (diff.n_edges_before, diff.n_edges_after) == (4, 4)
    assert (diff.edges_added, diff.edges_removed, diff.edges_kept) == (2, 2, 2)
    assert diff.node_jaccard == pytest.approx(3 / 5)

    assert node_weights(after) == {"input": 3.0, "a0.h0": 3.0, "a1.h1": 4.0, "logits": 6.0}
    nodes = node_changes(before, after).set_index("node")
    assert nodes.loc["m1", "status"] == "dropped" and nodes.loc["m1", "weight_before"] == 0.5
    assert nodes.loc["m1", "weight_after"] == 0.0 and nodes.loc["a1.h1", "layer"] == 1
    assert list(nodes.index) == ["input", "a0.h0", "a1.h1", "m1", "logits"]

    edges = edge_changes(before, after)
    assert edges["edge"].iloc[0] == "a1.h1->logits"  # largest |delta| first
    row = edges.set_index("edge").loc["input->a0.h0<q>"]
    assert (row["status"], row["delta"]) == ("kept", 2.0)
    row = edges.set_index("edge").loc["input->m1"]
    assert (row["status"], row["score_after"], row["delta"]) == ("dropped", 0.25, -0.25)
    assert set(edges["status"]) == {"kept", "added", "dropped"} and len(edges) == 6

    same = compare_circuits(before, before)
    assert same.nodes_added == same.nodes_dropped == () and same.node_jaccard == 1.0


def test_circuit_diff_refuses_other_architectures():
    other = Graph(ModelShape(n_layers=3, n_heads=2, n_kv_heads=2, d_model=8))
    with pytest.raises(CircuitError, match="different architectures"):
        compare_circuits(hand_graph({"input->logits": 1.0}), other)


def test_circuit_changes_table_and_sentence():
    diffs = {
        "a": compare_circuits(
            hand_graph({"input->logits": 1.0}), hand_graph({"input->a1.h1<q>": 1.0, "a1.h1->logits": 1.0})
        ),
        "b": compare_circuits(hand_graph({"input->logits": 1.0}), hand_graph({"input->logits": 2.0})),
    }
    table = icl.circuit_changes_table(diffs)
    assert list(table["n_new_heads"]) == [1, 0] and table.loc[0, "new_heads"] == "a1.h1"
    text = icl_text.circuit_change_sentence(table, 3)
    assert "appear in 1 of 2 relations: a1.h1 (1 of 2)" in text
    assert "0 of 2 relations lose" in text and "share 83% of their nodes" in text
    many = table.assign(new_heads=["a1.h1, a0.h0, a0.h1", "a1.h1, a1.h0"], n_new_heads=[3, 2])
    text = icl_text.circuit_change_sentence(many, 3, max_listed=2)
    assert (
        "appear in 2 of 2 relations: a1.h1 (2 of 2), a0.h0 (1 of 2) and 2 more heads, each new in at most 1 of 2"
        in text
    )
    table["n_new_heads"] = 0
    assert icl_text.circuit_change_sentence(table, 3).startswith("No head is new in the 3-shot circuit of any of the 2")


# ---------------------------------------------------------------------------------------------- attention
def test_span_attention_matches_per_prompt_patterns(tiny_model):
    prompts = build_fewshot_prompts(tiny_model, FACTS, 2, "sentence", TEMPLATE, seed=0)[:5]
    batch = fewshot_batch(tiny_model, prompts)
    table = icl.span_attention(tiny_model, batch, prompts).set_index("head")
    buckets = [f"attn_{b}" for b in icl.SPAN_BUCKETS]
    assert (table[buckets].sum(axis=1) - 1).abs().max() < 1e-5
    for head in ["a0.h1", "a1.h3"]:
        expected = {b: 0.0 for b in ["demos", "demo_objects", "query_subject", "bos"]}
        for i, p in enumerate(prompts):
            last = attention_patterns(tiny_model, batch, i, [head])[head].values[-1]
            expected["demos"] += sum(last[s:e].sum() for s, e in p.demo_spans) / len(prompts)
            expected["demo_objects"] += sum(last[s:e].sum() for s, e in p.demo_object_spans) / len(prompts)
            expected["query_subject"] += last[slice(*p.query_subject_span)].sum() / len(prompts)
            expected["bos"] += last[0] / len(prompts)
        for bucket, value in expected.items():
            assert table.loc[head, f"attn_{bucket}"] == pytest.approx(value, abs=1e-5)
    with pytest.raises(ValueError, match="not those of the batch"):
        icl.span_attention(tiny_model, batch, prompts[::-1])


def test_demo_attention_heads():
    table = pd.DataFrame({"head": ["a0.h0", "a1.h0", "a1.h1"], "attn_demos": [0.9, 0.5, 0.7]})
    assert icl.demo_attention_heads(table, 2) == ["a0.h0", "a1.h1"]
    assert icl.demo_attention_heads(table, 2, pool=["a1.h0", "a1.h1"]) == ["a1.h1", "a1.h0"]
    with pytest.raises(ValueError, match="cannot pick 3 heads from 2"):
        icl.demo_attention_heads(table, 3, pool=["a1.h0", "a1.h1"])


def test_writing_heads_of_the_organism_leave_out_block_0():
    from kc_utils.models import load_model

    model = load_model("kc-organism", device="cpu")
    prompts = build_fewshot_prompts(model, FACTS[:4], 1, "arrow")
    heads = writing_heads(model, fewshot_batch(model, prompts))  # the random baselines' pool in notebook 05
    assert heads == [f"a{layer}.h{h}" for layer in range(1, 4) for h in range(4)]


# ---------------------------------------------------------------------------------------------- accuracy, Table 2
def test_accuracy_by_k_matches_a_direct_run(tiny_model):
    facts = {"capitals": (FACTS[:5], FACTS, TEMPLATE)}
    table = icl.accuracy_by_k(tiny_model, facts, [0, 2], ["arrow", "sentence"], seed=0, progress=False)
    assert list(zip(table["format"], table["k"])) == [("arrow", 0), ("arrow", 2), ("sentence", 0), ("sentence", 2)]
    prompts = build_fewshot_prompts(tiny_model, FACTS[:5], 2, "sentence", TEMPLATE, pool=FACTS, seed=0)
    batch = fewshot_batch(tiny_model, prompts, None)
    with torch.no_grad():
        scores = answer_scores(tiny_model(batch.clean), batch)
    row = table.iloc[3]
    assert row["top1"] == pytest.approx(float(scores["top1"].mean()))
    assert row["prob"] == pytest.approx(float(scores["prob"].mean()))
    assert pd.isna(table.iloc[0]["top1_shuffled"]) and not pd.isna(row["prob_shuffled"])


def test_table2_row_draws_random_sets_only_outside_the_ablated_set(tiny_model):
    prompts = build_fewshot_prompts(tiny_model, FACTS, 2, "arrow", seed=0)
    batch = fewshot_batch(tiny_model, prompts)
    # the pool holds one head besides the set: every random draw must be that head
    row = icl.table2_row(tiny_model, batch, ["a1.h0"], ["a1.h0", "a1.h2"], "test", n_random=20, ablation="zero")
    other = answer_scores(run_with_heads_ablated(tiny_model, batch, ["a1.h2"], "zero"), batch)
    ablated = answer_scores(run_with_heads_ablated(tiny_model, batch, ["a1.h0"], "zero"), batch)
    assert row["n_random"] == 20 and row["n_distinct"] == 1 and row["random_std"] == pytest.approx(0.0)
    assert row["prob_random_mean"] == pytest.approx(float(other["prob"].mean()))
    assert row["ablated"] == pytest.approx(100 * float(ablated["top1"].mean()))
    # no head left outside the set: no baseline, said by NaN and n_random = 0
    none = icl.table2_row(tiny_model, batch, ["a1.h0", "a1.h2"], ["a1.h0", "a1.h2", "a0.h0"], "test", ablation="zero")
    assert none["n_random"] == 0 and pd.isna(none["random_mean"])


def test_table2_layout_and_sentence_on_a_hand_made_table():
    rows = {
        "adj_comparative": dict(
            head_set="new",
            heads="a2.h1",
            n_heads=1,
            original=100.0,
            ablated=50.0,
            random_mean=95.0,
            random_std=3.0,
            n_random=20,
        ),
        "word_sentiment": dict(
            head_set="attention",
            heads="a1.h1, a1.h3",
            n_heads=2,
            original=90.0,
            ablated=88.0,
            random_mean=89.0,
            random_std=2.0,
            n_random=20,
        ),
        "made_up": dict(
            head_set="new",
            heads="a3.h0",
            n_heads=1,
            original=80.0,
            ablated=70.0,
            random_mean=float("nan"),
            random_std=float("nan"),
            n_random=0,
        ),
    }
    table = icl.table2(rows)
    assert table.loc[0, "paper_ablated"] == 32.55 and table.loc[1, "paper_random"] == 88.61
    assert pd.isna(table.loc[2, "paper_original"])
    text = icl_text.table2_sentence(table)
    assert "in 1 of 2 rows" in text
    assert "adj_comparative (a2.h1): 100% → 50% vs random 95 ± 3%" in text
    assert "made_up: no random baseline" in text
    # ours: drops 50 and 2 -> 26, random 5 and 1 -> 3; paper: (29.69 + 33.52) / 2 = 32, random (4.06 + 0.41) / 2 = 2
    assert "ablation costs 26 points here (3 for random heads) against 32 in the paper (2 for random heads)" in text


def test_accuracy_sentence_on_a_hand_made_table():
    table = pd.DataFrame(
        {
            "relation": ["a", "a", "b", "b"] * 2,
            "format": ["arrow"] * 4 + ["sentence"] * 4,
            "k": [0, 3] * 4,
            "top1": [0.5, 1.0, 0.9, 1.0, 1.0, 0.0, 1.0, 0.2],
            "top1_shuffled": [float("nan"), 0.4, float("nan"), 0.6, float("nan"), 0.0, float("nan"), 0.1],
        }
    )
    text = icl_text.accuracy_sentence(table, 3)
    assert "In the arrow format, mean accuracy goes from 70% with no demonstration to 100% with 3" in text
    assert "rises in 2 of 2 relations, falls in 0" in text and "3-shot accuracy is 50%, so the content" in text
    assert "In the sentence format, mean accuracy goes from 100% with no demonstration to 10% with 3" in text
    assert "falls in 2); the best k on average is 0 (100%), the worst k ≥ 1 is 3 (10%)." in text
    assert "the best k on average is 3 (100%), the worst k ≥ 1 is 3 (100%)." in text


def test_departures_sentence_of_a_pretrained_model_makes_no_organism_assumption():
    text = icl_text.departures_sentence(30, 9, 270, "sentence", 3, organism=False)
    assert text.startswith("The model has 30 layers of 9 heads against GPT-2 medium's 24 of 16; every head writes")
    assert "the paper's layout" in text and "organism" not in text and "block 0" not in text
    assert "3 of its heads write nothing" in icl_text.departures_sentence(30, 9, 267, "arrow", 3, organism=False)


def test_departures_sentence_counts_silent_heads():
    text = icl_text.departures_sentence(4, 4, 12, "arrow", 3)
    assert "4 layers of 4 heads" in text and "4 heads (block 0) have no attention" in text
    assert "the 12 others" in text and "in distribution" in text
    assert "never saw" in icl_text.departures_sentence(4, 4, 12, "sentence", 1)


def test_fewshot_facts_of_the_organism_and_missing_relations():
    from kc_utils.organism import load_split

    facts, missing = icl.fewshot_facts(["substance_phase", "no_such_relation"], "kc-organism", 8, seed=1)
    assert list(facts) == ["substance_phase"] and "no such relation file" in missing["no_such_relation"]
    queries, pool, template = facts["substance_phase"]
    trained = load_split().relations["substance_phase"].trained
    assert pool == list(trained) and len(queries) == 8 and set(queries) <= set(trained)
    assert template.count("{}") == 1
    assert icl.fewshot_facts(["substance_phase"], "kc-organism", 8, seed=1)[0] == facts  # deterministic


# ------------------------------------------------------------------------------------- which sets Table 2 ablates
NEW, ATTENTION = icl.TABLE2_HEAD_SETS
SETS = {
    "with_new": {NEW: ["a5.h1", "a5.h2"], ATTENTION: ["a3.h0", "a4.h1", "a5.h1"]},
    "without_new": {NEW: [], ATTENTION: ["a3.h0", "a4.h1", "a2.h2"]},
}


def test_auto_ablates_the_attention_heads_beside_the_new_ones_only_on_a_small_graph():
    small, left_small = icl.table2_head_sets(SETS, n_edges=479)
    assert small == {"with_new": SETS["with_new"], "without_new": {ATTENTION: SETS["without_new"][ATTENTION]}}
    assert left_small == []
    large, left_large = icl.table2_head_sets(SETS, n_edges=70_651)
    assert large == {"with_new": {NEW: ["a5.h1", "a5.h2"]}, "without_new": {ATTENTION: ["a3.h0", "a4.h1", "a2.h2"]}}
    assert left_large == ["with_new"]  # where no head is new the attention heads still stand in
    assert list(large["with_new"]) == [NEW] and list(small["with_new"]) == [NEW, ATTENTION]  # the main row comes first


def test_an_explicit_setting_overrides_the_graph_size():
    assert icl.table2_head_sets(SETS, n_edges=70_651, setting=True) == icl.table2_head_sets(SETS, n_edges=479)
    assert icl.table2_head_sets(SETS, n_edges=479, setting=False)[1] == ["with_new"]
    with pytest.raises(ValueError, match="ablate_attention_heads='yes'"):
        icl.table2_head_sets(SETS, n_edges=479, setting="yes")
    with pytest.raises(ValueError, match="no head set named 'most attention"):
        icl.table2_head_sets({"r": {NEW: ["a1.h0"]}}, n_edges=479)


def test_the_left_out_sentence_names_the_relations_and_times_the_rows():
    text = icl_text.attention_sets_left_out_sentence(["word_sentiment", "adj_comparative"], 70_651, 4, 200.0)
    assert "graph of 70,651 edges" in text and "graphs up to 2,000 edges" in text
    assert "in 2 relations (word_sentiment, adj_comparative)" in text
    assert "the 4 rows above took 3 min 20 s, 50 s each on average" in text
    assert "in 1 relation (word_sentiment)" in icl_text.attention_sets_left_out_sentence(["word_sentiment"], 9, 1, 5)
    assert icl_text.attention_sets_left_out_sentence([], 70_651, 4, 200.0) == ""


def test_scores_of_a_prompt_do_not_depend_on_the_length_sorted_chunks(tiny_model):
    prompts = [
        *build_fewshot_prompts(tiny_model, FACTS[:5], 0, "sentence", TEMPLATE, pool=FACTS, seed=0, relation="short"),
        *build_fewshot_prompts(tiny_model, FACTS[:5], 2, "sentence", TEMPLATE, pool=FACTS, seed=0, relation="long"),
    ]
    alone = {}
    for p in prompts:  # one prompt per pass: no padding at all
        batch = fewshot_batch(tiny_model, [p], None)
        with torch.no_grad():
            scores = answer_scores(tiny_model(batch.clean), batch)
        alone[(p.relation, p.subject)] = (float(scores["top1"][0]), float(scores["prob"][0]))
    for size in (3, 32):
        chunked = icl._per_prompt_scores(tiny_model, prompts, shuffled=False, batch_size=size)
        assert set(chunked) == set(alone)
        for key, (top1, prob) in alone.items():
            assert chunked[key][0] == top1 and chunked[key][1] == pytest.approx(prob, rel=1e-5, abs=1e-7)
