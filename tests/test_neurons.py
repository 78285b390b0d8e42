"""Knowledge neurons (notebook 06): attribution vs slow references, selection, consistency, interventions, edits."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from kc_utils import models
from kc_utils.data.prompts import make_batch
from kc_utils.neurons import consistency, interventions, modification, selection, study_text
from kc_utils.neurons.attribution import answer_probability, neuron_activations, neuron_attribution
from kc_utils.neurons.positions import NeuronError, check_layers, query_positions

PROMPTS = ["the capital of France is", "the official language of New Zealand is"]
ANSWERS = ["Paris", "French"]
SUBJECTS = ["France", "New Zealand"]


@pytest.fixture()
def batch(tiny_model):
    return make_batch(tiny_model, PROMPTS, ANSWERS)


def _prob_with(model, batch, layer, position, value, prompt=0):
    """p(answer) of one prompt with MLP ``layer``'s hidden vector at ``position`` replaced by ``value``."""

    def hook(activation, hook):
        activation = activation.clone()
        activation[0, position] = value
        return activation

    one = batch.select([prompt])
    logits = models.run_with_hooks(model, one.clean, [(models.mlp_hidden_hook(layer), hook)])
    return logits[0, one.last_pos[0]].float().softmax(-1)[one.answer[0]]


def _slow_attribution(model, batch, prompt, layer, position, steps, neurons):
    """Per neuron and per step: one forward and one backward through a scalar leaf for that neuron alone."""
    clean = neuron_activations(model, batch.select([prompt]), torch.tensor([position]), [layer])[0, 0]
    out = torch.zeros(len(neurons))
    with models.without_edge_hooks(model):  # same values, a faster forward
        for n_index, neuron in enumerate(neurons):
            out[n_index] = _slow_one(model, batch, prompt, layer, position, steps, clean, neuron)
    return out


def _slow_one(model, batch, prompt, layer, position, steps, clean, neuron):
    """IG of one neuron: ``a_i / m * sum_k dF/dx_i`` at ``x = k/m * a``, each gradient from its own backward."""
    total = 0.0
    for k in range(1, steps + 1):
        alpha = k / steps
        leaf = (alpha * clean[neuron]).clone().requires_grad_(True)
        value = torch.cat([alpha * clean[:neuron], leaf[None], alpha * clean[neuron + 1 :]])
        with torch.enable_grad():
            p = _prob_with(model, batch, layer, position, value, prompt)
            (grad,) = torch.autograd.grad(p, leaf)
        total += float(grad)
    return clean[neuron] * total / steps


# ----------------------------------------------------------------------------- the model door
def test_hidden_hook_times_output_rows_is_the_mlp_output(tiny_model, batch):
    layer = 1
    _, cache = models.run_with_cache(
        tiny_model, batch.clean, [models.mlp_hidden_hook(layer), models.mlp_out_hook(layer)]
    )
    rows = models.neuron_output_weights(tiny_model, layer)
    assert rows.shape == (models.mlp_width(tiny_model), tiny_model.cfg.d_model)
    bias = cache[models.mlp_out_hook(layer)] - cache[models.mlp_hidden_hook(layer)] @ rows
    # what is left is the output bias: the same vector at every position (zero for Llama)
    assert torch.allclose(bias, bias[:1, :1].expand_as(bias), atol=1e-5)


def test_neuron_output_weights_is_a_live_view(tiny_model, batch):
    rows = models.neuron_output_weights(tiny_model, 0)
    before = tiny_model(batch.clean)
    saved = rows[3].clone()
    with torch.no_grad():
        rows[3] = 0
    try:
        assert not torch.allclose(tiny_model(batch.clean), before)
    finally:
        with torch.no_grad():
            rows[3] = saved
    assert torch.equal(tiny_model(batch.clean), before)


def test_bad_layers_are_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="layer 5 is out of range: this model has layers 0..1"):
        models.check_mlp_layer(tiny_model, 5)
    with pytest.raises(ValueError, match="whole number"):
        models.check_mlp_layer(tiny_model, 1.0)
    with pytest.raises(NeuronError, match="without repeats"):
        check_layers(tiny_model, [0, 0])
    attention_only = types.SimpleNamespace(
        cfg=types.SimpleNamespace(n_layers=2), hook_dict={"blocks.0.mlp.hook_post": 0}
    )
    with pytest.raises(ValueError, match=r"layer 1 has no MLP .* choose among the layers with an MLP: \[0\]"):
        models.check_mlp_layer(attention_only, 1)


# ----------------------------------------------------------------------------- positions
def test_positions_last_and_subject(tiny_model, batch):
    assert query_positions(tiny_model, batch, "last").tolist() == batch.last_pos.tolist()
    # "<bos> the capital of France is" -> France at 4; "<bos> the official language of New Zealand is" -> Zealand at 6
    assert query_positions(tiny_model, batch, "subject", SUBJECTS).tolist() == [4, 6]
    with pytest.raises(NeuronError, match="unknown position 'first': use one of \\['last', 'subject'\\]"):
        query_positions(tiny_model, batch, "first")
    with pytest.raises(NeuronError, match="needs one subject per prompt: 2 prompts but no subjects"):
        query_positions(tiny_model, batch, "subject")


# ----------------------------------------------------------------------------- attribution
@pytest.mark.parametrize(("position", "prompt", "layer"), [("last", 0, 1), ("subject", 1, 0)])
def test_attribution_matches_per_neuron_reference(tiny_model, batch, position, prompt, layer):
    positions = query_positions(tiny_model, batch, position, SUBJECTS)
    steps = 3
    fast = neuron_attribution(tiny_model, batch, positions, steps=steps, max_rows=4)  # several chunks
    neurons = list(range(0, models.mlp_width(tiny_model), 13))
    slow = _slow_attribution(tiny_model, batch, prompt, layer, int(positions[prompt]), steps, neurons)
    assert slow.abs().max() > 0
    assert torch.allclose(fast[prompt, layer, neurons], slow, atol=1e-6, rtol=1e-4)


def test_attribution_of_a_batch_equals_each_prompt_alone(tiny_model, batch):
    positions = batch.last_pos
    together = neuron_attribution(tiny_model, batch, positions, steps=4)
    for i in range(len(batch)):
        alone = neuron_attribution(tiny_model, batch.select([i]), positions[[i]], steps=4)
        assert torch.allclose(together[i], alone[0], atol=1e-6, rtol=1e-4)


def test_attribution_completeness(tiny_model, batch):
    """Scores of one layer sum to p(answer) - p(answer with the layer's neurons at 0 there), up to the Riemann error."""
    position = int(batch.last_pos[0])
    coarse = neuron_attribution(tiny_model, batch.select([0]), batch.last_pos[:1], steps=5)[0]
    fine = neuron_attribution(tiny_model, batch.select([0]), batch.last_pos[:1], steps=200)[0]
    p_clean = answer_probability(tiny_model, batch.select([0]))[0]
    for layer in range(tiny_model.cfg.n_layers):
        width = models.mlp_width(tiny_model)
        with torch.no_grad():
            gap = p_clean - _prob_with(tiny_model, batch, layer, position, torch.zeros(width))
        error_fine = abs(float(fine[layer].sum() - gap))
        error_coarse = abs(float(coarse[layer].sum() - gap))
        assert error_fine <= 0.02 * abs(float(gap)) + 1e-5
        assert error_fine <= error_coarse + 1e-6  # the Riemann error shrinks with the steps


def test_attribution_bad_inputs(tiny_model, batch):
    with pytest.raises(NeuronError, match="steps must be a whole number >= 1"):
        neuron_attribution(tiny_model, batch, batch.last_pos, steps=0)
    with pytest.raises(NeuronError, match="one position per prompt"):
        neuron_attribution(tiny_model, batch, batch.last_pos[:1])
    with pytest.raises(NeuronError, match="outside its prompt"):
        neuron_attribution(tiny_model, batch, batch.last_pos + 1)
    with pytest.raises(ValueError, match="out of range"):
        neuron_attribution(tiny_model, batch, batch.last_pos, layers=[7])


# ----------------------------------------------------------------------------- selection
def test_select_neurons_by_share_of_the_max():
    scores = torch.tensor([[[1.0, 0.3, 0.29], [-2.0, 0.5, 0.0]], [[-1.0, -0.5, 0.0], [0.0, 0.0, -0.1]]])
    masks = selection.select_neurons(scores, 0.3)
    assert masks[0].tolist() == [[True, True, False], [False, True, False]]
    assert not masks[1].any()  # no positive score, no neuron
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(NeuronError, match=r"threshold must lie in \(0, 1\]"):
            selection.select_neurons(scores, bad)


def test_refine_by_share_and_lists():
    masks = torch.tensor([[[1, 1, 0]], [[1, 0, 0]], [[1, 0, 1]]], dtype=torch.bool)
    assert selection.refine_by_share(masks, 0.5).tolist() == [[True, False, False]]
    assert selection.refine_by_share(masks, 0.34).tolist() == [[True, False, False]]
    assert selection.refine_by_share(masks, 0.3).tolist() == [[True, True, True]]  # 1/3 > 0.3
    assert selection.refine_by_share(masks, 0.0).tolist() == [[True, True, True]]
    with pytest.raises(NeuronError, match=r"share must lie in \[0, 1\)"):
        selection.refine_by_share(masks, 1.0)
    assert selection.neuron_list(masks[0], [3]) == [(3, 0), (3, 1)]
    drawn = selection.random_like(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool), torch.Generator())
    assert drawn.sum(-1).tolist() == [2, 1]


# ----------------------------------------------------------------------------- consistency
def test_consistency_scores_on_hand_made_sets():
    a = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool)
    c = torch.tensor([[0, 0, 0, 0, 1]], dtype=torch.bool)
    assert consistency.jaccard(a, b) == pytest.approx(2 / 4)
    assert consistency.consistency_score(torch.stack([a, a, a])) == 1.0
    # pairs: (a,b) 2/4, (a,c) 0, (b,c) 0
    assert consistency.consistency_score(torch.stack([a, b, c])) == pytest.approx(0.5 / 3)
    assert consistency.strict_overlap(torch.stack([a, b])) == pytest.approx(2 / 4)
    assert consistency.strict_overlap(torch.stack([a, b, c])) == 0.0
    assert consistency.pairwise_jaccard(torch.stack([a, b]))[0, 1] == pytest.approx(0.5)
    with pytest.raises(NeuronError, match="at least two queries"):
        consistency.consistency_score(a[None])


def test_otsu_threshold_splits_two_groups_and_maximises_between_class_variance():
    values = np.array([0.1, 0.12, 0.15, 0.8, 0.82, 0.85])
    assert consistency.otsu_threshold(values) == pytest.approx((0.15 + 0.8) / 2)
    rng = np.random.default_rng(0)
    x = np.sort(rng.random(40))
    threshold = consistency.otsu_threshold(x)

    def between(cut):
        low, high = x[x < cut], x[x >= cut]
        return len(low) * len(high) / len(x) ** 2 * (low.mean() - high.mean()) ** 2

    assert all(between(threshold) >= between((x[k - 1] + x[k]) / 2) - 1e-12 for k in range(1, len(x)))
    with pytest.raises(NeuronError, match="two distinct values"):
        consistency.otsu_threshold([0.3, 0.3])


def test_consistency_table_and_summary():
    masks = torch.zeros(3, 2, 1, 4, dtype=torch.bool)
    masks[0, :, 0, 0] = True  # identical sets: cs 1
    masks[1, 0, 0, 0] = masks[1, 1, 0, 1] = True  # disjoint: cs 0
    masks[2, 0, 0, :2] = True
    masks[2, 1, 0, 1:3] = True  # 1/3
    table = consistency.consistency_table("r", ["a", "b", "c"], masks, static_threshold=0.5)
    assert table["cs"].round(4).tolist() == [1.0, 0.0, 0.3333]
    assert table["inconsistent_static"].tolist() == [False, True, True]
    labelled, threshold = consistency.label_by_otsu(table)
    assert 0.3333 < threshold < 1.0 and labelled["inconsistent_otsu"].tolist() == [False, True, True]
    summary = consistency.consistency_summary(labelled)
    assert summary.loc[0, "n_facts"] == 3 and summary.loc[0, "inconsistent_static"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- interventions
def test_neuron_scaling_matches_a_direct_hook(tiny_model, batch):
    positions = batch.last_pos
    layers = check_layers(tiny_model, None)
    width = models.mlp_width(tiny_model)
    masks = torch.zeros(len(batch), len(layers), width, dtype=torch.bool)
    masks[0, 1, :5] = True  # prompt 1 has no neurons: it must not move
    for factor in (0.0, 2.0):
        before, after = interventions.scale_neurons(tiny_model, batch, positions, layers, masks, factor)

        def direct(activation, hook, factor=factor):
            activation = activation.clone()
            activation[0, positions[0], :5] *= factor
            return activation

        with torch.no_grad():
            logits = models.run_with_hooks(tiny_model, batch.clean, [(models.mlp_hidden_hook(1), direct)])
        expected = logits[0, positions[0]].softmax(-1)[batch.answer[0]]
        assert torch.allclose(after[0], expected, atol=1e-6)
        assert torch.allclose(after[1], before[1], atol=1e-7)
        assert not torch.allclose(after[0], before[0])
    _, unchanged = interventions.scale_neurons(tiny_model, batch, positions, layers, masks, 1.0)
    assert torch.allclose(unchanged, before, atol=1e-7)
    with pytest.raises(NeuronError, match="factor must be a number >= 0"):
        interventions.scale_neurons(tiny_model, batch, positions, layers, masks, -1.0)


def test_source_vs_paraphrase_rows(tiny_model):
    prompts = ["the capital of France is", "France capital city is", "the capital of Japan is", "Japan capital city is"]
    batch = make_batch(tiny_model, prompts, ["Paris", "Paris", "Tokyo", "Tokyo"])
    layers = check_layers(tiny_model, None)
    masks = torch.zeros(2, 2, len(layers), models.mlp_width(tiny_model), dtype=torch.bool)
    masks[:, :, 1, :3] = True
    table = interventions.source_vs_paraphrase(tiny_model, batch, batch.last_pos, layers, masks, n_random=3)
    assert len(table) == 2 * 2 * (4 + 2)  # factors x facts x (pairs + random per source)
    assert set(table["kind"]) == {"source", "paraphrase", "random"}
    # fact 0, source 0 in target 0 equals scaling those neurons directly
    _, after = interventions.scale_neurons(tiny_model, batch.select([0]), batch.last_pos[:1], layers, masks[0, :1], 0.0)
    row = table[(table.fact == 0) & (table.source == 0) & (table.target == 0) & (table.factor == 0.0)]
    assert row["p_after"].iloc[0] == pytest.approx(float(after[0]), abs=1e-6)
    summary = interventions.intervention_summary(table)
    assert summary["kind"].tolist() == ["source", "paraphrase", "random"] * 2


def _slow_top_keys(model, batch, positions, layers):
    _, cache = models.run_with_cache(model, batch.clean, [models.attn_pattern_hook(layer) for layer in layers])
    out = []
    for i in range(len(batch)):
        per_layer = []
        for layer in layers:
            pattern = cache[models.attn_pattern_hook(layer)][i, :, positions[i]]
            per_layer.append([int(pattern[h, 1 : positions[i] + 1].argmax()) + 1 for h in range(pattern.shape[0])])
        out.append(per_layer)
    return torch.tensor(out)


def test_attention_scaling_matches_a_direct_hook(tiny_model, batch):
    positions = query_positions(tiny_model, batch, "subject", SUBJECTS)
    layers = [0, 1]
    keys = interventions.top_attended_keys(tiny_model, batch, positions, layers, k=1)
    assert torch.equal(keys[..., 0], _slow_top_keys(tiny_model, batch, positions, layers))
    hooks = interventions.attention_scaling_hooks(layers, positions, keys, 0.0)

    def direct(layer_index):
        def hook(pattern, hook):
            pattern = pattern.clone()
            for i in range(pattern.shape[0]):
                for h in range(pattern.shape[1]):
                    pattern[i, h, positions[i], keys[i, layer_index, h, 0]] = 0.0
            return pattern

        return hook

    with torch.no_grad():
        fast = models.run_with_hooks(tiny_model, batch.clean, hooks)
        slow = models.run_with_hooks(
            tiny_model, batch.clean, [(models.attn_pattern_hook(layer), direct(j)) for j, layer in enumerate(layers)]
        )
        clean = tiny_model(batch.clean)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(fast, clean, atol=1e-4)
    unchanged = models.run_with_hooks(
        tiny_model, batch.clean, interventions.attention_scaling_hooks(layers, positions, keys, 1.0)
    )
    assert torch.allclose(unchanged, clean, atol=1e-6)


def test_random_keys_avoid_the_top_keys(tiny_model, batch):
    positions = batch.last_pos
    keys = interventions.top_attended_keys(tiny_model, batch, positions, [0, 1], k=1)
    drawn = interventions.random_keys(positions, keys, torch.Generator().manual_seed(0))
    again = interventions.random_keys(positions, keys, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    assert not (drawn == keys).any()
    assert ((drawn >= 1) & (drawn <= positions[:, None, None, None])).all()


def test_attention_scaling_table_and_summary(tiny_model, batch):
    positions = batch.last_pos
    neuron_layers = check_layers(tiny_model, None)
    masks = torch.zeros(len(batch), len(neuron_layers), models.mlp_width(tiny_model), dtype=torch.bool)
    masks[:, 1, :4] = True
    table = interventions.attention_scaling_table(tiny_model, batch, positions, [1], neuron_layers, masks, n_random=3)
    # per factor: layer 1, "all" (top), "all" (random), for each prompt
    assert len(table) == 2 * 3 * len(batch)
    top = table[(table.scaled == "1") & (table.factor == 1.0)]
    assert top.empty
    # scaling only attention layer 1 cannot change layer-0 neurons, but the layer-1 neurons see it
    cut = table[(table.scaled == "1") & (table.factor == 0.0)]
    assert (cut["kn_after"] != cut["kn_before"]).all()
    summary = interventions.attention_summary(table)
    assert {"delta_p_mean", "kn_change_mean"} <= set(summary.columns)


# ----------------------------------------------------------------------------- modification
def test_erasing_output_rows_equals_zeroing_the_neurons_everywhere(tiny_model, batch):
    layers = check_layers(tiny_model, None)
    mask = torch.zeros(len(layers), models.mlp_width(tiny_model), dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 7] = True
    clean = tiny_model(batch.clean)

    def zero(columns):
        def hook(activation, hook):
            activation = activation.clone()
            activation[..., columns] = 0
            return activation

        return hook

    with torch.no_grad():
        expected = models.run_with_hooks(
            tiny_model, batch.clean, [(models.mlp_hidden_hook(0), zero([1, 4])), (models.mlp_hidden_hook(1), zero([7]))]
        )
        with modification.erased_neurons(tiny_model, layers, mask):
            edited = tiny_model(batch.clean)
        restored = tiny_model(batch.clean)
    assert torch.allclose(edited, expected, atol=1e-5)
    assert torch.equal(restored, clean)


def test_update_raises_the_new_answer_and_restores(tiny_model, batch):
    layers = check_layers(tiny_model, None)
    positions = batch.last_pos
    scores = neuron_attribution(tiny_model, batch.select([0]), positions[:1], steps=4)[0]
    mask = selection.select_neurons(scores, 0.3)
    old, new = int(batch.answer[0]), int(batch.answer[1])
    p_new = answer_probability(tiny_model, batch.select([0]), targets=torch.tensor([new]))
    clean = tiny_model(batch.clean)
    signs = torch.sign(neuron_activations(tiny_model, batch.select([0]), positions[:1])[0])
    with modification.updated_neurons(tiny_model, layers, mask, old, new, strength=5.0, signs=signs):
        p_new_edited = answer_probability(tiny_model, batch.select([0]), targets=torch.tensor([new]))
    assert p_new_edited > p_new
    assert torch.equal(tiny_model(batch.clean), clean)


@pytest.mark.parametrize("task", ["erase", "update"])
def test_edit_hooks_equal_weight_edits_row_by_row(tiny_model, batch, task):
    layers = check_layers(tiny_model, None)
    width = models.mlp_width(tiny_model)
    masks = torch.zeros(2, len(layers), width, dtype=torch.bool)
    masks[0, 0, [2, 5]] = True
    masks[1, 1, [1, 3, 8]] = True
    signs = torch.sign(torch.randn(len(layers), width, generator=torch.Generator().manual_seed(0)))
    old, new = int(batch.answer[0]), int(batch.answer[1])
    direction = modification.update_direction(tiny_model, old, new)
    repeated = batch.select([0, 1, 0, 1])  # row r uses masks[r // 2]
    hooks = modification.edit_hooks(tiny_model, layers, masks.repeat_interleave(2, 0), task, direction, 3.0, signs)
    with torch.no_grad():
        fast = models.run_with_hooks(tiny_model, repeated.clean, hooks)
    for r in range(2):
        edit = (
            modification.erased_neurons(tiny_model, layers, masks[r])
            if task == "erase"
            else modification.updated_neurons(tiny_model, layers, masks[r], old, new, 3.0, signs)
        )
        with torch.no_grad(), edit:
            slow = tiny_model(batch.clean)
        assert torch.allclose(fast[2 * r : 2 * r + 2], slow, atol=1e-4)
    assert not torch.allclose(fast[:2], tiny_model(batch.clean), atol=1e-4)


def test_cas_prefers_steady_neurons():
    scores = torch.tensor([[[1.0, 2.0, 0.1]], [[1.0, 0.0, 0.1]], [[1.0, 1.0, 0.1]]])  # [q=3, l=1, n=3]
    cas = modification.cas_scores(scores)
    # neuron 0: mean 1, std 0; neuron 1: mean 1, std 0.816
    assert cas[0, 0] == pytest.approx(1.0) and cas[0, 1] == pytest.approx(1 - np.sqrt(2 / 3))
    assert modification.cas_neurons(scores, 0.5).tolist() == [[True, False, False]]
    with pytest.raises(NeuronError, match="at least two queries"):
        modification.cas_scores(scores[:1])


def test_modification_effects_table(tiny_model):
    from kc_utils.neurons.queries import FactQueries, facts_batch

    facts = [
        FactQueries("France", "Paris", ("the capital of France is", "France capital city is")),
        FactQueries("Japan", "Tokyo", ("the capital of Japan is", "Japan capital city is")),
        FactQueries("Peru", "Lima", ("the capital of Peru is", "Peru capital city is")),
    ]
    batch = facts_batch(tiny_model, facts)
    layers = check_layers(tiny_model, None)
    scores = neuron_attribution(tiny_model, batch, batch.last_pos, steps=3).reshape(3, 2, len(layers), -1)
    masks = selection.select_neurons(scores, 0.3)
    positions = batch.last_pos.reshape(3, 2)
    effects = modification.modification_effects(
        tiny_model, facts, scores, masks, positions, layers, n_random=2, n_locality=2
    )
    assert len(effects) == 3 * 2 * 4
    erase = effects[effects.task == "erase"]
    # erasing a set can only be measured against the clean model: all metrics finite, locality in [0, 1]
    assert np.isfinite(erase[["reliability", "generalisation", "locality"]].to_numpy()).all()
    assert effects["locality"].between(0, 1).all()
    summary = modification.modification_summary(effects)
    assert summary["method"].tolist() == list(modification.METHODS) * 2
    assert (summary["n_facts"] == 3).all()


# ----------------------------------------------------------------------------- sentences
def test_consistency_sentence_on_a_hand_made_table():
    summary = pd.DataFrame(
        dict(relation=["r", "s"], n_facts=[10, 30], n_queries=[6, 5], cs_min=[0.2, 0.1], cs_max=[0.9, 0.8],
             cs_mean=[0.5, 0.4], inconsistent_static=[0.4, 0.8], inconsistent_otsu=[0.3, 0.5],
             neurons_per_query=[12, 9])
    )  # fmt: skip
    text = study_text.consistency_sentence(summary, "r", 0.5, 0.45, overall=summary)
    assert "Of the 10 facts of `r`, each asked in 6 ways, **40%**" in text
    assert "**30%** by Otsu's threshold (CS < 0.45)" in text
    assert "ranges over 0.20–0.90 (mean 0.50)" in text
    assert "Over 2 relations (40 facts): **70%** (static) and **45%** (Otsu)" in text  # (4+24)/40, (3+15)/40
    assert "77%" in text
    departure = study_text.departure_sentence(4, 512, summary, "r", "last", 6)
    assert "4 layers of 512 MLP neurons (2,048 in all)" in departure and "458,752 (224× more)" in departure
    assert "overlap 0.20–0.90" in departure


def test_intervention_and_attention_sentences_on_hand_made_tables():
    summary = pd.DataFrame(
        dict(factor=[0.0, 0.0, 0.0, 2.0, 2.0], kind=["source", "paraphrase", "random", "source", "paraphrase"],
             delta_mean=[-0.4, -0.1, -0.01, 0.2, 0.05], delta_std=[0.1, 0.05, 0.02, 0.1, 0.02], n=[6, 30, 6, 6, 30])
    )  # fmt: skip
    text = study_text.intervention_sentence(summary)
    assert "(×0) changes p(answer) by -0.400 ± 0.100 on that query and by -0.100 ± 0.050" in text
    assert "(4.0× more on the source); random sets of the same size: -0.010 ± 0.020." in text
    assert "Enhancing a query's knowledge neurons (×2) changes p(answer) by +0.200" in text
    assert "floor" not in text
    tiny = summary.assign(delta_mean=summary["delta_mean"] / 100, p_before_mean=0.99)
    assert (
        "Every mean change is below 0.05, so this comparison is at its floor on this model: the answers start at "
        "p = 0.990 on average" in study_text.intervention_sentence(tiny)
    )
    with_logprob = summary.assign(logprob_mean=[-2.0, -0.5, 0.0, 0.1, 0.02], logprob_std=0.1)
    assert "; in log p(answer), -2.000 against -0.500; random" in study_text.intervention_sentence(with_logprob)
    attention = pd.DataFrame(
        dict(scaled=["all", "all"], factor=[0.0, 0.0], keys=["top", "random"], delta_p_mean=[-0.3, -0.02],
             delta_p_std=[0.1, 0.01], kn_change_mean=[-0.5, -0.05], kn_change_std=[0.1, 0.1], n=[4, 4])
    )  # fmt: skip
    assert study_text.attention_sentence(attention) == (
        "Cutting each head's attention to its most-attended position moves the knowledge neurons' mean activation "
        "by -50% and p(answer) by -0.300 (random positions: -5% and -0.020)."
    )
    assert study_text.attention_sentence(attention, [0, 0], [1, 2, 3]).endswith(
        "Every knowledge neuron here lies in layer(s) [0], before the first attention layer scaled (1), so no scaled "
        "attention can reach them at this position."
    )


def test_modification_sentence_on_a_hand_made_table():
    summary = pd.DataFrame(
        dict(task=["erase"] * 3, method=["query-local", "global", "CAS"], n_neurons=[10.0, 30.0, 8.0],
             reliability=[0.9, 0.95, 0.8], generalisation=[0.2, 0.6, 0.5], locality=[0.99, 0.9, 0.98])
    )  # fmt: skip
    text = study_text.modification_sentence(summary)
    assert text == (
        "**Erase**: the best generalisation comes from the global set (0.600); CAS reaches 0.500 against 0.200 for "
        "the query-local set (+0.300), with reliability 0.800 vs 0.900 and locality 0.980 vs 0.990 "
        "(8.0 vs 10.0 neurons)."
    )
    small = summary.assign(reliability=0.01, generalisation=0.02)
    assert study_text.modification_sentence(small).endswith(
        "No set moves the erase metrics by 0.05 or more: at these sizes the erase comparison is at its floor on this "
        "model, and its ranking is not evidence for or against CAS."
    )


def test_template_accuracy_floor_follows_the_model():
    from kc_utils.neurons.queries import (
        ORGANISM_TEMPLATE_ACCURACY,
        PRETRAINED_TEMPLATE_ACCURACY,
        template_accuracy_floor,
    )

    assert template_accuracy_floor("auto", "kc-organism") == ORGANISM_TEMPLATE_ACCURACY == 0.5
    assert template_accuracy_floor("auto", "smollm2-135m") == PRETRAINED_TEMPLATE_ACCURACY < 0.5
    assert template_accuracy_floor(0.2, "kc-organism") == 0.2 and template_accuracy_floor(1, "m") == 1.0
    for bad in (1.5, -0.1, "half", True, None):
        with pytest.raises(ValueError, match="min_template_accuracy must be"):
            template_accuracy_floor(bad, "m")
