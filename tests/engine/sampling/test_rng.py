"""ImageRNG / NV Philox / Brownian noise / uint8 conversion against A1111's described behaviour (§5, §7,
§10 fixtures) and an independent scalar Philox4x32-10 + Box-Muller written here from the published
constants (Salmon et al. 2011, Random123)."""
import math

import numpy as np
import pytest
import torch

from lora_ui.engine.sampling.rng import (
    BrownianNoise, ImageRNG, PhiloxGenerator, paste_centred, philox_randn, slerp, to_uint8,
)

SHAPE = (4, 64, 64)


# ---------------------------------------------------------------- scalar reference (independent) --

def _mulhilo32(a, b):
    p = a * b
    return p >> 32, p & 0xFFFFFFFF


def _philox4x32_10_scalar(ctr, key):
    """Random123 Philox4x32 with R=10, pure Python ints."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF     # key schedule ("bump") between rounds;
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF     # the bump after round 10 is never used
    return c0, c1, c2, c3


def _nv_scalar(seed, j, offset=0):
    """Element j of A1111's NV draw: counter (offset, 0, j, 0), key (seed lo32, hi32), Box-Muller."""
    x, y, _, _ = _philox4x32_10_scalar((offset, 0, j, 0), (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
    a = float(np.float32(2.3283064e-10))
    b = float(np.float32(2.3283064e-10 * 6.2831855))
    u, v = x * a + a / 2, y * b + b / 2
    return float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v)))


def test_scalar_reference_is_random123_philox():
    # Random123's published known-answer test for philox4x32_10 (kat_vectors): counter 0, key 0
    assert _philox4x32_10_scalar((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    # and the all-ones vector
    assert _philox4x32_10_scalar((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


# ---------------------------------------------------------------- NV --

@pytest.mark.parametrize("seed, shape, offset", [
    (0, (3, 4), 0), (1234, SHAPE, 0), (1234, SHAPE, 1), (2**32 - 2, (2, 5), 3), (2**40 + 7, (7,), 0),
])
def test_nv_equals_scalar_reference(seed, shape, offset):
    got = philox_randn(seed, shape, offset).ravel()
    n = got.size
    for j in sorted({0, 1, 2, 3, n // 2, n - 1}):
        assert got[j] == np.float32(_nv_scalar(seed, j, offset)), j


def test_nv_fixtures():
    assert philox_randn(0, (3, 4)).ravel()[:3] == pytest.approx([-0.924662, -0.425344, -2.643846], abs=1e-6)
    gen = PhiloxGenerator(1234)
    first, second = gen.randn(SHAPE), gen.randn(SHAPE)
    assert first.dtype == np.float32 and first.shape == SHAPE
    assert first.ravel()[:3] == pytest.approx([-1.616490, 0.568455, -0.510225], abs=1e-6)
    assert second.ravel()[:2] == pytest.approx([0.633083, 1.635822], abs=1e-6)
    assert gen.offset == 2
    rng = ImageRNG(SHAPE, [1234], source="NV")
    assert rng.first()[0].flatten()[:3].tolist() == pytest.approx([-1.616490, 0.568455, -0.510225], abs=1e-6)
    assert rng.next()[0].flatten()[:2].tolist() == pytest.approx([0.633083, 1.635822], abs=1e-6)


def test_nv_is_standard_normal():
    x = philox_randn(7, (4, 128, 128))
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01


# ---------------------------------------------------------------- CPU / GPU --

def test_cpu_fixtures():
    rng = ImageRNG(SHAPE, [1234], source="CPU")
    first, second = rng.first(), rng.next()
    assert first.dtype == torch.float32 and first.shape == (1, *SHAPE)
    assert first.flatten()[:3].tolist() == pytest.approx([-0.111719, -0.496590, 0.163074], abs=1e-6)
    assert second.flatten()[:2].tolist() == pytest.approx([-0.878456, -0.288318], abs=1e-6)


def test_gpu_source_on_a_cpu_device_draws_like_cpu():
    # A1111 on a host without CUDA: "GPU" means the CPU generator.
    a = ImageRNG(SHAPE, [5, 6], source="GPU", device="cpu")
    b = ImageRNG(SHAPE, [5, 6], source="CPU", device="cpu")
    assert torch.equal(a.first(), b.first()) and torch.equal(a.next(), b.next())


def test_first_next_call_is_first():
    a, b = ImageRNG(SHAPE, [3], source="CPU"), ImageRNG(SHAPE, [3], source="CPU")
    assert torch.equal(a.next(), b.first())
    assert torch.equal(a.next(), b.next())


@pytest.mark.parametrize("source", ["CPU", "GPU", "NV"])
@pytest.mark.parametrize("options", [
    {}, {"subseeds": [50, 51, 52, 53], "subseed_strength": 0.3}, {"seed_resize_from": (384, 640)},
    {"ensd": 31337},
])
def test_batch_equals_single_images(source, options):
    seeds = [10, 11, 12, 13]
    shape = (4, 8, 8) if "seed_resize_from" not in options else (4, 64, 64)
    batch = ImageRNG(shape, seeds, source=source, **options)
    singles = []
    for i, s in enumerate(seeds):
        opts = dict(options)
        if "subseeds" in opts:
            opts["subseeds"] = [opts["subseeds"][i]]
        singles.append(ImageRNG(shape, [s], source=source, **opts))
    assert torch.equal(batch.first(), torch.cat([r.first() for r in singles]))
    for _ in range(3):
        assert torch.equal(batch.next(), torch.cat([r.next() for r in singles]))


# ---------------------------------------------------------------- variation seeds --

def _slerp64(v, a, b):
    a, b = a.double(), b.double()
    d = ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(1)
    if d.mean() > 0.9995:
        return a * v + b * (1 - v)
    w = torch.acos(d)
    return (torch.sin((1 - v) * w) / torch.sin(w)).unsqueeze(1) * a + (torch.sin(v * w) / torch.sin(w)).unsqueeze(1) * b


@pytest.mark.parametrize("v", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_slerp_matches_float64_formula(v):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, 8, generator=g), torch.randn(4, 16, 8, generator=g)
    got = slerp(v, a, b)
    assert torch.allclose(got.double(), _slerp64(v, a, b), atol=1e-5)


def test_slerp_near_parallel_takes_the_swapped_linear_branch():
    a = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(1))
    b = a + 1e-3 * torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(2))
    v = 0.25
    # (sic) A1111: noise * v + subnoise * (1 - v)
    assert torch.allclose(slerp(v, a, b), a * v + b * (1 - v))
    assert not torch.allclose(slerp(v, a, b), a * (1 - v) + b * v)


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_variation_strength(source):
    plain = ImageRNG(SHAPE, [100], source=source).first()
    sub_only = ImageRNG(SHAPE, [7], source=source).first()
    zero = ImageRNG(SHAPE, [100], subseeds=[7], subseed_strength=0.0, source=source).first()
    assert torch.equal(zero, plain)                     # strength 0: subnoise is not even drawn
    one = ImageRNG(SHAPE, [100], subseeds=[7], subseed_strength=1.0, source=source).first()
    assert torch.allclose(one, sub_only, atol=1e-5)     # strength 1: sin(w)/sin(w) * subnoise
    half = ImageRNG(SHAPE, [100], subseeds=[7], subseed_strength=0.5, source=source).first()
    assert torch.allclose(half[0].double(), _slerp64(0.5, plain[0], sub_only[0]), atol=1e-5)


def test_variation_does_not_consume_the_image_generator():
    a = ImageRNG(SHAPE, [100], subseeds=[7], subseed_strength=0.4, source="CPU")
    b = ImageRNG(SHAPE, [100], source="CPU")
    a.first(), b.first()
    assert torch.equal(a.next(), b.next())


def test_missing_subseeds_count_as_zero():
    a = ImageRNG((4, 8, 8), [1, 2], subseeds=[9], subseed_strength=0.5, source="CPU").first()
    b = ImageRNG((4, 8, 8), [2], subseeds=[0], subseed_strength=0.5, source="CPU").first()
    assert torch.equal(a[1:], b)


# ---------------------------------------------------------------- seed resize --

def test_paste_centred_both_ways():
    full = torch.zeros(1, 6, 8)
    small = torch.arange(1 * 2 * 4, dtype=torch.float32).reshape(1, 2, 4) + 1
    out = paste_centred(full, small)                    # smaller: pasted at offset (2, 2)
    assert torch.equal(out[:, 2:4, 2:6], small) and out.sum() == small.sum()
    big = torch.arange(1 * 10 * 4, dtype=torch.float32).reshape(1, 10, 4)
    out = paste_centred(torch.zeros(1, 6, 8), big)      # taller: centred crop rows 2..7; narrower: pasted
    assert torch.equal(out[:, :, 2:6], big[:, 2:8, :]) and out[:, :, :2].abs().sum() == 0


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_seed_resize(source):
    shape = (4, 64, 48)                                  # 384 x 512 image (w x h)
    rng = ImageRNG(shape, [42], seed_resize_from=(512, 256), source=source)   # from 512x256: latent 32 x 64
    got = rng.first()
    assert got.shape == (1, *shape)
    resized = ImageRNG((4, 32, 64), [42], source=source).first()[0]      # fresh seed stream, resize shape
    full = ImageRNG(shape, [42], source=source).first()[0]               # generator_i's full-size draw
    # rows: resized is shorter (32 < 64) -> pasted at rows 16..47; cols: wider (64 > 48) -> centre crop 8..55
    assert torch.equal(got[0, :, 16:48, :], resized[:, :, 8:56])
    assert torch.equal(got[0, :, :16], full[:, :16]) and torch.equal(got[0, :, 48:], full[:, 48:])
    # the generator's next draw is its second one (one draw consumed by first())
    ref = ImageRNG(shape, [42], source=source)
    ref.first()
    assert torch.equal(rng.next(), ref.next())


def test_seed_resize_off_when_a_side_is_zero():
    a = ImageRNG((4, 8, 8), [3], seed_resize_from=(512, 0), source="CPU").first()
    assert torch.equal(a, ImageRNG((4, 8, 8), [3], source="CPU").first())


# ---------------------------------------------------------------- ENSD --

@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ensd_reseeds_after_first(source):
    plain = ImageRNG(SHAPE, [1234, 1235], source=source)
    ensd = ImageRNG(SHAPE, [1234, 1235], source=source, ensd=31337, uses_ensd=False)
    assert torch.equal(plain.first(), ensd.first())
    step = ensd.next()
    assert not torch.equal(step, plain.next())
    fresh = ImageRNG(SHAPE, [1234 + 31337, 1235 + 31337], source=source).first()
    assert torch.equal(step, fresh)
    assert ensd.ensd_infotext is None and ImageRNG(SHAPE, [1], ensd=5).ensd_infotext == 5


# ---------------------------------------------------------------- Brownian --

SIG_MIN, SIG_MAX = 0.0291675, 14.614642


def _x(batch=2):
    return torch.zeros(batch, 4, 8, 8)


def test_brownian_cpu_equals_torchsde_tree():
    import torchsde  # a runtime dependency (requirements.txt): missing is a failure, not a skip
    noise = BrownianNoise(_x(), SIG_MIN, SIG_MAX, [5, 6], source="CPU")
    lo, hi = float(torch.tensor(SIG_MIN)), float(torch.tensor(SIG_MAX))    # float32 sigmas, as samplers pass
    ref = torchsde.BrownianTree(lo, torch.zeros(4, 8, 8), hi, entropy=6, tol=1e-6)
    for s, sn in [(torch.tensor(SIG_MAX), 10.7468), (10.7468, 8.0815), (1.2, torch.tensor(SIG_MIN))]:
        s, sn = torch.as_tensor(s), torch.as_tensor(sn)
        want = -ref(float(sn), float(s)) / (sn - s).abs().sqrt()
        assert torch.equal(noise(s, sn)[1], want)


def test_brownian_nv_normals_come_from_philox():
    np_ss = np.random.SeedSequence(entropy=5, pool_size=24)
    w_seed = int(np_ss.generate_state(3)[0])
    noise = BrownianNoise(_x(1), SIG_MIN, SIG_MAX, [5], source="NV")
    lo, hi = torch.tensor(SIG_MIN), torch.tensor(SIG_MAX)
    whole = noise(lo, hi)[0] * (hi - lo).sqrt()                            # W over the whole interval
    want = torch.from_numpy(philox_randn(w_seed, (4, 8, 8))) * math.sqrt(float(hi) - float(lo))
    assert torch.allclose(whole, want, atol=1e-5)
    assert not torch.allclose(noise(3.0, 2.0), BrownianNoise(_x(1), SIG_MIN, SIG_MAX, [5], "CPU")(3.0, 2.0))


def test_brownian_all_tree_normals_come_from_the_source(monkeypatch):
    from torchsde._brownian import brownian_interval

    def forbidden(*args, **kwargs):
        raise AssertionError("torchsde's own normals were used")

    monkeypatch.setattr(brownian_interval, "_randn", forbidden)
    noise = BrownianNoise(_x(1), SIG_MIN, SIG_MAX, [5], "NV")
    for s, sn in [(14.6, 9.0), (9.0, 4.0), (1.0, 0.1), (0.1, 0.03)]:    # deep in the tree (tol 1e-6)
        assert torch.isfinite(noise(s, sn)).all()


def test_brownian_nv_does_not_leak_into_torchsde():
    import torchsde  # a runtime dependency (requirements.txt): missing is a failure, not a skip
    before = torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=9)(0.2, 0.7)
    BrownianNoise(_x(1), SIG_MIN, SIG_MAX, [9], "NV")(3.0, 2.0)
    assert torch.equal(torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=9)(0.2, 0.7), before)


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_brownian_per_image_and_deterministic(source):
    steps = [(14.6, 9.0), (9.0, 4.0), (4.0, 1.0), (1.0, 0.1)]
    batch = BrownianNoise(_x(3), SIG_MIN, SIG_MAX, [1, 2, 3], source)
    alone = BrownianNoise(_x(1), SIG_MIN, SIG_MAX, [2], source)
    other = BrownianNoise(_x(2), SIG_MIN, SIG_MAX, [7, 2], source)
    again = BrownianNoise(_x(3), SIG_MIN, SIG_MAX, [1, 2, 3], source)
    for s, sn in steps:
        n = batch(s, sn)
        assert n.shape == (3, 4, 8, 8)
        assert torch.equal(n[1], alone(s, sn)[0]) and torch.equal(n[1], other(s, sn)[1])
        assert torch.equal(n, again(s, sn))
        assert not torch.equal(n[0], n[1])


def test_brownian_scale_and_sign():
    noise = BrownianNoise(torch.zeros(1, 4, 64, 64), SIG_MIN, SIG_MAX, [11], "CPU")
    n = noise(5.0, 3.0)
    assert abs(float(n.std()) - 1) < 0.03
    assert torch.allclose(noise(3.0, 5.0), -n)


# ---------------------------------------------------------------- uint8 --

def test_to_uint8_truncates():
    vals = torch.tensor([-2.0, -1.0, 0.0, 0.99998, 1.0, 3.0, 2 * (100.9 / 255) - 1])
    x = vals.view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, vals.numel(), 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255, 100]   # 127.5 -> 127, 254.997 -> 254


def test_to_uint8_half_input_is_computed_in_float32():
    x = torch.full((1, 3, 2, 2), 0.99998, dtype=torch.float16)   # fp16 rounds to 1.0 -> 255
    assert to_uint8(x).max() == 255
    assert to_uint8(torch.full((2, 3, 2, 2), 0.99998)).max() == 254


# ---------------------------------------------------------------- GPU --

@pytest.mark.gpu
def test_gpu_draws_are_cuda_generator_draws():
    dev = torch.device("cuda")
    rng = ImageRNG(SHAPE, [1234, 99], source="GPU", device=dev)
    first = rng.first()
    assert first.device.type == "cuda"
    for i, seed in enumerate([1234, 99]):
        g = torch.Generator(dev).manual_seed(seed)
        assert torch.equal(first[i], torch.randn(SHAPE, generator=g, device=dev))


@pytest.mark.gpu
def test_nv_matches_cuda_randn():
    # NV is meant to reproduce CUDA torch.randn (reference §5 marks this unverified)
    dev = torch.device("cuda")
    cuda = ImageRNG(SHAPE, [1234], source="GPU", device=dev).first()
    nv = ImageRNG(SHAPE, [1234], source="NV", device=dev).first()
    assert torch.allclose(nv, cuda, atol=1e-4)
