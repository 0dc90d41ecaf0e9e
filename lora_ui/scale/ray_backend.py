"""Ray backend (off by default; `webui.py --ray` / `--ray-address ADDR`): the worker interface over a
Ray Serve deployment with one replica per GPU (CPU replicas without one).

    backend = RayWorker(RayConfig(replicas=2, model_factory="lora_ui.scale.ray_backend:tiny_factory",
                                  factory_kwargs={"lora_dir": "/shared/loras"}))
    result = backend.txt2img(Txt2ImgRequest(prompt="a cat <lora:a:0.8>")).result()
    for index, result in backend.sweep(cells):   # cells stream back as they finish
        ...
    backend.shutdown()                            # joins its threads, serve.shutdown(), ray.shutdown()

Routing: every request carries its LoRA set as a Ray Serve multiplexed model id (`lora_set_key`: the
prompt's tags, normalised); Serve sends it to a replica that already holds that set (the replica's
`lora_set` loader parses the files into its LoraManager cache), else to the least loaded one, and a
replica keeps the `max_loras_per_replica` most recently used sets. Inside a replica the local `Worker`
runs with mixed-LoRA batching, so concurrent requests on one replica share a forward.

Files: every replica builds its model and library with `model_factory(**factory_kwargs)` (a
"module:function" path, imported on the replica); LoRAs and checkpoints are read from a path all nodes
share (NFS, a PVC in KubeRay), with the same validation as locally (no pickles unless allowed).
With `RayWorker(config, library=head_library)` and `config.file_cache_dir`, a request also carries the
sha256 of each of its LoRAs (as the head's library validated them); a replica that has no file with that
hash fetches it once from the head (`scale.files`: a `FileServer` actor pinned to the head node), checks
the hash, validates it as locally and keeps it in its cache folder by hash.

Failure: a request whose replica dies (actor died, unavailable) is retried once through the handle
(Serve routes it to a live replica); a second failure fails that request's future with the error.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lora_ui.engine.worker import BatchingConfig

log = logging.getLogger(__name__)

APP_NAME = "lora-ui"
REPO_ROOT = Path(__file__).resolve().parents[2]


class RayUnavailable(RuntimeError):
    """Ray (with Serve) is not installed: `pip install -r requirements-ray.txt`."""


def require_ray():
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise RayUnavailable(f"--ray needs Ray Serve ({e}); install it with: pip install -r requirements-ray.txt") from e
    return ray


@dataclass(frozen=True)
class RayConfig:
    """address: None starts a local Ray (embedded); "auto" or "ray://head:10001" joins a cluster.
    replicas: initial replicas; max_replicas > replicas turns on Serve autoscaling within the bounds.
    gpus_per_replica: 1 on GPU clusters (one replica per GPU), 0 for CPU replicas."""

    address: str | None = None
    replicas: int = 1
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = 8
    max_loras_per_replica: int = 8
    model_factory: str = "lora_ui.scale.ray_backend:app_factory"
    factory_kwargs: dict = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    num_cpus: int | None = None            # local Ray only: CPUs it may use
    retries: int = 1
    file_cache_dir: str | None = None      # replicas' cache of files fetched from the head by sha256
    allow_pickle: bool = False             # fetched pickles accepted (the app's --allow-pickle)


def lora_set_key(prompt: str) -> str:
    """The multiplexed model id of a request: its LoRA tags (name, weights, dyn, lbw, start/stop), in order."""
    from lora_ui.prompt import extract_lora_tags

    _, tags, _ = extract_lora_tags(prompt)
    if not tags:
        return "none"
    text = "|".join(f"{t.name}:{t.te}:{t.unet}:{t.dyn}:{t.lbw}:{t.start}:{t.stop}" for t in tags)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def import_string(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- model factories (run on the replicas) ------------------------------------------------------

def tiny_factory(lora_dir: str | None = None, seed: int = 0):
    """(tiny SD1 LoadedModel, LoraLibrary over lora_dir): tests and benches."""
    import torch

    from lora_ui.engine.checkpoints import LoadedModel
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd1_pipeline(seed)
    model = LoadedModel(pipe=pipe, arch="sd1", name="tiny", path=None, default_size=32, dtype=torch.float32,
                        device=torch.device("cpu"), scheduler_config=dict(pipe.scheduler.config))
    library = None
    if lora_dir:
        from lora_ui.library import LoraLibrary

        library = LoraLibrary([Path(lora_dir)], cache_dir=None)
        library.refresh()
    return model, library


def app_factory(argv: list[str] | None = None):
    """The app's own model and library, from the same command-line flags as webui.py."""
    from lora_ui.app import build_library
    from lora_ui.engine.checkpoints import ModelManager
    from lora_ui.settings import settings_from_argv

    settings = settings_from_argv(argv or [])
    models = ModelManager(settings)
    return models.require(), build_library(settings, refresh=True)


# ---- the deployment --------------------------------------------------------------------------------

def _fetching_library(library, file_server, cache_dir: str, allow_pickle: bool):
    """The replica's library over its own folders, plus files fetched from the head by sha256."""
    import ray

    from lora_ui.scale.files import FetchingLibrary, HashCache

    def fetch(sha256: str, offset: int, length: int) -> bytes:
        return ray.get(file_server.read.remote(sha256, offset, length))

    return FetchingLibrary(library, HashCache(cache_dir, allow_pickle=allow_pickle), fetch)


def _deployment(config: RayConfig, file_server=None):
    from ray import serve

    @serve.deployment(name="RenderReplica", max_ongoing_requests=config.max_ongoing_requests)
    class RenderReplica:
        def __init__(self, factory: str, kwargs: dict, batching: BatchingConfig, file_server=None,
                     cache_dir: str | None = None, allow_pickle: bool = False):
            import os

            from lora_ui.engine.worker import Worker
            from lora_ui.lora.manager import LoraManager

            self.model, self.library = import_string(factory)(**kwargs)
            if file_server is not None and cache_dir:
                self.library = _fetching_library(self.library, file_server, cache_dir, allow_pickle)
            self.worker = Worker(self.model, library=self.library, batching=batching,
                                 lora_manager_factory=lambda pipe: LoraManager(pipe, keep_shadows_seconds=0))
            self.pid = os.getpid()
            self.loaded_sets: list[str] = []
            self._prompts: dict[str, str] = {}

        @serve.multiplexed(max_num_models_per_replica=config.max_loras_per_replica)
        async def lora_set(self, key: str):
            """Affinity: load (parse into this replica's LoraManager cache) the LoRA set of the request
            that asked first; Serve then routes every request with this key to a replica holding it."""
            import asyncio

            from lora_ui.engine.worker import specs_for_prompt

            prompt = self._prompts.get(key, "")

            def load(session):
                specs, _ = specs_for_prompt(self.library, prompt)
                session.loras.resolve(specs)

            await asyncio.to_thread(lambda: self.worker.submit(load, kind="load_loras").result())
            self.loaded_sets.append(key)
            return key

        async def render(self, req: dict, files: dict | None = None):
            import asyncio

            from lora_ui.engine.txt2img import Txt2ImgRequest

            request = Txt2ImgRequest(**req)
            if files and hasattr(self.library, "provide"):  # LoRAs not here with the head's hash: fetch them
                await asyncio.to_thread(self.library.provide, files)
            key = serve.get_multiplexed_model_id()
            if key:
                self._prompts[key] = request.prompt
                await self.lora_set(key)
            result = await asyncio.to_thread(lambda: self.worker.txt2img(request).result())
            result.warnings.append(f"rendered on replica pid {self.pid}")
            return result

        async def info(self) -> dict:
            cache = getattr(self.library, "cache", None)
            return {"pid": self.pid, "loaded_sets": list(self.loaded_sets), "batches": list(self.worker.batches_run),
                    "fetched": getattr(cache, "fetched", 0)}

        def __del__(self):
            worker = getattr(self, "worker", None)
            if worker is not None:
                worker.shutdown(timeout=10)

    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": config.cpus_per_replica,
                                                     "num_gpus": config.gpus_per_replica}}
    if config.max_replicas and config.max_replicas > config.replicas:
        options["autoscaling_config"] = {"min_replicas": config.replicas, "max_replicas": config.max_replicas,
                                         "target_ongoing_requests": 2}
    else:
        options["num_replicas"] = config.replicas
    return RenderReplica.options(**options).bind(config.model_factory, dict(config.factory_kwargs), config.batching,
                                                 file_server, config.file_cache_dir, config.allow_pickle)


def _start_file_server():
    """The FileServer actor on this (the head's) node: replicas elsewhere fetch files from it by hash."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from lora_ui.scale.files import FileServer

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(FileServer).options(scheduling_strategy=here).remote()


class RayWorker:
    """The worker interface (txt2img futures, sweeps, shutdown) over the Ray Serve deployment."""

    def __init__(self, config: RayConfig = RayConfig(), library=None):
        """`library`: the head's LoraLibrary; with `config.file_cache_dir`, replicas fetch its files by hash."""
        ray = require_ray()
        from ray import serve

        self.config = config
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # replicas import lora_ui from this checkout (a cluster's nodes share the path or the image)
            env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            init: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                                        runtime_env={"env_vars": env})
            if config.address:
                init["address"] = config.address
            elif config.num_cpus is not None:
                init["num_cpus"] = config.num_cpus
            ray.init(**init)
        self._lock = threading.Lock()
        self._stopped = False
        self.retried = 0
        self.library = library
        self._file_server = None
        self._registered: set[str] = set()
        self._register_lock = threading.Lock()
        try:
            if library is not None and config.file_cache_dir:
                self._file_server = _start_file_server()
            serve.start(http_options={"location": "NoServer"})
            self.handle = serve.run(_deployment(config, self._file_server), name=APP_NAME, route_prefix=None)
        except BaseException:
            self._stop_ray()
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(4, 4 * config.replicas),
                                                           thread_name_prefix="lora-ray-client")

    # ---- requests --------------------------------------------------------------------------------
    def txt2img(self, req) -> concurrent.futures.Future:
        with self._lock:
            if self._stopped:
                from lora_ui.engine.worker import WorkerStopped

                raise WorkerStopped("the Ray backend is shut down")
            return self._pool.submit(self._render, req)

    def _render(self, req):
        payload = asdict(req)
        key = lora_set_key(req.prompt)
        files = self._files_for(req.prompt)
        last: BaseException | None = None
        for attempt in range(1 + self.config.retries):
            try:
                response = self.handle.options(multiplexed_model_id=key).render.remote(payload, files)
                return response.result()
            except Exception as exc:  # noqa: BLE001 - a replica failure: retry once elsewhere
                if not _is_replica_failure(exc) or attempt == self.config.retries:
                    raise
                log.warning("replica failed on a request (%s); retrying it once on another replica", exc)
                self.retried += 1
                last = exc
        raise RuntimeError("unreachable") from last

    def _files_for(self, prompt: str) -> dict[str, dict]:
        """name -> FileRef dict of the prompt's LoRAs in the head's library (registered with the file
        server, so a replica without them can fetch them by hash). Unknown names: the replica warns."""
        if self._file_server is None:
            return {}
        import ray

        from lora_ui.prompt import extract_lora_tags
        from lora_ui.scale.files import FileFetchError, file_ref

        files: dict[str, dict] = {}
        for tag in extract_lora_tags(prompt)[1]:
            entry = self.library.resolve(tag.name)
            if entry is None:
                continue
            try:
                ref = file_ref(entry)
            except (OSError, FileFetchError) as exc:
                log.warning("LoRA %s is not offered to the replicas: %s", tag.name, exc)
                continue
            with self._register_lock:  # registered before any request that names it is sent
                if ref.sha256 not in self._registered:
                    ray.get(self._file_server.register.remote(ref.sha256, str(entry.path)))
                    self._registered.add(ref.sha256)
            files[tag.name] = ref.to_dict()
        return files

    def sweep(self, cells) -> Iterator[tuple[int, Any]]:
        """Fan a sweep's / X/Y/Z plot's cells out over the replicas; yields (index, result) as each
        finishes. A cell that fails raises from the iterator (the others are cancelled or drained)."""
        futures = {self.txt2img(cell): i for i, cell in enumerate(cells)}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(list(futures))

    def head_downloads(self) -> dict[str, int]:
        """sha256 -> downloads of it the head's file server started (empty without one)."""
        import ray

        return ray.get(self._file_server.downloads.remote()) if self._file_server is not None else {}

    def replica_info(self) -> list[dict]:
        """Each live replica's pid, loaded LoRA sets and batch sizes (sampled through the router: best effort).
        Asked from this backend's own thread: a Serve handle refuses blocking calls on a thread whose asyncio
        loop is running (a UI or test thread may have one)."""
        return self._pool.submit(self._replica_info).result()

    def _replica_info(self) -> list[dict]:
        seen: dict[int, dict] = {}
        for _ in range(8 * max(1, self.config.replicas)):
            info = self.handle.info.remote().result()
            seen[info["pid"]] = info
        return list(seen.values())

    # ---- lifecycle -------------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, timeout: float | None = 60.0) -> bool:
        with self._lock:
            if self._stopped:
                return True
            self._stopped = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._stop_ray()
        return True

    def _stop_ray(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001
            log.warning("serve.shutdown failed: %s", exc)
        if getattr(self, "_file_server", None) is not None:
            ray.kill(self._file_server)
            self._file_server = None
        if self._owns_ray:
            ray.shutdown()


def _is_replica_failure(exc: BaseException) -> bool:
    from ray import exceptions as rex

    kinds = tuple(k for k in (getattr(rex, n, None) for n in (
        "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError")) if k)
    if isinstance(exc, kinds):
        return True
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
        if isinstance(exc, (DeploymentUnavailableError,)):
            return True
    except ImportError:
        pass
    return isinstance(getattr(exc, "cause", None), kinds)


# ---- the app's wiring (webui.py --ray) -------------------------------------------------------------

class HybridWorker:
    """What AppContext holds with --ray: `txt2img` (UI, REST API) renders on the Ray deployment; sweeps and
    X/Y/Z plots run as local jobs whose cells fan out there (`Worker.fan_out`); every other job (compare,
    switch_model, progress...) stays on the local Worker."""

    def __init__(self, local, remote: RayWorker):
        self.local, self.remote = local, remote

    def txt2img(self, req):
        return self.remote.txt2img(req)

    def sweep(self, cells):
        return self.remote.sweep(cells)

    def __getattr__(self, name):
        return getattr(self.local, name)

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> bool:
        done = self.local.shutdown(wait=wait, timeout=timeout)
        return self.remote.shutdown(wait=wait, timeout=timeout) and done


def replica_argv(settings) -> list[str]:
    """The flags a replica builds its model and library from (the app's own, minus the UI's)."""
    argv = ["--data-dir", str(settings.data_dir), "--device", settings.device, "--precision", settings.precision]
    if settings.ckpt:
        argv += ["--ckpt", settings.ckpt]
    for d in settings.ckpt_dirs[:1]:
        argv += ["--ckpt-dir", str(d)]
    for d in settings.lora_dirs:
        argv += ["--lora-dir", str(d)]
    if settings.allow_pickle:
        argv.append("--allow-pickle")
    return argv


def ray_worker_for_settings(settings, local) -> HybridWorker:
    gpus = 0.0
    try:
        import torch

        gpus = 1.0 if torch.cuda.is_available() and settings.device in ("auto", "cuda") else 0.0
    except ImportError:
        pass
    replicas = settings.ray_replicas or 1
    if settings.ray_replicas is None and gpus:
        replicas = max(1, torch.cuda.device_count())
    config = RayConfig(address=settings.ray_address, replicas=replicas, max_replicas=settings.ray_max_replicas,
                       gpus_per_replica=gpus, factory_kwargs={"argv": replica_argv(settings)},
                       file_cache_dir=str(Path(settings.data_dir) / "cache" / "ray-files"),
                       allow_pickle=bool(settings.allow_pickle))
    remote = RayWorker(config, library=getattr(local, "library", None))
    local.fan_out = remote.sweep  # sweeps and X/Y/Z plots (jobs on the local worker) render their cells on the replicas
    return HybridWorker(local, remote)
