"""FT-M: EasyEdit's masked fine-tuning of one MLP (Zhang et al. 2024, "A Comprehensive Study of Knowledge
Editing for Large Language Models").

Plain fine-tuning on the edit prompt, with two restrictions:

1. only one layer's MLP is trained (by default, as in EasyEdit, its output projection; ``part="mlp"`` trains
   the whole MLP), every other parameter is frozen;
2. the loss is on the target tokens only — the prompt is masked — so the model is taught the answer, not
   the question: ``loss = -log p(target | prompt)``.

The defaults are EasyEdit's FT-M (``easyeditor/models/ft/ft_main.py`` with ``objective_optimization:
"target_new"``; ``hparams/FT/*.yaml``): Adam with ``lr`` 5e-4 and no weight decay, at most ``num_steps`` 25 updates,
no update once the loss is below 1e-2 and a stop there, and, when ``norm_constraint`` is a number, every trained
weight clamped after each update to within ``± norm_constraint`` of its original value (EasyEdit's GPT-2 XL file:
5e-4; its Llama files: none). :class:`FtmConfig` names each departure (``part``, ``lr``, ``stop``). The edit is
reversible (:class:`~kc_utils.editing.reversible.EditResult`).
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
    """FT-M's hyperparameters, EasyEdit's by default (its name and value beside each).

    Attributes:
        part: ``"out"`` (the MLP's output projection: EasyEdit's ``rewrite_module_tmp`` ``mlp.c_proj`` — weight
            and bias — on GPT-2, ``mlp.down_proj.weight`` on Llama) or ``"mlp"`` (all of the MLP, a departure).
        lr: Adam's learning rate (EasyEdit ``lr`` 5e-4).
        max_steps: cap on the updates (EasyEdit ``num_steps`` 25).
        stop: ``"loss"``: no update and stop once the target's loss is below ``stop_loss`` (EasyEdit: 1e-2, i.e.
            p > 0.99); ``"prob"``: stop once the target is top-1 with probability above ``stop_prob`` (a
            departure: fewer updates once the edit holds).
        stop_loss: EasyEdit's 1e-2.
        stop_prob: the threshold of ``stop="prob"``.
        norm_constraint: clamp every trained weight to ``original ± norm_constraint`` after each update
            (EasyEdit ``norm_constraint``: 5e-4 in its GPT-2 XL file, ``false`` in its Llama files); ``None``: no
            clamp.
    """

    part: str = "out"
    lr: float = 5e-4
    max_steps: int = 25
    stop: str = "loss"
    stop_loss: float = 1e-2
    stop_prob: float = 0.9
    norm_constraint: float | None = None

    def __post_init__(self) -> None:
        if self.part not in ("out", "mlp"):
            raise ValueError(f"part must be 'out' or 'mlp', got {self.part!r}")
        if self.stop not in ("loss", "prob"):
            raise ValueError(f"stop must be 'loss' or 'prob', got {self.stop!r}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise ValueError(f"norm_constraint must be positive or None, got {self.norm_constraint!r}")

    def departures(self) -> list[str]:
        """The fields where this config departs from EasyEdit's FT-M (``norm_constraint`` is architecture-dependent
        there and not counted)."""
        easyedit = FtmConfig()
        return [n for n in ("part", "lr", "max_steps", "stop") if getattr(self, n) != getattr(easyedit, n)]


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
    with models.without_edge_hooks(model):  # no pass here reads a per-head edge point
        try:
            for p in everything:
                p.requires_grad_(False)
            for p in trained.values():
                p.requires_grad_(True)
            while True:
                logits = models.last_logits(model, tokens, [tokens.shape[1] - 1])[0].float()
                log_probs = logits.log_softmax(-1)
                loss = -log_probs[target].sum()
                prob = float(log_probs[target].detach().exp())
                if config.stop == "loss":
                    reached = float(loss.detach()) < config.stop_loss
                else:
                    reached = int(logits.argmax()) == prepared.target and prob > config.stop_prob
                if reached or steps >= config.max_steps:
                    break
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                if config.norm_constraint is not None:
                    with torch.no_grad():
                        for name, p in trained.items():
                            original = originals[name]
                            p.copy_(
                                torch.clamp(p, original - config.norm_constraint, original + config.norm_constraint)
                            )
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
