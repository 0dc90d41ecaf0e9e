"""DDIM, DDIM CFG++, PLMS and UniPC on the training timesteps (A1111 1.10's own loops, not k-diffusion).

`model(x (B,C,h,w), t (B,) float) -> eps (B,C,h,w)`: a CFGDenoiser over DiscreteDenoiser.eps_at_timestep,
so CFG is applied to eps. x starts as the plain draw z (not scaled by a sigma) and is x_t =
sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. `alphas_cumprod` (1000,) float32, the model's.
Per-step scalars follow A1111's dtypes: abar float32, abar_prev and the DDIM sigma in float64, then every
update in x's dtype.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .k_samplers import Callback, NoiseSource

EpsModel = Callable[[Tensor, Tensor], Tensor]


def ddim_timesteps(steps: int, discard_penultimate: bool = False, num_train: int = 1000) -> Tensor:
    """tau = clip(range(0, 1000, 1000 // N) + 1, 0, 999), ascending (N = steps, + 1 when discarding).

    N = 20: 1, 51, ..., 951 (20 values); N = 30: 31 values. The loops run len(tau) - 1 iterations from the
    top, tau[0] is only the final target: DDIM N = 20 makes 19 UNet calls and ends on abar[1].
    """
    n = steps + 1 if discard_penultimate else steps
    return torch.clip(torch.arange(0, num_train, num_train // n) + 1, 0, num_train - 1)


def _coeffs(alphas_cumprod: Tensor, timesteps: Tensor, eta: float):
    """abar[tau] (float32), abar[prev tau] with abar[0] in front (float64), DDIM sigma (float64)."""
    a = alphas_cumprod[timesteps]
    prev = torch.cat([timesteps.new_zeros(1), timesteps[:-1]])
    a_prev = alphas_cumprod[prev].double()
    sigma = eta * ((1 - a_prev) / (1 - a.double()) * (1 - a.double() / a_prev)).sqrt()
    return a, a_prev, (1 - a).sqrt(), sigma


def _ddim_update(x: Tensor, e_x0: Tensor, e_dir: Tensor, z: Tensor, a_t: float, a_prev: float,
                 sqrt_1ma: float, sigma_t: float) -> tuple[Tensor, Tensor]:
    """Song et al. 2021 eq. 12: x0 = (x - sqrt(1 - a) e) / sqrt(a) (not clipped),
    x' = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) e_dir + s z."""
    ones = x.new_ones((x.shape[0], 1, 1, 1))
    a_t_, a_prev_, s_ = a_t * ones, a_prev * ones, sigma_t * ones
    pred_x0 = (x - sqrt_1ma * ones * e_x0) / a_t_.sqrt()
    dir_xt = (1.0 - a_prev_ - s_ ** 2).sqrt() * e_dir
    return a_prev_.sqrt() * pred_x0 + dir_xt + s_ * z, pred_x0


@torch.no_grad()
def sample_ddim(model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *, noise: NoiseSource,
                callback: Callback = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), eta-stochastic; one draw per step."""
    a, a_prev, sqrt_1ma, sigma = _coeffs(alphas_cumprod, timesteps, eta)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        e_t = model(x, float(timesteps[k]) * s_in)
        z = noise.next()
        x, x0 = _ddim_update(x, e_t, e_t, z, float(a[k]), float(a_prev[k]), float(sqrt_1ma[k]), float(sigma[k]))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


@torch.no_grad()
def sample_ddim_cfgpp(model, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *, noise: NoiseSource,
                      callback: Callback = None, eta: float = 0.0) -> Tensor:
    """DDIM with CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"):
    the CFG scale is divided by 12.5, x0 uses the guided eps, the direction term the negative's eps.
    `model.forward(x, t, scale_multiplier=) -> (guided eps, uncond eps)` (CFGDenoiser)."""
    a, a_prev, sqrt_1ma, sigma = _coeffs(alphas_cumprod, timesteps, eta)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        e_t, e_uncond = model.forward(x, float(timesteps[k]) * s_in, scale_multiplier=1 / 12.5)
        z = noise.next()
        x, x0 = _ddim_update(x, e_t, e_uncond, z, float(a[k]), float(a_prev[k]), float(sqrt_1ma[k]), float(sigma[k]))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


@torch.no_grad()
def sample_plms(model: EpsModel, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *,
                noise: NoiseSource | None = None, callback: Callback = None) -> Tensor:
    """PLMS / PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"):
    the first step is a pseudo improved Euler (2 UNet calls), then Adams-Bashforth 2/3/4 on eps,
    each applied through the deterministic DDIM update. No noise draws."""
    a, a_prev, sqrt_1ma, _ = _coeffs(alphas_cumprod, timesteps, 0.0)
    s_in = x.new_ones([x.shape[0]])
    old_eps: list[Tensor] = []
    zero = torch.zeros_like(x)
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        c = (float(a[k]), float(a_prev[k]), float(sqrt_1ma[k]), 0.0)
        e_t = model(x, float(timesteps[k]) * s_in)
        if not old_eps:
            x_next, _ = _ddim_update(x, e_t, e_t, zero, *c)
            e_next = model(x_next, float(timesteps[max(k - 1, 0)]) * s_in)
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, x0 = _ddim_update(x, e_prime, e_prime, zero, *c)
        old_eps = (old_eps + [e_t])[-3:]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": x0})
    return x


# --- UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
#     Diffusion Models"), on the continuous-time VP schedule interpolated from the discrete one ----------

class VPSchedule:
    """Continuous t in (0, 1]: log alpha_t = 0.5 log abar piecewise linear over t_n = (n + 1) / 1000
    (linear extrapolation outside); sigma_t = sqrt(1 - alpha_t^2); lambda_t = log(alpha_t / sigma_t).
    The nodes are float32 `linspace(0, 1, n + 1)[1:]` as in the UniPC/DPM-Solver code A1111 ports (387 of
    them differ by one ulp from the correctly rounded (n + 1) / 1000; the latents differ by ~1e-5 if not)."""

    def __init__(self, alphas_cumprod: Tensor):
        n = len(alphas_cumprod)
        self.total = n
        self.t_array = torch.linspace(0.0, 1.0, n + 1)[1:]
        self.log_alpha = 0.5 * torch.log(alphas_cumprod.float())

    def log_alpha_at(self, t: Tensor) -> Tensor:
        idx = torch.searchsorted(self.t_array, t.reshape(-1)).clamp(1, self.total - 1)
        x0, x1 = self.t_array[idx - 1], self.t_array[idx]
        y0, y1 = self.log_alpha[idx - 1], self.log_alpha[idx]
        return (y0 + (t.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)).reshape(t.shape)

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha_at(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha_at(t)))

    def lam(self, t: Tensor) -> Tensor:
        la = self.log_alpha_at(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def unipc_times(steps: int, num_train: int = 1000, t_start: float | None = None) -> Tensor:
    """time_uniform: t = linspace(t_start (default 1), 1/1000, steps + 1) (float32)."""
    return torch.linspace(1.0 if t_start is None else t_start, 1.0 / num_train, steps + 1)


def unipc_unet_timestep(t: Tensor, num_train: int = 1000) -> Tensor:
    """The UNet timestep of continuous t: 1000 (t - 1/1000) (fractional: 999, 949.05, ..., 0)."""
    return (t - 1.0 / num_train) * 1000.0


def _unipc_coefficients(h: Tensor, rks: list[Tensor], order: int, variant: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(R (order, order), b (order,), B(h), h phi_1) of the UniPC order conditions in data prediction,
    hh = -h: b_i = h phi_{i+1}(hh) i! / B(h), B = hh (bh1) or expm1(hh) (bh2)."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    r = torch.stack(list(rks) + [torch.ones_like(h)])
    rows, b, fact = [], [], 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return torch.stack(rows), torch.stack(b), b_h, h_phi_1


def _contract(weights: Tensor, diffs: list[Tensor]) -> Tensor:
    """sum_k w_k D_k as A1111's UniPC port computes it: torch.einsum over a stacked k axis (its rounding
    differs from a left-to-right sum by ~1e-6 per step, enough to move the final latents by ~1e-5)."""
    return torch.einsum("k,bkchw->bchw", weights.to(diffs[0].dtype), torch.stack(diffs, dim=1))


class _UniPC:
    def __init__(self, model: EpsModel, vp: VPSchedule, variant: str):
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant {variant!r}: expected bh1 or bh2")
        self.model, self.vp, self.variant, self.calls = model, vp, variant, 0

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """Data prediction (x - sigma_t eps) / alpha_t with eps at UNet time 1000 (t - 0.001)."""
        eps = self.model(x, unipc_unet_timestep(t) * x.new_ones([x.shape[0]]))
        return (x - self.vp.sigma(t) * eps) / self.vp.alpha(t)

    def update(self, x: Tensor, models: list[Tensor], ts: list[Tensor], t: Tensor, order: int,
               use_corrector: bool) -> tuple[Tensor, Tensor | None]:
        """One UniP step to t (order-1 differences) and, with the corrector, one model call at the new x
        and the UniC correction (returns that call's x0 for reuse)."""
        vp = self.vp
        lam0, lam_t = vp.lam(ts[-1]), vp.lam(t)
        h = lam_t - lam0
        m0 = models[-1]
        rks, d1s = [], []
        for i in range(1, order):
            rk = (vp.lam(ts[-(i + 1)]) - lam0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - m0) / rk)
        r, b, b_h, h_phi_1 = _unipc_coefficients(h, rks, order, self.variant)
        alpha_t = vp.alpha(t)
        x_base = vp.sigma(t) / vp.sigma(ts[-1]) * x - alpha_t * h_phi_1 * m0
        if d1s:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1])
            x_t = x_base - alpha_t * b_h * _contract(rhos_p, d1s)
        else:
            x_t = x_base
        if not use_corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r, b)
        model_t = self.x0(x_t, t)
        corr = _contract(rhos_c[:-1], d1s) if d1s else 0
        return x_base - alpha_t * b_h * (corr + rhos_c[-1] * (model_t - m0)), model_t


@torch.no_grad()
def sample_unipc(model: EpsModel, x: Tensor, steps: int, alphas_cumprod: Tensor, *,
                 noise: NoiseSource | None = None, callback: Callback = None, order: int = 3,
                 variant: str = "bh1", lower_order_final: bool = True, t_start: float | None = None) -> Tensor:
    """UniPC multistep in data prediction (A1111: bh1, order 3, time_uniform, lower_order_final), steps =
    len(tau) = N: `steps` model calls (the corrector runs on every step but the last). No noise draws.
    `t_start` (img2img): start there instead of t = 1."""
    if steps < order:
        raise ValueError(f"UniPC needs at least order={order} steps (img2img: steps x denoising strength)")
    solver = _UniPC(model, VPSchedule(alphas_cumprod), variant)
    times = unipc_times(steps, t_start=t_start)                                   # 0-d t per step
    models, ts = [solver.x0(x, times[0])], [times[0]]
    for step in range(1, steps + 1):
        t = times[step]
        step_order = min(order, step) if step < order else (min(order, steps + 1 - step) if lower_order_final else order)
        x, model_x = solver.update(x, models, ts, t, step_order, use_corrector=step < steps)
        if step < steps:
            models, ts = (models + [model_x])[-order:], (ts + [t])[-order:]
        if callback is not None:
            callback({"x": x, "i": step - 1, "sigma": 0, "sigma_hat": 0, "denoised": models[-1]})
    return x
