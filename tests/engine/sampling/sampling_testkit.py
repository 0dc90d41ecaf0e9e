"""Shared test pieces: SD1.5's noise levels computed in float64 from the published formula, a seeded
noise stream (a stand-in for rng.ImageRNG), a deterministic Brownian stand-in, and a tiny nonlinear
eps "UNet" (float64) so higher-order terms of the samplers matter."""
from __future__ import annotations

import math

import numpy as np
import torch


def sd15_alphas_cumprod_f64() -> np.ndarray:
    """beta_k = (sqrt(0.00085) + k/999 (sqrt(0.012) - sqrt(0.00085)))^2, abar = cumprod(1 - beta), then
    the float32 rounding A1111 stores; returned as float64 values of those float32 numbers."""
    k = np.arange(1000, dtype=np.float64)
    betas = (math.sqrt(0.00085) + k / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
    return np.cumprod(1 - betas).astype(np.float32).astype(np.float64)


def sd15_sigmas_f64() -> np.ndarray:
    a = sd15_alphas_cumprod_f64()
    return np.sqrt((1 - a) / a)


def log_interp_sigma(t: float, sigmas: np.ndarray) -> float:
    """sigma at fractional t by linear interpolation of log sigma (float64)."""
    lo, hi = math.floor(t), math.ceil(t)
    w = t - lo
    return math.exp((1 - w) * math.log(sigmas[lo]) + w * math.log(sigmas[hi]))


class NoiseStream:
    """NoiseSource: `next()` returns the next (B, C, h, w) draw of a seeded generator; counts draws."""

    def __init__(self, shape, seed=0, dtype=torch.float64):
        self.gen = torch.Generator().manual_seed(seed)
        self.shape, self.dtype, self.draws = shape, dtype, 0

    def next(self):
        self.draws += 1
        return torch.randn(self.shape, generator=self.gen, dtype=torch.float64).to(self.dtype)


class FixedBrownian:
    """A deterministic noise_sampler(sigma, sigma_next): the draw depends only on the pair (so two
    samplers querying the same pairs get the same noise); counts calls."""

    def __init__(self, shape, dtype=torch.float64):
        self.shape, self.dtype, self.calls = shape, dtype, 0

    def __call__(self, sigma, sigma_next):
        self.calls += 1
        key = int(round(float(sigma) * 1e6)) * 7919 + int(round(float(sigma_next) * 1e6))
        gen = torch.Generator().manual_seed(key % (2 ** 62))
        return torch.randn(self.shape, generator=gen, dtype=torch.float64).to(self.dtype)


class TinyEps(torch.nn.Module):
    """eps(x_in, t) = tanh(W x_in (1x1 conv over channels) + c log(1 + t)): smooth, nonlinear, float64.
    Counts calls. Accepts the diffusers keyword `encoder_hidden_states` (cond rows add their mean)."""

    def __init__(self, channels=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(channels, channels, generator=g, dtype=torch.float64) * 0.5
        self.c = torch.randn(channels, generator=g, dtype=torch.float64) * 0.3
        self.calls = 0

    def forward(self, x_in, t, encoder_hidden_states=None, **kwargs):
        self.calls += 1
        t = t.to(torch.float64).reshape(-1, 1, 1, 1)
        h = torch.einsum("oc,bchw->bohw", self.w, x_in.to(torch.float64))
        h = h + self.c.reshape(1, -1, 1, 1) * torch.log1p(t)
        if encoder_hidden_states is not None:
            h = h + encoder_hidden_states.to(torch.float64).mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return torch.tanh(h).to(x_in.dtype)


def sd15_schedule():
    from lora_ui.engine.sampling.denoiser import DiscreteSchedule, alphas_cumprod_from_betas

    return DiscreteSchedule(alphas_cumprod_from_betas())
