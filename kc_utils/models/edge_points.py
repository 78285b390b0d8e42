"""Edge points: how each family's bridge serves the logical hook names of :mod:`kc_utils.models.core`.

The edge engine speaks of four things per block — each head's write (``blocks.L.attn.hook_result``), the residual
stream each query/key/value head reads (``blocks.L.hook_{q,k,v}_input``), the stream MLP ``L`` reads
(``blocks.L.hook_mlp_in``) and MLP ``L``'s write (``blocks.L.hook_mlp_out``). TransformerLens 4's bridge serves all
four natively for most families. For the others this module routes each logical name to hook points the bridge does
fire and computes the rest, so that a hook on a logical name reads — and may replace — exactly what the name says:

1. **Post-norms** (Gemma 2 and 3, OLMo 2: ``ln1_post`` normalises the attention output before the residual add).
   The norm of a sum is not the sum of norms, but with the scale of its own run it is:
   ``RMSNorm(Σ_h o_h) = Σ_h g ⊙ o_h / rms(Σ_h o_h)``. A head's write is defined as its share under the scale of the
   run it comes from, ``g ⊙ o_h / rms(Σ_h o_h)``: the shares add up to what the block adds, so the full circuit is
   the model and the empty circuit the corrupt run by construction. The price: a head's write depends on the other
   heads of its layer through the shared scale, much as a head's pattern depends on all its keys. The hook on
   ``attn.hook_result`` sees the shares; if it returns other tensors, their sum replaces the post-norm's output
   (a hook that only reads leaves the model's own computation alone, so the decomposition check compares the
   shares with what the norm really wrote). An attention
   output bias inside a post-norm has no exact split (its share ``g ⊙ b / rms`` depends on the input), so such a
   model is refused (:func:`plan_routes`). The MLP's post-norm needs nothing: ``hook_mlp_out`` is already the
   normalised write, one node.
2. **Per-head results the bridge does not split** (GPT-J, GPT-Neo, OPT: plain attention bridges). A head's write is
   ``z_h @ W_O[h]`` from ``attn.hook_z`` and the output projection; results a hook returns, summed with ``b_O``,
   replace the projection's output.
3. **Per-head q/k/v inputs the bridge does not split** (the same families). Each head's copy of the residual stream
   (``[b, p, heads, d]``, as the bridge's own split) goes through the block's first norm and that head's slice of
   the projection; the result replaces the projection's output ``attn.hook_{q,k,v}``.
4. **The MLP input of a one-norm parallel block** (GPT-J, Phi-2, Falcon, Cohere: attention and MLP read the same
   ``ln1(x)``). The MLP's receiver reads the block's input ``x``; its own copy goes through ``ln1`` into the MLP,
   so patching it leaves the attention's input alone.
5. **Query/key norms across heads** (OLMo 2, OLMoE: ``q_norm``/``k_norm`` normalise all heads' projections together).
   When heads read different inputs, the bridge would normalise head ``h``'s query with a scale that mixes the
   other heads' inputs. Here head ``h``'s query is what the model computes when the residual stream is head ``h``'s
   own input: all heads' projections of that input, normalised together, then head ``h``'s slice. Each head then
   reads its own input alone (tested on every exact family).

Every route is checked at load (:mod:`kc_utils.models.decomposition`): the logits through routed hooks that
return copies of what they read equal the model's own, and the residual stream is the sum of the node outputs.

Example:
    >>> from kc_utils.models import load_model, run_with_cache, head_result_hook
    >>> model = load_model("kc-organism")                 # doctest: +SKIP
    >>> routes = edge_routes(model)                       # doctest: +SKIP
    >>> routes.describe()                                 # doctest: +SKIP
    'native: per-head results, q/k/v inputs and MLP inputs come from the bridge'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kc_utils.models.errors import UnsupportedFamilyError

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]

#: Attribute of a booted model holding its :class:`EdgeRoutes` (set by :func:`plan_routes`).
ROUTES_ATTRIBUTE = "kc_edge_routes"

_LOGICAL = re.compile(r"^blocks\.(\d+)\.(attn\.hook_result|hook_([qkv])_input|hook_mlp_in)$")


@dataclass(frozen=True)
class PostNorm:
    """An RMS norm on a block's attention output: ``y = gain ⊙ x / sqrt(mean(x²) + eps)``.

    Attributes:
        gain: ``[d_model]`` the effective gain (Gemma's ``1 + weight``, OLMo 2's ``weight``), read off the module.
        eps: the norm's epsilon.
    """

    gain: torch.Tensor
    eps: float

    def shares(self, results: torch.Tensor) -> torch.Tensor:
        """Each head's share of the normalised sum: ``[b, p, h, d]`` → ``[b, p, h, d]`` (computed in float32)."""
        total = results.float().sum(-2)
        inverse = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + self.eps)
        return (results.float() * (self.gain.float() * inverse)[..., None, :]).to(results.dtype)


@dataclass
class EdgeRoutes:
    """Which logical edge points of a booted model are routed, per layer (:func:`plan_routes` fills it).

    Attributes:
        family: the checkpoint's ``model_type`` (``"gemma2"``), for messages.
        post_norm: layer → its attention post-norm (heads write shares, item 1 of the module docstring).
        results_from_z: layers whose head results come from ``hook_z`` and ``W_O`` (item 2).
        qkv_from_projections: layers whose q/k/v inputs are split here (item 3).
        mlp_reads_ln1: layers whose MLP input is the block's input through ``ln1`` (item 4).
        shared_qk_norm: layer → ``{"q", "k"}``: query/key norms that span every head of the layer (item 5).
        pre_norm_heads: layers whose attention reads its input through ``ln1`` (used by item 5).
    """

    family: str
    post_norm: dict[int, PostNorm] = field(default_factory=dict)
    results_from_z: set[int] = field(default_factory=set)
    qkv_from_projections: set[int] = field(default_factory=set)
    mlp_reads_ln1: set[int] = field(default_factory=set)
    shared_qk_norm: dict[int, set[str]] = field(default_factory=dict)
    pre_norm_heads: set[int] = field(default_factory=set)

    @property
    def native(self) -> bool:
        """Whether the bridge serves every logical point itself."""
        return not (
            self.post_norm
            or self.results_from_z
            or self.qkv_from_projections
            or self.mlp_reads_ln1
            or self.shared_qk_norm
        )

    def describe(self) -> str:
        """One line saying what is routed (for the family matrix and messages)."""
        if self.native:
            return "native: per-head results, q/k/v inputs and MLP inputs come from the bridge"
        parts = []
        if self.post_norm:
            parts.append("head writes are shares of the attention post-norm")
        if self.results_from_z:
            parts.append("head results computed from z and W_O")
        if self.qkv_from_projections:
            parts.append("q/k/v inputs split per head at the projections")
        if self.mlp_reads_ln1:
            parts.append("the MLP reads the block input through its own copy of ln1")
        if self.shared_qk_norm:
            parts.append("query/key norms across heads applied to each head's own input")
        return "; ".join(parts)

    def routes(self, layer: int, point: str) -> bool:
        """Whether ``point`` (``"result"``, ``"q"``/``"k"``/``"v"``, ``"mlp_in"``) of ``layer`` is routed."""
        if point == "result":
            return layer in self.post_norm or layer in self.results_from_z
        if point in ("q", "k", "v"):
            return layer in self.qkv_from_projections
        return layer in self.mlp_reads_ln1


def edge_routes(model: Any) -> EdgeRoutes | None:
    """The :class:`EdgeRoutes` of a model configured by :func:`kc_utils.models.configure_for_patching`."""
    return getattr(model, ROUTES_ATTRIBUTE, None)


# ----------------------------------------------------------------------------- routing hooks
def _chain(fns: Sequence[HookFn], value: torch.Tensor, hook: Any) -> torch.Tensor:
    """Apply hooks in order, each to what the one before returned (``None``: unchanged)."""
    for fn in fns:
        out = fn(value, hook)
        if out is not None:
            value = out
    return value


def route(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]) -> list[tuple[str, HookFn]]:
    """Rewrite logical forward hooks into the bridge's own hook points (unrouted names pass through unchanged).

    Hooks on one logical name are chained in the order given, so a later one sees what an earlier one returned.
    """
    routes = edge_routes(model)
    if routes is None or routes.native:
        return list(fwd_hooks)
    passed: list[tuple[str, HookFn]] = []
    grouped: dict[tuple[int, str], list[HookFn]] = {}
    for name, fn in fwd_hooks:
        match = _LOGICAL.match(name)
        if match is None:
            passed.append((name, fn))
            continue
        layer = int(match.group(1))
        point = match.group(3) or ("result" if match.group(2) == "attn.hook_result" else "mlp_in")
        if routes.routes(layer, point):
            grouped.setdefault((layer, point), []).append(fn)
        else:
            passed.append((name, fn))
    for layer, letters in routes.shared_qk_norm.items():
        for letter in sorted(letters):
            if any(name == f"blocks.{layer}.hook_{letter}_input" for name, _ in fwd_hooks):
                passed += _shared_norm_hooks(model, routes, layer, letter)
    for (layer, point), fns in grouped.items():
        if point == "result":
            passed += _result_hooks(model, routes, layer, fns)
        elif point == "mlp_in":
            passed += _mlp_in_hooks(model, layer, fns)
        else:
            passed += _qkv_hooks(model, layer, point, fns)
    return passed


def _per_head_weight(linear: torch.nn.Module, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``Linear`` projection's weight as ``[n, d_head, d_model]`` and its bias as ``[n, d_head]``."""
    weight = linear.weight
    d_out = weight.shape[0]
    if d_out % n:
        raise UnsupportedFamilyError(f"the {what} projection's {d_out} outputs do not split into {n} heads")
    bias = None if linear.bias is None else linear.bias.reshape(n, d_out // n)
    return weight.reshape(n, d_out // n, weight.shape[1]), bias


def _result_hooks(model: Any, routes: EdgeRoutes, layer: int, fns: list[HookFn]) -> list[tuple[str, HookFn]]:
    attn = model.blocks[layer].attn
    post_norm = routes.post_norm.get(layer)
    stash: dict[str, torch.Tensor] = {}

    def finish(results: torch.Tensor, hook: Any) -> None:
        writes = post_norm.shares(results) if post_norm is not None else results
        returned = _chain(fns, writes, hook)
        if returned is not writes:  # a hook replaced the writes: their sum replaces the block's own
            stash["sum"] = returned.sum(-2)

    if layer in routes.results_from_z:
        o = attn.o.original_component
        n_heads = int(model.cfg.n_heads)

        def from_z(z: torch.Tensor, hook: Any) -> None:
            b, p = z.shape[:2]
            z4 = z.reshape(b, p, n_heads, -1)
            w_o = o.weight.T.reshape(n_heads, z4.shape[-1], o.weight.shape[0])  # [h, d_head, d]
            finish(torch.einsum("bphe,hed->bphd", z4, w_o.to(z4.dtype)), hook)

        def write_projection(out: torch.Tensor, hook: Any) -> torch.Tensor | None:
            if "sum" not in stash:
                return None
            total = stash.pop("sum")
            if o.bias is not None:
                total = total + o.bias
            return total.to(out.dtype)

        hooks = [(f"blocks.{layer}.attn.hook_z", from_z)]
        if post_norm is None:
            return hooks + [(f"blocks.{layer}.attn.o.hook_out", write_projection)]
    else:

        def from_results(results: torch.Tensor, hook: Any) -> None:
            finish(results, hook)

        hooks = [(f"blocks.{layer}.attn.hook_result", from_results)]

    def write_post_norm(out: torch.Tensor, hook: Any) -> torch.Tensor | None:
        return stash.pop("sum").to(out.dtype) if "sum" in stash else None

    return hooks + [(f"blocks.{layer}.hook_attn_out", write_post_norm)]


def _qkv_hooks(model: Any, layer: int, letter: str, fns: list[HookFn]) -> list[tuple[str, HookFn]]:
    block = model.blocks[layer]
    norm = block.ln1.original_component
    projection = getattr(block.attn, letter).original_component
    n = (
        int(model.cfg.n_heads)
        if letter == "q"
        else int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    )
    stash: dict[str, torch.Tensor] = {}

    def capture(resid: torch.Tensor, hook: Any) -> None:
        stash["resid"] = resid

    def project(out: torch.Tensor, hook: Any) -> torch.Tensor:
        resid = stash.pop("resid")
        fork = _chain(fns, resid[:, :, None, :].expand(-1, -1, n, -1), hook)  # [b, p, n, d]
        weight, bias = _per_head_weight(projection, n, letter)
        heads = torch.einsum("bpnd,ned->bpne", norm(fork), weight.to(fork.dtype))
        if bias is not None:
            heads = heads + bias
        return heads.reshape(out.shape).to(out.dtype)

    return [(f"blocks.{layer}.ln1.hook_in", capture), (f"blocks.{layer}.attn.hook_{letter}", project)]


def _shared_norm_hooks(model: Any, routes: EdgeRoutes, layer: int, letter: str) -> list[tuple[str, HookFn]]:
    """Head ``h``'s query (key) under a norm across heads: the norm of every head's projection of head ``h``'s own
    input, head ``h``'s slice of it; replaces the norm's output. The fork is captured after every other hook on the
    input, so it is what the heads really read."""
    block = model.blocks[layer]
    attn = block.attn
    projection = getattr(attn, letter).original_component
    norm = getattr(attn, f"{letter}_norm").original_component
    first_norm = block.ln1.original_component if layer in routes.pre_norm_heads else None
    stash: dict[str, torch.Tensor] = {}

    def capture(fork: torch.Tensor, hook: Any) -> None:
        stash["fork"] = fork

    def replace(out: torch.Tensor, hook: Any) -> torch.Tensor | None:
        fork = stash.pop("fork", None)
        if fork is None:
            return None
        b, p, n, _ = fork.shape
        read = first_norm(fork) if first_norm is not None else fork
        every = torch.nn.functional.linear(read, projection.weight, projection.bias)  # [b, p, n, n·d_head]
        normed = norm(every).reshape(b, p, n, n, -1)
        own = normed[:, :, torch.arange(n), torch.arange(n)]  # [b, p, n, d_head]: copy h, head h
        return own.reshape(out.shape).to(out.dtype)

    return [(f"blocks.{layer}.hook_{letter}_input", capture), (f"blocks.{layer}.attn.{letter}_norm.hook_out", replace)]


def _mlp_in_hooks(model: Any, layer: int, fns: list[HookFn]) -> list[tuple[str, HookFn]]:
    norm = model.blocks[layer].ln1.original_component
    stash: dict[str, torch.Tensor] = {}

    def capture(resid: torch.Tensor, hook: Any) -> None:
        stash["resid"] = resid

    def read(normed: torch.Tensor, hook: Any) -> torch.Tensor:
        return norm(_chain(fns, stash.pop("resid"), hook)).to(normed.dtype)

    return [(f"blocks.{layer}.ln1.hook_in", capture), (f"blocks.{layer}.mlp.hook_in", read)]


# ----------------------------------------------------------------------------- planning
def _flag(model: Any, name: str) -> bool:
    """Switch on ``use_<name>``; ``False`` when the bridge cannot serve it for this family."""
    try:
        getattr(model, f"set_use_{name}")(True)
    except NotImplementedError:
        return False
    return True


def _fired(model: Any, names: Sequence[str]) -> list[str]:
    """Which of ``names`` fire on a two-token forward pass, in firing order (names the bridge refuses to hook count as
    not firing)."""
    fired: list[str] = []
    hookable = []
    for name in names:
        point = model.hook_dict.get(name)
        if point is None:
            continue
        try:
            model.check_hooks_to_add(point, name, None)
        except Exception:  # the bridge refuses a hook whose flag is off  # noqa: BLE001
            continue
        hookable.append(name)

    def record(name: str) -> HookFn:
        def hook(act: torch.Tensor, hook: Any) -> None:
            if name not in fired:
                fired.append(name)

        return hook

    device = next(model.parameters()).device
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, record(n)) for n in hookable]):
        model(torch.zeros(1, 2, dtype=torch.long, device=device))
    return fired


def _before(fired: list[str], first: str, then: str) -> bool:
    """Whether hook ``first`` fired, and before ``then``."""
    return first in fired and then in fired and fired.index(first) < fired.index(then)


def _post_norm(module: torch.nn.Module, layer: int, family: str) -> PostNorm:
    """Read an RMS post-norm's gain and epsilon, checking on a random input that it is one."""
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    weight = getattr(module, "weight", None)
    if eps is None or weight is None:
        raise UnsupportedFamilyError(
            f"{family}: the norm on block {layer}'s attention output ({type(module).__name__}) is not an RMS norm "
            "with a weight and an epsilon, so its head shares cannot be computed"
        )
    d = weight.shape[-1]
    with torch.no_grad():
        ones = torch.ones(1, d, dtype=torch.float32, device=weight.device)
        gain = module(ones.to(weight.dtype)).float()[0] * (1.0 + float(eps)) ** 0.5
        probe = torch.randn(3, d, generator=torch.Generator().manual_seed(0)).to(weight.device)
        expected = gain * probe * torch.rsqrt(probe.pow(2).mean(-1, keepdim=True) + float(eps))
        got = module(probe.to(weight.dtype)).float()
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        raise UnsupportedFamilyError(
            f"{family}: the norm on block {layer}'s attention output ({type(module).__name__}) does not behave as "
            "gain ⊙ x / rms(x) (a LayerNorm, say), so its head shares cannot be computed"
        )
    return PostNorm(gain=gain.to(weight.dtype), eps=float(eps))


def _shared_qk_norms(model: Any, layer: int, fired: list[str]) -> set[str]:
    """The letters (``"q"``, ``"k"``) of ``layer`` whose norm spans every head (its weight is heads × d_head wide)."""
    attn = model.blocks[layer].attn
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    shared = set()
    for letter, n in (("q", int(model.cfg.n_heads)), ("k", int(n_kv))):
        norm = getattr(getattr(attn, f"{letter}_norm", None), "original_component", None)
        weight = getattr(norm, "weight", None)
        projection = getattr(getattr(attn, letter, None), "original_component", None)
        if weight is None or n < 2 or not isinstance(projection, torch.nn.Linear):
            continue
        wide = weight.numel() == projection.weight.shape[0]  # as wide as every head's projection together
        if wide and f"blocks.{layer}.attn.{letter}_norm.hook_out" in fired and _spans_heads(norm, n):
            shared.add(letter)
    return shared


def _spans_heads(norm: torch.nn.Module, n: int) -> bool:
    """Whether a norm over ``n`` heads' concatenated projections mixes them: scaling the other heads' slices moves
    the first head's output (a per-head norm, such as Cohere's, refuses the flat input or leaves it alone)."""
    width = int(norm.weight.numel())
    if width % n:
        return False
    head = width // n
    probe = torch.randn(1, width, generator=torch.Generator().manual_seed(0)).to(norm.weight.dtype)
    scaled = probe.clone()
    scaled[:, head:] *= 3.0
    try:
        with torch.no_grad():
            first, second = norm(probe), norm(scaled)
    except RuntimeError:
        return False
    return bool((first[:, :head] - second[:, :head]).abs().max() > 1e-6)


def plan_routes(model: Any, family: str) -> EdgeRoutes:
    """Switch on the bridge's edge hooks and decide, layer by layer, which logical points must be routed.

    Raises:
        UnsupportedFamilyError: naming the family, the layer, what is missing and why no route can stand in.
    """
    architecture = type(getattr(model, "original_model", model)).__name__
    if not architecture.endswith(("ForCausalLM", "LMHeadModel")):
        raise UnsupportedFamilyError(
            f"{family}: {architecture} is not a causal (decoder-only) language model; knowledge circuits read the "
            "next-token prediction of a decoder"
        )
    supports_results = _flag(model, "attn_result")
    supports_split = _flag(model, "split_qkv_input")
    _flag(model, "hook_mlp_in")
    n_layers = int(model.cfg.n_layers)
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.attn.hook_z"]
        names += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"]
        names += [f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.mlp.hook_in"]
        names += [f"blocks.{layer}.attn.hook_{x}" for x in "qkv"]
        names += [f"blocks.{layer}.attn.{x}_norm.hook_out" for x in "qk"]
    fired = _fired(model, names)
    routes = EdgeRoutes(family=family)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    for layer in range(n_layers):
        block = model.blocks[layer]
        attn = getattr(block, "attn", None)
        where = f"{family}: block {layer}"
        if attn is None:
            raise UnsupportedFamilyError(f"{where} has no attention bridge the edge graph can read")
        o = getattr(getattr(attn, "o", None), "original_component", None)
        if f"blocks.{layer}.attn.hook_result" not in fired:
            if not isinstance(o, torch.nn.Linear) or f"blocks.{layer}.attn.hook_z" not in fired:
                raise UnsupportedFamilyError(
                    f"{where}: the bridge gives no per-head results (use_attn_result "
                    f"{'is refused' if not supports_results else 'never fires'}) and there is no separate linear "
                    "output projection with a z hook to compute them from"
                )
            routes.results_from_z.add(layer)
        if hasattr(block, "ln1_post"):
            if o is not None and getattr(o, "bias", None) is not None and bool(o.bias.detach().abs().max() > 0):
                raise UnsupportedFamilyError(
                    f"{where}: the attention output has a bias b_O inside the post-attention norm; its share "
                    "g ⊙ b_O / rms(Σ heads + b_O) depends on the input, so head writes have no exact split"
                )
            routes.post_norm[layer] = _post_norm(block.ln1_post.original_component, layer, family)
        if not all(f"blocks.{layer}.hook_{x}_input" in fired for x in "qkv"):
            separate = all(
                isinstance(getattr(getattr(attn, x, None), "original_component", None), torch.nn.Linear) for x in "qkv"
            )
            pre_norm = all(
                _before(fired, f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.attn.hook_{x}") for x in "qkv"
            )
            if not separate or not hasattr(block, "ln1") or not pre_norm:
                raise UnsupportedFamilyError(
                    f"{where}: the bridge does not split the query/key/value inputs per head (use_split_qkv_input "
                    f"{'is refused' if not supports_split else 'never fires'}), and the projections are not "
                    "separate linear layers behind one pre-attention norm that a per-head split could be computed from"
                )
            routes.qkv_from_projections.add(layer)
        if f"blocks.{layer}.hook_mlp_in" not in fired:
            reads_ln1 = _before(fired, f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.mlp.hook_in")
            if not (parallel and reads_ln1 and not hasattr(block, "ln2")):
                raise UnsupportedFamilyError(
                    f"{where}: the bridge never fires the MLP-input hook (hook_mlp_in), and the MLP does not read the "
                    "block's input through the block's one norm (a parallel block), so its read cannot be patched alone"
                )
            routes.mlp_reads_ln1.add(layer)
        if _before(fired, f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.attn.hook_q"):
            routes.pre_norm_heads.add(layer)
        shared = _shared_qk_norms(model, layer, fired)
        if shared:
            if layer in routes.qkv_from_projections:
                raise UnsupportedFamilyError(
                    f"{where}: query/key norms span every head, and the bridge does not split the heads' inputs"
                )
            routes.shared_qk_norm[layer] = shared
    setattr(model, ROUTES_ATTRIBUTE, routes)
    return routes
