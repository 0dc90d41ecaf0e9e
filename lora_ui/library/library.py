"""LoraLibrary: the LoRA files under one or more folders, as A1111 users have them.

Listing reads only safetensors headers (never tensors) and folder listings; everything read is cached
on disk in `<cache_dir>/lora-library.json`, keyed by (path, size, mtime), so a second start re-reads
nothing and a refresh reads only new or changed files. Hashes are computed on demand (or by a
background thread) and cached the same way.

Name rule (deterministic, also reported by `refresh()` as conflicts): entries are ordered by
(index of the library folder, number of subfolders, relative path without extension case-folded,
.safetensors before .pt/.ckpt, relative path).
A prompt name resolves, in this order, to:
  1. the first entry in that order whose file stem is the name,
  2. else the first entry whose alias (`ss_output_name`) is the name (a stem always beats an alias),
  3. else the entry whose relative path without extension is the name ("styles/foo"), then the one
     whose library-folder name plus that path is ("LyCORIS/foo"), then the same with the extension
     ("foo.pt"): this is how a shadowed duplicate stays reachable (the conflict report names the
     prompt name to use),
  4. else the single entry whose stem or alias equals the name ignoring case.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import multiprocessing
import os
import stat as stat_module
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lora_ui.library import sidecars
from lora_ui.limits import MAX_PREVIEW_BYTES
from lora_ui.library.hashes import AUTOV2_LENGTH, SHORT_HASH_LENGTH, HashError, file_hashes
from lora_ui.library.inspect import FileSummary, decode_metadata, summarize_header, tag_frequency
from lora_ui.lora.spec import LoraSpec
from lora_ui.prompt import LoraTag
from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

log = logging.getLogger(__name__)

__all__ = ["LoraLibrary", "LoraEntry", "RefreshReport", "LibraryError", "LORA_SUFFIXES", "CACHE_FILE_NAME"]

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PICKLE_SUFFIXES = (".pt", ".ckpt")
CACHE_FILE_NAME = "lora-library.json"
CACHE_VERSION = 1
POOL_MIN_FILES_PER_WORKER = 100  # below this, starting worker processes costs more than it saves


class LibraryError(ValueError):
    """A library operation was refused (bad user metadata, unwritable sidecar...); nothing changed."""


@dataclass(eq=False)
class LoraEntry:
    """One LoRA file. Listing fields come from the header and the folder listing; `metadata` (all
    kohya metadata, decoded) is read from the header on first access; hashes on first use."""

    name: str                      # file stem
    alias: str                     # ss_output_name, else the stem (A1111)
    path: Path
    root: Path                     # the library folder it was found under
    rel_path: str                  # posix path relative to root, with extension
    rel_folder: str                # posix folder relative to root, "" at the top
    size: int
    mtime: float
    mtime_ns: int
    arch: str = "Unknown"          # SD1 / SD2 / SDXL / Unknown (detected)
    network_type: str = "Unknown"  # LoRA, LoCon, DoRA, LoHa, LoKr, IA3, Full, Norm, GLoRA, OFT, BOFT, Unknown
    rank: int | None = None
    conv_rank: int | None = None
    alpha: float | None = None
    dora: bool = False
    module_count: int = 0
    te_modules: int = 0
    unet_modules: int = 0
    embeddings: int = 0
    has_metadata: bool = False
    sshs_model_hash: str | None = None
    base_model_name: str | None = None   # ss_sd_model_name
    preview: Path | None = None
    description: str = ""
    user_meta: dict[str, Any] = field(default_factory=dict)
    civitai: dict[str, Any] = field(default_factory=lambda: {"trained_words": [], "base_model": None})
    unsafe: bool = False           # pickle file and --allow-pickle not given
    broken: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    data_start: int | None = None  # 8 + header length (safetensors)
    _sha256: str | None = field(default=None, repr=False)
    _addnet: str | None = field(default=None, repr=False)
    _metadata: dict[str, Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _on_hashed: Any = field(default=None, repr=False)

    # ---- derived
    @property
    def is_safetensors(self) -> bool:
        return self.rel_path.lower().endswith(".safetensors")

    @property
    def rel_name(self) -> str:
        """Relative path without extension ("styles/foo"): always resolves to this entry."""
        return os.path.splitext(self.rel_path)[0]

    @property
    def metadata(self) -> dict[str, Any]:
        """All `__metadata__` of the file, JSON-looking values decoded. {} for files without it,
        broken files and pickles. Read on first access (listing does not need it)."""
        if self._metadata is None:
            decoded: dict[str, Any] = {}
            if self.is_safetensors and not self.broken:
                try:
                    decoded = decode_metadata(read_header(self.path).metadata)
                except SafetensorsHeaderError as exc:
                    self.warnings.append(f"metadata could not be read: {exc}")
            self._metadata = decoded
        return self._metadata

    @property
    def tag_frequency(self) -> dict[str, int]:
        """Training tags -> count summed over datasets (`ss_tag_frequency`), most frequent first."""
        return tag_frequency(self.metadata)

    @property
    def effective_arch(self) -> str:
        """The user's "sd version" from name.json when set (A1111 lets it override), else detected."""
        user = self.user_meta.get("sd version")
        return user if user in ("SD1", "SD2", "SDXL") else self.arch

    @property
    def activation_text(self) -> str:
        """User metadata "activation text", else civitai trained words joined with ", "."""
        text = self.user_meta.get("activation text")
        if isinstance(text, str) and text.strip():
            return text.strip()
        return ", ".join(self.civitai.get("trained_words") or [])

    @property
    def preferred_weight(self) -> float | None:
        """User metadata "preferred weight"; None when unset or 0 (A1111: 0 means the default)."""
        weight = self.user_meta.get("preferred weight")
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight != 0:
            return float(weight)
        return None

    @property
    def negative_text(self) -> str:
        text = self.user_meta.get("negative text")
        return text if isinstance(text, str) else ""

    # ---- hashes
    def _ensure_hashes(self) -> bool:
        with self._lock:
            if self._sha256 is not None:
                return True
            try:
                whole, addnet = file_hashes(self.path, safetensors=self.is_safetensors and self.data_start is not None)
            except HashError as exc:
                if str(exc) not in self.warnings:
                    self.warnings.append(str(exc))
                return False
            self._sha256, self._addnet = whole, addnet
        if self._on_hashed is not None:
            self._on_hashed(self)
        return True

    def hashes_known(self) -> bool:
        return self._sha256 is not None

    def sha256(self, compute: bool = True) -> str | None:
        """Full sha256 of the file (hex); computed on first call unless compute=False."""
        if self._sha256 is None and compute:
            self._ensure_hashes()
        return self._sha256

    def autov2(self, compute: bool = True) -> str | None:
        """AutoV2 hash: sha256 of the whole file, first 10 hex chars."""
        full = self.sha256(compute)
        return full[:AUTOV2_LENGTH] if full else None

    def addnet_hash(self, compute: bool = True) -> str | None:
        """Full sha256 of the bytes after the safetensors header (kohya addnet / Civitai AutoV3)."""
        if self._sha256 is None and compute:
            self._ensure_hashes()
        return self._addnet

    def short_hash(self, compute: bool = True) -> str | None:
        """The 12-hex hash A1111 writes in `Lora hashes`: `sshs_model_hash` if the file has one, else
        the addnet hash (the whole-file sha256 for pickles)."""
        if self.sshs_model_hash:
            return self.sshs_model_hash[:SHORT_HASH_LENGTH]
        if self._sha256 is None and compute:
            self._ensure_hashes()
        full = self._addnet or self._sha256
        return full[:SHORT_HASH_LENGTH] if full else None

    def to_api(self) -> dict[str, Any]:
        """The `/sdapi/v1/loras` item: {"name", "alias", "path", "metadata"}."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


@dataclass
class RefreshReport:
    """What one `refresh()` did. `conflicts` explains duplicate names / aliases and who won."""

    total: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    headers_read: int = 0
    broken: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _preview_problem(path: Path) -> str | None:
    """Why a preview image is not shown (not a regular file, too large), else None. Its pixel count is
    checked when the card's thumbnail is made (lora_ui.files.open_image), before decoding."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror or exc}); no preview"
    if not stat_module.S_ISREG(info.st_mode):
        return f"{path.name}: not a regular file; no preview"
    if info.st_size > MAX_PREVIEW_BYTES:
        return f"{path.name}: {info.st_size} bytes, more than {MAX_PREVIEW_BYTES}; no preview"
    return None


def _sig(stat: os.stat_result) -> list[int]:
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def write_cover(preview_dir: str, path_str: str, sig: list[int], value: str) -> str | None:
    """Decode the first `ssmd_cover_images` image into preview_dir (name keyed by path, size, mtime)."""
    decoded = sidecars.decode_cover_image(value)
    if decoded is None:
        return None
    data, ext = decoded
    key = hashlib.sha1(f"{path_str}|{sig[0]}|{sig[1]}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
    target = Path(preview_dir) / f"{key}.{ext}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(data)
    except OSError:
        return None
    return str(target)


def _die_with_parent(parent_pid: int) -> None:
    """Initializer of the header-reading pool's worker processes: a worker never outlives the app.

    A server killed with SIGKILL runs no clean-up, and its spawn-started workers would go on as
    orphans. On Linux the kernel sends the worker SIGKILL when its parent dies (prctl
    PR_SET_PDEATHSIG); elsewhere (or if prctl is unavailable) a daemon thread checks every half
    second whether the parent is still there. Either way, a parent that died before this ran is
    noticed at once (os.getppid() no longer names it)."""
    import signal

    armed = False
    if os.name == "posix" and hasattr(os, "getppid"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        def watch() -> None:
            tick = threading.Event()
            while os.getppid() == parent_pid:
                tick.wait(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="lora-pool-parent-watch", daemon=True).start()


def read_file_record(job: tuple[str, str, list[int], str]) -> dict[str, Any]:
    """A fresh cache record for one file (runs in worker processes too): the header summary, or the
    error that makes the entry broken. job = (path, file name, [size, mtime_ns], preview folder)."""
    path_str, name, sig, preview_dir = job
    record: dict[str, Any] = {"sig": sig}
    if name.lower().endswith(PICKLE_SUFFIXES):
        record["pickle"] = True
        record["summary"] = None
        return record
    try:
        header = read_header(path_str)
    except SafetensorsHeaderError as exc:
        record["summary"] = None
        record["error"] = str(exc).removeprefix(path_str + ": ")
        return record
    summary = summarize_header(header)
    if summary.module_count == 0:
        record["error"] = ("contains no LoRA network tensors" if header.tensors else "contains no tensors") \
            + "; not a LoRA file"
    record["summary"] = summary.to_dict()
    record["data_start"] = header.data_start
    if summary.cover_image:
        record["cover_source"] = True
        record["cover"] = write_cover(preview_dir, path_str, sig, header.metadata.get("ssmd_cover_images", ""))
    return record


class LoraLibrary:
    """LoRA files under `dirs` (recursive), with sidecars, hashes and a disk cache in `cache_dir`."""

    def __init__(self, dirs: Sequence[Path | str], cache_dir: Path | str | None = None, allow_pickle: bool = False,
                 max_workers: int | None = None):
        """`max_workers`: processes for reading many new headers at once (default: CPU count, at most 8;
        1 = always in this process)."""
        self.max_workers = max(1, max_workers if max_workers is not None else min(8, os.cpu_count() or 1))
        self.dirs: list[Path] = [Path(d) for d in dirs]
        self.cache_dir: Path | None = Path(cache_dir) if cache_dir is not None else None
        self.allow_pickle = allow_pickle
        self._lock = threading.RLock()          # guards the lookup tables, entries and cache records
        self._refresh_lock = threading.Lock()   # one refresh at a time
        self._entries: list[LoraEntry] = []
        self._by_path: dict[str, LoraEntry] = {}
        self._records: dict[str, dict[str, Any]] | None = None  # disk cache, loaded on first refresh
        self._cache_dirty = False
        self._by_stem: dict[str, LoraEntry] = {}
        self._by_alias: dict[str, LoraEntry] = {}
        self._by_rel_name: dict[str, LoraEntry] = {}
        self._by_rooted_name: dict[str, LoraEntry] = {}
        self._by_casefold: dict[str, list[LoraEntry]] = {}
        self.conflicts: list[str] = []
        self._temp_preview_dir: Path | None = None
        self._hash_thread: threading.Thread | None = None
        self._closing = threading.Event()       # set by close(): the hashing thread stops between files

    # ------------------------------------------------------------------ public API
    @property
    def entries(self) -> list[LoraEntry]:
        """All entries in the canonical order (a copy; safe to iterate while refreshing)."""
        with self._lock:
            return list(self._entries)

    def refresh(self) -> RefreshReport:
        """Rescan the folders. Unchanged files (same size and mtime) are not opened; sidecars are
        re-read only when they changed. Bad files become `broken` entries; the scan always finishes."""
        started = time.perf_counter()
        report = RefreshReport()
        # One refresh at a time; readers (resolve, entries, specs_for) are only blocked for the final swap,
        # not for the scan, so generation goes on while a big folder is read.
        with self._refresh_lock:
            with self._lock:
                if self._records is None:
                    self._records = self._load_cache(report)
                old_records = dict(self._records)
                old_by_path = dict(self._by_path)
            # phase 1: list folders; note which files are new or changed (size or mtime differ)
            found: list[tuple[int, Path, str, str, os.stat_result, dict, dict[str, str]]] = []
            listed: set[str] = set()
            to_read: list[tuple[str, str, list[int]]] = []
            for dir_index, root in enumerate(self.dirs):
                if not root.is_dir():
                    report.warnings.append(f"LoRA folder {root} does not exist or is not a folder")
                    continue
                for folder, files in self._walk(root, report):
                    names_lower = {name.lower(): name for name in files}
                    for name, stat in files.items():
                        if stat is None or os.path.splitext(name)[1].lower() not in LORA_SUFFIXES:
                            continue
                        path_str = os.path.join(folder, name)
                        if path_str in listed:
                            continue
                        listed.add(path_str)
                        found.append((dir_index, root, folder, name, stat, files, names_lower))
                        record = old_records.get(path_str)
                        if record is None or record.get("sig") != _sig(stat) or "summary" not in record:
                            to_read.append((path_str, name, _sig(stat)))
            # phase 2: read the headers of new/changed files (in worker processes when there are many)
            fresh = self._read_files(to_read, report)
            # phase 3: entries, reusing unchanged ones
            new_records: dict[str, dict[str, Any]] = {}
            seen: dict[str, LoraEntry] = {}
            order: list[tuple[tuple, LoraEntry]] = []
            for dir_index, root, folder, name, stat, files, names_lower in found:
                path_str = os.path.join(folder, name)
                entry, record = self._entry_for(root, folder, name, stat, files, names_lower, fresh.get(path_str),
                                                old_records.get(path_str), old_by_path.get(path_str), report)
                new_records[path_str] = record
                seen[path_str] = entry
                depth = entry.rel_path.count("/")
                pickle_last = 0 if entry.is_safetensors else 1
                order.append(((dir_index, depth, entry.rel_name.casefold(), pickle_last, entry.rel_path), entry))
            report.removed = sum(1 for p in old_by_path if p not in seen)
            order.sort(key=lambda item: item[0])
            with self._lock:
                if fresh or set(new_records) != set(self._records):
                    self._cache_dirty = True
                self._records = new_records
                self._entries = [entry for _, entry in order]
                self._by_path = seen
                self._build_names(report)
                report.total = len(self._entries)
                report.broken = [f"{e.rel_path}: {e.error}" for e in self._entries if e.broken]
                self._save_cache_if_dirty(report)
        report.seconds = time.perf_counter() - started
        return report

    def resolve(self, name: str) -> LoraEntry | None:
        """The entry a prompt name means (see the module doc for the rule), or None."""
        if not isinstance(name, str):
            return None
        name = name.strip()
        with self._lock:
            slashed = name.replace("\\", "/")
            found = (self._by_stem.get(name) or self._by_alias.get(name)
                     or self._by_rel_name.get(slashed) or self._by_rooted_name.get(slashed))
            if found is not None:
                return found
            candidates = self._by_casefold.get(name.casefold(), [])
            return candidates[0] if len(candidates) == 1 else None

    def name_for(self, entry: LoraEntry, prefer: str = "alias") -> str:
        """A prompt name that resolves to `entry`: its alias (prefer="alias") or stem if that resolves
        to it, else the other, else its relative path without extension, else "<folder name>/<that>",
        else the same two with the extension."""
        order = (entry.alias, entry.name) if prefer == "alias" else (entry.name, entry.alias)
        for candidate in (*order, entry.rel_name, f"{entry.root.name}/{entry.rel_name}", entry.rel_path,
                          f"{entry.root.name}/{entry.rel_path}"):
            if candidate and ":" not in candidate and self.resolve(candidate) is entry:
                return candidate
        return entry.rel_name

    def find_by_hash(self, short_hash: str) -> LoraEntry | None:
        """The entry whose short hash, AutoV2 or full sha256/addnet hash starts with `short_hash`
        (at least 8 hex chars). Known hashes are checked first; then missing ones are computed (and
        cached) in canonical order until one matches."""
        wanted = (short_hash or "").strip().lower()
        if len(wanted) < 8 or any(ch not in "0123456789abcdef" for ch in wanted):
            return None
        entries = self.entries

        def matches(entry: LoraEntry) -> bool:
            hashes = (entry.short_hash(compute=False), entry.sha256(compute=False), entry.addnet_hash(compute=False),
                      (entry.sshs_model_hash or "").lower() or None)
            return any(h and (h.startswith(wanted) or (len(h) < len(wanted) and wanted.startswith(h))) for h in hashes)

        for entry in entries:
            if not entry.broken and matches(entry):
                return entry
        for entry in entries:
            if not entry.broken and not entry.hashes_known():
                entry.sha256()
                if matches(entry):
                    self._save_cache_quietly()
                    return entry
        self._save_cache_quietly()
        return None

    def specs_for(self, tags: Sequence[LoraTag]) -> tuple[list[LoraSpec], list[str]]:
        """Resolve prompt tags to LoraSpecs. Unknown names, broken files and refused pickles give a
        warning naming the tag (with close matches), and are left out."""
        specs: list[LoraSpec] = []
        warnings: list[str] = []
        for tag in tags:
            written = tag.text or f"<{tag.kind}:{tag.name}>"
            entry = self.resolve(tag.name)
            if entry is None:
                warnings.append(f"{written}: no LoRA named '{tag.name}' in the library{self._suggest(tag.name)}; "
                                "ignored")
                continue
            if entry.broken:
                warnings.append(f"{written}: the file {entry.rel_path} cannot be used: {entry.error}; ignored")
                continue
            if entry.unsafe:
                warnings.append(f"{written}: {entry.rel_path} is a pickle file, which can run code when loaded; "
                                "start with --allow-pickle to use it; ignored")
                continue
            # name: as written in the prompt (A1111's mentioned name): "Lora hashes" is keyed by it, so a
            # tag written by its alias finds its hash when the infotext is pasted
            specs.append(LoraSpec(path=entry.path, name=tag.name.strip() or entry.name, te=tag.te, unet=tag.unet_weight, dyn=tag.dyn,
                                  lbw=tag.lbw, start=tag.start, stop=tag.stop))
        return specs, warnings

    def save_user_metadata(self, entry: LoraEntry, values: dict[str, Any]) -> dict[str, Any]:
        """Write `values` into the entry's `name.json` (A1111 keys; other keys in the file are kept;
        None deletes a key), atomically. LibraryError with nothing written on bad values."""
        json_path = entry.path.with_name(entry.name + ".json")
        try:
            written = sidecars.write_user_metadata(json_path, values)
        except sidecars.SidecarError as exc:
            raise LibraryError(f"{entry.rel_path}: {exc}") from None
        with self._lock:
            entry.user_meta = written
            entry.warnings = [w for w in entry.warnings if not w.startswith(json_path.name + ":")]
            record = (self._records or {}).get(str(entry.path))
            if record is not None:
                try:
                    stat = json_path.stat()
                    record.setdefault("sidecars", {})["json"] = [[json_path.name, *_sig(stat)], written, None]
                    self._cache_dirty = True
                except OSError:
                    pass
            self._save_cache_quietly()
        return written

    def start_background_hashing(self) -> threading.Thread:
        """Hash every entry whose hashes are not cached yet, on a background thread; the cache is saved as
        it goes. Returns the thread (already running, or the one still running from before). Not a
        daemon: `close()` stops it between two files and joins it."""
        with self._lock:
            if self._hash_thread is not None and self._hash_thread.is_alive():
                return self._hash_thread
            self._closing.clear()
            thread = threading.Thread(target=self._hash_all, name="lora-library-hashing", daemon=False)
            self._hash_thread = thread
            thread.start()
            return thread

    def wait_for_hashes(self, timeout: float | None = None) -> bool:
        thread = self._hash_thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop background hashing (after the file being hashed) and join it. False (logged) on timeout."""
        self._closing.set()
        done = self.wait_for_hashes(timeout)
        if not done:
            log.warning("LoRA hashing did not stop within %s s", timeout)
        return done

    # ------------------------------------------------------------------ scanning
    def _walk(self, root: Path, report: RefreshReport) -> Iterable[tuple[str, dict[str, os.stat_result | None]]]:
        """(folder, {file name: stat (LoRA files only; None for others)}) for every folder under root.
        Symlinked folders are followed once (loops are cut)."""
        visited: set[str] = set()
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                real = os.path.realpath(folder)
                if real in visited:
                    continue
                visited.add(real)
                scanner = os.scandir(folder)
            except OSError as exc:
                report.warnings.append(f"folder {folder} cannot be listed ({exc.strerror or exc})")
                continue
            files: dict[str, os.stat_result | None] = {}
            subfolders: list[str] = []
            with scanner:
                for item in scanner:
                    try:
                        if item.is_dir():
                            subfolders.append(item.path)
                            continue
                        lowered = item.name.lower()
                        if lowered.endswith(LORA_SUFFIXES) or lowered.endswith((".json", ".txt", ".info")):
                            files[item.name] = item.stat()
                        else:
                            files[item.name] = None
                    except OSError as exc:
                        report.warnings.append(f"{item.path} cannot be read ({exc.strerror or exc})")
            stack.extend(sorted(subfolders, reverse=True))
            yield folder, files

    def _entry_for(self, root: Path, folder: str, name: str, stat: os.stat_result,
                   files: dict[str, os.stat_result | None], names_lower: dict[str, str],
                   fresh_record: dict[str, Any] | None, record: dict[str, Any] | None,
                   previous: LoraEntry | None, report: RefreshReport) -> tuple[LoraEntry, dict[str, Any]]:
        """The entry for one listed file and its cache record: the previous entry object when the file is
        unchanged (hashes and lazily read metadata carry over), else a new one from `fresh_record`."""
        path_str = os.path.join(folder, name)
        sig = _sig(stat)
        if fresh_record is None:
            report.unchanged += 1
            if previous is not None and (previous.size, previous.mtime_ns) != tuple(sig):
                previous = None
        else:
            if record is None and previous is None:
                report.added += 1
            else:
                report.changed += 1
            previous = None
            record = fresh_record

        root_str = str(root)
        if path_str.startswith(root_str + os.sep):  # the usual case; relpath is slow for thousands of files
            rel_path = path_str[len(root_str) + 1:].replace(os.sep, "/")
        else:
            rel_path = os.path.relpath(path_str, root).replace(os.sep, "/")
        rel_folder = os.path.dirname(rel_path)
        stem = os.path.splitext(name)[0]
        summary = record.get("summary")
        if previous is not None:
            entry = previous
        else:
            entry = LoraEntry(name=stem, alias=stem, path=Path(path_str), root=root, rel_path=rel_path,
                              rel_folder=rel_folder, size=sig[0], mtime=sig[1] / 1e9, mtime_ns=sig[1])
            if summary:
                fs = FileSummary.from_dict(summary)
                entry.alias = fs.alias or stem
                for key in ("arch", "network_type", "rank", "conv_rank", "alpha", "dora", "module_count",
                            "te_modules", "unet_modules", "embeddings", "has_metadata", "sshs_model_hash",
                            "base_model_name"):
                    setattr(entry, key, getattr(fs, key))
            entry.data_start = record.get("data_start")
            entry.broken = bool(record.get("error"))
            entry.error = record.get("error")
            entry.unsafe = record.get("pickle", False) and not self.allow_pickle
            entry._sha256 = record.get("sha256")
            entry._addnet = record.get("addnet")
            entry._on_hashed = self._remember_hashes
        entry.unsafe = bool(record.get("pickle", False)) and not self.allow_pickle
        self._apply_sidecars(entry, record, folder, stem, files, names_lower, report)
        return entry, record

    def _read_files(self, to_read: list[tuple[str, str, list[int]]], report: RefreshReport) -> dict[str, dict[str, Any]]:
        """Fresh cache records for new/changed files. Many files: a pool of worker processes (header
        parsing is CPU-bound JSON work); few: in this process."""
        preview_dir = str(self._preview_dir())
        jobs = [(path_str, name, sig, preview_dir) for path_str, name, sig in to_read]
        report.headers_read = sum(1 for _, name, _ in to_read if not name.lower().endswith(PICKLE_SUFFIXES))
        workers = min(self.max_workers, (len(jobs) + POOL_MIN_FILES_PER_WORKER - 1) // POOL_MIN_FILES_PER_WORKER)
        if workers >= 2:
            try:
                context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
                with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with_parent,
                                         initargs=(os.getpid(),)) as pool:
                    # small chunks (~0.1 s of work each): when the queue runs dry, one worker no longer
                    # finishes a big last chunk alone while the other waits
                    chunk = max(8, min(32, len(jobs) // (workers * 8)))
                    records = list(pool.map(read_file_record, jobs, chunksize=chunk))
                return {job[0]: record for job, record in zip(jobs, records)}
            except (OSError, RuntimeError, BrokenProcessPool) as exc:
                report.warnings.append(f"parallel header reading failed ({exc}); reading in this process")
        return {job[0]: read_file_record(job) for job in jobs}

    def _preview_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir / "lora-previews"
        if self._temp_preview_dir is None:
            self._temp_preview_dir = Path(tempfile.mkdtemp(prefix="lora-ui-previews-"))
        return self._temp_preview_dir

    def _apply_sidecars(self, entry: LoraEntry, record: dict[str, Any], folder: str, stem: str,
                        files: dict[str, os.stat_result | None], names_lower: dict[str, str],
                        report: RefreshReport) -> None:
        """Preview / description / name.json / civitai info, re-read only when their (size, mtime) changed."""
        cached = record.setdefault("sidecars", {})
        warnings: list[str] = []

        def cached_read(kind: str, file_name: str | None, reader):
            if file_name is None:
                if kind in cached:
                    del cached[kind]
                    self._cache_dirty = True
                return None, None
            path = Path(folder) / file_name
            stat = files.get(file_name)
            if stat is None:
                try:
                    stat = path.stat()
                except OSError as exc:
                    return None, f"{file_name}: cannot be read ({exc.strerror or exc})"
            sig = [file_name, *_sig(stat)]
            hit = cached.get(kind)
            if hit is not None and hit[0] == sig:
                return hit[1], hit[2]
            value, warning = reader(path)
            cached[kind] = [sig, value, warning]
            self._cache_dirty = True
            return value, warning

        preview_name = sidecars.find_preview_name(stem, names_lower)
        preview_problem = _preview_problem(Path(folder) / preview_name) if preview_name is not None else None
        if preview_problem is not None:
            warnings.append(preview_problem)
        if preview_name is not None and preview_problem is None:
            entry.preview = Path(folder) / preview_name
        else:
            cover = record.get("cover")
            if cover and not os.path.exists(cover) and record.get("cover_source"):
                # cache folder was cleaned: read the header again for the embedded cover image
                try:
                    header = read_header(entry.path)
                    cover = write_cover(str(self._preview_dir()), str(entry.path), record["sig"],
                                        header.metadata.get("ssmd_cover_images", ""))
                except SafetensorsHeaderError:
                    cover = None
                record["cover"] = cover
                self._cache_dirty = True
            entry.preview = Path(cover) if cover else None

        description, warning = cached_read("txt", sidecars.find_description_name(stem, names_lower),
                                           sidecars.read_text_sidecar)
        entry.description = description or ""
        if warning:
            warnings.append(warning)
        user_meta, warning = cached_read("json", names_lower.get(f"{stem}.json".lower()), sidecars.read_json_sidecar)
        entry.user_meta = dict(user_meta) if user_meta else {}
        if warning:
            warnings.append(warning)
        info, warning = cached_read("civitai", names_lower.get(f"{stem}.civitai.info".lower()),
                                    lambda p: (lambda data, w: (sidecars.civitai_fields(data), w))(*sidecars.read_json_sidecar(p)))
        entry.civitai = dict(info) if info else {"trained_words": [], "base_model": None}
        if warning:
            warnings.append(warning)
        entry.warnings = warnings
        for warning in warnings:
            report.warnings.append(f"{entry.rel_path}: {warning}")

    # ------------------------------------------------------------------ names
    def _build_names(self, report: RefreshReport) -> None:
        """Name maps in canonical order (first wins), then one conflict message per shared name."""
        by_stem: dict[str, LoraEntry] = {}
        by_rel: dict[str, LoraEntry] = {}
        by_rooted: dict[str, LoraEntry] = {}
        by_casefold: dict[str, list[LoraEntry]] = {}
        stem_groups: dict[str, list[LoraEntry]] = {}
        alias_groups: dict[str, list[LoraEntry]] = {}
        for entry in self._entries:
            stem_groups.setdefault(entry.name, []).append(entry)
            if entry.alias != entry.name:
                alias_groups.setdefault(entry.alias, []).append(entry)
            by_rel.setdefault(entry.rel_name, entry)
            by_rooted.setdefault(f"{entry.root.name}/{entry.rel_name}", entry)
            by_rel.setdefault(entry.rel_path, entry)  # with extension: tells x.pt from x.safetensors
            by_rooted.setdefault(f"{entry.root.name}/{entry.rel_path}", entry)
            for key in dict.fromkeys((entry.name.casefold(), entry.alias.casefold())):
                by_casefold.setdefault(key, []).append(entry)
        for stem, group in stem_groups.items():
            by_stem[stem] = group[0]
        by_alias = {alias: group[0] for alias, group in alias_groups.items() if alias not in by_stem}
        self._by_stem, self._by_alias = by_stem, by_alias
        self._by_rel_name, self._by_rooted_name = by_rel, by_rooted
        self._by_casefold = by_casefold

        conflicts: list[str] = []
        for stem, group in stem_groups.items():
            if len(group) > 1:
                others = ", ".join(f"'{e.rel_path}' (use <lora:{self.name_for(e, prefer='stem')}:...>)"
                                   for e in group[1:])
                conflicts.append(f"name '{stem}' is used by {len(group)} files: '{group[0].rel_path}' is used; "
                                 f"also {others}")
        for alias, group in alias_groups.items():
            if alias in by_stem:
                owner = by_stem[alias]
                for entry in group:
                    conflicts.append(f"alias '{alias}' of '{entry.rel_path}' is also the file name of "
                                     f"'{owner.rel_path}'; the file name wins (use "
                                     f"<lora:{self.name_for(entry, prefer='stem')}:...> for '{entry.rel_path}')")
            elif len(group) > 1:
                others = ", ".join(f"'{e.rel_path}' (use <lora:{self.name_for(e, prefer='stem')}:...>)"
                                   for e in group[1:])
                conflicts.append(f"alias '{alias}' is used by {len(group)} files: '{group[0].rel_path}' is used; "
                                 f"also {others}")
        self.conflicts = conflicts
        report.conflicts = list(conflicts)

    def _suggest(self, name: str) -> str:
        with self._lock:
            pool = sorted(set(self._by_stem) | set(self._by_alias))
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
        return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""

    # ------------------------------------------------------------------ hashes & cache
    def _remember_hashes(self, entry: LoraEntry) -> None:
        with self._lock:
            record = (self._records or {}).get(str(entry.path))
            if record is not None and record.get("sig") == [entry.size, entry.mtime_ns]:
                record["sha256"] = entry._sha256
                record["addnet"] = entry._addnet
                self._cache_dirty = True

    def _hash_all(self) -> None:
        last_save = time.monotonic()
        for entry in self.entries:
            if self._closing.is_set():
                break
            if entry.broken or entry.hashes_known():
                continue
            entry.sha256()
            if time.monotonic() - last_save > 5.0:
                self._save_cache_quietly()
                last_save = time.monotonic()
        self._save_cache_quietly()

    def _cache_path(self) -> Path | None:
        return self.cache_dir / CACHE_FILE_NAME if self.cache_dir is not None else None

    def _load_cache(self, report: RefreshReport) -> dict[str, dict[str, Any]]:
        path = self._cache_path()
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            report.warnings.append(f"library cache {path} is unreadable ({str(exc)[:80]}); rebuilding it")
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
            report.warnings.append(f"library cache {path} has an old or unknown format; rebuilding it")
            return {}
        return data["files"]

    def _save_cache_if_dirty(self, report: RefreshReport | None = None) -> None:
        path = self._cache_path()
        if path is None or not self._cache_dirty or self._records is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # ASCII escapes: file names that are not valid UTF-8 (surrogate-escaped) still round-trip
            text = json.dumps({"version": CACHE_VERSION, "files": self._records}, ensure_ascii=True,
                              separators=(",", ":"))
            sidecars.atomic_write_text(path, text)
            self._cache_dirty = False
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            # RuntimeError: a record changed while being written out (a refresh or hashing thread);
            # the cache stays dirty and is written next time
            if report is not None:
                report.warnings.append(f"library cache {path} could not be written ({exc})")

    def _save_cache_quietly(self) -> None:
        with self._lock:
            self._save_cache_if_dirty(None)
