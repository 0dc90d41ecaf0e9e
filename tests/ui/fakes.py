"""Small stand-ins for the core objects the UI talks to (AppContext, library entries, worker, settings),
shaped after docs/ARCHITECTURE.md, so UI handlers are tested without models or a browser."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lora_ui.engine.txt2img import Txt2ImgRequest


@dataclass
class FakeEntry:
    name: str
    path: Path
    arch: str = "sd1"
    network_type: str = "lora"
    alias: str = ""
    rel_folder: str = ""
    size: int = 1000
    mtime: float = 0.0
    rank: int = 4
    metadata: dict = field(default_factory=dict)
    user_meta: dict = field(default_factory=dict)
    preview: Any = None
    hash12: str = "0123456789ab"

    def short_hash(self) -> str:
        return self.hash12

    def sha256(self) -> str:
        return self.hash12 + "0" * 52


class FakeLibrary:
    def __init__(self, entries: list[FakeEntry]) -> None:
        self.entries = list(entries)
        self.refreshed = 0

    def resolve(self, name: str):
        for e in self.entries:
            if e.alias == name:
                return e
        return next((e for e in self.entries if e.name == name), None)

    def find_by_hash(self, short_hash: str):
        return next((e for e in self.entries if e.hash12 == short_hash), None)

    def refresh(self):
        self.refreshed += 1
        for e in self.entries:  # pick up a new `name.preview.png`, as the real library does
            candidate = e.path.with_name(e.path.stem + ".preview.png")
            if candidate.exists():
                e.preview = candidate
        return None

    def save_user_metadata(self, entry: FakeEntry, meta: dict) -> None:
        sidecar = entry.path.with_suffix(".json")
        sidecar.write_text(json.dumps(meta, indent=4), encoding="utf-8")
        entry.user_meta = dict(meta)


@dataclass
class FakeModel:
    arch: str = "sd1"
    default_size: int = 32


class FakeModels:
    def __init__(self, arch: str = "sd1") -> None:
        self.current = FakeModel(arch)


@dataclass
class FakeProgress:
    job_id: str | None = None
    sampling_step: int = 0
    sampling_steps: int = 0
    job_no: int = 0
    job_count: int = 0
    progress: float = 0.0
    eta_relative: float = 0.0
    preview_png: bytes | None = None

    @property
    def active(self) -> bool:
        return self.job_id is not None


@dataclass
class FakeResult:
    """A Txt2ImgResult stand-in (also used by tests/engine/test_worker.py)."""

    images: list
    infotexts: list
    seeds: list
    saved_paths: list
    warnings: list
    loras: list = field(default_factory=list)
    interrupted: bool = False


class FakeWorker:
    """Renders a flat-colour image per request in a thread, stepping through `steps` with progress."""

    def __init__(self, step_seconds: float = 0.01, warnings: list[str] | None = None, fail: str | None = None):
        self.step_seconds = step_seconds
        self.warnings = warnings or []
        self.fail = fail
        self.requests: list = []
        self._state = FakeProgress()
        self.interrupted = 0

    def txt2img(self, req) -> Future:
        self.requests.append(req)
        future: Future = Future()

        def run():
            import io

            steps = req.steps
            for s in range(1, steps + 1):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (s * 10 % 255, 0, 0)).save(buf, format="PNG")
                self._state = FakeProgress("job-1", s, steps, 0, 1, s / steps, 0.5, buf.getvalue())
                time.sleep(self.step_seconds)
            self._state = FakeProgress()
            if self.fail:
                future.set_exception(RuntimeError(self.fail))
                return
            seed = req.seed if req.seed >= 0 else 1234
            image = Image.new("RGB", (32, 32), (seed % 255, 80, 160))
            text = f"{req.prompt}\nSteps: {req.steps}, Sampler: {req.sampler}, Seed: {seed}"
            future.set_result(FakeResult([image], [text], [seed], [], list(self.warnings)))

        threading.Thread(target=run, daemon=True).start()
        return future

    def progress(self):
        return self._state

    def interrupt(self) -> bool:
        self.interrupted += 1
        return self._state.active

    def skip(self) -> bool:
        return False


class FakeSettings:
    def __init__(self, path: Path, fail_save: bool = False) -> None:
        self.config_path = path
        self.fail_save = fail_save
        self.default_lora_weight = 1.0
        self.card_size = 160
        self.outputs_dir = "outputs"
        self.add_lora_hashes_to_infotext = True

    def save(self) -> None:
        if self.fail_save:
            raise OSError(f"{self.config_path}: permission denied")
        data = {k: getattr(self, k) for k in ("default_lora_weight", "card_size", "outputs_dir",
                                              "add_lora_hashes_to_infotext")}
        self.config_path.write_text(json.dumps(data), encoding="utf-8")


@dataclass
class FakeCtx:
    settings: Any
    models: Any
    library: Any
    worker: Any


# Handlers build the core's real request object (a plain dataclass, no model needed).
FakeRequest = Txt2ImgRequest


def make_ctx(tmp_path: Path, arch: str = "sd1", worker: Any = None) -> FakeCtx:
    """A library of three LoRAs: 'style' (SD1, activation text), 'xl_char' (SDXL, in chars/), 'loha_thing'."""
    lora_dir = tmp_path / "Lora"
    (lora_dir / "chars").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, folder, e_arch, kind, size, mtime in (
        ("style", "", "sd1", "lora", 3000, 100.0),
        ("xl_char", "chars", "sdxl", "lokr", 9000, 300.0),
        ("loha_thing", "", "sd1", "loha", 1000, 200.0),
    ):
        path = (lora_dir / folder / f"{name}.safetensors") if folder else (lora_dir / f"{name}.safetensors")
        path.write_bytes(b"x" * 16)
        entries.append(FakeEntry(name, path, e_arch, kind, rel_folder=folder, size=size, mtime=mtime,
                                 hash12=f"{abs(hash(name)) % 16**12:012x}"))
    entries[0].user_meta = {"activation text": "inkstyle", "preferred weight": 0.8, "description": "ink wash look",
                            "custom key": "kept"}
    entries[0].metadata = {"ss_network_dim": "4", "ss_tag_frequency": json.dumps(
        {"ds1": {"ink": 5, "wash": 2}, "ds2": {"ink": 1, "paper": 3}})}
    entries[1].alias = "xlc"
    return FakeCtx(FakeSettings(tmp_path / "config.json"), FakeModels(arch), FakeLibrary(entries),
                   worker or FakeWorker())
