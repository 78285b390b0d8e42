"""The real pretrained model (SmolLM2-135M from its GGUF wheel) and the residual-decomposition check.

The check runs at every load, so every tiny model and the organism pass it in the other tests; here a
Gemma-3-style model (norms on the attention and MLP outputs) must be refused with a reason.
"""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_gemma3

from kc_utils import models
from kc_utils.circuits.evaluate import circuit_logits
from kc_utils.circuits.graph import Graph
from kc_utils.data.metrics import rank
from kc_utils.data.prompts import make_batch


def test_smollm2_shape_and_prompt_convention(smollm2):
    shape = models.model_shape(smollm2)
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.d_model) == (30, 9, 3, 576)
    assert models.mlp_width(smollm2) == 1536
    assert models.model_dtype(smollm2) == torch.float32
    # the explicit choice: no BOS (the tokenizer has one, <|im_start|>, which the bridge would prepend)
    assert smollm2.tokenizer.bos_token_id == 1
    assert models.bos_token_id(smollm2) is None
    ids = models.tokenize(smollm2, ["The capital of France is"])[0]
    assert ids == smollm2.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    assert Graph.from_model(smollm2).n_edges == 70_651


def test_smollm2_knows_facts(smollm2):
    prompts = ["The capital of France is", "The official language of France is", "The currency of Japan is the"]
    batch = make_batch(smollm2, prompts, ["Paris", "French", "yen"])
    with torch.no_grad():
        ranks = rank(smollm2(batch.clean), batch)
    assert ranks.tolist() == [0, 0, 0]


def test_smollm2_full_and_empty_circuits_are_exact(smollm2):
    batch = make_batch(
        smollm2,
        ["The capital of France is", "The capital of Spain is"],
        ["Paris", "Madrid"],
        ["The capital of Italy is", "The capital of Japan is"],
        ["Rome", "Tokyo"],
    )
    graph = Graph.from_model(smollm2)
    with torch.no_grad():
        plain = models.hf_model(smollm2)(batch.clean).logits
        corrupt = smollm2(batch.corrupt)
    full = circuit_logits(smollm2, graph, batch, "patch")
    empty = circuit_logits(smollm2, graph, batch, "patch", keep=torch.zeros_like(graph.real_edges))
    torch.testing.assert_close(full, plain, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(empty, corrupt, atol=1e-3, rtol=1e-5)


def test_smollm2_decomposes_within_float32_rounding(smollm2):
    checks = models.residual_decomposition(smollm2)
    assert len(checks) == 3 * 30
    assert max(c.relative for c in checks) < models.decomposition_tolerance(torch.float32)


def test_tiny_models_decompose(tiny_model):
    checks = models.check_residual_decomposition(tiny_model)
    assert max(c.relative for c in checks) < 1e-5


def test_gemma3_post_norm_heads_write_their_shares(tmp_path):
    """On a Gemma-3-style model (norms on the attention and MLP outputs) each head writes its share of the normalised
    sum, the shares add up to what the post-norm wrote, and the decomposition check passes within float32 rounding."""
    folder = save_tiny_gemma3(tmp_path / "gemma3")
    model = models.load_model(str(folder), device="cpu")
    assert set(models.edge_routes(model).post_norm) == {0, 1}
    tokens = torch.tensor([models.tokenize(model, ["the capital of France is"])[0]])
    names = [models.head_result_hook(1), "blocks.1.hook_attn_out", "blocks.1.ln1_post.hook_in"]
    with torch.no_grad():
        cache = models.run_with_cache(model, tokens, names)[1]
    shares, written, raw = (cache[n] for n in names)
    torch.testing.assert_close(shares.sum(2), written, atol=1e-5, rtol=1e-5)
    assert (raw - written).abs().max() > 1e-2  # the norm does something: shares are not the raw outputs
    assert max(c.relative for c in models.residual_decomposition(model)) < 1e-5


def test_unknown_model_names_the_real_one():
    with pytest.raises(models.ModelLoadError, match="smollm2-135m"):
        models.load_model("smollm2-135", device="cpu")


def test_a_gguf_path_loads_through_the_same_cache(smollm2, smollm2_checkpoint):
    """A user's .gguf file (here the shipped one, by path) is checked, cached by sha256 and booted the same way."""
    from kc_utils import gguf

    path, _ = gguf.packaged_gguf(gguf.PACKAGED_MODELS["smollm2-135m"])
    assert models.resolve_model(str(path)).location == smollm2_checkpoint
    by_path = models.load_model(str(path), device="cpu")
    assert models.bos_token_id(by_path) is None  # the file's own add_bos_token is False
    batch = make_batch(by_path, ["The capital of France is"], ["Paris"])
    with torch.no_grad():
        torch.testing.assert_close(by_path(batch.clean), smollm2(batch.clean))


def test_notebook_03_picks_an_edit_relation_the_real_model_can_serve(smollm2):
    from kc_utils.editing.evaluation import EDIT_RELATION_ORDER, pick_edit_relation
    from kc_utils.editing.request import EditError

    relation, skipped = pick_edit_relation(smollm2, "smollm2-135m", 20)
    assert relation in EDIT_RELATION_ORDER and relation != "product_by_company"
    assert "product_by_company" in skipped and "fewer than n_edits=20" in skipped["product_by_company"]
    assert list(skipped) == list(EDIT_RELATION_ORDER[: EDIT_RELATION_ORDER.index(relation)])
    with pytest.raises(EditError, match="no relation has n_edits=100000"):
        pick_edit_relation(smollm2, "smollm2-135m", 100_000, order=("country_language", "adj_antonym"))
