"""Samplers over a sigma list, k-diffusion style: fn(model, x, sigmas, *, noise, callback, ...) -> x.

`model(x (B,C,h,w), sigma (B,)) -> denoised x0 (B,C,h,w)` (a CFGDenoiser). `x` starts as z * sigmas[0].
`noise.next()` is one fresh per-image draw shaped like x (k-diffusion's `torch.randn_like(x)`, which
A1111 routes to its per-image generators); draws happen exactly where k-diffusion draws, even when the
value is multiplied by 0, because the position in each image's random stream decides later noise.
Brownian (SDE) samplers take `noise_sampler(sigma, sigma_next) -> (B,C,h,w)` built by the caller.
`callback(dict(x, i, sigma, sigma_hat, denoised))` once per step, as k-diffusion.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None] | None


class NoiseSource(Protocol):
    def next(self) -> Tensor: ...              # (B, C, h, w), one draw per image (rng.ImageRNG)


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D) / sigma (Karras et al. 2022 eq. 3)."""
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): the deterministic target and the noise added back (Ho et al. 2020 posterior)."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _draws(noise: NoiseSource) -> NoiseSampler:
    return lambda _s, _sn: noise.next()


def _cb(callback: Callback, x: Tensor, i: int, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x: Tensor, sigmas: Tensor, i: int, noise: NoiseSource, s_churn: float, s_tmin: float,
           s_tmax: float, s_noise: float) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022 Alg. 2 "churn": raise sigma_i to sigma_hat = sigma_i (1 + gamma) with fresh noise.
    Draws one noise every call, used or not (A1111's stream position depends on it)."""
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise.next() * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """Euler steps on the probability-flow ODE with optional churn (Karras et al. 2022, Alg. 2)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                           eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler step to sigma_down, then sigma_up noise (ancestral sampling, Ho et al. 2020 / k-diffusion)."""
    noise_sampler = noise_sampler or _draws(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """Heun's 2nd-order method, Euler on the last step to sigma = 0 (Karras et al. 2022, Alg. 2)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022) midpoint in log sigma, with Karras et al. 2022 churn."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                           eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022) steps to sigma_down plus ancestral noise; no noise on the last step."""
    noise_sampler = noise_sampler or _draws(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_i+1] of the Lagrange basis polynomial of node t_{i-j} on nodes t_i..t_{i-order+1}.

    Computed as A1111 computes it (k-diffusion's linear_multistep_coeff): adaptive Gauss-Kronrod
    quadrature (QUADPACK via scipy.integrate.quad) to 1e-4 relative accuracy, not the exact integral:
    the picture is to equal A1111's, and the exact value differs in the 5th digit (1 level in a few pixels).
    """
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


@torch.no_grad()
def sample_lms(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
               callback: Callback = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma on the ODE derivative, up to `order` past derivatives)."""
    s_in = x.new_ones([x.shape[0]])
    # float32 nodes, as A1111 (k-diffusion) passes them: with NumPy's promotion rules the quadrature's
    # integrand then mixes float32 and float64, and the coefficients differ from float64 nodes' in the
    # last digits - enough to move a pixel by one level.
    t = sigmas.detach().cpu().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource,
                              callback: Callback = None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2S) single-step (Lu et al. 2022b) to sigma_down, plus ancestral noise."""
    noise_sampler = noise_sampler or _draws(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x: Tensor, sigmas: Tensor, *, noise_sampler: NoiseSampler,
                     noise: NoiseSource | None = None, callback: Callback = None, eta: float = 1.0,
                     s_noise: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ stochastic 2-stage (Lu et al. 2022b, k-diffusion's SDE variant), Brownian noise."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s) * s_in)
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                    callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M) multistep (Lu et al. 2022b), first-order on the first and last step."""
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Model, x: Tensor, sigmas: Tensor, *, noise_sampler: NoiseSampler,
                        noise: NoiseSource | None = None, callback: Callback = None, eta: float = 1.0,
                        s_noise: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b), midpoint or heun second-order correction, Brownian noise."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            phi = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Model, x: Tensor, sigmas: Tensor, *, noise_sampler: NoiseSampler,
                        noise: NoiseSource | None = None, callback: Callback = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022b, third-order multistep exponential integrator), Brownian noise."""
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023): x <- f(x, sigma) + sigma_next z."""
    noise_sampler = noise_sampler or _draws(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


# --- DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
#     Sampling in Around 10 Steps"), in t = -log sigma with eps = (x - D) / sigma ---------------------

class _DPMSolver:
    """DPM-Solver-1/2/3 steps with a per-step eps cache (one model call per distinct stage)."""

    def __init__(self, model: Model, callback: Callback):
        self.model, self.callback = model, callback

    def eps(self, cache: dict, key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma)) / _sigma(t)
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        eps = self.eps(cache, "eps", x, t)
        return x - _sigma(t_next) * (t_next - t).expm1() * eps

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
              - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral_target(self, t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """(t_next_, su): the deterministic target and the noise std to add to reach sigma(t_next)."""
        if not eta:
            return t_next, torch.zeros_like(t_next)
        sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, _t(sd))
        return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(model: Model, x: Tensor, sigma_min: float, sigma_max: float, n: int, *, noise: NoiseSource,
                    callback: Callback = None, eta: float = 0.0, s_noise: float = 1.0,
                    noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): n model calls as 3rd-order steps (+ a 2nd/1st-order tail)
    evenly spaced in log sigma; one noise draw per step (multiplied by 0 when eta = 0)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    noise_sampler = noise_sampler or _draws(noise)
    solver = _DPMSolver(model, callback)
    t_start, t_end = _t(torch.tensor(sigma_max)), _t(torch.tensor(sigma_min))
    m = n // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral_target(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_up": t, "sigma": _sigma(t), "sigma_hat": _sigma(t),
                      "denoised": x - _sigma(t) * eps})
        step = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}[order]
        x = step(x, t, t_next_, cache)
        x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


class _PIDStepSize:
    """PID step-size controller for the adaptive solver (Söderlind 2003; k-diffusion's defaults: I only)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.errs: list[float] = []

    def propose(self, error: Tensor) -> bool:
        inv = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b[0] * self.errs[1] ** self.b[1] * self.errs[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model: Model, x: Tensor, sigma_min: float, sigma_max: float, *, noise: NoiseSource,
                        callback: Callback = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81, eta: float = 0.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver-12/23 adaptive step size (Lu et al. 2022, sec. 3.5): embedded lower/higher-order pair,
    error-controlled steps in log sigma; one noise draw per accepted step."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    noise_sampler = noise_sampler or _draws(noise)
    solver = _DPMSolver(model, callback)
    s, t_end = _t(torch.tensor(sigma_max)), _t(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDStepSize(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, steps = x, 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = solver.ancestral_target(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low, x_high = solver.step_1(x, s, t_, cache), solver.step_2(x, s, t_, cache)
        else:
            x_low, x_high = solver.step_2(x, s, t_, cache, r1=1 / 3), solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t))
            s = t
        steps += 1
        if callback is not None:
            callback({"x": x, "i": steps - 1, "t": s, "t_up": s, "sigma": _sigma(s), "sigma_hat": _sigma(s),
                      "denoised": denoised})
    return x


# --- Restart (Xu et al. 2023, "Restart Sampling for Improving Generative Processes") ----------------

def restart_plan(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A1111's Restart: the (sigma, sigma_next) Heun steps, with its default restart setting.

    For n >= 20 steps: K = 9 restart steps repeated once (n >= 36: K = n // 4, twice); the main schedule is
    rebuilt as Karras with n - K * times steps between sigmas[-2] and sigmas[0]; after the step that lands
    nearest sigma = 0.1 the sampler jumps back to the main sigma nearest 2 and runs K Karras steps down
    again, `times` times. For n < 20 it is plain Heun on `sigmas`.
    """
    from .schedules import karras

    steps = len(sigmas) - 1
    windows: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        k, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - k * times, float(sigmas[-2]), float(sigmas[0])).to(sigmas)
        windows = {0.1: (k + 1, times, 2.0)}
    restart_at = {int(torch.argmin((sigmas - key).abs())): v for key, v in windows.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_at:
            n_sig, times, hi = restart_at[i + 1]
            top = int(torch.argmin((sigmas - hi).abs()))
            if top < i + 1:
                ladder = karras(n_sig, float(sigmas[i + 1]), float(sigmas[top])).to(sigmas)[:-1]
                plan += list(zip(ladder[:-1], ladder[1:])) * times
    return plan


@torch.no_grad()
def sample_restart(model: Model, x: Tensor, sigmas: Tensor, *, noise: NoiseSource, callback: Callback = None,
                   s_noise: float = 1.0) -> Tensor:
    """Restart sampling (Xu et al. 2023) with A1111's defaults: Heun steps (Euler onto 0); each jump from a
    low sigma back up adds fresh noise sqrt(sigma_hi^2 - sigma_lo^2) (one draw per jump)."""
    s_in = x.new_ones([x.shape[0]])
    last = None
    for i, (sigma, sigma_next) in enumerate(restart_plan(sigmas)):
        if last is not None and last < sigma:
            x = x + noise.next() * s_noise * (sigma ** 2 - last ** 2) ** 0.5
        denoised = model(x, sigma * s_in)
        d = to_d(x, sigma, denoised)
        _cb(callback, x, i, sigma_next, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in))
            x = x + (d + d_2) / 2 * dt
        last = sigma_next
    return x
