"""Item 5: hostile requests are 4xx naming the field, fast; the next normal request gives the same
image as before; a non-finite render is flagged, never a silent black image."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.api.helpers import info_of, pixels, render

pytestmark = pytest.mark.timeout(900)

NORMAL = {"prompt": "a red circle on blue <lora:alpha:0.7>", "steps": 2, "seed": 99, "save_images": False}


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "' + "[" * 100_000 + '"}', None),          # deep, but inside a string: fine text
    ("[" * 100_000 + "]" * 100_000, "body"),                # 100k-deep JSON
    ('{"prompt": "a \\ud800 b", "steps": 2}', "prompt"),    # lone surrogate
    ('{"prompt": "x <lora:alpha:1e30>", "steps": 2}', "prompt"),
    ('{"prompt": "x <lora:alpha:1:1e308>", "steps": 2}', "prompt"),
    ('{"prompt": "x", "steps": true}', "steps"),
    ('{"prompt": "x", "cfg_scale": false}', "cfg_scale"),
    ('{"prompt": "x", "steps": 2, "enable_hr": true, "hr_upscaler": "4x-Nope"}', "hr_upscaler"),
    ('{"prompt": "x", "steps": 2, "enable_hr": "yes please"}', "enable_hr"),
    ('{"prompt": "x", "steps": 2, "styles": ["mine"]}', "styles"),
    ('{"prompt": "x", "steps": 2, "alwayson_scripts": {"x": {}}}', "alwayson_scripts"),
])
def test_hostile_body_is_4xx_naming_the_field(client, raw, field):
    started = time.monotonic()
    r = client.post("/sdapi/v1/txt2img", content=raw.encode(), headers={"content-type": "application/json"})
    assert time.monotonic() - started < 10
    if field is None:
        assert r.status_code in (200, 422) and r.status_code != 500
        return
    assert 400 <= r.status_code < 500, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.text


def test_png_info_hostile_bodies(client):
    r = client.post("/sdapi/v1/png-info", content=("[" * 100_000).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/sdapi/v1/png-info", content=b'{"image": "\\ud800"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image"


def test_refused_pickle_lora_is_4xx_not_200_with_a_warning(api_env, client):
    path = api_env.lora_dir / "oldstyle.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, path)
    try:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:oldstyle:1>", "steps": 1, "save_images": False})
        assert r.status_code == 422 and "pickle" in r.text and r.json()["errors"][0]["field"] == "prompt"
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-loras")


def test_next_normal_request_is_unchanged_after_hostile_ones(client):
    before = pixels(render(client, **NORMAL)["images"][0])
    for raw in ('{"prompt": "x <lora:alpha:1e30>", "steps": 2}', "[" * 100_000, '{"prompt": "\\udfff"}'):
        assert client.post("/sdapi/v1/txt2img", content=raw.encode(),
                           headers={"content-type": "application/json"}).status_code == 422
    after = pixels(render(client, **NORMAL)["images"][0])
    assert np.array_equal(before, after)


def test_non_finite_render_is_flagged_in_the_answer(api_env, client):
    """A LoRA whose weights overflow the model (finite in the file, inf once applied) gives a warning."""
    pipe = api_env.ctx.models.current.pipe
    sd = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith("attn1.to_q"):
            sd[f"lora_unet_{name.replace('.', '_')}.lora_down.weight"] = torch.full((1, module.in_features), 3e38)
            sd[f"lora_unet_{name.replace('.', '_')}.lora_up.weight"] = torch.full((module.out_features, 1), 3e38)
    path = api_env.lora_dir / "overflow.safetensors"
    save_file(sd, str(path))
    try:
        client.post("/sdapi/v1/refresh-loras")
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:overflow:1>", "steps": 2, "seed": 1,
                                                    "save_images": False})
        if r.status_code == 200:
            warnings = info_of(r.json())["warnings"]
            assert any("non-finite" in w for w in warnings), warnings
        else:  # refused before rendering (the loader saw the overflow): also not a silent wrong image
            assert 400 <= r.status_code < 500, r.text
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-loras")
