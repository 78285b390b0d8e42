"""MLP weights in a fixed orientation (editing, notebook 03) and MLP neurons (notebook 06)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from kc_utils.models.core import hf_model

# ----------------------------------------------------------------------------- MLP weights (editing, notebook 03)
# Read and write one MLP's weights in a fixed orientation, whatever the architecture stores
# (GPT-2's Conv1D is transposed with respect to Llama's Linear).
#
# The fixed orientation is torch's Linear one: MLP ``L``'s output is ``W_out @ k + b_out`` with
# ``W_out`` ``[d_model, d_mlp]`` and ``k`` the MLP's hidden vector (the input of its output
# projection: after the activation, and after the gate for gated MLPs). The weights are the Hugging
# Face module's own parameters inside the bridge, so writing them changes the bridge and the
# Hugging Face model alike.


def mlp_key_hook(layer: int) -> str:
    """Hook holding the input of MLP ``layer``'s output projection (ROME's key ``k``): ``[b, p, d_mlp]``."""
    return f"blocks.{layer}.mlp.out.hook_in"


def mlp_value_hook(layer: int) -> str:
    """Hook holding the output of MLP ``layer``'s output projection, ``W k + b``: ``[b, p, d]`` (ROME's value ``v``).

    It is :func:`~kc_utils.models.mlp_out_hook` on most families; on a family with a post-feedforward norm (Gemma
    2/3, OLMo 2) ``hook_mlp_out`` holds the norm's output instead, ``g ⊙ v / rms(v)``, on another scale (on
    Gemma-3-270M's layer 1, a norm of 1,415 against 21 for ``v``), so a value edited through the projection's weight
    must be read and optimised here.
    """
    return f"blocks.{layer}.mlp.out.hook_out"


def mlp_has_post_norm(model: Any, layer: int = 0) -> bool:
    """Whether MLP ``layer``'s output is normalised before it joins the residual stream (a post-feedforward norm:
    Gemma 2/3, OLMo 2), so that :func:`mlp_value_hook` and :func:`~kc_utils.models.mlp_out_hook` differ.

    Example:
        >>> mlp_has_post_norm(load_model("gemma-3-270m"))  # doctest: +SKIP
        True
    """
    _check_layer(model, layer)
    return hasattr(model.blocks[layer], "ln2_post")


def _check_layer(model: Any, layer: int) -> None:
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")


def _mlp_output_projection(model: Any, layer: int) -> tuple[torch.nn.Module, bool]:
    """MLP ``layer``'s output projection module and whether it stores its weight as ``[in, out]`` (Conv1D)."""
    _check_layer(model, layer)
    module = model.blocks[layer].mlp.out.original_component
    transposed = type(module).__name__ == "Conv1D"
    if not transposed and not isinstance(module, torch.nn.Linear):
        raise TypeError(f"unsupported MLP output projection {type(module).__name__} in layer {layer}")
    return module, transposed


def mlp_out_weight(model: Any, layer: int) -> torch.Tensor:
    """A detached copy of MLP ``layer``'s output weight, ``[d_model, d_mlp]`` (output = ``W @ k + b``)."""
    module, transposed = _mlp_output_projection(model, layer)
    weight = module.weight.detach()
    return (weight.T if transposed else weight).clone()


def mlp_out_bias(model: Any, layer: int) -> torch.Tensor | None:
    """A detached copy of MLP ``layer``'s output bias ``[d_model]`` (``None`` when it has none)."""
    module, _ = _mlp_output_projection(model, layer)
    return None if module.bias is None else module.bias.detach().clone()


def set_mlp_out_weight(model: Any, layer: int, weight: torch.Tensor) -> None:
    """Overwrite MLP ``layer``'s output weight in place with ``weight`` ``[d_model, d_mlp]``.

    Raises:
        ValueError: a weight of another shape.
    """
    module, transposed = _mlp_output_projection(model, layer)
    stored = weight.T if transposed else weight
    if tuple(stored.shape) != tuple(module.weight.shape):
        expected = tuple(module.weight.T.shape) if transposed else tuple(module.weight.shape)
        raise ValueError(
            f"MLP {layer} output weight must have shape {expected} [d_model, d_mlp], got {tuple(weight.shape)}"
        )
    with torch.no_grad():
        module.weight.copy_(stored.to(module.weight.dtype))


def mlp_parameters(model: Any, layer: int, part: str = "mlp") -> dict[str, torch.nn.Parameter]:
    """MLP ``layer``'s parameters by their Hugging Face name (``transformer.h.1.mlp.c_proj.weight``).

    Args:
        part: ``"mlp"`` (every parameter of the MLP) or ``"out"`` (the output projection's weight and bias).
    """
    if part not in ("mlp", "out"):
        raise ValueError(f"part must be 'mlp' or 'out', got {part!r}")
    module, _ = _mlp_output_projection(model, layer)
    owner = module if part == "out" else model.blocks[layer].mlp.original_component
    wanted = {id(p) for p in owner.parameters()}
    return {name: p for name, p in all_parameters(model).items() if id(p) in wanted}


def all_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """Every parameter of the model by its Hugging Face name (``transformer.h.1.mlp.c_proj.weight``)."""
    return {name.replace("._original_component", ""): p for name, p in hf_model(model).named_parameters()}


# ----------------------------------------------------------------------------- MLP neurons (notebook 06)
# Hook names and interventions on the MLP's hidden activations (the "neurons").
#
# A neuron is one unit of an MLP's hidden vector: the input of its output projection, after the
# activation (GPT-2: ``gelu(x W_in + b_in)``; gated MLPs such as Llama's: ``act(x W_gate) * (x W_up)``).
# TransformerLens 4's bridge exposes it as ``blocks.L.mlp.hook_post`` (the same hook point as
# ``blocks.L.mlp.out.hook_in``). Neuron ``i`` of layer ``L`` writes ``activation_i * row_i`` to the
# residual stream, where ``row_i`` is row ``i`` of :func:`neuron_output_weights`.


def mlp_hidden_hook(layer: int) -> str:
    """Hook holding MLP ``layer``'s hidden activations (the neurons): ``[b, p, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def mlp_width(model: Any) -> int:
    """Number of neurons per MLP (``d_mlp``)."""
    return int(model.cfg.d_mlp)


def check_mlp_layer(model: Any, layer: int) -> int:
    """``layer`` if it is a block of the model that has an MLP.

    Raises:
        ValueError: a layer that is not a whole number, is out of range, or whose block has no MLP
            (an attention-only block), naming the layers that do have one.
    """
    n_layers = int(model.cfg.n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be a whole number, got {layer!r}")
    with_mlp = [i for i in range(n_layers) if mlp_hidden_hook(i) in model.hook_dict]
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    if layer not in with_mlp:
        raise ValueError(
            f"layer {layer} has no MLP (no hook {mlp_hidden_hook(layer)!r}), so it has no neurons; "
            f"choose among the layers with an MLP: {with_mlp}"
        )
    return layer


@contextlib.contextmanager
def _edge_settings(model: Any, attn_result: bool) -> Iterator[Any]:
    """Split q/k/v/MLP inputs off, per-head results ``attn_result``; the model's previous settings back on exit.

    A family whose bridge refuses per-head results (GPT-J, GPT-Neo, OPT) keeps its setting: there the results come
    from ``attn.hook_z`` (:mod:`kc_utils.models.edge_points`, route 2).
    """
    cfg = model.cfg
    previous = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    try:
        model.set_use_attn_result(attn_result)
    except NotImplementedError:
        pass
    model.set_use_split_qkv_input(False)
    model.set_use_hook_mlp_in(False)
    try:
        yield model
    finally:
        model.set_use_attn_result(previous[0])
        model.set_use_split_qkv_input(previous[1])
        model.set_use_hook_mlp_in(previous[2])


def without_edge_hooks(model: Any) -> contextlib.AbstractContextManager[Any]:
    """Context manager: switch off the per-head results and split q/k/v/MLP inputs that edge patching needs.

    Neuron work reads only ``hook_post``, ``hook_pattern`` and the logits, and a forward pass without the
    per-head tensors is about twice as fast; the model's previous settings are restored on exit.
    """
    return _edge_settings(model, attn_result=False)


def only_head_results(model: Any) -> contextlib.AbstractContextManager[Any]:
    """Context manager: keep the per-head results (``attn.hook_result``), switch off the split q/k/v/MLP inputs.

    Head ablation and head patching read and write each head's output and nothing an edge receives, so they do
    not pay for the per-head copies of the residual stream that edge patching needs: one row of notebook 05's
    Table 2 on SmolLM2 takes 0.63x the CPU time (``benchmarks/head_passes_speed.py``), with the same logits (tested
    equal on every exact family, ``tests/test_families.py``). The model's previous settings are restored on exit.

    Example:
        >>> with only_head_results(model):  # doctest: +SKIP
        ...     logits = run_with_heads_ablated(model, batch, ["a3.h1"])
    """
    return _edge_settings(model, attn_result=True)


def neuron_output_weights(model: Any, layer: int) -> torch.Tensor:
    """MLP ``layer``'s output weights with one row per neuron: ``[d_mlp, d_model]``.

    A live view of the model's parameter (GPT-2's Conv1D stores ``[d_mlp, d_model]``, a Linear layer
    stores ``[d_model, d_mlp]`` and is transposed here): writing rows, under ``torch.no_grad()``,
    edits the model. Copy it (``.clone()``) to keep the original values.

    Raises:
        ValueError: see :func:`check_mlp_layer`.
        TypeError: an output projection that is neither Conv1D nor Linear.
    """
    check_mlp_layer(model, layer)
    module = model.blocks[layer].mlp.out.original_component
    weight = module.weight.detach()
    if type(module).__name__ == "Conv1D":
        return weight
    if isinstance(module, torch.nn.Linear):
        return weight.T
    raise TypeError(f"unsupported MLP output projection {type(module).__name__} in layer {layer}")
