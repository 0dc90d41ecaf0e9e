"""The one owner of the loaded model (and the GPU): a single thread that runs queued jobs.

The UI, the REST API and compound jobs (compare, sweep) all go through one `Worker`, so the pipeline
never runs twice at the same time and LoRA state never leaks between requests: before each render
the worker brings the model to exactly the LoRA set written in that request's prompt
(`LoraManager.set_loras`; an unchanged set costs nothing; a prompt without tags clears them).

    worker = Worker.for_model_manager(models, library=library, outputs_dir=out)   # the app's wiring
    result = worker.txt2img(Txt2ImgRequest(prompt="a cat <lora:dark:0.8>")).result()
    worker.submit(lambda session: session.model.name, kind="peek").result()
    worker.progress()            # ProgressState snapshot (step, ETA, preview PNG, ...)
    worker.interrupt(); worker.skip(); worker.shutdown()

A job is any `Callable[[WorkerSession], T]`; it runs on the worker thread with the model, its
LoraManager, the library and the progress tracker. An exception inside a job fails that job's
future only; the worker keeps running and the next job starts from a clean LoRA state.
"""
from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from lora_ui.limits import MAX_SEED  # A1111: random seeds are drawn from [0, 2**32 - 2]
from lora_ui.engine.progress import ProgressState, ProgressTracker

if TYPE_CHECKING:  # imported for annotations only: the worker is built before these may be needed
    from lora_ui.engine.checkpoints import LoadedModel
    from lora_ui.engine.txt2img import Txt2ImgRequest, Txt2ImgResult
    from lora_ui.library import LoraLibrary
    from lora_ui.lora.manager import LoraManager

log = logging.getLogger(__name__)

T = TypeVar("T")


# added to a result's warnings (shown by the UI, in the API's info.warnings) when sampling produced
# NaN/Inf: the image is then black or noise, not what was asked for
NON_FINITE_WARNING = ("the render of seed(s) {seeds} produced non-finite values (NaN/Inf) from step {step} on: "
                      "the image is not valid. A LoRA weight or CFG scale is too large for this model, or a "
                      "LoRA/checkpoint is damaged")


class WorkerStopped(RuntimeError):
    """The worker was shut down; the job did not run."""


class JobFuture(Future, Generic[T]):
    """A `concurrent.futures.Future` that also names its job (`job_id`, `kind`)."""

    def __init__(self, job_id: str, kind: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.kind = kind


@dataclass
class _QueuedJob:
    job: Callable[["WorkerSession"], Any]
    future: JobFuture
    job_count: int
    request: Any = None          # a Txt2ImgRequest that may share a mixed batch (batching on)
    owner: Any = None            # who submitted it (Txt2ImgRequest.owner: the UI's Gradio session, the API's
                                 # user or client address): round-robin across owners, cancel_owner
    batch_plan: Any = None       # (key, specs, warnings) once looked at; False: renders alone


@dataclass(frozen=True)
class BatchingConfig:
    """Opt-in request batching (`Worker(..., batching=BatchingConfig())`).

    window_s: after taking a batchable txt2img request, how long to wait for partners (seconds).
    max_images: images per batch (a request counts its batch_size); bound it by memory.
    Requests share a batch when they share checkpoint, size, sampler, schedule, steps and CFG
    (`engine.batching.batch_key`) and every LoRA of theirs has a low-rank form (`lora.mixed`);
    others render alone through today's path. Jobs are taken round-robin across owners (`fair_order`;
    FIFO within one owner, and FIFO overall when nobody names an owner), batch partners in the same
    order, so one user's long queue never starves another user's request.
    """

    window_s: float = 0.005
    max_images: int = 4

    def __post_init__(self) -> None:
        if self.window_s < 0 or self.max_images < 1:
            raise ValueError(f"BatchingConfig: window_s >= 0 and max_images >= 1, got {self}")


def fair_order(jobs: list, last_served: dict) -> list:
    """The order a round-robin over owners serves `jobs` (queue order; each has `.owner`, None is one owner).

    Each owner's jobs stay in their queue order; owners take turns, the one served longest ago (never: first,
    ties by the queue position of its oldest job) going first in every round. So one owner's 50 queued
    requests cannot starve another owner's single one: it is at most (number of owners - 1) jobs away."""
    by_owner: dict = {}
    for position, job in enumerate(jobs):
        by_owner.setdefault(job.owner, []).append((position, job))
    owners = sorted(by_owner, key=lambda o: (last_served.get(o, -1), by_owner[o][0][0]))
    rounds = max((len(v) for v in by_owner.values()), default=0)
    return [by_owner[o][k][1] for k in range(rounds) for o in owners if k < len(by_owner[o])]


def _default_lora_manager(pipe: Any) -> "LoraManager":
    from lora_ui.lora.manager import LoraManager

    return LoraManager(pipe)


def _default_generate(*args: Any, **kwargs: Any) -> "Txt2ImgResult":
    from lora_ui.engine.txt2img import generate

    return generate(*args, **kwargs)


@dataclass
class WorkerSession:
    """What a job gets, on the worker thread: the model, its LoRA manager, the library, progress.

    Use `txt2img(req)` to render: it applies the prompt's LoRA set, splits the batch count into
    iterations (for progress and skip) and honours interrupt. Only valid while the job runs.
    """

    model: "LoadedModel"
    loras: "LoraManager"
    library: "LoraLibrary | None"
    progress: ProgressTracker
    outputs_dir: Path | None
    job_id: str
    _worker: "Worker" = field(repr=False)
    _iterations_started: int = 0
    _skipped_iteration: bool = False
    _non_finite_step: int | None = None

    @property
    def fan_out(self) -> "Callable[[list], Any] | None":
        """`requests -> iterator of (index, result)` rendering txt2img requests concurrently elsewhere (the
        Ray replicas under --ray; `Worker.fan_out`), or None: grids then render on this worker."""
        return self._worker.fan_out

    @property
    def interrupted(self) -> bool:
        """True once `Worker.interrupt()` was called for this job."""
        return self._worker._is_interrupted(self.job_id)

    def set_loras_for_prompt(self, prompt: str) -> tuple[list, list[str]]:
        """Bring the model to exactly the LoRA set the prompt's `<lora:...>` tags ask for.

        Returns (applied LoraSpecs, warnings for unknown names / malformed tags). No tags -> cleared.
        """
        specs, warnings = specs_for_prompt(self.library, prompt)
        if specs:
            report = self.loras.set_loras(specs)
            warnings = [*warnings, *getattr(report, "skipped", [])]  # another architecture: left out
        else:
            self.loras.clear()
        return list(specs), list(warnings)

    def img2img(self, req: Any) -> "Txt2ImgResult":
        """`txt2img` for an Img2ImgRequest (engine/img2img.py): same LoRA set, iterations, progress."""
        from lora_ui.engine.img2img import generate_img2img

        return self.txt2img(req, generate=generate_img2img, kind="img2img")

    def txt2img(self, req: "Txt2ImgRequest", *, generate: Any = None, kind: str = "txt2img") -> "Txt2ImgResult":
        """Render one request on this worker: its own LoRA set, batch_count iterations, progress.

        Iteration n renders seeds seed + n*batch_size ... (A1111's numbering); seed -1 is drawn once.
        `skip()` ends the current iteration early (its partial image is kept) and goes on;
        `interrupt()` ends it and runs no further iterations.
        """
        _, warnings = self.set_loras_for_prompt(req.prompt)
        self._worker._apply_vae(self.model, getattr(req, "vae", None))
        seed = req.seed if req.seed is not None and req.seed >= 0 else random.randint(0, MAX_SEED)
        results: list = []
        for n in range(max(1, req.batch_count)):
            if n > 0 and self.interrupted:
                break
            self.progress.begin_iteration(self._iterations_started, req.steps,
                                          textinfo=f"{kind}: image {n + 1} of {max(1, req.batch_count)}")
            self._iterations_started += 1
            self._worker._clear_skip(self.job_id)
            self._skipped_iteration = False
            self._non_finite_step = None
            iteration = replace(req, seed=seed + n * req.batch_size, batch_count=1)
            extra = {"upscalers": self._worker.upscalers} if self._worker.upscalers is not None else {}
            result = (generate or self._worker._generate)(
                self.model, iteration, library=self.library, loras=self.loras,
                on_step=self._on_step, outputs_dir=self.outputs_dir, **extra,
            )
            if self._non_finite_step is not None and hasattr(result, "warnings"):
                result = replace(result, warnings=[*result.warnings, NON_FINITE_WARNING.format(
                    seeds=", ".join(str(s) for s in getattr(result, "seeds", [])) or "?",
                    step=self._non_finite_step)])
            if self._skipped_iteration and not self.interrupted and hasattr(result, "interrupted"):
                result = replace(result, interrupted=False)  # skipped, not interrupted: the job goes on
            results.append(result)
        return _merge_results(results, warnings)

    def switch_model(self, ref: str | None) -> "LoadedModel":
        """Switch checkpoints inside this job (e.g. a per-request override); later renders of the job
        use the new model. On failure the old model stays and the exception propagates."""
        self.progress.set_textinfo(f"Loading checkpoint {ref or '(default)'}")
        self.model = self._worker._do_switch(ref)
        self.loras = self._worker._current_loras()
        return self.model

    def switch_keeping_loras(self, ref: str | None, prompt: str = "") -> "SwitchReport":
        """Switch checkpoints and bring the prompt's LoRAs onto the new model at once: one message per
        LoRA that does not fit it (no key matches, a shape error) so the user knows before rendering."""
        from lora_ui.prompt import extract_lora_tags

        model = self.switch_model(ref)
        report = SwitchReport(model)
        _, tags, _ = extract_lora_tags(prompt or "")
        if not tags or self.library is None:
            return report
        specs, warnings = self.library.specs_for(tags)
        report.messages += list(warnings)
        fitting = []
        for spec in specs:
            try:
                applied = self.loras.set_loras([spec])
            except Exception as exc:  # noqa: BLE001 - LoraError or a shape error: this LoRA does not fit
                report.messages.append(f"LoRA '{spec.name}' does not fit {model.name} ({model.arch.upper()}): {exc}")
                continue
            if getattr(applied, "skipped", None):  # made for another architecture: the manager left it out
                report.messages.append(f"LoRA '{spec.name}' does not fit {model.name} ({model.arch.upper()}): "
                                       + "; ".join(applied.skipped))
                continue
            one = applied.loras[0] if getattr(applied, "loras", None) else None
            if one is not None and one.matched_keys == 0:
                report.messages.append(f"LoRA '{spec.name}' does not fit {model.name} ({model.arch.upper()}): "
                                       "none of its keys match a layer of this model; it has no effect")
                continue
            fitting.append(spec)
            report.kept.append(spec.name)
        try:
            self.loras.set_loras(fitting) if fitting else self.loras.clear()
        except Exception as exc:  # noqa: BLE001
            report.messages.append(f"the LoRAs could not be applied together: {exc}")
            self.loras.clear()
        return report

    def _on_step(self, step: int, total: int, latents: Any = None) -> None:
        """Called by txt2img.generate after each denoising step; raising stops the sampling."""
        from lora_ui.engine.txt2img import GenerationInterrupted

        self.progress.step(step, total, latents, self.model.arch)
        if latents is not None and self._non_finite_step is None and (step >= total or step % 5 == 0):
            import torch

            if not bool(torch.isfinite(latents).all()):
                self._non_finite_step = step
        if self._worker._is_interrupted(self.job_id):
            raise GenerationInterrupted("interrupted")
        if self._worker._is_skipped(self.job_id):
            self._skipped_iteration = True
            raise GenerationInterrupted("skipped")


def _owner_of(req: Any, owner: Any) -> Any:
    """The job's owner: the one given, else the request's own `owner` field (None: submit's owner_provider)."""
    return owner if owner is not None else getattr(req, "owner", None)


def specs_for_prompt(library: "LoraLibrary | None", prompt: str) -> tuple[list, list[str]]:
    """(LoraSpecs, warnings) of the prompt's `<lora:...>` tags, resolved by the library; nothing applied."""
    from lora_ui.prompt import extract_lora_tags

    _, tags, warnings = extract_lora_tags(prompt)
    specs: list = []
    if tags:
        if library is None:
            warnings = [*warnings, "no LoRA library is configured; <lora:...> tags were ignored"]
        else:
            specs, spec_warnings = library.specs_for(tags)
            warnings = [*warnings, *spec_warnings]
    return list(specs), list(warnings)


@dataclass
class SwitchReport:
    """A checkpoint switch: the new model, the prompt's LoRAs kept on it, a message per one that does not fit."""

    model: "LoadedModel"
    kept: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _merge_results(results: list, warnings: list[str]) -> "Txt2ImgResult":
    """Concatenate per-iteration results into one (images, infotexts, seeds, saved paths in order)."""
    first = results[0]
    merged_warnings = list(dict.fromkeys([*warnings, *(w for r in results for w in r.warnings)]))
    changes: dict[str, Any] = dict(
        images=[im for r in results for im in r.images],
        infotexts=[t for r in results for t in r.infotexts],
        seeds=[s for r in results for s in r.seeds],
        saved_paths=[p for r in results for p in r.saved_paths],
        warnings=merged_warnings,
    )
    if hasattr(first, "interrupted"):
        changes["interrupted"] = any(getattr(r, "interrupted", False) for r in results)
    return replace(first, **changes)


class Worker:
    """Single thread owning the loaded model and its LoraManager; runs queued jobs round-robin across
    owners (FIFO within one owner; `fair_order`).

    model: the LoadedModel, or a zero-argument callable returning the current one (`ModelManager.require`),
        called on the worker thread at the start of every job: a slow first load does not block
        start-up, a failed load fails that job only, and a model switched elsewhere is picked up
        (with a fresh LoraManager) at the next job.
    switch_model: `ref -> LoadedModel` (ModelManager.switch): loads another checkpoint, frees the old
        one, and on failure raises and keeps the old one loaded.
    lora_manager_factory: `pipe -> LoraManager` (default `LoraManager(pipe)`), built per loaded model.
    generate: the render function (default `lora_ui.engine.txt2img.generate`).
    fan_out: `requests -> iterator of (index, result)` for the cells of sweeps and X/Y/Z plots
        (`RayWorker.sweep` under --ray), else None: they render one by one on this worker.
    """

    def __init__(
        self,
        model: "LoadedModel | Callable[[], LoadedModel]",
        *,
        switch_model: "Callable[[str], LoadedModel] | None" = None,
        library: "LoraLibrary | None" = None,
        outputs_dir: Path | None = None,
        lora_manager_factory: "Callable[[Any], LoraManager] | None" = None,
        generate: "Callable[..., Txt2ImgResult] | None" = None,
        name: str = "lora-ui-worker",
        batching: BatchingConfig | None = None,
        vae_manager: Any = None,
        upscalers: Any = None,
        fan_out: "Callable[[list], Any] | None" = None,
    ) -> None:
        self.fan_out = fan_out
        self._model_provider = model if callable(model) else None
        self._model: LoadedModel | None = None if callable(model) else model
        self._switch_model = switch_model
        self.library = library
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self._make_lora_manager = lora_manager_factory or _default_lora_manager
        self._generate = generate or _default_generate
        self.upscalers = upscalers                # engine.upscalers.Upscalers for hires fix / extras
        self._loras: LoraManager | None = None
        self.batching = batching
        self._batch_job_ids: frozenset[str] = frozenset()   # the requests of the running mixed batch
        self._batch_interrupted: set[str] = set()
        self._batch_skipped = False
        self._request_progress: dict[str, tuple[int, int]] = {}
        self.batches_run: list[int] = []                    # requests per mixed batch, in order (stats)
        self.completed: deque[str] = deque(maxlen=1024)     # job ids in the order they finished (stats, tests)
        self._last_served: dict[Any, int] = {}              # owner -> tick of its last started job (round-robin)
        self._ticks = itertools.count()
        self.vaes = vae_manager  # engine/vae.VaeManager or None (then the model's VAE is never changed)

        self._queue: queue.Queue[_QueuedJob | None] = queue.Queue()
        self._progress = ProgressTracker()
        self._lock = threading.Lock()             # guards the fields below
        self._current_job_id: str | None = None
        self._interrupt_job_id: str | None = None
        self._skip_job_id: str | None = None
        self._stopped = False
        self._ids = itertools.count(1)
        self._owners: dict[str, tuple[Any, JobFuture]] = {}  # job id -> (owner, future): queued/running jobs
        self._doomed: set[str] = set()            # jobs of a cancelled owner: interrupted as soon as they start
        # called on the submitting thread when submit() gets no owner (the UI sets it to read the Gradio
        # session of the request being handled); None: jobs have no owner unless one is given
        self.owner_provider: Callable[[], Any] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def for_model_manager(cls, models: Any, **kwargs: Any) -> "Worker":
        """The app's wiring: the worker renders `models.require()` and switches through `models.switch`."""
        kwargs.setdefault("vae_manager", getattr(models, "vaes", None))
        return cls(models.require, switch_model=models.switch, **kwargs)

    # ---------------------------------------------------------------- public API (any thread)
    def submit(self, job: "Callable[[WorkerSession], T] | Txt2ImgRequest", *, kind: str = "job",
               job_count: int = 1, _request: Any = None, owner: Any = None) -> JobFuture[T]:
        """Queue `job(session)`; returns its future. `job_count` announces how many renders it does.

        `owner` tags the job (the UI passes its Gradio session hash) so `cancel_owner(owner)` can end it
        when that page goes away; without one, `owner_provider()` (when set) names it.
        A Txt2ImgRequest instead of a callable is queued as `txt2img(request)` (the older contract)."""
        if not callable(job):
            return self.txt2img(job, owner=owner)
        if owner is None and self.owner_provider is not None:
            try:
                owner = self.owner_provider()
            except Exception as exc:  # noqa: BLE001 - an owner is a convenience; the job runs without one
                log.debug("owner_provider failed: %s", exc)
                owner = None
        if threading.current_thread() is self._thread:
            raise RuntimeError("submit() was called from inside a worker job: the job would wait for itself "
                               "forever; render through the job's WorkerSession (session.txt2img) instead")
        job_id = f"{kind}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        future: JobFuture[T] = JobFuture(job_id, kind)
        with self._lock:
            if self._stopped:
                raise WorkerStopped("the worker is shut down; no new jobs are accepted")
            if owner is not None:
                self._owners[job_id] = (owner, future)
            self._queue.put(_QueuedJob(job, future, max(1, job_count), request=_request, owner=owner))
        if owner is not None:
            future.add_done_callback(lambda f: self._forget_owner(f.job_id))
        self._progress.set_queue_size(self._queue.qsize())
        return future

    def txt2img(self, req: "Txt2ImgRequest", *, owner: Any = None) -> JobFuture["Txt2ImgResult"]:
        """Queue one txt2img request (its prompt carries its full LoRA set; `req.owner` names who asked)."""
        return self.submit(lambda session: session.txt2img(req), kind="txt2img", job_count=max(1, req.batch_count),
                           _request=req if self.batching is not None else None, owner=_owner_of(req, owner))

    def img2img(self, req: Any, *, owner: Any = None) -> JobFuture["Txt2ImgResult"]:
        """Queue one img2img request (engine/img2img.py Img2ImgRequest)."""
        return self.submit(lambda session: session.img2img(req), kind="img2img", job_count=max(1, req.batch_count),
                           owner=_owner_of(req, owner))

    def cancel_owner(self, owner: Any) -> dict[str, int]:
        """The owner (a closed page's session) is gone: cancel its queued jobs, interrupt its running one.

        Returns {"cancelled": queued jobs cancelled, "interrupted": running jobs interrupted}. Jobs of
        other owners, and jobs without one (the REST API's), are untouched."""
        if owner is None:
            return {"cancelled": 0, "interrupted": 0}
        with self._lock:
            mine = {job_id: future for job_id, (who, future) in self._owners.items() if who == owner}
            self._doomed |= set(mine)  # one taken off the queue but not yet started is interrupted at its start
        if mine:
            with self._queue.mutex:
                for q in [q for q in self._queue.queue if q is not None and q.future.job_id in mine]:
                    self._queue.queue.remove(q)
        cancelled = sum(1 for future in mine.values() if future.cancel())  # False for a running one
        interrupted = 0
        with self._lock:
            running = set(self._batch_job_ids) if self._batch_job_ids else {self._current_job_id} - {None}
        for job_id in running & set(mine):
            if self.interrupt(job_id):
                interrupted += 1
        if cancelled:
            self._progress.set_queue_size(self._queue.qsize())
        return {"cancelled": cancelled, "interrupted": interrupted}

    def owner_of(self, job_id: str) -> Any:
        """The owner a queued or running job was submitted with (None: none, or the job has ended)."""
        with self._lock:
            entry = self._owners.get(job_id)
        return entry[0] if entry is not None else None

    def _forget_owner(self, job_id: str) -> None:
        with self._lock:
            self._owners.pop(job_id, None)
            self._doomed.discard(job_id)

    def switch_model(self, ref: str) -> JobFuture["LoadedModel"]:
        """Queue a checkpoint switch, run between renders; on failure the old model stays loaded."""
        if self._switch_model is None:
            raise ValueError("this worker was built without a switch_model function; it cannot change models")
        return self.submit(lambda session: session.switch_model(ref), kind="switch_model")

    def switch_checkpoint(self, ref: str | None, prompt: str = "") -> JobFuture["SwitchReport"]:
        """Queue a checkpoint switch that keeps the prompt's LoRAs (see WorkerSession.switch_keeping_loras)."""
        if self._switch_model is None:
            raise ValueError("this worker was built without a switch_model function; it cannot change models")
        return self.submit(lambda session: session.switch_keeping_loras(ref, prompt), kind="switch_model")

    def progress(self, with_preview: bool = True) -> ProgressState:
        return self._progress.snapshot(with_preview=with_preview)

    def interrupt(self, job_id: str | None = None) -> bool:
        """End the current job early (its result holds what was done). Returns whether a job was hit.

        With `job_id`, only that job is interrupted (and only if it is the one running)."""
        with self._lock:
            if self._batch_job_ids:  # a mixed batch: stop one request of it, or all of them
                hit = self._batch_job_ids if job_id is None else self._batch_job_ids & {job_id}
                if not hit:
                    return False
                self._batch_interrupted |= set(hit)
                if self._batch_interrupted >= self._batch_job_ids:
                    self._progress.mark_interrupted()
                return True
            current = self._current_job_id
            if current is None or (job_id is not None and job_id != current):
                return False
            self._interrupt_job_id = current
            self._progress.mark_interrupted()  # under the lock: the job cannot end in between
        return True

    def request_progress(self, job_id: str) -> tuple[int, int] | None:
        """(steps done, total) of a request rendering in a mixed batch; None when it is not in one."""
        with self._lock:
            return self._request_progress.get(job_id)

    def skip(self) -> bool:
        """End the current image/iteration of a batch-count loop early and go on with the next one."""
        with self._lock:
            if self._current_job_id is None:
                return False
            self._skip_job_id = self._current_job_id
            self._batch_skipped = bool(self._batch_job_ids)
        self._progress.mark_skipped()
        return True

    @property
    def model(self) -> "LoadedModel | None":
        """The loaded model (None before a lazy model was first loaded). Read-only for other threads."""
        return self._model

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current_job_id is not None or not self._queue.empty()

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> bool:
        """Stop accepting jobs, cancel queued ones, interrupt the running one, end the thread and give
        the LoRA manager's memory and background thread back. Returns False (and logs a warning) when
        the worker thread did not end within `timeout`; then the LoRA manager is left to it."""
        with self._lock:
            if self._stopped:
                return not self._thread.is_alive()
            self._stopped = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.future.cancel()
        self.interrupt()
        self._queue.put(None)
        if not wait:
            return False
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the worker thread did not stop within %s s (a render is still running)", timeout)
            return False
        self._close_loras()  # the worker thread has ended: nothing else touches the manager now
        return True

    # ---------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            item = self._take_fair(item)
            if self.batching is not None and item.request is not None:
                self._run_batchable(item)
                continue
            if not item.future.set_running_or_notify_cancel():
                continue
            self._run_one(item)

    def _take_fair(self, item: _QueuedJob) -> _QueuedJob:
        """`item` was taken from the queue's front: return the job round-robin picks instead (`fair_order`),
        `item` going back to the front. Only this thread takes from the queue."""
        with self._queue.mutex:
            queued = [q for q in self._queue.queue if q is not None]
            if not queued:
                return item
            chosen = fair_order([item, *queued], self._last_served)[0]
            if chosen is not item:
                self._queue.queue.remove(chosen)
                self._queue.queue.appendleft(item)
        return chosen

    def _mark_served(self, owner: Any) -> None:
        """A job of `owner` starts: it goes to the back of the round-robin."""
        self._last_served[owner] = next(self._ticks)
        if len(self._last_served) > 4096:  # forget owners with nothing queued (they come back as new)
            with self._queue.mutex:
                queued = {q.owner for q in self._queue.queue if q is not None}
            self._last_served = {o: t for o, t in self._last_served.items() if o in queued or o == owner}

    def _run_one(self, item: _QueuedJob) -> None:
        job_id = item.future.job_id
        self._mark_served(item.owner)
        with self._lock:
            self._current_job_id = job_id
            self._interrupt_job_id = job_id if job_id in self._doomed else None
            self._skip_job_id = None
            self._progress.begin_job(job_id, item.future.kind, item.job_count, queue_size=self._queue.qsize())
        result: Any = None
        error: BaseException | None = None
        try:
            result = item.job(self._session(job_id))
        except BaseException as exc:  # noqa: BLE001 - a job's failure belongs to its future only
            log.warning("job %s failed: %s", job_id, exc, exc_info=not isinstance(exc, (ValueError, KeyError)))
            self._reset_loras_after_failure()
            error = exc
        with self._lock:
            self._current_job_id = None
            self._interrupt_job_id = None
            self._skip_job_id = None
        self._progress.end_job(queue_size=self._queue.qsize())
        self.completed.append(job_id)
        # resolved after the state is reset: whoever waits on the future then sees an idle worker
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)

    # ---------------------------------------------------------------- mixed batches (worker thread)
    def _batch_plan(self, item: _QueuedJob, model: "LoadedModel"):
        """(key, specs, warnings) when the request can share a mixed batch, else False (cached)."""
        if item.batch_plan is None:
            from lora_ui.engine.batching import batch_key
            from lora_ui.lora.mixed import mix_blocker

            item.batch_plan = False
            key = batch_key(model, item.request)
            if key is not None:
                try:
                    from lora_ui.lora.manager import ApplyReport

                    specs, warnings = specs_for_prompt(self.library, item.request.prompt)
                    report = ApplyReport()
                    if mix_blocker(self._current_loras().resolve(specs, report)) is None:
                        item.batch_plan = (key, specs, [*warnings, *report.skipped])
                except Exception as exc:  # noqa: BLE001 - a bad LoRA fails this request on its own path
                    log.info("request %s renders alone: %s", item.future.job_id, exc)
        return item.batch_plan

    def _run_batchable(self, head: _QueuedJob) -> None:
        """The fair head of the queue is a txt2img request: gather partners for a batching window (in
        round-robin order after it), render them in one mixed batch, or alone on today's path."""
        try:
            model = self._ensure_model()
            plan = self._batch_plan(head, model)
        except Exception:  # noqa: BLE001 - the ordinary path reports the failure on the future
            plan = False
        if not plan:
            if head.future.set_running_or_notify_cancel():
                self._run_one(head)
            return
        assert self.batching is not None
        batch = [head]
        images = int(head.request.batch_size)
        deadline = time.monotonic() + self.batching.window_s
        while images < self.batching.max_images:
            with self._queue.mutex:
                waiting = [q for q in self._queue.queue if q is not None and q.request is not None]
            for candidate in self._partner_order(head, waiting):
                if candidate.future.cancelled():
                    continue
                other = self._batch_plan(candidate, model)
                n = int(candidate.request.batch_size)
                if other and other[0] == plan[0] and images + n <= self.batching.max_images:
                    with self._queue.mutex:
                        try:
                            self._queue.queue.remove(candidate)
                        except ValueError:
                            continue
                    batch.append(candidate)
                    images += n
                    if images >= self.batching.max_images:
                        break
            remaining = deadline - time.monotonic()
            if images >= self.batching.max_images or remaining <= 0:
                break
            time.sleep(min(remaining, 0.001))
        batch = [q for q in batch if q.future.set_running_or_notify_cancel()]
        if batch:
            self._run_mixed(batch)

    def _partner_order(self, head: _QueuedJob, waiting: list[_QueuedJob]) -> list[_QueuedJob]:
        """Batch partners in the order round-robin would serve them, the head's owner just served."""
        served = dict(self._last_served)
        served[head.owner] = max(served.values(), default=0) + 1
        return fair_order(waiting, served)

    def _run_mixed(self, batch: list[_QueuedJob]) -> None:
        from lora_ui.engine.batching import BatchItem, render_batch
        from lora_ui.engine.txt2img import GenerationInterrupted

        ids = [q.future.job_id for q in batch]
        for q in batch:
            self._mark_served(q.owner)
        with self._lock:
            self._current_job_id = ids[0]
            self._batch_job_ids = frozenset(ids)
            self._batch_interrupted = set(ids) & self._doomed
            self._batch_skipped = False
            self._interrupt_job_id = self._skip_job_id = None
            self._request_progress = {}
            self._progress.begin_job(ids[0], "txt2img", 1, queue_size=self._queue.qsize())
        self._progress.begin_iteration(0, int(batch[0].request.steps),
                                       textinfo=f"txt2img: mixed batch of {len(batch)} requests")
        self.batches_run.append(len(batch))
        model = self._ensure_model()

        def on_step_for(job_id: str, first: bool):
            def on_step(done: int, total: int, latents: Any = None) -> None:
                with self._lock:
                    self._request_progress[job_id] = (done, total)
                    stop = job_id in self._batch_interrupted or self._batch_skipped
                if first:
                    self._progress.step(done, total, latents, model.arch)
                if stop:
                    raise GenerationInterrupted("interrupted")
            return on_step

        items = [BatchItem(q.request, list(q.batch_plan[1]), list(q.batch_plan[2]), on_step_for(q.future.job_id, i == 0))
                 for i, q in enumerate(batch)]
        outcomes: list = []
        try:
            outcomes = render_batch(model, items, manager=self._current_loras(), mixed=True, library=self.library,
                                    outputs_dir=self.outputs_dir)
        except Exception as exc:  # noqa: BLE001 - then each request alone, so a failure is its own
            log.warning("mixed batch of %d failed (%s); rendering its requests one by one", len(batch), exc)
            self._reset_loras_after_failure()
            outcomes = []
            for item in items:
                try:
                    outcomes.append(render_batch(model, [item], manager=self._current_loras(), mixed=True,
                                                 library=self.library, outputs_dir=self.outputs_dir)[0])
                except Exception as one:  # noqa: BLE001
                    self._reset_loras_after_failure()
                    outcomes.append(one)
        with self._lock:
            skipped = self._batch_skipped
            interrupted = set(self._batch_interrupted)
            self._current_job_id = None
            self._batch_job_ids = frozenset()
            self._batch_interrupted = set()
            self._batch_skipped = False
            self._skip_job_id = self._interrupt_job_id = None
            self._request_progress = {}
        self._progress.end_job(queue_size=self._queue.qsize())
        self.completed.extend(ids)
        for q, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                q.future.set_exception(outcome)
                continue
            if skipped and q.future.job_id not in interrupted and getattr(outcome, "interrupted", False):
                outcome = replace(outcome, interrupted=False)
            q.future.set_result(outcome)

    def _session(self, job_id: str) -> WorkerSession:
        model = self._ensure_model()
        return WorkerSession(model=model, loras=self._current_loras(), library=self.library,
                             progress=self._progress, outputs_dir=self.outputs_dir, job_id=job_id, _worker=self)

    def _current_loras(self) -> "LoraManager":
        """The LoRA manager of the loaded model, built on first use after a (re)load."""
        if self._loras is None:
            assert self._model is not None
            self._loras = self._make_lora_manager(self._model.pipe)
        return self._loras

    def _ensure_model(self) -> "LoadedModel":
        if self._model_provider is not None:
            model = self._model_provider()
            if model is not self._model:
                self._model = model
                self._close_loras()
                self._loras = None  # another pipeline: its own, empty LoRA manager
        assert self._model is not None
        return self._model

    def _do_switch(self, ref: str | None) -> "LoadedModel":
        assert self._switch_model is not None
        new_model = self._switch_model(ref)  # raises and keeps the old model on failure
        self._model = new_model
        self._close_loras()
        self._loras = None  # a new pipeline: a fresh manager, no LoRAs applied
        return new_model

    def _apply_vae(self, model: "LoadedModel", choice: str | None) -> None:
        """Bring the model's VAE to `choice` (None: the VAE manager's current selection)."""
        if self.vaes is not None and getattr(model, "pipe", None) is not None and hasattr(model, "base_vae"):
            self.vaes.apply(model, choice)

    def _close_loras(self) -> None:
        """The old pipeline is going away: give its LoRA manager's pooled memory back now."""
        close = getattr(self._loras, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the manager is dropped either way
                log.warning("closing the old LoRA manager failed: %s", exc)

    def _reset_loras_after_failure(self) -> None:
        """After a failed job, unload all LoRAs so the next job starts from the plain model."""
        if self._loras is None:
            return
        try:
            self._loras.clear()
        except Exception as exc:  # noqa: BLE001 - a broken manager is replaced by a fresh one
            log.error("could not clear LoRAs after a failed job (%s); rebuilding the LoRA manager", exc)
            self._loras = None

    def _is_interrupted(self, job_id: str) -> bool:
        with self._lock:
            return self._interrupt_job_id == job_id

    def _is_skipped(self, job_id: str) -> bool:
        with self._lock:
            return self._skip_job_id == job_id

    def _clear_skip(self, job_id: str) -> None:
        with self._lock:
            if self._skip_job_id == job_id:
                self._skip_job_id = None
