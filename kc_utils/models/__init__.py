"""Loading models and talking to TransformerLens: the only module that imports ``transformer_lens``.

Every model — the shipped organism, a local Hugging Face checkpoint, or a hub name such as
``gpt2-medium`` — is booted through TransformerLens 4's ``TransformerBridge`` and configured for
edge patching:

* compatibility mode **without weight processing** (``no_processing=True``): node outputs are the
  model's own (no LayerNorm folding, no centring), so logits equal the Hugging Face model's and
  zero ablation means what it says;
* per-head attention results (``hook_result``), per-head query/key/value inputs
  (``hook_q_input`` …, per key/value head under grouped-query attention) and ``hook_mlp_in``.

The rest of :mod:`kc_utils` reaches the model only through the small vocabulary defined here
(:class:`ModelShape`, the hook-name functions, :func:`run_with_hooks`), so a change in
TransformerLens touches this package alone. Its modules:

* :mod:`~kc_utils.models.core` — hook names, hooked runs, unembedding, tokens;
* :mod:`~kc_utils.models.edge_points` — how each family's bridge serves those hook names (post-norm head
  shares, per-head results and q/k/v inputs the bridge does not split, the MLP input of a one-norm parallel block);
* :mod:`~kc_utils.models.loading` — names, the GGUF cache, the hub, booting and configuring the bridge;
* :mod:`~kc_utils.models.decomposition` — the checks that refuse a model whose residual stream is not the sum of
  its graph's node outputs;
* :mod:`~kc_utils.models.weights` — MLP weights in one orientation (editing) and MLP neurons;
* :mod:`~kc_utils.models.resume` — passes that resume at a block from a recorded residual stream.

Hook glossary (``b`` batch, ``p`` position, ``h`` query heads, ``g`` key/value heads,
``d`` d_model):

=============================  ==================  ==========================================
hook                           shape               meaning
=============================  ==================  ==========================================
``blocks.0.hook_in``           ``[b, p, d]``       token (+ positional) embedding = ``input``
``blocks.L.attn.hook_result``  ``[b, p, h, d]``    each head's write to the residual stream
                                                   (without the output bias ``b_O``)
``blocks.L.hook_mlp_out``      ``[b, p, d]``       MLP ``L``'s write to the residual stream
``blocks.L.hook_q_input``      ``[b, p, h, d]``    residual stream read by each query head
``blocks.L.hook_k_input``      ``[b, p, g, d]``    … by each key head (``g = h`` without GQA)
``blocks.L.hook_v_input``      ``[b, p, g, d]``    … by each value head
``blocks.L.hook_mlp_in``       ``[b, p, d]``       residual stream read by MLP ``L``
``ln_final.hook_in``           ``[b, p, d]``       residual stream read by the unembedding
=============================  ==================  ==========================================
"""

from kc_utils.models.core import (
    INPUT_HOOK,
    LOGITS_INPUT_HOOK,
    PREPEND_BOS_ATTRIBUTE,
    SOURCE_ATTRIBUTE,
    HookFn,
    attn_pattern_hook,
    bos_token_id,
    cache_activations,
    continuation_first_token,
    final_norm_scale_hook,
    head_result_hook,
    hf_model,
    hooks,
    last_logits,
    logits_at,
    mlp_in_hook,
    mlp_out_hook,
    model_device,
    model_dtype,
    model_family,
    model_shape,
    model_source,
    qkv_input_hook,
    resid_post_hook,
    run_with_cache,
    run_with_hooks,
    token_strings,
    tokenize,
    unembed,
)
from kc_utils.models.decomposition import (
    DECOMPOSITION_PROBES,
    DecompositionCheck,
    DecompositionError,
    check_edge_points,
    check_residual_decomposition,
    decomposition_tolerance,
    edge_point_round_trip,
    residual_decomposition,
)
from kc_utils.models.edge_points import EdgeRoutes, PostNorm, edge_routes, plan_routes, route
from kc_utils.models.errors import ModelLoadError, UnsupportedFamilyError
from kc_utils.models.loading import (
    ORGANISM_NAME,
    SHORT_NAMES,
    ModelSource,
    _hub_reachable,
    _is_cached,
    _placement,
    configure_for_patching,
    load_model,
    resolve_device,
    resolve_model,
    resolve_model_name,
)
from kc_utils.models.resume import blocks_skipped, logits_from_layer, resid_pre_hook, streams_entering
from kc_utils.models.weights import (
    all_parameters,
    check_mlp_layer,
    mlp_has_post_norm,
    mlp_hidden_hook,
    mlp_key_hook,
    mlp_out_bias,
    mlp_out_weight,
    mlp_parameters,
    mlp_value_hook,
    mlp_width,
    neuron_output_weights,
    only_head_results,
    set_mlp_out_weight,
    without_edge_hooks,
)
from kc_utils.shape import ModelShape

__all__ = [
    "check_edge_points",
    "edge_point_round_trip",
    "EdgeRoutes",
    "PostNorm",
    "UnsupportedFamilyError",
    "edge_routes",
    "model_family",
    "plan_routes",
    "route",
    "ModelShape",
    "DECOMPOSITION_PROBES",
    "DecompositionCheck",
    "DecompositionError",
    "HookFn",
    "INPUT_HOOK",
    "LOGITS_INPUT_HOOK",
    "ModelLoadError",
    "ModelSource",
    "ORGANISM_NAME",
    "PREPEND_BOS_ATTRIBUTE",
    "SHORT_NAMES",
    "SOURCE_ATTRIBUTE",
    "_hub_reachable",
    "_is_cached",
    "_placement",
    "all_parameters",
    "attn_pattern_hook",
    "bos_token_id",
    "check_mlp_layer",
    "check_residual_decomposition",
    "configure_for_patching",
    "continuation_first_token",
    "decomposition_tolerance",
    "final_norm_scale_hook",
    "head_result_hook",
    "hf_model",
    "hooks",
    "load_model",
    "cache_activations",
    "last_logits",
    "logits_at",
    "logits_from_layer",
    "blocks_skipped",
    "resid_pre_hook",
    "streams_entering",
    "mlp_hidden_hook",
    "mlp_in_hook",
    "mlp_has_post_norm",
    "mlp_key_hook",
    "mlp_value_hook",
    "mlp_out_bias",
    "mlp_out_hook",
    "mlp_out_weight",
    "mlp_parameters",
    "mlp_width",
    "model_device",
    "model_dtype",
    "model_shape",
    "model_source",
    "neuron_output_weights",
    "qkv_input_hook",
    "resid_post_hook",
    "residual_decomposition",
    "resolve_device",
    "resolve_model",
    "resolve_model_name",
    "run_with_cache",
    "run_with_hooks",
    "set_mlp_out_weight",
    "token_strings",
    "tokenize",
    "unembed",
    "only_head_results",
    "without_edge_hooks",
]
