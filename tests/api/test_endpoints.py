"""Every other /sdapi/v1 endpoint over real HTTP: listings, options and model switching, png-info,
memory, compare, sweep, OpenAPI docs, auth."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from safetensors.torch import save_file

from tests.api.conftest import AUTH, LORA_NAMES, kohya_lora
from tests.api.helpers import assert_error, decode_png, info_of, pixels, render

pytestmark = pytest.mark.timeout(900)  # includes the shared server set-up, slow on a loaded machine


def test_loras_lists_every_file_and_refresh_finds_new_ones(client, api_env):
    loras = client.get("/sdapi/v1/loras").json()
    by_name = {entry["name"]: entry for entry in loras}
    assert set(LORA_NAMES) <= set(by_name)
    alpha = by_name["alpha"]
    assert set(alpha) == {"name", "alias", "path", "metadata"}
    assert alpha["path"] == str(api_env.lora_dir / "alpha.safetensors")
    assert alpha["metadata"].get("ss_output_name") == "alpha" and alpha["alias"] == "alpha"

    new_file = api_env.lora_dir / "zulu.safetensors"
    save_file(kohya_lora(api_env.ctx.models.current.pipe, seed=999), str(new_file))
    try:
        assert "zulu" not in {e["name"] for e in client.get("/sdapi/v1/loras").json()}
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "zulu" in {e["name"] for e in client.get("/sdapi/v1/loras").json()}
        info = info_of(render(client, prompt="x <lora:zulu:1>"))
        assert [entry["name"] for entry in info["loras"]] == ["zulu"]
    finally:
        new_file.unlink()
        client.post("/sdapi/v1/refresh-loras")


def test_sd_models_samplers_schedulers(client):
    models = client.get("/sdapi/v1/sd-models").json()
    names = {m["model_name"] for m in models}
    assert {"tiny-a", "tiny-b"} <= names
    for entry in models:
        assert set(entry) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    listed = client.get("/sdapi/v1/samplers").json()
    samplers = {s["name"]: s for s in listed}
    # A1111 1.10's list, in its order; the schedule is a separate choice ("DPM++ 2M Karras" is gone)
    assert [s["name"] for s in listed] == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
        "PLMS", "UniPC", "LCM"]
    assert "k_euler_a" in samplers["Euler a"]["aliases"]
    assert samplers["DPM++ 2M"]["options"]["scheduler"] == "karras"
    assert samplers["DPM++ SDE"]["options"] == {"scheduler": "karras", "second_order": True, "brownian_noise": True}
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers] == [
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]
    karras = next(s for s in schedulers if s["label"] == "Karras")
    assert karras["name"] == "karras" and karras["default_rho"] == 7.0 and not karras["need_inner_model"]
    # a sampler and a schedule from these lists render
    info = info_of(render(client, sampler_name="DPM++ 2M", scheduler="karras"))
    assert "Sampler: DPM++ 2M" in info["infotexts"][0] and "Schedule type: Karras" in info["infotexts"][0]


def test_options_switch_the_model_through_the_worker(client, api_env):
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny-a")
    assert options["CLIP_stop_at_last_layers"] == 1
    assert options["outdir_txt2img_samples"] == str(api_env.root / "outputs" / "txt2img-images")
    on_a = pixels(render(client)["images"][0])
    try:
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b", "unknown_option": 3})
        assert r.status_code == 200, r.text
        assert r.json() == {"updated": ["sd_model_checkpoint"], "ignored": ["unknown_option"]}
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b")
        on_b = render(client, prompt="a red circle on blue <lora:alpha:1>")
        assert info_of(on_b)["sd_model_name"] == "tiny-b"
        assert not np.array_equal(pixels(on_b["images"][0]), on_a)
    finally:
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a"}).status_code == 200
    assert np.array_equal(pixels(render(client)["images"][0]), on_a)


def test_unknown_model_is_refused_and_the_model_stays(client):
    before = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    body = assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"}),
                        422, "sd_model_checkpoint")
    assert "no-such-model" in body["detail"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before


def test_override_settings_model_and_clip_skip_for_one_request(client):
    plain = pixels(render(client)["images"][0])
    on_b = render(client, override_settings={"sd_model_checkpoint": "tiny-b"})
    assert info_of(on_b)["sd_model_name"] == "tiny-b"
    assert not np.array_equal(pixels(on_b["images"][0]), plain)
    # restored afterwards (A1111's default override_settings_restore_afterwards=true)
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-a")
    assert np.array_equal(pixels(render(client)["images"][0]), plain)

    skip2 = render(client, override_settings={"CLIP_stop_at_last_layers": 2})
    assert info_of(skip2)["clip_skip"] == 2 and "Clip skip: 2" in info_of(skip2)["infotexts"][0]
    assert not np.array_equal(pixels(skip2["images"][0]), plain)
    # the API default clip skip is an option too
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    try:
        assert np.array_equal(pixels(render(client)["images"][0]), pixels(skip2["images"][0]))
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    assert np.array_equal(pixels(render(client)["images"][0]), plain)


def test_png_info_reads_back_the_parameters(client):
    data = render(client, prompt="a red circle <lora:alpha:0.5>", seed=555, cfg_scale=5)
    infotext = info_of(data)["infotexts"][0]
    for image_field in (data["images"][0], "data:image/png;base64," + data["images"][0]):
        r = client.post("/sdapi/v1/png-info", json={"image": image_field})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["info"] == infotext
        assert out["parameters"]["Seed"] == 555 and out["parameters"]["CFG scale"] == 5.0
        assert out["parameters"]["Prompt"] == "a red circle <lora:alpha:0.5>"
        assert "parameters" not in out["items"]
    # an image without infotext: empty info, no error
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 200 and r.json()["info"] == "" and r.json()["parameters"] == {}


def test_memory(client):
    mem = client.get("/sdapi/v1/memory").json()
    ram = mem["ram"]
    assert ram["total"] > 0 and 0 <= ram["free"] <= ram["total"] and ram["used"] == ram["total"] - ram["free"]
    assert ram["process_rss"] > 10 * 2**20  # torch + a model: at least 10 MB
    import torch

    assert ("error" in mem["cuda"]) == (not torch.cuda.is_available())


def test_compare_returns_both_sides_and_the_difference_numbers(client):
    r = client.post("/sdapi/v1/lora-ui/compare", json={
        "prompt": "a red circle on blue", "steps": 3, "seed": 31, "loras": [{"name": "alpha", "weight": 1}]})
    assert r.status_code == 200, r.text
    out = r.json()
    without, with_lora = pixels(out["without"]), pixels(out["with_lora"])
    assert out["seed"] == 31
    # the without side is a plain render at that seed
    plain = pixels(render(client, seed=31)["images"][0])
    assert np.array_equal(without, plain)
    assert not np.array_equal(without, with_lora)
    diff = np.abs(without.astype(int) - with_lora.astype(int))
    assert out["mean_abs_diff"] == pytest.approx(diff.mean(), abs=1e-6)
    assert out["max_abs_diff"] == diff.max()
    assert out["changed_share"] == pytest.approx((diff.max(axis=2) > out["threshold"]).mean(), abs=1e-9)
    heatmap = decode_png(out["heatmap"])
    assert heatmap.size[0] >= 32 and heatmap.size[1] >= 32
    assert "<lora:alpha:1>" in out["with_prompt"] and "<lora" not in out["without_prompt"]


def test_sweep_returns_a_grid(client):
    r = client.post("/sdapi/v1/lora-ui/sweep", json={
        "prompt": "a red circle on blue", "steps": 2, "seed": 8, "weights": "0, 0.5, 1", "loras": ["alpha", "bravo"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["weights"] == [0, 0.5, 1] and out["loras"] == ["alpha", "bravo"]
    assert out["renders"] == 5  # the weight-0 baseline once + 2 LoRAs x 2 weights
    grid = decode_png(out["grid"])
    assert grid.size[0] > 3 * 32 and grid.size[1] > 2 * 32
    assert grid.info["parameters"] == out["infotext"]
    as_list = client.post("/sdapi/v1/lora-ui/sweep", json={
        "prompt": "a red circle on blue", "steps": 1, "seed": 8, "weights": [0.25, 1.5], "loras": ["alpha"]})
    assert as_list.status_code == 200 and as_list.json()["weights"] == [0.25, 1.5]
    assert as_list.json()["renders"] == 2


def test_openapi_documents_our_endpoints(client):
    spec = client.get("/sdapi/v1/openapi.json").json()
    paths = spec["paths"]
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/progress", "/sdapi/v1/lora-ui/compare", "/sdapi/v1/lora-ui/sweep"):
        assert path in paths
    compare_doc = paths["/sdapi/v1/lora-ui/compare"]["post"]
    assert "without" in compare_doc["summary"].lower() and "heatmap" in compare_doc["description"]
    assert "CompareResponse" in spec["components"]["schemas"]
    assert "mean_abs_diff" in spec["components"]["schemas"]["CompareResponse"]["properties"]
    docs = client.get("/sdapi/v1/docs")
    assert docs.status_code == 200 and "/sdapi/v1/openapi.json" in docs.text


def test_auth_on_and_off(api_env):
    import httpx

    with httpx.Client(base_url=api_env.auth_url, timeout=600) as c:
        for path in ("/sdapi/v1/samplers", "/sdapi/v1/progress", "/sdapi/v1/openapi.json"):
            missing = c.get(path)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Basic"
            assert set(missing.json()) == {"error", "detail", "body", "errors"}
        assert c.get("/sdapi/v1/samplers", auth=("user", "wrong")).status_code == 401
        assert c.get("/sdapi/v1/samplers", auth=("nobody", AUTH[1])).status_code == 401
        assert c.get("/sdapi/v1/samplers", auth=AUTH).status_code == 200
        assert c.get("/sdapi/v1/samplers", auth=("other", "pw2")).status_code == 200
        refused = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2})
        assert refused.status_code == 401
        ok = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "save_images": False}, auth=AUTH)
        assert ok.status_code == 200 and len(ok.json()["images"]) == 1
    with httpx.Client(base_url=api_env.url, timeout=600) as c:  # auth off: no credentials needed
        assert c.get("/sdapi/v1/samplers").status_code == 200


def test_listings_a1111_clients_read_at_start_up_and_img2img(client):
    for path in ("sd-vae", "prompt-styles", "hypernetworks", "face-restorers"):
        r = client.get(f"/sdapi/v1/{path}")
        assert r.status_code == 200 and r.json() == [], path
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    assert client.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": []})
    assert r.status_code == 422 and "init_images" in r.text
