"""DDIM, DDIM CFG++, PLMS and UniPC against float64 re-derivations written here from the reference text
(§1) and the papers, with the eps model called directly (no CFG unless stated).

Tolerance 1e-6: the samplers take abar at float32 (as A1111) and compute sqrt(1 - abar) in float32
(6e-8 relative per coefficient, ~20 steps); the test uses the same float32 abar values in float64.
"""
import math

import numpy as np
import pytest
import torch

from lora_ui.engine.sampling import timestep_samplers as T
from lora_ui.engine.sampling.cond import Cond, ImageConds, constant_conds
from lora_ui.engine.sampling.denoiser import CFGDenoiser
from sampling_testkit import NoiseStream, TinyEps, sd15_alphas_cumprod_f64

SHAPE = (2, 4, 3, 3)
ABAR64 = sd15_alphas_cumprod_f64()
ABAR32 = torch.from_numpy(ABAR64).float()


class EpsModel:
    def __init__(self):
        self.eps, self.ts = TinyEps(), []

    def __call__(self, x, t):
        self.ts.append(float(t[0]))
        return self.eps(x, t)


def z0():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def test_tau():
    assert T.ddim_timesteps(20).tolist() == list(range(1, 1000, 50))                 # 1, 51, ..., 951
    t30 = T.ddim_timesteps(30).tolist()
    assert len(t30) == 31 and t30[:2] == [1, 34] and t30[-1] == 991
    assert T.ddim_timesteps(20, discard_penultimate=True).tolist() == list(range(1, 1000, 47))


def ddim_reference(model_eps, x, tau, eta, stream, eps_dir=None):
    """Song et al. 2021 eq. 12 in float64: x0 = (x - sqrt(1-a) e) / sqrt(a);
    s = eta sqrt((1-ap)/(1-a) (1 - a/ap)); x' = sqrt(ap) x0 + sqrt(1 - ap - s^2) e_dir + s z."""
    for k in range(len(tau) - 1, 0, -1):
        a, ap = ABAR64[tau[k]], ABAR64[tau[k - 1]]
        e, e_dir = model_eps(x, tau[k])
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        s = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - s * s) * e_dir + s * stream.next()
    return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_equals_formula_19_calls_ending_on_abar1(eta):
    tau = T.ddim_timesteps(20)
    model, stream = EpsModel(), NoiseStream(SHAPE, 1)
    got = T.sample_ddim(model, z0(), tau, ABAR32, noise=stream, eta=eta)
    ref_eps = TinyEps()
    want = ddim_reference(lambda x, t: (ref_eps(x, torch.tensor([float(t)] * 2, dtype=torch.float64)),) * 2,
                          z0(), tau.tolist(), eta, NoiseStream(SHAPE, 1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert model.ts == [float(t) for t in range(951, 0, -50)][:19] and len(model.ts) == 19
    assert stream.draws == 19                                           # one per iteration, x0 at eta = 0


def test_ddim_last_step_targets_abar1_not_abar0():
    """With eps = 0 every step maps x to sqrt(ap / a) x, so the product telescopes to sqrt(abar[1]/abar[951])."""
    x = z0()
    got = T.sample_ddim(lambda x, t: torch.zeros_like(x), x, T.ddim_timesteps(20), ABAR32, noise=NoiseStream(SHAPE))
    torch.testing.assert_close(got, x * math.sqrt(ABAR64[1] / ABAR64[951]), rtol=1e-6, atol=0)


def test_ddim_cfgpp_uses_scaled_guidance_and_uncond_direction():
    eps = TinyEps()

    def inner(x, t, cond):   # cond rows: marker in embeds shifts eps
        return eps(x, t) + cond.embeds[:, 0, 0].reshape(-1, 1, 1, 1).to(x.dtype)

    def c(m):
        return Cond(torch.full((1, 77, 2), m, dtype=torch.float64))

    imgs = [ImageConds(((c(0.3), 1.0),), c(-0.2))] * 2
    cfg = CFGDenoiser(inner, 7.5, constant_conds(imgs))
    tau = T.ddim_timesteps(10)
    got = T.sample_ddim_cfgpp(cfg, z0(), tau, ABAR32, noise=NoiseStream(SHAPE, 2), eta=0.0)

    def guided(x, t):
        tt = torch.tensor([float(t)] * 2, dtype=torch.float64)
        e_u = eps(x, tt) - 0.2
        e_c = eps(x, tt) + 0.3
        return e_u + (e_c - e_u) * (7.5 / 12.5), e_u

    want = ddim_reference(guided, z0(), tau.tolist(), 0.0, NoiseStream(SHAPE, 2))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert cfg.calls == 9


def test_plms_equals_adams_bashforth_and_makes_20_calls():
    tau = T.ddim_timesteps(20).tolist()
    model = EpsModel()
    got = T.sample_plms(model, z0(), torch.tensor(tau), ABAR32)
    ref = TinyEps()

    def e(x, t):
        return ref(x, torch.tensor([float(t)] * 2, dtype=torch.float64))

    def ddim_step(x, eps_, a, ap):
        return math.sqrt(ap) * (x - math.sqrt(1 - a) * eps_) / math.sqrt(a) + math.sqrt(1 - ap) * eps_

    x, old = z0(), []
    for k in range(len(tau) - 1, 0, -1):
        a, ap = ABAR64[tau[k]], ABAR64[tau[k - 1]]
        et = e(x, tau[k])
        if not old:       # pseudo improved Euler (Liu et al. 2022 eq. 12 with the DDIM transfer)
            ep = (et + e(ddim_step(x, et, a, ap), tau[k - 1])) / 2
        else:             # Adams-Bashforth of order len(old) + 1 (capped at 4)
            coef = {1: [3, -1], 2: [23, -16, 5], 3: [55, -59, 37, -9]}[min(len(old), 3)]
            div = {1: 2, 2: 12, 3: 24}[min(len(old), 3)]
            hist = [et] + old[::-1]
            ep = sum(cc * h for cc, h in zip(coef, hist)) / div
        x = ddim_step(x, ep, a, ap)
        old = (old + [et])[-3:]
    torch.testing.assert_close(got, x, rtol=0, atol=1e-6)
    assert len(model.ts) == 20 and model.ts[:3] == [951.0, 901.0, 901.0]


# --- UniPC -----------------------------------------------------------------------------------------

def vp_log_alpha(t):
    """0.5 log abar, piecewise linear in t over t_n = (n + 1)/1000 (float64)."""
    return float(np.interp(t, np.arange(1, 1001) / 1000, 0.5 * np.log(ABAR64)))


def test_unipc_timesteps_and_call_count():
    model = EpsModel()
    T.sample_unipc(model, z0(), 20, ABAR32)
    want = [1000 * (t - 0.001) for t in np.linspace(1, 0.001, 21)[:20]]
    np.testing.assert_allclose(model.ts, want, atol=2e-3)               # float32 linspace of t
    assert len(model.ts) == 20 and model.ts[0] == pytest.approx(999) and model.ts[1] == pytest.approx(949.05, abs=1e-3)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_exact_for_a_point_mass(variant):
    """Data = one point x0*: the ideal eps(x, t) = (x - alpha_t x0*) / sigma_t predicts x0* exactly, all
    differences vanish and the data-prediction ODE has the closed form
    x_t / sigma_t = x_T / sigma_T + x0* (alpha_t / sigma_t - alpha_T / sigma_T)."""
    target = torch.linspace(-1, 1, 36, dtype=torch.float64).reshape(1, 4, 3, 3).expand(2, 4, 3, 3)

    def alpha_sigma(t):
        la = vp_log_alpha(t)
        return math.exp(la), math.sqrt(1 - math.exp(2 * la))

    def eps(x, tau):
        a, s = alpha_sigma(float(tau[0]) / 1000 + 0.001)
        return (x - a * target) / s

    x_t = z0()
    got = T.sample_unipc(eps, x_t, 20, ABAR32, variant=variant)
    a1, s1 = alpha_sigma(1.0)
    a0, s0 = alpha_sigma(0.001)
    want = s0 * (x_t / s1 + target * (a0 / s0 - a1 / s1))
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)             # alpha/sigma from float32 log abar


def test_unipc_order_coefficients_bh1():
    """Order 2 (UniPC paper eq. 8 / Alg. 2 in data prediction, hh = -h): rows R_i = r^(i-1) with r = (r_1, 1),
    b_1 = (expm1(hh)/hh - 1) / B(h), B(h) = hh for bh1."""
    h = torch.tensor(0.4, dtype=torch.float64)
    r, b, b_h, h_phi_1 = T._unipc_coefficients(h, [torch.tensor(-0.8, dtype=torch.float64)], 2, "bh1")
    hh = -0.4
    assert float(h_phi_1) == pytest.approx(math.expm1(hh))
    assert float(b_h) == pytest.approx(hh)
    assert float(b[0]) == pytest.approx((math.expm1(hh) / hh - 1) / hh)
    assert r.tolist() == [[1.0, 1.0], [-0.8, 1.0]]
