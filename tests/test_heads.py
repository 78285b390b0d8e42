"""Head roles (hand-made tables and tiny models) and head ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kc_utils.analysis import head_ablation as ablation
from kc_utils.analysis import heads, lens
from kc_utils.circuits.graph import Graph
from kc_utils.data.prompts import make_batch
from kc_utils.data.relations import Relation, Sample
from kc_utils.viz import lens as viz_lens

SUBJECTS = ["France", "New Zealand", "Japan", "South Korea"]


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


# ----------------------------------------------------------------------------- the role rule
def _table(rows):
    return pd.DataFrame(rows, columns=["head", "attn_subject", "attn_relation", "dla", "answer_rank"])


def test_role_rule_on_a_hand_made_table():
    table = _table(
        [
            ("mover", 0.6, 0.1, 2.0, 0),  # reads the subject, promotes the answer
            ("mix", 0.4, 0.4, 1.0, 3),  # both
            ("relation", 0.1, 0.7, -0.5, 900),  # reads the relation words
            ("subject-but-silent", 0.8, 0.0, -1.0, 2),  # subject attention, answer suppressed
            ("subject-far-rank", 0.8, 0.0, 0.3, 500),  # positive dla but answer not among its top tokens
            ("both-but-silent", 0.4, 0.4, -1.0, 0),  # mix needs the mover criteria: relation
            ("other", 0.05, 0.05, 3.0, 0),
        ]
    )
    roles = heads.assign_head_roles(table)
    assert roles["role"].tolist() == ["mover", "mix", "relation", "other", "other", "relation", "other"]
    assert {"attends_subject", "attends_relation", "promotes_answer", "attn_subject"} <= set(roles.columns)
    assert table.columns.tolist() == ["head", "attn_subject", "attn_relation", "dla", "answer_rank"]  # not modified


def test_role_thresholds_are_parameters():
    table = _table([("h", 0.25, 0.25, 0.5, 30)])
    assert heads.assign_head_roles(table)["role"].item() == "other"
    assert heads.assign_head_roles(table, subject_threshold=0.2, max_answer_rank=50)["role"].item() == "mover"
    assert heads.assign_head_roles(table, relation_threshold=0.2)["role"].item() == "relation"
    assert heads.assign_head_roles(table, 0.2, 0.2, 50, min_dla=1.0)["role"].item() == "relation"


def test_role_rule_rejects_bad_tables():
    with pytest.raises(ValueError, match=r"lacks columns \['dla', 'answer_rank'\]"):
        heads.assign_head_roles(pd.DataFrame({"attn_subject": [0.5], "attn_relation": [0.1]}))
    with pytest.raises(ValueError, match="subject_threshold .* \\[0, 1\\]"):
        heads.assign_head_roles(_table([("h", 0.5, 0.1, 1.0, 0)]), subject_threshold=30)


# ----------------------------------------------------------------------------- scores on a model
def test_head_scores_attention_split(tiny_model, batch):
    scores = heads.head_scores(tiny_model, batch, SUBJECTS, object_tokens=batch.answer.tolist(), k=5)
    n_heads = tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    assert len(scores) == n_heads * len(batch)
    total = scores["attn_subject"] + scores["attn_relation"] + scores["attn_other"]
    assert (total - 1).abs().max() < 1e-5
    assert scores["relation_token_share"].between(0, 1).all()

    # manual reading of a1.h3 on "<bos> the capital of New Zealand is": relation words = the capital of
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(batch.clean)
    pattern = cache["blocks.1.attn.hook_pattern"][1, 3, int(batch.last_pos[1])]
    row = scores[(scores["head"] == "a1.h3") & (scores["prompt_index"] == 1)].iloc[0]
    assert row["attn_subject"] == pytest.approx(float(pattern[4] + pattern[5]), abs=1e-6)
    assert row["attn_relation"] == pytest.approx(float(pattern[1:4].sum()), abs=1e-6)

    names, dla = lens.component_logits(tiny_model, batch)
    assert row["dla"] == pytest.approx(float(dla[names.index("a1.h3"), 1]), abs=1e-6)
    projection = lens.project_node(tiny_model, batch, "a1.h3", k=5)
    assert row["answer_rank"] == projection["target_rank"][1]
    assert row["top_tokens"] == projection["top_tokens"][1]


def test_head_roles_end_to_end_and_circuit_heads(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2).set_edges(["a0.h1->m1", "a1.h2->logits", "m1->logits"])
    assert heads.resolve_heads(tiny_gpt2, graph) == ["a0.h1", "a1.h2"]
    roles = heads.head_roles(tiny_gpt2, batch, SUBJECTS, heads=graph, subject_threshold=0.0, max_answer_rank=10**6)
    assert sorted(roles["head"]) == ["a0.h1", "a1.h2"]
    assert set(roles["role"]) <= set(heads.ROLES)
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

    roles = pd.DataFrame({"head": ["a0.h0", "a1.h2"], "role": ["mover", "mover"]})
    by_role = ablation.ablation_by_role(effects, roles)
    assert by_role["n_heads"].tolist() == [2]
    assert by_role["delta_prob"][0] == pytest.approx(effects["delta_prob"].mean())


def test_object_share_on_hand_made_tokens():
    gaining = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    share = ablation.object_share(gaining, {5, 6, 2}, exclude=torch.tensor([6, 9]))
    assert share.tolist() == [0.25, 0.25]  # row 0: 6 is its own answer and does not count


def test_relation_object_tokens(tiny_gpt2):
    relation = Relation(
        name="country capital city",
        prompt_templates=("the capital of {} is",),
        prompt_templates_zs=(),
        relation_type="factual",
        domain_name="country",
        range_name="city",
        symmetric=False,
        samples=(Sample("France", "Paris"), Sample("Japan", "Tokyo"), Sample("Germany", "Berlin")),
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
        tiny_gpt2, batch, SUBJECTS, ["a0.h0", "a1.h1"], subject_threshold=0.0, max_answer_rank=10**6
    )
    assert len(plotting_heads.plot_head_roles(roles).data) == roles["role"].nunique()
    pattern = heads.attention_patterns(tiny_gpt2, batch, 0, ["a0.h0"])["a0.h0"]
    assert plotting_heads.plot_attention(pattern).data[0].z.shape == pattern.shape
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
