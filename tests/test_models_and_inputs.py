"""Loading models (pretrained-architecture configs with random weights) and bad inputs."""

from __future__ import annotations

import time

import pytest
import torch

from kc_utils.circuits.attribute import attribute
from kc_utils.circuits.evaluate import evaluate_circuit, faithfulness, random_circuit
from kc_utils.circuits.graph import Graph
from kc_utils.data.prompts import PromptError, make_batch
from kc_utils.models import ModelLoadError, load_model, model_shape


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="Unknown model 'gpt-two-medium'.*kc-organism"):
        load_model("gpt-two-medium")


def test_pretrained_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*kc-organism"):
        load_model("gpt2-medium")
    assert time.monotonic() - start < 10


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_same_architecture_checkpoints_boot_for_patching(tmp_path, arch):
    """The hub path boots HF checkpoints; here the same architectures with random weights."""
    from conftest import save_tiny_model

    model = load_model(str(save_tiny_model(tmp_path / arch, arch, n_layers=3)), device="cpu")
    shape = model_shape(model)
    assert shape.n_layers == 3 and shape.n_heads == 4
    assert shape.n_kv_heads == (2 if arch == "llama" else 4)
    assert model.tokenizer.padding_side == "right"


def test_gpt2_medium_layout_boots_and_gives_the_papers_graph(tmp_path):
    """GPT-2 medium's layout (24 layers × 16 heads), narrow and random, saved and booted offline."""
    from conftest import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer()
    GPT2LMHeadModel(
        GPT2Config(n_layer=24, n_head=16, n_embd=64, vocab_size=len(tokenizer), n_positions=16)
    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    graph = Graph.from_model(model)
    assert 225_000 < graph.n_edges < 240_000  # the paper: "GPT-2 medium ~232k edges"


def test_corrupt_prompt_of_another_length_is_an_error(tiny_gpt2):
    with pytest.raises(PromptError, match="has 7 tokens but the clean prompt.*has 6.*same number of tokens"):
        make_batch(
            tiny_gpt2, ["the capital of France is"], ["Paris"], ["the capital of New Zealand is"], ["Wellington"]
        )


def test_answer_without_a_token_is_an_error(tiny_gpt2):
    with pytest.raises(PromptError, match="'Berlin'.*no token"):
        make_batch(tiny_gpt2, ["the capital of France is"], ["Berlin"])


def test_empty_dataset_is_an_error(tiny_gpt2):
    with pytest.raises(PromptError, match="empty"):
        make_batch(tiny_gpt2, [], [])


def test_patch_ablation_without_corrupt_prompts_is_an_error(tiny_gpt2):
    batch = make_batch(tiny_gpt2, ["the capital of France is"], ["Paris"])
    with pytest.raises(ValueError, match="needs corrupted prompts"):
        attribute(tiny_gpt2, Graph.from_model(tiny_gpt2), batch, metric="logprob", method="eap", progress=False)
    with pytest.raises(ValueError, match="needs a corrupt answer"):
        attribute(
            tiny_gpt2,
            Graph.from_model(tiny_gpt2),
            batch,
            metric="logit_diff",
            method="eap",
            ablation="zero",
            progress=False,
        )


def test_unknown_method_metric_and_ablation(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2)
    with pytest.raises(ValueError, match="unknown method"):
        attribute(tiny_gpt2, graph, batch, method="acdc")
    with pytest.raises(ValueError, match="unknown metric"):
        attribute(tiny_gpt2, graph, batch, metric="accuracy")
    with pytest.raises(ValueError, match="unknown ablation"):
        attribute(tiny_gpt2, graph, batch, ablation="resample")


def test_faithfulness_is_one_for_full_and_zero_for_empty(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2)
    assert faithfulness(tiny_gpt2, graph, batch) == pytest.approx(1.0, abs=1e-5)
    empty_like = graph.copy()
    empty_like.in_graph[:] = False
    assert faithfulness(tiny_gpt2, empty_like, batch) == pytest.approx(0.0, abs=1e-5)


def test_random_circuit_is_connected_and_sized(tiny_gpt2, country_batch_args):
    graph = Graph.from_model(tiny_gpt2)
    graph.scores = torch.ones_like(graph.scores) * graph.real_edges
    rand = random_circuit(graph, 20, seed=1)
    assert abs(rand.n_edges_in_graph - 20) <= 2
    pruned = rand.copy().prune()
    assert torch.equal(pruned.in_graph, rand.in_graph)
    assert torch.equal(random_circuit(graph, 20, seed=1).in_graph, rand.in_graph)


def test_hit_at_k_and_rank_agree(tiny_gpt2, country_batch_args):
    batch = make_batch(tiny_gpt2, *country_batch_args)
    graph = Graph.from_model(tiny_gpt2)
    values = evaluate_circuit(tiny_gpt2, graph, batch, ["rank", "hit@1", "hit@1000"])
    assert values["hit@1000"] == 1.0
    assert (values["rank"] == 0) == (values["hit@1"] == 1.0) or values["hit@1"] < 1.0


def test_logits_at_equals_the_full_pass_at_the_chosen_positions(tiny_model):
    from kc_utils import models

    tokens = torch.tensor(models.tokenize(tiny_model, ["the capital of France is", "the capital of Japan is"]))
    rows, positions = torch.tensor([0, 1, 1]), torch.tensor([tokens.shape[1] - 1, 2, 0])

    def shift(out, hook):  # a hook is applied as in a full pass
        return out + 1.0

    hook = [(models.mlp_out_hook(0), shift)]
    with torch.no_grad(), models.hooks(tiny_model, hook):
        full = tiny_model(tokens)[rows, positions]
    with torch.no_grad():
        picked = models.logits_at(tiny_model, tokens, rows, positions, hook)
        plain = models.logits_at(tiny_model, tokens, rows, positions)
    torch.testing.assert_close(picked, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, picked)  # the hook did change the logits


def test_cache_activations_equals_run_with_cache_and_stops_after_the_last_name(tiny_model):
    from kc_utils import models

    tokens = torch.tensor(models.tokenize(tiny_model, ["the capital of France is", "the capital of Japan is"]))
    names = [models.head_result_hook(0), models.mlp_out_hook(0), models.resid_post_hook(0)]
    with torch.no_grad():
        _, full = models.run_with_cache(tiny_model, tokens, names)
        reached = []
        later = [(models.mlp_out_hook(1), lambda act, hook: reached.append(hook.name))]
        early = models.cache_activations(tiny_model, tokens, names, later)
    assert set(early) == set(names)
    for name in names:
        torch.testing.assert_close(early[name], full[name], atol=0, rtol=0)
    assert reached == []  # the pass ended at layer 0: layer 1 never ran
    assert models.cache_activations(tiny_model, tokens, []) == {}


def test_last_logits_equal_the_full_pass_at_each_rows_last_position(tiny_model):
    from kc_utils import models

    tokens = torch.tensor(models.tokenize(tiny_model, ["the capital of France is", "the capital of Japan is"]))
    last = [tokens.shape[1] - 1, 3]
    with torch.no_grad():
        full = tiny_model(tokens)[torch.arange(2), torch.tensor(last)]
        picked = models.last_logits(tiny_model, tokens, last)
    assert picked.shape == full.shape
    torch.testing.assert_close(picked, full, atol=1e-5, rtol=1e-5)


def test_our_metrics_read_the_last_position_alone_and_a_callers_may_not():
    from kc_utils.data.metrics import get_metric, hit_at, logprob, reads_last_position_only

    assert all(reads_last_position_only(get_metric(name)) for name in ("logit_diff", "logprob", "prob", "rank"))
    assert reads_last_position_only(hit_at(3)) and reads_last_position_only(logprob)

    def own(logits, batch):  # a caller's metric may read any position
        return logits[:, 0, 0]

    assert not reads_last_position_only(own)
