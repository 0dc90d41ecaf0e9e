"""img2img and the hires pass, byte for byte against reference loops written here with k-diffusion.

The references follow A1111's code as described in lora_ui/engine/sampling/registry.py (setup_img2img_steps,
KDiffusionSampler.sample_img2img, sample_hr_pass), but share nothing with lora_ui.engine.sampling:
k-diffusion's sigmas and samplers over its DiscreteEpsDDPMDenoiser, diffusers' VAE posterior mean for the
init latents, torch's interpolate for the latent upscale, one CPU generator per image seed for the noise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine import conditioning
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.hires import HiresFix
from lora_ui.engine.img2img import Img2ImgRequest, generate_img2img
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from tests.engine.sampling.kdiff_ref import external, noise_stream, sampling
from tests.engine.test_txt2img_reference import (NEGATIVE, PROMPT, SIGMAS, PerImageNoise, UNetEps,
                                                 a1111_alphas_cumprod, a1111_uint8)

KDIFF = {"Euler": (sampling.sample_euler, "Automatic"), "DPM++ 2M": (sampling.sample_dpmpp_2m, "Karras"),
         "Euler a": (sampling.sample_euler_ancestral, "Automatic")}


@pytest.fixture(scope="module")
def demo():
    return wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")


def reference_from_latents(pipe, init, seeds, sampler, steps, t_enc, cfg=7.0):
    """A1111 sample_img2img with k-diffusion: sigma_sched = sigmas[steps - t_enc - 1:], x = init + z sigma0."""
    config = dict(pipe.scheduler.config)
    wrapper = external.DiscreteEpsDDPMDenoiser(UNetEps(pipe.unet, a1111_alphas_cumprod(config)),
                                               a1111_alphas_cumprod(config), quantize=False)
    enc = conditioning.encode_prompts(pipe, "sd1", PROMPT, NEGATIVE)
    b = len(seeds)
    embeds = torch.cat([enc.prompt_embeds.repeat(b, 1, 1), enc.negative_prompt_embeds.repeat(b, 1, 1)])

    def cfg_model(x, sigma, **_):
        both = wrapper(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=(embeds, None))
        return both[b:] + (both[:b] - both[b:]) * cfg

    fn, schedule = KDIFF[sampler]
    sched = SIGMAS[schedule](wrapper, steps)[steps - t_enc - 1:]
    noise = PerImageNoise(seeds, tuple(init.shape[1:]))
    x = init + noise.next() * sched[0]
    extra = {"eta": 1.0} if sampler == "Euler a" else {}
    with torch.no_grad(), noise_stream(noise):
        latents = fn(cfg_model, x, sched, disable=True, **extra)
        vae = pipe.vae
        return [a1111_uint8(vae.decode(one[None] / vae.config.scaling_factor).sample) for one in latents]


def posterior_mean(pipe, image):
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Euler a"])
@pytest.mark.parametrize("strength", [0.45, 0.8])
def test_img2img_equals_the_k_diffusion_reference(demo, sampler, strength):
    init = generate(demo, Txt2ImgRequest(prompt="a small green square", seed=3, steps=6, save_images=False)).images[0]
    seeds, steps = [1234, 1235], 9
    ours = generate_img2img(demo, Img2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, steps=steps,
                                                 seed=seeds[0], batch_size=2, init_images=[init],
                                                 denoising_strength=strength, save_images=False))
    t_enc = int(min(strength, 0.999) * steps)
    latent = posterior_mean(demo.pipe, init)
    want = reference_from_latents(demo.pipe, latent.repeat(2, 1, 1, 1), seeds, sampler, steps, t_enc)
    for mine, ref in zip(ours.images, want):
        diff = np.abs(np.asarray(mine).astype(int) - ref.astype(int))
        assert diff.max() == 0, f"{int((diff > 0).sum())} values differ by up to {diff.max()}"


def test_exact_steps_option_uses_a1111s_other_branch(demo):
    init = generate(demo, Txt2ImgRequest(prompt="a small green square", seed=3, steps=6, save_images=False)).images[0]
    ours = generate_img2img(demo, Img2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=6,
                                                 seed=9, init_images=[init], denoising_strength=0.5,
                                                 exact_steps=True, save_images=False))
    # int(6 / 0.5) = 12 schedule steps, t_enc = 5: the last 6 sigmas of a 12-step schedule
    want = reference_from_latents(demo.pipe, posterior_mean(demo.pipe, init), [9], "Euler", 12, 5)
    assert np.array_equal(np.asarray(ours.images[0]), want[0])


def capture_first_pass(monkeypatch):
    captured = []
    original = HiresFix.second_pass

    def spy(self, latents, *args, **kwargs):
        captured.append(latents.clone())
        return original(self, latents, *args, **kwargs)

    monkeypatch.setattr(HiresFix, "second_pass", spy)
    return captured


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_hires_first_pass_is_plain_txt2img_and_second_pass_equals_the_reference(demo, monkeypatch, sampler):
    captured = capture_first_pass(monkeypatch)
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, steps=7, seed=21, batch_size=2,
                save_images=False)
    plain = generate(demo, Txt2ImgRequest(**base))
    hires = generate(demo, Txt2ImgRequest(**base, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                                          denoising_strength=0.6, hr_second_pass_steps=5))
    assert [im.size for im in hires.images] == [(128, 128)] * 2
    from lora_ui.engine.vae_codec import decode_to_images
    first = decode_to_images(demo.pipe, captured[0])
    for a, b in zip(first, plain.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # A1111: steps=5 passed -> schedule int(5 / 0.6) = 8, t_enc = 4: exactly 5 steps at the upscaled size
    up = torch.nn.functional.interpolate(captured[0], size=(32, 32), mode="bilinear", antialias=False)
    want = reference_from_latents(demo.pipe, up, [21, 22], sampler, 8, 4)
    for mine, ref in zip(hires.images, want):
        assert np.array_equal(np.asarray(mine), ref)
