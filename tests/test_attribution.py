"""Fast paths against slow references, on tiny random GPT-2-style and Llama-style (GQA) models."""

from __future__ import annotations

import pytest
import torch
from reference import all_edges, reference_run, spearman

from kc_utils.circuits.ablation import ablated_outputs
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.evaluate import circuit_logits, evaluate_circuit
from kc_utils.circuits.graph import Graph
from kc_utils.circuits.patching import collect_outputs, run_masked
from kc_utils.data.metrics import get_metric
from kc_utils.data.prompts import make_batch


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_full_circuit_reproduces_the_model(tiny_model, batch, ablation):
    graph = Graph.from_model(tiny_model)
    with torch.no_grad():
        plain = tiny_model(batch.clean)
    circuit = circuit_logits(tiny_model, graph, batch, ablation)
    torch.testing.assert_close(circuit, plain, atol=1e-5, rtol=0)


def test_empty_patched_circuit_is_the_corrupt_run(tiny_model, batch):
    graph = Graph.from_model(tiny_model)
    empty = torch.zeros_like(graph.real_edges)
    with torch.no_grad():
        corrupt = tiny_model(batch.corrupt)
    circuit = circuit_logits(tiny_model, graph, batch, "patch", keep=empty)
    torch.testing.assert_close(circuit, corrupt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_empty_circuit_matches_reference_full_ablation(tiny_model, batch, ablation):
    graph = Graph.from_model(tiny_model)
    ablated = ablated_outputs(tiny_model, graph, batch, ablation)
    with torch.no_grad():
        expected = reference_run(tiny_model, graph, batch.clean, ablated, {e: 0.0 for e in all_edges(graph)})
        got = run_masked(tiny_model, graph, batch.clean, ablated, torch.zeros_like(graph.real_edges))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_random_circuit_matches_reference(tiny_model, batch):
    graph = Graph.from_model(tiny_model)
    generator = torch.Generator().manual_seed(3)
    keep = (torch.rand(graph.real_edges.shape, generator=generator) < 0.5) & graph.real_edges
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    dropped = {e: 0.0 for e in all_edges(graph) if not keep[e]}
    with torch.no_grad():
        expected = reference_run(tiny_model, graph, batch.clean, ablated, dropped)
        got = run_masked(tiny_model, graph, batch.clean, ablated, keep)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_exact_scores_match_per_edge_reference(tiny_model, batch):
    graph = Graph.from_model(tiny_model)
    edges = all_edges(graph)[::7]
    names = [f"{graph.upstream_names[u]}->{graph.receiver_names[r]}" for u, r in edges]
    attribute(tiny_model, graph, batch, metric="logit_diff", method="exact", edges=names, progress=False)
    metric = get_metric("logit_diff")
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    with torch.no_grad():
        base = metric(tiny_model(batch.clean), batch).mean()
        for u, r in edges:
            without = metric(reference_run(tiny_model, graph, batch.clean, ablated, {(u, r): 0.0}), batch).mean()
            assert graph.scores[u, r].item() == pytest.approx((base - without).item(), abs=1e-5)


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_eap_equals_mask_gradient(tiny_model, batch, metric):
    graph = Graph.from_model(tiny_model)
    attribute(tiny_model, graph, batch, metric=metric, method="eap", progress=False)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    edges = all_edges(graph)
    alphas = {e: torch.ones((), requires_grad=True) for e in edges}
    value = get_metric(metric)(reference_run(tiny_model, graph, batch.clean, ablated, alphas), batch).mean()
    grads = torch.autograd.grad(value, [alphas[e] for e in edges])
    expected = torch.zeros_like(graph.scores)
    for e, g in zip(edges, grads):
        expected[e] = g
    torch.testing.assert_close(graph.scores, expected, atol=1e-5, rtol=1e-4)


def test_eap_ig_equals_slow_riemann_sum(tiny_model, batch):
    steps = 3
    graph = Graph.from_model(tiny_model)
    attribute(tiny_model, graph, batch, metric="logit_diff", method="eap-ig", ig_steps=steps, progress=False)
    clean = collect_outputs(tiny_model, graph, batch.clean)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    edges = all_edges(graph)
    expected = torch.zeros_like(graph.scores)
    for k in range(1, steps + 1):
        embedding = ablated[0] + (k / steps) * (clean[0] - ablated[0])
        alphas = {e: torch.ones((), requires_grad=True) for e in edges}
        logits = reference_run(
            tiny_model, graph, batch.clean, ablated, alphas, fixed_diff=clean - ablated, input_override=embedding
        )
        value = get_metric("logit_diff")(logits, batch).mean()
        for e, g in zip(edges, torch.autograd.grad(value, [alphas[e] for e in edges])):
            expected[e] += g / steps
    torch.testing.assert_close(graph.scores, expected, atol=1e-5, rtol=1e-4)


def test_eap_is_first_order_exact_for_small_ablations(tiny_model, batch):
    """Scale the ablation by ε: exact/ε → EAP as ε → 0 (checked in float64)."""
    model = tiny_model.to(torch.float64)
    try:
        graph = Graph.from_model(model)
        attribute(model, graph, batch, metric="logit_diff", method="eap", progress=False)
        eap = graph.scores.double()
        clean = collect_outputs(model, graph, batch.clean)
        corrupt = ablated_outputs(model, graph, batch, "patch")
        eps = 1e-3
        near = clean + eps * (corrupt - clean)
        metric = get_metric("logit_diff")
        full = graph.real_edges.clone()
        with torch.no_grad():
            base = metric(run_masked(model, graph, batch.clean, near, full), batch).mean()
            worst = 0.0
            for u, r in all_edges(graph)[::3]:
                keep = full.clone()
                keep[u, r] = False
                exact = (base - metric(run_masked(model, graph, batch.clean, near, keep), batch).mean()) / eps
                worst = max(worst, abs(exact.item() - eap[u, r].item()))
        print(f"worst |exact/eps - eap| = {worst:.2e}")
        assert worst < 2e-3 * max(1.0, eap.abs().max().item())
    finally:
        tiny_model.to(torch.float32)


def test_eap_ig_ranks_edges_like_exact(tiny_model, batch, capsys):
    graph = Graph.from_model(tiny_model)
    mask = graph.real_edges
    exact = attribute(tiny_model, graph, batch, method="exact", progress=False).scores[mask].clone()
    eap = attribute(tiny_model, graph, batch, method="eap", progress=False).scores[mask].clone()
    ig = attribute(tiny_model, graph, batch, method="eap-ig", ig_steps=5, progress=False).scores[mask].clone()
    rho_eap, rho_ig = spearman(eap, exact), spearman(ig, exact)
    with capsys.disabled():
        print(
            f"\n[{tiny_model.cfg.normalization_type}] Spearman vs exact over {int(mask.sum())} edges: "
            f"EAP {rho_eap:.3f}, EAP-IG {rho_ig:.3f}"
        )
    assert rho_ig > 0.5


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_scores_and_metrics_do_not_depend_on_batch_size(tiny_model, country_batch_args, ablation):
    """Ablation values are computed once over the whole set: chunking changes nothing (issue: mean per chunk)."""
    prompts, answers, corrupt, corrupt_answers = (list(x) for x in country_batch_args)
    # a fifth fact without a corrupt twin: patch ablation falls back to the (whole-set) mean for it
    prompts.append("the official language of France is")
    answers.append("French")
    corrupt.append(None)
    corrupt_answers.append("Japanese")
    batch = make_batch(tiny_model, prompts, answers, corrupt, corrupt_answers)
    graph = Graph.from_model(tiny_model)
    scores, metrics = [], []
    for batch_size in (1, 3, None):
        scored = attribute(
            tiny_model,
            graph,
            batch,
            method="eap-ig",
            ig_steps=2,
            ablation=ablation,
            batch_size=batch_size,
            progress=False,
        )
        scores.append(scored.scores.clone())
        circuit = scored.copy().top_n(12, from_input=ablation == "patch")
        metrics.append(
            evaluate_circuit(tiny_model, circuit, batch, ["logprob", "logit_diff"], ablation, batch_size=batch_size)
        )
    for other, other_metrics in zip(scores[:2], metrics[:2]):
        torch.testing.assert_close(other, scores[2], atol=1e-5, rtol=1e-4)
        for name, value in metrics[2].items():
            assert other_metrics[name] == pytest.approx(value, abs=1e-5)


def test_attribution_is_deterministic(tiny_model, batch):
    graph = Graph.from_model(tiny_model)
    first = attribute(tiny_model, graph, batch, method="eap-ig", ig_steps=2, progress=False).top_n(15).in_graph.clone()
    second = attribute(tiny_model, graph, batch, method="eap-ig", ig_steps=2, progress=False).top_n(15).in_graph
    assert torch.equal(first, second)


def test_padded_batch_equals_single_prompts(tiny_model, country_batch_args):
    prompts, answers, corrupt, corrupt_answers = country_batch_args
    together = make_batch(tiny_model, prompts, answers, corrupt, corrupt_answers)
    assert together.clean.shape[1] > together.last_pos.min() + 1, "the fixture must need padding"
    graph = Graph.from_model(tiny_model)
    together_values = evaluate_circuit(tiny_model, graph, together, ["logprob", "logit_diff"])
    alone = [
        evaluate_circuit(tiny_model, graph, make_batch(tiny_model, [p], [a], [c], [ca]), ["logprob", "logit_diff"])
        for p, a, c, ca in zip(prompts, answers, corrupt, corrupt_answers)
    ]
    for key in ("logprob", "logit_diff"):
        assert together_values[key] == pytest.approx(sum(a[key] for a in alone) / len(alone), abs=1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_eap_with_other_ablations_equals_mask_gradient(tiny_gpt2, country_batch_args, ablation):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2)
    attribute(tiny_gpt2, graph, batch, metric="logprob", method="eap", ablation=ablation, progress=False)
    ablated = ablated_outputs(tiny_gpt2, graph, batch, ablation)
    edges = all_edges(graph)
    alphas = {e: torch.ones((), requires_grad=True) for e in edges}
    value = get_metric("logprob")(reference_run(tiny_gpt2, graph, batch.clean, ablated, alphas), batch).mean()
    expected = torch.zeros_like(graph.scores)
    for e, g in zip(edges, torch.autograd.grad(value, [alphas[e] for e in edges])):
        expected[e] = g
    torch.testing.assert_close(graph.scores, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bfloat16_models_patch_and_attribute(tmp_path, arch, country_batch_args):
    """Weights in bfloat16: the full circuit still equals the model, and EAP-IG agrees with float32."""
    from conftest import save_tiny_model

    from kc_utils.models import load_model

    folder = save_tiny_model(tmp_path / arch, arch)
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(folder), device="cpu", dtype=dtype)
        assert next(model.parameters()).dtype == dtype
        batch = make_batch(model, *country_batch_args)
        graph = Graph.from_model(model)
        with torch.no_grad():
            plain = model(batch.clean)
        assert torch.equal(circuit_logits(model, graph, batch), plain)
        scores[dtype] = attribute(model, graph, batch, method="eap-ig", progress=False).scores[graph.real_edges]
    agreement = torch.corrcoef(torch.stack([scores[torch.float32], scores[torch.bfloat16]]))[0, 1]
    assert agreement > 0.98


def test_fractional_masks_and_their_gradients(tiny_model, batch):
    """The dense path: a float mask α mixes clean and ablated outputs; d m/dα at 1 is EAP."""
    graph = Graph.from_model(tiny_model)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    generator = torch.Generator().manual_seed(5)
    alpha = torch.rand(graph.real_edges.shape, generator=generator) * graph.real_edges
    with torch.no_grad():
        expected = reference_run(
            tiny_model, graph, batch.clean, ablated, {e: float(alpha[e]) for e in all_edges(graph)}
        )
        got = run_masked(tiny_model, graph, batch.clean, ablated, alpha)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    ones = torch.ones(graph.real_edges.shape, requires_grad=True)
    value = get_metric("logit_diff")(run_masked(tiny_model, graph, batch.clean, ablated, ones), batch).mean()
    (grad,) = torch.autograd.grad(value, ones)
    eap = attribute(tiny_model, graph, batch, method="eap", progress=False).scores
    torch.testing.assert_close(grad * graph.real_edges, eap, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ablation", ["patch", "zero", "mean"])
def test_pruning_never_changes_what_the_circuit_computes(tiny_model, batch, ablation):
    """Pruning is lossless: to-logits pruning under every ablation, from-input pruning under patch."""
    graph = attribute(tiny_model, Graph.from_model(tiny_model), batch, method="eap", ablation=ablation, progress=False)
    from_input = ablation == "patch"
    for n in (5, 20, 60):
        raw = graph.copy().top_n(n, prune=False)
        pruned = raw.copy().prune(from_input=from_input)
        assert pruned.n_edges_in_graph <= raw.n_edges_in_graph
        before = circuit_logits(tiny_model, raw, batch, ablation)
        after = circuit_logits(tiny_model, pruned, batch, ablation)
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_non_finite_scores_are_refused(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    infinite = lambda logits, b: torch.full((logits.shape[0],), float("inf")) * logits[:, 0, 0]
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        attribute(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, metric=infinite, method="eap", progress=False)
    graph = Graph.from_model(tiny_gpt2)
    graph.scores[graph.real_edges] = 1.0
    graph.scores[0, -1] = float("nan")
    from kc_utils.circuits.graph import CircuitError

    with pytest.raises(CircuitError, match="NaN or infinite.*input->logits"):
        graph.top_n(3)


def test_a_stack_that_differs_in_a_few_edges_equals_one_run_per_mask(tiny_model, batch):
    """ACDC's stacks (a sparse circuit, then "remove the first j edges of a receiver") take the sparse rule
    with per-copy differences; each copy must still equal its own run."""
    from kc_utils.circuits.patching import _MaskedRun, run_masked_stack

    graph = Graph.from_model(tiny_model)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    generator = torch.Generator().manual_seed(1)
    base = graph.real_edges & (torch.rand(graph.real_edges.shape, generator=generator) < 0.3)
    mid = graph.receiver_slice(graph.shape.n_layers - 1, "q").start  # a head's query in the last layer
    for receiver in (graph.logits_receiver, mid):
        base[:, receiver] = graph.real_edges[:, receiver]  # every edge into the two tried receivers
    for receiver in (graph.logits_receiver, mid):
        incoming = base[:, receiver].nonzero().flatten().flip(0)[:4]
        assert len(incoming) >= 2
        keeps = base[None].repeat(len(incoming) + 1, 1, 1)
        for j, upstream in enumerate(incoming.tolist()):
            keeps[j + 1 :, upstream, receiver] = False
        run = _MaskedRun(graph, ablated.repeat(1, len(keeps), 1, 1), keeps)
        assert run.differences is not None and not run.dense
        with torch.no_grad():
            stacked = run_masked_stack(tiny_model, graph, batch.clean, ablated, keeps)
            for i in range(len(keeps)):
                torch.testing.assert_close(stacked[i], run_masked(tiny_model, graph, batch.clean, ablated, keeps[i]))
        assert not torch.allclose(stacked[0], stacked[-1])  # the removals changed the output


@pytest.mark.parametrize("max_differences", [0, 10**9], ids=["dense", "differences"])
def test_a_stack_of_masks_equals_one_run_per_mask(tiny_model, batch, max_differences, monkeypatch):
    from kc_utils.circuits import patching
    from kc_utils.circuits.patching import run_masked_stack

    monkeypatch.setattr(patching, "MAX_STACK_DIFFERENCES", max_differences)  # both ways of correcting a stack

    graph = Graph.from_model(tiny_model)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    generator = torch.Generator().manual_seed(0)
    keeps = torch.rand(3, *graph.real_edges.shape, generator=generator) < torch.tensor([0.2, 0.6, 0.95])[:, None, None]
    with torch.no_grad():
        stacked = run_masked_stack(tiny_model, graph, batch.clean, ablated, keeps)
        for i in range(3):
            torch.testing.assert_close(stacked[i], run_masked(tiny_model, graph, batch.clean, ablated, keeps[i]))


@pytest.mark.parametrize("stacked", [False, True], ids=["one mask", "stack"])
def test_last_position_logits_equal_the_full_masked_pass_there(tiny_model, batch, stacked):
    """Evaluation and ACDC unembed each prompt's last position alone; the logits there must be the full pass's,
    the correction of the logits' own input (a receiver at the same hook point) included."""
    from kc_utils.circuits.patching import run_masked_stack
    from kc_utils.data.metrics import answer_logits

    graph = Graph.from_model(tiny_model)
    ablated = ablated_outputs(tiny_model, graph, batch, "patch")
    generator = torch.Generator().manual_seed(2)
    keeps = torch.rand(2, *graph.real_edges.shape, generator=generator) < torch.tensor([0.3, 0.8])[:, None, None]
    keeps[1, :, graph.logits_receiver] = False  # the logits read the ablated run only
    with torch.no_grad():
        if stacked:
            full = run_masked_stack(tiny_model, graph, batch.clean, ablated, keeps)
            last = run_masked_stack(tiny_model, graph, batch.clean, ablated, keeps, batch.last_pos)
        else:
            full = torch.stack([run_masked(tiny_model, graph, batch.clean, ablated, k) for k in keeps])
            last = torch.stack([run_masked(tiny_model, graph, batch.clean, ablated, k, batch.last_pos) for k in keeps])
    assert last.shape == (2, len(batch), 1, full.shape[-1])
    for k in range(2):
        expected = answer_logits(full[k], batch)
        torch.testing.assert_close(answer_logits(last[k], batch.at_last_position()), expected)
        torch.testing.assert_close(last[k][:, 0], expected)
    assert not torch.allclose(last[0], last[1])
