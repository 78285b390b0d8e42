"""Hallucination analysis: classification, wrong-answer kinds, wrong-vs-correct components, repair (tiny models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from relations import factual_relation

from kc_utils import models
from kc_utils.analysis import failure_kinds as fk
from kc_utils.analysis import hallucination as hal
from kc_utils.analysis import hallucination_text as prose
from kc_utils.analysis import head_repair as rep
from kc_utils.analysis import wrong_answer_heads as wah
from kc_utils.analysis.head_ablation import run_with_heads_ablated
from kc_utils.analysis.head_groups import all_heads, group_ablation_summary, score_row
from kc_utils.analysis.lens import logit_lens, project_node
from kc_utils.analysis.wrong_answers import AttributeIndex, name_wrong_answers
from kc_utils.data.metrics import answer_logits, rank_of
from kc_utils.data.prompts import make_batch
from kc_utils.data.relations import Relation

PROMPTS = ["the capital of France is", "the capital of Japan is", "the capital of Peru is", "the capital of Italy is"]
SUBJECTS = ["France", "Japan", "Peru", "Italy"]
ANSWERS = ["Paris", "Tokyo", "Lima", "Rome"]
# the same facts asked another way, with another token length
SOURCES = [
    "the official capital city of France is",
    "the official capital city of Japan is",
    "the official capital city of Peru is",
    "the official capital city of Italy is",
]


def _capital_relation(facts: list[tuple[str, str]]) -> Relation:
    """A one-template country → capital relation of the given (subject, object) facts."""
    return factual_relation("country capital", "the capital of {} is", facts, "country", "city")


def _lens_table(rows: dict[int, list[tuple[int, float]]]) -> pd.DataFrame:
    """Hand-built logit-lens table: per prompt, (rank at the last position, best subject rank) per layer -1 … 2."""
    records = []
    for index, per_layer in rows.items():
        for layer, (rank, subject_rank) in enumerate(per_layer, start=-1):
            records.append(
                {
                    "prompt_index": index,
                    "prompt": f"p{index}",
                    "layer": layer,
                    "rank": rank,
                    "subject_rank": subject_rank,
                }
            )
    return pd.DataFrame.from_records(records)


# ----------------------------------------------------------------------------- classification
HAND_LENS = _lens_table(
    {
        0: [(40, 30.0), (9, 0.0), (3, 1.0), (0, 0.0)],  # correct: top-1 at the end
        1: [(50, 9.0), (8, 1.0), (6, 4.0), (3, 5.0)],  # wrong; the subject ranks it 1 after block 0
        2: [(60, 70.0), (1, 50.0), (4, 40.0), (5, 40.0)],  # wrong; only the last position, after block 0
        3: [(30, 2.0), (10, 3.0), (12, 9.0), (7, 8.0)],  # wrong; subject exactly at the threshold, in the embeddings
        4: [(90, 90.0), (80, 80.0), (70, 70.0), (60, 60.0)],  # wrong; nowhere
        5: [
            (20, 9.0),
            (2, 0.0),
            (0, 1.0),
            (1, 1.0),
        ],  # wrong; top-1 at the last position before the end, and the subject
    }
)


def test_classification_of_a_hand_built_lens_table():
    table = fk.classify_from_lens(HAND_LENS, subject_max_rank=2, last_max_rank=2)
    assert table["kind"].tolist() == [
        "correct",
        "knowledge_present",
        "knowledge_absent",
        "knowledge_present",
        "knowledge_absent",
        "knowledge_present",
    ]
    assert table["final_rank"].tolist() == [0, 3, 5, 7, 60, 1]
    assert table["subject_best_rank"].tolist() == [0.0, 1.0, 40.0, 2.0, 60.0, 0.0]
    assert table["subject_best_layer"].tolist() == [0.0, 0.0, 1.0, -1.0, 2.0, 0.0]
    # the last position's best rank is read before the final layer
    assert table["last_best_rank"].tolist() == [3.0, 6.0, 1.0, 10.0, 70.0, 0.0]
    assert table["last_best_layer"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert table["prompt"].tolist() == [f"p{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("rule", "kinds"),
    [
        (
            "last",
            [
                "correct",
                "knowledge_absent",
                "knowledge_present",
                "knowledge_absent",
                "knowledge_absent",
                "knowledge_present",
            ],
        ),
        (
            "either",
            [
                "correct",
                "knowledge_present",
                "knowledge_present",
                "knowledge_present",
                "knowledge_absent",
                "knowledge_present",
            ],
        ),
        (
            "both",
            [
                "correct",
                "knowledge_absent",
                "knowledge_absent",
                "knowledge_absent",
                "knowledge_absent",
                "knowledge_present",
            ],
        ),
    ],
)
def test_classification_rules(rule, kinds):
    assert fk.classify_from_lens(HAND_LENS, 2, 2, rule)["kind"].tolist() == kinds


def test_classification_thresholds_move_the_boundary():
    strict = fk.classify_from_lens(HAND_LENS, subject_max_rank=0)
    assert strict["kind"].tolist()[1] == "knowledge_absent" and strict["kind"].tolist()[3] == "knowledge_absent"
    loose = fk.classify_from_lens(HAND_LENS, subject_max_rank=40)
    assert loose["kind"].tolist()[2] == "knowledge_present"


def test_classification_bad_inputs():
    with pytest.raises(ValueError, match="lacks columns"):
        fk.classify_from_lens(HAND_LENS.drop(columns="subject_rank"))
    with pytest.raises(ValueError, match="unknown rule"):
        fk.classify_from_lens(HAND_LENS, rule="any")
    with pytest.raises(ValueError, match="subject_max_rank must be a whole number"):
        fk.classify_from_lens(HAND_LENS, subject_max_rank=-1)
    with pytest.raises(ValueError, match="last_max_rank must be a whole number"):
        fk.classify_from_lens(HAND_LENS, last_max_rank=1.5)
    with pytest.raises(ValueError, match="no subject ranks"):
        fk.classify_from_lens(HAND_LENS.assign(subject_rank=np.nan))
    assert fk.classify_from_lens(HAND_LENS.assign(subject_rank=np.nan), rule="last")["kind"].iloc[2] == (
        "knowledge_present"
    )
    with pytest.raises(ValueError, match="empty"):
        fk.classify_from_lens(HAND_LENS.iloc[:0])


def test_classify_prompts_agrees_with_the_model(tiny_model):
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    table = fk.classify_prompts(tiny_model, batch, SUBJECTS, subject_max_rank=5)
    with torch.no_grad():
        final = answer_logits(models.run_with_hooks(tiny_model, batch.clean), batch).softmax(-1)
    assert table["prediction_id"].tolist() == final.argmax(-1).tolist()
    np.testing.assert_allclose(table["confidence"], final.max(-1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(table["answer_prob"], final[torch.arange(4), batch.answer].numpy(), rtol=1e-5)
    assert ((table["final_rank"] == 0) == (table["kind"] == "correct")).all()
    expected = fk.classify_from_lens(logit_lens(tiny_model, batch, SUBJECTS), subject_max_rank=5)
    assert table["kind"].tolist() == expected["kind"].tolist()


def test_rank_curves_on_the_hand_table():
    curves = fk.rank_curves(HAND_LENS, max_rank=2)
    assert curves["layer"].tolist() == [-1, 0, 1, 2]
    assert curves.loc[curves["layer"] == 0, "subject_share"].item() == pytest.approx(3 / 6)  # 0, 1, 0 … of 6
    assert curves.loc[curves["layer"] == 2, "last_median_rank"].item() == pytest.approx(4.0)  # 0 1 3 5 7 60


# ----------------------------------------------------------------------------- wrong answers
INDEX = AttributeIndex.from_token_facts(
    [
        ("occupation", "Fermi", 10),
        ("language", "Fermi", 20),
        ("occupation", "Kant", 11),
        ("language", "Kant", 21),
        ("occupation", "Curie", 10),
        ("language", "Curie", 22),
        ("birthplace", "Curie", 11),
        ("occupation", "Mann", 21),  # a writer whose occupation token is also Kant's language token
    ]
)


def test_wrong_answer_kinds_on_a_hand_made_index():
    named = name_wrong_answers(
        INDEX,
        "occupation",
        ["Fermi", "Fermi", "Kant", "Kant", "Curie", "Fermi"],
        [20, 11, 21, 99, 11, 10],
        answers=[10, 10, 11, 11, 10, 10],
    )
    assert named["kind"].tolist() == [
        "same_subject",
        "relation_object",
        "same_subject",
        "other",
        "same_subject",
        "correct",
    ]
    assert named["relations"].tolist() == ["language", "", "language", "", "birthplace", ""]
    # Kant's language token is also Mann's occupation; Curie's birthplace token is Kant's occupation
    assert named["also_relation_object"].tolist() == [False, True, True, False, True, True]
    assert named["other_subjects"].tolist() == ["", "Kant", "Mann", "", "Kant", "Curie"]


def test_wrong_answers_bad_inputs():
    with pytest.raises(ValueError, match="one subject, one prediction"):
        name_wrong_answers(INDEX, "occupation", ["Fermi"], [1, 2])
    with pytest.raises(ValueError, match="no facts in the index"):
        name_wrong_answers(INDEX, "currency", ["Fermi"], [1])
    with pytest.raises(ValueError, match="max_listed"):
        name_wrong_answers(INDEX, "occupation", ["Fermi"], [1], max_listed=-1)


def test_attribute_index_from_relations_reads_each_object_after_its_prompt(tiny_model):
    relation = _capital_relation([("France", "Paris"), ("Japan", "Tokyo")])
    index = AttributeIndex.from_relations(tiny_model, {"country_capital": relation})
    paris = models.continuation_first_token(tiny_model, "the capital of France is", "Paris")
    assert index.by_subject["France"] == {paris: ("country_capital",)}
    assert index.by_relation["country_capital"][paris] == ("France",)
    with pytest.raises(ValueError, match="template_index 3 out of range"):
        AttributeIndex.from_relations(tiny_model, {"country_capital": relation}, template_index=3)


# ----------------------------------------------------------------------------- components
@pytest.fixture()
def wrong_batch(tiny_model):
    """The four prompts with, as 'wrong' answer, the tiny model's own top-1 (or its second choice)."""
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    with torch.no_grad():
        final = answer_logits(models.run_with_hooks(tiny_model, batch.clean), batch)
    top2 = final.topk(2, dim=-1).indices
    wrong = torch.where(top2[:, 0] == batch.answer, top2[:, 1], top2[:, 0])
    return wah.with_wrong_answers(batch, wrong)


def test_wrong_minus_correct_metric_and_its_batch(tiny_model, wrong_batch):
    with torch.no_grad():
        logits = models.run_with_hooks(tiny_model, wrong_batch.clean)
    final = answer_logits(logits, wrong_batch)
    rows = torch.arange(len(wrong_batch))
    expected = final[rows, wrong_batch.corrupt_answer] - final[rows, wrong_batch.answer]
    torch.testing.assert_close(wah.wrong_minus_correct(logits, wrong_batch), expected)
    sub = wrong_batch.select([2, 0])  # the wrong answers travel with a sub-batch
    assert sub.corrupt_answer.tolist() == [wrong_batch.corrupt_answer[2].item(), wrong_batch.corrupt_answer[0].item()]
    with pytest.raises(ValueError, match="one wrong-answer token per prompt"):
        wah.with_wrong_answers(wrong_batch, [1, 2])
    with pytest.raises(ValueError, match="have the correct answer"):
        wah.with_wrong_answers(wrong_batch, wrong_batch.answer)


def test_head_logit_difference_matches_projections_and_the_model(tiny_model, wrong_batch):
    table = wah.head_logit_difference(tiny_model, wrong_batch, SUBJECTS)
    with torch.no_grad():
        logits = models.run_with_hooks(tiny_model, wrong_batch.clean)
    margin = wah.wrong_minus_correct(logits, wrong_batch)
    for i in range(len(wrong_batch)):
        assert table.loc[table["prompt_index"] == i, "logit_diff"].iloc[0] == pytest.approx(float(margin[i]), abs=1e-4)
    for head in ("a0.h1", "a1.h3"):
        wrong = project_node(tiny_model, wrong_batch, head, targets=wrong_batch.corrupt_answer)["target_logit"]
        correct = project_node(tiny_model, wrong_batch, head)["target_logit"]
        rows = table[table["head"] == head].sort_values("prompt_index")
        np.testing.assert_allclose(rows["dla_wrong"], wrong, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rows["dla_diff"], wrong - correct, rtol=1e-4, atol=1e-5)
    assert table[["attn_subject", "attn_relation"]].sum(axis=1).le(1 + 1e-5).all()
    with pytest.raises(ValueError, match="no wrong answers"):
        wah.head_logit_difference(tiny_model, make_batch(tiny_model, PROMPTS, ANSWERS), SUBJECTS)


def test_wrong_answer_circuit_scores_edges(tiny_model, wrong_batch):
    graph = wah.wrong_answer_circuit(tiny_model, wrong_batch, ig_steps=2, progress=False)
    assert bool((graph.scores != 0).any())
    nodes = wah.upstream_node_scores(graph)
    assert set(nodes["node"]) == set(graph.upstream_names)
    assert nodes["share"].sum() == pytest.approx(1.0)
    assert nodes["abs_score"].is_monotonic_decreasing


def _head_table(rows: dict[int, tuple[float, list[float]]]) -> pd.DataFrame:
    records = []
    for index, (margin, diffs) in rows.items():
        for h, diff in enumerate(diffs):
            records.append(
                {
                    "prompt_index": index,
                    "head": f"a1.h{h}",
                    "dla_diff": diff,
                    "dla_wrong": diff,
                    "dla_correct": 0.0,
                    "logit_diff": margin,
                    "attn_subject": 0.1 * h,
                    "attn_relation": 0.0,
                    "top_key": "x",
                }
            )
    return pd.DataFrame.from_records(records)


def test_explaining_heads_on_a_hand_made_table():
    table = _head_table(
        {
            0: (2.0, [3.0, 0.5, -1.0]),  # one head outweighs the margin
            1: (2.0, [1.0, 0.2, 1.5]),  # two heads: 1.5 + 1.0 > 2
            2: (5.0, [1.0, 1.0, 1.0]),  # three heads are not enough
            3: (-1.0, [2.0, 0.0, 0.0]),  # not a failure
        }
    )
    explained = wah.explaining_heads(table, max_size=3)
    assert explained["n_heads"].tolist()[:2] == [1.0, 2.0]
    assert np.isnan(explained["n_heads"].iloc[2]) and np.isnan(explained["n_heads"].iloc[3])
    assert explained["heads"].tolist() == ["a1.h0", "a1.h2, a1.h0", "", ""]
    assert explained["by_one_head"].tolist() == [True, False, False, False]
    assert explained["by_small_set"].tolist() == [True, True, False, False]
    assert wah.explaining_heads(table, max_size=1)["by_small_set"].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="max_size"):
        wah.explaining_heads(table, max_size=0)
    with pytest.raises(ValueError, match="lacks"):
        wah.explaining_heads(table.drop(columns="logit_diff"))

    ranked = wah.rank_heads(table)
    assert ranked["head"].tolist() == ["a1.h0", "a1.h1", "a1.h2"]  # mean dla_diff 1.75, 0.425, 0.375
    assert ranked["mean_dla_diff"].tolist() == pytest.approx([1.75, 0.425, 0.375])
    assert ranked["top_share"].tolist() == [0.75, 0.0, 0.25]  # a tie (prompt 2) goes to the first head


# ----------------------------------------------------------------------------- repair
def _patched_by_hand(model, batch, source, layer, head):
    _, cache = models.run_with_cache(model, source.clean, [models.head_result_hook(layer)])
    rows = torch.arange(len(batch))
    taken = cache[models.head_result_hook(layer)][rows, source.last_pos, head]

    def swap(result, hook):
        result = result.clone()
        result[rows, batch.last_pos, head] = taken
        return result

    with torch.no_grad():
        return models.run_with_hooks(model, batch.clean, [(models.head_result_hook(layer), swap)])


def test_patching_from_other_prompts_equals_a_hand_made_swap(tiny_model):
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    source = make_batch(tiny_model, SOURCES, ANSWERS)
    assert source.clean.shape[1] != batch.clean.shape[1]
    logits = rep.patch_heads_from_prompts(tiny_model, batch, source, ["a1.h2"])
    torch.testing.assert_close(logits, _patched_by_hand(tiny_model, batch, source, 1, 2))
    # patching from the very same prompts changes nothing
    with torch.no_grad():
        clean = models.run_with_hooks(tiny_model, batch.clean)
    torch.testing.assert_close(rep.patch_heads_from_prompts(tiny_model, batch, batch, ["a0.h0", "a1.h1"]), clean)
    with pytest.raises(ValueError, match="pair them one to one"):
        rep.patch_heads_from_prompts(tiny_model, batch, source.select([0, 1]), ["a1.h2"])
    with pytest.raises(ValueError, match="empty"):
        rep.patch_heads_from_prompts(tiny_model, batch, source, [])


def test_patching_resumed_at_the_lowest_patched_layer_is_the_same(tiny_model):
    """With the batch's streams recorded once, a patched pass resumes at its lowest layer: the same logits as the
    hand-made swap at every layer."""
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    source = make_batch(tiny_model, SOURCES, ANSWERS)
    entering = models.streams_entering(tiny_model, batch.clean, range(tiny_model.cfg.n_layers))
    for layer in range(tiny_model.cfg.n_layers):
        resumed = rep.patch_heads_from_prompts(tiny_model, batch, source, [f"a{layer}.h2"], None, True, entering)
        by_hand = _patched_by_hand(tiny_model, batch, source, layer, 2)
        rows = torch.arange(len(batch))
        torch.testing.assert_close(resumed[:, 0], by_hand[rows, batch.last_pos], atol=1e-5, rtol=1e-5)


def test_repairs_with_several_sets_per_pass_equal_one_full_pass_per_set(tiny_model):
    """``repair`` and ``repair_by_each_head`` run their head sets side by side, each pass resumed at its sets'
    lowest layer: every row equals the one a full pass per set gives (``patch_heads_from_prompts``)."""
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    source = make_batch(tiny_model, SOURCES, ANSWERS)
    seen = batch.at_last_position()
    heads = all_heads(tiny_model)
    each = rep.repair_by_each_head(tiny_model, batch, source, heads)
    for head in heads:
        alone = rep.patch_heads_from_prompts(tiny_model, batch, source, [head], last_only=True)[:, 0].float()
        got = each[each["head"] == head].sort_values("prompt_index")
        assert got["answer_rank"].tolist() == rank_of(alone, batch.answer).tolist()
    table = rep.repair(tiny_model, batch, ["a1.h2", "a0.h1"], "patch", source=source, n_random=9, progress=False)
    assert len(table) == 11
    for _, row in table.iloc[1:].iterrows():
        alone = rep.patch_heads_from_prompts(tiny_model, batch, source, list(row["heads"]), last_only=True)
        expected = score_row(row["set"], row["heads"], alone, seen, row["draw"])
        assert row["top1"] == expected["top1"] and row["prob"] == pytest.approx(expected["prob"], rel=1e-5, abs=1e-7)


def test_repair_rate_where_the_answer_is_known(tiny_model):
    """Answers chosen as the patched (or ablated) run's top-1: the intervention repairs every prompt."""
    probe = make_batch(tiny_model, PROMPTS, ANSWERS)
    source = make_batch(tiny_model, SOURCES, ANSWERS)
    target = answer_logits(_patched_by_hand(tiny_model, probe, source, 1, 2), probe).argmax(-1)
    with torch.no_grad():
        before = answer_logits(models.run_with_hooks(tiny_model, probe.clean), probe).argmax(-1)
    answers = models.token_strings(tiny_model, target.tolist())
    batch = make_batch(tiny_model, PROMPTS, answers)
    assert batch.answer.tolist() == target.tolist()
    table = rep.repair(tiny_model, batch, ["a1.h2"], "patch", source=source, n_random=20, progress=False)
    others = [h for h in all_heads(tiny_model) if h != "a1.h2"]
    assert len(others) <= 20  # few enough single heads: the baseline is all of them, each once
    assert list(table["set"]) == ["none", "group"] + ["random"] * len(others)
    assert [h for (h,) in table.loc[table["set"] == "random", "heads"]] == others
    sampled = rep.repair(tiny_model, batch, ["a1.h2"], "patch", source=source, n_random=3, progress=False)
    assert (sampled["set"] == "random").sum() == 3  # more sets than n_random: n_random draws
    summary = group_ablation_summary(table)
    assert summary["top1_group"] == 1.0
    assert summary["top1_original"] == pytest.approx(float((before == target).float().mean()))
    assert not any("a1.h2" in heads for heads in table.loc[table["set"] == "random", "heads"])
    each = rep.repair_by_each_head(tiny_model, batch, source, ["a1.h2", "a0.h0"])
    assert each.loc[each["head"] == "a1.h2", "repaired"].all()

    ablated = answer_logits(run_with_heads_ablated(tiny_model, probe, ["a1.h0", "a1.h3"], "zero"), probe).argmax(-1)
    batch = make_batch(tiny_model, PROMPTS, models.token_strings(tiny_model, ablated.tolist()))
    table = rep.repair(tiny_model, batch, ["a1.h0", "a1.h3"], "zero", n_random=20, progress=False)
    assert group_ablation_summary(table)["top1_group"] == 1.0


def test_repair_bad_inputs(tiny_model):
    batch = make_batch(tiny_model, PROMPTS, ANSWERS)
    with pytest.raises(ValueError, match="unknown intervention"):
        rep.repair(tiny_model, batch, ["a1.h0"], "swap")
    with pytest.raises(ValueError, match="needs a source batch"):
        rep.repair(tiny_model, batch, ["a1.h0"], "patch")
    with pytest.raises(ValueError, match="cannot draw 5 heads"):
        rep.repair(
            tiny_model,
            batch,
            ["a1.h0"] * 1 + ["a1.h1", "a1.h2", "a1.h3", "a0.h0"],
            "patch",
            source=batch,
            pool=["a0.h1", "a0.h2"],
            progress=False,
        )


def test_analyse_failures_end_to_end(tiny_gpt2):
    index = AttributeIndex.from_token_facts(
        [
            ("capital", s, models.continuation_first_token(tiny_gpt2, p, a))
            for p, s, a in zip(PROMPTS, SUBJECTS, ANSWERS)
        ]
    )
    analysis = hal.analyse_failures(
        tiny_gpt2,
        "capital",
        SUBJECTS,
        ANSWERS,
        "the capital of {} is",
        "the official capital city of {} is",
        index,
        subject_max_rank=10_000,
        n_random=3,
    )
    kinds = analysis.kinds
    assert analysis.failures == kinds.index[kinds["kind"] == "knowledge_present"].tolist()
    row = hal.failure_summary(analysis, "capital")
    assert row["n_prompts"] == 4 and row["n_present"] == len(analysis.failures)
    if len(analysis.failures) >= rep.MIN_HOLDOUT_FAILURES:  # a random tiny model gets most of these wrong
        assert row["n_random"] == 3 and 0 <= row["repaired"] <= 1 and 0 < row["p_value"] <= 1
        assert row["top_head"] == analysis.heads["head"].iloc[0]
        # heads are chosen on one half and scored on the other, never on the same failures
        assert set(analysis.choose).isdisjoint(analysis.held_out)
        assert sorted(analysis.choose + analysis.held_out) == list(range(len(analysis.failures)))
        assert (analysis.repairs[1]["n_prompts"] == len(analysis.held_out)).all()
        assert row["n_held_out"] == len(analysis.held_out) and row["best_single_head"]
    else:
        assert analysis.repairs == {} and np.isnan(row["repaired"]) and row["n_held_out"] == 0
    with pytest.raises(ValueError, match="needs a source_template"):
        hal.analyse_failures(tiny_gpt2, "capital", SUBJECTS, ANSWERS, "the capital of {} is", None, index)
    with pytest.raises(ValueError, match="'{}'"):
        hal.analyse_failures(tiny_gpt2, "capital", SUBJECTS, ANSWERS, "the capital is", "x {}", index)


# ----------------------------------------------------------------------------- sentences
def test_describe_kinds_on_a_hand_made_table():
    kinds = pd.DataFrame(
        {
            "group": ["unseen"] * 5 + ["held out"] * 2,
            "kind": ["correct", "knowledge_present", "knowledge_present", "knowledge_absent", "correct"]
            + ["knowledge_absent", "knowledge_absent"],
            "confidence": [0.9, 0.8, 0.6, 0.5, 0.9, 0.4, 0.6],
        }
    )
    assert prose.describe_kinds(kinds) == (
        "unseen: 5 prompts, 2 of 5 (40%) correct; of the 3 wrong, 2 of 3 (67%) knowledge-present "
        "(mean confidence 0.70) and 1 of 3 (33%) knowledge-absent (mean confidence 0.50).\n"
        "held out: 2 prompts, 0 of 2 (0%) correct; of the 2 wrong, 0 of 2 (0%) knowledge-present (none) "
        "and 2 of 2 (100%) knowledge-absent (mean confidence 0.50)."
    )
    with pytest.raises(ValueError, match="unknown kinds"):
        prose.describe_kinds(kinds.assign(kind="wrong"))
    with pytest.raises(ValueError, match="lacks columns"):
        prose.describe_kinds(kinds.drop(columns="confidence"))


def test_describe_repair_on_hand_made_summaries():
    summary = {
        "top1_original": 0.0,
        "top1_group": 0.5,
        "top1_random_mean": 0.1,
        "top1_random_std": 0.1,
        "n_random": 20,
        "p_value": 1 / 21,
        "n_prompts": 23,
    }
    text = prose.describe_repair(summary, ["a2.h2"], chosen="chosen on the other 23 failures")
    assert text == (
        "Of 23 held-out failures, the correct answer is top-1 for 0% before any intervention; patching a2.h2 (chosen "
        "on the other 23 failures) makes it top-1 for 50%, against 10% ± 10% for 20 random sets of 1 head "
        "(p = 0.05, permutation over the random sets). The set beats the random sets at p < 0.05."
    )
    few = prose.describe_repair(summary | {"n_random": 11, "p_value": 1 / 12}, ["a2.h2"])
    assert few.endswith(
        "With 11 random sets the smallest p-value possible is 1/12 = 0.08, so no set of this size can "
        "reach p < 0.05 here."
    )
    weak = prose.describe_repair(summary | {"top1_random_std": 0.3, "p_value": 0.2}, ["a2.h2", "a1.h0"], "mean")
    assert "mean-ablating a2.h2, a1.h0 makes" in weak and "2 heads" in weak and "does not beat" in weak
    assert "p = 0.20" in weak
    flat = prose.describe_repair(summary | {"top1_random_mean": 0.0, "top1_random_std": 0.0}, ["a2.h2"])
    assert "degenerate" in flat
    with pytest.raises(ValueError, match="lacks"):
        prose.describe_repair({"top1_group": 0.5}, ["a2.h2"])


def test_describe_untested_repair_says_how_many_failures_and_what_to_raise():
    text = prose.describe_untested_repair("country_language", 1, 48)
    assert text.startswith("**Repair not tested on `country_language`**: 1 knowledge-present failure among 48 facts")
    assert f"needs at least {rep.MIN_HOLDOUT_FAILURES}" in text and "`n_prompts` or `max_failures`" in text
    assert "3 knowledge-present failures among 10" in prose.describe_untested_repair("r", 3, 10)
    with pytest.raises(ValueError, match="enough for a held-out repair"):
        prose.describe_untested_repair("r", rep.MIN_HOLDOUT_FAILURES, 10)


def test_baseline_head_sets_are_exhaustive_when_few():
    pool = ["a1.h0", "a1.h1", "a1.h2", "a1.h3"]
    assert rep.baseline_head_sets(pool, 2, 10, exclude=["a1.h0"]) == [
        ["a1.h1", "a1.h2"],
        ["a1.h1", "a1.h3"],
        ["a1.h2", "a1.h3"],
    ]
    drawn = rep.baseline_head_sets(pool, 2, 2, seed=1)
    assert len(drawn) == 2 and drawn == rep.baseline_head_sets(pool, 2, 2, seed=1)
    with pytest.raises(ValueError, match="cannot draw 5 heads"):
        rep.baseline_head_sets(pool, 5, 10)


def test_permutation_p_value_and_split_on_hand_made_values():
    # the tested set repairs 0.5; random sets 0.1, 0.5, 0.7 and 0.2: two of four are at least as high
    assert rep.permutation_p_value(0.5, [0.1, 0.5, 0.7, 0.2]) == pytest.approx(3 / 5)
    assert rep.permutation_p_value(0.9, [0.1] * 19) == pytest.approx(1 / 20)  # never 0
    assert np.isnan(rep.permutation_p_value(0.5, []))
    choose, held = rep.split_failures(9, seed=0)
    assert len(choose) == 5 and len(held) == 4 and sorted(choose + held) == list(range(9))
    assert rep.split_failures(9, seed=0) == (choose, held)  # deterministic
    with pytest.raises(ValueError, match="at least 4"):
        rep.split_failures(3)
    table = pd.DataFrame(
        {
            "set": ["none", "group", "random", "random", "random"],
            "heads": [(), ("a1.h0",), ("a1.h1",), ("a1.h2",), ("a1.h1",)],
            "top1": [0.0, 0.5, 0.5, 0.0, 0.25],
            "prob": [0.1, 0.4, 0.4, 0.1, 0.2],
            "n_prompts": 4,
        }
    )
    summary = rep.repair_summary(table)
    assert summary["p_value"] == pytest.approx(2 / 4) and summary["n_distinct"] == 2 and summary["n_prompts"] == 4


def test_pick_case_prefers_a_confident_same_subject_failure():
    kinds = pd.DataFrame(
        {
            "kind": ["correct", "knowledge_present", "knowledge_present", "knowledge_present", "knowledge_absent"],
            "wrong_kind": ["correct", "other", "same_subject", "same_subject", "same_subject"],
            "confidence": [0.99, 0.95, 0.6, 0.7, 0.98],
        }
    )
    assert fk.pick_case(kinds) == 3
    assert fk.pick_case(kinds.assign(wrong_kind="other")) == 1
    with pytest.raises(ValueError, match="no knowledge-present failure"):
        fk.pick_case(kinds.assign(kind="correct"))


def test_describe_wrong_answers_on_a_hand_made_table():
    kinds = pd.DataFrame(
        {
            "group": ["known"] * 5 + ["unknown"],
            "wrong_kind": ["correct", "same_subject", "same_subject", "relation_object", "other", "correct"],
            "wrong_relations": ["", "language", "language", "", "", ""],
        }
    )
    assert prose.describe_wrong_answers(kinds) == (
        "known: of 4 wrong answers, 2 of 4 (50%) are another attribute of the subject (most often language, 2), "
        "1 of 4 (25%) an object of the asked relation for another subject and 1 of 4 (25%) neither.\n"
        "unknown: no wrong answers."
    )
    with pytest.raises(ValueError, match="classify_and_name"):
        prose.describe_wrong_answers(kinds.drop(columns="wrong_kind"))


def test_case_summary_and_its_sentence_on_hand_made_tables():
    correct = _lens_table({0: [(50, 9.0), (8, 1.0), (0, 0.0), (2, 0.0)]}).assign(target="physicist", prompt="p")
    wrong = _lens_table({0: [(60, 3.0), (9, 0.0), (1, 0.0), (0, 0.0)]}).assign(target="Italian", prompt="p")
    heads = _head_table({0: (2.0, [0.5, 1.5, -0.2])})
    case = hal.case_summary(correct, wrong, heads, ["Italian", "German"])
    assert (case["correct_subject_rank"], case["correct_subject_layer"], case["correct_last_top1_layer"]) == (0, 1, 1)
    assert (case["wrong_subject_rank"], case["wrong_subject_layer"], case["wrong_last_top1_layer"]) == (0, 0, 2)
    assert case["head"] == "a1.h1" and case["head_share"] == pytest.approx(0.75)
    text = prose.describe_case(case)
    assert text.startswith("For 'p' the model answers 'Italian', not 'physicist'.")
    assert "'physicist' reaches rank 1 (1 = top-1) after block 1 and 'Italian' rank 1 after block 0" in text
    assert "both attributes are built up at the subject (within the top 3)" in text
    assert "'physicist' becomes top-1 after block 1 and 'Italian' becomes top-1 after block 2" in text
    assert "only 'Italian' is built up" in prose.describe_case(case | {"correct_subject_rank": 5.0})
    assert "'physicist' never becomes top-1" in prose.describe_case(case | {"correct_last_top1_layer": float("nan")})
    assert "a1.h1: it adds +1.50 to the logit of 'Italian' and +0.00 to that of 'physicist' (75% of" in text
    assert text.endswith("Its top tokens at the last position: Italian, German.")
    with pytest.raises(ValueError, match="lacks"):
        prose.describe_case({"prompt": "p"})


def test_describe_explained_and_survey_on_hand_made_tables():
    table = _head_table({0: (2.0, [3.0, 0.5, -1.0]), 1: (2.0, [1.0, 0.2, 1.5]), 2: (5.0, [1.0, 1.0, 1.0])})
    text = prose.describe_explained(wah.explaining_heads(table, 3), wah.rank_heads(table), 3)
    assert (
        "one head's direct contribution to logit(wrong) − logit(correct) is larger than the model's margin in "
        "1 of 3 (33%)" in text
    )
    assert (
        "at most 3 heads' in 2 of 3 (67%)" in text
        and "a1.h0 (+1.67 on average; the largest of all heads in 67%" in text
    )

    survey = pd.DataFrame(
        {
            "relation": ["a", "b", "c", "d"],
            "n_present": [10, 4, 0, 3],
            "n_held_out": [5, 2, 0, 0],
            "same_subject_share": [0.9, 0.0, np.nan, 1.0],
            "repair_heads": ["a2.h2", "a3.h3", "", ""],
            "repaired": [0.6, 0.0, np.nan, np.nan],
            "random_mean": [0.1, 0.0, np.nan, np.nan],
            "random_std": [0.1, 0.0, np.nan, np.nan],
            "p_value": [0.012, 1.0, np.nan, np.nan],
        }
    )
    assert prose.describe_survey(survey) == (
        "3 of 4 relations have knowledge-present failures: a (10; a2.h2 repairs 60% of 5 held out vs 10% ± 10%, "
        "p = 0.01), b (4; a3.h3 repairs 0% of 2 held out vs 0% ± 0%, p = 1.00), d (3; too few to hold out). In 2 of "
        "them most wrong answers are another attribute of the subject (a, d). Patching the single head with the "
        "largest mean contribution on half the failures beats random heads on the other half (p < 0.05) in 1 of the "
        "2 relations with enough failures to hold out (a)."
    )
    none = "None of the 4 relations has a knowledge-present failure."
    assert prose.describe_survey(survey.assign(n_present=0)) == none
    few = survey.assign(n_random=[11, 11, 0, 0], p_value=[1 / 12, 1.0, np.nan, np.nan])
    assert prose.describe_survey(few).endswith(
        "With at most 11 other heads to compare with, no single head can reach p < 0.05 (the smallest p-value is "
        "1/12); the head repairs more than every other head in 1 of them (a)."
    )


def test_describe_enrichment_on_hand_made_curves():
    known = fk.rank_curves(HAND_LENS.query("prompt_index < 3"), max_rank=2)
    text = prose.describe_enrichment({"known": known}, max_rank=2)
    # after block 0 the 0-based subject ranks are 0, 1, 50: two of three within the top 3, median 1 (rank 2, 1-based)
    assert text == (
        "The correct answer — known: 67% within the top 3 at the subject after block 0 (median rank 2, 1 = top-1), "
        "33% at the last position after the final block (median rank 4)."
    )
    with pytest.raises(ValueError, match="no layer 7"):
        prose.describe_enrichment({"known": known}, 2, layer=7)


def test_describe_departures_on_hand_made_tables():
    kinds = pd.DataFrame({"kind": ["correct", "knowledge_present", "knowledge_present", "knowledge_absent"]})
    known = pd.DataFrame({"kind": ["correct"] * 4})
    survey = pd.DataFrame(
        {"relation": ["country_currency"], "n_present": [9], "n_wrong": [10], "same_subject_share": [0.0]}
    )
    text = prose.describe_departures(4, "rel", "T {}", "S {}", kinds, known, survey)
    assert "has 4 layers" in text and "For rel, 2 of 3 (67%) wrong answers to 'T {}' are knowledge-present" in text
    assert "asked with 'S {}' are answered 100% correctly" in text
    assert text.endswith(
        "country_currency, is asked here with a never-trained template as well: 9 of 10 (90%) of its wrong answers "
        "are knowledge-present, and 0% of those are another attribute of the subject (the paper's 'Malaysian' is one)."
    )
    with pytest.raises(ValueError, match="kind"):
        prose.describe_departures(4, "rel", "T {}", "S {}", kinds.rename(columns={"kind": "k"}), known)


def test_describe_departures_of_a_pretrained_model_never_speaks_of_the_organism():
    kinds = pd.DataFrame({"kind": ["correct", "knowledge_present", "knowledge_absent", "knowledge_absent"]})
    known = pd.DataFrame({"kind": ["correct", "correct", "knowledge_absent", "correct"]})
    survey = pd.DataFrame(
        {"relation": ["country_currency"], "n_present": [1], "n_wrong": [4], "same_subject_share": [1.0]}
    )
    text = prose.describe_departures(30, "rel", "T {}", "S {}", kinds, known, survey, organism=False)
    assert text.startswith("The model has 30 layers (not GPT-2 medium's 24) and is pretrained on web text")
    assert "For rel, 1 of 3 (33%) wrong answers to 'T {}' are knowledge-present" in text
    assert "asked with 'S {}' are answered 75% correctly" in text
    assert "is asked here in its last template: 1 of 4 (25%)" in text
    assert "organism" not in text and "trained on the 21 relation files" not in text
    none_present = survey.assign(n_present=0, same_subject_share=np.nan)
    text = prose.describe_departures(30, "rel", "T {}", "S {}", kinds, known, none_present, organism=False)
    assert text.endswith(
        "0 of 4 (0%) of its wrong answers are knowledge-present, so none of them can be the paper's kind of failure "
        "(its 'Malaysian' is one)."
    )
    assert "nan" not in text
    same_depth = prose.describe_departures(24, "rel", "T {}", "S {}", kinds, known, organism=False)
    assert "24 layers (as GPT-2 medium has)" in same_depth


def test_answered_and_unknown_split_a_classification_by_position():
    kinds = pd.DataFrame(
        {"kind": ["correct", "knowledge_absent", "knowledge_present", "correct", "knowledge_absent"]},
        index=[10, 11, 12, 13, 14],
    )
    assert fk.answered_and_unknown(kinds) == {"answered": [0, 3], "unknown": [1, 4]}
    with pytest.raises(ValueError, match="kind"):
        fk.answered_and_unknown(kinds.rename(columns={"kind": "k"}))


# ----------------------------------------------------------------------------- the relation read in detail
def test_pick_failing_relation_on_a_hand_made_table():
    from kc_utils.analysis.failing_relation import pick_failing_relation

    counts = pd.DataFrame(
        {
            "relation": ["b_rel", "a_rel", "c_rel"],
            "template": ["{} b", "{} a", "{} c"],
            "n_prompts": [10, 10, 10],
            "correct": [2, 5, 10],
            "knowledge_present": [4, 4, 0],
            "knowledge_absent": [4, 1, 0],
        }
    )
    assert pick_failing_relation(counts) == "a_rel"  # a tie on failures goes to the name
    assert pick_failing_relation(counts.iloc[[0, 2]]) == "b_rel"
    with pytest.raises(ValueError, match="no relation has 5 knowledge-present.*the most: 4"):
        pick_failing_relation(counts, minimum=5)
    with pytest.raises(ValueError, match="no relation was classified"):
        pick_failing_relation(counts.iloc[:0])


def test_failure_counts_agree_with_the_classification(tiny_model):
    from kc_utils.analysis.failing_relation import COUNT_COLUMNS, failure_counts

    relation = _capital_relation(list(zip(SUBJECTS, ANSWERS)))
    index = AttributeIndex.from_relations(tiny_model, {"country_capital": relation})
    pairs = list(zip(SUBJECTS, ANSWERS))
    facts = {"country_capital": ("the capital of {} is", pairs), "empty": ("the {} is", [])}
    counts = failure_counts(tiny_model, facts, index, progress=False, subject_max_rank=5)
    kinds, _ = fk.classify_and_name(
        tiny_model, "country_capital", SUBJECTS, ANSWERS, "the capital of {} is", index, subject_max_rank=5
    )
    assert list(counts["relation"]) == ["country_capital"]  # a relation without facts is not a row
    row = counts.iloc[0]
    assert row["n_prompts"] == 4 and sum(row[c] for c in COUNT_COLUMNS[1:]) == 4
    assert row["knowledge_present"] == (kinds["kind"] == "knowledge_present").sum()
    assert row["correct"] == (kinds["kind"] == "correct").sum()


def test_a_classification_read_back_equals_classifying_again(tiny_model, monkeypatch):
    relation = _capital_relation(list(zip(SUBJECTS, ANSWERS)))
    index = AttributeIndex.from_relations(tiny_model, {"country_capital": relation})
    template = "the capital of {} is"
    done = fk.classify_relation(tiny_model, "country_capital", SUBJECTS, ANSWERS, template, index, subject_max_rank=5)
    fresh = {
        n: fk.classify_and_name(tiny_model, "country_capital", SUBJECTS[:n], ANSWERS[:n], template, index, 5)
        for n in (2, 4)
    }

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although a classification served the call")

    monkeypatch.setattr(fk, "classify_prompts", no_model)
    for n, (kinds, batch) in fresh.items():
        read, read_batch = fk.classify_and_name(
            tiny_model, "country_capital", SUBJECTS[:n], ANSWERS[:n], template, index, 5, reuse=[done]
        )
        assert list(read.columns) == list(kinds.columns) and list(read.index) == list(kinds.index)
        for column in ("kind", "final_rank", "subject_best_rank", "prediction_id", "wrong_kind"):
            assert read[column].tolist() == kinds[column].tolist(), column
        np.testing.assert_allclose(read["confidence"], kinds["confidence"], rtol=1e-5)  # the first rows of a batch
        assert torch.equal(read_batch.clean, batch.clean) and read_batch.prompts == batch.prompts
    read.loc[0, "kind"] = "changed"  # a copy: the kept table does not change
    assert done.kinds.loc[0, "kind"] != "changed"


@pytest.mark.parametrize(
    "change",
    ["relation", "template", "threshold", "rule", "index", "not_a_prefix", "answers", "more_facts"],
)
def test_a_classification_serves_only_the_same_question(tiny_model, change):
    relation = _capital_relation(list(zip(SUBJECTS, ANSWERS)))
    index = AttributeIndex.from_relations(tiny_model, {"country_capital": relation})
    done = fk.classify_relation(tiny_model, "country_capital", SUBJECTS[:3], ANSWERS[:3], "the capital of {} is", index)
    asked = dict(
        relation="country_capital",
        subjects=SUBJECTS[:2],
        answers=ANSWERS[:2],
        template="the capital of {} is",
        thresholds=(2, 2, "subject"),
        index=index,
    )
    assert done.serves(**asked)
    changed = {
        "relation": {"relation": "capital"},
        "template": {"template": "the capital city of {} is"},
        "threshold": {"thresholds": (3, 2, "subject")},
        "rule": {"thresholds": (2, 2, "either")},
        "index": {"index": AttributeIndex.from_relations(tiny_model, {"country_capital": relation})},
        "not_a_prefix": {"subjects": SUBJECTS[1:3], "answers": ANSWERS[1:3]},
        "answers": {"answers": [ANSWERS[0], "Berlin"]},
        "more_facts": {"subjects": SUBJECTS, "answers": ANSWERS},
    }[change]
    assert not done.serves(**{**asked, **changed})
    with pytest.raises(ValueError, match="n must be between 1 and 3"):
        done.first(4)


def test_failure_counts_read_back_the_survey_classification(tiny_model, monkeypatch):
    from kc_utils.analysis import failing_relation as fr

    relation = _capital_relation(list(zip(SUBJECTS, ANSWERS)))
    index = AttributeIndex.from_relations(tiny_model, {"country_capital": relation})
    facts = {"country_capital": ("the capital of {} is", list(zip(SUBJECTS, ANSWERS))[:2])}
    counts = fr.failure_counts(tiny_model, facts, index, progress=False, subject_max_rank=5)
    done = fk.classify_relation(tiny_model, "country_capital", SUBJECTS, ANSWERS, "the capital of {} is", index, 5)
    monkeypatch.setattr(fk, "classify_prompts", lambda *a, **k: pytest.fail("the lens ran again"))
    again = fr.failure_counts(tiny_model, facts, index, progress=False, reuse=[done], subject_max_rank=5)
    pd.testing.assert_frame_equal(again, counts)


def test_the_survey_classifies_each_relation_once_and_the_analysis_reads_it(tiny_gpt2, monkeypatch):
    from types import SimpleNamespace

    from kc_utils.analysis import failing_relation as fr

    index = AttributeIndex.from_token_facts(
        [
            ("capital", s, models.continuation_first_token(tiny_gpt2, p, a))
            for p, s, a in zip(PROMPTS, SUBJECTS, ANSWERS)
        ]
    )
    fact = [SimpleNamespace(subject=s, object=a) for s, a in zip(SUBJECTS, ANSWERS)]
    split = SimpleNamespace(
        relations={
            "capital": SimpleNamespace(unseen_templates=["the capital of {} is"], trained=fact),
            "none": SimpleNamespace(unseen_templates=["{} is"], trained=[]),
        }
    )
    done = fr.split_classifications(
        tiny_gpt2, split, ["capital", "none"], index, 3, progress=False, subject_max_rank=10_000
    )
    assert [(d.relation, d.subjects, d.template) for d in done] == [
        ("capital", tuple(SUBJECTS[:3]), "the capital of {} is")
    ]
    arguments = (
        tiny_gpt2,
        "capital",
        SUBJECTS[:3],
        ANSWERS[:3],
        "the capital of {} is",
        "the official capital city of {} is",
        index,
    )
    before = hal.analyse_failures(*arguments, subject_max_rank=10_000, n_random=3)
    monkeypatch.setattr(fk, "classify_prompts", lambda *a, **k: pytest.fail("the lens ran again"))
    after = hal.analyse_failures(*arguments, subject_max_rank=10_000, n_random=3, reuse=done)
    pd.testing.assert_frame_equal(after.kinds, before.kinds)
    assert after.failures == before.failures
    if before.head_table is not None:
        pd.testing.assert_frame_equal(after.head_table, before.head_table)
    counts = fr.split_failure_counts(
        tiny_gpt2, split, ["capital"], index, 2, progress=False, reuse=done, subject_max_rank=10_000
    )
    assert counts.iloc[0]["n_prompts"] == 2
    assert counts.iloc[0]["knowledge_present"] == (before.kinds["kind"].iloc[:2] == "knowledge_present").sum()
