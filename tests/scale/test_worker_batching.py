"""Worker(batching=...): queued txt2img requests with different LoRA sets share one mixed batch, each
getting the pixels it gets alone; FIFO fairness; per-request interrupt; non-mixable requests render alone."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lora_ui.engine.batching import BatchItem, render_batch
from lora_ui.engine.txt2img import Txt2ImgRequest
from lora_ui.engine.worker import BatchingConfig, Worker
from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraSpec
from lora_ui.prompt import extract_lora_tags
from tests.scale.mixed_fixtures import tiny_model_with_loras


class StubLibrary:
    """name -> file; specs_for as LoraLibrary (te/unet/dyn/lbw from the tag)."""

    entries: list = []

    def __init__(self, paths):
        self.paths = paths

    def specs_for(self, tags):
        return [LoraSpec(self.paths[t.name], t.name, te=t.te, unet=t.te if t.unet is None else t.unet, dyn=t.dyn,
                         lbw=t.lbw, start=t.start, stop=t.stop) for t in tags], []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model, paths = tiny_model_with_loras(tmp_path_factory.mktemp("loras"))
    return model, StubLibrary(paths)


def _worker(world, **cfg):
    model, library = world
    return Worker(model, library=library, batching=BatchingConfig(**cfg),
                  lora_manager_factory=lambda pipe: LoraManager(pipe, mode="fast", keep_shadows_seconds=0))


def _gate(worker):
    """A job that holds the worker until released, so what is submitted next is queued together."""
    gate = threading.Event()
    worker.submit(lambda session: gate.wait(30), kind="gate")
    return gate


def _req(prompt, seed, steps=3, **kw):
    return Txt2ImgRequest(prompt=prompt, sampler="Euler a", steps=steps, cfg_scale=5.0, width=32, height=32,
                          seed=seed, save_images=False, **kw)


PROMPTS = ["a cat <lora:a:0.8>", "a dog <lora:b:1> <lora:a:0.4>", "a tree <lora:c:0.7> <lora:d:1.2>", "a field"]


def _pixels(result):
    return np.stack([np.asarray(im) for im in result.images])


def test_queued_requests_share_one_batch_and_match_solo(world):
    model, library = world
    worker = _worker(world, window_s=0.05, max_images=4)
    try:
        gate = _gate(worker)
        futures = [worker.txt2img(_req(p, 40 + k)) for k, p in enumerate(PROMPTS)]
        gate.set()
        results = [f.result(120) for f in futures]
        assert worker.batches_run == [4]
    finally:
        assert worker.shutdown()
    manager = LoraManager(model.pipe, mode="lowmem", keep_shadows_seconds=0)
    try:
        for k, prompt in enumerate(PROMPTS):
            specs = library.specs_for(extract_lora_tags(prompt)[1])[0]
            (alone,) = render_batch(model, [BatchItem(_req(prompt, 40 + k), specs)], manager=manager, mixed=False)
            assert np.array_equal(_pixels(results[k]), _pixels(alone)), k
            assert results[k].loras == specs
    finally:
        manager.close()


def test_fifo_batches_take_partners_from_behind_only(world):
    worker = _worker(world, window_s=0.0, max_images=2)
    done: list[str] = []
    try:
        gate = _gate(worker)
        reqs = {"r1": _req(PROMPTS[0], 1), "r2": _req(PROMPTS[1], 2, steps=2), "r3": _req(PROMPTS[2], 3),
                "r4": _req(PROMPTS[3], 4)}
        futures = {}
        for name, req in reqs.items():
            futures[name] = worker.txt2img(req)
            futures[name].add_done_callback(lambda _f, n=name: done.append(n))
        gate.set()
        for f in futures.values():
            f.result(120)
        assert worker.batches_run == [2, 1, 1]          # r1+r3 (same key), then r2 (head), then r4
        assert done.index("r2") < done.index("r4")    # r4 never jumps ahead of the older r2
    finally:
        assert worker.shutdown()


def test_non_mixable_request_renders_alone_on_todays_path(world):
    calls = []

    def fake_generate(model, req, **kwargs):
        from lora_ui.engine.txt2img import Txt2ImgResult
        calls.append(req.prompt)
        return Txt2ImgResult(images=[], seeds=[req.seed])

    model, library = world
    worker = Worker(model, library=library, batching=BatchingConfig(window_s=0.0), generate=fake_generate,
                    lora_manager_factory=lambda pipe: LoraManager(pipe, mode="lowmem", keep_shadows_seconds=0))
    try:
        gate = _gate(worker)
        a = worker.txt2img(_req("x <lora:hada:1>", 5))
        b = worker.txt2img(_req("y <lora:a:1> <lora:d:0.5>", 6))
        gate.set()
        a.result(60), b.result(60)
        assert calls == ["x <lora:hada:1>"] and worker.batches_run == [1]
    finally:
        assert worker.shutdown()


def test_interrupt_one_request_inside_a_batch(world):
    worker = _worker(world, window_s=0.05, max_images=3)
    try:
        gate = _gate(worker)
        futures = [worker.txt2img(_req(p, 70 + k, steps=30)) for k, p in enumerate(PROMPTS[:3])]
        gate.set()
        target = futures[1].job_id
        deadline = time.monotonic() + 60
        while worker.request_progress(target) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert worker.interrupt(target)
        results = [f.result(120) for f in futures]
        assert [r.interrupted for r in results] == [False, True, False]
        assert all(len(r.images) == 1 for r in results)
        assert not worker.interrupt(target)  # no longer running
    finally:
        assert worker.shutdown()


# ---------------------------------------------------------------- fairness across owners (issue #17)
class _Job:
    def __init__(self, owner, name):
        self.owner, self.name = owner, name


def test_fair_order_interleaves_owners_and_keeps_each_owners_order():
    from lora_ui.engine.worker import fair_order

    jobs = [_Job("A", f"a{i}") for i in range(4)] + [_Job("B", "b0"), _Job(None, "n0"), _Job("B", "b1")]
    assert [j.name for j in fair_order(jobs, {})] == ["a0", "b0", "n0", "a1", "b1", "a2", "a3"]
    # A was served last: B (served earlier) and the never-served None owner go first
    assert [j.name for j in fair_order(jobs, {"A": 5, "B": 2})] == ["n0", "b0", "a0", "b1", "a1", "a2", "a3"]
    assert [j.name for j in fair_order(jobs[:4], {"A": 1})] == ["a0", "a1", "a2", "a3"]  # one owner: FIFO


def test_plain_jobs_are_taken_round_robin_across_owners(world):
    model, library = world
    worker = Worker(model, library=library)
    try:
        gate = _gate(worker)
        futures = {f"A{i}": worker.submit(lambda s: None, owner="A") for i in range(5)}
        futures.update({"B0": worker.submit(lambda s: None, owner="B"), "B1": worker.submit(lambda s: None, owner="B")})
        futures["C0"] = worker.submit(lambda s: None, owner="C")
        gate.set()
        for f in futures.values():
            f.result(30)
        names = {f.job_id: n for n, f in futures.items()}
        order = [names[j] for j in worker.completed if j in names]
        assert order == ["A0", "B0", "C0", "A1", "B1", "A2", "A3", "A4"]
    finally:
        assert worker.shutdown()


def test_one_users_long_queue_does_not_starve_anothers_request_in_a_batch(world):
    """User A queues 6 requests, then user B queues 1 (owner on the request): B's is in the first batch."""
    worker = _worker(world, window_s=0.0, max_images=2)
    try:
        gate = _gate(worker)
        a = [worker.txt2img(_req(PROMPTS[k % 4], 10 + k, steps=2, owner="alice")) for k in range(6)]
        b = worker.txt2img(_req(PROMPTS[1], 99, steps=2, owner="bob"))
        gate.set()
        for f in [*a, b]:
            f.result(120)
        ids = [f.job_id for f in a]
        order = [j for j in worker.completed if j in {*ids, b.job_id}]
        assert worker.batches_run == [2, 2, 2, 1]
        assert order == [ids[0], b.job_id, ids[1], ids[2], ids[3], ids[4], ids[5]]
        assert worker.owner_of(b.job_id) is None  # done: forgotten
    finally:
        assert worker.shutdown()


def test_api_request_owner_is_the_user_with_auth_else_the_client_address():
    import base64
    from types import SimpleNamespace

    from lora_ui.api.routes import request_owner

    token = base64.b64encode(b"alice:secret").decode()
    req = SimpleNamespace(headers={"authorization": f"Basic {token}"}, client=SimpleNamespace(host="10.0.0.7"))
    assert request_owner(req, [("alice", "secret")]) == "api-user:alice"
    assert request_owner(req, None) == "api-client:10.0.0.7"
    assert request_owner(SimpleNamespace(headers={}, client=None), None) == "api-client:unknown"
