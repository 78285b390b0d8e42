"""FT-M: EasyEdit's masked fine-tuning of one MLP (Zhang et al. 2024, "A Comprehensive Study of Knowledge
Editing for Large Language Models").

Plain fine-tuning on the edit prompt, with two restrictions:

1. only one layer's MLP is trained (by default, as in EasyEdit, its output projection; ``part="mlp"`` trains
   the whole MLP), every other parameter is frozen;
2. the loss is on the target tokens only — the prompt is masked — so the model is taught the answer, not
   the question: ``loss = -log p(target | prompt)``.

Adam, stopping as soon as the target is the top-1 token with probability above ``stop_prob``, or after
``max_steps`` updates. The edit is reversible (:class:`~kc_utils.editing.reversible.EditResult`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kc_utils import models
from kc_utils.editing.request import EditRequest, PreparedRequest, check_layer, prepare_request
from kc_utils.editing.reversible import EditResult, snapshot

__all__ = ["FtmConfig", "ft_m_edit"]


@dataclass(frozen=True)
class FtmConfig:
    """FT-M's hyperparameters.

    Attributes:
        part: ``"out"`` (the MLP's output projection, EasyEdit's default) or ``"mlp"`` (all of the MLP).
        lr: Adam's learning rate.
        max_steps: cap on the updates.
        stop_prob: stop when the target is top-1 with a probability above this.
    """

    part: str = "out"
    lr: float = 5e-3
    max_steps: int = 40
    stop_prob: float = 0.9

    def __post_init__(self) -> None:
        if self.part not in ("out", "mlp"):
            raise ValueError(f"part must be 'out' or 'mlp', got {self.part!r}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")


def ft_m_edit(
    model: Any, request: EditRequest | PreparedRequest, layer: int, config: FtmConfig | None = None
) -> EditResult:
    """Fine-tune MLP ``layer`` on the request's target token (prompt masked), in place.

    Returns:
        A reversible :class:`EditResult`; ``info`` holds ``steps``, ``target_prob`` (after the last update),
        ``reached`` (whether the stop criterion was met) and ``update_norm`` (norm of all changes).

    Raises:
        EditError: a layer out of range, or a bad request (subject not in the prompt, multi-token target).
    """
    check_layer(model, layer)
    config = config or FtmConfig()
    prepared = request if isinstance(request, PreparedRequest) else prepare_request(model, request)
    trained = models.mlp_parameters(model, layer, config.part)
    originals = snapshot(model, list(trained))
    everything = models.all_parameters(model).values()
    was_trainable = {id(p): p.requires_grad for p in everything}
    tokens = torch.tensor([prepared.tokens], device=models.model_device(model))
    target = torch.tensor([prepared.target], device=tokens.device)
    optimiser = torch.optim.Adam(trained.values(), lr=config.lr)
    steps, reached, prob = 0, False, 0.0
    try:
        for p in everything:
            p.requires_grad_(False)
        for p in trained.values():
            p.requires_grad_(True)
        while True:
            logits = model(tokens)[0, -1].float()
            log_probs = logits.log_softmax(-1)
            prob = float(log_probs[target].detach().exp())
            reached = int(logits.argmax()) == prepared.target and prob > config.stop_prob
            if reached or steps >= config.max_steps:
                break
            loss = -log_probs[target].sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
    finally:
        for p in everything:
            p.requires_grad_(was_trainable[id(p)])
        optimiser.zero_grad(set_to_none=True)
    result = EditResult(model=model, method="ft-m", layer=layer, originals=originals)
    changes = result.changed_parameters()
    result.info = {
        "steps": steps,
        "target_prob": prob,
        "reached": reached,
        "update_norm": float(sum(v**2 for v in changes.values()) ** 0.5),
        "part": config.part,
    }
    return result
