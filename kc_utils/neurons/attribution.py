"""Knowledge-neuron attribution by integrated gradients (Dai et al. 2022, "Knowledge Neurons").

For a prompt, its answer and a position ``t``, let ``a`` be one MLP layer's hidden activations at
``t`` and ``F(x)`` the probability of the answer (read at the last token) when ``a`` is replaced by
``x``. The score of neuron ``i`` is the Riemann sum of integrated gradients along ``x = alpha * a``::

    score_i = a_i / m * sum_{k=1..m} dF/dx_i (k/m * a)

1. One clean forward pass records ``a`` for every layer searched.
2. For each layer, every (prompt, step) becomes one row of a batch: the layer's ``a`` is replaced by
   ``k/m * a`` at ``t`` (a leaf tensor). The blocks below the layer are the clean pass's, so the pass resumes
   at the layer's block from the clean residual stream (:func:`kc_utils.models.logits_from_layer`): a layer
   costs the blocks from it up, forward and backward.
3. One backward pass of the summed probabilities gives every row's gradient with respect to its
   leaf, so all neurons of the layer and all steps are scored at once (rows do not interact).
   Rows are processed in chunks of at most ``max_rows``.

Completeness: the scores of one layer sum to ``F(a) - F(0)`` up to the Riemann error, which
shrinks as ``1/m`` (tested). As in the paper, each layer is scaled on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from kc_utils import models
from kc_utils.data.metrics import prob
from kc_utils.data.prompts import PromptBatch
from kc_utils.neurons.positions import NeuronError, check_layers

__all__ = ["answer_probability", "neuron_activations", "neuron_attribution"]


def neuron_activations(
    model: Any, batch: PromptBatch, positions: Int[Tensor, "b"], layers: Sequence[int] | None = None
) -> Float[Tensor, "b l n"]:
    """Hidden activations of the MLPs ``layers`` (default: all) at each prompt's position."""
    layers = check_layers(model, layers)
    names = [models.mlp_hidden_hook(layer) for layer in layers]
    with torch.no_grad(), models.without_edge_hooks(model):
        cache = models.cache_activations(model, batch.clean, names)
    rows = torch.arange(len(batch), device=batch.clean.device)
    return torch.stack([cache[name][rows, positions] for name in names], dim=1)


def answer_probability(
    model: Any, batch: PromptBatch, fwd_hooks: Sequence[tuple[str, Any]] = (), targets: Tensor | None = None
) -> Float[Tensor, "b"]:
    """p(answer) at each prompt's last token (``targets`` replaces the batch's answers), with hooks."""
    scored = batch if targets is None else _with_answers(batch, targets)
    with torch.no_grad(), models.without_edge_hooks(model):
        return prob(
            models.last_logits(model, batch.clean, batch.last_pos, fwd_hooks)[:, None], scored.at_last_position()
        )


def _with_answers(batch: PromptBatch, targets: Tensor) -> PromptBatch:
    from dataclasses import replace

    return replace(batch, answer=torch.as_tensor(targets, device=batch.answer.device, dtype=torch.long))


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise NeuronError(f"steps must be a whole number >= 1 (the paper uses 20), got {steps!r}")
    return steps


def neuron_attribution(
    model: Any,
    batch: PromptBatch,
    positions: Int[Tensor, "b"],
    layers: Sequence[int] | None = None,
    steps: int = 20,
    max_rows: int = 512,
    progress: bool = False,
) -> Float[Tensor, "b l n"]:
    """Integrated-gradients score of every neuron of ``layers`` (default: all) for each prompt's answer.

    Args:
        batch: prompts and answers (the answer's first token is scored).
        positions: ``Int[b]`` position of each prompt whose neurons are scaled
            (:func:`kc_utils.neurons.positions.query_positions`).
        layers: MLP layers to score; each is scaled on its own.
        steps: Riemann steps ``m`` (Dai et al.: 20).
        max_rows: at most this many (prompt, step) rows per forward/backward pass (one layer each).

    Returns:
        ``Float[b, len(layers), d_mlp]`` scores: activation × mean gradient of p(answer).

    Raises:
        ValueError/NeuronError: a bad layer, ``steps < 1``, or positions of another length or past a prompt's end.
    """
    layers = check_layers(model, layers)
    steps = _check_steps(steps)
    positions = torch.as_tensor(positions, dtype=torch.long, device=batch.clean.device)
    if positions.shape != (len(batch),):
        raise NeuronError(
            f"give one position per prompt: {len(batch)} prompts but positions of shape {tuple(positions.shape)}"
        )
    if bool((positions < 0).any() or (positions > batch.last_pos).any()):
        raise NeuronError("a position lies outside its prompt (valid: 0 .. the prompt's last token)")
    names = [models.mlp_hidden_hook(layer) for layer in layers]
    streams = [models.resid_pre_hook(layer) for layer in layers]
    with torch.no_grad(), models.without_edge_hooks(model):
        cache = models.cache_activations(model, batch.clean, list(dict.fromkeys(names + streams)))
    rows = torch.arange(len(batch), device=batch.clean.device)
    clean = torch.stack([cache[name][rows, positions] for name in names], dim=1)  # [b, l, n]
    chunk = max(1, max_rows // steps)  # prompts per pass: steps rows each
    out = torch.zeros_like(clean)
    work = [(j, start) for j in range(len(layers)) for start in range(0, len(batch), chunk)]
    with models.without_edge_hooks(model):
        for j, start in tqdm(work, desc="integrated gradients", disable=not progress, leave=False):
            index = torch.arange(start, min(start + chunk, len(batch)), device=batch.clean.device)
            out[index, j] = _attribute_layer(
                model, batch, index, positions, clean[index, j], layers[j], cache[streams[j]][index], steps
            )
    return out


def _attribute_layer(
    model: Any,
    batch: PromptBatch,
    index: Int[Tensor, "c"],
    positions: Int[Tensor, "b"],
    clean: Float[Tensor, "c n"],
    layer: int,
    entering: Float[Tensor, "c p d"],
    steps: int,
) -> Float[Tensor, "c n"]:
    """Scores of prompts ``index`` at one layer: ``steps`` rows per prompt, resumed at the layer's block."""
    c = len(index)
    device = batch.clean.device
    # row r = prompt * steps + step
    prompt_of = torch.arange(c, device=device).repeat_interleave(steps)
    alpha = (torch.arange(1, steps + 1, device=device, dtype=clean.dtype) / steps).repeat(c)
    leaf = (alpha[:, None] * clean[prompt_of]).requires_grad_(True)
    rows = torch.arange(c * steps, device=device)
    at = positions[index][prompt_of]

    def replace(activation: Tensor, hook: Any) -> Tensor:
        activation = activation.clone()
        activation[rows, at] = leaf.to(activation.dtype)
        return activation

    tokens = batch.clean[index][prompt_of]
    last = batch.last_pos[index][prompt_of]
    answers = batch.answer[index][prompt_of]
    with torch.enable_grad():
        final = models.logits_from_layer(
            model, layer, entering[prompt_of], tokens, rows, last, [(models.mlp_hidden_hook(layer), replace)]
        )
        p = final.float().softmax(-1).gather(1, answers[:, None])[:, 0]
        (grad,) = torch.autograd.grad(p.sum(), leaf)
    return clean * grad.reshape(c, steps, -1).mean(1).to(clean.dtype)
