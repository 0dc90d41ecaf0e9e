"""A1111 1.10's txt2img samplers by name: aliases, flags, defaults, Automatic schedule, and `sample`.

Flags (A1111's sampler options): second_order (prompt editing counts 2 x steps), brownian (SDE samplers
take a per-image Brownian-tree noise_sampler), uses_ensd (infotext "ENSD" when eta != 0),
discard_penultimate (build n + 1 sigmas, drop the next-to-last), churn (s_churn/s_tmin/s_tmax/s_noise).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import k_samplers as K
from . import timestep_samplers as T
from .denoiser import CFGDenoiser, DiscreteDenoiser, DiscreteSchedule, LCMDenoiser
from .schedules import SCHEDULE_NAMES, SCHEDULE_TYPES, ScheduleType, SigmaOverrides, build_sigmas


class SamplingError(ValueError):
    """Unknown sampler or schedule type (the message names the valid values)."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    family: str                          # "k" (sigma list), "timestep" (DDIM/PLMS/UniPC), "lcm"
    fn: Callable
    schedule: str | None = None          # Automatic -> this schedule key; None: the model's own (Uniform)
    second_order: bool = False
    brownian: bool = False
    uses_ensd: bool = False
    discard_penultimate: bool = False
    churn: bool = False
    s_noise: bool = False                # A1111 passes s_noise to this sampler
    extra: dict = field(default_factory=dict)

    @property
    def eta_option(self) -> str | None:
        """Which default eta the sampler gets: "eta_ancestral" (1), "eta_ddim" (0) or None (no eta)."""
        if self.name in ("DDIM", "DDIM CFG++"):
            return "eta_ddim"
        return "eta_ancestral" if "eta" in inspect.signature(self.fn).parameters else None


def _k(name, aliases, fn, schedule=None, **flags) -> SamplerSpec:
    return SamplerSpec(name, tuple(aliases), "k", fn, schedule, **flags)


SAMPLERS: tuple[SamplerSpec, ...] = (
    _k("DPM++ 2M", ["k_dpmpp_2m"], K.sample_dpmpp_2m, "karras"),
    _k("DPM++ SDE", ["k_dpmpp_sde"], K.sample_dpmpp_sde, "karras", second_order=True, brownian=True, s_noise=True),
    _k("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], K.sample_dpmpp_2m_sde, "exponential", brownian=True, s_noise=True),
    _k("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"], K.sample_dpmpp_2m_sde, "exponential", brownian=True,
       s_noise=True, extra={"solver_type": "heun"}),
    _k("DPM++ 2S a", ["k_dpmpp_2s_a"], K.sample_dpmpp_2s_ancestral, "karras", second_order=True, uses_ensd=True,
       s_noise=True),
    _k("DPM++ 3M SDE", ["k_dpmpp_3m_sde"], K.sample_dpmpp_3m_sde, "exponential", discard_penultimate=True,
       brownian=True, s_noise=True),
    _k("Euler a", ["k_euler_a", "k_euler_ancestral"], K.sample_euler_ancestral, uses_ensd=True),
    _k("Euler", ["k_euler"], K.sample_euler, churn=True, s_noise=True),
    _k("LMS", ["k_lms"], K.sample_lms),
    _k("Heun", ["k_heun"], K.sample_heun, second_order=True, churn=True, s_noise=True),
    _k("DPM2", ["k_dpm_2"], K.sample_dpm_2, "karras", discard_penultimate=True, second_order=True, churn=True,
       s_noise=True),
    _k("DPM2 a", ["k_dpm_2_a"], K.sample_dpm_2_ancestral, "karras", discard_penultimate=True, uses_ensd=True,
       second_order=True, s_noise=True),
    _k("DPM fast", ["k_dpm_fast"], K.sample_dpm_fast, uses_ensd=True, s_noise=True),
    _k("DPM adaptive", ["k_dpm_ad"], K.sample_dpm_adaptive, uses_ensd=True),
    _k("Restart", ["restart"], K.sample_restart, "karras", second_order=True),
    SamplerSpec("DDIM", ("ddim",), "timestep", T.sample_ddim),
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), "timestep", T.sample_ddim_cfgpp),
    SamplerSpec("PLMS", ("plms",), "timestep", T.sample_plms),
    SamplerSpec("UniPC", ("unipc",), "timestep", T.sample_unipc),
    SamplerSpec("LCM", ("k_lcm",), "lcm", K.sample_lcm),
)
SAMPLER_NAMES: tuple[str, ...] = tuple(s.name for s in SAMPLERS)
__all__ = ["SAMPLERS", "SAMPLER_NAMES", "SCHEDULE_NAMES", "SamplingError", "SamplingOptions", "find_sampler",
           "find_schedule", "parse_sampler_and_schedule", "resolve_schedule", "schedule_label", "plan", "sample",
           "img2img_steps", "sample_img2img"]


def find_sampler(name: str) -> SamplerSpec:
    """By UI name or alias, case-insensitively."""
    key = name.strip().lower()
    for spec in SAMPLERS:
        if key == spec.name.lower() or key in (a.lower() for a in spec.aliases):
            return spec
    raise SamplingError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}")


def find_schedule(name: str | None) -> ScheduleType:
    """By label, internal name or alias, case-insensitively; None / "" is Automatic."""
    key = (name or "Automatic").strip().lower()
    for st in SCHEDULE_TYPES:
        if key in (st.name.lower(), st.key, *(a.lower() for a in st.aliases)):
            return st
    raise SamplingError(f"unknown schedule type {name!r}; valid: {', '.join(SCHEDULE_NAMES)}")


def parse_sampler_and_schedule(sampler: str | None, schedule: str | None = None, *,
                               convert_automatic: bool = True) -> tuple[str, str]:
    """(sampler name, schedule label) from UI/infotext values, as A1111 1.10 reads them.

    A schedule suffix on the sampler ("DPM++ 2M Karras", "Euler a SGM Uniform", "... sgm_uniform") wins over
    `schedule`; missing sampler = DPM++ 2M; a schedule equal to the sampler's own default becomes Automatic.
    """
    name = (sampler or "DPM++ 2M").strip()
    found = find_schedule(schedule)
    suffixes = sorted(((o, st) for st in SCHEDULE_TYPES for o in (st.name, st.key, *st.aliases)),
                      key=lambda pair: -len(pair[0]))              # "SGM Uniform" before "Uniform"
    for option, st in suffixes:
        if name.lower().endswith(" " + option.lower()):
            found, name = st, name[: -(len(option) + 1)]
            break
    spec = find_sampler(name)
    if convert_automatic and spec.schedule == found.key:
        found = SCHEDULE_TYPES[0]
    return spec.name, found.name


def resolve_schedule(spec: SamplerSpec, schedule: str | None) -> ScheduleType | None:
    """The schedule function that runs: the chosen one, or for Automatic the sampler's own; None when the
    model's own n-step sigmas are used (Automatic without a sampler default; timestep samplers)."""
    st = find_schedule(schedule)
    if spec.family == "timestep":
        return None
    if st.key == "automatic":
        return None if spec.schedule is None else find_schedule(spec.schedule)
    return st


def schedule_label(spec: SamplerSpec, schedule: str | None) -> str:
    """Infotext "Schedule type": the UI value, replaced by the resolved label when a schedule function ran
    (DPM++ 2M + Automatic -> "Karras"; Euler a + Automatic -> "Automatic"; DDIM + Karras -> "Karras")."""
    resolved = resolve_schedule(spec, schedule)
    return resolved.name if resolved is not None else find_schedule(schedule).name


@dataclass(frozen=True)
class SamplingOptions:
    """A1111 settings that change sampling (defaults = A1111's)."""

    eta: float | None = None                 # the UI/infotext "Eta"; None: eta_ancestral / eta_ddim
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0                      # 0 = infinity
    s_noise: float = 1.0
    sigma_min: float = 0.0                   # "Schedule min sigma" (0: the model's)
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False       # init z * sqrt(1 + sigma0^2) instead of z * sigma0
    sdxl: bool = False                       # Align Your Steps table
    uni_pc_variant: str = "bh1"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True


@dataclass(frozen=True)
class Plan:
    """What a run will do: sigmas (k/LCM) or timesteps (DDIM/PLMS; UniPC uses len), and infotext additions."""

    spec: SamplerSpec
    steps: int
    sigmas: Tensor | None
    timesteps: Tensor | None
    eta: float | None
    infotext: dict


def plan(name: str, schedule: str | None, steps: int, model_schedule: DiscreteSchedule,
         options: SamplingOptions = SamplingOptions()) -> Plan:
    """Resolve names and build the sigma list / timesteps A1111 would use for `steps`."""
    spec = find_sampler(name)
    info: dict = {"Schedule type": schedule_label(spec, schedule)}
    discard = spec.discard_penultimate or options.always_discard_next_to_last_sigma
    if discard and not spec.discard_penultimate:
        info["Discard penultimate sigma"] = True
    eta = None
    if spec.eta_option == "eta_ddim":
        eta = options.eta_ddim if options.eta is None else options.eta
        if eta != 0:
            info["Eta DDIM"] = eta
    elif spec.eta_option == "eta_ancestral":
        eta = options.eta_ancestral if options.eta is None else options.eta
        if eta != 1:
            info["Eta"] = eta
    if spec.family == "timestep":
        return Plan(spec, steps, None, T.ddim_timesteps(steps, discard), eta, info)
    model = model_schedule
    resolved = resolve_schedule(spec, schedule)
    if resolved is None:
        sigmas = model.get_sigmas(steps + 1 if discard else steps)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas, extra = build_sigmas(resolved, steps, model, sdxl=options.sdxl, discard_penultimate_sigma=discard,
                                     overrides=SigmaOverrides(options.sigma_min, options.sigma_max, options.rho))
        info.update(extra)
    if spec.churn:
        for key, value, default in (("Sigma churn", options.s_churn, 0.0), ("Sigma tmin", options.s_tmin, 0.0),
                                    ("Sigma tmax", options.s_tmax, 0.0), ("Sigma noise", options.s_noise, 1.0)):
            if value != default:
                info[key] = value
    return Plan(spec, steps, sigmas, None, eta, info)


BrownianFactory = Callable[[Tensor, float, float], K.NoiseSampler]


def sample(name: str, schedule: str | None, cfg: CFGDenoiser, noise: Tensor, steps: int,
           noise_source: K.NoiseSource, brownian_factory: BrownianFactory | None = None,
           callback: K.Callback = None, options: SamplingOptions = SamplingOptions()) -> Tensor:
    """Run sampler `name` end to end; returns latents (B, C, h, w) (unscaled: feed to the VAE / 0.18215).

    `cfg`: a CFGDenoiser whose `inner` is a DiscreteDenoiser (LCM and the timestep samplers re-wrap it).
    `noise`: the initial per-image draw z (B, C, h, w), unscaled; it is scaled by sigmas[0] here (timestep
    samplers: used as is). `brownian_factory(x, sigma_min, sigma_max)` builds the per-image Brownian
    noise_sampler for SDE samplers (interval [min sigma > 0, max sigma]).
    """
    denoiser, spec, model_schedule = _resolve(name, cfg)
    p = plan(name, schedule, steps, model_schedule, options)
    if spec.family == "timestep":
        abar = denoiser.schedule.alphas_cumprod.to(noise.device)
        return _run_timestep(p, cfg.with_inner(denoiser.eps_at_timestep), abar, noise, p.timesteps.to(noise.device),
                             noise_source, callback, options)
    sigmas = p.sigmas.to(noise.device)
    x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2) if options.sgm_noise_multiplier else sigmas[0])
    dpm_range = (model_schedule.sigma_min, model_schedule.sigma_max, steps)
    return _run_k(p, _k_model(spec, cfg, denoiser), x, sigmas, sigmas, dpm_range, noise_source, brownian_factory,
                  callback, options)


def img2img_steps(steps: int, denoising_strength: float, exact: bool = False) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (schedule length, t_enc).

    Default: (steps, int(min(d, 0.999) * steps)). With "Always do exact number of steps" (`exact`; hires
    fix always passes its steps, so it always takes this branch): (int(steps / min(d, 0.999)), steps - 1),
    or (0, steps - 1) at d = 0. The sampler then runs t_enc + 1 iterations (k-samplers)."""
    d = min(float(denoising_strength), 0.999)
    if exact:
        return (int(steps / d) if denoising_strength > 0 else 0), steps - 1
    return steps, int(d * steps)


def sample_img2img(name: str, schedule: str | None, cfg: CFGDenoiser, init: Tensor, noise: Tensor, steps: int,
                   t_enc: int, noise_source: K.NoiseSource, brownian_factory: BrownianFactory | None = None,
                   callback: K.Callback = None, options: SamplingOptions = SamplingOptions()) -> Tensor:
    """A1111's `sample_img2img` from `init` latents (B, C, h, w) with the first draw `noise` (B, C, h, w).

    `steps`, `t_enc`: from `img2img_steps`. k-samplers/LCM: the plan's sigmas for `steps`,
    sigma_sched = sigmas[steps - t_enc - 1:], x = init + noise * sigma_sched[0], then the sampler over
    sigma_sched (DPM fast/adaptive: from sigma_sched[0] to sigma_sched[-2], n = len - 1); SDE samplers'
    Brownian interval is that of the full sigma list. Timestep samplers: tau for `steps`,
    x = init sqrt(abar[tau[t_enc]]) + noise sqrt(1 - abar[tau[t_enc]]), then the loop over tau[:t_enc]
    (A1111's: the first UNet call is at tau[t_enc - 1]); UniPC runs t_enc steps from
    t = tau[t_enc - 1] / 1000 + 0.001. A `cfg.latent_mask` is blended after (k) / before (timestep) each call.
    """
    denoiser, spec, model_schedule = _resolve(name, cfg)
    p = plan(name, schedule, steps, model_schedule, options)
    if spec.family == "timestep":
        abar = denoiser.schedule.alphas_cumprod.to(noise.device)
        taus = p.timesteps.to(noise.device)
        a = abar[taus[t_enc]]
        x = init * torch.sqrt(a) + noise * torch.sqrt(1 - a)
        model = dataclasses.replace(cfg.with_inner(denoiser.eps_at_timestep), mask_before=True)
        return _run_timestep(p, model, abar, x, taus[:t_enc], noise_source, callback, options, img2img=True)
    sigmas = p.sigmas.to(noise.device)
    sched = sigmas[steps - t_enc - 1:]
    x = init + noise * sched[0]
    dpm_range = (float(sched[-2]), float(sched[0]), len(sched) - 1)
    return _run_k(p, _k_model(spec, cfg, denoiser), x, sched, sigmas, dpm_range, noise_source, brownian_factory,
                  callback, options)


def _resolve(name: str, cfg: CFGDenoiser) -> tuple[DiscreteDenoiser, SamplerSpec, DiscreteSchedule]:
    denoiser = cfg.inner
    if not isinstance(denoiser, DiscreteDenoiser):
        raise SamplingError("sample() needs a CFGDenoiser over a DiscreteDenoiser")
    spec = find_sampler(name)
    model_schedule = LCMDenoiser(denoiser).schedule if spec.family == "lcm" else denoiser.schedule
    return denoiser, spec, model_schedule


def _k_model(spec: SamplerSpec, cfg: CFGDenoiser, denoiser: DiscreteDenoiser) -> CFGDenoiser:
    return cfg.with_inner(LCMDenoiser(denoiser)) if spec.family == "lcm" else cfg


def _run_k(p: Plan, model: CFGDenoiser, x: Tensor, sigmas: Tensor, full_sigmas: Tensor,
           dpm_range: tuple[float, float, int], noise_source: K.NoiseSource,
           brownian_factory: BrownianFactory | None, callback: K.Callback, options: SamplingOptions) -> Tensor:
    """A k-sampler from x over `sigmas`; the Brownian tree spans `full_sigmas`; DPM fast/adaptive
    integrate over dpm_range = (sigma_min, sigma_max, n)."""
    spec = p.spec
    kwargs: dict = dict(spec.extra)
    params = inspect.signature(spec.fn).parameters
    if p.eta is not None:
        kwargs["eta"] = p.eta
    if spec.churn:
        kwargs.update(s_churn=options.s_churn, s_tmin=options.s_tmin,
                      s_tmax=options.s_tmax if options.s_tmax != 0 else math.inf)
    if spec.s_noise:
        kwargs["s_noise"] = options.s_noise
    if spec.brownian:
        if brownian_factory is None:
            raise SamplingError(f"{spec.name} needs a Brownian noise_sampler factory")
        positive = full_sigmas[full_sigmas > 0]
        kwargs["noise_sampler"] = brownian_factory(x, float(positive.min()), float(full_sigmas.max()))
    if "sigma_min" in params:                               # DPM fast / adaptive
        kwargs.update(sigma_min=dpm_range[0], sigma_max=dpm_range[1])
        if "n" in params:
            kwargs["n"] = dpm_range[2]
        return spec.fn(model, x, noise=noise_source, callback=callback, **kwargs)
    return spec.fn(model, x, sigmas, noise=noise_source, callback=callback, **kwargs)


def _run_timestep(p: Plan, model: CFGDenoiser, abar: Tensor, z: Tensor, timesteps: Tensor,
                  noise_source: K.NoiseSource, callback: K.Callback, options: SamplingOptions,
                  img2img: bool = False) -> Tensor:
    if p.spec.name == "UniPC":
        t_start = float(timesteps[-1]) / 1000 + 1 / 1000 if img2img else None
        return T.sample_unipc(model, z, len(timesteps), abar, callback=callback, order=options.uni_pc_order,
                              variant=options.uni_pc_variant, lower_order_final=options.uni_pc_lower_order_final,
                              t_start=t_start)
    kwargs = {"eta": p.eta} if p.eta is not None else {}
    return p.spec.fn(model, z, timesteps, abar, noise=noise_source, callback=callback, **kwargs)
