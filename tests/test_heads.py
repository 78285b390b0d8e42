"""Head roles (hand-made tables and tiny models) and head ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from relations import factual_relation

from kc_utils import models
from kc_utils.analysis import head_ablation as ablation
from kc_utils.analysis import heads, lens
from kc_utils.circuits.graph import Graph
from kc_utils.data.prompts import make_batch
from kc_utils.viz import lens as viz_lens

SUBJECTS = ["France", "New Zealand", "Japan", "South Korea"]


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


# ----------------------------------------------------------------------------- the role rule
COLUMNS = ["head", "attn_subject", "attn_relation", "dla", "relation_type_auc"]


def _table(rows):
    return pd.DataFrame(rows, columns=COLUMNS)


def test_role_rule_on_a_hand_made_table():
    table = _table(
        [
            ("mover", 1.0, 0.0, 2.0, 0.5),  # reads the subject, writes the answer
            ("mix", 0.5, 0.5, 1.5, 0.9),  # reads both, writes both
            ("relation", 0.0, 1.0, 0.2, 0.95),  # reads the relation words, promotes the relation's objects
            ("silent-subject", 1.0, 0.0, 0.4, 0.5),  # reads the subject, writes little
            ("suppressor", 0.0, 1.0, -2.0, 0.02),  # reads the relation words, suppresses its objects
            ("writer-elsewhere", 0.1, 0.1, 3.0, 0.9),  # writes a lot but reads neither (e.g. "The", BOS)
            ("reads-both-writes-answer", 0.5, 0.5, 1.5, 0.5),  # mover evidence only
        ]
    )
    roles = heads.assign_head_roles(table)
    assert roles["role"].tolist() == ["mover", "mix", "relation", "other", "other", "other", "mover"]
    assert {"reads_subject", "reads_relation", "writes_answer", "writes_relation"} <= set(roles.columns)
    assert table.columns.tolist() == COLUMNS  # not modified


def test_role_thresholds_are_parameters():
    table = _table([("h", 0.25, 0.25, 0.5, 0.7)])
    assert heads.assign_head_roles(table)["role"].item() == "other"
    assert heads.assign_head_roles(table, subject_threshold=0.2, min_dla=0.5)["role"].item() == "mover"
    assert heads.assign_head_roles(table, relation_threshold=0.2, min_type_auc=0.7)["role"].item() == "relation"
    both = dict(subject_threshold=0.2, relation_threshold=0.2, min_dla=0.5, min_type_auc=0.7)
    assert heads.assign_head_roles(table, **both)["role"].item() == "mix"
    nan_auc = _table([("h", 0.0, 1.0, 0.0, float("nan"))])  # no relation objects given: never a relation head
    assert heads.assign_head_roles(nan_auc)["role"].item() == "other"


def test_role_rule_rejects_bad_tables_and_thresholds():
    with pytest.raises(ValueError, match=r"lacks columns \['dla', 'relation_type_auc'\]"):
        heads.assign_head_roles(pd.DataFrame({"attn_subject": [0.5], "attn_relation": [0.1]}))
    with pytest.raises(ValueError, match="subject_threshold .* \\[0, 1\\]"):
        heads.assign_head_roles(_table([("h", 0.5, 0.1, 1.0, 0.5)]), subject_threshold=30)
    with pytest.raises(ValueError, match="unknown thresholds \\['max_answer_rank'\\]"):
        heads.assign_head_roles(_table([("h", 0.5, 0.1, 1.0, 0.5)]), max_answer_rank=20)


def test_role_sensitivity_counts_roles_along_each_threshold():
    table = _table(
        [
            ("a", 1.0, 0.0, 0.6, 0.5),  # mover only for min_dla <= 0.6
            ("b", 1.0, 0.0, 2.5, 0.5),  # mover up to min_dla 2.5
            ("c", 0.0, 0.8, 0.0, 0.8),  # relation for relation_threshold <= 0.8 and min_type_auc <= 0.8
        ]
    )
    grid = {"min_dla": (0.5, 1.0, 3.0), "relation_threshold": (0.3, 0.9), "min_type_auc": (0.75, 0.85)}
    table_s = heads.role_sensitivity(table, grid)
    assert table_s.columns.tolist() == ["threshold", "value", "is_reference", *heads.ROLES, "changed"]
    dla = table_s[table_s["threshold"] == "min_dla"].set_index("value")
    assert dla["mover"].tolist() == [2, 1, 0] and dla["other"].tolist() == [0, 1, 2]
    assert dla["changed"].tolist() == [1, 0, 1] and dla["is_reference"].tolist() == [False, True, False]
    rel = table_s[table_s["threshold"] == "relation_threshold"].set_index("value")
    assert rel["relation"].tolist() == [1, 0] and rel["changed"].tolist() == [0, 1]
    auc = table_s[table_s["threshold"] == "min_type_auc"].set_index("value")
    assert auc["relation"].tolist() == [1, 0]
    assert (table_s[list(heads.ROLES)].sum(axis=1) == 3).all()
    default = heads.role_sensitivity(table)
    assert set(default["threshold"]) == set(heads.SENSITIVITY_GRID)


def test_function_words():
    for token in ("The", " the", "\u0120of", "is", ",", "'s", "..."):
        assert heads.is_function_word(token), token
    for token in ("capital", " language", "official", "headquarters", "Paris"):
        assert not heads.is_function_word(token), token


def test_object_auc_against_pairwise_counting():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (2, 3, 25), generator=generator).float()  # many ties
    objects = torch.tensor([1, 3, 5, 8, 13, 21])
    answer = torch.randint(0, 25, (2, 3), generator=generator)
    answer[0, 0] = 3  # an answer that is one of the objects
    got = heads.object_auc(scores, objects, answer)
    for i in range(2):
        for j in range(3):
            a = int(answer[i, j])
            pos = [t for t in objects.tolist() if t != a]
            neg = [t for t in range(25) if t not in objects.tolist() and t != a]
            s = scores[i, j]
            wins = sum(float(s[p] > s[n]) + 0.5 * float(s[p] == s[n]) for p in pos for n in neg)
            assert got[i, j].item() == pytest.approx(wins / (len(pos) * len(neg)))
    ordered = torch.arange(10.0)[None]
    assert heads.object_auc(ordered, torch.tensor([7, 8, 9]), torch.tensor([0])).item() == 1.0
    assert heads.object_auc(ordered, torch.tensor([0, 1]), torch.tensor([9])).item() == 0.0


# ----------------------------------------------------------------------------- scores on a model
def test_position_masks_split_the_template_into_relation_and_function_words(tiny_model, batch):
    subject, relation, function = heads.position_masks(tiny_model, batch, SUBJECTS)
    # "<bos> the capital of New Zealand is": the, of = function; capital = relation; New Zealand = subject
    assert subject[1].nonzero().flatten().tolist() == [4, 5]
    assert relation[1].nonzero().flatten().tolist() == [2]
    assert function[1].nonzero().flatten().tolist() == [1, 3]
    # "<bos> the official language of Japan is": official language = relation words
    assert relation[2].nonzero().flatten().tolist() == [2, 3]
    assert not (subject & relation).any() and not (relation & function).any() and not (subject & function).any()


def test_head_scores_attention_split(tiny_model, batch):
    objects = batch.answer.tolist()
    scores = heads.head_scores(tiny_model, batch, SUBJECTS, object_tokens=objects, k=5)
    n_heads = tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    assert len(scores) == n_heads * len(batch)
    total = scores["attn_subject"] + scores["attn_relation"] + scores["attn_function"] + scores["attn_other"]
    assert (total - 1).abs().max() < 1e-5
    assert scores["relation_token_share"].between(0, 1).all()
    assert scores["relation_type_auc"].between(0, 1).all()

    # manual reading of a1.h3 on "<bos> the capital of New Zealand is"
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(batch.clean)
    pattern = cache["blocks.1.attn.hook_pattern"][1, 3, int(batch.last_pos[1])]
    row = scores[(scores["head"] == "a1.h3") & (scores["prompt_index"] == 1)].iloc[0]
    assert row["attn_subject"] == pytest.approx(float(pattern[4] + pattern[5]), abs=1e-6)
    assert row["attn_relation"] == pytest.approx(float(pattern[2]), abs=1e-6)
    assert row["attn_function"] == pytest.approx(float(pattern[1] + pattern[3]), abs=1e-6)

    names, dla = lens.component_logits(tiny_model, batch)
    assert row["dla"] == pytest.approx(float(dla[names.index("a1.h3"), 1]), abs=1e-6)
    projection = lens.project_node(tiny_model, batch, "a1.h3", k=5)
    assert row["answer_rank"] == projection["target_rank"][1]
    assert row["top_tokens"] == projection["top_tokens"][1]
    # the relation-type AUC is the AUC of the head's own projection (other objects vs the rest)
    full = lens.project_node(tiny_model, batch, "a1.h3", k=tiny_model.cfg.d_vocab)
    vocab_ids = tiny_model.tokenizer.convert_tokens_to_ids(full["top_tokens"][1])
    values = torch.empty(tiny_model.cfg.d_vocab)
    values[torch.tensor(vocab_ids)] = -torch.arange(len(vocab_ids), dtype=torch.float)  # rank order only
    expected = heads.object_auc(values[None], torch.tensor(sorted(set(objects))), batch.answer[1:2])
    assert row["relation_type_auc"] == pytest.approx(float(expected), abs=1e-6)


def test_head_roles_end_to_end_and_circuit_heads(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2).set_edges(["a0.h1->m1", "a1.h2->logits", "m1->logits"])
    assert heads.resolve_heads(tiny_gpt2, graph) == ["a0.h1", "a1.h2"]
    roles = heads.head_roles(
        tiny_gpt2,
        batch,
        SUBJECTS,
        heads=graph,
        object_tokens=batch.answer.tolist(),
        subject_threshold=0.0,
        min_dla=-1e9,
    )
    assert sorted(roles["head"]) == ["a0.h1", "a1.h2"]
    assert set(roles["role"]) <= {"mover", "mix"}  # every head reads the subject (threshold 0) and "writes"
    assert (roles["n_prompts"] == len(batch)).all()


def test_head_selection_errors(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    with pytest.raises(ValueError, match="'m0' is not an attention head"):
        heads.resolve_heads(tiny_gpt2, ["m0"])
    with pytest.raises(ValueError, match="list of names"):
        heads.resolve_heads(tiny_gpt2, "a0.h1")
    with pytest.raises(ValueError, match="subject 'Germany' not in prompt"):
        heads.head_scores(tiny_gpt2, batch, ["Germany", *SUBJECTS[1:]])


# ----------------------------------------------------------------------------- ablation
def test_zero_ablation_equals_a_zeroed_head(tiny_model, batch):
    """Reference: zero the head's attention-weighted values (hook_z), upstream of hook_result."""

    def zero_z(z, hook):
        z = z.clone()
        z[:, :, 2] = 0.0
        return z

    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_z)]):
        expected = tiny_model(batch.clean)
    got = ablation.run_with_heads_ablated(tiny_model, batch, ["a1.h2"], "zero")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert (got - tiny_model(batch.clean)).abs().max() > 1e-3


def test_mean_ablation_uses_the_mean_over_real_tokens(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    with torch.no_grad():
        _, cache = tiny_gpt2.run_with_cache(batch.clean)
    result = cache["blocks.0.attn.hook_result"][:, :, 1]  # [b, p, d]
    real = torch.cat([result[i, : int(batch.last_pos[i]) + 1] for i in range(len(batch))])
    mean = real.mean(0)

    def set_mean(act, hook):
        act = act.clone()
        act[:, :, 1] = mean
        return act

    with torch.no_grad(), tiny_gpt2.hooks(fwd_hooks=[("blocks.0.attn.hook_result", set_mean)]):
        expected = tiny_gpt2(batch.clean)
    got = ablation.run_with_heads_ablated(tiny_gpt2, batch, ["a0.h1"], "mean")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_head_ablation_effects(tiny_model, batch):
    objects = set(batch.answer.tolist())
    effects = ablation.head_ablation_effects(
        tiny_model, batch, ["a0.h0", "a1.h2"], "zero", k=4, object_tokens=objects, progress=False
    )
    assert effects["head"].tolist() == ["a0.h0", "a1.h2"]
    logits = ablation.run_with_heads_ablated(tiny_model, batch, ["a1.h2"], "zero")
    rows = torch.arange(len(batch))
    with torch.no_grad():
        clean = tiny_model(batch.clean)
    p_abl = logits[rows, batch.last_pos].softmax(-1)[rows, batch.answer]
    p_clean = clean[rows, batch.last_pos].softmax(-1)[rows, batch.answer]
    assert effects["delta_prob"][1] == pytest.approx(float((p_abl - p_clean).mean()), abs=1e-6)
    assert all(len(t) == 4 for t in effects["top_gaining"])
    assert effects["same_relation_share"].between(0, 1).all()
    assert effects["chance_share"][0] == pytest.approx((len(objects) - 1) / clean.shape[-1])

    # each head's pass resumes at its layer (a1.h2 at block 1): the same as a full pass, mean ablation too
    mean_effects = ablation.head_ablation_effects(tiny_model, batch, ["a1.h2"], "mean", k=4, progress=False)
    logits = ablation.run_with_heads_ablated(tiny_model, batch, ["a1.h2"], "mean")
    p_mean = logits[rows, batch.last_pos].softmax(-1)[rows, batch.answer]
    assert mean_effects["delta_prob"][0] == pytest.approx(float((p_mean - p_clean).mean()), abs=1e-6)

    roles = pd.DataFrame({"head": ["a0.h0", "a1.h2"], "role": ["mover", "mover"]})
    by_role = ablation.ablation_by_role(effects, roles)
    assert by_role["n_heads"].tolist() == [2]
    assert by_role["delta_prob"][0] == pytest.approx(effects["delta_prob"].mean())


def test_object_share_on_hand_made_tokens():
    gaining = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    share = ablation.object_share(gaining, {5, 6, 2}, exclude=torch.tensor([6, 9]))
    assert share.tolist() == [0.25, 0.25]  # row 0: 6 is its own answer and does not count


def test_relation_object_tokens(tiny_gpt2):
    relation = factual_relation(
        "country capital city",
        "the capital of {} is",
        [("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin")],
        "country",
        "city",
    )
    tokens = ablation.relation_object_tokens(tiny_gpt2, relation)
    vocab = tiny_gpt2.tokenizer.get_vocab()
    assert tokens == {vocab["Paris"], vocab["Tokyo"]}  # Berlin is not in the tiny vocabulary
    with pytest.raises(ValueError, match="template_index 3 out of range"):
        ablation.relation_object_tokens(tiny_gpt2, relation, template_index=3)


def test_ablation_bad_inputs(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    with pytest.raises(ValueError, match="unknown ablation 'patch'"):
        ablation.head_ablation_effects(tiny_gpt2, batch, ["a0.h0"], "patch", progress=False)
    with pytest.raises(ValueError, match="not an attention head"):
        ablation.run_with_heads_ablated(tiny_gpt2, batch, ["m1"], "zero")
    with pytest.raises(ValueError, match="no 'role' column"):
        ablation.ablation_by_role(pd.DataFrame({"head": ["a0.h0"]}), pd.DataFrame({"head": ["a0.h0"]}))


# ----------------------------------------------------------------------------- attention patterns
def test_attention_patterns_are_labelled_causal_and_match_head_scores(tiny_model, batch):
    patterns = heads.attention_patterns(tiny_model, batch, 1, ["a1.h2", "a0.h0"])
    assert list(patterns) == ["a1.h2", "a0.h0"]
    frame = patterns["a1.h2"]
    n = int(batch.last_pos[1]) + 1
    assert frame.shape == (n, n)
    assert frame.index.tolist() == heads.position_labels(tiny_model, batch, 1) == frame.columns.tolist()
    assert frame.index[-1].endswith(":is") and frame.index[4] == "4:New"
    assert abs(frame.values.sum(1) - 1).max() < 1e-5
    assert abs(frame.values[~np.tri(n, dtype=bool)]).max() < 1e-6
    scores = heads.head_scores(tiny_model, batch, SUBJECTS, ["a1.h2"])
    row = scores[scores["prompt_index"] == 1].iloc[0]
    assert row["attn_subject"] == pytest.approx(float(frame.iloc[-1, 4:6].sum()), abs=1e-5)  # "New Zealand"


def test_attention_patterns_bad_prompt_index(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    with pytest.raises(ValueError, match="prompt_index 4 out of range"):
        heads.attention_patterns(tiny_gpt2, batch, 4, ["a0.h0"])


# ----------------------------------------------------------------------------- figures of notebook 02
def test_head_figures_build_from_the_tables(tiny_gpt2, country_batch_args):
    from kc_utils.viz import heads as plotting_heads

    batch = make_batch(tiny_gpt2, *country_batch_args)
    table = lens.logit_lens(tiny_gpt2, batch, SUBJECTS)
    fig = viz_lens.plot_logit_lens(table, 1)
    assert [t.name for t in fig.data] == [
        "last position",
        "last position",
        "best subject position",
        "best subject position",
    ]
    with pytest.raises(ValueError, match="prompt_index 9 is not in the table"):
        viz_lens.plot_logit_lens(table, 9)
    roles = heads.head_roles(
        tiny_gpt2, batch, SUBJECTS, ["a0.h0", "a1.h1"], object_tokens=batch.answer.tolist(), subject_threshold=0.0
    )
    fig = plotting_heads.plot_head_roles(roles)
    assert len(fig.data) == 2 * roles["role"].nunique()  # one trace per role in each panel
    pattern = heads.attention_patterns(tiny_gpt2, batch, 0, ["a0.h0"])["a0.h0"]
    heatmap = plotting_heads.plot_attention(pattern).data[0]
    assert heatmap.z.shape == pattern.shape and heatmap.texttemplate == "%{z:.2f}"  # two decimals in every cell
    counts = pd.crosstab(roles["layer"], roles["role"])
    assert len(plotting_heads.plot_role_counts(counts).data) == counts.shape[1]
    effects = ablation.head_ablation_effects(
        tiny_gpt2, batch, ["a0.h0", "a1.h1"], "zero", k=3, object_tokens=set(batch.answer.tolist()), progress=False
    )
    by_role = ablation.ablation_by_role(effects, roles).assign(relation="r")
    assert len(plotting_heads.plot_ablation_by_role(by_role, k=3).data) == 2 * by_role["role"].nunique() + 1


def test_explorers_redraw_on_selection(tiny_gpt2, country_batch_args, monkeypatch):
    import plotly.io as pio

    from kc_utils.viz import heads as plotting_heads

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    batch = make_batch(tiny_gpt2, *country_batch_args)
    box = viz_lens.logit_lens_explorer(lens.logit_lens(tiny_gpt2, batch, SUBJECTS), initial=1)
    dropdown, out = box.children
    title = lambda: out.outputs[0]["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"]  # noqa: E731
    assert "New Zealand" in title()
    dropdown.value = 2
    assert "Japan" in title() and len(out.outputs) == 1
    patterns = heads.attention_patterns(tiny_gpt2, batch, 0, ["a0.h0", "a1.h1"])
    dropdown, out = plotting_heads.attention_explorer(patterns, prompt=batch.prompts[0]).children
    assert title().startswith("a0.h0")
    dropdown.value = "a1.h1"
    assert title().startswith("a1.h1")


def test_spread_overlapping_separates_coinciding_points_and_keeps_single_ones():
    from kc_utils.viz.heads import spread_overlapping

    x = [1.0, 1.0, 1.0, 0.99, 0.0, 0.5]
    y = [0.0, 0.0, 0.0, 0.01, 1.0, 0.5]
    sx, sy = spread_overlapping(x, y, radius=0.06, tol=0.03)
    assert (sx[4], sy[4]) == (0.0, 1.0) and (sx[5], sy[5]) == (0.5, 0.5)  # alone: unmoved
    cluster = np.stack([sx[:4], sy[:4]], 1)
    distances = np.linalg.norm(cluster[:, None] - cluster[None], axis=-1)[~np.eye(4, dtype=bool)]
    assert distances.min() >= 0.06 - 1e-9  # every pair at least `radius` apart
    assert np.allclose(cluster.mean(0), [np.mean(x[:4]), np.mean(y[:4])])  # centred on the cluster
    again = spread_overlapping(x, y, radius=0.06, tol=0.03)
    assert np.array_equal(again[0], sx) and np.array_equal(again[1], sy)  # deterministic
    with pytest.raises(ValueError, match="same length"):
        spread_overlapping([1.0], [1.0, 2.0])


def test_format_table_prints_integer_columns_as_integers():
    from kc_utils.viz.heads import format_table

    table = pd.DataFrame(
        {
            "head": ["a1.h0", "a2.h3"],
            "n": [3, 12],
            "median_rank": [4.0, 36.0],  # float dtype, integral values
            "dla": [1.234, -0.5],
            "ok": [True, False],
            "top_tokens": [["Paris", "Lima"], ["x"]],
        }
    )
    html = format_table(table).to_html()
    assert ">36<" in html and ">36.00<" not in html and ">4<" in html
    assert ">1.23<" in html and ">-0.50<" in html and ">12<" in html
    assert "Paris, Lima" in html and ">True<" in html


def test_group_and_sensitivity_figures_build_from_their_tables():
    from kc_utils.viz.heads import plot_group_tests, plot_role_sensitivity

    rows = []
    for relation in ("r1", "r2"):
        for group in ("movers", "relation heads"):
            for test in ("ablation", "patching"):
                rows.append(
                    {
                        "relation": relation,
                        "group": group,
                        "test": test,
                        "top1_group": 0.1,
                        "top1_random_mean": 0.8,
                        "top1_random_std": 0.1,
                        "flip_group": 1.0,
                        "flip_random_mean": 0.3,
                        "flip_random_std": 0.2,
                    }
                )
    fig = plot_group_tests(pd.DataFrame(rows))
    assert len(fig.data) == 8  # 2 tests x 2 groups x (bar + marker)
    assert [t.type for t in fig.data[:2]] == ["bar", "scatter"]
    table = pd.DataFrame(
        {
            "head": ["a", "b"],
            "attn_subject": [1.0, 0.0],
            "attn_relation": [0.0, 1.0],
            "dla": [2.0, 0.0],
            "relation_type_auc": [0.5, 0.9],
        }
    )
    sensitivity = heads.role_sensitivity(table)
    fig = plot_role_sensitivity(sensitivity)
    assert len(fig.data) == len(heads.SENSITIVITY_GRID) * len(heads.ROLES)


# ----------------------------------------------------------------------------- roles tested as groups
@pytest.mark.parametrize("test,how", [("ablation", "zero"), ("ablation", "mean"), ("patching", "last")])
def test_evaluate_head_sets_equals_one_run_per_set(tiny_model, batch, test, how):
    from kc_utils.analysis import head_groups

    sets = [(), ["a1.h2"], ["a0.h0", "a1.h1", "a1.h3"], ["a0.h1", "a0.h2"], ["a1.h0", "a1.h1"]]
    got = head_groups.evaluate_head_sets(
        tiny_model, batch, sets, test, ablation=how if test == "ablation" else "mean", sets_per_pass=2
    )
    assert got.shape == (len(sets), len(batch), tiny_model.cfg.d_vocab)
    rows = torch.arange(len(batch))
    for heads_set, logits in zip(sets, got):
        if not heads_set:
            with torch.no_grad():
                expected = tiny_model(batch.clean)
        elif test == "patching":
            expected = head_groups.patch_head_outputs(tiny_model, batch, heads_set, position=how)
        else:
            expected = ablation.run_with_heads_ablated(tiny_model, batch, heads_set, how)
        torch.testing.assert_close(logits, expected[rows, batch.last_pos], atol=1e-4, rtol=0)


def test_given_patch_values_are_written_and_checked(tiny_model, batch):
    """Patching with ``patch_values`` writes them where the corrupt run's outputs would go: giving the corrupt run's
    own outputs is the default patching; values for the wrong test or missing layers are refused."""
    from kc_utils.analysis import head_groups

    sets = [["a1.h2"], ["a0.h0", "a1.h1"]]
    with torch.no_grad(), models.only_head_results(tiny_model):
        corrupt = models.cache_activations(tiny_model, batch.corrupt, [models.head_result_hook(i) for i in (0, 1)])
    values = {i: corrupt[models.head_result_hook(i)] for i in (0, 1)}
    given = head_groups.evaluate_head_sets(tiny_model, batch, sets, "patching", patch_values=values)
    torch.testing.assert_close(given, head_groups.evaluate_head_sets(tiny_model, batch, sets, "patching"))
    with pytest.raises(ValueError, match="patch_values are written by test='patching'"):
        head_groups.evaluate_head_sets(tiny_model, batch, sets, "ablation", patch_values=values)
    with pytest.raises(ValueError, match=r"patch_values lack the layers \[0\]"):
        head_groups.evaluate_head_sets(tiny_model, batch, sets, "patching", patch_values={1: values[1]})


def test_group_vs_random_rows_overlap_and_summary(tiny_model, batch):
    from kc_utils.analysis import head_groups

    pool = heads.resolve_heads(tiny_model, None)
    group = ["a1.h0", "a1.h1", "a1.h2"]
    table = head_groups.group_vs_random(tiny_model, batch, group, pool, test="patching", n_random=6, seed=1)
    assert table["set"].tolist() == ["none", "group"] + ["random"] * 6
    with torch.no_grad():
        clean = head_groups.answer_scores(tiny_model(batch.clean), batch)
    assert table.loc[0, "top1"] == pytest.approx(float(clean["top1"].mean()))  # the unablated model
    assert table.loc[0, "flip"] == pytest.approx(float(clean["corrupt_top1"].mean()))
    assert table["overlap"].tolist()[:2] == [0, 3]
    for heads_set, shared in zip(table["heads"][2:], table["overlap"][2:]):
        assert len(heads_set) == 3 and shared == len(set(heads_set) & set(group))
    expected = head_groups.answer_scores(head_groups.patch_head_outputs(tiny_model, batch, group), batch)
    assert table.loc[1, "flip"] == pytest.approx(float(expected["corrupt_top1"].mean()))
    assert table.loc[1, "top1"] == pytest.approx(float(expected["top1"].mean()))
    disjoint = head_groups.group_vs_random(
        tiny_model, batch, group, pool, test="ablation", ablation="zero", n_random=4, overlap=False
    )
    assert (disjoint.loc[disjoint["set"] == "random", "overlap"] == 0).all()
    with pytest.raises(ValueError, match="unknown test 'swap'"):
        head_groups.group_vs_random(tiny_model, batch, group, pool, test="swap")


def test_group_test_summary_on_a_hand_made_table():
    from kc_utils.analysis.head_groups import group_test_summary

    table = pd.DataFrame(
        {
            "set": ["none", "group", "random", "random", "random", "random"],
            "heads": [(), ("a", "b"), ("a", "c"), ("c", "d"), ("d", "c"), ("b", "e")],
            "top1": [1.0, 0.1, 0.5, 0.9, 0.7, 0.1],
            "flip": [0.0, 1.0, 0.5, 0.0, 0.1, 1.0],
            "overlap": [0, 2, 1, 0, 0, 1],
        }
    )
    s = group_test_summary(table)
    assert s["top1_original"] == 1.0 and s["top1_group"] == 0.1
    assert s["top1_random_mean"] == pytest.approx(0.55)
    assert s["top1_random_std"] == pytest.approx(np.std([0.5, 0.9, 0.7, 0.1]))
    assert s["top1_random_at_most_group"] == 0.25 and s["flip_random_at_least_group"] == 0.25
    assert s["n_heads"] == 2 and s["n_random"] == 4 and s["n_distinct"] == 3  # (c, d) drawn twice
    assert s["mean_overlap"] == 0.5
    with pytest.raises(ValueError, match="exactly one 'group' row"):
        group_test_summary(table[table["set"] != "group"])


def test_writing_heads_leave_out_the_organisms_block_0():
    from kc_utils.analysis.head_groups import writing_heads
    from kc_utils.models import load_model

    organism = load_model("kc-organism", device="cpu")
    batch = make_batch(
        organism, ["The capital of France is", "The official language of Japan is"], ["Paris", "Japanese"]
    )
    assert writing_heads(organism, batch) == [f"a{layer}.h{h}" for layer in range(1, 4) for h in range(4)]
