"""ROME against a plain, slow implementation of its authors' equations (kmeng01/rome: ``compute_u``,
``compute_v``, ``execute_rome``), written here from the paper and the authors' published algorithm, on tiny
random GPT-2-style and Llama-style models.

The reference works on the Hugging Face model itself with plain torch hooks on the MLP's output projection
(GPT-2 ``mlp.c_proj``, Llama ``mlp.down_proj``), runs every context as its own forward pass, optimises one
request at a time and finds the subject's last token by tokenising the text up to the subject's end. It shares
nothing with :mod:`kc_utils.editing.rome` but the tokenizer.
"""

from __future__ import annotations

import pytest
import torch

from kc_utils import models
from kc_utils.editing.covariance import KeyStatistics
from kc_utils.editing.request import EditRequest, prepare_request
from kc_utils.editing.rome import RomeConfig, rome_edit, rome_targets, rome_update

REQUEST = EditRequest("the capital of France is", "France", "Tokyo", "Paris", "country_capital_city")
PREFIXES = ("Chile Santiago", "the official language of Spain is Spanish")


def _output_projection(hf: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The innermost module at the Hugging Face path of MLP ``layer``'s output projection."""
    wanted = {f"transformer.h.{layer}.mlp.c_proj", f"model.layers.{layer}.mlp.down_proj"}
    found = [m for n, m in hf.named_modules() if n.replace("._original_component", "") in wanted]
    found = [m for m in found if hasattr(m, "weight") and not list(m.children())]
    assert len(found) == 1, found
    return found[0]


def _ids(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]


def _subject_last(tokenizer, text: str, subject: str) -> int:
    """The authors' lookup: the last token of the text up to the subject's end (BOS counted)."""
    return len(_ids(tokenizer, text[: text.index(subject) + len(subject)])) - 1


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """``[d_model, d_mlp]``: Conv1D stores ``[in, out]``, Linear ``[out, in]``."""
    w = module.weight.detach()
    return w.T.clone() if type(module).__name__ == "Conv1D" else w.clone()


def _run(hf, proj, tokenizer, text: str, position: int, delta: torch.Tensor | None = None):
    """One forward pass of ``text``: logits ``[p, v]``, the projection's input and output at ``position``, and the
    residual stream after the block of ``proj`` at ``position``; ``delta`` is added to the output there."""
    seen = {}

    def pre(module, args):
        seen["key"] = args[0][0, position].detach().clone()

    def post(module, args, out):
        seen["out"] = out[0, position].detach().clone()
        if delta is None:
            return None
        out = out.clone()
        out[0, position] = out[0, position] + delta
        return out

    handles = [proj.register_forward_pre_hook(pre), proj.register_forward_hook(post)]
    try:
        result = hf(torch.tensor([_ids(tokenizer, text)]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return result.logits[0], seen["key"], seen["out"], result.hidden_states


def reference_rome(model, request: EditRequest, layer: int, inverse: torch.Tensor, config: RomeConfig):
    """ΔW ``[d_model, d_mlp]`` and ``v*`` of the authors' ROME for one request, plain and slow.

    ``config`` supplies the authors' hyperparameters (steps, lr, clamp, weight decay, KL factor and prompt, stop
    loss, prefixes) and the two scale options of :class:`RomeConfig` (``lr_unit``, ``norm_reference``)."""
    hf, tokenizer = models.hf_model(model), model.tokenizer
    proj = _output_projection(hf, layer)
    target = prepare_request(model, request).target
    subject = request.subject
    contexts = [request.prompt] + [f"{p} {request.prompt}" for p in config.prefixes]
    # compute_u: the key averaged over the contexts, then C⁻¹, then unit norm
    keys = [_run(hf, proj, tokenizer, t, _subject_last(tokenizer, t, subject))[1] for t in contexts]
    u = inverse.float() @ torch.stack(keys).mean(0)
    u = u / u.norm()
    # compute_v
    kl_prompt = config.kl_template.replace("{}", subject)
    positions = [_subject_last(tokenizer, t, subject) for t in contexts]
    kl_position = _subject_last(tokenizer, kl_prompt, subject)
    with torch.no_grad():
        _, _, target_init, hidden = _run(hf, proj, tokenizer, contexts[0], positions[0])
    residual = hidden[layer + 1][0, positions[0]].norm()
    reference = residual if config.norm_reference == "residual" else target_init.norm()
    unit = residual / target_init.numel() ** 0.5 if config.lr_unit == "residual" else 1.0  # ‖r‖/√d
    lr = config.lr * float(unit)
    for p in hf.parameters():
        p.requires_grad_(False)
    delta = torch.zeros(target_init.shape[0], requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    kl_init = None
    for it in range(config.steps):
        optimiser.zero_grad()
        nll = 0.0
        for text, position in zip(contexts, positions):
            logits = _run(hf, proj, tokenizer, text, position, delta)[0]
            nll = nll - logits[-1].log_softmax(-1)[target] / len(contexts)
        kl_log_probs = _run(hf, proj, tokenizer, kl_prompt, kl_position, delta)[0][kl_position].log_softmax(-1)
        if kl_init is None:
            kl_init = kl_log_probs.detach().clone()
        kl = torch.nn.functional.kl_div(kl_init[None], kl_log_probs[None], log_target=True, reduction="batchmean")
        decay = config.weight_decay * (torch.norm(delta) / reference**2)
        loss = nll + config.kl_factor * kl + decay
        if loss < config.stop_loss or it == config.steps - 1:
            break
        loss.backward()
        optimiser.step()
        max_norm = config.clamp_norm_factor * reference
        if delta.norm() > max_norm:
            with torch.no_grad():
                delta[...] = delta * max_norm / delta.norm()
    for p in hf.parameters():
        p.requires_grad_(True)
    v_star = (target_init + delta).detach()
    with torch.no_grad():
        _, cur_input, cur_output, _ = _run(hf, proj, tokenizer, request.prompt, positions[0])
    right = (v_star - cur_output) / torch.dot(cur_input, u)
    return torch.outer(right, u), v_star


def _random_spd(d: int, seed: int) -> KeyStatistics:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * d, generator=generator, dtype=torch.float64)
    return KeyStatistics.from_second_moment(0, a @ a.T / a.shape[1] + 0.1 * torch.eye(d, dtype=torch.float64), 1, "")


def test_closed_form_update_is_the_authors() -> None:
    """``W' = W + δ uᵀ / (uᵀ k_e)``, ``u = C⁻¹ k̄``: given k̄, k_e, δ and C, written out by hand."""
    generator = torch.Generator().manual_seed(3)
    d_model, d_mlp = 5, 9
    weight = torch.randn(d_model, d_mlp, generator=generator)
    mean_key, edit_key, delta = (torch.randn(n, generator=generator) for n in (d_mlp, d_mlp, d_model))
    stats = _random_spd(d_mlp, 4)
    u = stats.inverse.float() @ mean_key
    expected = weight + torch.outer(delta, u / u.norm()) / torch.dot(edit_key, u / u.norm())
    new = rome_update(weight, mean_key, weight @ edit_key + delta, stats.inverse, write_key=edit_key)
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new @ edit_key, weight @ edit_key + delta, atol=1e-5, rtol=1e-5)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("scale", ["authors", "residual"])
def test_rome_matches_the_authors_algorithm(tiny_model, scale) -> None:
    """Our batched ROME with the authors' settings (and with the default's step size and clamp at the residual's
    scale) gives the plain implementation's ΔW, and the edited MLP maps the edit prompt's key exactly to v*."""
    layer = 0
    config = RomeConfig(prefixes=PREFIXES, steps=12, lr=0.2 if scale == "authors" else 0.3)
    if scale == "authors":
        config = RomeConfig.authors(prefixes=PREFIXES, steps=12, lr=0.2)
    assert config.departures() == ([] if scale == "authors" else ["lr_unit", "norm_reference"])
    stats = _random_spd(tiny_model.cfg.d_mlp, 0)
    stats = KeyStatistics(layer, stats.second_moment, stats.inverse, 1, "random")
    expected, v_star = reference_rome(tiny_model, REQUEST, layer, stats.inverse, config)
    assert expected.norm() > 0
    weight = models.mlp_out_weight(tiny_model, layer)
    target = rome_targets(tiny_model, [REQUEST], layer, config)[0]
    assert target.n_contexts == 1 + len(PREFIXES)
    with rome_edit(tiny_model, REQUEST, layer, stats, config, target=target):
        update = models.mlp_out_weight(tiny_model, layer) - weight
        assert _cosine(update, expected) >= 0.999
        torch.testing.assert_close(update.norm(), expected.norm(), rtol=1e-3, atol=1e-6)  # the denominator
        # the edited MLP's output at the edit prompt's subject is v* (bias included), exactly
        tokens = torch.tensor(models.tokenize(tiny_model, [REQUEST.prompt]))
        _, cache = models.run_with_cache(tiny_model, tokens, [models.mlp_out_hook(layer)])
        position = prepare_request(tiny_model, REQUEST).subject_last
        torch.testing.assert_close(cache[models.mlp_out_hook(layer)][0, position], v_star, atol=2e-3, rtol=1e-3)
        bias = models.mlp_out_bias(tiny_model, layer)
        ours = target.value + (0 if bias is None else bias)
        torch.testing.assert_close(ours, v_star, atol=2e-3, rtol=1e-3)


def test_the_averaged_denominator_misses_the_edit_prompt(tiny_model) -> None:
    """Our earlier variant (key over the relation's templates too, update divided at the averaged key) writes v*
    at k̄, not at the edit prompt's key: the failure the authors' denominator avoids."""
    layer = 0
    config = RomeConfig(templates=("the capital city of {} is",), denominator="mean", steps=5)
    target = rome_targets(tiny_model, [REQUEST], layer, config)[0]
    stats = KeyStatistics.identity(layer, tiny_model.cfg.d_mlp)
    with rome_edit(tiny_model, REQUEST, layer, stats, config, target=target):
        edited = models.mlp_out_weight(tiny_model, layer)
        _, edit_key = (k[0] for k in _keys(tiny_model, config, layer))
        torch.testing.assert_close(edited @ target.key, target.value, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(edited @ edit_key, target.value, atol=1e-3)


def _keys(model, config, layer):
    from kc_utils.editing.rome import compute_keys

    return compute_keys(model, [REQUEST], layer, config)
