"""The real Gemma 3 270M (base, Q4_K_M, from four chunk packages): its checkpoint, tokenizer, BOS and bridge.

Skipped with the reason when the packages are not installed (``make install`` installs them). The first run
assembles the GGUF file into the cache and dequantizes it (1.07 GB of float32); later runs reuse both.
Gemma's norms on the attention output are read as each head's share of the post-norm
(:mod:`kc_utils.models.edge_points`): the decomposition check passes, and the full and empty circuits equal the model
and the corrupt run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kc_utils import gguf, models
from kc_utils.data.metrics import rank
from kc_utils.data.prompts import make_batch

GEMMA3 = gguf.PACKAGED_MODELS["gemma-3-270m"]

pytestmark = pytest.mark.skipif(
    any(gguf._package_folder(m) is None for m in (GEMMA3.module, *(c.module for c in GEMMA3.chunks))),
    reason=f"the Gemma 3 packages are not installed: run `make install` ({GEMMA3.install_command})",
)


@pytest.fixture(scope="module")
def gemma3_checkpoint() -> Path:
    return Path(models.resolve_model("gemma-3-270m").location)


@pytest.fixture(scope="module")
def gemma3(gemma3_checkpoint):
    return models.load_model("gemma-3-270m", device="cpu")


def test_the_assembled_file_is_the_pinned_one(gemma3_checkpoint):
    path, digest = gguf.packaged_gguf(GEMMA3)
    assert digest == GEMMA3.sha256 == gguf.file_sha256(path)
    assert path.parent.parent == gguf.cache_root() / gguf.ASSEMBLED_DIR
    info = gguf.inspect_gguf(path)
    assert (info.architecture, info.n_tensors, info.add_bos_token) == ("gemma3", 236, True)
    record = json.loads((gemma3_checkpoint / gguf.RECORD_NAME).read_text())
    assert record["sha256"] == GEMMA3.sha256
    assert (record["package"], record["package_version"]) == (GEMMA3.distribution, GEMMA3.version)


def test_the_checkpoint_is_gemma3_270m(gemma3_checkpoint):
    config = json.loads((gemma3_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in config
    shape = {
        k: config[k]
        for k in (
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "hidden_size",
            "intermediate_size",
            "vocab_size",
        )
    }
    assert shape == {
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "vocab_size": 262_144,
    }
    assert config["tie_word_embeddings"] is True
    assert config["layer_types"].count("sliding_attention") == 15


def test_prompts_start_with_bos_and_answers_tokenize_with_their_space(gemma3):
    assert GEMMA3.prepend_bos is True
    assert models.bos_token_id(gemma3) == gemma3.tokenizer.bos_token_id == 2
    prompt = "The official language of France is"
    ids = models.tokenize(gemma3, [prompt])[0]
    assert ids == [2, *gemma3.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    token = models.continuation_first_token(gemma3, prompt, "French")
    assert models.token_strings(gemma3, [token]) == [" French"]


def test_gemma3_knows_french(gemma3):
    batch = make_batch(gemma3, ["The official language of France is"], ["French"])
    with torch.no_grad():
        logits = gemma3(batch.clean)
    assert rank(logits, batch).tolist() == [0]


def test_the_bridge_equals_the_plain_transformers_model(gemma3, gemma3_checkpoint):
    from transformers import AutoModelForCausalLM

    batch = make_batch(
        gemma3,
        ["The official language of France is", "The capital city of Japan is"],
        ["French", "Tokyo"],
    )
    plain = AutoModelForCausalLM.from_pretrained(gemma3_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = plain(batch.clean).logits
        got = gemma3(batch.clean)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)


def test_gemma3_decomposes_and_its_circuits_are_exact(gemma3):
    """The real weights (not only the tiny family model): the residual stream is the sum of the node outputs, each
    head writing its share of the post-attention norm, and the full circuit is the model within 1e-4 relative."""
    from kc_utils.circuits.evaluate import circuit_logits
    from kc_utils.circuits.graph import Graph

    assert set(models.edge_routes(gemma3).post_norm) == set(range(18))
    assert max(c.relative for c in models.residual_decomposition(gemma3)) < 1e-5
    batch = make_batch(
        gemma3,
        ["The official language of France is", "The capital city of Japan is"],
        ["French", "Tokyo"],
        ["The official language of Spain is", "The capital city of Italy is"],
        ["Spanish", "Rome"],
    )
    graph = Graph.from_model(gemma3)
    with torch.no_grad():
        clean, corrupt = gemma3(batch.clean), gemma3(batch.corrupt)
    scale = float(clean.abs().max())
    full = circuit_logits(gemma3, graph, batch, "patch")
    empty = circuit_logits(gemma3, graph, batch, "patch", keep=torch.zeros_like(graph.real_edges))
    assert float((full - clean).abs().max()) / scale < 1e-4
    assert float((empty - corrupt).abs().max()) / scale < 1e-4
