"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"), written from the paper.

An MLP's output projection is read as a linear associative memory ``W k ≈ v``: the key ``k`` is the MLP's
hidden vector at the subject's last token, the value ``v`` what the MLP writes there. ROME inserts a new
association ``(k*, v*)`` with the rank-one update of least disturbance:

1. **Key** ``k*`` (:func:`compute_keys`): the key at the subject's last token, averaged over contexts — the
   edit prompt, the relation's other templates (``RomeConfig.templates``) and a few text prefixes
   (``RomeConfig.prefixes``), so it is not bound to one prompt's positions.
2. **Value** ``v*`` (:func:`compute_values`): a vector ``δ`` is added to the MLP's output at the subject's
   last token of every context and optimised (Adam) so that the new object becomes the next token::

       loss = mean_contexts[-log p(target)] + kl_factor · KL(p₀ ‖ p_δ)("{subject} is a")
              + weight_decay · ‖δ‖² / ‖r‖²

   with ``‖δ‖ ≤ clamp_norm_factor · ‖r‖``; it stops early once the target's mean probability over
   the contexts exceeds ``stop_prob``, or at once when ``δ`` gets no gradient at all (nothing after this layer
   reads the subject's position, e.g. the last layer). Then ``v* = W k* + δ`` (the value in the weight's own space, bias
   excluded). The KL term keeps what the model says about the subject in general. One departure from the
   paper: the scale ``r`` is the residual stream after the MLP at the subject's last token, where the paper
   uses the MLP's output ``W k* + b``. On the organism, MLPs 1-2 write vectors of norm ~5 into a stream of
   norm ~450, so a clamp relative to their output would forbid any edit there; at MLP 0 the two agree.
3. **Update** (:func:`rome_update`): with ``u = C⁻¹ k*`` (``C = E[k kᵀ]``, :mod:`~kc_utils.editing.covariance`)::

       W' = W + (v* − W k*) uᵀ / (uᵀ k*)

   so ``W' k* = v*`` exactly and ``W' k = W k`` for every ``k`` with ``kᵀ C⁻¹ k* = 0`` (tested). ``W`` is
   ``[d_model, d_mlp]`` (torch's Linear orientation); :mod:`kc_utils.models` writes it back in whatever
   orientation the model stores (GPT-2's Conv1D is the transpose).

Values of many requests are optimised in one batch (:func:`compute_values`): each request has its own row of
``δ``, its own loss term and its own early stop, and Adam is elementwise, so the batch gives each request the
same ``v*`` as optimising it alone (tested against the one-request-at-a-time reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from kc_utils import models
from kc_utils.analysis.lens import subject_positions
from kc_utils.editing.covariance import KeyStatistics
from kc_utils.editing.request import EditError, EditRequest, PreparedRequest, check_layer, prepare_request
from kc_utils.editing.reversible import EditResult, snapshot

__all__ = [
    "RomeConfig",
    "RomeTarget",
    "compute_keys",
    "compute_values",
    "context_prompts",
    "rome_edit",
    "rome_targets",
    "rome_update",
]


@dataclass(frozen=True)
class RomeConfig:
    """ROME's hyperparameters (defaults follow the paper's GPT-2 XL settings where they transfer).

    Attributes:
        templates: templates (one ``{}``) the key and the value are averaged over, besides the edit prompt;
            for the organism, the relation's training templates.
        prefixes: text put before each context (``""`` = none); the paper uses short generated texts.
        value_prefixes: optimise ``δ`` on the prefixed contexts too (the paper); ``False`` (the default, to save
            time) optimises it on the unprefixed contexts while the key still averages over every prefix.
        steps: cap on the optimisation steps of ``δ``.
        lr: Adam's learning rate for ``δ`` measured in units of the reference's RMS per coordinate (``δ = z ·
            ‖r‖/√d`` and Adam steps ``z``), so one setting serves layers whose outputs differ in scale.
        kl_factor: weight of the KL term on ``kl_template``.
        kl_template: the prompt whose next-token distribution must not move (``"{} is a"``).
        weight_decay: weight of ``‖δ‖² / ‖r‖²``.
        clamp_norm_factor: ``‖δ‖`` is kept below this times ``‖r‖``.
        stop_prob: stop once the target's mean probability over the contexts exceeds this.
    """

    templates: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ("",)
    value_prefixes: bool = False
    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    kl_template: str = "{} is a"
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    stop_prob: float = 0.95

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.prefixes:
            raise ValueError("prefixes must hold at least one text; use ('',) for no prefix")
        for template in (*self.templates, self.kl_template):
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the subject")


@dataclass(frozen=True)
class RomeTarget:
    """The association ROME writes for one request.

    Attributes:
        key: ``Float[d_mlp]`` ``k*``.
        value: ``Float[d_model]`` ``v* = W k* + δ``.
        delta_norm: ``‖δ‖``.
        output_norm: ``‖W k* + b‖`` (the MLP's own output for the key ``k*``).
        reference_norm: ``‖r‖``, the residual stream after the MLP at the subject's last token (mean over the
            contexts), the scale ``δ`` is measured against.
        steps: optimisation steps taken.
        target_prob: the target's mean probability over the contexts with ``δ`` added, when it stopped.
    """

    key: Float[Tensor, m]
    value: Float[Tensor, d]
    delta_norm: float
    output_norm: float
    reference_norm: float
    steps: int
    target_prob: float
    n_contexts: int = field(default=1)


def context_prompts(request: EditRequest, config: RomeConfig) -> list[str]:
    """The contexts of a request: each prefix before the edit prompt and before each template.

    A prefix that contains the subject is skipped (the subject's position would be ambiguous).
    """
    prompts = list(dict.fromkeys([request.prompt, *(t.replace("{}", request.subject) for t in config.templates)]))
    out = []
    for prefix in config.prefixes:
        if prefix and request.subject in prefix:
            continue
        out += [(prefix.strip() + " " + p) if prefix.strip() else p for p in prompts]
    return out


@dataclass(frozen=True)
class _Rows:
    """A right-padded batch of contexts of several requests."""

    tokens: Tensor  # [n, p]
    last_pos: Tensor  # [n]
    subject_last: Tensor  # [n]
    request: Tensor  # [n] index of each row's request


def _rows(model: Any, texts: list[str], subjects: list[str], request_index: list[int]) -> _Rows:
    ids = models.tokenize(model, texts)
    width = max(len(r) for r in ids)
    pad = model.tokenizer.pad_token_id
    device = models.model_device(model)
    subject_last = []
    for text, subject in zip(texts, subjects):
        try:
            subject_last.append(max(subject_positions(model, text, subject)))
        except ValueError as error:
            raise EditError(f"the subject {subject!r} is not in the context {text!r}: {error}") from error
    return _Rows(
        tokens=torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device),
        last_pos=torch.tensor([len(r) - 1 for r in ids], device=device),
        subject_last=torch.tensor(subject_last, device=device),
        request=torch.tensor(request_index, device=device),
    )


def _context_rows(
    model: Any, requests: Sequence[PreparedRequest], config: RomeConfig, with_prefixes: bool = True
) -> _Rows:
    texts, subjects, index = [], [], []
    if not with_prefixes:
        config = replace(config, prefixes=("",))
    for i, prepared in enumerate(requests):
        contexts = context_prompts(prepared.request, config)
        texts += contexts
        subjects += [prepared.request.subject] * len(contexts)
        index += [i] * len(contexts)
    for i, prepared in enumerate(requests):  # the KL rows come last, one per request
        texts.append(config.kl_template.replace("{}", prepared.request.subject))
        subjects.append(prepared.request.subject)
        index.append(len(requests) + i)
    return _rows(model, texts, subjects, index)


def _prepare_all(model: Any, requests: Sequence[EditRequest | PreparedRequest]) -> list[PreparedRequest]:
    if not requests:
        raise EditError("no edit requests given")
    return [r if isinstance(r, PreparedRequest) else prepare_request(model, r) for r in requests]


def compute_keys(
    model: Any, requests: Sequence[EditRequest | PreparedRequest], layer: int, config: RomeConfig
) -> Float[Tensor, "r m"]:
    """``k*`` of each request: the key at the subject's last token, averaged over the request's contexts."""
    check_layer(model, layer)
    prepared = _prepare_all(model, requests)
    rows = _context_rows(model, prepared, config)
    n = len(prepared)
    hook = models.mlp_key_hook(layer)
    with torch.no_grad():
        _, cache = models.run_with_cache(model, rows.tokens[:-n], [hook])
    keys = cache[hook][torch.arange(len(rows.tokens) - n), rows.subject_last[:-n]].double()  # [contexts, m]
    sums = torch.zeros(n, keys.shape[1], dtype=keys.dtype, device=keys.device)
    sums.index_add_(0, rows.request[:-n], keys)
    counts = torch.bincount(rows.request[:-n], minlength=n).to(keys.dtype)
    return (sums / counts[:, None]).float()


def _delta_hook(layer: int, delta: Tensor, rows: Tensor, positions: Tensor, owner: Tensor) -> tuple[str, Any]:
    """A forward hook adding ``delta[owner[i]]`` to MLP ``layer``'s output at ``(rows[i], positions[i])``."""

    def add(out: Tensor, hook: Any) -> Tensor:
        values = delta[owner].to(out.dtype)
        return out.index_put((rows, positions), values, accumulate=True)

    return models.mlp_out_hook(layer), add


def compute_values(
    model: Any,
    requests: Sequence[EditRequest | PreparedRequest],
    layer: int,
    keys: Float[Tensor, "r m"],
    config: RomeConfig,
) -> list[RomeTarget]:
    """``v*`` of each request (module docstring, step 2), all requests optimised in one batch."""
    check_layer(model, layer)
    prepared = _prepare_all(model, requests)
    n_req = len(prepared)
    device = models.model_device(model)
    weight = models.mlp_out_weight(model, layer).to(device).float()
    bias = models.mlp_out_bias(model, layer)
    bias = torch.zeros(weight.shape[0], device=device) if bias is None else bias.to(device).float()
    keys = keys.to(device).float()
    value_init = keys @ weight.T  # [r, d]  W k*
    rows = _context_rows(model, prepared, config, with_prefixes=config.value_prefixes)
    n_rows = len(rows.tokens)
    all_rows = torch.arange(n_rows, device=device)
    is_ctx = rows.request < n_req
    ctx_request = rows.request[is_ctx]
    target = torch.tensor([p.target for p in prepared], device=device)[ctx_request]
    counts = torch.bincount(ctx_request, minlength=n_req).float()
    owner = rows.request % n_req
    with torch.no_grad():
        _, cache = models.run_with_cache(model, rows.tokens, [models.resid_post_hook(layer)])
        base_logits = models.run_with_hooks(model, rows.tokens)[all_rows, rows.last_pos].float()
    resid = cache[models.resid_post_hook(layer)][all_rows, rows.subject_last].norm(dim=-1)  # [n]
    reference = torch.zeros(n_req, device=device).index_add(0, ctx_request, resid[is_ctx]) / counts  # [r]
    kl_base = base_logits[~is_ctx].log_softmax(-1)  # [r, v]
    unit = reference / weight.shape[0] ** 0.5  # [r] RMS per coordinate of the reference

    z = torch.zeros(n_req, weight.shape[0], device=device, requires_grad=True)
    optimiser = torch.optim.Adam([z], lr=config.lr)
    done = torch.zeros(n_req, dtype=torch.bool, device=device)
    steps = torch.zeros(n_req, dtype=torch.long, device=device)
    final_prob = torch.zeros(n_req, device=device)
    for step in range(config.steps):
        delta = z * unit[:, None]
        with models.hooks(model, [_delta_hook(layer, delta, all_rows, rows.subject_last, owner)]):
            logits = model(rows.tokens)[all_rows, rows.last_pos].float()
        log_probs = logits[is_ctx].log_softmax(-1).gather(1, target[:, None])[:, 0]  # [contexts]
        nll = torch.zeros(n_req, device=device).index_add(0, ctx_request, -log_probs) / counts
        mean_prob = torch.zeros(n_req, device=device).index_add(0, ctx_request, log_probs.detach().exp()) / counts
        final_prob = torch.where(done, final_prob, mean_prob)
        done = done | (mean_prob > config.stop_prob)
        if bool(done.all()) or step == config.steps - 1:
            break
        steps += (~done).long()
        kl_now = logits[~is_ctx].log_softmax(-1)
        kl_div = (kl_base.exp() * (kl_base - kl_now)).sum(-1)  # [r] KL(p0 || p_delta)
        decay = delta.pow(2).sum(-1) / reference.pow(2)
        loss = (nll + config.kl_factor * kl_div + config.weight_decay * decay).sum()
        optimiser.zero_grad()
        loss.backward()
        # a δ with no gradient at all can never reach the answer (nothing reads the subject after this layer)
        unreachable = ~done & (z.grad.abs().sum(-1) == 0) & (nll > 0)
        final_prob = torch.where(unreachable, mean_prob, final_prob)
        steps -= unreachable.long()
        done = done | unreachable
        if bool(done.all()):
            break
        frozen = z.detach()[done].clone()
        optimiser.step()
        with torch.no_grad():
            limit = config.clamp_norm_factor * reference
            norms = (z * unit[:, None]).norm(dim=-1)
            z.mul_(torch.where(norms > limit, limit / norms.clamp_min(1e-12), torch.ones_like(norms))[:, None])
            z[done] = frozen
    delta = (z * unit[:, None]).detach()
    return [
        RomeTarget(
            key=keys[i].cpu(),
            value=(value_init[i] + delta[i]).cpu(),
            delta_norm=float(delta[i].norm()),
            output_norm=float((value_init[i] + bias).norm()),
            reference_norm=float(reference[i]),
            steps=int(steps[i]),
            target_prob=float(final_prob[i]),
            n_contexts=int(counts[i]),
        )
        for i in range(n_req)
    ]


def rome_targets(
    model: Any, requests: Sequence[EditRequest | PreparedRequest], layer: int, config: RomeConfig | None = None
) -> list[RomeTarget]:
    """``(k*, v*)`` of every request at ``layer`` (keys and values computed in batches)."""
    config = config or RomeConfig()
    prepared = _prepare_all(model, requests)
    keys = compute_keys(model, prepared, layer, config)
    return compute_values(model, prepared, layer, keys, config)


def rome_update(
    weight: Float[Tensor, "d m"], key: Float[Tensor, m], value: Float[Tensor, d], inverse: Float[Tensor, "m m"]
) -> Float[Tensor, "d m"]:
    """``W + (v* − W k*) uᵀ / (uᵀ k*)`` with ``u = C⁻¹ k*``, computed in float64, returned in ``weight``'s dtype.

    Raises:
        EditError: when ``uᵀ k* = k*ᵀ C⁻¹ k*`` is not positive (a zero key).
    """
    w, k, v, c_inv = weight.double(), key.double().to(weight.device), value.double(), inverse.double()
    u = c_inv.to(weight.device) @ k
    denominator = u @ k
    if not bool(denominator > 0):
        raise EditError(f"k*ᵀ C⁻¹ k* = {float(denominator):.3g} is not positive: the key is zero or C is not positive")
    residual = v.to(weight.device) - w @ k
    return (w + torch.outer(residual, u) / denominator).to(weight.dtype)


def rome_edit(
    model: Any,
    request: EditRequest | PreparedRequest,
    layer: int,
    stats: KeyStatistics | None = None,
    config: RomeConfig | None = None,
    target: RomeTarget | None = None,
) -> EditResult:
    """Apply ROME for one request at MLP ``layer``, in place; returns a reversible :class:`EditResult`.

    Args:
        stats: ``C`` of this layer's keys (default: the identity fallback).
        target: a ``(k*, v*)`` already computed by :func:`rome_targets` (else computed here).

    Raises:
        EditError: a layer out of range, statistics of another layer, or a bad request.
    """
    check_layer(model, layer)
    config = config or RomeConfig()
    prepared = request if isinstance(request, PreparedRequest) else prepare_request(model, request)
    weight = models.mlp_out_weight(model, layer)
    if stats is None:
        stats = KeyStatistics.identity(layer, weight.shape[1])
    if stats.layer != layer:
        raise EditError(f"key statistics are for layer {stats.layer}, but the edit is at layer {layer}")
    if target is None:
        target = rome_targets(model, [prepared], layer, config)[0]
    name = next(n for n in models.mlp_parameters(model, layer, "out") if n.endswith("weight"))
    originals = snapshot(model, [name])
    new_weight = rome_update(weight, target.key, target.value, stats.inverse)
    models.set_mlp_out_weight(model, layer, new_weight)
    info = {
        "update_norm": float((new_weight - weight).norm()),
        "delta_norm": target.delta_norm,
        "output_norm": target.output_norm,
        "steps": target.steps,
        "target_prob": target.target_prob,
        "covariance": stats.source,
    }
    return EditResult(model=model, method="rome", layer=layer, originals=originals, info=info)
