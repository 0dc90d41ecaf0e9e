"""Every A1111 1.10 "Schedule type" as a pure function returning a descending sigma list.

All functions return a float32 CPU tensor of shape (n + 1,): n noise levels and the final 0 - except
KL Optimal, which (as in A1111) returns n + 1 levels ending on sigma_min and has no final 0.
Math is done in the dtypes A1111 uses (float32 torch for the k-diffusion formulas, float64 numpy
for Align Your Steps and Beta), so the lists equal A1111's to float32 rounding.

Functions over (n, sigma_min, sigma_max[, rho]) where the schedule is a formula; the ones that read the
model's 1000-entry sigma table take it explicitly as `model` (anything with `sigmas` (1000,),
`sigma_to_t(sigma)` and `t_to_sigma(t)`: `denoiser.DiscreteSchedule`).

References: Karras et al. 2022 "Elucidating the Design Space of Diffusion-Based Generative Models"
(Karras, rho 7); Sabour et al. 2024 "Align Your Steps" (published SD1.5/SDXL 10-step tables);
Lee et al. 2024 "Beta Sampling is All You Need" (Beta, alpha = beta = 0.6); Sun et al. 2024
"KL Optimal" (tan of linearly interpolated arctan sigma).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


class ModelSigmas(Protocol):
    """The model's noise levels (`denoiser.DiscreteSchedule`; LCMSchedule has 50). A `get_sigmas(n)`
    method, when present, is the model's own Uniform schedule."""

    sigmas: Tensor                                  # (1000,) ascending, float32

    def sigma_to_t(self, sigma: Tensor) -> Tensor: ...
    def t_to_sigma(self, t: Tensor) -> Tensor: ...


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# --- formulas over (n, sigma_min, sigma_max) --------------------------------------------------------

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 eq. 5: (max^(1/rho) + r (min^(1/rho) - max^(1/rho)))^rho, r = i/(n-1)."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """log sigma = (1 - r)^rho (log max - log min) + log min."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """tan((j/n) atan(min) + (1 - j/n) atan(max)), j = 0..n: (n + 1,) ending on sigma_min, no 0."""
    a_min = torch.arctan(torch.tensor(sigma_min))
    a_max = torch.arctan(torch.tensor(sigma_max))
    j = torch.arange(n + 1)
    return torch.tan(j / n * a_min + (1.0 - j / n) * a_max)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """sigma_min + F^-1_Beta(alpha, beta)(1 - r) (sigma_max - sigma_min), r = i/(n-1) (Lee et al. 2024)."""
    from scipy.special import betaincinv  # the inverse regularized incomplete beta (= stats.beta.ppf)

    q = betaincinv(alpha, beta_, 1 - np.linspace(0, 1, n))
    return torch.tensor([sigma_min + x * (sigma_max - sigma_min) for x in q] + [0.0], dtype=torch.float32)


def align_your_steps(n: int, sdxl: bool = False) -> Tensor:
    """The published 10-step AYS table (11 sigmas); other n: log sigma linearly resampled to n points."""
    table = AYS_SDXL if sdxl else AYS_SD1
    if n == len(table):
        values = np.array(table)
    else:
        ys = np.log(np.array(table)[::-1])
        values = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), ys))[::-1]
    return torch.tensor(np.append(values, 0.0), dtype=torch.float32)


# --- schedules read from the model's own sigma table -----------------------------------------------

def uniform(n: int, model: ModelSigmas) -> Tensor:
    """sigma(t) at t = linspace(999, 0, n) (k-diffusion's DiscreteSchedule.get_sigmas)."""
    t_max = len(model.sigmas) - 1
    return append_zero(model.t_to_sigma(torch.linspace(t_max, 0, n)))


def normal(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas, sgm: bool = False) -> Tensor:
    """sigma(t) at t = linspace(t(sigma_max), t(sigma_min), n); SGM Uniform: n + 1 points, last dropped."""
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1] if sgm else torch.linspace(float(start), float(end), n)
    return append_zero(torch.stack([model.t_to_sigma(t) for t in ts]).float())


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model: ModelSigmas) -> Tensor:
    return normal(n, sigma_min, sigma_max, model, sgm=True)


def simple(n: int, model: ModelSigmas) -> Tensor:
    """sigma[999 - int(i * (1000 / n))], i = 0..n-1 (float step, truncated, as A1111)."""
    size = len(model.sigmas)
    step = size / n
    return append_zero(torch.stack([model.sigmas[-(1 + int(i * step))] for i in range(n)]).float())


def ddim(n: int, model: ModelSigmas) -> Tensor:
    """sigma[1 + k s], s = max(1000 // n, 1), k while < 1000, descending (DDIM's timesteps + 1)."""
    size = len(model.sigmas)
    idx = list(range(1, size, max(size // n, 1)))[::-1]
    return append_zero(model.sigmas[idx].float())


def discard_penultimate(sigmas: Tensor) -> Tensor:
    """Drop the next-to-last sigma (DPM2 / "Discard penultimate sigma"); callers build n + 1 first."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


# --- the "Schedule type" table --------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleType:
    name: str                      # UI / infotext label
    key: str                       # A1111's internal name
    default_rho: float = -1.0      # -1: the schedule has no rho
    uses_min_max: bool = True      # False: the schedule ignores sigma_min / sigma_max (still recorded)
    aliases: tuple[str, ...] = ()


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("Automatic", "automatic"),
    ScheduleType("Uniform", "uniform", uses_min_max=False),
    ScheduleType("Karras", "karras", default_rho=7.0),
    ScheduleType("Exponential", "exponential"),
    ScheduleType("Polyexponential", "polyexponential", default_rho=1.0),
    ScheduleType("SGM Uniform", "sgm_uniform", aliases=("SGMUniform",)),
    ScheduleType("KL Optimal", "kl_optimal"),
    ScheduleType("Align Your Steps", "align_your_steps", uses_min_max=False),
    ScheduleType("Simple", "simple", uses_min_max=False),
    ScheduleType("Normal", "normal"),
    ScheduleType("DDIM", "ddim", uses_min_max=False),
    ScheduleType("Beta", "beta"),
)
SCHEDULE_NAMES: tuple[str, ...] = tuple(s.name for s in SCHEDULE_TYPES)


def _formula(key: str) -> Callable[..., Tensor]:
    return {
        "karras": karras, "exponential": exponential, "polyexponential": polyexponential,
        "kl_optimal": kl_optimal, "beta": beta,
    }[key]


@dataclass(frozen=True)
class SigmaOverrides:
    """A1111's "Schedule min sigma / max sigma / rho" options (0 = the default)."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0


def build_sigmas(
    schedule: ScheduleType, n: int, model: ModelSigmas, *, sdxl: bool = False,
    overrides: SigmaOverrides = SigmaOverrides(), discard_penultimate_sigma: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """The sigma list A1111 runs for `n` steps, and the infotext entries the overrides add.

    `schedule` must not be Automatic (resolve it first: `registry.resolve_schedule`). With
    `discard_penultimate_sigma` the list is built for n + 1 and the next-to-last sigma dropped.
    """
    if schedule.key == "automatic":
        raise ValueError("resolve 'Automatic' to a schedule before building sigmas")
    n_build = n + 1 if discard_penultimate_sigma else n
    m_min, m_max = float(model.sigmas[0]), float(model.sigmas[-1])
    s_min, s_max, info = m_min, m_max, {}
    if overrides.sigma_min != 0 and overrides.sigma_min != m_min:
        s_min = info["Schedule min sigma"] = overrides.sigma_min
    if overrides.sigma_max != 0 and overrides.sigma_max != m_max:
        s_max = info["Schedule max sigma"] = overrides.sigma_max
    rho = schedule.default_rho
    if rho != -1 and overrides.rho != 0 and overrides.rho != rho:
        rho = info["Schedule rho"] = overrides.rho

    key = schedule.key
    if key == "uniform":
        sigmas = model.get_sigmas(n_build) if hasattr(model, "get_sigmas") else uniform(n_build, model)
    elif key == "simple":
        sigmas = simple(n_build, model)
    elif key == "ddim":
        sigmas = ddim(n_build, model)
    elif key in ("normal", "sgm_uniform"):
        sigmas = normal(n_build, s_min, s_max, model, sgm=key == "sgm_uniform")
    elif key == "align_your_steps":
        sigmas = align_your_steps(n_build, sdxl=sdxl)
    elif rho != -1:
        sigmas = _formula(key)(n_build, s_min, s_max, rho=rho)
    else:
        sigmas = _formula(key)(n_build, s_min, s_max)
    if discard_penultimate_sigma:
        sigmas = discard_penultimate(sigmas)
    return sigmas, info
