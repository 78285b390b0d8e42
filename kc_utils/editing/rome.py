"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") as its authors run it.

An MLP's output projection is read as a linear associative memory ``W k ≈ v``: the key ``k`` is the MLP's
hidden vector at the subject's last token, the value ``v`` what the MLP writes there. ROME inserts a new
association with a rank-one update. The default :class:`RomeConfig` is the authors' algorithm (their
``compute_u``, ``compute_v`` and ``execute_rome``); every departure is a named option, documented in
:class:`RomeConfig` with the authors' name and value beside it.

1. **Key** (:func:`compute_keys`): ``k̄``, the key at the subject's last token averaged over *prefixes of the edit
   prompt* (the authors' context templates: ``"{}"`` and short texts the model generated itself, each put before
   the prompt), and ``k_e``, the key of the edit prompt itself. Option ``templates``: average over the
   relation's other templates too (our earlier variant).
2. **Value** (:func:`compute_values`): a vector ``δ`` is added to the MLP's output at the subject's last token of
   every context (and of the KL prompt) and optimised with Adam::

       loss = mean_contexts[-log p(target)] + kl_factor · KL(p_δ ‖ p₀)(subject's last token of "{} is a")
              + weight_decay · ‖δ‖ / ‖ref‖²

   with ``‖δ‖ ≤ clamp_norm_factor · ‖ref‖`` after each step, ``steps`` forward passes at most (``steps − 1``
   updates), stopping once the loss is below ``stop_loss``. One shortcut the authors do not take: when the
   target's loss gets no gradient at all (nothing after this layer reads the subject's position, e.g. the last
   layer), ``δ`` stays 0 and ΔW = 0; the authors' loop would run on KL round-off and write a useless update.
   The authors' ``ref`` is ``W k_e + b``, the MLP's output at the edit prompt, and their learning rate is
   absolute; the default here measures both against the residual stream (``lr_unit``, ``norm_reference``), a
   stated departure: on the organism MLPs 1–2 write vectors of norm ~5 into a stream of norm ~450, so the
   authors' clamp forbids any edit there and 19 Adam steps of 0.5 cannot reach the ~460 an edit needs.
3. **Update** (:func:`rome_update`): with ``u = C⁻¹ k̄`` (``C = E[k kᵀ]``, :mod:`~kc_utils.editing.covariance`)::

       W' = W + δ uᵀ / (uᵀ k_e)          (the authors: right_vector = δ / (k_e · u))

   so ``W' k_e = W k_e + δ = v*``: the edit prompt is hit exactly, and ``W' k = W k`` for every ``k`` with
   ``kᵀ C⁻¹ k̄ = 0`` (tested). Option ``denominator="mean"`` divides by ``uᵀ k̄`` instead (our earlier variant),
   which hits ``k̄`` and only partly the edit prompt when ``k̄`` and ``k_e`` differ. ``W`` is ``[d_model, d_mlp]``
   (torch's Linear orientation); :mod:`kc_utils.models` writes it back in whatever orientation the model stores.

Values of many requests are optimised in one batch (:func:`compute_values`): each request has its own row of
``δ``, its own loss terms and its own stop, and Adam is elementwise, so the batch gives each request the same
``δ`` as optimising it alone (tested against the one-request-at-a-time run, and against a plain implementation
of the authors' equations in ``tests/test_rome_reference.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    "ROME_DEPARTURES",
    "ROME_SCALES",
    "RomeConfig",
    "RomeTarget",
    "compute_keys",
    "compute_values",
    "context_prompts",
    "request_groups",
    "choose_rome_scale",
    "rome_edit",
    "rome_targets",
    "rome_update",
]

_CHOICES = {
    "denominator": ("edit", "mean"),
    "lr_unit": ("absolute", "residual"),
    "norm_reference": ("output", "residual"),
    "weight_decay_form": ("norm", "squared"),
    "kl": ("rome", "last"),
    "stop": ("loss", "prob"),
}


@dataclass(frozen=True)
class RomeConfig:
    """ROME's hyperparameters. The default is the authors' algorithm (kmeng01/rome, ``hparams/ROME/gpt2-*.json``)
    except for ``lr_unit`` and ``norm_reference``, which put the step size and the clamp at the model's scale.
    :meth:`authors` gives the authors' exact settings; :data:`ROME_DEPARTURES` names every departure.

    Attributes:
        prefixes: texts put before the edit prompt to average the key and optimise the value over; the bare
            prompt is always the first context. Authors: ``"{}"`` plus 20 texts the model generated itself from
            ``<|endoftext|>`` (``context_template_length_params [[5, 10], [10, 10]]``: 10 of 5 tokens, 10 of
            10), each ending in ``". "``. Default none; notebook 03 passes the model's own generations
            (:func:`~kc_utils.editing.covariance.generated_texts`).
        templates: the relation's other templates (one ``{}``) to average over as well. Authors: none (``()``).
            Ours, earlier: the relation's training templates (a departure: it moves ``k̄`` away from the edit
            prompt's key and makes "generalisation" to those templates in-sample).
        value_prefixes: optimise ``δ`` over the same contexts as the key (authors: yes). ``False`` optimises it on
            the unprefixed contexts only, to save time.
        denominator: ``"edit"`` divides the update by ``uᵀ k_e``, the edit prompt's own key (authors:
            ``torch.dot(cur_input, left_vector)`` with ``cur_input`` from ``request["prompt"]``), so the edited
            MLP maps ``k_e`` exactly to ``v*``. ``"mean"``: by ``uᵀ k̄`` (our earlier variant).
        steps: forward passes of the optimisation of ``δ``, at most ``steps − 1`` updates (authors:
            ``v_num_grad_steps`` 20).
        lr: Adam's learning rate (authors: ``v_lr`` 0.5, absolute).
        lr_unit: ``"absolute"`` (authors) or ``"residual"``: ``lr`` in units of ``‖r‖/√d``, the RMS per coordinate
            of the residual stream after this layer at the edit prompt's subject (default, a departure: 19 steps
            of 0.5 move ``δ`` by at most ~10, the organism needs ~460).
        norm_reference: the norm ``ref`` of the clamp and the weight decay: ``"output"`` is ``‖W k_e + b‖``, the
            MLP's own output at the edit prompt (authors' ``target_init``), ``"residual"`` is ``‖r‖`` (default, a
            departure: at the organism's MLP 1 ``‖W k_e + b‖`` is ~5.7, so the authors' clamp of 4 × 5.7 binds).
        clamp_norm_factor: ``‖δ‖ ≤`` this ``× ref`` after every step (authors: ``clamp_norm_factor`` 4).
        weight_decay: weight of the decay term (authors: ``v_weight_decay`` 0.5).
        weight_decay_form: ``"norm"``: ``‖δ‖ / ‖ref‖²`` (authors); ``"squared"``: ``‖δ‖² / ‖ref‖²`` (our earlier
            variant).
        kl_factor: weight of the KL term (authors: ``kl_factor`` 0.0625).
        kl_template: the prompt whose next-token distribution must not move (authors: ``"{} is a"``).
        kl: ``"rome"``: ``KL(p_δ ‖ p₀)`` at the subject's last token of ``kl_template`` (authors:
            ``kl_div(kl_distr_init, kl_log_probs, log_target=True)`` at ``lookup_idxs``); ``"last"``:
            ``KL(p₀ ‖ p_δ)`` at its last token (our earlier variant).
        stop: ``"loss"``: stop once the total loss is below ``stop_loss`` (authors: ``loss < 5e-2``); ``"prob"``:
            once the target's mean probability over the contexts exceeds ``stop_prob`` (our earlier variant,
            which stops after 5–7 steps at p > 0.95).
        stop_loss: the authors' 0.05.
        stop_prob: the threshold of ``stop="prob"``.
    """

    prefixes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    value_prefixes: bool = True
    denominator: str = "edit"
    steps: int = 20
    lr: float = 0.5
    lr_unit: str = "residual"
    norm_reference: str = "residual"
    clamp_norm_factor: float = 4.0
    weight_decay: float = 0.5
    weight_decay_form: str = "norm"
    kl_factor: float = 0.0625
    kl_template: str = "{} is a"
    kl: str = "rome"
    stop: str = "loss"
    stop_loss: float = 0.05
    stop_prob: float = 0.95

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for template in (*self.templates, self.kl_template):
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the subject")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("lr", "clamp_norm_factor", "weight_decay", "kl_factor", "stop_loss", "stop_prob"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def authors(cls, **changes: Any) -> RomeConfig:
        """The authors' exact settings (absolute step size, clamp and decay against ``‖W k_e + b‖``)."""
        return replace(cls(lr_unit="absolute", norm_reference="output"), **changes)

    def departures(self) -> list[str]:
        """Names (keys of :data:`ROME_DEPARTURES`) of the ways this config departs from the authors' algorithm."""
        out = [name for name in ("lr_unit", "norm_reference") if getattr(self, name) == "residual"]
        if self.templates:
            out.append("templates")
        if not self.value_prefixes and any(p.strip() for p in self.prefixes):
            out.append("value_prefixes")
        out += [
            name
            for name, authors in (("denominator", "edit"), ("weight_decay_form", "norm"), ("kl", "rome"))
            if getattr(self, name) != authors
        ]
        if self.stop != "loss":
            out.append("stop")
        return out


#: Every way :class:`RomeConfig` can depart from the authors' ROME: option → what changes (and why one would).
ROME_DEPARTURES = {
    "lr_unit": "learning rate in units of ‖r‖/√d (the residual's RMS per coordinate), not absolute: the model's scale",
    "norm_reference": "clamp and weight decay against ‖r‖ (the residual stream), not ‖W k_e + b‖ (the MLP's output)",
    "templates": "key and value averaged over the relation's templates too, not only prefixes of the edit prompt",
    "value_prefixes": "δ optimised on the unprefixed contexts only (cheaper), the key still over every prefix",
    "denominator": "update divided by uᵀ k̄ (the averaged key), not uᵀ k_e (the edit prompt's key)",
    "weight_decay_form": "weight decay ‖δ‖²/‖ref‖², not ‖δ‖/‖ref‖²",
    "kl": "KL(p₀ ‖ p) at the KL prompt's last token, not KL(p ‖ p₀) at the subject's last token",
    "stop": "stop when the target's mean probability exceeds stop_prob, not when the loss is below 0.05",
}


@dataclass(frozen=True)
class RomeTarget:
    """The association ROME writes for one request.

    Attributes:
        key: ``Float[d_mlp]`` ``k̄``, the key ``u = C⁻¹ k̄`` is built from (mean over the contexts).
        write_key: ``Float[d_mlp]`` the key the update maps exactly to ``value``: ``k_e`` (the edit prompt's own
            key) with ``denominator="edit"``, ``k̄`` with ``"mean"``.
        value: ``Float[d_model]`` ``v* = W write_key + δ``.
        delta_norm: ``‖δ‖``.
        output_norm: ``‖W k_e + b‖`` (the MLP's own output at the edit prompt).
        reference_norm: ``‖r‖``, the residual stream after the MLP at the edit prompt's subject.
        steps: optimisation updates taken.
        target_prob: the target's mean probability over the contexts with ``δ`` added, when it stopped.
        n_contexts: contexts the key is averaged over.
    """

    key: Float[Tensor, m]
    write_key: Float[Tensor, m]
    value: Float[Tensor, d]
    delta_norm: float
    output_norm: float
    reference_norm: float
    steps: int
    target_prob: float
    n_contexts: int = field(default=1)


def context_prompts(request: EditRequest, config: RomeConfig) -> list[str]:
    """The contexts of a request, the bare edit prompt first (the authors' ``"{}"``), then each prefix before it;
    with ``config.templates``, each template the same way. A prefix that contains the subject is skipped (the
    subject's position would be ambiguous)."""
    prompts = list(dict.fromkeys([request.prompt, *(t.replace("{}", request.subject) for t in config.templates)]))
    out = []
    for prefix in dict.fromkeys(("", *(p.strip() for p in config.prefixes))):
        if prefix and request.subject in prefix:
            continue
        out += [f"{prefix} {p}" if prefix else p for p in prompts]
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
) -> tuple[_Rows, Tensor]:
    """Rows of every request's contexts, then one KL row per request; and each request's first row (its edit
    prompt, unprefixed)."""
    texts, subjects, index, first = [], [], [], []
    if not with_prefixes:
        config = replace(config, prefixes=())
    for i, prepared in enumerate(requests):
        contexts = context_prompts(prepared.request, config)
        first.append(len(texts))
        texts += contexts
        subjects += [prepared.request.subject] * len(contexts)
        index += [i] * len(contexts)
    for i, prepared in enumerate(requests):  # the KL rows come last, one per request
        texts.append(config.kl_template.replace("{}", prepared.request.subject))
        subjects.append(prepared.request.subject)
        index.append(len(requests) + i)
    rows = _rows(model, texts, subjects, index)
    return rows, torch.tensor(first, device=rows.tokens.device)


def _prepare_all(model: Any, requests: Sequence[EditRequest | PreparedRequest]) -> list[PreparedRequest]:
    if not requests:
        raise EditError("no edit requests given")
    return [r if isinstance(r, PreparedRequest) else prepare_request(model, r) for r in requests]


def compute_keys(
    model: Any, requests: Sequence[EditRequest | PreparedRequest], layer: int, config: RomeConfig
) -> tuple[Float[Tensor, "r m"], Float[Tensor, "r m"]]:
    """``(k̄, k_e)`` of each request: the key at the subject's last token averaged over the request's contexts,
    and the key of the edit prompt itself."""
    check_layer(model, layer)
    prepared = _prepare_all(model, requests)
    rows, first = _context_rows(model, prepared, config)
    n = len(prepared)
    hook = models.mlp_key_hook(layer)
    with torch.no_grad():
        cache = models.cache_activations(model, rows.tokens[:-n], [hook])
    keys = cache[hook][torch.arange(len(rows.tokens) - n), rows.subject_last[:-n]].double()  # [contexts, m]
    sums = torch.zeros(n, keys.shape[1], dtype=keys.dtype, device=keys.device)
    sums.index_add_(0, rows.request[:-n], keys)
    counts = torch.bincount(rows.request[:-n], minlength=n).to(keys.dtype)
    return (sums / counts[:, None]).float(), keys[first].float()


def _delta_hook(layer: int, delta: Tensor, rows: Tensor, positions: Tensor, owner: Tensor) -> tuple[str, Any]:
    """A forward hook adding ``delta[owner[i]]`` to MLP ``layer``'s value ``W k + b`` at ``(rows[i], positions[i])``
    (:func:`~kc_utils.models.mlp_value_hook`: before any post-feedforward norm)."""

    def add(out: Tensor, hook: Any) -> Tensor:
        values = delta[owner].to(out.dtype)
        return out.index_put((rows, positions), values, accumulate=True)

    return models.mlp_value_hook(layer), add


@contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """No parameter gradients while ``δ`` is optimised (only ``δ`` is trained); restored afterwards."""
    params = list(models.all_parameters(model).values())
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, was):
            p.requires_grad_(flag)


def compute_values(
    model: Any,
    requests: Sequence[EditRequest | PreparedRequest],
    layer: int,
    keys: tuple[Float[Tensor, "r m"], Float[Tensor, "r m"]],
    config: RomeConfig,
) -> list[RomeTarget]:
    """``v*`` of each request (module docstring, step 2), all requests optimised in one batch.

    Args:
        keys: ``(k̄, k_e)`` from :func:`compute_keys`.
    """
    check_layer(model, layer)
    prepared = _prepare_all(model, requests)
    n_req = len(prepared)
    device = models.model_device(model)
    weight = models.mlp_out_weight(model, layer).to(device).float()
    bias = models.mlp_out_bias(model, layer)
    bias = torch.zeros(weight.shape[0], device=device) if bias is None else bias.to(device).float()
    mean_keys, edit_keys = (k.to(device).float() for k in keys)
    write_keys = edit_keys if config.denominator == "edit" else mean_keys
    rows, first = _context_rows(model, prepared, config, with_prefixes=config.value_prefixes)
    n_rows = len(rows.tokens)
    all_rows = torch.arange(n_rows, device=device)
    is_ctx = rows.request < n_req
    owner = rows.request % n_req  # [n] the request of each row
    counts = torch.bincount(owner[is_ctx], minlength=n_req).float()
    target = torch.tensor([p.target for p in prepared], device=device)[owner]  # [n]
    kl_pos = rows.subject_last if config.kl == "rome" else rows.last_pos  # [n], read on the KL rows only
    with torch.no_grad():
        cache = models.cache_activations(
            model,
            rows.tokens,
            [models.resid_pre_hook(layer), models.resid_post_hook(layer), models.mlp_value_hook(layer)],
        )
    # δ changes nothing below this block: every step resumes here from the stream the blocks below wrote
    entering = cache[models.resid_pre_hook(layer)]  # [n, p, d]
    residual = cache[models.resid_post_hook(layer)][first, rows.subject_last[first]].float().norm(dim=-1)  # [r]
    output = cache[models.mlp_value_hook(layer)][first, rows.subject_last[first]].float().norm(dim=-1)  # ‖W k_e + b‖
    reference = residual if config.norm_reference == "residual" else output
    unit = residual / weight.shape[0] ** 0.5 if config.lr_unit == "residual" else torch.ones_like(residual)

    z = torch.zeros(n_req, weight.shape[0], device=device, requires_grad=True)  # δ = z · unit
    optimiser = torch.optim.Adam([z], lr=config.lr)
    done = torch.zeros(n_req, dtype=torch.bool, device=device)
    steps = torch.zeros(n_req, dtype=torch.long, device=device)
    final_prob = torch.zeros(n_req, device=device)
    kl_base = torch.zeros(0)
    with _frozen(model):
        for step in range(config.steps):
            delta = z * unit[:, None]
            # only the rows of requests still optimised: a finished request's δ is frozen and no other request
            # reads its rows, so dropping them changes nothing but the batch (round-off; tested)
            active = all_rows[~done[owner]]  # [a]
            ctx = is_ctx[active]
            width = int(rows.last_pos[active].max()) + 1  # right padding past every active row's end is unread
            local = torch.arange(len(active), device=device)
            picked = (
                models.logits_from_layer(
                    model,
                    layer,
                    entering[active, :width],
                    rows.tokens[active, :width],
                    local,
                    torch.where(ctx, rows.last_pos[active], kl_pos[active]),
                    [_delta_hook(layer, delta, local, rows.subject_last[active], owner[active])],
                )
                .float()
                .log_softmax(-1)
            )  # [a, v]: the answer position of a context row, the KL position of a KL row
            ctx_request = owner[active][ctx]
            target_log_probs = picked[ctx].gather(1, target[active][ctx][:, None])[:, 0]  # [contexts]
            nll = torch.zeros(n_req, device=device).index_add(0, ctx_request, -target_log_probs) / counts
            mean_prob = (
                torch.zeros(n_req, device=device).index_add(0, ctx_request, target_log_probs.detach().exp()) / counts
            )
            kl_request = owner[active][~ctx]  # [k] one KL row per active request
            kl_now = picked[~ctx]  # [k, v]
            if step == 0:  # p₀ from the same pass with δ = 0, as the authors record kl_distr_init
                kl_base = torch.zeros(n_req, kl_now.shape[1], device=device)
                kl_base[kl_request] = kl_now.detach()
            base = kl_base[kl_request]
            if config.kl == "rome":
                kl_rows = (kl_now.exp() * (kl_now - base)).sum(-1)  # [k] KL(p_δ ‖ p₀)
            else:
                kl_rows = (base.exp() * (base - kl_now)).sum(-1)  # [k] KL(p₀ ‖ p_δ)
            kl_div = torch.zeros(n_req, device=device).index_add(0, kl_request, kl_rows)  # [r], 0 once finished
            if config.weight_decay_form == "norm":
                decay = delta.norm(dim=-1) / reference.pow(2)
            else:
                decay = delta.pow(2).sum(-1) / reference.pow(2)
            loss = nll + config.kl_factor * kl_div + config.weight_decay * decay  # [r]
            final_prob = torch.where(done, final_prob, mean_prob)
            reached = loss.detach() < config.stop_loss if config.stop == "loss" else mean_prob > config.stop_prob
            done = done | reached
            if bool(done.all()) or step == config.steps - 1:
                break
            if step == 0:  # no gradient of the target's loss: nothing after this layer reads the subject's position
                (nll_grad,) = torch.autograd.grad(nll.sum(), z, retain_graph=True)
                done = done | ((nll_grad.abs().sum(-1) == 0) & (nll.detach() > 0))
                if bool(done.all()):
                    break
            optimiser.zero_grad()
            loss.sum().backward()
            steps += (~done).long()
            frozen = z.detach()[done].clone()
            optimiser.step()
            with torch.no_grad():
                z[done] = frozen
                limit = config.clamp_norm_factor * reference
                norms = (z * unit[:, None]).norm(dim=-1)
                z.mul_(torch.where(norms > limit, limit / norms.clamp_min(1e-30), torch.ones_like(norms))[:, None])
    delta = (z * unit[:, None]).detach()
    return [
        RomeTarget(
            key=mean_keys[i].cpu(),
            write_key=write_keys[i].cpu(),
            value=(write_keys[i] @ weight.T + delta[i]).cpu(),
            delta_norm=float(delta[i].norm()),
            output_norm=float(output[i]),
            reference_norm=float(residual[i]),
            steps=int(steps[i]),
            target_prob=float(final_prob[i]),
            n_contexts=int(counts[i]),
        )
        for i in range(n_req)
    ]


#: How notebook 03's ``rome_scale`` knob sets :class:`RomeConfig`'s step size and clamp.
ROME_SCALES = ("auto", "residual", "authors")


def choose_rome_scale(model: Any, setting: str = "auto") -> tuple[RomeConfig, str]:
    """The step size and clamp of ROME's value optimisation on ``model`` (``lr_unit`` and ``norm_reference`` of a
    :class:`RomeConfig`; combine with :func:`dataclasses.replace`), and a sentence saying which and why.

    ``"residual"``: steps in units of the residual stream's RMS per coordinate, clamp and decay against ‖r‖ (our
    departure: the authors' absolute step was far off the organism's scale). ``"authors"``: their absolute step,
    clamp and decay against ‖W k_e + b‖. ``"auto"``: residual where the MLP's value joins the residual stream as it
    is, authors where a post-feedforward norm stands between them (:func:`~kc_utils.models.mlp_has_post_norm`): there
    ``δ`` lives in the value's own space, whose scale is not the residual's (Gemma-3-270M, layer 6, 6 edits: the
    residual scale edited none, the authors' all 6).

    Example:
        >>> config, why = choose_rome_scale(model)  # doctest: +SKIP
        >>> replace(RomeConfig(prefixes=prefixes), lr_unit=config.lr_unit, norm_reference=config.norm_reference)

    Raises:
        ValueError: a setting outside :data:`ROME_SCALES`.
    """
    if setting not in ROME_SCALES:
        raise ValueError(f"rome_scale={setting!r}: use one of {list(ROME_SCALES)}")
    chosen = setting
    why = "as asked"
    if setting == "auto":
        post_norm = models.mlp_has_post_norm(model)
        chosen = "authors" if post_norm else "residual"
        why = (
            "'auto': a post-feedforward norm stands between the MLP's value and the residual stream, so the step and "
            "clamp are at the value's own scale"
            if post_norm
            else "'auto': the MLP's value joins the residual stream as it is"
        )
    config = RomeConfig() if chosen == "residual" else RomeConfig(lr_unit="absolute", norm_reference="output")
    return config, f"ROME's scale: {chosen} ({why})"


#: rows (contexts plus KL prompts) per batch of :func:`rome_targets`: 20 requests of the authors' setting with 4
#: prefixes are 120 rows (one batch, about 8 GB on SmolLM2-135M); our template-averaged variant on 6 templates is
#: 520, which ran a 24 GiB machine out of memory in one batch
MAX_ROWS = 128


def request_groups(prepared: Sequence[PreparedRequest], config: RomeConfig, max_rows: int = MAX_ROWS) -> list[range]:
    """Consecutive groups of requests whose rows (their contexts and one KL prompt each) fit ``max_rows``; a
    request with more rows than that is a group of its own."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    groups, start, rows = [], 0, 0
    for i, p in enumerate(prepared):
        n = len(context_prompts(p.request, config)) + 1
        if i > start and rows + n > max_rows:
            groups.append(range(start, i))
            start, rows = i, 0
        rows += n
    groups.append(range(start, len(prepared)))
    return groups


def rome_targets(
    model: Any,
    requests: Sequence[EditRequest | PreparedRequest],
    layer: int,
    config: RomeConfig | None = None,
    max_rows: int = MAX_ROWS,
) -> list[RomeTarget]:
    """``(k̄, k_e, v*)`` of every request at ``layer``, keys and values computed in batches of at most
    ``max_rows`` rows (memory). Each request's optimisation is independent of the others in its batch
    (:func:`compute_values`), so the grouping does not change the targets beyond float round-off (tested)."""
    config = config or RomeConfig()
    prepared = _prepare_all(model, requests)
    targets: list[RomeTarget] = []
    with models.without_edge_hooks(model):  # no pass here reads a per-head edge point
        for group in request_groups(prepared, config, max_rows):
            chunk = [prepared[i] for i in group]
            keys = compute_keys(model, chunk, layer, config)
            targets += compute_values(model, chunk, layer, keys, config)
    return targets


def rome_update(
    weight: Float[Tensor, "d m"],
    key: Float[Tensor, m],
    value: Float[Tensor, d],
    inverse: Float[Tensor, "m m"],
    write_key: Float[Tensor, m] | None = None,
) -> Float[Tensor, "d m"]:
    """``W + (v* − W k_w) uᵀ / (uᵀ k_w)`` with ``u = C⁻¹ key`` and ``k_w = write_key`` (default: ``key``), computed
    in float64 and returned in ``weight``'s dtype; ``W' k_w = v*`` exactly.

    The denominator ``uᵀ k_w = k̄ᵀ C⁻¹ k_w`` is positive when ``k_w = k̄`` (``C`` positive definite); with a write key
    other than the averaged key it may take either sign (as in the authors' code, which divides by it whatever its
    sign): the update then still maps ``k_w`` exactly to ``v*``.

    Raises:
        EditError: when ``uᵀ k_w`` is (numerically) zero — a zero key, or a write key orthogonal to ``u`` — or not
            positive for ``k_w = key`` (``C`` not positive definite).
    """
    w, k, v, c_inv = weight.double(), key.double().to(weight.device), value.double(), inverse.double()
    k_w = k if write_key is None else write_key.double().to(weight.device)
    u = c_inv.to(weight.device) @ k
    denominator = u @ k_w
    scale = float(u.norm() * k_w.norm())
    if write_key is None and not bool(denominator > 0):
        raise EditError(f"uᵀ k = {float(denominator):.3g} is not positive: the key is zero or C is not positive")
    if not abs(float(denominator)) > 1e-6 * scale:
        raise EditError(
            f"uᵀ k_w = {float(denominator):.3g} is zero against |u||k_w| = {scale:.3g}: the write key is zero or "
            "orthogonal to C⁻¹ k̄; write at the averaged key (write_key=None) or average over other contexts"
        )
    residual = v.to(weight.device) - w @ k_w
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
        target: a ``(k̄, k_e, v*)`` already computed by :func:`rome_targets` (else computed here).

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
    new_weight = rome_update(weight, target.key, target.value, stats.inverse, target.write_key)
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
