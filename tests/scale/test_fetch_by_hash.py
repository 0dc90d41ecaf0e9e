"""Files fetched from the head by sha256 (lora_ui/scale/files.py), without Ray: the fetch function is the
FileServer's `read` called in-process. The Ray end-to-end case is in test_ray_backend.py."""
from __future__ import annotations

import hashlib

import pytest

from lora_ui.lora.spec import LoraSpec
from lora_ui.prompt import extract_lora_tags
from lora_ui.scale.files import FetchingLibrary, FileFetchError, FileRef, FileServer, HashCache
from tests.lora.files import make_lora, save


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    head = tmp_path_factory.mktemp("head")
    return save(make_lora(tiny_sd1_pipeline(0), rank=2, alpha=1.0, seed=1)[0], head / "a.safetensors")


def _ref(path, data=None, suffix=".safetensors"):
    data = path.read_bytes() if data is None else data
    return FileRef(hashlib.sha256(data).hexdigest(), len(data), suffix, "abcdef123456")


def _server(path, ref):
    server = FileServer()
    server.register(ref.sha256, str(path))
    calls = []

    def fetch(sha, offset, length):
        calls.append((offset, length))
        return server.read(sha, offset, length)
    return fetch, calls


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_fetched_once_by_hash_verified_and_cached_in_the_given_folder(lora_file, tmp_path, monkeypatch):
    monkeypatch.setattr("lora_ui.scale.files.CHUNK_BYTES", 4096)  # several chunks
    ref = _ref(lora_file)
    fetch, calls = _server(lora_file, ref)
    cache = HashCache(tmp_path / "cache")
    path = cache.ensure(ref, fetch)
    assert path == tmp_path / "cache" / f"{ref.sha256}.safetensors"
    assert path.read_bytes() == lora_file.read_bytes() and len(calls) > 1
    assert cache.ensure(ref, fetch) == path and cache.fetched == 1            # not fetched again
    assert HashCache(tmp_path / "cache").ensure(ref, lambda *a: pytest.fail("refetched")) == path  # a restart
    assert _files(tmp_path) == ["cache"] and _files(tmp_path / "cache") == [path.name]


def test_a_tampered_byte_is_refused_and_nothing_is_cached(lora_file, tmp_path):
    data = bytearray(lora_file.read_bytes())
    ref = _ref(lora_file)
    data[-1] ^= 1
    cache = HashCache(tmp_path)
    with pytest.raises(FileFetchError, match="sha256 mismatch"):
        cache.ensure(ref, lambda sha, offset, length: bytes(data[offset:offset + length]))
    assert _files(tmp_path) == []


def test_right_hash_but_not_a_valid_safetensors_or_a_pickle_is_refused(tmp_path):
    junk = b"\xff" * 64
    with pytest.raises(FileFetchError, match="refused"):
        HashCache(tmp_path).ensure(_ref(None, junk), lambda sha, o, n: junk[o:o + n])
    with pytest.raises(FileFetchError, match="allow-pickle"):
        HashCache(tmp_path).ensure(_ref(None, junk, ".ckpt"), lambda sha, o, n: junk[o:o + n])
    assert _files(tmp_path) == []
    allowed = HashCache(tmp_path, allow_pickle=True).ensure(_ref(None, junk, ".ckpt"), lambda sha, o, n: junk[o:o + n])
    assert allowed.suffix == ".ckpt"


def test_names_outside_the_cache_and_unregistered_hashes_are_refused(lora_file, tmp_path):
    with pytest.raises(FileFetchError, match="not a sha256"):
        HashCache(tmp_path).ensure(FileRef("../../etc/passwd", 10), lambda *a: b"x")
    with pytest.raises(FileFetchError, match="no file with sha256"):
        FileServer().read("0" * 64, 0, 10)


class _Local:
    entries: list = []

    def resolve(self, name):
        return None

    def specs_for(self, tags):
        return [], [f"no LoRA named '{t.name}'" for t in tags]


def test_fetching_library_resolves_the_heads_names_to_the_cached_file(lora_file, tmp_path):
    ref = _ref(lora_file)
    fetch, _ = _server(lora_file, ref)
    library = FetchingLibrary(_Local(), HashCache(tmp_path), fetch)
    library.provide({"a": ref.to_dict()})
    specs, warnings = library.specs_for(extract_lora_tags("x <lora:a:0.7> <lora:zz:1>")[1])
    cached = tmp_path / f"{ref.sha256}.safetensors"
    assert specs == [LoraSpec(path=cached, name="a", te=0.7, unet=0.7)] and warnings == ["no LoRA named 'zz'"]
    assert [e.short_hash() for e in library.entries if e.path == cached] == ["abcdef123456"]
