"""/sdapi/v1/img2img, txt2img hires fix, /upscalers, /latent-upscale-modes, /extra-single-image."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tests.api.helpers import assert_error, decode_png, info_of, pixels, render


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


# the body webuiapi's `img2img(...)` sends with its defaults (A1111's client library)
WEBUIAPI_IMG2IMG = {
    "init_images": None, "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": 1.5, "mask": None,
    "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0, "initial_noise_multiplier": 1, "prompt": "a red circle", "styles": [],
    "seed": 77, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
    "sampler_name": "Euler a", "batch_size": 1, "n_iter": 1, "steps": 4, "cfg_scale": 7.0, "width": 32,
    "height": 32, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True, "script_args": [],
    "include_init_images": False, "script_name": None, "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}


def img2img(client, **body):
    payload = {**WEBUIAPI_IMG2IMG, "init_images": [b64(init_image())], **body}
    return client.post("/sdapi/v1/img2img", json=payload)


def test_a1111_client_img2img_body_works_and_is_deterministic(client):
    first = img2img(client)
    assert first.status_code == 200, first.text
    again = img2img(client)
    assert decode_png(first.json()["images"][0]).size == (32, 32)
    assert np.array_equal(pixels(first.json()["images"][0]), pixels(again.json()["images"][0]))
    info = info_of(first.json())
    assert "Denoising strength: 0.75" in info["infotexts"][0] and info["all_seeds"] == [77]


def test_img2img_inpainting_keeps_the_outside(client):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    r = img2img(client, mask=b64(mask), mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                denoising_strength=1.0)
    assert r.status_code == 200, r.text
    out = pixels(r.json()["images"][0]).astype(int)
    original = np.asarray(init_image()).astype(int)
    assert np.abs(out - original)[:4].max() <= 2 and np.abs(out - original)[10:22, 10:22].mean() > 10
    assert "Mask blur" not in info_of(r.json())["infotexts"][0]


def test_img2img_bad_inputs_name_the_field(client):
    assert_error(img2img(client, init_images=["not base64!"]), 422, "init_images[0]")
    assert_error(img2img(client, denoising_strength=2), 422, "denoising_strength")
    assert_error(img2img(client, resize_mode=9), 422, "resize_mode")
    assert_error(img2img(client, mask=b64(Image.new("L", (8, 8)))), 422, "mask")
    assert_error(img2img(client, initial_noise_multiplier=0.5), 422, "initial_noise_multiplier")


def test_txt2img_hires_fix_with_a1111_fields(client):
    body = render(client, width=32, height=32, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                  denoising_strength=0.5, hr_second_pass_steps=2)
    assert decode_png(body["images"][0]).size == (64, 64)
    text = info_of(body)["infotexts"][0]
    assert "Hires upscale: 2" in text and "Hires upscaler: Latent" in text and "Size: 32x32" in text


def test_hires_fields_are_checked_and_counted_in_the_cost_cap(client):
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "enable_hr": True,
                                                  "hr_upscaler": "4x-Nothing", "save_images": False})
    assert_error(bad, 422, "hr_upscaler")
    too_big = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 256, "height": 256,
                                                      "enable_hr": True, "hr_scale": 8})
    assert_error(too_big, 422, "hr_scale")                       # 2048 px over this server's --max-size 256


def test_cost_cap_counts_the_second_pass():
    from lora_ui.limits import Limits

    limits = Limits(max_cost=4 * 64 * 64 * 8)
    assert limits.request_errors(steps=4, width=64, height=64, batch_size=8) == []
    errors = limits.request_errors(steps=4, width=64, height=64, batch_size=8, second_pass=(4, 128, 128))
    assert errors and "hires 4 x 8 x 128 x 128" in errors[0].message


def test_upscaler_listings_and_extras(client):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64(init_image()), "upscaler_1": "Lanczos",
                                                          "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    assert decode_png(r.json()["image"]).size == (64, 64) and "Postprocess upscale by: 2" in r.json()["html_info"]
    to = client.post("/sdapi/v1/extra-single-image", json={"image": b64(init_image()), "upscaler_1": "Nearest",
                                                           "resize_mode": 1, "upscaling_resize_w": 80,
                                                           "upscaling_resize_h": 48})
    assert decode_png(to.json()["image"]).size == (80, 48)
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": b64(init_image()),
                                                                   "upscaler_1": "nope"}), 422, "upscaler_1")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={"image": b64(init_image()),
                                                                   "gfpgan_visibility": 1}), 422, "gfpgan_visibility")
