"""Randomness the A1111 way: per-image noise streams (CPU / GPU / NV), variation seeds, seed resize,
ENSD reseeding, Brownian-tree noise for SDE samplers, and A1111's float -> uint8 conversion.

Written from the described behaviour (reference doc §5, §7) and the published algorithms:
Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
Random123) and the Box-Muller transform.

Sources ("RNG" setting):
    "CPU"  torch CPU generator seeded with the seed; draws on the CPU, then moved to `device`.
    "GPU"  torch generator on `device` when it is a CUDA device. On a host without CUDA (CPU, MPS)
           A1111's "GPU" draws with a CPU generator, so ours does too: there "GPU" == "CPU".
    "NV"   Philox4x32-10 + Box-Muller in numpy (`philox_randn`), equal on every machine; meant to
           equal torch.randn on NVIDIA GPUs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

SOURCES = ("CPU", "GPU", "NV")

_MASK32 = np.uint64(0xFFFFFFFF)
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))   # multipliers for c0, c2
_PHILOX_W = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))   # Weyl key increments (k0, k1)
_PHILOX_ROUNDS = 10
# Box-Muller scale factors, float32 constants used in float64 arithmetic
_BM_A = float(np.float32(2.3283064e-10))
_BM_B = float(np.float32(2.3283064e-10 * 6.2831855))


# ----------------------------------------------------------------------------------------------
# NV: Philox4x32-10 + Box-Muller
# ----------------------------------------------------------------------------------------------

def _philox_round(c: list[np.ndarray], k0: np.uint64, k1: np.uint64) -> list[np.ndarray]:
    """One Philox4x32 round on uint64 arrays holding 32-bit words: (c0, c1, c2, c3) -> new words."""
    p0 = c[0] * _PHILOX_M[0]          # < 2**64: 32-bit x 32-bit product
    p1 = c[2] * _PHILOX_M[1]
    return [
        (p1 >> np.uint64(32)) ^ c[1] ^ k0,
        p1 & _MASK32,
        (p0 >> np.uint64(32)) ^ c[3] ^ k1,
        p0 & _MASK32,
    ]


def philox4x32_10(counter: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Philox4x32-10 of counters (4 arrays of 32-bit words, as uint64) under key (seed lo32, seed hi32).

    Returns the 4 output words (uint64 arrays with values < 2**32)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    c = [np.asarray(x, dtype=np.uint64) for x in counter]
    for r in range(_PHILOX_ROUNDS):
        if r:
            k0 = (k0 + _PHILOX_W[0]) & _MASK32
            k1 = (k1 + _PHILOX_W[1]) & _MASK32
        c = _philox_round(c, k0, k1)
    return c


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two 32-bit words -> one normal, float64 math, float32 result: sqrt(-2 ln u) * sin(v)."""
    u = x.astype(np.float64) * _BM_A + _BM_A / 2
    v = y.astype(np.float64) * _BM_B + _BM_B / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


def philox_randn(seed: int, shape: Sequence[int], offset: int = 0) -> np.ndarray:
    """A1111's "NV" normals: element j uses counter (offset, 0, j, 0); returns float32 of `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    if n >= 2 ** 32:
        raise ValueError("philox_randn draws at most 2**32 values per call")
    j = np.arange(n, dtype=np.uint64)
    zero = np.zeros(n, dtype=np.uint64)
    off = np.full(n, int(offset) & 0xFFFFFFFF, dtype=np.uint64)
    out = philox4x32_10([off, zero, j, zero], seed)
    return _box_muller(out[0], out[1]).reshape(tuple(shape))


class PhiloxGenerator:
    """NV generator: each `randn` call uses the next offset (0, 1, 2, ...)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        out = philox_randn(self.seed, shape, self.offset)
        self.offset += 1
        return out


# ----------------------------------------------------------------------------------------------
# One per-image stream for any source
# ----------------------------------------------------------------------------------------------

def _draw_device(source: str, device: torch.device) -> torch.device:
    """Where torch draws for `source`: GPU draws on CUDA only when `device` is CUDA (else CPU)."""
    if source == "GPU" and device.type == "cuda":
        return device
    return torch.device("cpu")


class NoiseStream:
    """A seeded stream of float32 normals on `device` from one source (a per-image generator)."""

    def __init__(self, seed: int, source: str, device: torch.device | str = "cpu"):
        if source not in SOURCES:
            raise ValueError(f"RNG source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.device = torch.device(device)
        if source == "NV":
            self._gen = PhiloxGenerator(seed)
        else:
            self._gen = torch.Generator(_draw_device(source, self.device)).manual_seed(int(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Next draw, float32 tensor of `shape` on the stream's device."""
        if self.source == "NV":
            return torch.from_numpy(self._gen.randn(shape)).to(self.device)
        x = torch.randn(tuple(shape), generator=self._gen, device=self._gen.device, dtype=torch.float32)
        return x.to(self.device)


def randn_seeded(seed: int, shape: Sequence[int], source: str, device: torch.device | str = "cpu"):
    """The first draw of a fresh stream seeded `seed` (A1111's seeded one-off draws)."""
    return NoiseStream(seed, source, device).randn(shape)


# ----------------------------------------------------------------------------------------------
# Variation seeds and seed resize
# ----------------------------------------------------------------------------------------------

def slerp(v: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A1111's variation blend of a = noise and b = subnoise, both (C, H, W), weight v = strength.

    Treats each (c, w) column along H as a vector: d = sum_H(a/|a| * b/|b|). If mean(d) > 0.9995 it
    returns a*v + b*(1-v) (sic: the weights are swapped relative to the spherical branch, as in A1111);
    else with w = acos(d): (sin((1-v) w) a + sin(v w) b) / sin(w). v = 0 -> a, v = 1 -> b."""
    a_n = a / torch.norm(a, dim=1, keepdim=True)
    b_n = b / torch.norm(b, dim=1, keepdim=True)
    d = (a_n * b_n).sum(1)                      # (C, W)
    if d.mean() > 0.9995:
        return a * v + b * (1 - v)
    omega = torch.acos(d)
    so = torch.sin(omega)
    return (torch.sin((1.0 - v) * omega) / so).unsqueeze(1) * a + (torch.sin(v * omega) / so).unsqueeze(1) * b


def paste_centred(full: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Seed resize: put `small` (C, h0, w0) into `full` (C, H, W), centred, per axis either pasting
    all of `small` (when it is smaller) or its centred crop (when it is larger). Returns a new tensor."""
    out = full.clone()
    spans = []
    for big, little in ((full.shape[1], small.shape[1]), (full.shape[2], small.shape[2])):
        d = (big - little) // 2
        size = little if d >= 0 else little + 2 * d
        spans.append((max(d, 0), max(-d, 0), size))   # (target start, source start, length)
    (ty, sy, h), (tx, sx, w) = spans
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


# ----------------------------------------------------------------------------------------------
# ImageRNG
# ----------------------------------------------------------------------------------------------

class ImageRNG:
    """Per-image noise for one batch, A1111 1.10 semantics (reference §5).

    shape: (C, h, w) latent shape of one image; seeds: one per image (caller gives A1111's all_seeds:
    seed+i, or all equal to seed when a variation strength is set); subseeds: one per image (missing
    ones count as 0); seed_resize_from: (width, height) in pixels, (0, 0) = off; source: "CPU" | "GPU"
    | "NV"; ensd: eta noise seed delta. Outputs are float32 (B, C, h, w) on `device`.

    first(): per image i, subnoise from a fresh subseed_i stream (only if strength != 0), noise from
    generator_i (with seed resize: from a fresh seed_i stream at (C, rh/8, rw/8)), slerp, then (seed
    resize) generator_i's full-size draw with the resized noise pasted in centred. Afterwards, if
    ensd != 0, every generator restarts at seed_i + ensd; this happens for every sampler, as in A1111
    (`uses_ensd` only decides whether "ENSD" is written to the infotext, see `ensd_infotext`).
    next(): the stack of generator_i's next draws; the very first next() returns first() (A1111's
    ImageRNG.next does the same)."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], *, subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] = (0, 0),
                 source: str = "GPU", device: torch.device | str = "cpu", ensd: int = 0,
                 uses_ensd: bool = True):
        if source not in SOURCES:
            raise ValueError(f"RNG source must be one of {SOURCES}, got {source!r}")
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in (subseeds or [])]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = (int(seed_resize_from[0]), int(seed_resize_from[1]))
        self.source = source
        self.device = torch.device(device)
        self.ensd = int(ensd or 0)
        self.uses_ensd = bool(uses_ensd)
        self.generators = [NoiseStream(s, source, self.device) for s in self.seeds]
        self._first_done = False

    @property
    def ensd_infotext(self) -> int | None:
        """"ENSD" value for the infotext (None = not written); the caller also requires eta != 0."""
        return self.ensd if self.ensd and self.uses_ensd else None

    def _noise_shape(self) -> tuple[int, ...]:
        rw, rh = self.seed_resize_from
        if rw <= 0 or rh <= 0:
            return self.shape
        return (self.shape[0], rh // 8, rw // 8)

    def _first_one(self, i: int, noise_shape: tuple[int, ...]) -> torch.Tensor:
        seed, gen = self.seeds[i], self.generators[i]
        resized = noise_shape != self.shape
        subnoise = None
        if self.subseed_strength != 0:
            subseed = self.subseeds[i] if i < len(self.subseeds) else 0
            subnoise = randn_seeded(subseed, noise_shape, self.source, self.device)
        noise = randn_seeded(seed, noise_shape, self.source, self.device) if resized else gen.randn(self.shape)
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if resized:
            noise = paste_centred(gen.randn(self.shape), noise)
        return noise

    def first(self) -> torch.Tensor:
        """Initial noise (B, C, h, w); then ENSD reseeding if ensd != 0."""
        noise_shape = self._noise_shape()
        xs = [self._first_one(i, noise_shape) for i in range(len(self.seeds))]
        if self.ensd:
            self.generators = [NoiseStream(s + self.ensd, self.source, self.device) for s in self.seeds]
        self._first_done = True
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        """Per-step noise (B, C, h, w): one draw from each image's generator (first call: first())."""
        if not self._first_done:
            return self.first()
        return torch.stack([g.randn(self.shape) for g in self.generators])


# ----------------------------------------------------------------------------------------------
# Brownian tree noise (SDE samplers)
# ----------------------------------------------------------------------------------------------

def source_normals(source: str) -> Callable[[int, tuple, torch.dtype, torch.device], torch.Tensor]:
    """(seed, size, dtype, device) -> first draw of a fresh `source` stream seeded `seed`, as
    A1111 routes torchsde's seeded normals through the selected RNG source."""
    def normals(seed, size, dtype, device):
        return randn_seeded(int(seed), size, source, device).to(dtype=dtype)
    return normals


def _sourced_tree_classes():
    """Subclasses of torchsde 0.2.6's BrownianInterval / _Interval whose seeded normals come from a
    function stored on the top interval (no module-level patch: other torchsde users are unaffected).

    Children are created by torchsde as plain `_Interval`s; `_split_exact` re-classes them (same slot
    layout, so `__class__` assignment is allowed) so the whole tree uses our normals."""
    from torchsde._brownian import brownian_interval as bi

    class _SourcedMixin:
        __slots__ = ()

        def _randn(self, seed):
            top = self._top
            return top._normals(seed, tuple(top._size), top._dtype, top._device)

        def _randn_levy(self):
            top = self._top
            size = (*top._size, *top._size[-1:])
            return top._normals(self._a_seed(), size, top._dtype, top._device)

        def _split_exact(self, midway):
            super()._split_exact(midway)
            self._left_child.__class__ = _SourcedInterval
            self._right_child.__class__ = _SourcedInterval

    class _SourcedInterval(_SourcedMixin, bi._Interval):
        __slots__ = ()

    class _SourcedBrownianInterval(_SourcedMixin, bi.BrownianInterval):
        __slots__ = ("_normals",)

        def __init__(self, normals, **kwargs):
            self._normals = normals
            super().__init__(**kwargs)

    return _SourcedBrownianInterval


def brownian_tree(t0: float, t1: float, w0: torch.Tensor, entropy: int, source: str, tol: float = 1e-6):
    """A torchsde.BrownianTree-equivalent interval (same arguments as BrownianTree passes: pool size
    24, halfway tree) on [t0, t1] for one image (w0's shape/dtype/device), normals from `source`.
    Call it as tree(ta, tb) with ta <= tb -> W(tb) - W(ta)."""
    cls = _sourced_tree_classes()
    return cls(source_normals(source), t0=float(t0), t1=float(t1), size=w0.shape, dtype=w0.dtype,
               device=w0.device, entropy=int(entropy), tol=tol, pool_size=24, halfway_tree=True)


class BrownianNoise:
    """k-diffusion BrownianTreeNoiseSampler semantics with one tree per image (A1111's batch
    determinism): image i's tree has entropy seeds[i] (no ENSD), interval [sigma_min, sigma_max]
    (min sigma > 0, max sigma), tol 1e-6, normals from `source` ("CPU", "GPU", "NV").

    x: (B, C, h, w) sample (gives shape/dtype/device). Call with (sigma, sigma_next) -> (B, C, h, w)
    noise = (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|).

    With source "CPU" (and "GPU" on a CPU tensor) the normals equal torchsde's own draws, so the trees
    equal torchsde.BrownianTree(sigma_min, w0, sigma_max, entropy=seed) exactly."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int], source: str = "GPU"):
        if source not in SOURCES:
            raise ValueError(f"RNG source must be one of {SOURCES}, got {source!r}")
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for batch {x.shape[0]}")
        # as k-diffusion: sigmas become tensors (python floats -> float32) before the tree sees them
        lo, hi = float(torch.as_tensor(sigma_min)), float(torch.as_tensor(sigma_max))
        w0 = torch.zeros_like(x[0])
        self.trees = [brownian_tree(lo, hi, w0, s, source) for s in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(float(lo), float(hi)) for tree in self.trees]) * sign
        return w / (t1 - t0).abs().sqrt()


# ----------------------------------------------------------------------------------------------
# Decoded image -> bytes
# ----------------------------------------------------------------------------------------------

def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """A1111's conversion: decoded (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8.

    img = clamp((x + 1) / 2, 0, 1) in float32, then (255 * img) truncated toward zero (not rounded)."""
    img = torch.clamp((decoded.detach().float() + 1.0) / 2.0, min=0.0, max=1.0)
    arr = img.cpu().numpy().transpose(0, 2, 3, 1)
    return (np.float32(255.0) * arr).astype(np.uint8)
