"""Shared fixtures: tiny random models, GPT-2-style and Llama-style, booted offline.

Each model is a random ``transformers`` model from a small config, saved with a tiny word-level
tokenizer into a temporary folder and loaded through :func:`kc_utils.models.load_model`, the same
path as every real model. Biases and norms are randomised too, so that no bias is silently zero.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tiny models: one thread is as fast, and immune to oversubscription on a busy machine
torch.set_num_threads(1)

WORDS = (
    "the capital of is city official language currency called a an and in on located country "
    "France Paris Spain Madrid Japan Tokyo Peru Lima Italy Rome Chile Santiago Kenya Nairobi "
    "French Spanish Japanese Italian Euro Yen Sol Peso Shilling New South North Korea Zealand Wales "
    "Seoul Wellington Cardiff Sydney Bank River Tower Great Wall Eiffel ->"
).split()


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )


def _randomise(model: torch.nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def save_tiny_model(folder: Path, arch: str, seed: int = 0, n_layers: int = 2) -> Path:
    """Write a random tiny checkpoint (``arch`` = "gpt2" or "llama") with the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_positions=32, n_embd=32, n_layer=n_layers, n_head=4, bos_token_id=0, eos_token_id=0
            )
        )
    elif arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    else:
        raise ValueError(arch)
    _randomise(model, seed, scale=0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model(request, tmp_path_factory):
    """A booted tiny model, GPT-2-style or Llama-style (RMSNorm, rotary, GQA 4 heads / 2 kv)."""
    from kc_utils.models import load_model

    folder = save_tiny_model(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from kc_utils.models import load_model

    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("tiny_gpt2_only"), "gpt2")), device="cpu")


@pytest.fixture()
def country_batch_args():
    """Prompts with corrupt twins of the same token length (two-word subjects paired together)."""
    prompts = [
        "the capital of France is",
        "the capital of New Zealand is",
        "the official language of Japan is",
        "the capital of South Korea is",
    ]
    answers = ["Paris", "Wellington", "Japanese", "Seoul"]
    corrupt = [
        "the capital of Peru is",
        "the capital of North Korea is",
        "the official language of Italy is",
        "the capital of New Zealand is",
    ]
    corrupt_answers = ["Lima", "Seoul", "Italian", "Wellington"]
    return prompts, answers, corrupt, corrupt_answers


# ----------------------------------------------------------------------------- the real model
@pytest.fixture(scope="session")
def smollm2_checkpoint():
    """The dequantized SmolLM2-135M folder in the user's cache (built on first use, about half a minute)."""
    from kc_utils.models import resolve_model

    return Path(resolve_model("smollm2-135m").location)


@pytest.fixture(scope="session")
def smollm2(smollm2_checkpoint):
    """SmolLM2-135M booted through the model door, on CPU."""
    from kc_utils.models import load_model

    return load_model("smollm2-135m", device="cpu")


def save_tiny_gemma3(folder: Path, seed: int = 0) -> Path:
    """A random tiny Gemma-3 text model (post-attention and post-MLP norms) with the tiny tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=16,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = Gemma3ForCausalLM(config)
    _randomise(model, seed, scale=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
