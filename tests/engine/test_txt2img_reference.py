"""The promise, end to end: our txt2img equals, byte for byte, an image made by a reference loop written
here from A1111's documented behaviour, with k-diffusion (A1111's own sampler library) doing the sampling.

The reference shares nothing with lora_ui.engine.sampling: k-diffusion's DiscreteEpsDDPMDenoiser over the
UNet (alphas_cumprod from float64 betas, rounded once to float32, as A1111's checkpoint buffer), CFG on the
x0 estimates in one batch [conds, unconds], one CPU generator per image seeded seed+i for the initial noise
and every later draw (k-diffusion's `randn_like` routed to them, as A1111 does), k-diffusion's own
BrownianTreeNoiseSampler with one tree per image seed for the SDE samplers, the VAE on each image alone,
and A1111's float -> uint8 conversion (truncation, not rounding). Prompt encoding is the A1111 encoder this
project already tests against diffusers (tests/engine/test_conditioning.py); the prompts here have one
chunk and no emphasis. Tolerance: 0 levels (same CPU, same op order).

The samplers k-diffusion does not have (DDIM, DDIM CFG++, PLMS, UniPC, LCM, Restart) are checked the same
way against loops written from their papers in tests/engine/sampling/reference_loops.py, over the same
UNet, CFG, per-image noise, VAE and uint8 conversion; DPM adaptive against k-diffusion's own.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine import conditioning
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.testing.tiny_models import tiny_sdxl_pipeline
from tests.engine.sampling import reference_loops as R
from tests.engine.sampling.kdiff_ref import external, noise_stream, sampling

PROMPT, NEGATIVE = "a big red circle on a blue background", "green"


class PerImageNoise:
    """A1111's per-image generators: draw i of image b is torch.randn from a CPU generator seeded seed_b."""

    def __init__(self, seeds, shape):
        self.gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        self.shape = shape

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])


class UNetEps(torch.nn.Module):
    """The `inner_model` k-diffusion's DiscreteEpsDDPMDenoiser calls: (x, t, cond=(embeds, pooled)) -> eps."""

    def __init__(self, unet, alphas_cumprod, time_ids=None):
        super().__init__()
        self.unet, self.time_ids = unet, time_ids
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def forward(self, x, t, cond):
        embeds, pooled = cond
        kwargs = {}
        if self.time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": self.time_ids.expand(len(x), -1)}
        return self.unet(x, t, encoder_hidden_states=embeds, **kwargs).sample


def a1111_alphas_cumprod(config) -> torch.Tensor:
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"],
                        dtype=np.float64) ** 2
    return torch.from_numpy(np.cumprod(1.0 - betas)).float()


def a1111_uint8(decoded: torch.Tensor) -> np.ndarray:
    x = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
    return (255.0 * x[0].permute(1, 2, 0).numpy()).astype(np.uint8)


SIGMAS = {  # schedule type -> k-diffusion's function, as A1111 calls it
    "Automatic": lambda w, n: w.get_sigmas(n),
    "Karras": lambda w, n: sampling.get_sigmas_karras(n, w.sigmas[0].item(), w.sigmas[-1].item()),
    "Exponential": lambda w, n: sampling.get_sigmas_exponential(n, w.sigmas[0].item(), w.sigmas[-1].item()),
    "DDIM": lambda w, n: sampling.append_zero(w.sigmas[torch.arange(1, 1000, 1000 // n)].flip(0)),  # sigma[1 + ks]
}
KDIFF = {  # sampler -> (k-diffusion function, its A1111 Automatic schedule, extra kwargs)
    "Euler": (sampling.sample_euler, "Automatic", {}),
    "Euler a": (sampling.sample_euler_ancestral, "Automatic", {"eta": 1.0}),
    "Heun": (sampling.sample_heun, "Automatic", {}),
    "LMS": (sampling.sample_lms, "Automatic", {}),
    "DPM++ 2M": (sampling.sample_dpmpp_2m, "Karras", {}),
    "DPM++ 2S a": (sampling.sample_dpmpp_2s_ancestral, "Karras", {"eta": 1.0}),
    "DPM++ SDE": (sampling.sample_dpmpp_sde, "Karras", {"eta": 1.0}),
    "DPM++ 2M SDE": (sampling.sample_dpmpp_2m_sde, "Exponential", {"eta": 1.0}),
    "DPM++ 2M SDE Heun": (sampling.sample_dpmpp_2m_sde, "Exponential", {"eta": 1.0, "solver_type": "heun"}),
    "DPM++ 3M SDE": (sampling.sample_dpmpp_3m_sde, "Exponential", {"eta": 1.0}),
    "DPM2": (sampling.sample_dpm_2, "Karras", {}),
    "DPM2 a": (sampling.sample_dpm_2_ancestral, "Karras", {"eta": 1.0}),
    "DPM fast": (sampling.sample_dpm_fast, None, {"eta": 1.0}),
    "DPM adaptive": (sampling.sample_dpm_adaptive, None, {"eta": 1.0}),
}
DISCARD_PENULTIMATE = ("DPM2", "DPM2 a", "DPM++ 3M SDE")  # A1111: n + 1 sigmas, the next-to-last dropped
BROWNIAN = ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE")


def _reference_parts(pipe, arch, seeds, size):
    """(UNetEps, float32 alphas_cumprod, cond rows [conds, unconds], per-image noise) for `seeds`."""
    abar = a1111_alphas_cumprod(dict(pipe.scheduler.config))
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32) if arch == "sdxl" else None
    enc = conditioning.encode_prompts(pipe, arch, PROMPT, NEGATIVE)
    b = len(seeds)
    embeds = torch.cat([enc.prompt_embeds.repeat(b, 1, 1), enc.negative_prompt_embeds.repeat(b, 1, 1)])
    pooled = None if enc.pooled_prompt_embeds is None else torch.cat(
        [enc.pooled_prompt_embeds.repeat(b, 1), enc.negative_pooled_prompt_embeds.repeat(b, 1)])
    noise = PerImageNoise(seeds, (4, size // factor, size // factor))
    return UNetEps(pipe.unet, abar, time_ids), abar, (embeds, pooled), noise


def _cfg(model, cond, b, cfg):
    """CFG on a denoiser's output (x0, or eps for the timestep samplers): one batch [conds, unconds];
    returns (guided, unconditional)."""
    def both(x, s):
        out = model(torch.cat([x, x]), torch.cat([s, s]), cond=cond)
        d_cond, d_uncond = out[:b], out[b:]
        return d_uncond + (d_cond - d_uncond) * cfg, d_uncond
    return both


def reference_images(pipe, arch, seeds, sampler, schedule, steps, cfg, size):
    unet, abar, cond, noise = _reference_parts(pipe, arch, seeds, size)
    wrapper = external.DiscreteEpsDDPMDenoiser(unet, abar, quantize=False)
    guided = _cfg(wrapper, cond, len(seeds), cfg)

    def cfg_model(x, sigma, **_):
        return guided(x, sigma)[0]

    fn, automatic, kwargs = KDIFF[sampler]
    kwargs = dict(kwargs)
    if automatic is None:  # DPM fast / adaptive: the model's whole sigma range (fast: in `steps` solver steps);
        first = SIGMAS[schedule](wrapper, steps)[0]  # the schedule only scales the first noise (A1111)
        x = noise.next() * first
        n = (steps,) if fn is sampling.sample_dpm_fast else ()
        with torch.no_grad(), noise_stream(noise):
            latents = fn(cfg_model, x, wrapper.sigmas[0].item(), wrapper.sigmas[-1].item(), *n, disable=True,
                         **kwargs)
        return _decode(pipe, latents)
    discard = sampler in DISCARD_PENULTIMATE
    sigmas = SIGMAS[automatic if schedule == "Automatic" else schedule](wrapper, steps + 1 if discard else steps)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    x = noise.next() * sigmas[0]
    if sampler in BROWNIAN:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=list(seeds))
    with torch.no_grad(), noise_stream(noise):
        latents = fn(cfg_model, x, sigmas, disable=True, **kwargs)
    return _decode(pipe, latents)


def _decode(pipe, latents):
    with torch.no_grad():
        vae = pipe.vae
        return [a1111_uint8(vae.decode(one[None] / vae.config.scaling_factor).sample) for one in latents]


def ours(model, seeds, sampler, schedule, steps, cfg, eta=None):
    result = generate(model, Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, scheduler=schedule,
                                            steps=steps, cfg_scale=cfg, seed=seeds[0], batch_size=len(seeds),
                                            eta=eta, save_images=False))
    return [np.asarray(im) for im in result.images], result


@pytest.fixture(scope="module")
def demo():
    return wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")


@pytest.fixture(scope="module")
def sdxl():
    return wrap_pipeline(tiny_sdxl_pipeline(0), name="tiny-sdxl")


CASES = [(s, "Automatic") for s in KDIFF if s != "DPM adaptive"] + [
    ("Euler", "Karras"), ("Euler a", "Exponential"), ("DPM++ 2M", "Automatic")]


@pytest.mark.parametrize("sampler,schedule", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_demo_model_image_equals_the_k_diffusion_reference_byte_for_byte(demo, sampler, schedule):
    seeds = [3135098381, 3135098382]
    mine, result = ours(demo, seeds, sampler, schedule, steps=7, cfg=7.0)
    want = reference_images(demo.pipe, "sd1", seeds, sampler, schedule, 7, 7.0, 64)
    for i, (a, b) in enumerate(zip(mine, want)):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() == 0, f"image {i}: {int((diff > 0).sum())} values differ, by up to {diff.max()} levels"
    assert f"Sampler: {sampler}," in result.infotexts[0]
    assert mine[0].std() > 5 and not np.array_equal(mine[0], mine[1])  # real pictures, per-image seeds


@pytest.mark.parametrize("schedule", ["Automatic", "DDIM"])
def test_demo_model_dpm_adaptive_image_equals_the_k_diffusion_reference_byte_for_byte(demo, schedule):
    """k-diffusion's sample_dpm_adaptive (eta 1) from the model's sigma_max to sigma_min; the schedule type
    only scales the first noise (DDIM at n = 7: sigma[995]). Its steps are error-controlled (about 60
    UNet calls at CFG 3, 90 at CFG 7), so one image at CFG 3 keeps this quick."""
    seeds = [3135098381]
    mine, result = ours(demo, seeds, "DPM adaptive", schedule, steps=7, cfg=3.0)
    want = reference_images(demo.pipe, "sd1", seeds, "DPM adaptive", schedule, 7, 3.0, 64)
    assert np.abs(mine[0].astype(int) - want[0].astype(int)).max() == 0
    assert "Sampler: DPM adaptive," in result.infotexts[0] and mine[0].std() > 5


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE"])
def test_tiny_sdxl_image_equals_the_k_diffusion_reference_byte_for_byte(sdxl, sampler):
    seeds = [11, 12]
    mine, _ = ours(sdxl, seeds, sampler, "Automatic", steps=4, cfg=5.0)
    want = reference_images(sdxl.pipe, "sdxl", seeds, sampler, "Automatic", 4, 5.0, sdxl.default_size)
    for a, b in zip(mine, want):
        assert np.abs(a.astype(int) - b.astype(int)).max() == 0


# --- the samplers k-diffusion does not have: reference loops from the papers (tests/engine/sampling/
#     reference_loops.py) over the same UNet, CFG, per-image noise, VAE and uint8 conversion ---------------

class LCMReference(external.DiscreteEpsDDPMDenoiser):
    """A1111's LCM model wrapper from its documented behaviour (reference §1) on k-diffusion's eps
    denoiser: the 50 noise levels of abar[19, 39, ..., 999]; UNet t = 20 k + 19 for the nearest level k
    (in log sigma); output = c_skip x + c_out x0 with s = 10 t, c_skip = 0.25 / (s^2 + 0.25),
    c_out = s / sqrt(s^2 + 0.25) (Luo et al. 2023, sigma_data = 0.5); get_sigmas(n): sigma at
    t = linspace(999, 19, n) by k-diffusion's log-sigma interpolation over the 50 levels."""

    def __init__(self, unet, abar):
        super().__init__(unet, abar[19::20], quantize=False)

    def sigma_to_t(self, sigma, quantize=None):
        level = (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return level * 20 + 19

    def t_to_sigma(self, t):
        return super().t_to_sigma(torch.clamp(((t - 19) / 20).float(), min=0, max=len(self.sigmas) - 1))

    def get_sigmas(self, n=None):
        t = torch.linspace(self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min), n)
        return sampling.append_zero(self.t_to_sigma(t))

    def forward(self, x, sigma, **kwargs):
        s = sigma[:, None, None, None]
        x0 = x + self.get_eps(x * (1 / (s ** 2 + 1) ** 0.5), self.sigma_to_t(sigma), **kwargs) * -s
        st = self.sigma_to_t(sigma)[:, None, None, None] * 10.0
        return st / (st ** 2 + 0.25) ** 0.5 * x0 + 0.25 / (st ** 2 + 0.25) * x


TIMESTEP = ("DDIM", "DDIM CFG++", "PLMS", "UniPC")


def reference_timestep_images(pipe, arch, seeds, sampler, steps, cfg, size, eta=0.0):
    """DDIM / DDIM CFG++ / PLMS / UniPC: x = z (unscaled), CFG on eps, the schedule type ignored."""
    unet, abar, cond, noise = _reference_parts(pipe, arch, seeds, size)
    b = len(seeds)
    guided = _cfg(unet, cond, b, cfg)

    def eps(x, t):
        return guided(x, t)[0]

    x = noise.next()
    if sampler == "DDIM":
        latents = R.ddim(eps, x, abar, steps, noise, eta)
    elif sampler == "DDIM CFG++":
        latents = R.ddim_cfgpp(_cfg(unet, cond, b, cfg / 12.5), x, abar, steps, noise)
    elif sampler == "PLMS":
        latents = R.plms(eps, x, abar, steps)
    else:
        latents = R.unipc(eps, x, abar, len(R.a1111_tau(steps)))
    return _decode(pipe, latents)


def reference_sigma_images(pipe, arch, seeds, sampler, schedule, steps, cfg, size):
    """Restart (Automatic = Karras) / LCM (Automatic = its own 50-level get_sigmas): x = z sigma_0."""
    unet, abar, cond, noise = _reference_parts(pipe, arch, seeds, size)
    lcm = sampler == "LCM"
    wrapper = LCMReference(unet, abar) if lcm else external.DiscreteEpsDDPMDenoiser(unet, abar, quantize=False)
    guided = _cfg(wrapper, cond, len(seeds), cfg)

    def cfg_model(x, sigma):
        return guided(x, sigma)[0]

    sigmas = SIGMAS[schedule if schedule != "Automatic" else ("Automatic" if lcm else "Karras")](wrapper, steps)
    x = noise.next() * sigmas[0]
    if lcm:
        latents = R.lcm(cfg_model, x, sigmas, noise)
    else:
        latents = R.restart(cfg_model, x, sigmas, noise, sampling.get_sigmas_karras, sampling.to_d)
    return _decode(pipe, latents)


def _reference(pipe, arch, seeds, sampler, schedule, steps, cfg, size, eta=None):
    if sampler in TIMESTEP:
        return reference_timestep_images(pipe, arch, seeds, sampler, steps, cfg, size, eta or 0.0)
    return reference_sigma_images(pipe, arch, seeds, sampler, schedule, steps, cfg, size)


def _assert_same(mine, want):
    for i, (a, b) in enumerate(zip(mine, want)):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() == 0, f"image {i}: {int((diff > 0).sum())} values differ, by up to {diff.max()} levels"


TWO, ONE = [3135098381, 3135098382], [3135098381]
PAPER_CASES = [  # (sampler, schedule, steps, seeds, eta): schedule types where A1111 lets them matter
    ("DDIM", "Automatic", 7, TWO, None),
    ("DDIM", "Karras", 7, TWO, None),            # ignored by the timestep samplers: the same reference
    ("DDIM", "Automatic", 7, TWO, 1.0),          # "Eta DDIM" 1: a per-image draw used at every step
    ("DDIM CFG++", "Automatic", 7, TWO, None),
    ("PLMS", "Automatic", 7, TWO, None),
    ("UniPC", "Automatic", 7, TWO, None),
    ("LCM", "Automatic", 7, TWO, None),
    ("LCM", "Karras", 7, TWO, None),             # Karras over LCM's own sigma range
    ("Restart", "Automatic", 20, ONE, None),     # >= 20 steps: Karras main schedule + one restart
    ("Restart", "Exponential", 7, TWO, None),    # < 20 steps: Heun on the chosen schedule
]


@pytest.mark.parametrize("sampler,schedule,steps,seeds,eta", PAPER_CASES,
                         ids=[f"{a}-{b}-{c}" + (f"-eta{e}" if e else "") for a, b, c, _, e in PAPER_CASES])
def test_demo_model_image_equals_the_paper_reference_byte_for_byte(demo, sampler, schedule, steps, seeds, eta):
    mine, result = ours(demo, seeds, sampler, schedule, steps=steps, cfg=7.0, eta=eta)
    _assert_same(mine, _reference(demo.pipe, "sd1", seeds, sampler, schedule, steps, 7.0, 64, eta))
    assert f"Sampler: {sampler}," in result.infotexts[0] and ("Eta DDIM: " in result.infotexts[0]) == bool(eta)
    assert mine[0].std() > 5 and (len(mine) == 1 or not np.array_equal(mine[0], mine[1]))


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC", "LCM"])
def test_tiny_sdxl_image_equals_the_paper_reference_byte_for_byte(sdxl, sampler):
    seeds = [11, 12]
    mine, _ = ours(sdxl, seeds, sampler, "Automatic", steps=4, cfg=5.0)
    _assert_same(mine, _reference(sdxl.pipe, "sdxl", seeds, sampler, "Automatic", 4, 5.0, sdxl.default_size))
