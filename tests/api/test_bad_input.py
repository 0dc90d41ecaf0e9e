"""Each bad input gets a 4xx JSON error naming the field, renders nothing and leaves the worker and
the loaded model as they were; an exception inside a render is a 500 JSON error and the next
request is unaffected."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.api.conftest import EXPLODE
from tests.api.helpers import assert_error, info_of, pixels, render

pytestmark = pytest.mark.timeout(900)  # includes the shared server set-up, slow on a loaded machine

GOOD = {"prompt": "a red circle on blue", "steps": 3, "seed": 1234, "save_images": False}

BAD_TXT2IMG = [
    ({"steps": "many"}, "steps"),
    ({"steps": 0}, "steps"),
    ({"steps": -5}, "steps"),
    ({"steps": 10_000}, "steps"),            # over the configured cap (60 in these tests)
    ({"width": -64}, "width"),
    ({"height": 0}, "height"),
    ({"width": 100_000}, "width"),
    ({"width": 257 * 8}, "width"),           # over api_max_size=256
    ({"height": 36}, "height"),              # not a multiple of 8
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 50}, "batch_size"),
    ({"n_iter": 1000}, "n_iter"),
    ({"n_iter": [1]}, "n_iter"),
    ({"cfg_scale": "high"}, "cfg_scale"),
    ({"cfg_scale": 1e9}, "cfg_scale"),
    ({"seed": -7}, "seed"),
    ({"prompt": 12}, "prompt"),
    ({"sampler_name": "Nope Sampler"}, "sampler_name"),
    ({"sampler_index": "Nope Sampler"}, "sampler_index"),
    ({"scheduler": "Nope"}, "scheduler"),
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"sd_model_checkpoint": 5}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"override_settings": "not a dict"}, "override_settings"),
    ({"prompt": "x <lora:no_such_lora:1>"}, "prompt"),
    ({"prompt": "x <lora:../alpha:1>"}, "prompt"),
    ({"prompt": "x <lora:sub/alpha:1>"}, "prompt"),
    ({"prompt": "x <lora:/etc/passwd:1>"}, "prompt"),
    ({"prompt": "x <lora:C:\\loras\\alpha:1>"}, "prompt"),
    ({"prompt": "x <lora:..\\alpha:1>"}, "prompt"),
]


@pytest.fixture
def untouched(api_env, client):
    """Asserts after the test that nothing rendered, and the model and its renders are as before."""
    model_before = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    clean = pixels(render(client)["images"][0])
    renders_before = len(api_env.render_calls)
    yield
    assert len(api_env.render_calls) == renders_before, "a refused request reached the renderer"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == model_before
    assert np.array_equal(pixels(render(client)["images"][0]), clean)


def test_each_bad_txt2img_field_is_named(client, untouched):
    for change, field in BAD_TXT2IMG:
        r = client.post("/sdapi/v1/txt2img", json={**GOOD, **change})
        body = assert_error(r, 422, field)
        assert body["body"].startswith("{"), "the error echoes the request body"


def test_several_bad_fields_are_all_reported(client, untouched):
    r = client.post("/sdapi/v1/txt2img", json={**GOOD, "steps": 0, "width": 33, "sampler_name": "x"})
    body = assert_error(r, 422, "steps")
    assert {"steps", "width", "sampler_name"} <= {e["field"] for e in body["errors"]}


def test_unknown_lora_message_lists_known_names(client, untouched):
    body = assert_error(client.post("/sdapi/v1/txt2img", json={**GOOD, "prompt": "<lora:alfa:1>"}), 422, "prompt")
    assert "alfa" in body["detail"] and "alpha" in body["detail"]
    traversal = assert_error(client.post("/sdapi/v1/txt2img", json={**GOOD, "prompt": "<lora:../../x:1>"}), 422, "prompt")
    assert "plain name" in traversal["detail"]


MALFORMED_BODIES = [b"{not json", b'{"prompt": "x",}', b"", b"[1, 2, 3]"]


def test_malformed_json(client, untouched):
    for raw in MALFORMED_BODIES:
        r = client.post("/sdapi/v1/txt2img", content=raw, headers={"content-type": "application/json"})
        body = assert_error(r, 422, "body")
        assert body["error"] == "ValidationError"


def test_png_info_bad_images(client, untouched):
    not_base64 = assert_error(client.post("/sdapi/v1/png-info", json={"image": "this is %% not base64!"}), 422, "image")
    assert "base64" in not_base64["detail"]
    not_image = base64.b64encode(b"hello, I am text and not a picture").decode()
    body = assert_error(client.post("/sdapi/v1/png-info", json={"image": not_image}), 422, "image")
    assert "not a readable image" in body["detail"]
    truncated_png = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()
    assert_error(client.post("/sdapi/v1/png-info", json={"image": truncated_png}), 422, "image")
    assert_error(client.post("/sdapi/v1/png-info", json={"image": ""}), 422, "image")
    assert_error(client.post("/sdapi/v1/png-info", json={}), 422, "image")
    assert_error(client.post("/sdapi/v1/png-info", json={"image": 42}), 422, "image")


def test_bad_options(api_env, client, untouched):
    assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../../etc"}), 422, "sd_model_checkpoint")
    # a real checkpoint, but given as a path: the API only loads what /sd-models lists, by name
    existing = str(api_env.root / "Stable-diffusion" / "tiny-b")
    body = assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": existing}), 422,
                        "sd_model_checkpoint")
    assert "tiny-b" in body["detail"]  # the known names are listed
    assert_error(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "two"}), 422,
                 "CLIP_stop_at_last_layers")
    assert_error(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2.5}), 422,
                 "CLIP_stop_at_last_layers")
    infinite = b'{"CLIP_stop_at_last_layers": 1e400}'  # JSON parses this to float inf
    assert_error(client.post("/sdapi/v1/options", content=infinite, headers={"content-type": "application/json"}),
                 422, "CLIP_stop_at_last_layers")
    assert_error(client.post("/sdapi/v1/options", content=b"{", headers={"content-type": "application/json"}),
                 422, "body")
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_bad_compare_and_sweep(client, untouched):
    no_lora = client.post("/sdapi/v1/lora-ui/compare", json={**GOOD})
    assert_error(no_lora, 422, "loras")
    assert_error(client.post("/sdapi/v1/lora-ui/compare", json={**GOOD, "loras": [{"name": "ghost"}]}), 422, "loras")
    assert_error(client.post("/sdapi/v1/lora-ui/compare", json={**GOOD, "loras": [{"name": "../alpha"}]}), 422, "loras")
    assert_error(client.post("/sdapi/v1/lora-ui/compare", json={**GOOD, "loras": [{"name": "alpha", "weight": "x"}]}),
                 422, "loras.0.weight")
    assert_error(client.post("/sdapi/v1/lora-ui/sweep", json={**GOOD, "weights": "a, b", "loras": ["alpha"]}),
                 422, "weights")
    assert_error(client.post("/sdapi/v1/lora-ui/sweep", json={**GOOD, "weights": "0, 1", "loras": ["ghost"]}),
                 422, "loras")
    assert_error(client.post("/sdapi/v1/lora-ui/sweep", json={**GOOD, "steps": 0, "loras": ["alpha"]}), 422, "steps")


def test_an_exception_inside_a_render_is_a_500_and_the_next_request_is_fine(client):
    clean = pixels(render(client)["images"][0])
    r = client.post("/sdapi/v1/txt2img", json={**GOOD, "prompt": f"{EXPLODE} <lora:alpha:1>"})
    assert r.status_code == 500
    body = r.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["error"] == "RuntimeError" and "exploded" in body["detail"]
    after = render(client)
    assert np.array_equal(pixels(after["images"][0]), clean)
    assert info_of(after)["loras"] == []


def test_a_broken_lora_file_is_a_4xx_and_leaves_the_model_clean(api_env, client):
    clean = pixels(render(client)["images"][0])
    broken = api_env.lora_dir / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    try:
        client.post("/sdapi/v1/refresh-loras")
        r = client.post("/sdapi/v1/txt2img", json={**GOOD, "prompt": "x <lora:alpha:1> <lora:broken:1>"})
        assert 400 <= r.status_code < 500, r.text
        assert "broken" in r.json()["detail"]
    finally:
        broken.unlink()
        client.post("/sdapi/v1/refresh-loras")
    assert np.array_equal(pixels(render(client)["images"][0]), clean)


def test_a_corrupt_checkpoint_is_refused_and_the_old_model_stays(api_env, client, untouched):
    corrupt = api_env.root / "Stable-diffusion" / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    try:
        listed = {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
        assert "corrupt" in listed
        body = assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "corrupt"}), 422,
                            "sd_model_checkpoint")
        assert "corrupt" in body["detail"]
        override = client.post("/sdapi/v1/txt2img", json={**GOOD, "override_settings": {"sd_model_checkpoint": "corrupt"}})
        assert_error(override, 422, "override_settings.sd_model_checkpoint")
    finally:
        corrupt.unlink()
