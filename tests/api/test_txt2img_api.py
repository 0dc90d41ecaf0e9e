"""POST /sdapi/v1/txt2img over real HTTP: A1111 response shape, LoRA isolation under concurrency,
interrupt, skip and live progress."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.api.helpers import decode_png, info_of, pixels, render

pytestmark = pytest.mark.timeout(900)  # includes the shared server set-up, slow on a loaded machine


def test_txt2img_returns_a1111_shape_with_infotext_in_each_png(client, api_env):
    body = {"prompt": "a red circle on blue", "negative_prompt": "blurry", "steps": 3, "seed": 77,
            "sampler_name": "Euler", "cfg_scale": 6.5, "batch_size": 2, "n_iter": 2, "save_images": False,
            "restore_faces": False, "some_extension_field": {"x": 1}}  # A1111 defaults and unknown fields pass
    data = render(client, **body)
    assert set(data) == {"images", "parameters", "info"}
    info = info_of(data)
    assert info["all_seeds"] == [77, 78, 79, 80] and info["seed"] == 77
    assert info["prompt"] == body["prompt"] and info["all_prompts"] == [body["prompt"]] * 4
    assert info["negative_prompt"] == "blurry" and info["steps"] == 3 and info["sampler_name"] == "Euler"
    assert info["width"] == 32 and info["height"] == 32  # the tiny model's native size
    assert info["sd_model_name"] == "tiny-a"
    assert len(data["images"]) == 4 and len(info["infotexts"]) == 4
    for b64, infotext, seed in zip(data["images"], info["infotexts"], info["all_seeds"]):
        image = decode_png(b64)
        assert image.size == (32, 32)
        assert image.info["parameters"] == infotext
        assert f"Seed: {seed}," in infotext and "Steps: 3" in infotext and "Negative prompt: blurry" in infotext
    assert data["parameters"]["prompt"] == body["prompt"] and data["parameters"]["n_iter"] == 2
    # same seed, same pixels; images of different seeds differ
    again = render(client, **body)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(data["images"], again["images"]))
    assert not np.array_equal(pixels(data["images"][0]), pixels(data["images"][1]))


def test_send_images_and_save_images(client, api_env):
    outputs = api_env.root / "outputs"
    before = set(outputs.rglob("*.png")) if outputs.exists() else set()
    data = render(client, send_images=False, save_images=True, seed=4321)
    assert data["images"] == []
    saved = set(outputs.rglob("*.png")) - before
    assert len(saved) == 1 and next(iter(saved)).name.endswith("-4321.png")
    assert info_of(data)["saved_paths"] == [str(next(iter(saved)))]
    not_saved = render(client, seed=4322)
    assert info_of(not_saved)["saved_paths"] == [] and set(outputs.rglob("*.png")) - before == saved


def test_random_seed_is_reported(client):
    info = info_of(render(client, seed=-1, batch_size=2))
    assert info["all_seeds"][1] == info["all_seeds"][0] + 1 and 0 <= info["seed"] < 2**32


def test_lora_in_prompt_changes_the_image_and_is_reported(client):
    plain = render(client)
    with_lora = render(client, prompt="a red circle on blue <lora:alpha:1>")
    info = info_of(with_lora)
    assert [entry["name"] for entry in info["loras"]] == ["alpha"]
    assert "<lora:alpha:1>" in info["infotexts"][0]
    assert not np.array_equal(pixels(plain["images"][0]), pixels(with_lora["images"][0]))
    # the next request without a tag gets the plain model back
    assert np.array_equal(pixels(render(client)["images"][0]), pixels(plain["images"][0]))


LORA_SETS = [
    "",
    "<lora:alpha:1>",
    "<lora:bravo:0.8>",
    "<lora:alpha:0.5> <lora:charlie:1>",
    "<lora:delta:1:0>",            # text encoder only
    "<lora:echo:-1>",
    "<lora:foxtrot:1> <lora:golf:0.6> <lora:hotel:0.3>",
    "<lora:alpha:1> <lora:bravo:1>",
]


def test_eight_concurrent_requests_each_equal_their_solo_render(api_env):
    bodies = [{"prompt": f"a red circle on blue {tags}", "steps": 1, "seed": 99, "save_images": False}
              for tags in LORA_SETS]
    with api_env.client() as c:
        solo = [pixels(c.post("/sdapi/v1/txt2img", json=b).json()["images"][0]) for b in bodies]
    # the sets really make different images, so a leak would show
    assert len({s.tobytes() for s in solo}) == len(LORA_SETS)

    barrier = threading.Barrier(len(bodies))

    def post(body):
        with api_env.client() as c:
            barrier.wait()
            r = c.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200, r.text
            return pixels(r.json()["images"][0])

    with ThreadPoolExecutor(len(bodies)) as pool:  # all 8 released at once: the queue order is the race's
        together = list(pool.map(post, bodies[::-1]))[::-1]
    for tags, alone, concurrent in zip(LORA_SETS, solo, together):
        assert np.array_equal(alone, concurrent), f"LoRA set {tags!r} rendered differently under concurrency"


def _poll_progress(api_env, stop: threading.Event, seen: list) -> None:
    with api_env.client() as c:
        while not stop.is_set():
            seen.append(c.get("/sdapi/v1/progress").json())
            time.sleep(0.03)


def _start_render(api_env, body: dict, out: dict) -> threading.Thread:
    def run():
        with api_env.client() as c:
            out["response"] = c.post("/sdapi/v1/txt2img", json=body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(seen: list, predicate, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for state in list(seen):
            if predicate(state):
                return state
        time.sleep(0.02)
    raise AssertionError(f"progress never matched; last: {seen[-1:] if seen else None}")


def test_progress_reports_rising_steps_and_a_preview(api_env):
    seen: list = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(api_env, stop, seen))
    poller.start()
    out: dict = {}
    render_thread = _start_render(api_env, {"prompt": "progress", "steps": 10, "seed": 5, "save_images": False}, out)
    render_thread.join(600)
    stop.set()
    poller.join(10)
    assert out["response"].status_code == 200
    during = [s for s in seen if s["state"]["job"] == "txt2img" and s["state"]["sampling_steps"] == 10]
    steps = [s["state"]["sampling_step"] for s in during]
    assert len(set(steps)) >= 3, steps
    assert steps == sorted(steps), "steps never go back during one render"
    progress_values = [s["progress"] for s in during]
    assert progress_values == sorted(progress_values) and 0 < progress_values[-1] <= 1
    with_preview = [s for s in during if s["current_image"]]
    assert with_preview, "no preview image during the render"
    preview = decode_png(with_preview[-1]["current_image"])
    assert preview.size == (16, 16)  # the latents' size: 32 px / the tiny VAE's factor 2
    assert all(s["eta_relative"] >= 0 for s in during)
    assert any(s["state"]["job_count"] == 1 and s["current_task"] for s in during)
    assert all(s["textinfo"] == "txt2img: image 1 of 1" for s in during)
    with api_env.client() as c:
        idle = c.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0


def test_interrupt_ends_the_render_early_and_the_next_render_is_clean(api_env, client):
    clean = pixels(render(client, seed=2024)["images"][0])
    seen: list = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(api_env, stop, seen))
    poller.start()
    out: dict = {}
    long_body = {"prompt": "a red circle on blue <lora:alpha:1>", "steps": 60, "seed": 7, "save_images": False}
    started = time.time()
    render_thread = _start_render(api_env, long_body, out)
    _wait_for(seen, lambda s: s["state"]["sampling_steps"] == 60 and s["state"]["sampling_step"] >= 2)
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    render_thread.join(600)
    stop.set()
    poller.join(10)
    response = out["response"]
    assert response.status_code == 200, response.text
    info = info_of(response.json())
    assert info["interrupted"] is True and len(response.json()["images"]) == 1
    last_step = max(s["state"]["sampling_step"] for s in seen if s["state"]["sampling_steps"] == 60)
    assert last_step < 60, "the render ran to the end despite the interrupt"
    # as in A1111, the flag stays set after the job until the next one begins
    after_job = client.get("/sdapi/v1/progress").json()
    assert after_job["state"]["interrupted"] is True and after_job["state"]["job_count"] == 0
    assert time.time() - started < 600
    # the next render is exactly a clean one: no leftover LoRA, no leftover interrupt flag
    after = render(client, seed=2024)
    assert np.array_equal(pixels(after["images"][0]), clean)
    assert info_of(after)["interrupted"] is False


def test_skip_cuts_the_current_image_and_goes_on_with_the_next(api_env, client):
    body = {"prompt": "skip me", "steps": 6, "seed": 300, "save_images": False}
    clean = [pixels(render(client, **{**body, "seed": s})["images"][0]) for s in (300, 301)]
    seen: list = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_progress, args=(api_env, stop, seen))
    poller.start()
    out: dict = {}
    render_thread = _start_render(api_env, {**body, "n_iter": 2}, out)
    _wait_for(seen, lambda s: s["state"]["job_count"] == 2 and s["state"]["job_no"] == 0
              and s["state"]["sampling_step"] >= 2)
    assert client.post("/sdapi/v1/skip").status_code == 200
    render_thread.join(600)
    stop.set()
    poller.join(10)
    data = out["response"].json()
    assert info_of(data)["all_seeds"] == [300, 301] and len(data["images"]) == 2
    assert info_of(data)["interrupted"] is False
    assert not np.array_equal(pixels(data["images"][0]), clean[0]), "the skipped image was not cut short"
    assert np.array_equal(pixels(data["images"][1]), clean[1]), "the image after the skip must be complete"
    assert any(s["state"]["job_no"] == 1 for s in seen)


def test_a1111_sampling_fields_and_options_reach_the_picture_and_the_infotext(client):
    """Variation seed, seed resize, eta, and the RNG/ENSD options as A1111 clients send them
    (override_settings), each in the infotext as A1111 writes it; the default sampler is Euler."""
    plain = render(client)
    assert "Sampler: Euler," in info_of(plain)["infotexts"][0]  # A1111's API default (not Euler a)
    body = dict(sampler_name="Euler a", subseed=5, subseed_strength=0.5, seed_resize_from_w=24,
                seed_resize_from_h=24, eta=0.7,
                override_settings={"randn_source": "NV", "eta_noise_seed_delta": 31337})
    varied = render(client, **body)
    text = info_of(varied)["infotexts"][0]
    for part in ("Sampler: Euler a,", "Variation seed: 5,", "Variation seed strength: 0.5,", "Seed resize from: 24x24,",
                 "ENSD: 31337,", "RNG: NV,", "Eta: 0.7,"):
        assert part in text, (part, text)
    assert np.array_equal(pixels(varied["images"][0]), pixels(render(client, **body)["images"][0]))
    assert not np.array_equal(pixels(varied["images"][0]),
                              pixels(render(client, sampler_name="Euler a", eta=0.7)["images"][0]))


@pytest.mark.parametrize("body, field", [
    ({"sampler_name": "Euler z"}, "sampler_name"),
    ({"scheduler": "Wobbly"}, "scheduler"),
    ({"override_settings": {"randn_source": "Quantum"}}, "rng"),
    ({"override_settings": {"not_an_option": 1}}, "override_settings.not_an_option"),
    ({"subseed_strength": 2}, "subseed_strength"),
])
def test_bad_sampling_fields_are_422_naming_the_field(client, body, field):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, **body})
    assert r.status_code == 422, r.text
    assert any(e["field"] == field for e in r.json()["errors"]), r.text


def test_jobs_are_owned_by_the_authenticated_user_else_the_client_address(api_env, monkeypatch):
    """The worker serves owners round-robin (issue #17): the API names each request's owner."""
    import httpx

    from tests.api.conftest import AUTH

    owners = []
    real = api_env.ctx.worker.submit

    def spy(job, **kwargs):
        owners.append(kwargs.get("owner"))
        return real(job, **kwargs)

    monkeypatch.setattr(api_env.ctx.worker, "submit", spy)
    with api_env.client() as c:
        render(c)
    with httpx.Client(base_url=api_env.auth_url, auth=AUTH, timeout=600) as c:
        render(c)
    assert owners == ["api-client:127.0.0.1", "api-user:user"]


def test_renders_go_through_the_workers_own_txt2img_and_img2img(api_env, client, monkeypatch):
    """Without a checkpoint override the API queues `worker.txt2img/img2img(req)`, as the UI does: that is
    what joins mixed-LoRA batches and what --ray's HybridWorker routes to a replica (issue #17). The model
    fields of `info` are the rendering model's, read from the image's own infotext."""
    worker = api_env.ctx.worker
    calls = []
    for kind in ("txt2img", "img2img"):
        real = getattr(worker, kind)
        monkeypatch.setattr(worker, kind, lambda req, _real=real, _kind=kind: calls.append(_kind) or _real(req))
    data = render(client, prompt="a red circle on blue <lora:alpha:0.5>")
    info = info_of(data)
    model = api_env.ctx.models.current
    assert calls == ["txt2img"]
    assert (info["sd_model_name"], info["sd_model_hash"]) == (model.name, model.short_hash)
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, "seed": 3, "save_images": False,
                                                "init_images": [data["images"][0]], "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    assert calls == ["txt2img", "img2img"]
