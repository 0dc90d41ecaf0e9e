"""Each sigma-list sampler against k-diffusion 0.1.1.post1's sample_* on the same tiny nonlinear model,
the same sigmas and the same noise: k-diffusion's randn_like is routed to a second copy of the seeded
stream (as A1111 routes it to its generators), Brownian samplers get the same deterministic
noise_sampler. Besides the latents, the number of model calls and of noise draws must match (A1111's
later noise depends on the stream position).

Everything runs in float64 (the model, x, sigmas), so the two implementations of the same algebra agree to
rounding (~1e-15 relative, a few hundred operations): atol 1e-9 leaves room for that and nothing else; any
wrong coefficient or order moves the result by >1e-3 on this model (checked by the sanity test below).
DPM fast/adaptive build their own float32 log-sigma grid in both implementations, identically.
"""
import math

import pytest
import torch

import kdiff_ref
from kdiff_ref import sampling as ref
from lora_ui.engine.sampling import k_samplers as K
from sampling_testkit import FixedBrownian, NoiseStream, TinyEps

SHAPE = (2, 4, 3, 3)
ATOL = 1e-9


class Model:
    """D(x, sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), sigma); counts calls."""

    def __init__(self):
        self.eps = TinyEps()
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return x - s * self.eps(x / (s ** 2 + 1) ** 0.5, sigma * 60)


def karras(n, discard=False):
    s = ref.get_sigmas_karras(n + 1 if discard else n, 0.0291675, 14.614642).double()
    return torch.cat([s[:-2], s[-1:]]) if discard else s


def z0():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(123), dtype=torch.float64)


CASES = {  # name: (ours, reference, kwargs for both, brownian)
    "euler": (K.sample_euler, ref.sample_euler, {}, False),
    "euler_churn": (K.sample_euler, ref.sample_euler, dict(s_churn=2.0, s_tmin=0.1, s_tmax=10.0, s_noise=1.003), False),
    "euler_a": (K.sample_euler_ancestral, ref.sample_euler_ancestral, dict(eta=1.0), False),
    "euler_a_eta": (K.sample_euler_ancestral, ref.sample_euler_ancestral, dict(eta=0.6, s_noise=0.97), False),
    "heun": (K.sample_heun, ref.sample_heun, {}, False),
    "heun_churn": (K.sample_heun, ref.sample_heun, dict(s_churn=1.0), False),
    "lms": (K.sample_lms, ref.sample_lms, {}, False),
    "dpm_2": (K.sample_dpm_2, ref.sample_dpm_2, {}, False),
    "dpm_2_churn": (K.sample_dpm_2, ref.sample_dpm_2, dict(s_churn=1.5, s_noise=1.01), False),
    "dpm_2_a": (K.sample_dpm_2_ancestral, ref.sample_dpm_2_ancestral, dict(eta=1.0), False),
    "dpmpp_2s_a": (K.sample_dpmpp_2s_ancestral, ref.sample_dpmpp_2s_ancestral, dict(eta=1.0), False),
    "dpmpp_2m": (K.sample_dpmpp_2m, ref.sample_dpmpp_2m, {}, False),
    "dpmpp_sde": (K.sample_dpmpp_sde, ref.sample_dpmpp_sde, dict(eta=1.0), True),
    "dpmpp_sde_eta0": (K.sample_dpmpp_sde, ref.sample_dpmpp_sde, dict(eta=0.0), True),
    "dpmpp_2m_sde": (K.sample_dpmpp_2m_sde, ref.sample_dpmpp_2m_sde, dict(eta=1.0), True),
    "dpmpp_2m_sde_heun": (K.sample_dpmpp_2m_sde, ref.sample_dpmpp_2m_sde, dict(eta=1.0, solver_type="heun"), True),
    "dpmpp_3m_sde": (K.sample_dpmpp_3m_sde, ref.sample_dpmpp_3m_sde, dict(eta=1.0), True),
}


def run_pair(ours, theirs, sigmas, kwargs, brownian, seed=7):
    """Run both with identical inputs; returns (ours, theirs, model calls, draws) for each."""
    out = []
    for fn, is_ref in ((ours, False), (theirs, True)):
        model, stream = Model(), NoiseStream(SHAPE, seed)
        kw = dict(kwargs)
        if brownian:
            kw["noise_sampler"] = FixedBrownian(SHAPE)
        x = z0() * sigmas[0]
        if is_ref:
            with kdiff_ref.noise_stream(stream):
                res = fn(model, x, sigmas, disable=True, **kw)
        else:
            res = fn(model, x, sigmas, noise=stream, **kw)
        out.append((res, model.calls, stream.draws, kw.get("noise_sampler", None) and kw["noise_sampler"].calls))
    return out


@pytest.mark.parametrize("case", CASES)
def test_full_run_equals_k_diffusion(case):
    ours, theirs, kwargs, brownian = CASES[case]
    discard = case.startswith("dpm_2") or case == "dpmpp_3m_sde"
    sigmas = karras(8, discard)
    (a, calls_a, draws_a, bcalls_a), (b, calls_b, draws_b, bcalls_b) = run_pair(ours, theirs, sigmas, kwargs, brownian)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert (calls_a, draws_a, bcalls_a) == (calls_b, draws_b, bcalls_b)


@pytest.mark.parametrize("case", ["euler", "euler_a", "heun", "lms", "dpm_2", "dpm_2_a", "dpmpp_2s_a", "dpmpp_2m",
                                  "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_one_step_equals_k_diffusion(case):
    ours, theirs, kwargs, brownian = CASES[case]
    sigmas = karras(8)[:2]                                             # one step 14.61 -> 11.7 (not to 0)
    (a, *ca), (b, *cb) = run_pair(ours, theirs, sigmas, kwargs, brownian)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert ca == cb


def test_draw_counts_follow_a1111():
    """Reference §5: Euler/Heun/DPM2 draw once per iteration even unused; ancestral ones every step but the last."""
    sigmas = karras(8)
    for fn, draws in ((K.sample_euler, 8), (K.sample_heun, 8), (K.sample_euler_ancestral, 7),
                      (K.sample_dpmpp_2s_ancestral, 7), (K.sample_dpmpp_2m, 0), (K.sample_lms, 0)):
        stream = NoiseStream(SHAPE)
        fn(Model(), z0() * sigmas[0], sigmas, noise=stream)
        assert stream.draws == draws, fn.__name__


def test_sanity_a_wrong_sampler_is_detected():
    """The comparison has teeth: DPM++ 2M and Euler differ by far more than ATOL on this model."""
    sigmas = karras(8)
    (a, *_), (b, *_) = run_pair(K.sample_dpmpp_2m, ref.sample_euler, sigmas, {}, False)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("n", [8, 9, 10])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_fast_equals_k_diffusion(n, eta):
    res = []
    for is_ref in (False, True):
        model, stream = Model(), NoiseStream(SHAPE, 3)
        x = z0() * 14.614642
        if is_ref:
            with kdiff_ref.noise_stream(stream):
                out = ref.sample_dpm_fast(model, x, 0.0291675, 14.614642, n, disable=True, eta=eta)
        else:
            out = K.sample_dpm_fast(model, x, 0.0291675, 14.614642, n, noise=stream, eta=eta)
        res.append((out, model.calls, stream.draws))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=ATOL)
    assert res[0][1:] == res[1][1:] and res[0][1] == n                 # n model calls, one draw per step


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_adaptive_equals_k_diffusion(eta):
    res = []
    for is_ref in (False, True):
        model, stream = Model(), NoiseStream(SHAPE, 4)
        x = z0() * 14.614642
        if is_ref:
            with kdiff_ref.noise_stream(stream):
                out = ref.sample_dpm_adaptive(model, x, 0.0291675, 14.614642, disable=True, eta=eta)
        else:
            out = K.sample_dpm_adaptive(model, x, 0.0291675, 14.614642, noise=stream, eta=eta)
        res.append((out, model.calls, stream.draws))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=1e-8)
    assert res[0][1:] == res[1][1:]


# --- Restart (no k-diffusion function: composed from k-diffusion's Heun and the schedule rule) ------

def test_restart_below_20_steps_is_plain_heun():
    sigmas = karras(10)
    (a, calls_a, draws_a, _), (b, calls_b, _, _) = run_pair(K.sample_restart, ref.sample_heun, sigmas, {}, False)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert calls_a == calls_b == 19 and draws_a == 0


def test_restart_20_steps_equals_heun_segments_with_one_jump():
    """n = 20: main Karras schedule of 20 - 9 = 11 steps between sigmas[-2] and sigmas[0]; after the level
    nearest 0.1, jump back to the level nearest 2 with fresh noise, 9 Karras Heun steps down, continue."""
    sigmas = karras(20)
    main = ref.get_sigmas_karras(11, float(sigmas[-2]), float(sigmas[0])).double()
    j = int(torch.argmin((main - 0.1).abs()))
    top = int(torch.argmin((main - 2.0).abs()))
    ladder = ref.get_sigmas_karras(10, float(main[j]), float(main[top])).double()[:-1]

    jump_noise = NoiseStream(SHAPE, 9)
    model = Model()
    x = z0() * sigmas[0]
    with kdiff_ref.noise_stream(NoiseStream(SHAPE, 999)):           # Heun's unused churn draws go elsewhere
        x = ref.sample_heun(model, x, main[: j + 1], disable=True)
        x = x + jump_noise.next() * (ladder[0] ** 2 - main[j] ** 2) ** 0.5
        x = ref.sample_heun(model, x, ladder, disable=True)
        want = ref.sample_heun(model, x, main[j:], disable=True)

    ours_model, stream = Model(), NoiseStream(SHAPE, 9)
    got = K.sample_restart(ours_model, z0() * sigmas[0], sigmas, noise=stream)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert stream.draws == 1 and ours_model.calls == model.calls == 2 * 20 - 1
    assert len(K.restart_plan(sigmas)) == 20


def test_restart_36_steps_restarts_twice():
    plan = K.restart_plan(karras(36))
    ups = sum(1 for (s0, s1), (n0, _) in zip(plan, plan[1:]) if n0 > s1)
    assert len(plan) == 36 and ups == 2


# --- LCM (A1111's own; no k-diffusion function) ----------------------------------------------------

def test_lcm_is_denoise_then_renoise():
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.0], dtype=torch.float64)
    model, stream, check = Model(), NoiseStream(SHAPE, 5), NoiseStream(SHAPE, 5)
    got = K.sample_lcm(model, z0() * sigmas[0], sigmas, noise=stream)
    x, m2 = z0() * sigmas[0], Model()
    for i in range(3):
        x = m2(x, sigmas[i].expand(SHAPE[0]))
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * check.next()
    torch.testing.assert_close(got, x, rtol=0, atol=ATOL)
    assert stream.draws == 2


def test_lms_coefficients_integrate_lagrange_polynomials():
    """Order-2 coefficients written out: the integral of the linear Lagrange basis over [t_i, t_i+1]."""
    t = torch.tensor([10.0, 6.0, 3.0, 1.0]).numpy()
    i, h = 1, 3.0 - 6.0
    c0 = K.lms_coefficient(2, t, i, 0)       # node t_i
    c1 = K.lms_coefficient(2, t, i, 1)       # node t_i-1
    # l0(tau) = (tau - 10) / (6 - 10), l1(tau) = (tau - 6) / (10 - 6), integrated from 6 to 3
    assert c0 == pytest.approx(((3 - 10) ** 2 - (6 - 10) ** 2) / 2 / (6 - 10))
    assert c1 == pytest.approx(((3 - 6) ** 2 - 0) / 2 / (10 - 6))
    assert c0 + c1 == pytest.approx(h)
