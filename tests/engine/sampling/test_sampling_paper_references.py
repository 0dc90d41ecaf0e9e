"""Our DDIM, DDIM CFG++, PLMS, UniPC, LCM and Restart loops equal, bit for bit in float32, the reference
loops written from the papers in reference_loops.py (the ones the whole-pipeline byte-exact tests in
tests/engine/test_txt2img_reference.py use), on a small nonlinear eps model and a seeded noise stream.

The images of those tests are 64 x 64: a ~1e-5 latent difference can leave them equal, so the numerics are
pinned here at the latent level (torch.equal), where such a difference fails.
"""
import pytest
import torch

from kdiff_ref import sampling as kdiff
from lora_ui.engine.sampling import k_samplers as K
from lora_ui.engine.sampling import timestep_samplers as T
from reference_loops import a1111_tau, ddim, ddim_cfgpp, lcm, plms, restart, unipc
from sampling_testkit import NoiseStream, TinyEps, sd15_alphas_cumprod_f64

SHAPE = (2, 4, 16, 16)
ABAR = torch.from_numpy(sd15_alphas_cumprod_f64()).float()


def start(scale=1.0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)) * scale


class Eps:
    """eps(x, t) from TinyEps (float32 out); `pair` gives (guided, uncond) for CFG++ with a second net."""

    def __init__(self):
        self.cond, self.uncond = TinyEps(seed=1), TinyEps(seed=2)

    def __call__(self, x, t):
        return self.uncond(x, t) + (self.cond(x, t) - self.uncond(x, t)) * 7.0

    def pair(self, x, t, scale):
        u = self.uncond(x, t)
        return u + (self.cond(x, t) - u) * scale, u

    def forward(self, x, t, scale_multiplier=1.0):     # our CFGDenoiser's CFG++ interface
        return self.pair(x, t, 7.0 * scale_multiplier)


def x0_model(x, sigma):
    """A sigma-space denoiser D(x, sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), 1000 sigma / 15)."""
    s = sigma[:, None, None, None]
    return x - s * Eps()(x / (s ** 2 + 1) ** 0.5, sigma * (1000 / 15))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_equals_the_paper_loop(eta):
    mine = T.sample_ddim(Eps(), start(), T.ddim_timesteps(7), ABAR, noise=NoiseStream(SHAPE, 3, torch.float32), eta=eta)
    ref = ddim(Eps(), start(), ABAR, 7, NoiseStream(SHAPE, 3, torch.float32), eta=eta)
    assert torch.equal(mine, ref)


def test_ddim_cfgpp_equals_the_paper_loop():
    eps = Eps()
    mine = T.sample_ddim_cfgpp(eps, start(), T.ddim_timesteps(7), ABAR, noise=NoiseStream(SHAPE, 3, torch.float32))
    ref = ddim_cfgpp(lambda x, t: eps.pair(x, t, 7.0 / 12.5), start(), ABAR, 7, NoiseStream(SHAPE, 3, torch.float32))
    assert torch.equal(mine, ref)


def test_plms_equals_the_paper_loop():
    assert torch.equal(T.sample_plms(Eps(), start(), T.ddim_timesteps(9), ABAR), plms(Eps(), start(), ABAR, 9))


@pytest.mark.parametrize("steps", [3, 8, 20])
def test_unipc_equals_the_paper_loop(steps):
    mine = T.sample_unipc(Eps(), start(), steps, ABAR)
    assert torch.equal(mine, unipc(Eps(), start(), ABAR, steps))


def test_tau_is_a1111s():
    assert torch.equal(a1111_tau(7), T.ddim_timesteps(7)) and a1111_tau(20).tolist() == list(range(1, 1000, 50))


def test_lcm_equals_the_paper_loop():
    sigmas = kdiff.get_sigmas_karras(6, 0.1, 10.0)
    mine = K.sample_lcm(x0_model, start(10.0), sigmas, noise=NoiseStream(SHAPE, 4, torch.float32))
    assert torch.equal(mine, lcm(x0_model, start(10.0), sigmas, NoiseStream(SHAPE, 4, torch.float32)))


@pytest.mark.parametrize("steps", [7, 20, 36])
def test_restart_equals_the_paper_loop(steps):
    sigmas = kdiff.get_sigmas_karras(steps, 0.0292, 14.6146)
    noise_a, noise_b = NoiseStream(SHAPE, 4, torch.float32), NoiseStream(SHAPE, 4, torch.float32)
    mine = K.sample_restart(x0_model, start(14.6), sigmas, noise=noise_a)
    ref = restart(x0_model, start(14.6), sigmas, noise_b, kdiff.get_sigmas_karras, kdiff.to_d)
    assert torch.equal(mine, ref)
    assert noise_a.draws == noise_b.draws == {7: 0, 20: 1, 36: 2}[steps]
