"""Every schedule type for SD1.5's noise levels, n = 20 and 7, against float64 values computed here from
the published formulas (not from the code under test), against k-diffusion where it has the function,
and against the A1111 fixture numbers of the reference (§10).

Tolerances: the code computes in float32 as A1111 does; float32 rounds to 6e-8 relative, Karras raises a
float32 sum to the 7th power (about 7 x that), and log-sigma interpolation adds a few ulps:
rel 3e-6 covers all of it while any formula mistake (wrong index, missing +1, wrong rho) is >1e-3.
"""
import math

import mpmath
import numpy as np
import pytest
import torch

from kdiff_ref import external, sampling as ksampling
from lora_ui.engine.sampling import schedules as S
from lora_ui.engine.sampling.registry import find_schedule
from sampling_testkit import log_interp_sigma, sd15_alphas_cumprod_f64, sd15_schedule, sd15_sigmas_f64

SIG = sd15_sigmas_f64()
S_MIN, S_MAX = SIG[0], SIG[-1]
REL = 3e-6


@pytest.fixture(scope="module")
def model():
    return sd15_schedule()


def t_of_sigma(sigma):
    """Fractional t from the float64 table: k = last index with log sigma_k <= log sigma, interpolate."""
    ls = np.log(SIG)
    k = min(int(np.searchsorted(ls, math.log(sigma), side="right")) - 1, 998)
    k = max(k, 0)
    w = min(max((ls[k] - math.log(sigma)) / (ls[k] - ls[k + 1]), 0.0), 1.0)
    return k + w


def expected(name, n):
    """The float64 list for schedule `name` at n steps, from the formulas (reference §2 / papers)."""
    r = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    if name == "Uniform":
        vals = [log_interp_sigma(999 * (1 - x), SIG) for x in r]
    elif name == "Normal":
        t0, t1 = t_of_sigma(S_MAX), t_of_sigma(S_MIN)
        vals = [log_interp_sigma(t0 + x * (t1 - t0), SIG) for x in r]
    elif name == "SGM Uniform":
        t0, t1 = t_of_sigma(S_MAX), t_of_sigma(S_MIN)
        vals = [log_interp_sigma(t0 + (i / n) * (t1 - t0), SIG) for i in range(n)]
    elif name == "Karras":
        vals = [(S_MAX ** (1 / 7) + x * (S_MIN ** (1 / 7) - S_MAX ** (1 / 7))) ** 7 for x in r]
    elif name == "Exponential":
        vals = [math.exp(math.log(S_MAX) + x * (math.log(S_MIN) - math.log(S_MAX))) for x in r]
    elif name == "Polyexponential":
        vals = [math.exp((1 - x) * (math.log(S_MAX) - math.log(S_MIN)) + math.log(S_MIN)) for x in r]
    elif name == "Simple":
        vals = [SIG[999 - (i * 1000) // n] for i in range(n)]
    elif name == "DDIM":
        # every 1 + k s below 1000: n + 1 levels when s does not divide 1000 (n = 7: 8), as A1111
        step = 1000 // n
        vals = [SIG[i] for i in range(1, 1000, step)][::-1]
    elif name == "KL Optimal":
        return [math.tan((j / n) * math.atan(S_MIN) + (1 - j / n) * math.atan(S_MAX)) for j in range(n + 1)]
    elif name == "Align Your Steps":
        table = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        vals = [_loglinear(table, i / (n - 1)) for i in range(n)]
    elif name == "Beta":
        vals = [S_MIN + _beta_ppf(1 - x) * (S_MAX - S_MIN) for x in r]
    else:
        raise AssertionError(name)
    return vals + [0.0]


def _loglinear(table, u):
    """Resample the table (descending) at fraction u of its length, linear in log sigma."""
    pos = u * (len(table) - 1)
    k = min(int(pos), len(table) - 2)
    w = pos - k
    return math.exp((1 - w) * math.log(table[k]) + w * math.log(table[k + 1]))


def _beta_ppf(q, a=0.6, b=0.6):
    """Inverse regularized incomplete beta by mpmath root finding (independent of scipy)."""
    if q <= 0 or q >= 1:
        return float(q)
    f = lambda x: mpmath.betainc(a, b, 0, x, regularized=True) - q  # noqa: E731
    return float(mpmath.findroot(f, (mpmath.mpf("1e-12"), 1 - mpmath.mpf("1e-12")), solver="bisect", tol=1e-20))


ALL = [s.name for s in S.SCHEDULE_TYPES if s.name != "Automatic"]


@pytest.mark.parametrize("n", [20, 7])
@pytest.mark.parametrize("name", ALL)
def test_schedule_equals_published_formula(model, name, n):
    got, info = S.build_sigmas(find_schedule(name), n, model)
    want = expected(name, n)
    assert got.dtype == torch.float32 and len(got) == len(want)
    assert len(got) == (n + 2 if (name, n) == ("DDIM", 7) else n + 1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=REL, atol=1e-9 if name != "Align Your Steps" else 1e-7)
    assert info == {}
    if name == "KL Optimal":
        assert float(got[-1]) == pytest.approx(S_MIN, rel=1e-6)          # no final 0
    else:
        assert float(got[-1]) == 0.0


@pytest.mark.parametrize("n", [20, 7])
def test_equal_to_k_diffusion(model, n):
    """k-diffusion's own functions (same float32 ops), to 1e-6 absolute as A1111 calls them."""
    ref_model = external.DiscreteEpsDDPMDenoiser(None, torch.from_numpy(sd15_alphas_cumprod_f64()).float(), False)
    pairs = {
        "Karras": ksampling.get_sigmas_karras(n, float(model.sigmas[0]), float(model.sigmas[-1]), rho=7.0),
        "Exponential": ksampling.get_sigmas_exponential(n, float(model.sigmas[0]), float(model.sigmas[-1])),
        "Polyexponential": ksampling.get_sigmas_polyexponential(n, float(model.sigmas[0]), float(model.sigmas[-1]), rho=1.0),
        "Uniform": ref_model.get_sigmas(n),
    }
    for name, ref in pairs.items():
        got, _ = S.build_sigmas(find_schedule(name), n, model)
        torch.testing.assert_close(got, ref.float(), rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(model.get_sigmas(n), ref_model.get_sigmas(n), rtol=0, atol=1e-6)


FIXTURES = {  # reference §10, N = 20: (sigma0, sigma1, sigma2), tail
    "Uniform": ((14.6146, 10.7468, 8.0815), (0.2322, 0.0292, 0)),
    "Karras": ((14.6146, 11.7254, 9.3402), (0.0485, 0.0292, 0)),
    "Exponential": ((14.6146, 10.5363, 7.5961), (0.0405, 0.0292, 0)),
    "SGM Uniform": ((14.6146, 10.9073, 8.3072), (0.2255, 0)),
    "Simple": ((14.6146, 10.9042, 8.3028), (0.2230, 0)),
    "DDIM": ((11.0283, 8.3907, 6.5064), (0.0413, 0)),
    "KL Optimal": ((14.6146, 6.9957, 4.5650), (0.1032, 0.0292)),
    "Align Your Steps": ((14.615, 9.5217, 6.3012), (0.0694, 0.029, 0)),
    "Beta": ((14.6146, 14.4152, 13.9863), (0.0292, 0)),
}


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_fixtures(model, name):
    got, _ = S.build_sigmas(find_schedule(name), 20, model)
    head, tail = FIXTURES[name]
    np.testing.assert_allclose(got[:3].double().numpy(), head, atol=5e-5)       # fixtures have 4 decimals
    np.testing.assert_allclose(got[-len(tail):].double().numpy(), tail, atol=5e-5)


def test_fixture_model_table_and_timesteps(model):
    np.testing.assert_allclose(model.alphas_cumprod[[0, 1, 999]].double().numpy(), [0.99915, 0.998296, 0.0046601],
                               rtol=5e-6)
    assert float(model.sigmas[0]) == pytest.approx(0.0291675, abs=5e-8)
    assert float(model.sigmas[-1]) == pytest.approx(14.614642, abs=5e-7)   # float32 cumprod would give ...647
    uni, _ = S.build_sigmas(find_schedule("Uniform"), 20, model)
    kar, _ = S.build_sigmas(find_schedule("Karras"), 20, model)
    np.testing.assert_allclose(model.sigma_to_t(uni[:3]).double().numpy(), [999, 946.421, 893.842], atol=5e-4)
    np.testing.assert_allclose(model.sigma_to_t(kar[:3]).double().numpy(), [999, 961.733, 921.042], atol=5e-4)


def test_discard_penultimate_is_n_plus_one_minus_one(model):
    got, _ = S.build_sigmas(find_schedule("Karras"), 20, model, discard_penultimate_sigma=True)
    full = expected("Karras", 21)
    want = full[:-2] + full[-1:]
    assert len(got) == 21
    np.testing.assert_allclose(got.double().numpy(), want, rtol=REL, atol=1e-9)
    np.testing.assert_allclose(got[[0, 1, 2, -3, -2, -1]].double().numpy(),
                               [14.6146, 11.8572, 9.5583, 0.0744, 0.0473, 0], atol=5e-5)   # §10 "DPM2 (discard)"


def test_overrides_change_the_list_and_are_recorded(model):
    st = find_schedule("Karras")
    got, info = S.build_sigmas(st, 7, model, overrides=S.SigmaOverrides(sigma_min=0.1, sigma_max=10.0, rho=5.0))
    want = [(10 ** (1 / 5) + x * (0.1 ** (1 / 5) - 10 ** (1 / 5))) ** 5 for x in np.linspace(0, 1, 7)] + [0.0]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=REL)
    assert info == {"Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    # rho means nothing to Exponential: not applied, not recorded
    _, info = S.build_sigmas(find_schedule("Exponential"), 7, model, overrides=S.SigmaOverrides(rho=5.0))
    assert info == {}


def test_align_your_steps_sdxl_table_at_ten_steps(model):
    got, _ = S.build_sigmas(find_schedule("Align Your Steps"), 10, model, sdxl=True)
    want = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
    assert len(got) == 11 and float(got[-1]) == 0.0
    np.testing.assert_allclose(got[:-1].double().numpy(), [_loglinear(want, i / 9) for i in range(10)], rtol=REL)
    got11, _ = S.build_sigmas(find_schedule("Align Your Steps"), 11, model, sdxl=True)
    np.testing.assert_allclose(got11.double().numpy(), want + [0.0], rtol=1e-7)     # n = 11: the table as is
