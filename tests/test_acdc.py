"""ACDC against a slow per-edge reference, and on a model whose dead components are known."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_model
from reference import all_edges, reference_run

from kc_utils.circuits.ablation import ablated_outputs
from kc_utils.circuits.acdc import (
    ACDC_AUTO_MAX_EDGES,
    LARGE_GRAPH_CANDIDATES,
    acdc,
    acdc_candidates_for,
    candidate_edges,
)
from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.graph import CircuitError, Graph
from kc_utils.data.prompts import make_batch
from kc_utils.models import load_model


@pytest.fixture()
def batch(tiny_model, country_batch_args):
    return make_batch(tiny_model, *country_batch_args)


def _kl_at_last(reference_logits, logits, batch):
    rows = torch.arange(len(batch))
    ref = reference_logits[rows, batch.last_pos].float().log_softmax(-1)
    new = logits[rows, batch.last_pos].float().log_softmax(-1)
    return float((ref.exp() * (ref - new)).sum(-1).mean())


def slow_acdc(model, graph, batch, threshold, candidates=None):
    """ACDC written plainly: every trial rebuilds every receiver input edge by edge (tests/reference.py).
    With ``candidates`` (a set of (upstream, receiver)), the others are removed before the first trial."""
    ablated = ablated_outputs(model, graph, batch, "patch")
    edges = all_edges(graph)
    kept = set(edges) if candidates is None else set(edges) & candidates
    with torch.no_grad():
        full_logits = reference_run(model, graph, batch.clean, ablated, {})

    def value(kept_now):
        with torch.no_grad():
            logits = reference_run(model, graph, batch.clean, ablated, {e: 0.0 for e in edges if e not in kept_now})
        return _kl_at_last(full_logits, logits, batch)

    receivers = ["logits"]
    for layer in reversed(range(graph.shape.n_layers)):
        receivers.append(f"m{layer}")
        for letter in ("v", "k", "q"):
            names = [n for n in graph.receiver_names if n.startswith(f"a{layer}.") and n.endswith(f"<{letter}>")]
            receivers += sorted(names, key=lambda n: int(n.split("<")[0].split(".")[1][1:]), reverse=True)
    current = value(kept)
    for name in receivers:
        r = graph.receiver_index[name]
        owners = [] if name == "logits" else [graph.upstream_index[n] for n in graph.receiver_targets(name)]
        alive = not owners or any((o, x) in kept for o in owners for x in range(graph.n_receivers))
        for u in sorted((u for (u, x) in kept if x == r), reverse=True):
            if not alive:
                kept.discard((u, r))
                continue
            trial = kept - {(u, r)}
            new = value(trial)
            if new - current < threshold:
                kept, current = trial, new
    return kept


@pytest.mark.parametrize("stack", [1, 8])
def test_acdc_matches_the_slow_reference(tiny_model, batch, stack):
    """Speculative stacks (8) and one trial per pass (1) both give the sequential algorithm's circuit."""
    batch = batch.select([0, 1, 2])
    graph, run = acdc(
        tiny_model, Graph.from_model(tiny_model), batch, threshold=0.02, metric="kl", stack=stack, progress=False
    )
    expected = slow_acdc(tiny_model, Graph.from_model(tiny_model), batch, threshold=0.02)
    unpruned = {tuple(e) for e in graph.in_graph.nonzero().tolist()}
    # the fast run is pruned afterwards (losslessly); every edge it keeps, the slow run kept too
    assert unpruned <= expected
    assert run.trials > 0 and run.metric_circuit < 0.02 * len(expected) + 1e-6
    assert run.passes == run.trials if stack == 1 else run.passes < run.trials
    pruned_slow = Graph.from_model(tiny_model)
    pruned_slow.in_graph = torch.zeros_like(pruned_slow.real_edges)
    for u, r in expected:
        pruned_slow.in_graph[u, r] = True
    pruned_slow.prune(from_input=True)
    assert torch.equal(pruned_slow.in_graph, graph.in_graph)


def test_auto_stack_stacks_small_models_on_a_cpu_and_not_large_ones(tiny_gpt2, monkeypatch):
    from kc_utils.circuits import acdc as acdc_module
    from kc_utils.circuits.acdc import AUTO_STACK, acdc_stack_for

    assert acdc_stack_for(tiny_gpt2) == AUTO_STACK  # a tiny model on a CPU
    assert acdc_stack_for(tiny_gpt2, 3) == 3
    monkeypatch.setattr(acdc_module, "AUTO_STACK_MAX_CPU_PARAMETERS", 10)  # as if it were a large model
    assert acdc_stack_for(tiny_gpt2) == 1
    for bad in (0, -2, 1.5, True, "eight"):
        with pytest.raises(ValueError, match="stack must be 'auto' or a positive number"):
            acdc_stack_for(tiny_gpt2, bad)


def _pruned(model, edges):
    graph = Graph.from_model(model)
    graph.in_graph = torch.zeros_like(graph.real_edges)
    for u, r in edges:
        graph.in_graph[u, r] = True
    graph.prune(from_input=True)
    return graph.in_graph


def test_acdc_on_candidates_matches_the_slow_reference(tiny_model, batch):
    """Trials only on EAP's top third of the edges, the rest removed up front: the slow ACDC with the same start."""
    batch = batch.select([0, 1, 2])
    scored = attribute(tiny_model, Graph.from_model(tiny_model), batch, method="eap", progress=False)
    n = int(scored.real_edges.sum()) // 3
    mask = candidate_edges(scored, n)
    assert int(mask.sum()) == n and not bool((mask & ~scored.real_edges).any())
    top = scored.scores.abs()[mask].min()
    assert bool((scored.scores.abs()[scored.real_edges & ~mask] <= top).all())  # the largest |score| are in
    graph, run = acdc(tiny_model, Graph.from_model(tiny_model), batch, 0.002, candidates=mask, progress=False)
    expected = slow_acdc(
        tiny_model, Graph.from_model(tiny_model), batch, 0.002, {tuple(e) for e in mask.nonzero().tolist()}
    )
    assert torch.equal(_pruned(tiny_model, expected), graph.in_graph)
    assert not bool((graph.in_graph & ~mask).any())  # nothing outside the candidates survives
    assert run.removed_up_front == int(scored.real_edges.sum()) - n and run.metric_start > run.metric_full
    assert 0 < run.trials <= n and bool(graph.in_graph.any())


def test_acdc_with_every_edge_as_candidate_is_plain_acdc(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args).select([0, 1, 2])
    plain, plain_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, progress=False)
    every = Graph.from_model(tiny_gpt2).real_edges.clone()
    hybrid, hybrid_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, candidates=every, progress=False)
    assert torch.equal(plain.in_graph, hybrid.in_graph) and torch.equal(plain.scores, hybrid.scores)
    assert (plain_run.trials, plain_run.passes, hybrid_run.removed_up_front) == (
        hybrid_run.trials,
        hybrid_run.passes,
        0,
    )
    with pytest.raises(ValueError, match="bool mask of shape"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, candidates=every.float(), progress=False)
    with pytest.raises(ValueError, match="no edge of the graph"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, candidates=torch.zeros_like(every), progress=False)
    with pytest.raises(CircuitError, match="candidate edges"):
        candidate_edges(plain, 0)


def test_acdc_thresholds_bracket_the_circuit(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2)
    ablated = ablated_outputs(tiny_gpt2, graph, batch, "patch")
    with torch.no_grad():
        full = reference_run(tiny_gpt2, graph, batch.clean, ablated, {})
        empty = reference_run(tiny_gpt2, graph, batch.clean, ablated, {e: 0.0 for e in all_edges(graph)})
    kl_empty = _kl_at_last(full, empty, batch)
    loose, loose_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, threshold=kl_empty / 3, progress=False)
    tight, tight_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, threshold=kl_empty / 300, progress=False)
    assert tight.n_edges_in_graph >= loose.n_edges_in_graph
    assert tight_run.metric_circuit <= loose_run.metric_circuit + 1e-9
    with pytest.raises(CircuitError, match="Lower the threshold"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, threshold=1e9, progress=False)
    with pytest.raises(ValueError, match="threshold"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, threshold=-1)
    with pytest.raises(ValueError, match="stack must be"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, stack=0)
    with pytest.raises(ValueError, match="unknown metric 'kll' for ACDC; use 'kl', 'nll'"):
        acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, metric="kll")


@pytest.fixture(scope="module")
def half_dead_gpt2(tmp_path_factory):
    """A tiny GPT-2 in which only head a1.h0 and MLP 0 write anything: the circuit must avoid the rest."""
    from transformers import GPT2LMHeadModel

    folder = save_tiny_model(tmp_path_factory.mktemp("half_dead_src"), "gpt2", seed=5)
    hf = GPT2LMHeadModel.from_pretrained(folder)
    d_head = hf.config.n_embd // hf.config.n_head
    with torch.no_grad():
        for layer, block in enumerate(hf.transformer.h):
            for head in range(hf.config.n_head):
                if (layer, head) != (1, 0):
                    block.attn.c_proj.weight[head * d_head : (head + 1) * d_head] = 0.0
        hf.transformer.h[1].mlp.c_proj.weight.zero_()
        hf.transformer.h[1].mlp.c_proj.bias.zero_()
    out = tmp_path_factory.mktemp("half_dead")
    hf.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return load_model(str(out), device="cpu")


def test_acdc_removes_every_edge_of_components_that_write_nothing(half_dead_gpt2, country_batch_args):
    batch = make_batch(half_dead_gpt2, *country_batch_args)
    graph, _ = acdc(half_dead_gpt2, Graph.from_model(half_dead_gpt2), batch, threshold=1e-4, progress=False)
    live = {"input", "a1.h0", "m0", "logits"}
    nodes = set(graph.nodes_in_graph())
    assert nodes <= live, nodes - live
    assert "a1.h0" in nodes  # the only head that can carry the subject to the last position


def test_acdc_wanted_auto_follows_the_graph_size():
    from kc_utils.circuits.acdc import ACDC_AUTO_MAX_EDGES, acdc_wanted

    assert acdc_wanted("auto", 479)[0] is True
    run, why = acdc_wanted("auto", 70_651)
    assert run is False and "70,651 edges" in why and "compare_acdc True" in why
    assert acdc_wanted("auto", ACDC_AUTO_MAX_EDGES)[0] is True
    assert acdc_wanted(True, 10**6)[0] is True and acdc_wanted(False, 10)[0] is False
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        acdc_wanted("yes", 10)


def test_acdc_candidates_setting_follows_the_graph_size():
    assert acdc_candidates_for("auto", ACDC_AUTO_MAX_EDGES) is None  # plain ACDC where it takes minutes
    assert acdc_candidates_for("auto", 70_651) == LARGE_GRAPH_CANDIDATES
    assert acdc_candidates_for(None, 70_651) is None and acdc_candidates_for(300, 70_651) == 300
    assert acdc_candidates_for(300, 200) == 200 and acdc_candidates_for(300, 0) == 300
    for bad in (0, -1, 2.5, True, "all"):
        with pytest.raises(ValueError, match="acdc_candidates must be"):
            acdc_candidates_for(bad, 1000)


def test_the_benchmarks_pass_counter_leaves_acdc_unchanged_and_counts_every_masked_pass(tiny_gpt2, country_batch_args):
    """`make bench` wraps run_masked_stack to count ACDC's passes; the wrapper must pass every argument through."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from acdc_speed import counting_passes
    finally:
        sys.path.pop(0)
    batch = make_batch(tiny_gpt2, *country_batch_args).select([0, 1, 2])
    plain, plain_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, stack=2, progress=False)
    with counting_passes() as calls:
        counted, counted_run = acdc(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, 0.02, stack=2, progress=False)
    assert torch.equal(plain.in_graph, counted.in_graph) and torch.equal(plain.scores, counted.scores)
    assert len(calls) == counted_run.passes + 1  # every trial pass and the full model's
    assert {c["k"] for c in calls} <= {1, 2} and max(c["k"] for c in calls) == 2
