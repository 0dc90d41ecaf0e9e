"""The Worker alone, with fake render/LoRA/library parts: ordering, LoRA sets, failures, interrupt,
skip, progress, model switching, shutdown. (The real pipeline is driven in tests/api/.)"""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_ui.engine.progress import ProgressState, ProgressTracker, latents_to_preview_rgb
from lora_ui.engine.txt2img import GenerationInterrupted
from lora_ui.engine.worker import Worker, WorkerStopped
from lora_ui.lora.spec import LoraSpec
from ui.fakes import FakeResult  # the one fake render result, shared with the UI tests

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------ fakes
@dataclass
class FakeRequest:
    prompt: str = ""
    seed: int = 1
    steps: int = 4
    batch_size: int = 1
    batch_count: int = 1


@dataclass
class FakeModel:
    name: str
    arch: str = "sd1"
    pipe: object = field(default_factory=object)


class FakeLoraManager:
    """Records what the worker asked for; `active` is the set currently applied."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.active: tuple = ()
        self.calls: list = []

    def set_loras(self, specs):
        self.calls.append(("set", tuple(specs)))
        self.active = tuple(specs)

    def clear(self):
        self.calls.append(("clear",))
        self.active = ()

    def close(self):
        self.calls.append(("close",))
        self.active = ()


class FakeLibrary:
    KNOWN = ("a", "b", "c")

    def specs_for(self, tags):
        specs = [LoraSpec(Path(f"/loras/{t.name}.safetensors"), t.name, te=t.te, unet=t.te)
                 for t in tags if t.name in self.KNOWN]
        warnings = [f"unknown LoRA {t.name!r}" for t in tags if t.name not in self.KNOWN]
        return specs, warnings


class FakeGenerate:
    """Renders nothing: records (seed, active LoRA names) per call and calls on_step per step.

    `gate`: when set, step `gate_step` waits on it, so a test can act while a render is mid-way."""

    def __init__(self):
        self.calls: list = []
        self.steps_done: list = []
        self.gate: threading.Event | None = None
        self.gate_step = 2
        self.at_gate = threading.Event()
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()

    def __call__(self, model, req, *, library, loras, on_step, outputs_dir):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            names = tuple(s.name for s in loras.active)
            self.calls.append((model.name, req.seed, req.batch_count, names))
            if "boom" in req.prompt:
                raise RuntimeError("render exploded")
            done, interrupted = 0, False
            for step in range(1, req.steps + 1):
                if self.gate is not None and step == self.gate_step:
                    self.at_gate.set()
                    assert self.gate.wait(10)
                try:
                    on_step(step, req.steps, torch.zeros(1, 4, 8, 8))
                except GenerationInterrupted:
                    done, interrupted = step, True
                    break
                done = step
            self.steps_done.append(done)
            return FakeResult(images=[f"img{req.seed}"], infotexts=[f"seed {req.seed}"], seeds=[req.seed],
                              saved_paths=[], warnings=[], loras=list(loras.active), interrupted=interrupted)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def parts():
    gen = FakeGenerate()
    managers: list[FakeLoraManager] = []

    def factory(pipe):
        managers.append(FakeLoraManager(pipe))
        return managers[-1]

    worker = Worker(FakeModel("m1"), switch_model=None, library=FakeLibrary(),
                    lora_manager_factory=factory, generate=gen)
    yield worker, gen, managers
    worker.shutdown()


# ------------------------------------------------------------------------------------------ tests
def test_jobs_run_one_at_a_time_on_one_thread_in_order(parts):
    worker, gen, _ = parts
    threads, order = set(), []

    def job(i):
        def run(session):
            threads.add(threading.get_ident())
            order.append(i)
            return i * 10
        return run

    futures = []
    submitters = [threading.Thread(target=lambda k=k: futures.append(worker.submit(job(k)))) for k in range(8)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    assert sorted(f.result(10) for f in futures) == [k * 10 for k in range(8)]
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert sorted(order) == list(range(8))
    # renders from many threads never overlap
    results = [worker.txt2img(FakeRequest(prompt=f"p{k}", seed=k)) for k in range(6)]
    assert [r.result(10).seeds for r in results] == [[k] for k in range(6)]
    assert gen.max_running == 1


def test_each_request_gets_exactly_its_own_lora_set(parts):
    worker, gen, managers = parts
    prompts = ["x <lora:a:1>", "x <lora:b:0.5> <lora:c:1>", "x", "x <lora:a:1>", "x <lora:nope:1>"]
    results = [worker.txt2img(FakeRequest(prompt=p, seed=i)).result(10) for i, p in enumerate(prompts)]
    assert [c[3] for c in gen.calls] == [("a",), ("b", "c"), (), ("a",), ()]
    assert len(managers) == 1
    # a request without tags clears what the previous one left
    assert managers[0].calls[2] == ("clear",)
    assert [s.name for s in results[1].loras] == ["b", "c"]
    assert any("nope" in w for w in results[4].warnings)
    assert results[0].warnings == []


def test_batch_count_is_split_into_iterations_with_a1111_seeds(parts):
    worker, gen, _ = parts
    result = worker.txt2img(FakeRequest(seed=100, batch_size=2, batch_count=3)).result(10)
    assert [c[1] for c in gen.calls] == [100, 102, 104]
    assert all(c[2] == 1 for c in gen.calls)
    assert result.seeds == [100, 102, 104] and result.images == ["img100", "img102", "img104"]
    gen.calls.clear()
    random_seeded = worker.txt2img(FakeRequest(seed=-1, batch_size=1, batch_count=2)).result(10)
    first = random_seeded.seeds[0]
    assert 0 <= first <= 4294967294 and random_seeded.seeds == [first, first + 1]


def test_an_exception_fails_only_its_job_and_resets_loras(parts):
    worker, gen, managers = parts
    bad = worker.txt2img(FakeRequest(prompt="boom <lora:a:1>"))
    good = worker.txt2img(FakeRequest(prompt="fine <lora:b:1>", seed=7))
    with pytest.raises(RuntimeError, match="render exploded"):
        bad.result(10)
    assert good.result(10).seeds == [7]
    # after the failure the LoRAs were unloaded before the next job set its own
    calls = managers[0].calls
    assert calls.index(("clear",)) < len(calls) - 1 and calls[-1][0] == "set"
    assert managers[0].active[0].name == "b"
    failing_job = worker.submit(lambda s: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing_job.result(10)
    assert worker.submit(lambda s: s.model.name).result(10) == "m1"


def test_interrupt_ends_the_current_render_and_not_the_next(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    first = worker.txt2img(FakeRequest(steps=10, batch_count=3, seed=1))
    second = worker.txt2img(FakeRequest(steps=10, seed=50))
    assert gen.at_gate.wait(10)
    state = worker.progress()
    assert state.job_id == first.job_id and state.sampling_step == 1 and state.sampling_steps == 10
    assert worker.interrupt(job_id=second.job_id) is False  # not running: not hit
    assert worker.interrupt() is True
    gen.gate.set()
    result = first.result(10)
    assert result.interrupted is True and result.seeds == [1]  # no further iterations
    assert gen.steps_done[0] == 2
    assert second.result(10).interrupted is False and gen.steps_done[1] == 10
    assert worker.interrupt() is False  # idle: nothing to interrupt


def test_skip_ends_only_the_current_iteration(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    fut = worker.txt2img(FakeRequest(steps=5, batch_count=3, seed=10))
    assert gen.at_gate.wait(10)
    assert worker.progress().job_no == 0
    assert worker.skip() is True
    gen.gate.set()
    result = fut.result(10)
    assert result.seeds == [10, 11, 12]
    assert gen.steps_done == [2, 5, 5]
    assert result.interrupted is False  # a skip is not an interrupt


def test_progress_reports_steps_preview_and_goes_idle(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    gen.gate_step = 3
    fut = worker.txt2img(FakeRequest(steps=4, batch_count=2))
    queued = worker.submit(lambda s: None, kind="later")
    assert gen.at_gate.wait(10)
    state = worker.progress()
    assert state.active and state.job == "txt2img" and state.job_count == 2 and state.job_no == 0
    assert state.sampling_step == 2 and state.sampling_steps == 4
    assert state.progress == pytest.approx((0 + 2 / 4) / 2)
    assert state.queue_size == 1
    assert state.preview_png is not None and state.preview_png.startswith(b"\x89PNG")
    assert state.sampling_started_at is not None and state.job_started_at <= state.sampling_started_at
    assert state.textinfo == "txt2img: image 1 of 2"
    gen.gate.set()
    fut.result(10)
    queued.result(10)
    idle = worker.progress()
    assert not idle.active and idle.progress == 0.0 and idle.preview_png is None


def test_switch_model_replaces_model_and_manager_and_failure_keeps_the_old():
    loaded = {"m2": FakeModel("m2")}

    def switch(ref):
        if ref not in loaded:
            raise ValueError(f"Checkpoint {ref!r} not found")
        return loaded[ref]

    managers = []
    gen = FakeGenerate()
    worker = Worker(FakeModel("m1"), switch_model=switch, library=FakeLibrary(),
                    lora_manager_factory=lambda pipe: managers.append(FakeLoraManager(pipe)) or managers[-1],
                    generate=gen)
    try:
        worker.txt2img(FakeRequest(prompt="<lora:a:1>")).result(10)
        with pytest.raises(ValueError, match="not found"):
            worker.switch_model("missing").result(10)
        assert worker.model.name == "m1"
        worker.txt2img(FakeRequest(prompt="<lora:a:1>")).result(10)
        assert len(managers) == 1  # the failed switch (and its LoRA reset) kept the pipeline
        assert worker.switch_model("m2").result(10).name == "m2"
        worker.txt2img(FakeRequest(prompt="<lora:b:1>")).result(10)
        assert [c[0] for c in gen.calls] == ["m1", "m1", "m2"]
        assert len(managers) == 2 and managers[1].pipe is loaded["m2"].pipe
        assert managers[0].calls[-1] == ("close",)  # the old pipeline's pooled memory is given back
        assert ("close",) not in managers[1].calls
    finally:
        worker.shutdown()


def test_a_model_provider_is_asked_each_job_and_a_failed_load_fails_one_job():
    current = {"model": None}

    def provider():
        if current["model"] is None:
            raise RuntimeError("no model yet")
        return current["model"]

    worker = Worker(provider, lora_manager_factory=FakeLoraManager, generate=FakeGenerate())
    try:
        with pytest.raises(RuntimeError, match="no model yet"):
            worker.submit(lambda s: s.model.name).result(10)
        current["model"] = FakeModel("late")
        assert worker.submit(lambda s: s.model.name).result(10) == "late"
        first_manager = worker.submit(lambda s: s.loras).result(10)
        current["model"] = FakeModel("switched elsewhere")
        second_manager = worker.submit(lambda s: s.loras).result(10)
        assert second_manager is not first_manager and second_manager.pipe is current["model"].pipe
    finally:
        worker.shutdown()


def test_submit_from_inside_a_job_is_refused_instead_of_deadlocking(parts):
    worker, _, _ = parts
    with pytest.raises(RuntimeError, match="wait for itself"):
        worker.submit(lambda session: worker.submit(lambda s: 1).result()).result(10)
    assert worker.submit(lambda s: 2).result(10) == 2


def test_a_request_object_passed_to_submit_is_rendered(parts):
    worker, gen, _ = parts
    assert worker.submit(FakeRequest(seed=33)).result(10).seeds == [33]


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    running = worker.txt2img(FakeRequest(steps=5))
    assert gen.at_gate.wait(10)
    queued = worker.submit(lambda s: "never")
    stopper = threading.Thread(target=worker.shutdown)
    stopper.start()
    time.sleep(0.2)
    gen.gate.set()
    stopper.join(10)
    assert running.result(10).interrupted is True
    with pytest.raises(CancelledError):
        queued.result(1)
    with pytest.raises(WorkerStopped):
        worker.submit(lambda s: None)


# ------------------------------------------------------------------------------------------ owners (closed pages)
def test_cancel_owner_cancels_its_queued_jobs_and_interrupts_its_running_one(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    running = worker.txt2img(FakeRequest(steps=10, batch_count=3, seed=1), owner="page-a")
    queued_a = worker.submit(lambda s: "a's second job", owner="page-a")
    queued_b = worker.txt2img(FakeRequest(steps=4, seed=70), owner="page-b")
    ownerless = worker.submit(lambda s: "api job")
    assert gen.at_gate.wait(10)
    assert worker.owner_of(running.job_id) == "page-a" and worker.owner_of(ownerless.job_id) is None
    assert worker.cancel_owner("page-a") == {"cancelled": 1, "interrupted": 1}
    gen.gate.set()
    result = running.result(10)
    assert result.interrupted is True and result.seeds == [1]  # stopped at step 2, no further iterations
    assert gen.steps_done[0] == 2
    with pytest.raises(CancelledError):
        queued_a.result(1)
    # another page's job and the API's job run in full
    assert queued_b.result(10).interrupted is False and gen.steps_done[1] == 4
    assert ownerless.result(10) == "api job"
    assert worker.owner_of(running.job_id) is None  # ended jobs are forgotten
    assert worker.cancel_owner("page-a") == {"cancelled": 0, "interrupted": 0}


def test_cancel_owner_of_an_idle_or_unknown_owner_touches_nothing(parts):
    worker, gen, _ = parts
    gen.gate = threading.Event()
    running = worker.txt2img(FakeRequest(steps=5, seed=3), owner="page-a")
    assert gen.at_gate.wait(10)
    assert worker.cancel_owner("page-z") == {"cancelled": 0, "interrupted": 0}
    assert worker.cancel_owner(None) == {"cancelled": 0, "interrupted": 0}
    gen.gate.set()
    assert running.result(10).interrupted is False and gen.steps_done == [5]


def test_owner_provider_names_the_owner_of_jobs_submitted_without_one(parts):
    worker, gen, _ = parts
    current = threading.local()
    worker.owner_provider = lambda: getattr(current, "owner", None)
    gen.gate = threading.Event()
    current.owner = "page-a"
    compound = worker.submit(lambda s: [s.txt2img(FakeRequest(steps=5, seed=n)).interrupted for n in (1, 2)],
                             kind="compare", job_count=2)
    current.owner = None
    other = worker.txt2img(FakeRequest(steps=3, seed=9))
    assert gen.at_gate.wait(10)
    assert worker.owner_of(compound.job_id) == "page-a" and worker.owner_of(other.job_id) is None
    assert worker.cancel_owner("page-a")["interrupted"] == 1
    gen.gate.set()
    # the interrupt holds for the rest of the compound job: its second render stops at its first step
    assert compound.result(10) == [True, True]
    assert gen.steps_done[:2] == [2, 1]
    assert other.result(10).interrupted is False


# ------------------------------------------------------------------------------------------ progress math
SD1_FACTORS = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                        [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])


def test_latent_preview_is_a1111_cheap_approximation():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 5, 6, generator=gen)
    got = latents_to_preview_rgb(latents, "sd1")
    lat = latents[0].numpy().astype(np.float64)
    want = np.zeros((5, 6, 3))
    for y in range(5):
        for x in range(6):
            for c in range(3):
                value = sum(lat[ch, y, x] * SD1_FACTORS[ch, c] for ch in range(4))
                want[y, x, c] = min(1.0, max(0.0, (value + 1) / 2)) * 255
    assert got.shape == (5, 6, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - np.round(want).astype(int)).max() <= 1
    sdxl = latents_to_preview_rgb(latents, "sdxl")
    assert not np.array_equal(sdxl, got)
    with pytest.raises(ValueError, match="architecture 'sd3'"):
        latents_to_preview_rgb(latents, "sd3")
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        latents_to_preview_rgb(torch.zeros(1, 3, 4, 4), "sd1")


def test_progress_and_eta_formula():
    state = ProgressState(job_id="j", job_count=4, job_no=1, sampling_step=5, sampling_steps=20,
                          job_started_at=100.0, now=110.0)
    done = (1 + 5 / 20) / 4
    assert state.progress == pytest.approx(done)
    assert state.eta_relative == pytest.approx(10.0 / done - 10.0)
    assert ProgressState().progress == 0.0 and ProgressState().eta_relative == 0.0


def test_tracker_preview_is_small_and_job_count_grows():
    tracker = ProgressTracker(preview_max_side=16)
    tracker.begin_job("j", "compare", job_count=1)
    tracker.begin_iteration(0, 3)
    tracker.step(1, 3, torch.zeros(1, 4, 64, 40), "sd1")
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(tracker.snapshot().preview_png))
    assert max(image.size) <= 16
    tracker.begin_iteration(1, 3)
    assert tracker.snapshot().job_count == 2
    tracker.end_job()
    assert tracker.snapshot().job_id is None


def test_tracker_interrupted_flag_outlives_the_job_until_the_next_begins():
    tracker = ProgressTracker()
    tracker.begin_job("a", "txt2img")
    tracker.mark_interrupted()
    tracker.end_job()
    idle = tracker.snapshot()
    assert idle.job_id is None and idle.interrupted is True
    tracker.begin_job("b", "txt2img")
    assert tracker.snapshot().interrupted is False
