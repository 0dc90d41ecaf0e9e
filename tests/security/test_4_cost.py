"""Item 4: bounded cost: body limit (413), prompt/size/steps caps from lora_ui.limits, listings never
wait behind renders, a job ends when its HTTP client goes away."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest
from fastapi import FastAPI

from lora_ui.api import create_api
from lora_ui.limits import Limits
from tests.api.conftest import ServerThread
from tests.security.helpers import WorkerGate, wait_until

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def small_limits_server(api_env):
    app = FastAPI()
    api = create_api(app, api_env.ctx, None, limits=Limits(max_body_bytes=64 * 1024, max_prompt_chars=500,
                                                           max_cost=3 * 1 * 32 * 32))
    server = ServerThread(app)
    yield server.url
    server.stop()
    api.close()


def test_body_over_the_limit_is_413_declared_or_streamed(small_limits_server):
    big = b'{"image": "' + b"A" * 200_000 + b'"}'
    with httpx.Client(base_url=small_limits_server, timeout=30) as c:
        r = c.post("/sdapi/v1/png-info", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"
        chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # chunked: no Content-Length
        r = c.post("/sdapi/v1/png-info", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_prompt_and_cost_caps_name_their_field(small_limits_server):
    with httpx.Client(base_url=small_limits_server, timeout=30) as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x" * 501, "steps": 2})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "prompt"
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 4, "width": 32, "height": 32})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "steps" and "--max-cost" in r.text


def test_listings_answer_while_renders_wait(api_env):
    gate = WorkerGate(api_env.ctx.worker)
    assert gate.started.wait(30)
    results = []

    def render():
        with api_env.client() as c:
            results.append(c.post("/sdapi/v1/txt2img", json={"prompt": "queued", "steps": 1, "save_images": False}))

    threads = [threading.Thread(target=render) for _ in range(48)]  # more than the default pool (40)
    try:
        for t in threads:
            t.start()
        wait_until(lambda: api_env.ctx.worker._queue.qsize() >= 48, 60, "48 queued renders")
        with httpx.Client(base_url=api_env.url, timeout=10) as c:
            for path in ("/sdapi/v1/loras", "/sdapi/v1/sd-models", "/sdapi/v1/progress?skip_current_image=true"):
                assert c.get(path).status_code == 200
    finally:
        gate.release()
        for t in threads:
            t.join(120)
    assert len(results) == 48 and all(r.status_code == 200 for r in results)


@pytest.mark.parametrize("path, extra", [
    ("/sdapi/v1/txt2img", ""),
    ("/sdapi/v1/lora-ui/compare", ', "loras": [{"name": "alpha", "weight": 0.5}]'),
    ("/sdapi/v1/lora-ui/sweep", ', "loras": ["alpha"], "weights": "0, 1"'),
], ids=["txt2img", "compare", "sweep"])
def test_a_disconnected_client_cancels_its_job(api_env, path, extra):
    gate = WorkerGate(api_env.ctx.worker)
    assert gate.started.wait(30)
    prompt = f"disconnect-me-please-{path.rsplit('/', 1)[-1]}"
    body = ('{"prompt": "%s", "steps": 1, "save_images": false%s}' % (prompt, extra)).encode()
    host, port = api_env.url.removeprefix("http://").split(":")
    try:
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_until(lambda: api_env.ctx.worker._queue.qsize() >= 1, 30, "the request's job queued")
        sock.close()
        wait_until(lambda: api_env.ctx.worker._queue.queue[0].future.cancelled(), 15, "the job cancelled")
    finally:
        gate.release()
    api_env.ctx.worker.submit(lambda s: None).result(timeout=60)  # FIFO: everything before it is done
    assert not any(prompt in call for call in api_env.render_calls)
