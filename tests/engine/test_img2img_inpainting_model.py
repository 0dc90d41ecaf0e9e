"""9-channel inpainting UNets (A1111's "hybrid" conditioning) on a tiny SD1 model built from configs:
the exact UNet input (hooked at conv_in) against formulas written here, inpainting, txt2img and hires on
it, and an A1111 single-file inpainting checkpoint detected and loaded."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lora_ui.arch import detect_checkpoint
from lora_ui.engine import images as px
from lora_ui.engine.checkpoints import ModelManager, wrap_pipeline
from lora_ui.engine.img2img import Img2ImgRequest, generate_img2img
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext
from lora_ui.testing.ldm_export import export_single_file, write_config_folder
from lora_ui.testing.tiny_models import tiny_sd1_pipeline

SIZE = 32          # the tiny VAE halves: latents are 16 x 16
SCALING = 0.18215  # the tiny SD1 VAE's scaling_factor


def inpainting_pipeline(seed: int = 0):
    """The tiny SD1 pipeline with its UNet rebuilt from the same config with 9 input channels."""
    from diffusers import UNet2DConditionModel

    pipe = tiny_sd1_pipeline(seed)
    torch.manual_seed(seed + 10)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}).eval()
    return pipe


@pytest.fixture(scope="module")
def model():
    return wrap_pipeline(inpainting_pipeline(), name="tiny-sd1-inpainting")


@pytest.fixture()
def conv_in(model):
    """Every input the UNet's conv_in sees during the test."""
    seen: list[torch.Tensor] = []
    handle = model.pipe.unet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    yield seen
    handle.remove()


def init_image() -> Image.Image:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def square_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (10, 10, 22, 22))
    return mask


def sigma_max() -> float:
    """sigma at t = 999 of SD's scaled-linear schedule: float64 betas and cumprod, one float32 rounding."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.float32(np.cumprod(1 - betas)[-1])
    return float(np.sqrt((1 - abar) / abar))


def vae_latent(pipe, signed: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (4, H/2, W/2): the posterior mean times the scaling factor."""
    with torch.no_grad():
        return pipe.vae.encode(signed[None]).latent_dist.mode()[0] * SCALING


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def cpu_noise(seed: int) -> torch.Tensor:
    return torch.randn((4, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(seed))


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-4) -> None:
    worst = float((got - want).abs().max())
    assert worst <= atol, f"worst difference {worst}"


def test_txt2img_unet_input_is_scaled_noise_full_mask_and_gray_latents(model, conv_in):
    generate(model, Txt2ImgRequest(prompt="a cat", negative_prompt="blur", sampler="Euler", steps=2, seed=11,
                                   rng="CPU", width=SIZE, height=SIZE, save_images=False))
    first = conv_in[0]
    assert first.shape == (2, 9, 16, 16)                       # the cond row and the uncond row, one call
    s = sigma_max()
    x = cpu_noise(11) * s / math.sqrt(s * s + 1)               # z * sigma0 * c_in
    gray = vae_latent(model.pipe, torch.zeros(3, SIZE, SIZE))  # 0.5 gray is 0 in [-1, 1]
    for row in first:
        assert_close(row[:4], x)
        assert torch.equal(row[4], torch.ones(16, 16))
        assert_close(row[5:], gray)


def test_inpainting_unet_input_is_latents_rounded_mask_and_masked_image_latents(model, conv_in):
    image, mask = init_image(), square_mask()
    generate_img2img(model, Img2ImgRequest(
        prompt="a cat", sampler="Euler", steps=2, seed=5, rng="CPU", width=SIZE, height=SIZE, save_images=False,
        init_images=[image], mask=mask, mask_blur=2, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=1.0))
    first = conv_in[0]
    assert first.shape == (2, 9, 16, 16)
    # the blurred mask rounded to 0/1 at pixel size, nearest-resized 32 -> 16 (rows/columns 0, 2, 4, ...)
    m = torch.from_numpy(np.round(np.asarray(px.blur_mask(mask, 2, 2), dtype=np.float32) / 255))
    assert 0 < m.sum() < SIZE * SIZE
    masked = vae_latent(model.pipe, (pixels(image) * 2 - 1) * (1 - m))  # masked area -> 0 (gray)
    init = vae_latent(model.pipe, pixels(image) * 2 - 1)
    s = sigma_max()                                            # strength 1.0, 2 steps: t_enc 1 -> sigma_max
    x = (init + cpu_noise(5) * s) / math.sqrt(s * s + 1)
    for row in first:
        assert_close(row[:4], x)
        assert torch.equal(row[4], m[::2, ::2])
        assert_close(row[5:], masked)


def test_img2img_without_mask_uses_a_full_mask_and_a_gray_image(model, conv_in):
    generate_img2img(model, Img2ImgRequest(prompt="a cat", sampler="Euler", steps=2, seed=5, width=SIZE,
                                           height=SIZE, save_images=False, init_images=[init_image()],
                                           denoising_strength=0.5))
    row = conv_in[0][0]
    assert torch.equal(row[4], torch.ones(16, 16))
    assert_close(row[5:], vae_latent(model.pipe, torch.zeros(3, SIZE, SIZE)))


def test_inpainting_keeps_the_outside_and_changes_the_inside(model):
    image, mask = init_image(), square_mask()
    out = generate_img2img(model, Img2ImgRequest(
        prompt="a cat", sampler="Euler a", steps=6, seed=3, width=SIZE, height=SIZE, save_images=False,
        init_images=[image], mask=mask, mask_blur=2, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=0.9))
    got, want = np.asarray(out.images[0]).astype(int), np.asarray(image).astype(int)
    outside = np.asarray(px.blur_mask(mask, 2, 2)) == 0
    assert outside.sum() > 500
    assert np.abs(got - want)[outside].max() <= 2
    assert np.abs(got - want)[12:20, 12:20].mean() > 20
    assert parse_infotext(out.infotexts[0])["Conditional mask weight"] == 1.0


def test_txt2img_and_hires_run_on_an_inpainting_model(model, conv_in):
    out = generate(model, Txt2ImgRequest(prompt="a cat", sampler="Euler", steps=2, seed=1, batch_size=2,
                                         width=SIZE, height=SIZE, save_images=False, enable_hr=True, hr_scale=2,
                                         hr_upscaler="Latent", hr_second_pass_steps=1, denoising_strength=0.6))
    assert [im.size for im in out.images] == [(2 * SIZE, 2 * SIZE)] * 2
    assert np.asarray(out.images[0]).std() > 1 and not np.array_equal(out.images[0], out.images[1])
    assert [tuple(x.shape) for x in (conv_in[0], conv_in[-1])] == [(4, 9, 16, 16), (4, 9, 32, 32)]
    hires_gray = vae_latent(model.pipe, torch.zeros(3, 2 * SIZE, 2 * SIZE))
    assert torch.equal(conv_in[-1][:, 4], torch.ones(4, 32, 32))  # hires: a full mask at the new size
    for row in conv_in[-1]:
        assert_close(row[5:], hires_gray)
    assert parse_infotext(out.infotexts[0])["Conditional mask weight"] == 1.0


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC", "LCM", "DPM++ 2M"])
def test_every_sampler_family_feeds_the_image_conditioning(model, conv_in, sampler):
    generate(model, Txt2ImgRequest(prompt="a cat", sampler=sampler, steps=3, seed=2, width=SIZE, height=SIZE,
                                   save_images=False))
    assert conv_in and all(x.shape[1] == 9 and torch.equal(x[:, 4], torch.ones_like(x[:, 4])) for x in conv_in)


def test_plain_models_write_no_mask_weight(sd1_model):
    out = generate(sd1_model, Txt2ImgRequest(prompt="a cat", steps=1, seed=1, save_images=False))
    assert "Conditional mask weight" not in out.infotexts[0]


def test_single_file_inpainting_checkpoint_is_detected_and_loads(tmp_path, model):
    path = export_single_file(model.pipe, tmp_path / "tiny-inpainting.safetensors")
    # the component configs are the plain 4-channel ones, as the shipped configs/sd1
    config = write_config_folder(tiny_sd1_pipeline(0), "sd1", tmp_path / "cfg")
    loaded = ModelManager().load(path, config_dir=config)
    assert (loaded.arch, loaded.variant, loaded.is_inpainting) == ("sd1", "inpainting", True)
    assert loaded.pipe.unet.config.in_channels == 9
    want, got = model.pipe.unet.state_dict(), loaded.pipe.unet.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.pipe.unet.conv_in.weight.shape == (16, 9, 3, 3)
    out = generate(loaded, Txt2ImgRequest(prompt="a cat", steps=2, seed=4, save_images=False))
    assert out.images[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("shapes, expected", [
    ({"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3],
      "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]}, ("sd1", "inpainting")),
    ({"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
      "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]}, ("sd1", "")),
    ({"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3],
      "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
      "conditioner.embedders.1.model.ln_final.weight": [1280]}, ("sdxl", "inpainting")),
])
def test_detect_checkpoint_reads_the_variant_from_conv_in(shapes, expected):
    assert detect_checkpoint(shapes, "x.safetensors") == expected


# ------------------------------------------------------------------ SDXL: the same conditioning path
SDXL_SCALING = 0.13025  # the tiny SDXL VAE's scaling_factor


@pytest.fixture(scope="module")
def sdxl_model():
    """The tiny SDXL pipeline with its UNet rebuilt from the same config with 9 input channels."""
    from diffusers import UNet2DConditionModel

    from lora_ui.testing.tiny_models import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(0)
    torch.manual_seed(20)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9}).eval()
    return wrap_pipeline(pipe, name="tiny-sdxl-inpainting")


def test_sdxl_inpainting_unet_input_and_the_outside_kept(sdxl_model):
    seen: list[torch.Tensor] = []
    handle = sdxl_model.pipe.unet.conv_in.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    image, mask = init_image(), square_mask()
    try:
        out = generate_img2img(sdxl_model, Img2ImgRequest(
            prompt="a cat", negative_prompt="", sampler="Euler", steps=3, seed=7, rng="CPU", width=SIZE,
            height=SIZE, save_images=False, init_images=[image], mask=mask, mask_blur=0, inpainting_fill=1,
            inpaint_full_res=False, denoising_strength=1.0))
    finally:
        handle.remove()
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)  # blur 0: the mask itself, 0/1
    with torch.no_grad():
        masked = sdxl_model.pipe.vae.encode(((pixels(image) * 2 - 1) * (1 - m))[None]).latent_dist.mode()[0]
    for row in seen[0]:
        assert torch.equal(row[4], m[::2, ::2])
        assert_close(row[5:], masked * SDXL_SCALING)
    got, want = np.asarray(out.images[0]).astype(int), np.asarray(image).astype(int)
    outside = np.asarray(mask) == 0
    assert np.abs(got - want)[outside].max() <= 2
    inside = np.abs(got - want)[12:20, 12:20].mean()
    assert inside > 20, inside
