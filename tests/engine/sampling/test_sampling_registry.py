"""A1111 1.10 sampler names, aliases, Automatic schedules, infotext labels, defaults, and `sample` running
every sampler end to end on a tiny float32 model (plus exact equality with the direct sampler call)."""
import pytest
import torch

from lora_ui.engine.sampling import k_samplers as K
from lora_ui.engine.sampling import registry as R
from lora_ui.engine.sampling.cond import Cond, ImageConds, constant_conds
from lora_ui.engine.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from sampling_testkit import FixedBrownian, NoiseStream, TinyEps, sd15_schedule

A1111_NAMES = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
               "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
               "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]
AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
             "DPM++ 2M SDE Heun": "Exponential", "DPM++ 2S a": "Karras", "DPM++ 3M SDE": "Exponential",
             "DPM2": "Karras", "DPM2 a": "Karras", "Restart": "Karras"}


def test_names_in_a1111_order():
    assert list(R.SAMPLER_NAMES) == A1111_NAMES
    assert list(R.SCHEDULE_NAMES) == ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential",
                                      "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM",
                                      "Beta"]


@pytest.mark.parametrize("alias,name", [("k_euler_a", "Euler a"), ("k_euler_ancestral", "Euler a"),
                                        ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"), ("k_dpm_ad", "DPM adaptive"),
                                        ("ddim_cfgpp", "DDIM CFG++"), ("k_lcm", "LCM"), ("euler A", "Euler a")])
def test_aliases(alias, name):
    assert R.find_sampler(alias).name == name


@pytest.mark.parametrize("given,want", [
    (("DPM++ 2M Karras", None), ("DPM++ 2M", "Automatic")),      # own default parses back to Automatic
    (("DPM++ 2M", "Karras"), ("DPM++ 2M", "Automatic")),
    (("DPM++ 2M", "Exponential"), ("DPM++ 2M", "Exponential")),
    (("Euler a Karras", "Automatic"), ("Euler a", "Karras")),
    (("DPM++ SDE Karras", None), ("DPM++ SDE", "Automatic")),
    (("DPM++ 2M SDE Exponential", None), ("DPM++ 2M SDE", "Automatic")),
    (("Euler SGM Uniform", None), ("Euler", "SGM Uniform")),
    (("Euler", "SGMUniform"), ("Euler", "SGM Uniform")),
    ((None, None), ("DPM++ 2M", "Automatic")),
])
def test_old_names_and_suffixes(given, want):
    assert R.parse_sampler_and_schedule(*given) == want


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(R.SamplingError, match="Euler a.*UniPC"):
        R.find_sampler("Euler b")
    with pytest.raises(R.SamplingError, match="Karras"):
        R.find_schedule("Turbo")
    assert issubclass(R.SamplingError, ValueError)


@pytest.mark.parametrize("name", A1111_NAMES)
def test_automatic_schedule_and_infotext_label(name):
    spec = R.find_sampler(name)
    label = R.schedule_label(spec, "Automatic")
    assert label == AUTOMATIC.get(name, "Automatic")
    # an explicit choice is written as chosen (timestep samplers ignore it but A1111 still writes it)
    assert R.schedule_label(spec, "Exponential") == "Exponential"


def test_flags_and_defaults():
    f = {s.name: s for s in R.SAMPLERS}
    assert {n for n, s in f.items() if s.second_order} == {"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"}
    assert {n for n, s in f.items() if s.brownian} == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {n for n, s in f.items() if s.discard_penultimate} == {"DPM++ 3M SDE", "DPM2", "DPM2 a"}
    assert {n for n, s in f.items() if s.uses_ensd} == {"DPM++ 2S a", "Euler a", "DPM2 a", "DPM fast", "DPM adaptive"}
    assert {n for n, s in f.items() if s.churn} == {"Euler", "Heun", "DPM2"}
    assert {n for n, s in f.items() if s.eta_option == "eta_ddim"} == {"DDIM", "DDIM CFG++"}
    assert {n for n, s in f.items() if s.eta_option == "eta_ancestral"} == {
        "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "DPM2 a",
        "DPM fast", "DPM adaptive"}
    assert not f["Euler a"].s_noise                       # A1111 does not pass s_noise to Euler a


def test_plan_sigmas_and_infotext():
    m = sd15_schedule()
    p = R.plan("DPM++ 2M", "Automatic", 20, m)
    assert p.infotext == {"Schedule type": "Karras"} and p.eta is None
    assert float(p.sigmas[1]) == pytest.approx(11.7254, abs=5e-5)
    p = R.plan("DPM2", "Automatic", 20, m)
    assert len(p.sigmas) == 21 and float(p.sigmas[-2]) == pytest.approx(0.0473, abs=5e-5)
    p = R.plan("Euler a", None, 20, m)
    assert p.infotext == {"Schedule type": "Automatic"} and p.eta == 1.0
    assert float(p.sigmas[1]) == pytest.approx(10.7468, abs=5e-5)
    p = R.plan("Euler a", None, 20, m, R.SamplingOptions(eta=0.5))
    assert p.infotext["Eta"] == 0.5
    p = R.plan("DDIM", "Karras", 20, m, R.SamplingOptions(eta_ddim=0.3))
    assert p.timesteps.tolist() == list(range(1, 1000, 50)) and p.infotext == {"Schedule type": "Karras", "Eta DDIM": 0.3}
    p = R.plan("Euler", "Automatic", 20, m, R.SamplingOptions(always_discard_next_to_last_sigma=True, s_churn=1.0))
    assert p.infotext == {"Schedule type": "Automatic", "Discard penultimate sigma": True, "Sigma churn": 1.0}
    assert float(p.sigmas[-2]) == pytest.approx(float(m.get_sigmas(21)[-3]))


# --- sample() end to end ---------------------------------------------------------------------------

SHAPE = (2, 4, 4, 4)


class PointMassEps:
    """The exact eps predictor for data = the single point 0: eps(x_t, t) = x_t / sqrt(1 - abar(t)), abar(t)
    from the model's sigma at (fractional) t. Every sampler must then end near 0 (k-samplers: ~0; DDIM and
    UniPC stop at sigma[1] / t = 0.001, leaving that small noise level)."""

    def __init__(self, sched, marker_gain=0.0):
        self.sched, self.gain = sched, marker_gain

    def __call__(self, x_in, t, encoder_hidden_states=None):
        sigma = self.sched.t_to_sigma(t.float()).reshape(-1, 1, 1, 1)
        eps = x_in * (1 + sigma ** 2) ** 0.5 / sigma
        return eps + self.gain * encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def make_cfg(gain=0.0):
    sched = sd15_schedule()
    den = DiscreteDenoiser(PointMassEps(sched, gain), sched)

    def c(m):
        return Cond(torch.full((1, 77, 8), m))

    imgs = [ImageConds(((c(0.1), 1.0),), c(0.0)), ImageConds(((c(0.2), 1.0), (c(-0.1), 0.5)), c(0.0))]
    return CFGDenoiser(den, 5.0, constant_conds(imgs))


def z():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", A1111_NAMES)
def test_sample_runs_every_sampler(name):
    cfg = make_cfg()
    out = R.sample(name, "Automatic", cfg, z(), 6, NoiseStream(SHAPE, 1, torch.float32),
                   lambda x, lo, hi: FixedBrownian(SHAPE, torch.float32))
    assert out.shape == SHAPE and torch.isfinite(out).all()
    spec = R.find_sampler(name)
    if spec.family == "timestep" or name.startswith("DPM fast") or name == "DPM adaptive":
        # these stop at a small noise level: abar[1] (DDIM/PLMS), t = 0.001 (UniPC), sigma_min (DPM fast/adaptive)
        assert out.abs().max() < 0.2 and out.abs().max() > 1e-3
    else:
        assert out.abs().max() < 1e-3, out.abs().max()
    if name in ("DDIM", "DDIM CFG++", "PLMS", "UniPC"):
        assert cfg.calls == 0                                          # timestep samplers use a re-wrapped copy
    elif spec.second_order and name not in ("DPM++ 2S a", "DPM2 a", "DPM++ SDE"):
        assert cfg.calls == 2 * 6 - 1                                  # Heun/DPM2/Restart: Euler onto 0


def test_sample_equals_direct_call():
    got = R.sample("DPM++ 2M", "Automatic", make_cfg(0.5), z(), 8, NoiseStream(SHAPE, 1, torch.float32))
    p = R.plan("DPM++ 2M", "Automatic", 8, sd15_schedule())
    want = K.sample_dpmpp_2m(make_cfg(0.5), z() * p.sigmas[0], p.sigmas, noise=NoiseStream(SHAPE, 1, torch.float32))
    assert torch.equal(got, want)


def test_sample_brownian_interval_and_missing_factory():
    seen = {}

    def factory(x, lo, hi):
        seen.update(lo=lo, hi=hi)
        return FixedBrownian(SHAPE, torch.float32)

    R.sample("DPM++ 2M SDE", None, make_cfg(), z(), 5, NoiseStream(SHAPE, dtype=torch.float32), factory)
    p = R.plan("DPM++ 2M SDE", None, 5, sd15_schedule())
    assert seen == {"lo": pytest.approx(float(p.sigmas[-2])), "hi": pytest.approx(float(p.sigmas[0]))}
    with pytest.raises(R.SamplingError, match="Brownian"):
        R.sample("DPM++ SDE", None, make_cfg(), z(), 5, NoiseStream(SHAPE, dtype=torch.float32))
