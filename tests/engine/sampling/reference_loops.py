"""Reference sampling loops for the samplers k-diffusion does not have, written here from the papers and
A1111's documented behaviour (shared/reference/a1111-sampling.md, §1), for the whole-pipeline byte-exact
tests (tests/engine/test_txt2img_reference.py). Test-only; nothing here imports lora_ui.engine.sampling.

Conventions (A1111's): the timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) work on x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps with `eps_model(x, t (B,) float32) -> eps` (CFG already applied on eps); the sigma
samplers (Restart, LCM) on x = x0 + sigma eps with `model(x, sigma (B,)) -> x0`. `noise.next()` is the next
(B, C, h, w) draw of the per-image generators; every draw A1111 makes is made here too (even when it is
multiplied by 0), since the position in each image's stream decides later noise. abar: float32 (1000,).
"""
from __future__ import annotations

import torch


# --- DDIM, DDIM CFG++, PLMS on A1111's timesteps tau -----------------------------------------------------

def a1111_tau(steps: int) -> torch.Tensor:
    """tau = clip(range(0, 1000, 1000 // N) + 1, 0, 999): ascending; the loops run from tau[-1] down and
    tau[k - 1] (abar[0] for k = 0) is only the target of the step at tau[k]."""
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def _step_scalars(abar: torch.Tensor, tau: torch.Tensor, k: int, eta: float) -> tuple[float, float, float]:
    """(abar_t, abar_prev, sigma_t): abar_t float32; abar_prev and Song et al.'s eq. 16 sigma in float64."""
    a_t = float(abar[tau[k]])
    a_prev = float(abar[tau[k - 1]]) if k > 0 else float(abar[0])
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    return a_t, a_prev, sigma


def _ddim_step(x, eps_x0, eps_dir, z, a_t, a_prev, sigma):
    """Song et al. 2020 ("Denoising Diffusion Implicit Models") eq. 12, x0 unclipped:
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t).
    Scalars become (B, 1, 1, 1) tensors of x's dtype first (as A1111 does), then every op is on tensors."""
    one = x.new_ones((x.shape[0], 1, 1, 1))
    a_t, a_prev, sigma = a_t * one, a_prev * one, sigma * one
    x0 = (x - (1 - a_t).sqrt() * eps_x0) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1.0 - a_prev - sigma ** 2).sqrt() * eps_dir + sigma * z


@torch.no_grad()
def ddim(eps_model, x, abar, steps, noise, eta=0.0):
    """DDIM (Song et al. 2020, eq. 12 with eta): len(tau) - 1 steps, one draw per step (used only if eta)."""
    tau = a1111_tau(steps)
    ones = x.new_ones(x.shape[0])
    for k in range(len(tau) - 1, 0, -1):
        eps = eps_model(x, float(tau[k]) * ones)
        x = _ddim_step(x, eps, eps, noise.next(), *_step_scalars(abar, tau, k, eta))
    return x


@torch.no_grad()
def ddim_cfgpp(eps_pair_model, x, abar, steps, noise, eta=0.0):
    """DDIM with CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for
    Diffusion Models", Alg. 1): x0 from the guided eps (guidance lambda = cfg / 12.5 in A1111), the
    renoising direction from the unconditional eps. `eps_pair_model(x, t) -> (guided eps, uncond eps)`."""
    tau = a1111_tau(steps)
    ones = x.new_ones(x.shape[0])
    for k in range(len(tau) - 1, 0, -1):
        guided, uncond = eps_pair_model(x, float(tau[k]) * ones)
        x = _ddim_step(x, guided, uncond, noise.next(), *_step_scalars(abar, tau, k, eta))
    return x


def _plms_eps(eps_t, history):
    """Adams-Bashforth on eps (Liu et al. 2022, eq. 12), order 2, 3, 4 by how many earlier eps exist."""
    if len(history) == 1:
        return (3 * eps_t - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps_t - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


@torch.no_grad()
def plms(eps_model, x, abar, steps):
    """PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"): the transfer
    part is the deterministic DDIM step (eq. 11); warm-up: the first step averages eps at x_t and at the
    DDIM-predicted x_prev (pseudo improved Euler, 2 evaluations), then linear multistep on eps. No draws."""
    tau = a1111_tau(steps)
    ones, zero = x.new_ones(x.shape[0]), torch.zeros_like(x)
    history: list[torch.Tensor] = []
    for k in range(len(tau) - 1, 0, -1):
        scalars = _step_scalars(abar, tau, k, 0.0)
        eps = eps_model(x, float(tau[k]) * ones)
        if history:
            eps_prime = _plms_eps(eps, history)
        else:
            x_euler = _ddim_step(x, eps, eps, zero, *scalars)
            eps_prime = (eps + eps_model(x_euler, float(tau[k - 1]) * ones)) / 2
        x = _ddim_step(x, eps_prime, eps_prime, zero, *scalars)
        history = (history + [eps])[-3:]
    return x


# --- UniPC -----------------------------------------------------------------------------------------------

class VPCurve:
    """The continuous VP schedule UniPC solves on (DPM-Solver's discrete-to-continuous convention):
    training step n sits at t_n = (n + 1) / N (a float32 grid, torch.linspace(0, 1, N + 1)[1:]),
    log alpha_t = 0.5 log abar is linear between the nodes, sigma_t = sqrt(1 - alpha_t^2),
    lambda_t = log alpha_t - log sigma_t."""

    def __init__(self, abar):
        self.t_nodes = torch.linspace(0.0, 1.0, len(abar) + 1)[1:]
        self.log_alpha_nodes = 0.5 * torch.log(abar)

    def log_alpha(self, t):
        k = int(torch.searchsorted(self.t_nodes, t).clamp(1, len(self.t_nodes) - 1))
        t0, t1 = self.t_nodes[k - 1], self.t_nodes[k]
        y0, y1 = self.log_alpha_nodes[k - 1], self.log_alpha_nodes[k]
        return y0 + (t - t0) * (y1 - y0) / (t1 - t0)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))


def unipc_coefficients(h, rks, order):
    """bh1 (B(h) = -h in data prediction) order conditions (Zhao et al. 2023, Thm. 3.1 / App. C):
    R[i] = r^i (i < order, r = [r_1..r_{order-1}, 1]), b_i = i! (-h) phi_{i+1}(-h) / B(h).
    Returns (R, b, B(h), -h phi_1(-h) = expm1(-h))."""
    hh = -h
    r = torch.stack([*rks, torch.ones_like(h)])
    rows, b = [], []
    phi = torch.expm1(hh) / hh - 1          # hh phi_2(hh)
    fact = 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(phi * fact / hh)
        fact *= i + 1
        phi = phi / hh - 1 / fact
    return torch.stack(rows), torch.stack(b), hh, torch.expm1(hh)


def _weighted(weights, diffs):
    """sum_k a_k D_k, contracted as the authors' published UniPC code (which A1111 ports) does it:
    einsum over a stacked k axis. Its rounding differs from a left-to-right sum (~1e-5 in the latents)."""
    return torch.einsum("k,bkchw->bchw", weights, torch.stack(diffs, dim=1))


class UniPCReference:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models"), multistep, data prediction x0 = (x - sigma_t eps) / alpha_t, UniP-p predictor and
    UniC-p corrector with B(h) = h (bh1). The authors' choices at low order are kept: predictor order 2
    uses a_1 = 1/2, corrector order 1 uses a_1 = 1/2. UNet time of t: 1000 (t - 1/N)."""

    def __init__(self, eps_model, abar):
        self.eps_model, self.vp = eps_model, VPCurve(abar)

    def x0(self, x, t):
        eps = self.eps_model(x, (t - 1.0 / 1000) * 1000.0 * x.new_ones(x.shape[0]))
        return (x - self.vp.sigma(t) * eps) / self.vp.alpha(t)

    def step(self, x, hist_x0, hist_t, t, order, correct):
        """One UniP-p step from hist_t[-1] to t (+ UniC-p with one evaluation at the new point)."""
        vp, m0 = self.vp, hist_x0[-1]
        lam0 = vp.lam(hist_t[-1])
        h = vp.lam(t) - lam0
        rks = [(vp.lam(hist_t[-1 - i]) - lam0) / h for i in range(1, order)]
        diffs = [(hist_x0[-1 - i] - m0) / rk for i, rk in enumerate(rks, start=1)]
        r, b, b_h, expm1_hh = unipc_coefficients(h, rks, order)
        alpha_t = vp.alpha(t)
        base = vp.sigma(t) / vp.sigma(hist_t[-1]) * x - alpha_t * expm1_hh * m0
        x_new = base
        if diffs:
            a_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1])
            x_new = base - alpha_t * b_h * _weighted(a_p, diffs)
        if not correct:
            return x_new, None
        a_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r, b)
        x0_new = self.x0(x_new, t)
        corr = _weighted(a_c[:-1], diffs) if diffs else 0
        return base - alpha_t * b_h * (corr + a_c[-1] * (x0_new - m0)), x0_new


@torch.no_grad()
def unipc(eps_model, x, abar, steps, order=3):
    """UniPC as A1111 runs it (bh1, order 3, time_uniform, lower_order_final): `steps` = len(tau) steps on
    t = linspace(1, 1/1000, steps + 1); warm-up orders 1, 2, then `order`, lowered at the end
    (min(order, steps + 1 - step)); the corrector on every step but the last. No draws."""
    solver = UniPCReference(eps_model, abar)
    ts = torch.linspace(1.0, 1.0 / 1000, steps + 1)
    hist_x0, hist_t = [solver.x0(x, ts[0])], [ts[0]]
    for step in range(1, steps + 1):
        step_order = step if step < order else min(order, steps + 1 - step)
        x, x0_new = solver.step(x, hist_x0, hist_t, ts[step], step_order, correct=step < steps)
        hist_x0, hist_t = (hist_x0 + [x0_new])[-order:], (hist_t + [ts[step]])[-order:]
    return x


# --- sigma samplers: LCM, Restart --------------------------------------------------------------------------

@torch.no_grad()
def lcm(consistency_model, x, sigmas, noise):
    """Multistep latent consistency sampling (Luo et al. 2023, "Latent Consistency Models", Alg. 1):
    x0 = f(x, sigma_i), then x = x0 + sigma_{i+1} z for every step but the last (one draw each)."""
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        x = consistency_model(x, sigmas[i] * ones)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise.next()
    return x


def _heun(model, x, sigma, sigma_next, to_d):
    """Karras et al. 2022 Alg. 1 step (Euler when sigma_next = 0)."""
    ones = x.new_ones(x.shape[0])
    d = to_d(x, sigma, model(x, sigma * ones))
    dt = sigma_next - sigma
    if sigma_next == 0:
        return x + d * dt
    x_2 = x + d * dt
    d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * ones))
    return x + (d + d_2) / 2 * dt


def restart_segments(sigmas, karras):
    """A1111's default restart setting (Xu et al. 2023 with one restart interval): below 20 steps none
    (plain Heun on `sigmas`); from 20: K = 9 restart steps, once (from 36: K = n // 4, twice). The main
    schedule is then Karras with n - K * times levels from sigmas[-2] to sigmas[0]; the interval is
    [main level nearest 0.1, main level nearest 2], walked down in K Karras steps after the main schedule
    reaches its lower end. Returns the (sigma, sigma_next) list in the order they are taken.
    `karras(n, sigma_min, sigma_max)` is k-diffusion's get_sigmas_karras."""
    n = len(sigmas) - 1
    if n < 20:
        return list(zip(sigmas[:-1], sigmas[1:]))
    k, times = (n // 4, 2) if n >= 36 else (9, 1)
    main = karras(n - k * times, sigmas[-2].item(), sigmas[0].item())
    lo = int(torch.argmin((main - 0.1).abs()))
    hi = int(torch.argmin((main - 2.0).abs()))
    pairs = []
    for i in range(len(main) - 1):
        pairs.append((main[i], main[i + 1]))
        if i + 1 == lo and hi < lo:
            ladder = karras(k + 1, main[lo].item(), main[hi].item())[:-1]
            pairs += list(zip(ladder[:-1], ladder[1:])) * times
    return pairs


@torch.no_grad()
def restart(model, x, sigmas, noise, karras, to_d):
    """Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Alg. 1):
    Heun ODE steps; whenever the next pair starts above where the last ended (a restart), forward-noise
    x from sigma_lo to sigma_hi with one fresh draw: x += z sqrt(sigma_hi^2 - sigma_lo^2)."""
    last = None
    for sigma, sigma_next in restart_segments(sigmas, karras):
        if last is not None and last < sigma:
            x = x + noise.next() * (sigma ** 2 - last ** 2) ** 0.5
        x = _heun(model, x, sigma, sigma_next, to_d)
        last = sigma_next
    return x
