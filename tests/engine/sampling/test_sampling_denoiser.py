"""DiscreteSchedule / DiscreteDenoiser against k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser
on the same alphas_cumprod, SDXL micro-conditioning, LCM, and the CFG combiner (rows, AND weights, length
grouping, call counting) against sums written out here."""
import math

import numpy as np
import pytest
import torch

from kdiff_ref import external
from lora_ui.engine.sampling.cond import Cond, ImageConds, constant_conds
from lora_ui.engine.sampling.denoiser import (CFGDenoiser, CondBatch, DiscreteDenoiser, LCMDenoiser,
                                              sdxl_time_ids)
from sampling_testkit import TinyEps, log_interp_sigma, sd15_schedule, sd15_sigmas_f64


@pytest.fixture(scope="module")
def sched():
    return sd15_schedule()


def sigmas_probe():
    # inside the table, on table entries, between entries, and outside both ends
    return torch.tensor([0.01, 0.0291675, 0.03, 0.5, 1.0, 2.71828, 11.7254, 14.614642, 20.0])


def test_sigma_to_t_and_back_equal_k_diffusion(sched):
    ref = external.DiscreteEpsDDPMDenoiser(None, sched.alphas_cumprod, quantize=False)
    s = sigmas_probe()
    # identical float32 formula; 1e-4 in t is 1e-7 relative at t ~ 1000 (float32 rounding of t itself)
    torch.testing.assert_close(sched.sigma_to_t(s), ref.sigma_to_t(s), rtol=0, atol=1e-4)
    t = torch.tensor([0.0, 0.25, 1.5, 480.75, 961.7328, 998.9, 999.0])
    torch.testing.assert_close(sched.t_to_sigma(t), ref.t_to_sigma(t), rtol=1e-6, atol=0)


def test_sigma_to_t_is_fractional_log_interpolation(sched):
    sig = sd15_sigmas_f64()
    for t in (12.3, 500.5, 961.7328):
        sigma = log_interp_sigma(t, sig)             # float64 sigma at fractional t
        assert float(sched.sigma_to_t(torch.tensor(sigma))) == pytest.approx(t, abs=2e-3)


def _cond(n_rows, length=77, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CondBatch(torch.randn(n_rows, length, dim, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_denoiser_equals_k_diffusion_wrapper(sched, pred):
    unet = TinyEps()
    ours = DiscreteDenoiser(unet, sched, pred, unet_dtype=torch.float64)
    cls = external.DiscreteEpsDDPMDenoiser if pred == "epsilon" else external.DiscreteVDDPMDenoiser
    ref = cls(lambda x, t, cond: unet(x, t, encoder_hidden_states=cond), sched.alphas_cumprod, quantize=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) * 5
    sigma = torch.tensor([14.614642, 1.3, 0.05], dtype=torch.float64)
    cond = _cond(3)
    got = ours(x, sigma, cond)
    want = ref(x, sigma, cond=cond.embeds)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # t from float32 log-sigma math in both


def test_denoiser_c_in_and_timestep_reach_the_unet(sched):
    seen = {}

    def unet(x_in, t, encoder_hidden_states=None):
        seen["x_in"], seen["t"] = x_in, t
        return torch.zeros_like(x_in)

    x = torch.full((1, 4, 2, 2), 3.0)
    d = DiscreteDenoiser(unet, sched)
    out = d(x, torch.tensor([11.7254]), _cond(1))
    assert torch.equal(out, x)                                        # eps = 0 -> D = x
    assert float(seen["x_in"][0, 0, 0, 0]) == pytest.approx(3.0 / math.sqrt(11.7254 ** 2 + 1), rel=1e-6)
    assert float(seen["t"][0]) == pytest.approx(961.733, abs=2e-3)    # §10 Karras t1, unrounded
    d16 = DiscreteDenoiser(unet, sched, unet_dtype=torch.float16)
    d16(x, torch.tensor([11.7254]), _cond(1))
    assert seen["t"].dtype == torch.float16 and float(seen["t"][0]) == 961.5   # fp16: 961.7328 -> 961.5


def test_sdxl_added_cond_kwargs(sched):
    seen = {}

    def unet(x_in, t, encoder_hidden_states=None, added_cond_kwargs=None):
        seen.update(added_cond_kwargs)
        return torch.zeros_like(x_in)

    ids = sdxl_time_ids(1024, 768)
    assert ids.tolist() == [1024, 768, 0, 0, 1024, 768]
    d = DiscreteDenoiser(unet, sched, time_ids=ids)
    pooled = torch.arange(6.0).reshape(2, 3)
    d(torch.zeros(2, 4, 2, 2), torch.tensor([1.0, 1.0]), CondBatch(torch.zeros(2, 77, 8), pooled))
    assert torch.equal(seen["text_embeds"], pooled)
    assert torch.equal(seen["time_ids"], ids.expand(2, -1))
    with pytest.raises(ValueError):
        d(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]), CondBatch(torch.zeros(1, 77, 8)))


def test_eps_at_timestep_v_prediction(sched):
    v = torch.full((1, 4, 2, 2), 0.5)
    x = torch.full((1, 4, 2, 2), 2.0)
    d = DiscreteDenoiser(lambda x_in, t, encoder_hidden_states=None: v, sched, "v_prediction")
    out = d.eps_at_timestep(x, torch.tensor([500.7]), _cond(1))
    a = float(sched.alphas_cumprod[500])                               # t truncated to 500
    assert float(out[0, 0, 0, 0]) == pytest.approx(math.sqrt(a) * 0.5 + math.sqrt(1 - a) * 2.0, rel=1e-6)


def test_lcm_denoiser_scaling_and_sigmas(sched):
    eps = torch.full((1, 4, 2, 2), 0.25)
    seen = {}

    def unet(x_in, t, encoder_hidden_states=None):
        seen["t"] = t
        return eps

    lcm = LCMDenoiser(DiscreteDenoiser(unet, sched))
    abar = sched.alphas_cumprod.double()
    table = torch.sqrt((1 - abar[19::20]) / abar[19::20])              # 50 levels: abar[19, 39, ..., 999]
    torch.testing.assert_close(lcm.schedule.sigmas.double(), table, rtol=1e-6, atol=0)
    sig = lcm.schedule.get_sigmas(4)
    # t = linspace(999, 19, 4) -> levels 49, 32.67, 16.33, 0, log-sigma interpolated
    ls = table.log()
    want = [math.exp((1 - (k % 1)) * ls[int(k)] + (k % 1) * ls[math.ceil(k)]) for k in (49, 98 / 3, 49 / 3, 0)]
    np.testing.assert_allclose(sig.double().numpy(), want + [0.0], rtol=2e-6)
    x = torch.full((1, 4, 2, 2), 1.5)
    out = lcm(x, sig[1:2], _cond(1))
    assert int(seen["t"][0]) == 20 * 33 + 19                           # nearest level 33 -> UNet t 679
    s, sg = 6790.0, float(sig[1])
    x0 = 1.5 - sg * 0.25
    want = s / math.sqrt(s * s + 0.25) * x0 + 0.25 / (s * s + 0.25) * 1.5
    assert float(out[0, 0, 0, 0]) == pytest.approx(want, rel=1e-6)


# --- CFG -------------------------------------------------------------------------------------------

class RecordingInner:
    """inner(x, s, cond): returns x * (1 + row marker) where the marker is the cond's first embed value,
    so each row's output identifies its conditioning; records every call's rows and lengths."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, s, cond):
        self.calls.append((x.shape[0], cond.embeds.shape[1], cond.embeds[:, 0, 0].tolist()))
        return x * (1 + cond.embeds[:, 0, 0].reshape(-1, 1, 1, 1))


def cond(marker, chunks=1):
    e = torch.zeros(1, 77 * chunks, 2)
    e[0, :, 0] = marker
    return Cond(e)


def test_cfg_combines_and_terms_in_order_one_call():
    inner = RecordingInner()
    imgs = [ImageConds(((cond(1.0), 1.0), (cond(2.0), 0.5)), cond(0.25)),
            ImageConds(((cond(3.0), 1.0),), cond(0.5))]
    cfg = CFGDenoiser(inner, 7.0, constant_conds(imgs))
    x = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    out = cfg(x, torch.tensor([3.0, 3.0]))
    assert inner.calls == [(5, 77, [1.0, 2.0, 3.0, 0.25, 0.5])]           # conds per image in order, then uncond
    u0, u1 = 1 * 1.25, 2 * 1.5
    want0 = u0 + (1 * 2.0 - u0) * 7.0 + (1 * 3.0 - u0) * 3.5
    want1 = u1 + (2 * 4.0 - u1) * 7.0
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([want0, want1]))


def test_cfg_unequal_lengths_grouped():
    inner = RecordingInner()
    # 2 images, 5 cond rows of 1 chunk, negatives of 2 chunks -> cond rows in groups of 2B = 4, then uncond
    imgs = [ImageConds(((cond(1.0), 1), (cond(2.0), 1), (cond(3.0), 1)), cond(0.25, 2)),
            ImageConds(((cond(4.0), 1), (cond(5.0), 1)), cond(0.5, 2))]
    cfg = CFGDenoiser(inner, 5.0, constant_conds(imgs))
    x = torch.ones(2, 1, 2, 2)
    out = cfg(x, torch.ones(2))
    assert inner.calls == [(4, 77, [1.0, 2.0, 3.0, 4.0]), (1, 77, [5.0]), (2, 154, [0.25, 0.5])]
    want0 = 1.25 + sum((1 + m - 1.25) * 5.0 for m in (1.0, 2.0, 3.0))
    want1 = 1.5 + sum((1 + m - 1.5) * 5.0 for m in (4.0, 5.0))
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([want0, want1]))


def test_cfg_conds_of_different_lengths_padded_with_last_vector():
    inner = RecordingInner()
    long = cond(2.0, 2)
    long.embeds[0, -1, 1] = 9.0                                        # the vector to repeat
    imgs = [ImageConds(((cond(1.0), 1),), cond(0.25, 2)), ImageConds(((long, 1),), cond(0.5, 2))]
    seen = []
    cfg = CFGDenoiser(lambda x, s, c: (seen.append(c.embeds), inner(x, s, c))[1], 1.0, constant_conds(imgs))
    cfg(torch.ones(2, 1, 1, 1), torch.ones(2))
    padded = seen[0][0]                                                # row 0 padded from 77 to 154
    assert padded.shape == (154, 2) and torch.equal(padded[77:], padded[76:77].expand(77, 2))
    assert inner.calls == [(4, 154, [1.0, 2.0, 0.25, 0.5])]


def test_cfg_counts_calls_and_passes_the_index():
    asked = []
    imgs = [ImageConds(((cond(1.0), 1.0),), cond(0.0))]

    def step_conds(i):
        asked.append(i)
        return imgs

    cfg = CFGDenoiser(RecordingInner(), 7.0, step_conds)
    for _ in range(3):
        cfg(torch.ones(1, 1, 1, 1), torch.ones(1))
    assert asked == [0, 1, 2] and cfg.calls == 3


def test_cfg_without_batch_cond_uncond_splits_by_batch():
    inner = RecordingInner()
    imgs = [ImageConds(((cond(1.0), 1.0),), cond(0.25)), ImageConds(((cond(2.0), 1.0),), cond(0.5))]
    CFGDenoiser(inner, 7.0, constant_conds(imgs), batch_cond_uncond=False)(torch.ones(2, 1, 1, 1), torch.ones(2))
    assert [c[0] for c in inner.calls] == [2, 2]


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
def test_cfg_gives_each_row_its_images_image_conditioning_cond_and_uncond_alike(batch_cond_uncond):
    """Inpainting UNets: image i's cond rows (every AND term) and its negative row get image_cond[i]; the
    UNet input is concat([x * c_in, image_cond]) (the DiscreteDenoiser appends it to the scaled latents)."""
    seen = []

    def unet(x, t, encoder_hidden_states):
        seen.append(x.clone())
        return torch.zeros(x.shape[0], 1, *x.shape[2:])

    imgs = [ImageConds(((cond(1.0), 1.0), (cond(2.0), 0.5)), cond(0.25)),
            ImageConds(((cond(3.0), 1.0),), cond(0.5, 2))]                 # unequal lengths: grouped calls
    image_cond = torch.tensor([10.0, 20.0]).reshape(2, 1, 1, 1).expand(2, 5, 2, 2)
    denoiser = DiscreteDenoiser(unet, sd15_schedule())
    cfg = CFGDenoiser(denoiser, 7.0, constant_conds(imgs), batch_cond_uncond=batch_cond_uncond,
                      image_cond=image_cond)
    x = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    sigma = 3.0
    cfg(x, torch.full((2,), sigma))
    rows = torch.cat(seen)
    assert rows.shape == (5, 6, 2, 2)
    c_in = 1 / math.sqrt(sigma ** 2 + 1)
    assert torch.allclose(rows[:, 0, 0, 0], torch.tensor([1.0, 1.0, 2.0, 1.0, 2.0]) * c_in)
    assert rows[:, 1:, 0, 0].tolist() == [[v] * 5 for v in (10.0, 10.0, 20.0, 10.0, 20.0)]
