"""Ray backend with a local Ray and 2 CPU replicas (bounded: one Ray start for the module).

Without Ray installed these tests are deselected from the default run, and FAIL (never skip) when
asked for with `-m ray` (tests/conftest.py)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from lora_ui.engine.batching import BatchItem, render_batch
from lora_ui.engine.checkpoints import LoadedModel
from lora_ui.engine.txt2img import Txt2ImgRequest
from lora_ui.engine.worker import BatchingConfig, specs_for_prompt
from lora_ui.lora.manager import LoraManager
from lora_ui.testing.tiny_models import tiny_sd1_pipeline
from tests.scale.mixed_fixtures import write_loras

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

SETS = ["<lora:a:0.8>", "<lora:b:1>", "<lora:c:0.7>", "<lora:d:1.2>", "<lora:a:0.3> <lora:b:0.6>",
        "<lora:c:1> <lora:d:0.4>", "<lora:b:0.5> <lora:a:1.1>", "<lora:d:0.9> <lora:c:0.2> <lora:a:0.5>"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from lora_ui.library import LoraLibrary

    folder = tmp_path_factory.mktemp("loras")
    pipe = tiny_sd1_pipeline(0)
    write_loras(pipe, folder)
    model = LoadedModel(pipe=pipe, arch="sd1", name="tiny", path=None, default_size=32, dtype=torch.float32,
                        device=torch.device("cpu"), scheduler_config=dict(pipe.scheduler.config))
    library = LoraLibrary([folder], cache_dir=None)
    library.refresh()
    manager = LoraManager(pipe, mode="lowmem", keep_shadows_seconds=0)
    yield folder, model, library, manager
    manager.close()
    library.close()


@pytest.fixture(scope="module")
def replica_folders(local, tmp_path_factory):
    """The replicas' own LoRA folder (not the head's): `a` with the head's bytes, a different file named
    `c` (the head's `d`), no `b` or `d`; and their cache folder for files fetched by hash."""
    import shutil

    head = local[0]
    folder = tmp_path_factory.mktemp("replica-loras")
    shutil.copy(head / "a.safetensors", folder / "a.safetensors")
    shutil.copy(head / "d.safetensors", folder / "c.safetensors")
    return folder, tmp_path_factory.mktemp("replica-cache")


@pytest.fixture(scope="module")
def backend(local, replica_folders):
    from lora_ui.scale.ray_backend import RayConfig, RayWorker

    worker = RayWorker(RayConfig(replicas=2, num_cpus=2, model_factory="lora_ui.scale.ray_backend:tiny_factory",
                                 factory_kwargs={"lora_dir": str(replica_folders[0])},
                                 batching=BatchingConfig(window_s=0.02, max_images=2),
                                 file_cache_dir=str(replica_folders[1])), library=local[2])
    yield worker
    worker.shutdown()


def _req(prompt, seed, steps=3):
    return Txt2ImgRequest(prompt=prompt, sampler="Euler a", steps=steps, cfg_scale=5.0, width=32, height=32,
                          seed=seed, save_images=False)


def _alone(local, req):
    _, model, library, manager = local
    specs, warnings = specs_for_prompt(library, req.prompt)
    (result,) = render_batch(model, [BatchItem(req, specs, warnings)], manager=manager, mixed=False, library=library)
    return np.asarray(result.images[0])


def test_eight_concurrent_requests_with_eight_lora_sets_equal_solo_renders(backend, local):
    reqs = [_req(f"a house {tags}", 500 + k) for k, tags in enumerate(SETS)]
    futures = [backend.txt2img(r) for r in reqs]
    results = [f.result(180) for f in futures]
    pids = {w for r in results for w in r.warnings if w.startswith("rendered on replica")}
    assert len(pids) == 2, pids   # both replicas served
    for req, result in zip(reqs, results):
        assert np.array_equal(np.asarray(result.images[0]), _alone(local, req)), req.prompt


def test_replicas_fetched_the_heads_files_by_hash_into_their_cache_only(backend, local, replica_folders):
    """After the 8 requests above: b, c (the head's, not the replica's own c) and d came from the head by
    hash, a was the replica's own (same hash); nothing else was written."""
    folder, cache = replica_folders
    head = local[2]
    wanted = {head.resolve(n).sha256() for n in ("b", "c", "d")}
    assert {p.name for p in cache.iterdir()} == {f"{sha}.safetensors" for sha in wanted}
    assert sorted(p.name for p in folder.iterdir()) == ["a.safetensors", "c.safetensors"]
    downloads = backend.head_downloads()  # the head's count: every replica is seen (replica_info samples)
    assert set(downloads) == wanted and all(1 <= n <= 2 for n in downloads.values()), downloads


def test_a_file_changed_after_the_head_hashed_it_is_refused_by_the_replica(backend, local, replica_folders):
    from tests.lora.files import make_lora, save

    folder, model, library, _ = local
    path = save(make_lora(model.pipe, rank=2, alpha=1.0, seed=11)[0], folder / "e.safetensors")
    library.refresh()
    sha = library.resolve("e").sha256()            # the head validated and hashed it ...
    data = bytearray(path.read_bytes())
    data[-1] ^= 1                                   # ... then one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256 mismatch"):
        backend.txt2img(_req("a house <lora:e:1>", 7)).result(120)
    assert not (replica_folders[1] / f"{sha}.safetensors").exists()
    path.unlink()
    library.refresh()


def test_sweep_cells_stream_back_equal_to_local_and_survive_a_killed_replica(backend, local):
    import ray

    cells = [_req(f"a boat <lora:a:{w}>", 900, steps=4) for w in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    got = {}
    killed = False
    for index, result in backend.sweep(cells):
        got[index] = result
        if not killed:
            pid = next(w for w in result.warnings if w.startswith("rendered on replica")).rsplit(" ", 1)[1]
            replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                        if "SERVE_REPLICA" in a["name"] and "RenderReplica" in a["name"]]
            for a in replicas:
                actor = ray.get_actor(a["name"], namespace=a["namespace"])
                if str(ray.get(actor.__ray_call__.remote(lambda self: __import__("os").getpid()))) == pid:
                    ray.kill(actor, no_restart=True)
                    killed = True
    assert killed and sorted(got) == list(range(len(cells)))
    for index, cell in enumerate(cells):
        assert np.array_equal(np.asarray(got[index].images[0]), _alone(local, cell)), index
    assert backend.retried >= 1  # the killed replica had cells in flight: each retried once elsewhere


def test_the_apps_sweep_fans_its_cells_out_to_the_replicas_and_equals_the_local_sweep(backend, local):
    """--ray wiring (`Worker.fan_out = RayWorker.sweep`): a LoRA x weight sweep, a job on the local worker,
    renders its cells on the replicas; its grid equals the same sweep rendered on the local worker alone."""
    from lora_ui import compare
    from lora_ui.engine.worker import Worker

    pipe = tiny_sd1_pipeline(0)  # the replicas' model (tiny_factory), apart from the module's patched one
    model = LoadedModel(pipe=pipe, arch="sd1", name="tiny", path=None, default_size=32, dtype=torch.float32,
                        device=torch.device("cpu"), scheduler_config=dict(pipe.scheduler.config))
    calls = []

    def fan_out(requests):
        calls.append([r.prompt for r in requests])
        return backend.sweep(requests)

    def lowmem(p):
        return LoraManager(p, mode="lowmem", keep_shadows_seconds=0)

    request = compare.SweepRequest(base=_req("a boat", 901), weights=(0.0, 0.5, 1.0), loras=("a", "b"))
    fanned = Worker(model, library=local[2], lora_manager_factory=lowmem, fan_out=fan_out, name="lora-ui-worker-fan")
    try:
        remote = compare.sweep(fanned, request)
    finally:
        fanned.shutdown()
    plain = Worker(model, library=local[2], lora_manager_factory=lowmem, name="lora-ui-worker-plain")
    try:
        alone = compare.sweep(plain, request)
    finally:
        plain.shutdown()
    assert len(calls) == 1 and len(calls[0]) == 5  # one baseline + 2 LoRAs x 2 non-zero weights, at once
    assert any(w.startswith("rendered on replica") for w in remote.warnings)
    assert not any(w.startswith("rendered on replica") for w in alone.warnings)
    assert np.array_equal(np.asarray(remote.grid), np.asarray(alone.grid))


def test_eight_concurrent_rest_api_requests_render_on_the_replicas_equal_to_solo(backend, local):
    """The REST API over --ray's HybridWorker (issue #17: the API does not change): 8 concurrent
    /sdapi/v1/txt2img requests with 8 different LoRA sets render on the replicas, each equal to its solo render."""
    import concurrent.futures
    from types import SimpleNamespace

    import httpx
    from fastapi import FastAPI

    from lora_ui.api import create_api
    from lora_ui.engine.worker import Worker
    from lora_ui.scale.ray_backend import HybridWorker
    from tests.api.conftest import ServerThread
    from tests.api.helpers import info_of, pixels

    _, model, library, _ = local
    settings = SimpleNamespace(ckpt_dirs=[], allow_pickle=False, api_max_size=256, api_max_steps=60,
                               api_max_batch_size=4, api_max_batch_count=4)
    worker = HybridWorker(Worker(model, library=library, name="lora-ui-worker-head"), backend)
    ctx = SimpleNamespace(settings=settings, models=SimpleNamespace(current=model), library=library, worker=worker)
    app = FastAPI()
    api = create_api(app, ctx, None)
    server = ServerThread(app)
    reqs = [_req(f"a house {tags}", 700 + k) for k, tags in enumerate(SETS)]

    def post(req):
        body = {"prompt": req.prompt, "sampler_name": req.sampler, "steps": req.steps, "cfg_scale": req.cfg_scale,
                "width": 32, "height": 32, "seed": req.seed, "save_images": False}
        with httpx.Client(base_url=server.url, timeout=300) as c:
            r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    try:
        with concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="lora-test-client") as pool:
            answers = list(pool.map(post, reqs))
    finally:
        server.stop()
        api.close()
        worker.local.shutdown()
    for req, answer in zip(reqs, answers):
        assert any(w.startswith("rendered on replica") for w in info_of(answer)["warnings"]), req.prompt
        assert np.array_equal(pixels(answer["images"][0]), _alone(local, req)), req.prompt


def test_replica_info_answers_from_a_thread_with_a_running_event_loop(backend):
    """Playwright's sync API (the browser tests, earlier in the same session) leaves an asyncio loop running
    on the main thread; Serve handles refuse blocking calls there, so the backend asks from its own thread."""
    import asyncio
    import concurrent.futures

    async def ask():
        asyncio.get_running_loop()  # raises if not inside a running loop: the case this test is about
        return backend.replica_info()

    # a thread of its own: the main thread may or may not have a loop running, depending on earlier tests
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lora-test-loop") as pool:
        infos = pool.submit(asyncio.run, ask()).result(120)
    assert infos and all({"pid", "loaded_sets", "batches", "fetched"} <= set(i) for i in infos)
