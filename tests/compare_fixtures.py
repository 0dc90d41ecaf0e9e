"""Shared by the compare tests (tests/test_compare.py, tests/ui/test_compare_tab.py); no tests here.

- pytest fixtures `pipe` (the tiny SD1 pipeline, once per module) and `rig` (the real Worker, library and
  LoraManager around it, over the module's own `lora_files` fixture): import them into a test module;
- `tiny_lora_files(...)`: the LoRA files a module's `lora_files` fixture returns;
- `InterruptingWorker`: a worker whose renders stop after k (the user pressed Interrupt), for the
  partial-sweep tests, in the core and in the tab.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from lora_ui.prompt import extract_lora_tags
from lora_ui.testing.tiny_models import tiny_sd1_pipeline
from tests.test_compare_support import make_rig, write_tiny_lora
from ui.fakes import FakeProgress, FakeResult


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd1_pipeline(seed=0)


@pytest.fixture
def rig(pipe, lora_files):
    rig = make_rig(pipe, lora_files)
    yield rig
    rig.close()


def tiny_lora_files(pipe, tmp_path_factory, **seeds: int) -> dict[str, Path]:
    """name=seed, ... -> {name: a tiny kohya LoRA file for `pipe`}, all in one fresh folder."""
    folder = tmp_path_factory.mktemp("loras")
    return {name: write_tiny_lora(pipe, folder / f"{name}.safetensors", seed=seed) for name, seed in seeds.items()}


def prompt_colour(prompt: str) -> tuple[int, int, int]:
    """A flat colour that tells renders of different prompts apart."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


class InterruptingSession:
    """A WorkerSession stand-in: `txt2img` renders a flat image in the prompt's colour, reporting the
    prompt's LoRAs as applied. Render number `stop_after + 1` is the one the user interrupts: it comes
    back unfinished (`interrupted=True`, a half-done image) and `interrupted` stays set, as on the worker."""

    def __init__(self, stop_after: int, size: int = 24) -> None:
        self.stop_after = stop_after
        self.size = size
        self.requests: list = []
        self.interrupted = False

    def txt2img(self, req: Any) -> FakeResult:
        self.requests.append(req)
        _, tags, _ = extract_lora_tags(req.prompt)
        if len(self.requests) > self.stop_after:
            self.interrupted = True
            noisy = Image.new("RGB", (self.size, self.size), (255, 0, 255))
            return FakeResult([noisy], [""], [req.seed], [], [], loras=[t.name for t in tags], interrupted=True)
        image = Image.new("RGB", (self.size, self.size), prompt_colour(req.prompt))
        text = f"{req.prompt}\nSteps: {req.steps}, Seed: {req.seed}"
        return FakeResult([image], [text], [req.seed], [], [], loras=[t.name for t in tags])


class InterruptingWorker:
    """Runs each submitted job at once on an InterruptingSession; records (kind, job_count)."""

    library = None

    def __init__(self, stop_after: int) -> None:
        self.session = InterruptingSession(stop_after)
        self.jobs: list[tuple[str, int]] = []

    @property
    def requests(self) -> list:
        return self.session.requests

    def submit(self, job: Callable[[Any], Any], kind: str = "job", job_count: int = 1, owner: Any = None) -> Future:
        self.jobs.append((kind, job_count))
        future: Future = Future()
        try:
            future.set_result(job(self.session))
        except Exception as exc:  # as the real worker does: the job's error goes to its future
            future.set_exception(exc)
        return future

    def progress(self, with_preview: bool = True) -> FakeProgress:
        return FakeProgress()

    def interrupt(self) -> bool:
        return False
