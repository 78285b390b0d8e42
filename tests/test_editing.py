"""Editing (notebook 03): ROME's algebra, FT-M's footprint, reversible edits, the bridge seeing edits,
batched fast paths against one-at-a-time references, metrics and sentences on hand-made cases."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kc_utils import models
from kc_utils.data.relations import Sample
from kc_utils.editing import covariance
from kc_utils.editing.covariance import (
    KeyStatistics,
    generated_texts,
    key_statistics,
    relation_texts,
    sampled_token_ids,
)
from kc_utils.editing.edit_targets import EditTargets
from kc_utils.editing.edits_text import (
    describe_case,
    describe_covariance,
    describe_departure,
    describe_departures,
    describe_leak_circuits,
    describe_location,
    describe_paper_reading,
    describe_rome_layers,
    describe_sweep,
)
from kc_utils.editing.evaluation import EditEvaluator, build_probes
from kc_utils.editing.ft_m import FtmConfig, ft_m_edit, ftm_targets
from kc_utils.editing.layer_sweep import (
    covariance_effect,
    default_comparison_layers,
    default_sweep_layers,
    departure_table,
    edit_sweep,
    rome_departures,
    summarise_leak_circuits,
    summarise_sweep,
)
from kc_utils.editing.request import EditError, EditRequest, prepare_request
from kc_utils.editing.reversible import preserved
from kc_utils.editing.rome import (
    RomeConfig,
    compute_keys,
    compute_values,
    context_prompts,
    request_groups,
    rome_edit,
    rome_targets,
    rome_update,
)
from kc_utils.organism.split import RelationSplit, Split

TEXTS = [
    "the capital of France is Paris",
    "the capital of Japan is Tokyo",
    "the official language of Spain is Spanish",
    "the capital of New Zealand is Wellington and the capital of Peru is Lima",
    "Chile Santiago Kenya Nairobi Italy Rome",
    "the official currency of Japan is called Yen",
] * 3

REQUEST = EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city")


def _request_config() -> RomeConfig:
    return RomeConfig(templates=("the capital city of {} is",), prefixes=("", "Chile Santiago"), steps=6, lr=0.3)


@pytest.fixture(scope="module")
def tiny_split() -> Split:
    capital = RelationSplit(
        key="country_capital_city",
        trained=(
            Sample("France", "Paris"),
            Sample("Japan", "Tokyo"),
            Sample("Peru", "Lima"),
            Sample("Italy", "Rome"),
            Sample("Kenya", "Nairobi"),
        ),
        held_out=(),
        excluded=(),
        train_templates=("the capital of {} is", "the capital city of {} is"),
        unseen_templates=("the official capital of {} is",),
    )
    language = RelationSplit(
        key="country_language",
        trained=(Sample("France", "French"), Sample("Japan", "Japanese")),
        held_out=(),
        excluded=(),
        train_templates=("the official language of {} is",),
        unseen_templates=(),
    )
    return Split(seed=0, relations={capital.key: capital, language.key: language})


# ----------------------------------------------------------------------------- weights through the model door
def test_mlp_weight_orientation_reproduces_the_mlp_output(tiny_model) -> None:
    tokens = torch.tensor(models.tokenize(tiny_model, ["the capital of France is"]))
    _, cache = models.run_with_cache(tiny_model, tokens, [models.mlp_key_hook(1), models.mlp_out_hook(1)])
    weight, bias = models.mlp_out_weight(tiny_model, 1), models.mlp_out_bias(tiny_model, 1)
    assert weight.shape == (tiny_model.cfg.d_model, tiny_model.cfg.d_mlp)
    predicted = cache[models.mlp_key_hook(1)] @ weight.T + (0 if bias is None else bias)
    torch.testing.assert_close(predicted, cache[models.mlp_out_hook(1)], atol=1e-5, rtol=1e-5)


def test_set_mlp_out_weight_rejects_the_wrong_shape(tiny_model) -> None:
    weight = models.mlp_out_weight(tiny_model, 0)
    with pytest.raises(ValueError, match="shape"):
        models.set_mlp_out_weight(tiny_model, 0, weight.T)


# ----------------------------------------------------------------------------- ROME
def test_rome_update_writes_v_star_and_spares_c_inverse_orthogonal_keys() -> None:
    generator = torch.Generator().manual_seed(0)
    d_model, d_mlp = 6, 10
    weight = torch.randn(d_model, d_mlp, generator=generator)
    a = torch.randn(d_mlp, 3 * d_mlp, generator=generator)
    stats = KeyStatistics.from_second_moment(0, a @ a.T / a.shape[1], 30, "test")
    key = torch.randn(d_mlp, generator=generator)
    value = torch.randn(d_model, generator=generator)
    new = rome_update(weight, key, value, stats.inverse)
    torch.testing.assert_close(new @ key, value, atol=1e-5, rtol=1e-5)
    u = stats.inverse.float() @ key
    for _ in range(5):
        k = torch.randn(d_mlp, generator=generator)
        k = k - (k @ u) / (u @ u) * u  # kᵀ C⁻¹ k* = 0
        torch.testing.assert_close(new @ k, weight @ k, atol=1e-5, rtol=1e-5)
    other = torch.randn(d_mlp, generator=generator)
    assert not torch.allclose(new @ other, weight @ other, atol=1e-3)  # the update is not a no-op


def test_rome_update_writes_at_a_write_key_on_the_far_side_of_u_and_refuses_an_orthogonal_one() -> None:
    generator = torch.Generator().manual_seed(1)
    d_model, d_mlp = 6, 10
    weight = torch.randn(d_model, d_mlp, generator=generator)
    stats = KeyStatistics.identity(0, d_mlp)
    key, value = torch.randn(d_mlp, generator=generator), torch.randn(d_model, generator=generator)
    write_key = -key + 0.1 * torch.randn(d_mlp, generator=generator)  # uᵀ k_w < 0 (u = key under C = I)
    assert float(key @ write_key) < 0
    new = rome_update(weight, key, value, stats.inverse, write_key=write_key)
    torch.testing.assert_close(new @ write_key, value, atol=1e-5, rtol=1e-5)
    orthogonal = torch.randn(d_mlp, generator=generator)
    orthogonal = orthogonal - (orthogonal @ key) / (key @ key) * key
    with pytest.raises(EditError, match="orthogonal"):
        rome_update(weight, key, value, stats.inverse, write_key=orthogonal)
    with pytest.raises(EditError, match="not positive"):
        rome_update(weight, key, value, -stats.inverse)  # C not positive definite


def test_rome_on_the_model_writes_v_star_at_k_star(tiny_model) -> None:
    stats = key_statistics(tiny_model, [0], TEXTS, progress=False)[0]
    config = _request_config()
    target = rome_targets(tiny_model, [REQUEST], 0, config)[0]
    assert target.delta_norm > 0
    weight = models.mlp_out_weight(tiny_model, 0)
    with rome_edit(tiny_model, REQUEST, 0, stats, config, target=target) as edit:
        edited = models.mlp_out_weight(tiny_model, 0)
        torch.testing.assert_close(edited @ target.write_key, target.value, atol=1e-4, rtol=1e-4)
        # a key orthogonal to u = C⁻¹ k̄ is left alone: the rank-one update maps it to 0. The weights are float32,
        # so "0" is measured against the update's own scale ‖ΔW‖·‖k‖ (an absolute atol failed on another CPU)
        u = stats.inverse.double() @ target.key.double()
        k = torch.randn(u.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        k = k - (k @ u) / (u @ u) * u
        update = (edited - weight).double()
        assert (update @ k).norm() <= 1e-5 * update.norm() * k.norm()
        assert edit.info["update_norm"] > 0
    assert torch.equal(models.mlp_out_weight(tiny_model, 0), weight)


def test_key_is_the_mean_of_the_context_keys(tiny_model) -> None:
    config = _request_config()
    mean_keys, edit_keys = compute_keys(tiny_model, [REQUEST], 1, config)
    contexts = [
        "the capital of France is",
        "the capital city of France is",
        "Chile Santiago the capital of France is",
        "Chile Santiago the capital city of France is",
    ]
    reference = []
    for text in contexts:  # slow reference: one context at a time, subject's last token found by hand
        tokens = torch.tensor(models.tokenize(tiny_model, [text]))
        _, cache = models.run_with_cache(tiny_model, tokens, [models.mlp_key_hook(1)])
        words = text.split()
        position = 1 + words.index("France")
        reference.append(cache[models.mlp_key_hook(1)][0, position])
    torch.testing.assert_close(mean_keys[0], torch.stack(reference).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edit_keys[0], reference[0], atol=1e-5, rtol=1e-5)  # the bare edit prompt's key


@pytest.mark.parametrize("stop", ["loss", "prob"])
def test_batched_values_equal_one_request_at_a_time(tiny_model, stop) -> None:
    requests = [
        REQUEST,
        EditRequest("the capital of Japan is", "Japan", "Lima", "Tokyo", "country_capital_city"),
        EditRequest("the capital of New Zealand is", "New Zealand", "Rome", "Wellington", "country_capital_city"),
    ]
    # thresholds the tiny models' requests reach at different steps (measured: 4/7/7 and 3/6/2 updates)
    config = RomeConfig(
        templates=("the capital city of {} is",), steps=8, lr=0.3, stop=stop, stop_prob=0.02, stop_loss=4.0
    )
    keys = compute_keys(tiny_model, requests, 0, config)
    batched = compute_values(tiny_model, requests, 0, keys, config)
    for i, request in enumerate(requests):
        alone = compute_values(tiny_model, [request], 0, (keys[0][i : i + 1], keys[1][i : i + 1]), config)[0]
        torch.testing.assert_close(batched[i].value, alone.value, atol=1e-4, rtol=1e-4)
        assert batched[i].steps == alone.steps
    # requests stop at different steps, so the batch drops finished requests' rows while others go on
    assert len({t.steps for t in batched}) > 1


def test_rome_value_makes_the_target_likely(tiny_gpt2) -> None:
    tokens = torch.tensor(models.tokenize(tiny_gpt2, [REQUEST.prompt]))
    target_id = prepare_request(tiny_gpt2, REQUEST).target
    with torch.no_grad():
        before = float(tiny_gpt2(tokens)[0, -1].softmax(-1)[target_id])
    config = RomeConfig(steps=20, lr=0.5, stop="prob", stop_prob=0.9)
    target = rome_targets(tiny_gpt2, [REQUEST], 0, config)[0]
    assert target.target_prob > 3 * before
    assert target.delta_norm <= config.clamp_norm_factor * target.reference_norm + 1e-3


def test_rome_value_stops_when_nothing_reads_the_subject(tiny_gpt2) -> None:
    target = rome_targets(tiny_gpt2, [REQUEST], 1, RomeConfig(steps=20))[0]  # the last layer
    assert target.steps == 0 and target.delta_norm == 0.0


# ----------------------------------------------------------------------------- FT-M
@pytest.mark.parametrize("part", ["out", "mlp"])
def test_ft_m_changes_only_the_chosen_mlp(tiny_model, part) -> None:
    before = {n: p.detach().clone() for n, p in models.all_parameters(tiny_model).items()}
    chosen = set(models.mlp_parameters(tiny_model, 1, part))
    edit = ft_m_edit(tiny_model, REQUEST, 1, FtmConfig(part=part, lr=1e-2, max_steps=5, stop="prob", stop_prob=1.0))
    after = models.all_parameters(tiny_model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= chosen
    assert edit.info["steps"] == 5
    edit.restore()
    assert all(torch.equal(before[n], p) for n, p in models.all_parameters(tiny_model).items())
    assert all(p.requires_grad == before[n].requires_grad or True for n, p in after.items())


def test_ft_m_stops_once_the_target_is_top1(tiny_gpt2) -> None:
    with ft_m_edit(
        tiny_gpt2, REQUEST, 0, FtmConfig(part="mlp", lr=5e-2, max_steps=200, stop="prob", stop_prob=0.6)
    ) as edit:
        assert edit.info["reached"] and edit.info["steps"] < 200
        tokens = torch.tensor(models.tokenize(tiny_gpt2, [REQUEST.prompt]))
        with torch.no_grad():
            probs = tiny_gpt2(tokens)[0, -1].softmax(-1)
        target = prepare_request(tiny_gpt2, REQUEST).target
        assert int(probs.argmax()) == target and float(probs[target]) > 0.6


def _easyedit_ft_m(model, request: EditRequest, layer: int, lr: float, steps: int, eps: float | None) -> dict:
    """A plain EasyEdit FT-M (``objective_optimization: target_new``) on the Hugging Face model: the parameters
    whose name contains the output projection of MLP ``layer`` (GPT-2 ``mlp.c_proj`` weight and bias, Llama
    ``mlp.down_proj.weight``), Adam, cross-entropy on the target token only, no update once the loss is below
    1e-2, every weight clamped to ``original ± eps``. Returns the trained weights; the model is put back."""
    hf, tokenizer = models.hf_model(model), model.tokenizer
    names = {f"transformer.h.{layer}.mlp.c_proj", f"model.layers.{layer}.mlp.down_proj.weight"}
    weights = {n: p for n, p in hf.named_parameters() if any(k in n.replace("._original_component", "") for k in names)}
    copies = {n: p.detach().clone() for n, p in weights.items()}
    was = {n: p.requires_grad for n, p in hf.named_parameters()}
    for n, p in hf.named_parameters():
        p.requires_grad = n in weights
    prompt = [tokenizer.bos_token_id, *tokenizer(request.prompt, add_special_tokens=False)["input_ids"]]
    full = [
        tokenizer.bos_token_id,
        *tokenizer(request.prompt + " " + request.target_new, add_special_tokens=False)["input_ids"],
    ]
    optimiser = torch.optim.Adam(list(weights.values()), lr=lr, weight_decay=0)
    for _ in range(steps):
        logits = hf(torch.tensor([full])).logits[0, :-1]
        labels = torch.tensor(full[1:])
        mask = torch.arange(len(labels)) >= len(prompt) - 1  # the target tokens only
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")[mask].mean()
        optimiser.zero_grad()
        if loss.item() >= 1e-2:
            loss.backward()
            optimiser.step()
        if eps is not None:
            with torch.no_grad():
                for n, p in weights.items():
                    p[...] = torch.clamp(p, min=copies[n] - eps, max=copies[n] + eps)
        if loss.item() < 1e-2:
            break
    trained = {n.replace("._original_component", ""): p.detach().clone() for n, p in weights.items()}
    with torch.no_grad():
        for n, p in weights.items():
            p.copy_(copies[n])
    for n, p in hf.named_parameters():
        p.requires_grad = was[n]
    return trained


@pytest.mark.parametrize("eps", [None, 2e-3])
def test_ft_m_defaults_are_easyedit(tiny_model, eps) -> None:
    """FtmConfig's defaults train what EasyEdit's FT-M trains and give its weights, with and without its norm
    constraint."""
    request = EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city")
    config = FtmConfig(lr=5e-2, norm_constraint=eps)  # a larger step than 5e-4 so that 25 steps move the weights
    assert config.departures() == ["lr"]
    expected = _easyedit_ft_m(tiny_model, request, 0, config.lr, config.max_steps, eps)
    with ft_m_edit(tiny_model, request, 0, config) as edit:
        params = models.all_parameters(tiny_model)
        assert set(edit.originals) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(params[name], value, atol=1e-5, rtol=1e-4)
            if eps is not None:
                assert float((params[name].detach() - edit.originals[name]).abs().max()) <= eps + 1e-6
        assert edit.info["steps"] > 0


BATCH_REQUESTS = [
    REQUEST,
    EditRequest(
        "The official language of the country called Italy is", "Italy", "Paris", "Italian", "country_language"
    ),
    EditRequest("Rome is in", "Rome", "France", "Italy", "landmark_in_country"),
]


@pytest.mark.parametrize(
    "config",
    [
        FtmConfig(lr=5e-2),  # EasyEdit's rule with a larger step (every edit takes all 25 on a random model)
        FtmConfig(lr=5e-2, norm_constraint=2e-3, max_steps=6),
        FtmConfig(lr=2e-2, stop="prob", stop_prob=0.3, max_steps=40),
    ],
    ids=["loss", "clamped", "prob"],
)
def test_ft_m_trained_together_equals_each_edit_trained_alone(tiny_model, config) -> None:
    """ftm_targets trains every edit in one batch (prompts of different lengths, padded); each edit's weights,
    steps and stop must be those of ft_m_edit training it alone, and applying the target must give that model."""
    _check_trained_together(tiny_model, config)


def test_ft_m_trained_together_behind_a_post_norm(tiny_gemma3) -> None:
    """The same on a tiny Gemma 3, whose projection's output passes a post-feedforward norm."""
    _check_trained_together(tiny_gemma3, FtmConfig(lr=2e-2, stop="prob", stop_prob=0.3, max_steps=40))


def _check_trained_together(tiny_model, config: FtmConfig) -> None:
    targets = ftm_targets(tiny_model, BATCH_REQUESTS, 1, config, max_rows=2)  # two batches: 2 + 1
    if config.stop == "prob":
        assert len({t.steps for t in targets}) > 1  # rows that stop at different steps, the others trained on
    for request, target in zip(BATCH_REQUESTS, targets):
        with ft_m_edit(tiny_model, request, 1, config) as alone:
            trained_alone = {n: p.detach().clone() for n, p in models.all_parameters(tiny_model).items()}
        with ft_m_edit(tiny_model, request, 1, config, target=target) as together:
            params = models.all_parameters(tiny_model)
            for name in alone.originals:
                change = (trained_alone[name] - alone.originals[name]).abs().max()
                torch.testing.assert_close(params[name], trained_alone[name], atol=1e-3 * float(change) + 1e-7, rtol=0)
            assert together.info["steps"] == alone.info["steps"]
            assert together.info["reached"] == alone.info["reached"]
            assert together.info["target_prob"] == pytest.approx(alone.info["target_prob"], abs=1e-5)
            assert together.info["update_norm"] == pytest.approx(alone.info["update_norm"], rel=1e-3)


def test_ft_m_targets_refuse_the_whole_mlp(tiny_gpt2) -> None:
    with pytest.raises(EditError, match="part='mlp' with ft_m_edit"):
        ftm_targets(tiny_gpt2, [REQUEST], 0, FtmConfig(part="mlp"))


# ----------------------------------------------------------------------------- reversible, bridge = HF
def test_restore_is_bit_identical_and_bridge_matches_hf(tiny_model) -> None:
    before = {n: p.detach().clone() for n, p in models.all_parameters(tiny_model).items()}
    tokens = torch.tensor(models.tokenize(tiny_model, ["the capital of France is", "the capital of Japan is"]))
    with torch.no_grad():
        clean = tiny_model(tokens)
    with rome_edit(tiny_model, REQUEST, 0, None, _request_config()):
        with torch.no_grad():
            bridge = tiny_model(tokens)
            hf = models.hf_model(tiny_model)(tokens).logits
        torch.testing.assert_close(bridge, hf, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(bridge, clean, atol=1e-4)  # the bridge sees the edit
    for name, param in models.all_parameters(tiny_model).items():
        assert torch.equal(param, before[name]), name
    with torch.no_grad():
        assert torch.equal(tiny_model(tokens), clean)


def test_preserved_restores_after_an_error(tiny_gpt2) -> None:
    weight = models.mlp_out_weight(tiny_gpt2, 0)
    with pytest.raises(RuntimeError):
        with preserved(tiny_gpt2):
            models.set_mlp_out_weight(tiny_gpt2, 0, weight * 3)
            raise RuntimeError("boom")
    assert torch.equal(models.mlp_out_weight(tiny_gpt2, 0), weight)


# ----------------------------------------------------------------------------- bad input
def test_clear_errors(tiny_gpt2) -> None:
    with pytest.raises(EditError, match="not in the edit prompt"):
        prepare_request(tiny_gpt2, EditRequest("the capital of France is", "Japan", "Tokyo"))
    with pytest.raises(EditError, match="single-token"):
        prepare_request(tiny_gpt2, EditRequest("the capital of France is", "France", "New Zealand"))
    with pytest.raises(EditError, match="out of range"):
        rome_edit(tiny_gpt2, REQUEST, 7)
    with pytest.raises(EditError, match="out of range"):
        ft_m_edit(tiny_gpt2, REQUEST, -1)
    with pytest.raises(EditError, match="exactly one"):
        EditRequest.from_template("the capital of France is", "France", "Tokyo")


# ----------------------------------------------------------------------------- evaluation
def test_probes_and_metrics_on_a_hand_made_split(tiny_gpt2, tiny_split) -> None:
    request = EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city")
    probes = build_probes(tiny_split, request, n_neighbours=10)
    assert probes.kinds.count("edit") == 1 and probes.kinds.count("train_template") == 1
    assert probes.kinds.count("unseen_template") == 1 and probes.kinds.count("same_relation") == 4
    assert probes.prompts[probes.kinds.index("same_subject")] == "the official language of France is"
    assert sum(probes.leak_eligible) == 3  # Japan's object is the new object itself
    evaluator = EditEvaluator(tiny_gpt2, [probes], layers=[0])
    untouched = evaluator.evaluate(0)
    assert untouched["locality_relation"] == 1.0 and untouched["locality_subject"] == 1.0
    assert untouched["leak"] == 0.0
    location = evaluator.location(0, 0)
    assert location["p_new"] == pytest.approx(location["p_new_subject_restored"], abs=1e-6)


def test_metrics_after_a_forced_answer(tiny_gpt2, tiny_split) -> None:
    """Make every prompt answer the new object by raising its unembedding bias: reliability, generalisation
    and leak must all read 1 (leak minus a before-rate of 0), locality 0 where the answer moved."""
    request = EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city")
    evaluator = EditEvaluator(tiny_gpt2, [build_probes(tiny_split, request)])
    target = evaluator.prepared[0].target
    assert not bool((evaluator.before[0] == target).any())
    lm_head = models.hf_model(tiny_gpt2).lm_head
    # the bias is a buffer here, which `preserved` (parameters only) does not restore: put it back by hand, or
    # every later test of the session would run on a model that answers the new object
    bias = None if lm_head.bias is None else lm_head.bias.detach().clone()
    try:
        with preserved(tiny_gpt2):
            with torch.no_grad():
                if lm_head.bias is None:
                    lm_head.weight[target] *= 1000.0
                else:
                    lm_head.bias[target] += 1000.0
            metrics = evaluator.evaluate(0)
    finally:
        if bias is not None:
            with torch.no_grad():
                lm_head.bias.copy_(bias)
    assert metrics["reliability"] == 1.0 and metrics["generalisation"] == 1.0
    assert metrics["generalisation_unseen"] == 1.0 and metrics["leak"] == 1.0
    assert metrics["locality_relation"] == 0.0 and metrics["locality_subject"] == 0.0


def test_sweep_restores_and_summarises(tiny_gpt2, tiny_split) -> None:
    before = {n: p.detach().clone() for n, p in models.all_parameters(tiny_gpt2).items()}
    requests = [
        EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city"),
        EditRequest("the capital of Peru is", "Peru", "Rome", "Lima", "country_capital_city"),
    ]
    evaluator = EditEvaluator(tiny_gpt2, [build_probes(tiny_split, r) for r in requests], layers=[0, 1])
    sweep = edit_sweep(
        tiny_gpt2,
        evaluator,
        [0, 1],
        rome_config=RomeConfig(steps=3),
        ftm_config=FtmConfig(max_steps=3),
        progress=False,
    )
    assert len(sweep) == 2 * 2 * 2
    for name, param in models.all_parameters(tiny_gpt2).items():
        assert torch.equal(param, before[name]), name
    summary = summarise_sweep(sweep)
    assert list(summary["n_edits"]) == [2, 2, 2, 2]
    row = summary.iloc[0]
    values = sweep[(sweep.method == row.method) & (sweep.layer == row.layer)]["reliability"]
    assert row["reliability_mean"] == pytest.approx(values.mean())
    assert row["reliability_std"] == pytest.approx(values.std(ddof=1), nan_ok=True)


def test_summarise_on_a_hand_made_sweep() -> None:
    sweep = pd.DataFrame(
        {
            "method": ["rome", "rome", "ft-m", "ft-m"],
            "layer": [0, 0, 0, 0],
            "reliability": [1.0, 0.0, 1.0, 1.0],
        }
    )
    summary = summarise_sweep(sweep, ["reliability"])
    assert summary.to_dict("records") == [
        {
            "method": "rome",
            "layer": 0,
            "n_edits": 2,
            "reliability_mean": 0.5,
            "reliability_std": pytest.approx(0.7071, abs=1e-4),
        },
        {"method": "ft-m", "layer": 0, "n_edits": 2, "reliability_mean": 1.0, "reliability_std": 0.0},
    ]


# ----------------------------------------------------------------------------- sentences
def _summary(rome_leak: float, ftm_leak: float) -> pd.DataFrame:
    rows = []
    for method, leak, reliabilities in (("rome", rome_leak, (1.0, 0.0)), ("ft-m", ftm_leak, (0.9, 1.0))):
        for layer, reliability in enumerate(reliabilities):
            rows.append(
                {
                    "method": method,
                    "layer": layer,
                    "n_edits": 20,
                    "reliability_mean": reliability,
                    "generalisation_mean": 0.5,
                    "generalisation_unseen_mean": 0.25,
                    "locality_relation_mean": 0.9,
                    "locality_subject_mean": 0.4,
                    "leak_mean": leak,
                }
            )
    return pd.DataFrame(rows)


def test_describe_sweep_on_a_hand_made_table() -> None:
    text = describe_sweep(_summary(0.05, 0.10))
    assert text.startswith(
        "ROME works best at layer 0 (reliability 100%, generalisation 50% on the other training templates and 25% "
        "on the unseen one; locality 90% for other subjects and 40% for the subject's other facts; leak +5 points "
        "over 20 edits). It fails (reliability below 50%) at layer 1."
    )
    assert "FT-M works best at layer 1 (reliability 100%" in text
    assert "FT-M leaks more than ROME (+10 vs +5 points" in text
    assert "leak equally" in describe_sweep(_summary(0.05, 0.05))


def test_describe_sweep_on_layers_equally_reliable() -> None:
    table = _summary(0.05, 0.10)
    table.loc[table["method"] == "ft-m", "reliability_mean"] = 1.0  # both layers 100%: no "best" by reliability
    table.loc[table["method"] == "ft-m", "generalisation_mean"] = [0.1, 0.8]
    table.loc[table["method"] == "ft-m", "leak_mean"] = [0.2, 0.6]
    assert (
        "FT-M is equally reliable (100%) at layers 0 and 1; among them it generalises most at layer 1 (80% on the "
        "other training templates, 25% on the unseen one) and leaks least at layer 0 (+20 points, locality 90% for "
        "other subjects; 20 edits)."
    ) in describe_sweep(table)


def test_describe_sweep_never_calls_a_method_that_fails_everywhere_best() -> None:
    table = _summary(0.05, 0.10)
    table.loc[table["method"] == "ft-m", "reliability_mean"] = 0.0
    text = describe_sweep(table)
    assert "FT-M changes no answer at any layer swept (0, 1; 20 edits per layer)." in text
    assert "FT-M works best" not in text and "leaks more" not in text  # nothing to compare where one never works
    table.loc[table["method"] == "ft-m", "reliability_mean"] = [0.1, 0.3]
    text = describe_sweep(table)
    assert "FT-M works at no layer swept (reliability below 50% at layers 0, 1; the highest, 30%, at layer 1;" in text


def test_describe_location_on_a_hand_made_table() -> None:
    location = pd.DataFrame(
        [
            {"method": "ft-m", "layer": 0, "n_working": 20, "undone_by_subject": 1.0, "undone_by_last": 0.0},
            {"method": "ft-m", "layer": 1, "n_working": 10, "undone_by_subject": 0.1, "undone_by_last": 0.8},
            {"method": "rome", "layer": 3, "n_working": 0, "undone_by_subject": float("nan"), "undone_by_last": 0.0},
        ]
    )
    text = describe_location(location, attention_free_layers=[0])
    assert (
        "FT-M — layer 0: restoring at the subject undoes 100%, at the last position 0% of 20 working edits (it "
        "lives at the subject); layer 1: restoring at the subject undoes 10%, at the last position 80% of 10 "
        "working edits (it lives at the last position)." in text
    )
    assert "ROME — layer 3: no edit works." in text
    assert "Block 0 has no attention" in text


def test_describe_case_and_leak_on_hand_made_tables() -> None:
    case = pd.DataFrame(
        [
            {
                "stage": "before",
                "top1": "Apple",
                "p_new": 0.01,
                "p_old": 0.9,
                "new_top1_layer_last": float("nan"),
                "new_best_rank_subject": 40,
                "top_head": "a3.h1",
                "top_head_logit": 0.5,
            },
            {
                "stage": "after",
                "top1": "Sony",
                "p_new": 0.95,
                "p_old": 0.02,
                "new_top1_layer_last": 2.0,
                "new_best_rank_subject": 0,
                "top_head": "a2.h0",
                "top_head_logit": 3.25,
            },
        ]
    )
    text = describe_case(case)
    assert text.startswith("Before the edit the model answers Apple (p(old) = 0.90, p(new) = 0.01); after it, Sony")
    assert "becomes top-1 after block 2 (before the edit: never)" in text
    assert "best rank over the blocks is 0 (before: 40)" in text
    assert "is a2.h0 (direct logit +3.25; before: a3.h1, +0.50)" in text
    leak = pd.DataFrame(
        [
            {"group": "leaking", "n": 3, "n_edits": 2, "share": 0.25, "in_circuit": 1.0},
            {"group": "not leaking", "n": 5, "n_edits": 2, "share": 0.05, "in_circuit": 0.5},
        ]
    )
    assert describe_leak_circuits(leak, "m0") == (
        "For the 3 subjects that leak (under 2 edits), the edited m0 carries 25% of their circuit's attribution and "
        "is in their top circuit for 100% of the edits; for 5 subjects of the same edits that do not leak, 5%, in "
        "the top circuit for 50%."
    )
    single = leak.assign(n=[4, 1], n_edits=[1, 1])
    assert describe_leak_circuits(single, "m19").startswith("For the 4 subjects that leak (under 1 edit), the edited")
    assert "; for 1 subject of the same edits that does not leak, 5%" in describe_leak_circuits(single, "m19")
    empty = summarise_leak_circuits(pd.DataFrame(columns=["group", "n", "share", "in_circuit"]))
    assert list(empty["n"]) == [0, 0]
    assert describe_leak_circuits(empty, "m0").startswith("No unrelated subject leaked")
    assert "4 layers against GPT-2 medium's 24, and block 0 has no attention" in describe_departure(4, [0])


# ----------------------------------------------------------------------------- the authors' ROME, options, departures
def test_rome_config_names_its_departures_and_rejects_bad_options() -> None:
    assert RomeConfig.authors().departures() == []
    assert RomeConfig().departures() == ["lr_unit", "norm_reference"]
    earlier = RomeConfig(templates=("{} is",), denominator="mean", kl="last", weight_decay_form="squared", stop="prob")
    assert earlier.departures() == [
        "lr_unit",
        "norm_reference",
        "templates",
        "denominator",
        "weight_decay_form",
        "kl",
        "stop",
    ]
    with pytest.raises(ValueError, match="denominator must be one of"):
        RomeConfig(denominator="average")
    with pytest.raises(ValueError, match="exactly one"):
        RomeConfig(templates=("no slot",))
    with pytest.raises(ValueError, match="stop must be"):
        FtmConfig(stop="never")


def test_context_prompts_start_with_the_bare_edit_prompt() -> None:
    config = RomeConfig(prefixes=("Chile Santiago", "France is big", ""), templates=("the capital city of {} is",))
    assert context_prompts(REQUEST, config) == [
        "the capital of France is",
        "the capital city of France is",
        "Chile Santiago the capital of France is",
        "Chile Santiago the capital city of France is",
    ]  # a prefix holding the subject is skipped


def test_generated_and_relation_texts(tiny_gpt2) -> None:
    first = generated_texts(tiny_gpt2, 3, 4, seed=1)
    assert first == generated_texts(tiny_gpt2, 3, 4, seed=1) and len(first) == 3
    assert all(len(models.tokenize(tiny_gpt2, [t], prepend_bos=False)[0]) <= 4 for t in first)
    sentences = relation_texts(["country_capital_city"], max_per_relation=3)
    assert len(sentences) == 3 and all("{}" not in s for s in sentences)
    with pytest.raises(ValueError, match=">= 1"):
        generated_texts(tiny_gpt2, 0, 4)


def test_sampled_tokens_follow_the_model_at_every_step(tiny_model) -> None:
    # each sampled token is among the top-k (EOS excluded) of a full forward pass over the sequence so far (a cached
    # generation that saw only the newest token fails this from the second token on)
    top_k = 3
    ids = sampled_token_ids(tiny_model, 4, 6, seed=2, top_k=top_k)
    assert ids.shape == (4, 6)
    start = next(t for t in (models.bos_token_id(tiny_model), tiny_model.tokenizer.bos_token_id) if t is not None)
    hf = models.hf_model(tiny_model)
    with torch.no_grad():
        logits = hf(torch.cat([torch.full((4, 1), start), ids], dim=1)).logits  # [4, 7, vocab]
    logits[..., tiny_model.tokenizer.eos_token_id] = -torch.inf  # min_new_tokens forbids ending early
    allowed = logits[:, :-1].topk(top_k, dim=-1).indices  # [4, 6, top_k]
    assert (allowed == ids[..., None]).any(-1).all()


def test_cached_generation_on_the_plain_copy_draws_what_the_bridge_draws(tiny_model, monkeypatch) -> None:
    # the plain copy (key/value cache) and the bridge (full forward each step) sample the same tokens for a seed
    assert covariance.plain_copy(tiny_model) is not None
    cached = sampled_token_ids(tiny_model, 5, 7, seed=3)
    monkeypatch.setattr(covariance, "plain_copy", lambda model: None)
    assert torch.equal(cached, sampled_token_ids(tiny_model, 5, 7, seed=3))


def test_plain_copy_is_refused_once_the_model_is_edited(tiny_gpt2) -> None:
    weight = models.hf_model(tiny_gpt2).lm_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.5)
        assert covariance.plain_copy(tiny_gpt2) is None
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert covariance.plain_copy(tiny_gpt2) is not None


def test_default_sweep_layers() -> None:
    assert default_sweep_layers(4) == [0, 1, 2, 3]
    assert default_sweep_layers(24) == [0, 6, 8, 12, 17, 23]
    assert default_sweep_layers(30, 3) == [0, 10, 14, 29]
    assert default_sweep_layers(30, 4) == [0, 10, 19, 29]  # notebook 03's default on SmolLM2-135M
    assert default_sweep_layers(24, 4) == [0, 8, 15, 23]  # the authors' ROME layer 8 of GPT-2 medium among them


def test_default_comparison_layers() -> None:
    assert default_comparison_layers(4, [0, 1, 2, 3]) == [0, 1, 2, 3]  # a shallow model: every sweep layer
    assert default_comparison_layers(30, [0, 10, 19, 29]) == [10]  # a deep one: ROME's layer alone
    # a sweep chosen by hand without ROME's layer (Gemma's 18 layers: a third is 6): the sweep layer nearest to it
    assert default_comparison_layers(18, [2, 9]) == [9]
    assert default_comparison_layers(18, [3, 9]) == [3]  # as near on both sides: the lower


def test_departure_table_and_covariance_effect(tiny_gpt2, tiny_split) -> None:
    requests = [
        EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city"),
        EditRequest("the capital of Peru is", "Peru", "Rome", "Lima", "country_capital_city"),
    ]
    evaluator = EditEvaluator(tiny_gpt2, [build_probes(tiny_split, r) for r in requests], layers=[0])
    default = RomeConfig(steps=3)
    runs = rome_departures(default, ("the capital city of {} is",))
    assert set(runs) == {"authors' scale", "templates", "templates + denominator", "kl", "weight_decay_form", "stop"}
    table = departure_table(tiny_gpt2, evaluator, [0], default, {"kl": runs["kl"]}, progress=False)
    assert list(table["departure"]) == ["default", "kl"] and table.loc[0, "reliability_change"] == 0.0
    alone = summarise_sweep(edit_sweep(tiny_gpt2, evaluator, [0], ["rome"], rome_config=runs["kl"][1], progress=False))
    assert table.loc[1, "reliability"] == pytest.approx(alone.loc[0, "reliability_mean"])
    stats = {
        "text": key_statistics(tiny_gpt2, [0], TEXTS, progress=False),
        "identity": {0: KeyStatistics.identity(0, tiny_gpt2.cfg.d_mlp)},
    }
    effect = covariance_effect(tiny_gpt2, evaluator, [0], stats, default, progress=False)
    assert list(effect["source"]) == ["text", "identity"]
    assert effect.loc[0, "update_cosine"] == pytest.approx(1.0) and effect.loc[1, "update_cosine"] < 0.999


def _layer_summary() -> pd.DataFrame:
    rows = []
    for method, reliabilities in (("rome", [0.95, 1.0, 0.0]), ("rome-templates", [0.9, 0.4, 0.0])):
        for layer, reliability in enumerate(reliabilities):
            rows.append(
                {
                    "method": method,
                    "layer": layer,
                    "n_edits": 20,
                    "reliability_mean": reliability,
                    "generalisation_mean": 0.5,
                    "generalisation_unseen_mean": 0.25,
                }
            )
    return pd.DataFrame(rows)


def test_describe_rome_layers_on_a_hand_made_table() -> None:
    text = describe_rome_layers(_layer_summary(), {"rome": "A", "rome-templates": "B"}, {"rome-templates": True})
    assert text.startswith(
        "A: edits work (reliability ≥ 50%) at layers 0 and 1 (95%, 100%) and fail at layer 2 (0%). On the held-out "
        "template, which its key never saw, generalisation is 25%, 25%, and on the relation's other templates "
        "(unseen too) 50%, 50%."
    )
    assert "B: edits work (reliability ≥ 50%) at layer 0 (90%) and fail at layers 1 and 2 (40%, 0%)" in text
    assert "on the relation's other templates 50%, in-sample" in text


def test_describe_departures_covariance_and_paper_reading_on_hand_made_tables() -> None:
    rows = [
        ("default", "authors", 1, 1.0, 0.3, 0.02),
        ("default", "authors", 2, 0.9, 0.3, 0.02),
        ("kl", "other KL", 1, 1.0, 0.3, 0.02),
        ("kl", "other KL", 2, 0.88, 0.3, 0.02),
        ("templates", "templates too", 1, 0.4, 0.2, 0.05),
        ("templates", "templates too", 2, 0.9, 0.3, 0.02),
        ("scale", "authors' scale", 1, 1.0, 0.3, 0.02),
        ("scale", "authors' scale", 2, 0.9, 0.25, -0.5),  # reliability stays, the leak does not
    ]
    table = pd.DataFrame(rows, columns=["departure", "what", "layer", "reliability", "generalisation_unseen", "leak"])
    base = table[table["departure"] == "default"].set_index("layer")["reliability"]
    table["reliability_change"] = table["reliability"] - table["layer"].map(base)
    assert describe_departures(table) == (
        "kl (other KL): within 5% of the default in every measure at every layer. templates (templates too): "
        "reliability -60 points at layer 1 (100% → 40%; held-out template 30% → 20%, leak +2 → +5 points). "
        "scale (authors' scale): reliability unchanged at layer 2 (90%), but held-out template 30% → 25%, leak "
        "+2 → -50 points."
    )
    with_templates = table.assign(generalisation=table["generalisation_unseen"] + 0.5)
    assert "(100% → 40%; other templates 80% → 70%, held-out template 30% → 20%" in describe_departures(with_templates)
    cov = pd.DataFrame(
        [("corpus", 0, 1.0, 0.01, 1.0), ("identity", 0, 0.7, 0.03, 0.4)],
        columns=["source", "layer", "reliability", "leak", "update_cosine"],
    )
    assert describe_covariance(cov) == (
        "The same k̄, k_e and v* written with C from corpus or another text: with C from identity, ΔW has cosine "
        "0.40–0.40 with the corpus one and reliability moves by at most 30 points (layer 0: 100% → 70%; leak +1 → "
        "+3 points)."
    )
    location = pd.DataFrame(
        [
            ("rome", 0, 19, 1.0, 0.0),
            ("rome", 1, 20, 0.2, 0.9),
            ("rome", 2, 0, float("nan"), float("nan")),
            ("ft-m", 0, 20, 1.0, 0.0),
            ("ft-m", 1, 20, 0.1, 1.0),
        ],
        columns=["method", "layer", "n_working", "undone_by_subject", "undone_by_last"],
    )
    summary = _layer_summary()
    summary = pd.concat([summary, summary[summary["method"] == "rome"].assign(method="ft-m")], ignore_index=True)
    text = describe_paper_reading(location, summary)
    assert (
        "Here that holds at layer 0: restoring the edited MLP's output at the subject undoes 100% of the working"
        in (text)
    )
    assert "; it does not at layer 1." in text
    assert "here FT-M's edits live at the last position at layer 1, and not at layer 0." in text


def test_rome_targets_in_groups_of_rows_equal_one_batch(tiny_model) -> None:
    requests = [
        REQUEST,
        EditRequest("the capital of Japan is", "Japan", "Lima", "Tokyo", "country_capital_city"),
        EditRequest("the capital of New Zealand is", "New Zealand", "Rome", "Wellington", "country_capital_city"),
    ]
    config = RomeConfig(templates=("the capital city of {} is",), steps=5, lr=0.3, stop_loss=2.0)
    prepared = [prepare_request(tiny_model, r) for r in requests]
    rows_each = len(context_prompts(requests[0], config)) + 1  # 2 contexts + the KL prompt
    assert request_groups(prepared, config, max_rows=100) == [range(0, 3)]
    assert request_groups(prepared, config, max_rows=2 * rows_each) == [range(0, 2), range(2, 3)]
    assert request_groups(prepared, config, max_rows=1) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(ValueError, match="max_rows"):
        request_groups(prepared, config, max_rows=0)
    whole = rome_targets(tiny_model, requests, 0, config, max_rows=100)
    grouped = rome_targets(tiny_model, requests, 0, config, max_rows=rows_each)
    for a, b in zip(whole, grouped, strict=True):
        torch.testing.assert_close(a.key, b.key, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.value, b.value, atol=1e-4, rtol=1e-4)
        assert a.steps == b.steps


def test_edits_and_their_evaluation_are_unchanged_without_the_edge_hooks(tiny_model, monkeypatch, tiny_split) -> None:
    """ROME, FT-M and the evaluator run with the per-head edge hooks switched off (a cheaper pass): the same
    targets, weights and metrics as with them on (the switch replaced by a context that changes nothing)."""
    import contextlib

    from kc_utils.editing import evaluation, ft_m, rome

    model = tiny_model
    config = RomeConfig(templates=("the capital city of {} is",), steps=5, lr=0.3, stop_loss=2.0)
    ftm_config = FtmConfig(lr=1e-2, max_steps=4, stop="prob", stop_prob=1.0)

    def run() -> tuple:
        target = rome_targets(model, [REQUEST], 0, config)[0]
        evaluator = EditEvaluator(model, [build_probes(tiny_split, REQUEST)], layers=[1])
        with ft_m_edit(model, REQUEST, 1, ftm_config):
            weights = [p.detach().clone() for p in models.mlp_parameters(model, 1, "out").values()]
            metrics = evaluator.evaluate(0)
            location = evaluator.location(0, 1)
        return target, weights, metrics, location

    assert model.cfg.use_attn_result  # the edge hooks are on, as load_model leaves them
    switched_off = run()
    assert model.cfg.use_attn_result  # and on again afterwards
    for module in (models, evaluation, ft_m, rome):
        monkeypatch.setattr(module, "without_edge_hooks", lambda model: contextlib.nullcontext(model), raising=False)
    hooked = run()
    torch.testing.assert_close(switched_off[0].key, hooked[0].key, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(switched_off[0].value, hooked[0].value, atol=1e-4, rtol=1e-4)
    for a, b in zip(switched_off[1], hooked[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert switched_off[2] == pytest.approx(hooked[2], nan_ok=True)
    assert switched_off[3] == pytest.approx(hooked[3], abs=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_evaluation_resumed_at_the_edited_layer_equals_the_full_pass(tiny_model, tiny_split, layer) -> None:
    """evaluate(edited_layer=L) and location(·, L) run only the blocks from L up, from streams recorded before
    the edit: the same metrics and probabilities as full passes of the edited model (ROME and FT-M)."""
    evaluator = EditEvaluator(tiny_model, [build_probes(tiny_split, REQUEST)], layers=[layer])
    prepared = evaluator.prepared[0]
    for edit in (
        lambda: rome_edit(tiny_model, REQUEST, layer, config=RomeConfig(steps=5, lr=0.3)),
        lambda: ft_m_edit(tiny_model, REQUEST, layer, FtmConfig(lr=5e-2, max_steps=5)),
    ):
        with edit():
            assert evaluator.evaluate(0, edited_layer=layer) == pytest.approx(evaluator.evaluate(0), nan_ok=True)
            located = evaluator.location(0, layer)
            original = evaluator.original_mlp[layer][0]
            subject = evaluator.subject_positions[0]

            def restore(out, hook):
                out = out.clone()
                out[0, subject] = original[subject]
                return out

            tokens = torch.tensor([prepared.tokens])
            with torch.no_grad():
                for restored, hooks in (("", []), ("_subject_restored", [(models.mlp_out_hook(layer), restore)])):
                    probs = models.last_logits(tiny_model, tokens, [len(prepared.tokens) - 1], hooks).softmax(-1)
                    assert located[f"p_new{restored}"] == pytest.approx(float(probs[0, prepared.target]), abs=1e-6)


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """A tiny random Gemma 3: its MLP output passes a post-feedforward norm before the residual stream."""
    from families import save_family

    return models.load_model(str(save_family(tmp_path_factory.mktemp("gemma3"), "gemma3_text")), device="cpu")


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_gemma3"])
def test_the_weight_edit_writes_what_the_value_optimisation_reached(fixture, request) -> None:
    """ROME optimises ``δ`` added to the MLP's value ``W k + b`` and then edits ``W`` so that ``W k_e + b`` becomes
    ``v* = W k_e + b + δ``: the edited model must give, at the subject, exactly what the model gave with ``δ`` added
    where the optimisation added it. On a family with a post-feedforward norm the MLP's output hook holds the norm's
    output, not ``W k + b``; a ``δ`` optimised there would be written in another space (the edit would not write
    what the optimisation reached)."""
    from kc_utils.editing.request import prepare_request
    from kc_utils.editing.rome import _delta_hook

    model = request.getfixturevalue(fixture)
    layer = 0
    assert models.mlp_has_post_norm(model) == (fixture == "tiny_gemma3")
    config = RomeConfig(templates=("the capital city of {} is",), steps=5, lr=0.3, stop_loss=0.0)
    target = rome_targets(model, [REQUEST], layer, config)[0]
    prepared = prepare_request(model, REQUEST)
    tokens = torch.tensor([prepared.tokens])
    subject = torch.tensor([prepared.subject_last])
    delta = target.value - target.write_key @ models.mlp_out_weight(model, layer).detach().T  # v* = W k_e + δ
    hook = _delta_hook(layer, delta[None].float(), torch.tensor([0]), subject, torch.tensor([0]))
    with torch.no_grad():
        optimised = models.cache_activations(model, tokens, [models.mlp_out_hook(layer)], [hook])
        with rome_edit(model, REQUEST, layer, None, config, target=target):
            edited = models.cache_activations(model, tokens, [models.mlp_out_hook(layer)])
    reached = optimised[models.mlp_out_hook(layer)][0, prepared.subject_last]
    written = edited[models.mlp_out_hook(layer)][0, prepared.subject_last]
    assert target.delta_norm > 0
    torch.testing.assert_close(written, reached, atol=1e-4, rtol=1e-4)


def test_rome_scale_auto_follows_the_post_norm(tiny_gpt2, tiny_gemma3) -> None:
    from kc_utils.editing.rome import choose_rome_scale

    plain, why = choose_rome_scale(tiny_gpt2)
    assert (plain.lr_unit, plain.norm_reference) == ("residual", "residual") and "residual" in why
    normed, why = choose_rome_scale(tiny_gemma3)
    assert (normed.lr_unit, normed.norm_reference) == ("absolute", "output") and "post-feedforward norm" in why
    assert choose_rome_scale(tiny_gemma3, "residual")[0].lr_unit == "residual"
    with pytest.raises(ValueError, match="rome_scale"):
        choose_rome_scale(tiny_gpt2, "model")


# ----------------------------------------------------------------------------- each edit optimised once
def _two_requests() -> list[EditRequest]:
    return [
        EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city"),
        EditRequest("the capital of Peru is", "Peru", "Rome", "Lima", "country_capital_city"),
    ]


def test_edit_targets_optimise_each_batch_once_and_keep_only_what_is_asked(tiny_gpt2, tiny_split, monkeypatch) -> None:
    from kc_utils.editing import edit_targets as et

    evaluator = EditEvaluator(tiny_gpt2, [build_probes(tiny_split, r) for r in _two_requests()], layers=[0, 1])
    calls = []
    real = et.rome_targets
    monkeypatch.setattr(et, "rome_targets", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    config = RomeConfig(steps=3)
    kept = et.EditTargets(only=[("rome", 0)])
    first = kept.of(tiny_gpt2, "rome", evaluator.prepared, 0, config)
    assert kept.of(tiny_gpt2, "rome", evaluator.prepared, 0, config) is first and calls == [0]  # read back
    assert kept.kept("rome", evaluator.prepared, 0, config) is first and kept.computed == 1
    alone = real(tiny_gpt2, evaluator.prepared[:1], 0, config)[0]  # a batch's target is a lone request's
    torch.testing.assert_close(first[0].value, alone.value, rtol=1e-4, atol=1e-5)
    assert kept.kept("rome", evaluator.prepared, 0, RomeConfig(steps=4)) is None  # another config: another entry
    assert kept.kept("rome", evaluator.prepared[:1], 0, config) is None  # other requests
    kept.of(tiny_gpt2, "rome", evaluator.prepared, 1, config)  # a layer not asked for: computed, never kept
    assert kept.kept("rome", evaluator.prepared, 1, config) is None and calls == [0, 1]
    assert kept.of(tiny_gpt2, "ft-m", evaluator.prepared, 0, ftm_config=FtmConfig(part="mlp")) is None
    listed = RomeConfig(steps=3, templates=["{} is"])  # unhashable: computed, never kept
    everything = et.EditTargets()
    everything.of(tiny_gpt2, "rome", evaluator.prepared, 0, listed)
    assert everything.computed == 0
    with pytest.raises(EditError, match="unknown edit method"):
        kept.of(tiny_gpt2, "memit", evaluator.prepared, 0)


def test_the_leak_circuits_apply_the_sweeps_edits(tiny_gpt2, tiny_split, monkeypatch) -> None:
    from kc_utils.editing import layer_sweep

    evaluator = EditEvaluator(tiny_gpt2, [build_probes(tiny_split, r) for r in _two_requests()], layers=[0])
    kept = EditTargets(only=[("rome", 0)])
    configs = dict(rome_config=RomeConfig(steps=3), ftm_config=FtmConfig(max_steps=3))
    sweep = edit_sweep(tiny_gpt2, evaluator, [0], ["rome"], progress=False, targets=kept, **configs)
    optimised = kept.kept("rome", evaluator.prepared, 0, configs["rome_config"])
    assert optimised is not None and list(sweep["steps"]) == [t.steps for t in optimised]
    applied = []
    real = layer_sweep.apply_edit

    def recording(model, method, prepared, layer, stats, rome_config, ftm_config, target=None):
        applied.append(target)
        return real(model, method, prepared, layer, stats, rome_config, ftm_config, target)

    monkeypatch.setattr(layer_sweep, "apply_edit", recording)
    layer_sweep.leak_circuits(tiny_gpt2, evaluator, tiny_split, "rome", 0, 10, targets=kept, **configs)
    assert applied and all(t is optimised[i] for i, t in enumerate(applied))
    applied.clear()
    layer_sweep.leak_circuits(tiny_gpt2, evaluator, tiny_split, "rome", 0, 10, **configs)  # without: optimised here
    assert applied and all(t is None for t in applied)
