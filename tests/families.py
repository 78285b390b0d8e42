"""Tiny random checkpoints of every decoder family the edge engine is tried on (the family matrix).

Each builder returns a ``transformers`` config of 2 layers, d_model 32, 4 query heads (2 key/value heads where the
family has grouped-query attention), with the tiny word-level tokenizer's vocabulary. :func:`save_family` builds the
model, perturbs every weight, bias and norm (so that no bias is silently zero and no norm is the identity) and saves
it with the tokenizer, as a user's ``save_pretrained`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMMON: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}

#: family -> the config fields that differ from :data:`COMMON` (``None`` drops a common field); a variant of a
#: family names its ``model_type``.
FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "hidden_size": None,
        "intermediate_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "max_position_embeddings": None,
    },
    "gpt_neox": {"rotary_pct": 0.5, "use_parallel_residual": True},
    "llama": {"num_key_value_heads": 2},
    "mistral": {"num_key_value_heads": 2, "sliding_window": 16},
    "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 8},
    "phi3": {"num_key_value_heads": 2},
    "olmo": {"num_key_value_heads": 2},
    "gemma": {"num_key_value_heads": 2, "head_dim": 8},
    "stablelm": {"num_key_value_heads": 2},
    "starcoder2": {"num_key_value_heads": 2},
    "mixtral": {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 32,
    },
    "granite": {
        "num_key_value_heads": 2,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.3,
        "embedding_multiplier": 2.0,
        "logits_scaling": 4.0,
    },
    "smollm3": {"num_key_value_heads": 2},
    "gemma2": {
        "num_key_value_heads": 2,
        "head_dim": 8,
        "sliding_window": 16,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3_text": {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 16},
    "olmo2": {"num_key_value_heads": 2},
    "gptj": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "rotary_dim": 4,
        "hidden_size": None,
        "intermediate_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "max_position_embeddings": None,
    },
    "gpt_neo": {
        "num_layers": 2,
        "num_heads": 4,
        "attention_types": [[["global", "local"], 1]],
        "window_size": 16,
        "num_hidden_layers": None,
        "num_attention_heads": None,
    },
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32, "intermediate_size": None, "do_layer_norm_before": True},
    "phi": {"num_key_value_heads": 4, "partial_rotary_factor": 0.5},
    "falcon": {
        "new_decoder_architecture": False,
        "multi_query": True,
        "parallel_attn": True,
        "bias": True,
        "alibi": False,
        "intermediate_size": None,
    },
    "bloom": {
        "n_layer": 2,
        "n_head": 4,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "intermediate_size": None,
        "max_position_embeddings": None,
    },
    "cohere": {"num_key_value_heads": 2, "logit_scale": 0.5},
    # beyond the list: variants and other families people bring
    "gpt_neox_sequential": {"model_type": "gpt_neox", "rotary_pct": 0.5, "use_parallel_residual": False},
    "llama_biases": {"model_type": "llama", "num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True},
    # (no attention softcap: no Gemma 3 checkpoint has one, and TransformerLens 4's bridge computes it 1e-4 away from
    # transformers on the tiny model)
    "gemma3_text_softcap": {
        "model_type": "gemma3_text",
        "num_key_value_heads": 1,
        "head_dim": 16,
        "sliding_window": 4,
        "query_pre_attn_scalar": 4,
        "final_logit_softcapping": 20.0,
    },
    "gpt_bigcode": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "multi_query": True,
        "hidden_size": None,
        "intermediate_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "max_position_embeddings": None,
    },
    "mpt": {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "expansion_ratio": 2,
        "max_seq_len": 64,
        "hidden_size": None,
        "intermediate_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "max_position_embeddings": None,
    },
    "nemotron": {"num_key_value_heads": 2, "head_dim": 8},
    "olmoe": {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
    },
    "exaone4": {"num_key_value_heads": 2, "head_dim": 8},
    "glm": {"num_key_value_heads": 2, "head_dim": 8},
    "codegen": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "rotary_dim": 4,
        "n_ctx": 64,
        "hidden_size": None,
        "intermediate_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "max_position_embeddings": None,
    },
    "falcon_new_architecture": {
        "model_type": "falcon",
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "parallel_attn": True,
        "bias": False,
        "alibi": False,
        "intermediate_size": None,
    },
    "deepseek_v3": {
        "num_key_value_heads": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "q_lora_rank": 16,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 4,
        "qk_nope_head_dim": 4,
        "v_head_dim": 8,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    },
    "mamba": {"state_size": 4, "intermediate_size": None, "num_attention_heads": None},
}


def family_config(family: str, vocab_size: int) -> Any:
    """The tiny config of ``family`` (a key of :data:`FAMILIES`: a ``model_type``, or a variant naming its own)."""
    from transformers import AutoConfig

    fields = {**COMMON, **FAMILIES[family], "vocab_size": vocab_size}
    model_type = fields.pop("model_type", family)
    return AutoConfig.for_model(model_type, **{k: v for k, v in fields.items() if v is not None})


def save_family(folder: Path, family: str, seed: int = 0, scale: float = 0.2) -> Path:
    """Write a random tiny checkpoint of ``family`` with the tests' word-level tokenizer into ``folder``."""
    from conftest import _randomise, build_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, len(tokenizer)))
    _randomise(model, seed, scale)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
