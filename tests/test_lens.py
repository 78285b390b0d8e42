"""Logit lens, subject spans, vocabulary projections and direct logit attribution on tiny models."""

from __future__ import annotations

import pytest
import torch

from kc_utils import models
from kc_utils.analysis import lens
from kc_utils.data.metrics import prob, rank
from kc_utils.data.prompts import make_batch

SUBJECTS = ["France", "New Zealand", "Japan", "South Korea"]


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


# ----------------------------------------------------------------------------- subjects
def test_subject_positions_single_and_multi_token(tiny_gpt2):
    # "<bos> the capital of New Zealand is": BOS at 0
    assert lens.subject_positions(tiny_gpt2, "the capital of France is", "France") == [4]
    assert lens.subject_positions(tiny_gpt2, "the capital of New Zealand is", "New Zealand") == [4, 5]
    assert lens.subject_positions(tiny_gpt2, "the capital of New Zealand is", "New Zealand", prepend_bos=False) == [
        3,
        4,
    ]


def test_subject_positions_prefers_whole_words(tiny_gpt2):
    # "Japan" is a substring of "Japanese" (position 1) but the word "Japan" is at position 7
    assert lens.subject_positions(tiny_gpt2, "Japanese is the official language of Japan", "Japan") == [7]


def test_absent_subject_is_a_clear_error(tiny_gpt2):
    with pytest.raises(ValueError, match="subject 'Berlin' not in prompt 'the capital of France is'"):
        lens.subject_positions(tiny_gpt2, "the capital of France is", "Berlin")
    with pytest.raises(ValueError, match="empty subject"):
        lens.subject_positions(tiny_gpt2, "the capital of France is", " ")


def test_subject_mask_marks_the_subjects(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    mask = lens.subject_mask(tiny_gpt2, batch, SUBJECTS)
    assert mask.sum(-1).tolist() == [1, 2, 1, 2]
    assert mask[1].nonzero().flatten().tolist() == [4, 5]
    with pytest.raises(ValueError, match="4 prompts but 3 subjects"):
        lens.subject_mask(tiny_gpt2, batch, SUBJECTS[:3])


# ----------------------------------------------------------------------------- logit lens
def test_logit_lens_final_layer_is_the_models_output(tiny_model, batch):
    table = lens.logit_lens(tiny_model, batch, SUBJECTS)
    n_layers = tiny_model.cfg.n_layers
    assert len(table) == len(batch) * (n_layers + 1)
    assert set(table["layer"]) == set(range(-1, n_layers))
    assert (table.loc[table["layer"] == -1, "stage"] == "input").all()
    with torch.no_grad():
        logits = tiny_model(batch.clean)
    final = table[table["layer"] == n_layers - 1].sort_values("prompt_index")
    assert final["rank"].tolist() == rank(logits, batch).long().tolist()
    torch.testing.assert_close(
        torch.tensor(final["prob"].values, dtype=torch.float32), prob(logits, batch), atol=1e-6, rtol=1e-5
    )
    # the best subject rank can never be worse than the rank at any one subject position
    assert (table["subject_rank"] >= 0).all() and (table["subject_prob"] <= 1).all()


def test_logit_lens_subject_rank_matches_a_manual_reading(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    table = lens.logit_lens(tiny_gpt2, batch, SUBJECTS)
    stack = lens.residual_by_layer(tiny_gpt2, batch.clean)
    with torch.no_grad():
        logits = tiny_gpt2.unembed(tiny_gpt2.ln_final(stack[1]))  # after block 0
    row = table[(table["layer"] == 0) & (table["prompt_index"] == 1)].iloc[0]
    target = int(batch.answer[1])
    ranks = [(logits[1, p] > logits[1, p, target]).sum().item() for p in (4, 5)]
    assert row["subject_rank"] == min(ranks)


def test_logit_lens_without_subjects_and_bad_targets(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    table = lens.logit_lens(tiny_gpt2, batch)
    assert table["subject_rank"].isna().all()
    with pytest.raises(ValueError, match="one token id per prompt"):
        lens.logit_lens(tiny_gpt2, batch, targets=torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- attribution
def test_direct_logit_attribution_sums_to_the_logit(tiny_model, batch):
    with torch.no_grad():
        logits = tiny_model(batch.clean)[torch.arange(len(batch)), batch.last_pos]
    dec = lens.decompose_residual(tiny_model, batch)
    for targets in (batch.answer, batch.corrupt_answer):
        names, contributions = lens.component_logits(tiny_model, batch, targets, decomposition=dec)
        assert names[0] == "input" and names[-2:] == ["attn_bias", "unembed_bias"]
        assert contributions.shape == (len(names), len(batch))
        expected = logits.gather(1, targets[:, None])[:, 0]
        torch.testing.assert_close(contributions.sum(0), expected, atol=1e-4, rtol=0)

    table = lens.direct_logit_attribution(tiny_model, batch, against_corrupt=True)
    sums = table.groupby("prompt_index")[["logit", "logit_diff"]].sum()
    expected_diff = (
        logits.gather(1, batch.answer[:, None])[:, 0] - logits.gather(1, batch.corrupt_answer[:, None])[:, 0]
    )
    torch.testing.assert_close(
        torch.tensor(sums["logit_diff"].values, dtype=torch.float32), expected_diff, atol=1e-4, rtol=0
    )
    assert set(table["kind"]) == {"input", "head", "mlp", "constant"}


def test_attn_bias_is_the_attention_output_biases(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    dec = lens.decompose_residual(tiny_gpt2, batch)
    expected = tiny_gpt2.b_O.sum(0).detach()
    torch.testing.assert_close(dec.attn_bias, expected.expand_as(dec.attn_bias), atol=1e-5, rtol=0)


def test_project_node_agrees_with_attribution(tiny_model, batch):
    names, contributions = lens.component_logits(tiny_model, batch)
    for node in ("a1.h2", "m0"):
        table = lens.project_node(tiny_model, batch, node, k=3)
        assert len(table) == len(batch) and all(len(t) == 3 for t in table["top_tokens"])
        torch.testing.assert_close(
            torch.tensor(table["target_logit"].values, dtype=torch.float32),
            contributions[names.index(node)],
            atol=1e-5,
            rtol=0,
        )
        top = table["top_logits"].tolist()
        assert all(row[0] >= row[-1] for row in top)
        assert all(
            (r == 0) == (t[0] == a) for r, t, a in zip(table["target_rank"], table["top_tokens"], table["target"])
        )


def test_unembedding_directions_do_not_depend_on_chunking(tiny_gpt2):
    tokens = torch.tensor([3, 5, 7])
    torch.testing.assert_close(
        lens.unembedding_directions(tiny_gpt2, tokens, chunk=5),
        lens.unembedding_directions(tiny_gpt2, tokens),
        atol=1e-6,
        rtol=0,
    )


def test_bad_inputs_are_clear_errors(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    with pytest.raises(ValueError, match="not a node name"):
        lens.project_node(tiny_gpt2, batch, "L1H2")
    with pytest.raises(ValueError, match="4 heads per layer"):
        lens.project_node(tiny_gpt2, batch, "a0.h9")
    with pytest.raises(ValueError, match="2 layers"):
        lens.project_node(tiny_gpt2, batch, "m5")
    with pytest.raises(ValueError, match="k must be at least 1"):
        lens.project_node(tiny_gpt2, batch, "m0", k=0)
    with pytest.raises(ValueError, match="inside each prompt"):
        lens.project_node(tiny_gpt2, batch, "m0", positions=50)
    plain = make_batch(tiny_gpt2, *country_batch_args[:2])
    with pytest.raises(ValueError, match="needs a corrupt answer"):
        lens.direct_logit_attribution(tiny_gpt2, plain, against_corrupt=True)


# ----------------------------------------------------------------------------- first layer at rank 0
def _lens_table(ranks_last, ranks_subject):
    import pandas as pd

    rows = []
    for p, (last, subj) in enumerate(zip(ranks_last, ranks_subject)):
        for layer, (r, s) in enumerate(zip(last, subj), start=-1):
            rows.append({"prompt_index": p, "prompt": f"p{p}", "layer": layer, "rank": r, "subject_rank": s})
    return pd.DataFrame(rows)


def test_first_rank_layers_on_a_hand_made_table():
    table = _lens_table(
        [[9, 3, 0, 0], [9, 0, 2, 0], [9, 9, 9, 9], [5, 5, 0, 0]],  # layers -1, 0, 1, 2
        [[9, 0, 0, 1], [9, 0, 0, 0], [9, 9, 0, 0], [5, 5, 5, 5]],
    )
    first = lens.first_rank_layers(table.sample(frac=1, random_state=0))  # order of rows does not matter
    assert first["last_layer"].tolist()[:2] == [1.0, 0.0] and first["last_layer"].isna().tolist() == [
        False,
        False,
        True,
        False,
    ]
    assert first["subject_layer"].tolist()[:3] == [0.0, 0.0, 1.0] and pd_isna(first["subject_layer"][3])
    assert first["subject_earlier"].tolist() == [True, False, True, False]
    assert first["gap"].tolist()[:2] == [1.0, 0.0]
    assert lens.first_rank_layers(table, max_rank=3)["last_layer"].tolist()[0] == 0.0

    summary = lens.summarise_first_rank_layers(first)
    assert summary["n_prompts"] == 4
    assert summary["last_reached"] == 0.75 and summary["last_median"] == 1.0
    assert (summary["last_min"], summary["last_max"]) == (0.0, 1.0)
    assert summary["subject_reached"] == 0.75 and summary["subject_median"] == 0.0
    assert summary["subject_earlier"] == 0.5 and summary["same_layer"] == 0.25
    assert summary["median_gap"] == 0.5


def pd_isna(value):
    import math

    return isinstance(value, float) and math.isnan(value)


def test_first_rank_layers_on_a_model(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    table = lens.logit_lens(tiny_gpt2, batch, SUBJECTS)
    first = lens.first_rank_layers(table, max_rank=10**6)  # every target reaches this rank at once
    assert first["last_layer"].tolist() == [-1.0] * len(batch)
    assert first["subject_layer"].tolist() == [-1.0] * len(batch)
    assert not first["subject_earlier"].any()
    no_subjects = lens.first_rank_layers(lens.logit_lens(tiny_gpt2, batch), max_rank=10**6)
    assert no_subjects["subject_layer"].isna().all()


def test_first_rank_layers_bad_inputs():
    import pandas as pd

    with pytest.raises(ValueError, match="not a logit_lens table"):
        lens.first_rank_layers(pd.DataFrame({"layer": [0]}))
    with pytest.raises(ValueError, match="max_rank"):
        lens.first_rank_layers(_lens_table([[0]], [[0]]), max_rank=-1)
    with pytest.raises(ValueError, match="no prompts"):
        lens.summarise_first_rank_layers(pd.DataFrame())


def test_residuals_without_the_edge_hooks_equal_those_of_a_pass_with_them(tiny_model, batch):
    from kc_utils import models

    names = [models.INPUT_HOOK] + [models.resid_post_hook(layer) for layer in range(tiny_model.cfg.n_layers)]
    with torch.no_grad():  # the model as loaded: every edge point on
        _, cache = models.run_with_cache(tiny_model, batch.clean, names)
    stack = lens.residual_by_layer(tiny_model, batch.clean)
    torch.testing.assert_close(stack, torch.stack([cache[n] for n in names]), atol=1e-5, rtol=1e-5)


def test_a_lens_on_given_residuals_is_the_lens_and_wrong_ones_are_refused(tiny_model, batch):
    residuals = lens.residual_by_layer(tiny_model, batch.clean)
    given = lens.logit_lens(tiny_model, batch, SUBJECTS, residuals=residuals)
    assert given.equals(lens.logit_lens(tiny_model, batch, SUBJECTS))
    with pytest.raises(ValueError, match="do not fit this batch"):
        lens.logit_lens(tiny_model, batch, SUBJECTS, residuals=residuals[:, :2])


def test_the_lens_ranks_and_probabilities_equal_a_softmax_of_each_layer(tiny_model):
    batch = make_batch(tiny_model, ["the capital of France is", "the capital of Peru is"], ["Paris", "Lima"])
    table = lens.logit_lens(tiny_model, batch)
    stack = lens.residual_by_layer(tiny_model, batch.clean)
    rows = torch.arange(2)
    for index in range(stack.shape[0]):
        logits = models.unembed(tiny_model, stack[index][rows, batch.last_pos]).float()
        layer = table[table["layer"] == index - 1].sort_values("prompt_index")
        assert layer["rank"].tolist() == rank(logits[:, None], batch.at_last_position()).long().tolist()
        torch.testing.assert_close(
            torch.tensor(layer["prob"].tolist()), logits.softmax(-1)[rows, batch.answer], rtol=1e-5, atol=1e-8
        )
