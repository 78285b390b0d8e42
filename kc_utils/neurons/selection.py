"""Choosing knowledge neurons from attribution scores (Dai et al. 2022).

1. Per prompt: keep the neurons whose score is at least ``threshold`` × the prompt's largest score
   over all layers searched (the paper: 0.3). Only positive scores count, so a prompt whose scores are
   all ≤ 0 has no neurons.
2. Per fact (optional refinement): keep the neurons chosen for more than ``share`` of the fact's
   queries (its paraphrased prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from kc_utils.neurons.positions import NeuronError

__all__ = ["check_threshold", "neuron_list", "random_like", "refine_by_share", "select_neurons"]


def check_threshold(threshold: float, name: str = "threshold") -> float:
    """``threshold`` if it lies in (0, 1].

    Raises:
        NeuronError: a value outside (0, 1] (0 would keep every positive neuron, > 1 none).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise NeuronError(
            f"{name} must lie in (0, 1] (a fraction of the largest score; the paper uses 0.3), got {threshold!r}"
        )
    return float(threshold)


def select_neurons(scores: Float[Tensor, "... l n"], threshold: float = 0.3) -> Bool[Tensor, "... l n"]:
    """Neurons scoring at least ``threshold`` × the largest score of their prompt (and above 0).

    ``scores`` is ``[..., layers, neurons]``; the maximum is taken over the last two dimensions.
    """
    check_threshold(threshold)
    top = scores.flatten(-2).max(-1).values[..., None, None]
    return (scores >= threshold * top) & (scores > 0)


def refine_by_share(masks: Bool[Tensor, "q l n"], share: float) -> Bool[Tensor, "l n"]:
    """Neurons chosen for more than ``share`` of the queries (``masks`` has one row per query).

    Raises:
        NeuronError: ``share`` outside [0, 1) or no queries.
    """
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise NeuronError(f"share must lie in [0, 1) (more than this fraction of the queries), got {share!r}")
    if masks.shape[0] == 0:
        raise NeuronError("refine_by_share needs at least one query")
    return masks.float().mean(0) > share


def neuron_list(mask: Bool[Tensor, "l n"], layers: Sequence[int]) -> list[tuple[int, int]]:
    """The chosen neurons as ``(layer, neuron)`` pairs, ``layers`` naming the mask's rows."""
    if mask.shape[0] != len(layers):
        raise NeuronError(f"the mask has {mask.shape[0]} layers but {len(layers)} layer names were given")
    return [(int(layers[j]), int(i)) for j, i in torch.nonzero(mask).tolist()]


def random_like(mask: Bool[Tensor, "l n"], generator: torch.Generator) -> Bool[Tensor, "l n"]:
    """A random mask with as many neurons in each layer as ``mask`` (the baseline of a neuron set)."""
    out = torch.zeros_like(mask)
    for j, count in enumerate(mask.sum(-1).tolist()):
        out[j, torch.randperm(mask.shape[-1], generator=generator)[:count].to(mask.device)] = True
    return out
