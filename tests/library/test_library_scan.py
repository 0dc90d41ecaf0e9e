"""LoraLibrary over folders of synthetic LoRA files: fields, sidecars, cache, hashes, names, specs."""
import base64
import hashlib
import io
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_ui.library import CACHE_FILE_NAME, LibraryError, LoraLibrary
from lora_ui.library import library as library_module
from lora_ui.library.synthetic import kohya_metadata, network_tensors, sd1_modules, sdxl_modules, write_lora
from lora_ui.lora.spec import LoraSpec
from lora_ui.prompt import extract_lora_tags

SMALL_SD1 = sd1_modules(te_layers=1)[:20]


def make_lora(path, network_type="LoRA", metadata=None, modules=None, rank=4, seed=0):
    return write_lora(path, network_tensors(modules or SMALL_SD1, network_type, rank=rank, seed=seed), metadata)


def png_bytes(color=(255, 0, 0)):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def lora_dir(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "plain.safetensors")
    make_lora(root / "styles" / "watercolor.safetensors", "LoHa", kohya_metadata("Watercolor Style", dim=4))
    make_lora(root / "styles" / "deep" / "xl_thing.safetensors", "LoRA", None, sdxl_modules()[:30], rank=8)
    return root


def refreshed(dirs, cache_dir=None, **kwargs):
    library = LoraLibrary(dirs if isinstance(dirs, list) else [dirs], cache_dir=cache_dir, **kwargs)
    report = library.refresh()
    return library, report


# ------------------------------------------------------------------ fields

def test_entry_fields(lora_dir):
    library, report = refreshed(lora_dir)
    assert (report.total, report.added, report.broken, report.conflicts) == (3, 3, [], [])
    by_name = {e.name: e for e in library.entries}
    plain = by_name["plain"]
    path = lora_dir / "plain.safetensors"
    stat = path.stat()
    assert plain.path == path and plain.root == lora_dir
    assert (plain.rel_path, plain.rel_folder) == ("plain.safetensors", "")
    assert (plain.size, plain.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert plain.mtime == pytest.approx(stat.st_mtime)
    assert (plain.alias, plain.arch, plain.network_type, plain.rank) == ("plain", "SD1", "LoRA", 4)
    assert plain.metadata == {} and plain.preview is None and plain.description == "" and plain.user_meta == {}
    assert not plain.broken and not plain.unsafe
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert plain.data_start == 8 + n

    water = by_name["watercolor"]
    assert (water.alias, water.rel_folder, water.network_type, water.arch) == ("Watercolor Style", "styles", "LoHa", "SD1")
    assert water.metadata["ss_network_dim"] == "4"
    assert isinstance(water.metadata["ss_tag_frequency"], dict)  # JSON decoded
    assert sum(water.tag_frequency.values()) == sum(
        sum(d.values()) for d in json.loads(kohya_metadata("Watercolor Style", dim=4)["ss_tag_frequency"]).values())
    assert water.to_api() == {"name": "watercolor", "alias": "Watercolor Style", "path": str(water.path),
                              "metadata": water.metadata}

    xl = by_name["xl_thing"]
    assert (xl.rel_folder, xl.arch, xl.rank) == ("styles/deep", "SDXL", 8)
    # canonical order: fewer subfolders first
    assert [e.name for e in library.entries] == ["plain", "watercolor", "xl_thing"]


def test_listing_never_reads_tensors(lora_dir, monkeypatch):
    """Only the header bytes are read: reading anything past 8 + N would fail."""
    real_open = open
    limits = {}
    for path in lora_dir.rglob("*.safetensors"):
        limits[str(path)] = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]

    class Guard:
        def __init__(self, handle, limit):
            self.handle, self.limit, self.pos = handle, limit, 0

        def read(self, n=-1):
            assert n != -1 and self.pos + n <= self.limit, "read past the header"
            data = self.handle.read(n)
            self.pos += len(data)
            return data

        def fileno(self):
            return self.handle.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def guarded_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file) in limits:
            return Guard(handle, limits[str(file)])
        return handle

    monkeypatch.setattr("builtins.open", guarded_open)
    library, report = refreshed(lora_dir)
    assert report.headers_read == 3 and report.broken == []


# ------------------------------------------------------------------ sidecars

def test_sidecars_are_read(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    (root / "a.preview.webp").write_bytes(b"x")
    (root / "a.jpg").write_bytes(b"x")  # A1111's order: png, preview.png, jpg, preview.jpg, ..., webp
    (root / "a.description.txt").write_text("from description.txt")
    (root / "a.json").write_text(json.dumps({"description": "mine", "sd version": "SDXL", "activation text": "trigger",
                                             "preferred weight": 0.7, "negative text": "bad", "notes": "n",
                                             "my extension key": [1, 2]}))
    (root / "a.civitai.info").write_text(json.dumps({"trainedWords": ["w1", " w2 ", 3], "baseModel": "SD 1.5"}))
    make_lora(root / "b.safetensors")
    (root / "b.PNG").write_bytes(b"x")
    (root / "b.txt").write_text("  plain txt  \n")
    (root / "b.civitai.info").write_text(json.dumps({"trainedWords": ["civ word"], "baseModel": "SDXL 1.0"}))
    library, report = refreshed(root)
    a, b = library.resolve("a"), library.resolve("b")
    assert a.preview == root / "a.jpg"
    assert a.description == "from description.txt"
    assert a.user_meta["my extension key"] == [1, 2]
    assert (a.activation_text, a.preferred_weight, a.negative_text, a.effective_arch, a.arch) == (
        "trigger", 0.7, "bad", "SDXL", "SD1")
    assert a.civitai == {"trained_words": ["w1", "w2"], "base_model": "SD 1.5"}
    assert b.preview == root / "b.PNG"
    assert b.description == "plain txt"
    assert b.activation_text == "civ word"  # falls back to civitai trained words
    assert b.preferred_weight is None
    assert report.warnings == []


def test_preview_order_follows_a1111(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    for name in ("a.gif", "a.preview.jpeg", "a.webp"):
        (root / name).write_bytes(b"x")
    assert refreshed(root)[0].resolve("a").preview == root / "a.preview.jpeg"
    (root / "a.preview.png").write_bytes(b"x")
    assert refreshed(root)[0].resolve("a").preview == root / "a.preview.png"
    (root / "a.png").write_bytes(b"x")
    assert refreshed(root)[0].resolve("a").preview == root / "a.png"


def test_embedded_cover_image_becomes_a_cached_preview(tmp_path):
    root = tmp_path / "Lora"
    image = png_bytes((0, 255, 0))
    make_lora(root / "c.safetensors", metadata={"ssmd_cover_images": json.dumps([base64.b64encode(image).decode()])})
    library, _ = refreshed(root, cache_dir=tmp_path / "cache")
    entry = library.resolve("c")
    assert entry.preview is not None and entry.preview.parent == tmp_path / "cache" / "lora-previews"
    assert entry.preview.read_bytes() == image
    # a sidecar preview wins over the embedded one
    (root / "c.png").write_bytes(b"x")
    assert refreshed(root, cache_dir=tmp_path / "cache")[0].resolve("c").preview == root / "c.png"
    # removed from the cache folder: rebuilt from the header
    (root / "c.png").unlink()
    entry.preview.unlink()
    again = refreshed(root, cache_dir=tmp_path / "cache")[0].resolve("c")
    assert again.preview.read_bytes() == image


def test_broken_sidecars_give_warnings_not_failures(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    (root / "a.json").write_text("{broken")
    (root / "a.civitai.info").write_text("[1, 2]")
    (root / "a.txt").write_bytes(b"\xff\xfe bad bytes")
    library, report = refreshed(root)
    entry = library.resolve("a")
    assert not entry.broken
    assert entry.user_meta == {} and entry.civitai == {"trained_words": [], "base_model": None}
    assert "\ufffd" in entry.description
    assert len(entry.warnings) == 2
    assert entry.warnings[0].startswith("a.json: not valid JSON")
    assert entry.warnings[1] == "a.civitai.info: JSON list, expected an object; ignored"
    assert report.warnings == [f"a.safetensors: {w}" for w in entry.warnings]
    assert (root / "a.json").read_text() == "{broken"  # never written by a scan


# ------------------------------------------------------------------ user metadata writes

def test_save_user_metadata_merges_and_keeps_unknown_keys(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    (root / "a.json").write_text(json.dumps({"notes": "old", "civitai helper key": {"x": 1}, "preferred weight": 0.5}))
    library, _ = refreshed(root, cache_dir=tmp_path / "cache")
    entry = library.resolve("a")
    written = library.save_user_metadata(entry, {"activation text": "trig", "notes": None, "sd version": "SD1",
                                                 "preferred weight": 0.8})
    on_disk = json.loads((root / "a.json").read_text(encoding="utf-8"))
    assert on_disk == written == {"civitai helper key": {"x": 1}, "preferred weight": 0.8, "activation text": "trig",
                                  "sd version": "SD1"}
    assert entry.user_meta == on_disk and entry.activation_text == "trig"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temp files left
    # the cache knows the new sidecar: a new library sees it without re-reading
    assert refreshed(root, cache_dir=tmp_path / "cache")[0].resolve("a").user_meta == on_disk


@pytest.mark.parametrize("values, message", [
    ({"preferred weight": "heavy"}, "'preferred weight' must be a finite number"),
    ({"preferred weight": float("nan")}, "'preferred weight' must be a finite number"),
    ({"sd version": "SD3"}, "'sd version' must be one of SD1, SD2, SDXL, Unknown"),
    ({"activation text": 5}, "'activation text' must be text"),
    ({"notes": "ok", "x": object()}, "cannot be stored as JSON"),
])
def test_bad_user_metadata_is_refused_and_nothing_is_written(tmp_path, values, message):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    original = json.dumps({"notes": "keep me"})
    (root / "a.json").write_text(original)
    library, _ = refreshed(root)
    with pytest.raises(LibraryError, match=message) as info:
        library.save_user_metadata(library.resolve("a"), values)
    assert str(info.value).startswith("a.safetensors: ")
    assert (root / "a.json").read_text() == original
    assert library.resolve("a").user_meta == {"notes": "keep me"}


def test_save_over_a_broken_json_keeps_a_backup(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    (root / "a.json").write_text("{user typed this by hand")
    library, _ = refreshed(root)
    library.save_user_metadata(library.resolve("a"), {"notes": "new"})
    assert json.loads((root / "a.json").read_text()) == {"notes": "new"}
    assert (root / "a.json.bak").read_text() == "{user typed this by hand"


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    (root / "a.json").write_text('{"notes": "old"}')
    library, _ = refreshed(root)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LibraryError, match="No space left on device"):
        library.save_user_metadata(library.resolve("a"), {"notes": "new"})
    assert (root / "a.json").read_text() == '{"notes": "old"}'
    assert sorted(p.name for p in root.iterdir()) == ["a.json", "a.safetensors"]


# ------------------------------------------------------------------ bad files

def test_bad_files_are_listed_as_broken_and_the_scan_goes_on(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "good.safetensors")
    (root / "short.safetensors").write_bytes(b"abc")
    (root / "huge_header.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    (root / "not_json.safetensors").write_bytes(struct.pack("<Q", 5) + b"hello")
    (root / "meta_not_str.safetensors").write_bytes(struct.pack("<Q", 24) + b'{"__metadata__":{"a":1}}')
    body = b'{"__metadata__":{"a":"b"}}'
    (root / "empty.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    ckpt_body = json.dumps({"model.diffusion_model.x.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    (root / "checkpoint.safetensors").write_bytes(struct.pack("<Q", len(ckpt_body)) + ckpt_body + b"00")
    (root / "old.pt").write_bytes(b"pickle bytes")
    library, report = refreshed(root)
    entries = {e.name: e for e in library.entries}
    assert not entries["good"].broken
    expected = {
        "short": "file is too short to be safetensors (3 bytes, need at least 8)",
        "huge_header": "header length 1000000000 bytes is larger than the 104857600 byte limit",
        "not_json": "header is not valid JSON",
        "meta_not_str": "__metadata__ value of 'a' is a JSON int",
        "empty": "contains no tensors; not a LoRA file",
        "checkpoint": "contains no LoRA network tensors; not a LoRA file",
    }
    for name, message in expected.items():
        assert entries[name].broken, name
        assert entries[name].error.startswith(message), (name, entries[name].error)
        assert any(line.startswith(f"{name}.safetensors: {message}") for line in report.broken)
    assert entries["old"].unsafe and not entries["old"].broken
    assert report.total == 8
    specs, warnings = library.specs_for(extract_lora_tags("<lora:not_json:1> <lora:old:1> <lora:good:0.5>")[1])
    assert [s.name for s in specs] == ["good"]
    assert warnings[0].startswith("<lora:not_json:1>: the file not_json.safetensors cannot be used: header is not valid JSON")
    assert warnings[1].startswith("<lora:old:1>: old.pt is a pickle file") and "--allow-pickle" in warnings[1]


def test_pickles_are_usable_with_allow_pickle(tmp_path):
    root = tmp_path / "Lora"
    (root).mkdir()
    (root / "old.ckpt").write_bytes(b"pickle bytes")
    library, _ = refreshed(root, allow_pickle=True)
    entry = library.resolve("old")
    assert not entry.unsafe
    assert entry.short_hash() == hashlib.sha256(b"pickle bytes").hexdigest()[:12]  # A1111: whole-file hash
    specs, warnings = library.specs_for(extract_lora_tags("<lora:old:1>")[1])
    assert warnings == [] and specs[0].path == root / "old.ckpt"


def test_missing_folder_is_a_warning(tmp_path):
    library, report = refreshed([tmp_path / "nope"])
    assert library.entries == []
    assert report.warnings == [f"LoRA folder {tmp_path / 'nope'} does not exist or is not a folder"]


# ------------------------------------------------------------------ cache and refresh

def test_second_start_reads_no_headers_and_gives_the_same_entries(lora_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first, report = refreshed(lora_dir, cache)
    assert report.headers_read == 3 and (cache / CACHE_FILE_NAME).exists()

    def no_reading(path):
        raise AssertionError(f"header of {path} read on a warm start")

    monkeypatch.setattr(library_module, "read_header", no_reading)
    second, report = refreshed(lora_dir, cache)
    assert (report.headers_read, report.unchanged, report.added) == (0, 3, 0)
    fields = ("name", "alias", "path", "rel_folder", "size", "mtime_ns", "arch", "network_type", "rank", "preview",
              "description", "user_meta", "broken")
    assert [[getattr(e, f) for f in fields] for e in second.entries] == [[getattr(e, f) for f in fields] for e in first.entries]


def test_incremental_refresh_reads_only_new_and_changed_files(lora_dir, tmp_path):
    library, _ = refreshed(lora_dir, tmp_path / "cache")
    old_entry = library.resolve("watercolor")
    make_lora(lora_dir / "new_one.safetensors")
    changed = lora_dir / "plain.safetensors"
    make_lora(changed, "LoKr", rank=2)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    (lora_dir / "styles" / "deep" / "xl_thing.safetensors").unlink()
    report = library.refresh()
    assert (report.added, report.changed, report.removed, report.unchanged, report.headers_read) == (1, 1, 1, 1, 2)
    assert library.resolve("plain").network_type == "LoKr"
    assert library.resolve("watercolor") is old_entry  # untouched entries are kept as they are
    assert library.resolve("xl_thing") is None
    # and the disk cache forgot the removed file
    cached = json.loads((tmp_path / "cache" / CACHE_FILE_NAME).read_text())["files"]
    assert sorted(Path(p).name for p in cached) == ["new_one.safetensors", "plain.safetensors", "watercolor.safetensors"]


def test_sidecar_edits_are_picked_up_by_refresh(lora_dir, tmp_path):
    library, _ = refreshed(lora_dir, tmp_path / "cache")
    (lora_dir / "plain.json").write_text('{"activation text": "hello"}')
    (lora_dir / "plain.png").write_bytes(b"x")
    library.refresh()
    assert library.resolve("plain").activation_text == "hello"
    assert library.resolve("plain").preview == lora_dir / "plain.png"
    (lora_dir / "plain.json").unlink()
    library.refresh()
    assert library.resolve("plain").user_meta == {}


def test_corrupt_cache_is_rebuilt_with_a_warning(lora_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE_NAME).write_text("{garbage")
    library, report = refreshed(lora_dir, cache)
    assert report.headers_read == 3 and len(library.entries) == 3
    assert any("is unreadable" in w and "rebuilding" in w for w in report.warnings)
    assert json.loads((cache / CACHE_FILE_NAME).read_text())["version"] == 1


# ------------------------------------------------------------------ hashes

def test_hashes_match_hashlib(lora_dir):
    library, _ = refreshed(lora_dir)
    for entry in library.entries:
        data = entry.path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        assert entry.sha256() == hashlib.sha256(data).hexdigest()
        assert entry.autov2() == hashlib.sha256(data).hexdigest()[:10]
        assert entry.addnet_hash() == hashlib.sha256(data[8 + n:]).hexdigest()
        assert entry.short_hash() == hashlib.sha256(data[8 + n:]).hexdigest()[:12]


def test_hash_of_a_multi_block_file(tmp_path, monkeypatch):
    """The addnet hash starts exactly after the header even when it falls inside a read block."""
    monkeypatch.setattr("lora_ui.library.hashes._BLOCK", 7)
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors")
    library, _ = refreshed(root)
    data = (root / "a.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert library.resolve("a").addnet_hash() == hashlib.sha256(data[8 + n:]).hexdigest()


def test_sshs_model_hash_is_the_short_hash_when_present(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "a.safetensors", metadata={"sshs_model_hash": "feedfacecafe0123" * 4})
    entry = refreshed(root)[0].resolve("a")
    assert entry.short_hash(compute=False) == "feedfacecafe"
    assert entry.sha256(compute=False) is None  # nothing computed for it


def test_background_hashing_fills_the_cache(lora_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    library, _ = refreshed(lora_dir, cache)
    assert all(not e.hashes_known() for e in library.entries)
    thread = library.start_background_hashing()
    assert isinstance(thread, threading.Thread)
    assert library.wait_for_hashes(timeout=60)
    expected = {e.name: hashlib.sha256(e.path.read_bytes()).hexdigest() for e in library.entries}

    def no_hashing(*args, **kwargs):
        raise AssertionError("hash recomputed although cached")

    monkeypatch.setattr(library_module, "file_hashes", no_hashing)
    second, _ = refreshed(lora_dir, cache)
    assert {e.name: e.sha256() for e in second.entries} == expected


def test_find_by_hash_computes_lazily_and_matches_every_hash_form(lora_dir, tmp_path):
    library, _ = refreshed(lora_dir, tmp_path / "cache")
    target = lora_dir / "styles" / "watercolor.safetensors"
    data = target.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    addnet = hashlib.sha256(data[8 + n:]).hexdigest()
    full = hashlib.sha256(data).hexdigest()
    for query in (addnet[:12], addnet[:12].upper(), full[:10], full, addnet):
        assert library.find_by_hash(query).name == "watercolor", query
    assert library.find_by_hash("0" * 12) is None
    assert library.find_by_hash("xyz") is None and library.find_by_hash("") is None


# ------------------------------------------------------------------ names

def test_duplicate_stems_and_alias_collisions_are_resolved_deterministically(tmp_path):
    first, second = tmp_path / "Lora", tmp_path / "LyCORIS"
    make_lora(first / "zeta" / "dup.safetensors", seed=1)
    make_lora(first / "alpha" / "dup.safetensors", seed=2)
    make_lora(first / "deep" / "er" / "dup.safetensors", seed=3)
    make_lora(second / "dup.safetensors", seed=4)  # top level, but in the second folder
    make_lora(first / "owner.safetensors", seed=5)
    make_lora(first / "a1.safetensors", metadata={"ss_output_name": "owner"}, seed=6)   # alias = someone's stem
    make_lora(first / "x" / "b1.safetensors", metadata={"ss_output_name": "shared"}, seed=7)
    make_lora(first / "b2.safetensors", metadata={"ss_output_name": "shared"}, seed=8)
    library, report = refreshed([first, second])
    # earlier folder first, then fewer subfolders, then alphabetical
    assert library.resolve("dup").path == first / "alpha" / "dup.safetensors"
    assert library.resolve("zeta/dup").path == first / "zeta" / "dup.safetensors"
    assert library.resolve("deep/er/dup").path == first / "deep" / "er" / "dup.safetensors"
    assert library.resolve("dup").rel_path == "alpha/dup.safetensors"
    assert library.resolve("owner").path == first / "owner.safetensors"    # a stem beats an alias
    assert library.resolve("shared").path == first / "b2.safetensors"     # shallower wins
    assert library.resolve("a1").path == first / "a1.safetensors"
    assert library.resolve("LyCORIS/dup").path == second / "dup.safetensors"
    assert library.name_for(library.resolve("LyCORIS/dup")) == "LyCORIS/dup"
    assert report.conflicts[0] == (
        "name 'dup' is used by 4 files: 'alpha/dup.safetensors' is used; also 'zeta/dup.safetensors' "
        "(use <lora:zeta/dup:...>), 'deep/er/dup.safetensors' (use <lora:deep/er/dup:...>), "
        "'dup.safetensors' (use <lora:LyCORIS/dup:...>)")
    assert len(report.conflicts) == 3 and report.conflicts == library.conflicts
    # same result on every scan, whatever the folder listing order
    again, report2 = refreshed([first, second])
    assert [e.path for e in again.entries] == [e.path for e in library.entries]
    assert report2.conflicts == report.conflicts


def test_conflict_messages_are_exact(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "zeta" / "dup.safetensors", seed=1)
    make_lora(root / "alpha" / "dup.safetensors", seed=2)
    make_lora(root / "owner.safetensors", seed=5)
    make_lora(root / "a1.safetensors", metadata={"ss_output_name": "owner"}, seed=6)
    make_lora(root / "x" / "b1.safetensors", metadata={"ss_output_name": "shared"}, seed=7)
    make_lora(root / "b2.safetensors", metadata={"ss_output_name": "shared"}, seed=8)
    _, report = refreshed(root)
    assert report.conflicts == [
        "name 'dup' is used by 2 files: 'alpha/dup.safetensors' is used; also 'zeta/dup.safetensors' "
        "(use <lora:zeta/dup:...>)",
        "alias 'owner' of 'a1.safetensors' is also the file name of 'owner.safetensors'; the file name wins "
        "(use <lora:a1:...> for 'a1.safetensors')",
        "alias 'shared' is used by 2 files: 'b2.safetensors' is used; also 'x/b1.safetensors' (use <lora:b1:...>)",
    ]


def test_resolve_by_alias_and_case_insensitive_fallback(lora_dir):
    library, _ = refreshed(lora_dir)
    assert library.resolve("Watercolor Style").name == "watercolor"
    assert library.resolve("watercolor style").name == "watercolor"  # unique ignoring case
    assert library.resolve(" PLAIN ").name == "plain"
    assert library.resolve("nothing") is None
    assert library.resolve(None) is None
    water = library.resolve("watercolor")
    assert library.name_for(water) == "Watercolor Style"
    assert library.name_for(water, prefer="stem") == "watercolor"


def test_ambiguous_case_insensitive_name_resolves_to_nothing(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "Style.safetensors", seed=1)
    make_lora(root / "STYLE.safetensors", seed=2)
    library, _ = refreshed(root)
    assert library.resolve("Style").path.name == "Style.safetensors"
    assert library.resolve("style") is None


# ------------------------------------------------------------------ specs

def test_specs_for_tags(lora_dir):
    library, _ = refreshed(lora_dir)
    _, tags, _ = extract_lora_tags("<lora:plain:0.5> <lyco:Watercolor Style:1:0.3:2:lbw=INALL:start=2:stop=9> "
                                   "<lora:plian:1> <lora:styles/deep/xl_thing:0.8:unet=0.2>")
    specs, warnings = library.specs_for(tags)
    assert specs == [  # name: as written in the prompt (A1111 keys "Lora hashes" by it)
        LoraSpec(path=lora_dir / "plain.safetensors", name="plain", te=0.5, unet=0.5),
        LoraSpec(path=lora_dir / "styles" / "watercolor.safetensors", name="Watercolor Style", te=1.0, unet=0.3,
                 dyn=2, lbw="INALL", start=2, stop=9),
        LoraSpec(path=lora_dir / "styles" / "deep" / "xl_thing.safetensors", name="styles/deep/xl_thing", te=0.8,
                 unet=0.2),
    ]
    assert warnings == ["<lora:plian:1>: no LoRA named 'plian' in the library (did you mean 'plain'?); ignored"]


def test_worker_processes_give_the_same_entries_as_a_single_process(tmp_path, monkeypatch):
    root = tmp_path / "Lora"
    for i, network_type in enumerate(("LoRA", "LoHa", "LoKr", "OFT")):
        make_lora(root / f"d{i % 2}" / f"f{i}.safetensors", network_type, kohya_metadata(f"alias{i}"), seed=i)
    (root / "bad.safetensors").write_bytes(b"nope")
    serial, serial_report = refreshed(root, tmp_path / "c1", max_workers=1)
    monkeypatch.setattr(library_module, "POOL_MIN_FILES_PER_WORKER", 2)
    pooled, pooled_report = refreshed(root, tmp_path / "c2", max_workers=2)
    assert pooled_report.warnings == [] and pooled_report.headers_read == 5
    fields = ("name", "alias", "rel_path", "arch", "network_type", "rank", "broken", "error", "data_start")
    assert [[getattr(e, f) for f in fields] for e in pooled.entries] == \
        [[getattr(e, f) for f in fields] for e in serial.entries]
    assert pooled_report.broken == serial_report.broken == ["bad.safetensors: file is too short to be safetensors "
                                                            "(4 bytes, need at least 8)"]


def test_safetensors_beats_a_pickle_of_the_same_name(tmp_path):
    root = tmp_path / "Lora"
    make_lora(root / "x.safetensors")
    (root / "x.pt").write_bytes(b"pickle")
    library, report = refreshed(root)
    assert library.resolve("x").path == root / "x.safetensors"
    assert report.conflicts == ["name 'x' is used by 2 files: 'x.safetensors' is used; also 'x.pt' (use <lora:x.pt:...>)"]
    assert library.resolve("x.pt").path == root / "x.pt"


def test_pasted_infotext_finds_a_renamed_file_by_hash(tmp_path):
    from lora_ui.infotext import create_infotext, parse_infotext, resolve_pasted_loras

    root = tmp_path / "Lora"
    make_lora(root / "detail_tweaker.safetensors", seed=11)
    library, _ = refreshed(root)
    original_hash = library.resolve("detail_tweaker").short_hash()
    text = create_infotext("a cat <lora:detail_tweaker:0.6>", "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1,
                                                                  "Lora hashes": {"detail_tweaker": original_hash}})
    (root / "detail_tweaker.safetensors").rename(root / "sub_renamed.safetensors")
    library.refresh()
    assert library.resolve("detail_tweaker") is None
    parsed = parse_infotext(text)
    prompt, messages = resolve_pasted_loras(parsed["Prompt"], parsed["Lora hashes"], library)
    assert prompt == "a cat <lora:sub_renamed:0.6>"
    assert messages == [f"<lora:detail_tweaker>: matched by hash {original_hash} to the local file 'sub_renamed'"]
    specs, warnings = library.specs_for(extract_lora_tags(prompt)[1])
    assert warnings == [] and specs[0].path == root / "sub_renamed.safetensors"


def test_undecodable_file_names_survive_the_cache(tmp_path):
    root = tmp_path / "Lora"
    root.mkdir()
    raw_name = os.fsdecode(b"caf\xe9.safetensors")  # Latin-1 byte: not UTF-8, surrogate-escaped
    make_lora(root / raw_name)
    library, report = refreshed(root, tmp_path / "cache")
    assert report.warnings == [] and len(library.entries) == 1
    second, report = refreshed(root, tmp_path / "cache")
    assert report.headers_read == 0 and second.entries[0].name == os.fsdecode(b"caf\xe9")


def test_lookups_are_not_blocked_while_a_refresh_reads_headers(lora_dir, monkeypatch):
    library, _ = refreshed(lora_dir)
    make_lora(lora_dir / "slow_new.safetensors")
    reading, release = threading.Event(), threading.Event()
    real_read = library_module.read_file_record

    def slow_read(job):
        reading.set()
        assert release.wait(30)
        return real_read(job)

    monkeypatch.setattr(library_module, "read_file_record", slow_read)
    thread = threading.Thread(target=library.refresh)
    thread.start()
    try:
        assert reading.wait(30)
        # the refresh is in the middle of reading: lookups still answer from the previous scan
        assert library.resolve("plain").name == "plain"
        assert library.resolve("slow_new") is None
        assert len(library.entries) == 3
    finally:
        release.set()
        thread.join(30)
    assert library.resolve("slow_new").name == "slow_new"
