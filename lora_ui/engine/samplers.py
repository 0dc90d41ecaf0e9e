"""A1111 sampler and "Schedule type" names -> diffusers schedulers.

A scheduler is always built from the loaded model's own scheduler config (`from_config`), so the
training schedule (betas, prediction type, steps offset) is kept and only the solver changes.

Mapping (A1111 name -> diffusers class, options):
    Euler            EulerDiscreteScheduler
    Euler a          EulerAncestralDiscreteScheduler
    DPM++ 2M         DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    DPM++ 2M Karras  the same with use_karras_sigmas=True (A1111's pre-1.9 name, kept for old infotexts)
    DPM++ SDE        DPMSolverSDEScheduler (needs torchsde; its Brownian noise is seeded with the seed)
    DDIM             DDIMScheduler
    UniPC            UniPCMultistepScheduler
    Heun             HeunDiscreteScheduler
    LMS              LMSDiscreteScheduler
Schedule types: Automatic (the sampler's own), Karras, Exponential (sigma schedules), SGM Uniform
(timestep_spacing="trailing"). A schedule a solver cannot do is refused with a message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SamplerError(ValueError):
    """Unknown sampler / schedule type, or a combination the solver does not support."""


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("Euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a",)),
        SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2}, aliases=("k_dpmpp_2m",)),
        SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                    aliases=("k_dpmpp_2m_ka",)),
        SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", aliases=("k_dpmpp_sde",)),
        SamplerSpec("DDIM", "DDIMScheduler"),
        SamplerSpec("UniPC", "UniPCMultistepScheduler"),
        SamplerSpec("Heun", "HeunDiscreteScheduler", aliases=("k_heun",)),
        SamplerSpec("LMS", "LMSDiscreteScheduler", aliases=("k_lms",)),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# Schedule type -> scheduler options; the first key of each option is the constructor argument
# the solver must accept for the schedule to be possible.
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULE_TYPES)

# Options a model's scheduler config may carry that must not leak into another solver's schedule.
_SCHEDULE_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def resolve_sampler(name: str) -> SamplerSpec:
    """Exact A1111 name (case-insensitive) or an old k-diffusion alias -> spec, else SamplerError."""
    wanted = (name or "").strip().lower()
    for spec in SAMPLERS.values():
        if wanted == spec.name.lower() or wanted in spec.aliases:
            return spec
    raise SamplerError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLER_NAMES)}.")


def resolve_schedule(name: str) -> str:
    wanted = (name or "Automatic").strip().lower()
    for known in SCHEDULE_NAMES:
        if wanted == known.lower() or wanted == known.lower().replace(" ", "_"):
            return known
    raise SamplerError(f"Unknown schedule type {name!r}. Valid schedule types: {', '.join(SCHEDULE_NAMES)}.")


def _scheduler_class(class_name: str):
    import diffusers

    cls = getattr(diffusers, class_name)
    if getattr(cls, "_backends", None):  # diffusers' dummy object: a backend is not installed
        raise SamplerError(f"This sampler needs {', '.join(cls._backends)}; install it "
                           f"(pip install -r requirements.txt) or pick another sampler.")
    return cls


def scheduler_options(sampler: str, schedule: str = "Automatic") -> tuple[SamplerSpec, dict[str, Any]]:
    """Validated (spec, constructor overrides) for a sampler + schedule type, without building."""
    import inspect

    spec = resolve_sampler(sampler)
    schedule_name = resolve_schedule(schedule)
    cls = _scheduler_class(spec.class_name)
    accepted = inspect.signature(cls.__init__).parameters
    options = {key: False for key in _SCHEDULE_KEYS if key in accepted}
    options.update(spec.options)
    extra = SCHEDULE_TYPES[schedule_name]
    for key in extra:
        if key not in accepted:
            raise SamplerError(f"Sampler {spec.name!r} cannot use schedule type {schedule_name!r}; "
                               f"pick 'Automatic' or another sampler.")
    options.update(extra)
    return spec, options


def make_scheduler(base_config, sampler: str, schedule: str = "Automatic", *, seed: int | None = None):
    """A new scheduler of the sampler's class from the model's scheduler config (a FrozenDict or dict).

    `seed` seeds the Brownian noise of DPM++ SDE so a seed reproduces the image (A1111 does the same).
    """
    spec, options = scheduler_options(sampler, schedule)
    cls = _scheduler_class(spec.class_name)
    if spec.class_name == "DPMSolverSDEScheduler" and seed is not None:
        options["noise_sampler_seed"] = int(seed)
    return cls.from_config(dict(base_config), **options)
