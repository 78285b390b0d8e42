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

Many edits at one layer (notebook 03's sweep) are trained together by :func:`ftm_targets`: the output projection
is linear, so an edit's trained weights ``W + ΔW`` give the MLP output ``W h + b + ΔW h + Δb``, and each prompt of
one batch adds its own ``ΔW h + Δb``. Adam is elementwise and the prompts do not interact, so each ``ΔW`` takes the
steps that training its edit alone would take (tested against :func:`ft_m_edit`), in one forward and backward pass
of every edit per step instead of one pass per edit and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.editing.request import EditError, EditRequest, PreparedRequest, check_layer, prepare_request
from kc_utils.editing.reversible import EditResult, snapshot

__all__ = ["FtmConfig", "FtmTarget", "ft_m_edit", "ftm_targets"]


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


@dataclass(frozen=True)
class FtmTarget:
    """What FT-M's training of one edit ends with (``part="out"``), from :func:`ftm_targets`.

    Attributes:
        weight_delta: ``ΔW`` ``[d_model, d_mlp]``, added to the output weight (in :func:`mlp_out_weight`'s layout).
        bias_delta: ``Δb`` ``[d_model]``, or ``None`` for a projection without bias.
        steps: updates taken.
        target_prob: p(target) at the edit prompt before the last check (after the last update).
        reached: whether the stop criterion was met.
    """

    weight_delta: Float[Tensor, "d m"]
    bias_delta: Float[Tensor, " d"] | None
    steps: int
    target_prob: float
    reached: bool


def ftm_targets(
    model: Any,
    requests: Sequence[EditRequest | PreparedRequest],
    layer: int,
    config: FtmConfig | None = None,
    max_rows: int = 32,
) -> list[FtmTarget]:
    """FT-M's training of each request at MLP ``layer``, every request of a batch trained at once (module
    docstring); the model is left unchanged. Apply one with ``ft_m_edit(model, request, layer, config, target)``.

    Args:
        requests: the edits, each trained on its own (as :func:`ft_m_edit` would, from the unedited model).
        max_rows: at most this many requests per batch (memory).

    Returns:
        One :class:`FtmTarget` per request, in order.

    Raises:
        EditError: ``config.part`` is ``"mlp"`` (train those with :func:`ft_m_edit`), a layer out of range, or a
            bad request.

    Example:
        >>> targets = ftm_targets(model, requests, 3)  # doctest: +SKIP
        >>> with ft_m_edit(model, requests[0], 3, target=targets[0]):  # doctest: +SKIP
        ...     ...
    """
    check_layer(model, layer)
    config = config or FtmConfig()
    if config.part != "out":
        raise EditError("ftm_targets trains the output projection (part='out'); train part='mlp' with ft_m_edit")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    prepared = [r if isinstance(r, PreparedRequest) else prepare_request(model, r) for r in requests]
    targets: list[FtmTarget] = []
    for start in range(0, len(prepared), max_rows):
        targets += _train_together(model, prepared[start : start + max_rows], layer, config)
    return targets


def _train_together(model: Any, prepared: list[PreparedRequest], layer: int, config: FtmConfig) -> list[FtmTarget]:
    device = models.model_device(model)
    n = len(prepared)
    width = max(len(p.tokens) for p in prepared)
    tokens = torch.tensor([list(p.tokens) + [p.tokens[-1]] * (width - len(p.tokens)) for p in prepared], device=device)
    last = torch.tensor([len(p.tokens) - 1 for p in prepared], device=device)
    target = torch.tensor([p.target for p in prepared], device=device)
    weight = models.mlp_out_weight(model, layer)  # [d, m]
    has_bias = models.mlp_out_bias(model, layer) is not None
    delta_w = torch.zeros(n, *weight.shape, device=device, dtype=weight.dtype, requires_grad=True)  # [n, d, m]
    delta_b = torch.zeros(n, weight.shape[0], device=device, dtype=weight.dtype, requires_grad=has_bias)  # [n, d]
    trained = [delta_w, delta_b] if has_bias else [delta_w]
    optimiser = torch.optim.Adam(trained, lr=config.lr)
    hidden: dict[str, Tensor] = {}

    def keep_hidden(activation: Tensor, hook: Any) -> Tensor:
        hidden["h"] = activation
        return activation

    def add_delta(out: Tensor, hook: Any) -> Tensor:  # [n, p, d] + [n, p, m] · [n, d, m]ᵀ + [n, 1, d]
        change = torch.einsum("npm,ndm->npd", hidden["h"].to(delta_w.dtype), delta_w) + delta_b[:, None]
        return out + change.to(out.dtype)

    hooks = [(models.mlp_hidden_hook(layer), keep_hidden), (models.mlp_value_hook(layer), add_delta)]
    rows = torch.arange(n, device=device)
    steps = torch.zeros(n, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    reached = torch.zeros(n, dtype=torch.bool)
    prob = torch.zeros(n)
    everything = models.all_parameters(model).values()
    was_trainable = {id(p): p.requires_grad for p in everything}
    with models.without_edge_hooks(model):
        with torch.no_grad():  # the blocks below the trained MLP never change: each step resumes at its block
            name = models.resid_pre_hook(layer)
            entering = models.cache_activations(model, tokens, [name])[name]
        try:
            for p in everything:
                p.requires_grad_(False)
            while True:
                logits = models.logits_from_layer(model, layer, entering, tokens, rows, last, hooks).float()  # [n, v]
                log_probs = logits.log_softmax(-1)
                losses = -log_probs.gather(1, target[:, None])[:, 0]  # [n]
                now_prob = (-losses.detach()).exp().cpu()
                prob = torch.where(done, prob, now_prob)
                if config.stop == "loss":
                    hit = losses.detach().cpu() < config.stop_loss
                else:
                    hit = (logits.argmax(-1) == target).cpu() & (now_prob > config.stop_prob)
                reached = torch.where(done, reached, hit)
                done = done | hit | (steps >= config.max_steps)
                if bool(done.all()):
                    break
                optimiser.zero_grad()
                losses[~done.to(device)].sum().backward()
                frozen = [t.detach()[done.to(device)].clone() for t in trained]
                optimiser.step()
                with torch.no_grad():
                    for t, kept in zip(trained, frozen):
                        t[done.to(device)] = kept
                    if config.norm_constraint is not None:
                        for t in trained:
                            t.clamp_(-config.norm_constraint, config.norm_constraint)
                steps += (~done).long()
        finally:
            for p in everything:
                p.requires_grad_(was_trainable[id(p)])
    return [
        FtmTarget(
            weight_delta=delta_w[i].detach().clone(),
            bias_delta=delta_b[i].detach().clone() if has_bias else None,
            steps=int(steps[i]),
            target_prob=float(prob[i]),
            reached=bool(reached[i]),
        )
        for i in range(n)
    ]


def ft_m_edit(
    model: Any,
    request: EditRequest | PreparedRequest,
    layer: int,
    config: FtmConfig | None = None,
    target: FtmTarget | None = None,
) -> EditResult:
    """Fine-tune MLP ``layer`` on the request's target token (prompt masked), in place.

    Args:
        target: the training's outcome already computed by :func:`ftm_targets` (``part="out"``): its ``ΔW`` and
            ``Δb`` are added instead of training here.

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
    if target is not None:
        return _apply_target(model, layer, config, target, originals)
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


def _apply_target(
    model: Any, layer: int, config: FtmConfig, target: FtmTarget, originals: dict[str, Tensor]
) -> EditResult:
    if config.part != "out":
        raise EditError("an FtmTarget holds the output projection's change: use it with part='out'")
    models.set_mlp_out_weight(model, layer, models.mlp_out_weight(model, layer) + target.weight_delta)
    if target.bias_delta is not None:
        name = next(n for n in originals if n.endswith("bias"))
        with torch.no_grad():
            models.all_parameters(model)[name].add_(target.bias_delta.to(originals[name].dtype))
    result = EditResult(model=model, method="ft-m", layer=layer, originals=originals)
    changes = result.changed_parameters()
    result.info = {
        "steps": target.steps,
        "target_prob": target.target_prob,
        "reached": target.reached,
        "update_norm": float(sum(v**2 for v in changes.values()) ** 0.5),
        "part": config.part,
    }
    return result
