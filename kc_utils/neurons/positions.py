"""Where knowledge neurons are read: the position of each query, and the layers searched.

Dai et al. (2022) read a fact's neurons at the position where the answer is predicted (the last
token of the prompt). The organism recalls facts through the subject's MLPs (its model card), so the
subject's last token is offered as a second choice:

==============  ==================================================================================
position        token whose MLP neurons are attributed, suppressed or enhanced
==============  ==================================================================================
``"last"``      the prompt's last token (``PromptBatch.last_pos``), where the answer is predicted
``"subject"``   the subject's last token (:func:`kc_utils.analysis.lens.subject_positions`)
==============  ==================================================================================

The answer's probability is always read at the last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.lens import subject_positions
from kc_utils.data.prompts import PromptBatch

__all__ = ["POSITIONS", "NeuronError", "check_layers", "check_position", "query_positions"]

#: The positions a neuron can be read at.
POSITIONS = ("last", "subject")


class NeuronError(ValueError):
    """A neuron request that cannot be served; the message names the problem and the fix."""


def check_position(position: str) -> str:
    """``position`` if it is one of :data:`POSITIONS`.

    Raises:
        NeuronError: an unknown position, listing the known ones.
    """
    if position not in POSITIONS:
        raise NeuronError(f"unknown position {position!r}: use one of {list(POSITIONS)}")
    return position


def query_positions(
    model: Any, batch: PromptBatch, position: str = "last", subjects: Sequence[str] | None = None
) -> Int[Tensor, "b"]:
    """The token position of each prompt whose neurons are read (see the module table).

    Args:
        position: ``"last"`` or ``"subject"``.
        subjects: each prompt's subject as written in it; needed for ``"subject"``.

    Raises:
        NeuronError: an unknown position, or ``"subject"`` without one subject per prompt.
    """
    check_position(position)
    if position == "last":
        return batch.last_pos.clone()
    if subjects is None or len(subjects) != len(batch):
        given = "no subjects" if subjects is None else f"{len(subjects)} subjects"
        raise NeuronError(f"position='subject' needs one subject per prompt: {len(batch)} prompts but {given}")
    found = [subject_positions(model, p, s)[-1] for p, s in zip(batch.prompts, subjects)]
    return torch.tensor(found, dtype=torch.long, device=batch.last_pos.device)


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    """The MLP layers to search: all of them for ``None``, else each one checked.

    Raises:
        ValueError: a layer out of range or without an MLP (:func:`kc_utils.models.check_mlp_layer`).
        NeuronError: an empty or repeated list.
    """
    if layers is None:
        return [i for i in range(int(model.cfg.n_layers)) if models.mlp_hidden_hook(i) in model.hook_dict]
    layers = [models.check_mlp_layer(model, layer) for layer in layers]
    if not layers or len(set(layers)) != len(layers):
        raise NeuronError(f"layers must be a non-empty list without repeats, got {layers}")
    return layers
