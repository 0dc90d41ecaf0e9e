"""Files fetched once from the head by SHA-256 (Ray replicas on machines without the shared folders).

    ref = file_ref(entry)                               # head: a library entry it has validated
    server.register(ref.sha256, path)                   # head: FileServer actor, pinned to the head node
    cache = HashCache(cache_dir)                        # replica: its own cache folder
    path = cache.ensure(ref, fetch)                     # replica: fetched in chunks, hash checked, then
                                                        # validated as locally, kept as cache_dir/<sha><suffix>

A replica first looks for the name in its own library: a readable file with the same sha256 is used
as is. Otherwise the bytes come from the head (`FileServer.read`, chunked), are hashed as they arrive,
refused on a size or hash mismatch, validated with the app's own checks (safetensors header reader and
limits; pickles only with the opt-in), and only then renamed into the cache. Nothing is read or written
outside the cache folder on the replica, nor outside the registered files on the head.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from lora_ui.engine.checkpoints import sha256_of
from lora_ui.files import open_regular
from lora_ui.lora.loader import PICKLE_SUFFIXES  # what the LoRA loader treats as pickles

CHUNK_BYTES = 16 * 1024 * 1024
SAFE_SUFFIXES = frozenset({".safetensors"})
_SHA = re.compile(r"[0-9a-f]{64}")

Fetch = Callable[[str, int, int], bytes]   # (sha256, offset, length) -> bytes


class FileFetchError(RuntimeError):
    """A file could not be fetched from the head, or its bytes were refused (hash, size, validation)."""


@dataclass(frozen=True)
class FileRef:
    """What a replica needs to fetch one file: its sha256, size, suffix and Lora-hashes short hash."""

    sha256: str
    size: int
    suffix: str = ".safetensors"
    short_hash: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FileRef":
        return cls(str(data["sha256"]), int(data["size"]), str(data.get("suffix", ".safetensors")),
                   data.get("short_hash"))


def file_ref(entry: Any) -> FileRef:
    """The FileRef of a library entry (the head's library has read and validated its header)."""
    if getattr(entry, "broken", False) or getattr(entry, "unsafe", False):
        raise FileFetchError(f"{entry.path}: not a file the head serves ({entry.error or 'pickle refused'})")
    return FileRef(entry.sha256(), Path(entry.path).stat().st_size, Path(entry.path).suffix.lower(),
                   entry.short_hash())


def check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA.fullmatch(sha256):
        raise FileFetchError(f"{sha256!r} is not a sha256 hex digest")
    return sha256


def validate_file(path: Path, suffix: str, allow_pickle: bool) -> None:
    """The local checks a fetched file must pass: safetensors (header reader and limits), or a pickle
    suffix with the opt-in (the pickle loader checks it again when it is loaded)."""
    from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

    if suffix in SAFE_SUFFIXES:
        try:
            read_header(path)
        except SafetensorsHeaderError as exc:
            raise FileFetchError(f"fetched file refused: {exc}") from None
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise FileFetchError(f"fetched file refused: a {suffix} file is a pickle, which can run code when "
                                 "loaded; start with --allow-pickle to use it")
    else:
        raise FileFetchError(f"fetched file refused: {suffix!r} is not a model file type")


class HashCache:
    """The replica's cache folder: files by sha256, each fetched once, verified, validated."""

    def __init__(self, folder: str | os.PathLike, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.allow_pickle = allow_pickle
        self.fetched = 0                      # files downloaded by this process (stats, tests)
        self._lock = threading.Lock()         # one download at a time: each file once
        self._verified: set[str] = set()

    def path_for(self, ref: FileRef) -> Path:
        suffix = ref.suffix if ref.suffix in (*SAFE_SUFFIXES, *PICKLE_SUFFIXES) else ".bin"
        return self.folder / f"{check_sha(ref.sha256)}{suffix}"

    def ensure(self, ref: FileRef, fetch: Fetch) -> Path:
        """The cached file of `ref` (fetched, verified and validated now if not there yet)."""
        path = self.path_for(ref)
        with self._lock:
            if path.exists() and (path.name in self._verified or self._recheck(path, ref)):
                return path
            self.folder.mkdir(parents=True, exist_ok=True)
            self._download(ref, path, fetch)
            self._verified.add(path.name)
            return path

    def _recheck(self, path: Path, ref: FileRef) -> bool:
        """A file cached by an earlier process: used only if its bytes still hash to its name."""
        if sha256_of(path) == ref.sha256:
            self._verified.add(path.name)
            return True
        path.unlink()
        return False

    def _download(self, ref: FileRef, path: Path, fetch: Fetch) -> None:
        part = self.folder / f".{ref.sha256}.{uuid.uuid4().hex[:8]}.part"
        try:
            digest = _write_chunks(part, ref, fetch)
            if digest != ref.sha256:
                raise FileFetchError(f"fetched file refused: sha256 mismatch (expected {ref.sha256}, got {digest}); "
                                     "the file changed on the head or was corrupted on the way")
            validate_file(part, ref.suffix, self.allow_pickle)
            os.replace(part, path)
            self.fetched += 1
        finally:
            part.unlink(missing_ok=True)


def _write_chunks(part: Path, ref: FileRef, fetch: Fetch) -> str:
    digest = hashlib.sha256()
    written = 0
    with open(part, "xb") as out:
        while written < ref.size:
            chunk = fetch(ref.sha256, written, min(CHUNK_BYTES, ref.size - written))
            if not chunk:
                raise FileFetchError(f"fetched file refused: the head sent {written} of {ref.size} bytes")
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    if written != ref.size:
        raise FileFetchError(f"fetched file refused: {written} bytes, expected {ref.size}")
    return digest.hexdigest()


class FileServer:
    """The head's side (a Ray actor pinned to the head node): serves only files registered by sha256."""

    def __init__(self) -> None:
        self._files: dict[str, Path] = {}
        self._downloads: dict[str, int] = {}   # sha256 -> downloads started (reads at offset 0)

    def register(self, sha256: str, path: str) -> None:
        self._files[check_sha(sha256)] = Path(path)

    def downloads(self) -> dict[str, int]:
        """sha256 -> how many times a replica started downloading it (each replica fetches a file once)."""
        return dict(self._downloads)

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        path = self._files.get(sha256)
        if path is None:
            raise FileFetchError(f"the head has no file with sha256 {sha256}")
        if int(offset) == 0:
            self._downloads[sha256] = self._downloads.get(sha256, 0) + 1
        with open_regular(path) as handle:
            handle.seek(max(0, int(offset)))
            return handle.read(max(0, min(int(length), CHUNK_BYTES)))


@dataclass
class _FetchedEntry:
    """Stands for a library entry of a fetched file (infotext `Lora hashes` looks entries up by path)."""

    path: Path
    name: str
    _short: str | None

    def short_hash(self, compute: bool = True) -> str | None:
        return self._short


class FetchingLibrary:
    """The replica's library: the names the head sent with a request resolve to a file with the head's
    sha256 (the replica's own when equal, else fetched into the cache); other names as `local` does."""

    def __init__(self, local: Any, cache: HashCache, fetch: Fetch) -> None:
        self.local, self.cache, self._fetch = local, cache, fetch
        self._lock = threading.Lock()
        self._paths: dict[str, _FetchedEntry] = {}

    def provide(self, files: dict[str, dict]) -> None:
        """Make every `name -> FileRef dict` the head sent resolvable here (fetching what is missing)."""
        for name, data in files.items():
            ref = FileRef.from_dict(data)
            path = self._local_match(name, ref) or self.cache.ensure(ref, self._fetch)
            with self._lock:
                self._paths[name.strip().lower()] = _FetchedEntry(Path(path), name, ref.short_hash)

    def _local_match(self, name: str, ref: FileRef) -> Path | None:
        entry = self.local.resolve(name) if self.local is not None else None
        if entry is None or entry.broken or entry.unsafe:
            return None
        try:
            return Path(entry.path) if entry.sha256() == ref.sha256 else None
        except OSError:
            return None

    def specs_for(self, tags) -> tuple[list, list[str]]:
        from lora_ui.lora.spec import LoraSpec

        specs: list = []
        warnings: list[str] = []
        for tag in tags:
            with self._lock:
                found = self._paths.get(tag.name.strip().lower())
            if found is None:
                more, notes = self.local.specs_for([tag]) if self.local is not None else ([], [
                    f"<lora:{tag.name}>: no LoRA named '{tag.name}' on this replica; ignored"])
                specs += more
                warnings += notes
                continue
            specs.append(LoraSpec(path=found.path, name=tag.name.strip() or found.name, te=tag.te,
                                  unet=tag.unet_weight, dyn=tag.dyn, lbw=tag.lbw, start=tag.start, stop=tag.stop))
        return specs, warnings

    @property
    def entries(self) -> list:
        with self._lock:
            fetched = list(self._paths.values())
        return [*(self.local.entries if self.local is not None else []), *fetched]

    def __getattr__(self, name: str) -> Any:
        local = self.__dict__.get("local")
        if local is None:
            raise AttributeError(name)
        return getattr(local, name)
