"""txt2img: a validated request -> images, A1111 infotexts and saved PNGs, sampled by our own core.

The pipeline, top to bottom (one iteration of `batch_size` images):
    1. prompts -> per-call conditioning (A1111 emphasis, BREAK, editing, alternation, AND; no padding)
    2. ImageRNG: per-image generators seeded seed+i (source CPU / GPU / NV), variation seeds, seed resize
    3. sampling.plan: A1111's sigma list for the sampler + schedule type (or DDIM timesteps)
    4. sampling.sample: the sampler over CFGDenoiser(DiscreteDenoiser(UNet)), step noise from the same RNG
    5. VAE decode image by image, A1111's float -> uint8 conversion (truncation), PNG + infotext

A1111 behaviours kept (reference: docs/sampling.md):
  * image i of a batch gets seed + i (with a variation strength: every image the seed, subseed + i);
    batch_count iterations continue the numbering (seed + n*batch_size + i); seed -1 draws a random seed;
  * ancestral/SDE noise comes from the image's own generator / Brownian tree, so an image never depends
    on its batch companions; ENSD reseeds the generators after the first draw;
  * the prompt keeps its `<lora:...>` tags in the infotext; they are removed before encoding;
  * PNGs go to `<outputs>/txt2img-images/<YYYY-MM-DD>/NNNNN-<seed>.png` with the infotext in the
    `parameters` text chunk; NNNNN continues after the highest number already in that folder.

Callbacks during sampling (after sampler iteration i, counting from 0):
  * `loras.on_step(k, total)` with k = iterations done (0 before the first): "step k is next"; it turns
    LoRAs with start/stop on and off;
  * `on_step(k, total, denoised)` with k = 1..total (progress); `denoised` (B, 4, h, w) is the sampler's
    current x0 estimate (the live preview shows it, not the noisy latent). Raising
    `GenerationInterrupted` there stops sampling: the last x0 estimate is decoded and returned with
    `interrupted=True`. `total` is the requested step count.
"""
from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from lora_ui.limits import (MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_CLIP_SKIP, MAX_SEED, MAX_SIZE,
                            MAX_STEPS, MIN_SIZE)

from . import conditioning, inpainting
from .sampling import registry
from .sampling.denoiser import CFGDenoiser, DiscreteDenoiser, DiscreteSchedule, LatentMask, sdxl_time_ids
from .sampling.rng import SOURCES as RNG_SOURCES
from .sampling.rng import BrownianNoise, ImageRNG
from .vae_codec import decode_to_images  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

VERSION = "lora-ui v0.1"
_RE_SEQUENCE = re.compile(r"^(\d+)-")


class RequestError(ValueError):
    """A request field is invalid. `field` names it (as in Txt2ImgRequest); the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class GenerationInterrupted(Exception):
    """Raised by an `on_step` callback to stop sampling; generate() returns what was done."""


@dataclass
class Txt2ImgRequest:
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler"                 # A1111's API default; the UI starts on "DPM++ 2M"
    scheduler: str = "Automatic"           # "Schedule type"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    seed: int = -1
    subseed: int = -1                      # variation seed (-1: random), used when subseed_strength != 0
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0            # "Seed resize from" (both > 0 to take effect)
    seed_resize_from_h: int = 0
    rng: str = "GPU"                       # A1111's "Random number generator source": GPU (CPU draws on
                                           # a machine without CUDA, as A1111), CPU, or NV (Philox)
    eta: float | None = None               # None: A1111's defaults (1 ancestral/SDE, 0 DDIM)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0                    # 0 = infinity
    s_noise: float = 1.0
    ensd: int = 0                          # "Eta noise seed delta"
    sigma_min: float = 0.0                 # schedule overrides, 0 = the model's (A1111's options)
    sigma_max: float = 0.0
    rho: float = 0.0
    add_lora_hashes: bool = True  # "Lora hashes" in the infotext (the UI's setting of the same name)
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    save_images: bool = True
    vae: str | None = None                 # "Automatic", "None" or a VAE file name; None: the app's sd_vae
    # Hires. fix (engine/hires.py); A1111's txt2img fields and defaults
    enable_hr: bool = False
    denoising_strength: float = 0.7
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0              # 0: the first pass's steps
    hr_resize_x: int = 0                       # both 0: by hr_scale
    hr_resize_y: int = 0
    hr_sampler_name: str = ""                  # "": the first pass's
    hr_scheduler: str = ""
    hr_prompt: str = ""                        # "": the prompt
    hr_negative_prompt: str = ""
    # who asked (never changes the image): the REST API's authenticated user or client address, the UI's
    # Gradio session. The worker serves owners round-robin and cancels a closed page's jobs by it.
    owner: str | None = None


@dataclass
class Txt2ImgResult:
    images: list = field(default_factory=list)          # PIL.Image.Image, width x height, RGB
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    saved_paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loras: list = field(default_factory=list)            # LoraSpec applied
    interrupted: bool = False


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _int_field(req, name: str, low: int, high: int) -> int:
    value = getattr(req, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise RequestError(name, f"must be a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise RequestError(name, f"must be between {low} and {high}, got {value}")
    return value


def _float_field(req, name: str, low: float, high: float, *, optional: bool = False) -> None:
    value = getattr(req, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError(name, f"must be a number between {low:g} and {high:g}, got {value!r}")


def _seed_field(req, name: str) -> None:
    seed = getattr(req, name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < -1 or seed > 2**63 - 1 - 10_000:
        raise RequestError(name, f"must be -1 (random) or a whole number >= 0, got {seed!r}")


def _validate_sampling(req: Txt2ImgRequest) -> None:
    """Sampler, schedule type, RNG and the A1111 sampler options."""
    for name in ("sampler", "scheduler", "rng"):
        if not isinstance(getattr(req, name), str):
            raise RequestError(name, f"must be text, got {type(getattr(req, name)).__name__}")
    try:
        registry.find_sampler(req.sampler)
    except registry.SamplingError as e:
        raise RequestError("sampler", str(e)) from None
    try:
        registry.find_schedule(req.scheduler)
    except registry.SamplingError as e:
        raise RequestError("scheduler", str(e)) from None
    if req.rng not in RNG_SOURCES:
        raise RequestError("rng", f"unknown random number source {req.rng!r}; valid: {', '.join(RNG_SOURCES)}")
    _seed_field(req, "subseed")
    _float_field(req, "subseed_strength", 0.0, 1.0)
    _float_field(req, "eta", 0.0, 1.0, optional=True)
    for name in ("s_churn", "s_tmin", "s_tmax", "sigma_min", "sigma_max"):
        _float_field(req, name, 0.0, 1000.0)
    _float_field(req, "s_noise", 0.0, 10.0)
    _float_field(req, "rho", 0.0, 100.0)
    _int_field(req, "ensd", -(2**31), 2**31 - 1)


def validate(model, req: Txt2ImgRequest, upscalers=None) -> tuple[int, int]:
    """Check every field; returns the (width, height) to render (the first pass's with hires fix).
    Raises RequestError naming the field."""
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(req, name), str):
            raise RequestError(name, f"must be text, got {type(getattr(req, name)).__name__}")
    size = {}
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is None or value == 0:
            size[name] = model.default_size
            continue
        value = _int_field(req, name, MIN_SIZE, MAX_SIZE)
        if value % 8:
            lower, upper = value // 8 * 8, value // 8 * 8 + 8
            raise RequestError(name, f"{value} is not a multiple of 8; use {max(lower, MIN_SIZE)} or {upper}")
        size[name] = value
    _int_field(req, "steps", 1, MAX_STEPS)
    _float_field(req, "cfg_scale", 0.0, MAX_CFG)
    _int_field(req, "batch_size", 1, MAX_BATCH_SIZE)
    _int_field(req, "batch_count", 1, MAX_BATCH_COUNT)
    _int_field(req, "clip_skip", 1, MAX_CLIP_SKIP)
    _seed_field(req, "seed")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if getattr(req, name) not in (0, -1):
            _int_field(req, name, MIN_SIZE, MAX_SIZE)
    _validate_sampling(req)
    if not isinstance(getattr(req, "enable_hr", False), bool):
        raise RequestError("enable_hr", f"must be true or false, got {req.enable_hr!r}")
    if getattr(req, "enable_hr", False):
        from .hires import validate_hires

        validate_hires(req, size["width"], size["height"], upscalers, vae_scale_factor(model.pipe))
    return size["width"], size["height"]


# ----------------------------------------------------------------------------------------------
# Noise and saving
# ----------------------------------------------------------------------------------------------

def vae_scale_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def next_sequence_number(folder: Path) -> int:
    """A1111: one more than the highest leading number of a file in the folder (0 when empty)."""
    highest = -1
    if folder.is_dir():
        for p in folder.iterdir():
            m = _RE_SEQUENCE.match(p.name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def save_png(image, infotext: str, folder: Path, seed: int) -> Path:
    """Save as NNNNN-<seed>.png with the infotext; never overwrites (exclusive create)."""
    from lora_ui.infotext import png_info_with_infotext

    folder.mkdir(parents=True, exist_ok=True)
    number = next_sequence_number(folder)
    while True:
        path = folder / f"{number:05d}-{seed}.png"
        try:
            with open(path, "xb") as fh:
                image.save(fh, "PNG", pnginfo=png_info_with_infotext(infotext))
            return path
        except FileExistsError:
            number += 1


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def _lora_hashes(library, specs) -> dict[str, str]:
    hashes: dict[str, str] = {}
    if library is None:
        return hashes
    for spec in specs:
        entry = next((e for e in getattr(library, "entries", []) if Path(e.path) == Path(spec.path)), None)
        if entry is None:
            continue
        try:
            short = entry.short_hash()
        except Exception as e:  # a hash failure must not lose the image
            log.warning("could not hash LoRA %s: %s", spec.path, e)
            continue
        if short:
            hashes[spec.name] = short
    return hashes


def _apply_loras(prompt: str, negative: str, library, loras) -> tuple[str, str, list, list[str]]:
    """Remove `<lora:...>` tags, resolve them and bring `loras` to exactly that set."""
    from lora_ui.prompt import extract_lora_tags

    text, tags, warnings = extract_lora_tags(prompt)
    negative_text, negative_tags, negative_warnings = extract_lora_tags(negative)
    warnings = list(warnings) + list(negative_warnings)
    if negative_tags:
        warnings.append("LoRA tags in the negative prompt are ignored")
    specs: list = []
    if tags and library is None:
        warnings.append("no LoRA library is configured; <lora:...> tags were ignored")
    elif tags:
        specs, spec_warnings = library.specs_for(tags)
        specs = list(specs)
        warnings += list(spec_warnings)
    if loras is not None:
        specs = _applied(specs, loras.set_loras(specs))
    elif specs:
        warnings.append("no LoRA engine is attached to this model; <lora:...> tags were ignored")
        specs = []
    return text, negative_text, specs, warnings


def _applied(specs: list, report) -> list:
    """The specs the LoRA manager really applied: one it skipped (made for another architecture; its
    warning is in the report) is neither in the result's LoRAs nor in the infotext's "Lora hashes"."""
    if not getattr(report, "skipped", None):
        return specs
    applied = {Path(r.path) for r in getattr(report, "loras", [])}
    return [spec for spec in specs if Path(spec.path) in applied]


def sampling_options(model, req: Txt2ImgRequest) -> registry.SamplingOptions:
    return registry.SamplingOptions(
        eta=None if req.eta is None else float(req.eta), s_churn=float(req.s_churn), s_tmin=float(req.s_tmin),
        s_tmax=float(req.s_tmax), s_noise=float(req.s_noise), sigma_min=float(req.sigma_min),
        sigma_max=float(req.sigma_max), rho=float(req.rho), sdxl=model.arch == "sdxl")


def model_schedule(model) -> DiscreteSchedule:
    """The model's training noise levels, from its scheduler config (the one fact samplers need)."""
    config = getattr(model, "scheduler_config", None) or model.pipe.scheduler.config
    return DiscreteSchedule.from_config(dict(config))


def _variation_params(req: Txt2ImgRequest, subseed: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if req.subseed_strength:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    return params


def build_infotext(model, req: Txt2ImgRequest, *, seed: int, subseed: int, width: int, height: int,
                   lora_hashes: dict[str, str], plan: registry.Plan, extra_params: dict[str, Any] | None = None,
                   ti_hashes: str | None = None) -> str:
    """A1111's infotext: its keys, order and rules for what is written (docs/sampling.md).

    `extra_params`: A1111's extra_generation_params of img2img / hires fix ("Denoising strength", "Hires
    upscale", "Mask blur", ...), written after the sampler's own keys and before "Lora hashes"."""
    from lora_ui.infotext import create_infotext

    spec = plan.spec
    extra = dict(plan.infotext)
    schedule_type = extra.pop("Schedule type")
    eta_written = plan.eta not in (None, 0)
    params: dict[str, Any] = {
        "Steps": int(req.steps),
        "Sampler": spec.name,
        "Schedule type": schedule_type,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "VAE hash": getattr(model, "vae_hash", None),   # A1111: only when a VAE file is loaded
        "VAE": getattr(model, "vae_name", None),
        **_variation_params(req, subseed),
        "Clip skip": int(req.clip_skip) if int(req.clip_skip) > 1 else None,
        "ENSD": int(req.ensd) if req.ensd and spec.uses_ensd and eta_written else None,
        "RNG": req.rng if req.rng != "GPU" else None,
        **extra,
        **(extra_params or {}),
        inpainting.INFOTEXT_KEY: inpainting.MASK_WEIGHT if inpainting.is_inpainting(model) else None,
        "Lora hashes": lora_hashes or None,
        "TI hashes": ti_hashes or None,
        "Version": VERSION,
    }
    return create_infotext(req.prompt, req.negative_prompt, params)


@dataclass
class Sampled:
    """One sampling run's output: latents (B, C, h, w) and whether it was cut short."""

    latents: torch.Tensor
    interrupted: bool


_Sampled = Sampled  # older name


@dataclass(frozen=True)
class PassSpec:
    """One sampling pass: sampler, schedule, CFG and, for img2img / the hires pass, where it starts.

    txt2img: `init` None, the sampler runs `steps` from the first draw. img2img: `init` (B, C, h, w) latents,
    `steps` the schedule length and `t_enc` from `registry.img2img_steps`; `latent_mask` for inpainting.
    `image_cond`: an inpainting UNet's image conditioning (engine/inpainting.py); None on such a model
    means A1111's txt2img one (full mask, gray image), computed by sample_pass at the pass's size."""

    sampler: str
    scheduler: str
    steps: int
    cfg_scale: float
    options: registry.SamplingOptions
    init: torch.Tensor | None = None
    t_enc: int = 0
    latent_mask: LatentMask | None = None
    image_cond: torch.Tensor | None = None

    @property
    def iterations(self) -> int:
        """The progress total: steps (txt2img), t_enc + 1 (img2img, as A1111's progress bar)."""
        return int(self.steps) if self.init is None else int(self.t_enc) + 1


def pass_of(model, req: Txt2ImgRequest) -> PassSpec:
    """The txt2img (first) pass of a request."""
    return PassSpec(req.sampler, req.scheduler, int(req.steps), float(req.cfg_scale), sampling_options(model, req))


def build_cfg(model, cfg_scale: float, conds, width: int, height: int, latent_mask=None, unet=None,
              image_cond: torch.Tensor | None = None) -> CFGDenoiser:
    """CFG over the model's UNet (or `unet`, a callable with the UNet's signature, e.g. the mixed-LoRA
    wrapper of a batch of requests) as A1111's k-diffusion denoiser: eps or v-prediction from the
    model's scheduler config, SDXL micro-conditioning from the image size; `latent_mask` for inpainting;
    `image_cond` for an inpainting UNet (see CFGDenoiser)."""
    pipe = model.pipe
    config = dict(getattr(model, "scheduler_config", None) or pipe.scheduler.config)
    denoiser = DiscreteDenoiser(unet if unet is not None else pipe.unet, model_schedule(model),
                                config.get("prediction_type") or "epsilon",
                                time_ids=sdxl_time_ids(height, width) if model.arch == "sdxl" else None,
                                unet_dtype=pipe.unet.dtype)
    return CFGDenoiser(denoiser, float(cfg_scale), conds, latent_mask=latent_mask, image_cond=image_cond)


def sample_pass(model, spec: PassSpec, conds, rng: ImageRNG, width: int, height: int, loras, on_step,
                unet=None) -> Sampled:
    """Run one pass over the model for one batch; stops early on GenerationInterrupted (returns the last
    x0 estimate). The first noise is `rng.first()` (txt2img: the start; img2img: added to `spec.init`).
    `on_step(done, total, x0)` after each iteration; `unet`: see build_cfg."""
    image_cond = spec.image_cond
    if image_cond is None:
        image_cond = inpainting.txt2img_conditioning(model, width, height, tuple(rng.shape[-2:]))
    cfg = build_cfg(model, spec.cfg_scale, conds, width, height, spec.latent_mask, unet, image_cond)
    total = spec.iterations
    last = {"x0": None}

    def callback(state: dict) -> None:
        last["x0"] = state["denoised"]
        done = min(total, int(state["i"]) + 1)
        if loras is not None and hasattr(loras, "on_step"):
            loras.on_step(done, total)
        if on_step is not None:
            on_step(done, total, state["denoised"])

    if loras is not None and hasattr(loras, "on_step"):
        loras.on_step(0, total)
    brownian = lambda x, lo, hi: BrownianNoise(x, lo, hi, rng.seeds, rng.source)  # noqa: E731
    try:
        if spec.init is None:
            latents = registry.sample(spec.sampler, spec.scheduler, cfg, rng.first(), spec.steps, rng, brownian,
                                      callback, spec.options)
        else:
            latents = registry.sample_img2img(spec.sampler, spec.scheduler, cfg, spec.init, rng.first(), spec.steps,
                                              spec.t_enc, rng, brownian, callback, spec.options)
    except GenerationInterrupted:
        if last["x0"] is None:
            raise
        return Sampled(last["x0"], True)
    return Sampled(latents, False)


def seeds_for(req: Txt2ImgRequest, base_seed: int, base_subseed: int, iteration: int) -> tuple[list[int], list[int]]:
    """A1111's all_seeds / all_subseeds for one iteration: seed + i, or the seed for every image when a
    variation strength is set (then the subseeds count up instead)."""
    first = iteration * int(req.batch_size)
    index = range(first, first + int(req.batch_size))
    seeds = [base_seed if req.subseed_strength else base_seed + i for i in index]
    return seeds, [base_subseed + i for i in index]


def latent_shape(pipe, width: int, height: int) -> tuple[int, int, int]:
    """(C, h, w) of one image's latent (C: the VAE's latent channels; an inpainting UNet takes 5 more)."""
    factor = vae_scale_factor(pipe)
    return int(pipe.vae.config.latent_channels), height // factor, width // factor


def outputs_folder(outputs_dir: Path | None, kind: str = "txt2img-images") -> Path | None:
    """`<outputs>/<kind>/<YYYY-MM-DD>` (A1111's layout), or None when nothing is saved."""
    return Path(outputs_dir) / kind / date.today().isoformat() if outputs_dir else None


def prompt_steps(plan: registry.Plan, steps: int | None = None) -> int:
    """The step count prompt editing is scheduled over: the requested steps (`steps`, default the plan's),
    doubled for second-order samplers as A1111 does."""
    return int(plan.steps if steps is None else steps) * (2 if plan.spec.second_order else 1)


def sampling_key(model, req: Txt2ImgRequest) -> tuple:
    """What requests must share to be sampled in one loop: everything but prompts, seeds, batch size,
    clip skip and LoRAs (those are per image). Raises RequestError for an invalid request."""
    width, height = validate(model, req)
    sampler, schedule = registry.parse_sampler_and_schedule(req.sampler, req.scheduler)
    return (width, height, sampler, registry.schedule_label(registry.find_sampler(sampler), schedule),
            int(req.steps), float(req.cfg_scale), sampling_options(model, req), req.rng, float(req.subseed_strength),
            int(req.seed_resize_from_w), int(req.seed_resize_from_h), int(req.ensd), bool(req.enable_hr),
            getattr(req, "vae", None))


def make_rng(model, req, seeds: list[int], subseeds: list[int], shape: tuple, plan: registry.Plan) -> ImageRNG:
    """The per-image noise of one batch: A1111's RNG source, variation seeds, seed resize and ENSD."""
    return ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=float(req.subseed_strength),
                    seed_resize_from=(int(req.seed_resize_from_w), int(req.seed_resize_from_h)),
                    source=req.rng, device=model.device, ensd=int(req.ensd), uses_ensd=plan.spec.uses_ensd)


def embeddings_for(model):
    """The textual-inversion embeddings this model can use (lora_ui/textual_inversion.py), or None."""
    library = getattr(model, "embeddings", None)
    return library.substitution(model) if library is not None else None


def encode_conds(model, req, text: str, negative: str, n: int, schedule_steps: int, ti):
    """(per-call conditioning of n images, "TI hashes" infotext value or None): A1111's prompt encoder,
    prompt editing scheduled over `schedule_steps` (see prompt_steps), the prompts' textual-inversion
    embeddings substituted in."""
    with conditioning.token_substitution(ti):
        conds = conditioning.encode_step_conds(model.pipe, model.arch, [text] * n, negative, schedule_steps,
                                               clip_skip=int(req.clip_skip))
    return conds, (ti.infotext_hashes() if ti is not None else None)


def generate(model, req: Txt2ImgRequest, *, library=None, loras=None,
             on_step: Callable[[int, int, torch.Tensor], None] | None = None,
             outputs_dir: Path | None = None, upscalers=None) -> Txt2ImgResult:
    """Render `req` with `model` (a LoadedModel). See the module doc for seeds, callbacks and saving.
    `upscalers` (engine.upscalers.Upscalers): where hires fix finds ESRGAN-family models.

    Raises RequestError (nothing rendered) for invalid fields; LoraError from `loras.set_loras`."""
    width, height = validate(model, req, upscalers)
    pipe = model.pipe
    if pipe is None:
        raise RuntimeError("this model was unloaded (a checkpoint switch freed it); use the current model")
    base_seed = int(req.seed) if req.seed >= 0 else random.randint(0, MAX_SEED)
    base_subseed = int(req.subseed) if req.subseed >= 0 else random.randint(0, MAX_SEED)
    text, negative_text, specs, warnings = _apply_loras(req.prompt, req.negative_prompt, library, loras)
    if model.arch == "sdxl" and req.clip_skip > 1:
        warnings.append("Clip skip has no effect on SDXL models (as in A1111); ignored")
    lora_hashes = _lora_hashes(library, specs) if req.add_lora_hashes else {}
    plan = registry.plan(req.sampler, req.scheduler, int(req.steps), model_schedule(model),
                         sampling_options(model, req))
    shape = latent_shape(pipe, width, height)
    out_folder = outputs_folder(outputs_dir)
    result = Txt2ImgResult(warnings=warnings, loras=specs)
    ti = embeddings_for(model)
    if ti is not None:
        result.warnings += ti.warnings_for(text, negative_text)
    hires_fix = None
    if req.enable_hr:
        from .hires import HiresFix

        hires_fix = HiresFix(model, req, (width, height), text, negative_text, plan, library, result.warnings,
                             upscalers)
        hires_fix.first_loras = specs

    for iteration in range(int(req.batch_count)):
        seeds, subseeds = seeds_for(req, base_seed, base_subseed, iteration)
        conds, ti_hashes = encode_conds(model, req, text, negative_text, len(seeds), prompt_steps(plan), ti)
        rng = make_rng(model, req, seeds, subseeds, shape, plan)
        sampled = sample_pass(model, pass_of(model, req), conds, rng, width, height, loras, on_step)
        if hires_fix is not None and not sampled.interrupted:
            sampled = hires_fix.second_pass(sampled.latents, seeds, subseeds, loras, on_step)
        finish_images(model, req, sampled.latents, seeds, subseeds, width, height, lora_hashes, plan,
                      out_folder, result, hires_fix.infotext_params() if hires_fix is not None else None,
                      ti_hashes=ti_hashes)
        if sampled.interrupted:
            result.interrupted = True
            break
    result.warnings = list(dict.fromkeys(result.warnings))  # one warning per cause, in order
    return result


def finish_images(model, req, latents, seeds, subseeds, width, height, lora_hashes, plan, out_folder,
                  result: Txt2ImgResult, extra_params: dict[str, Any] | None = None, images=None,
                  ti_hashes: str | None = None) -> None:
    """Decode (image by image, unless `images` are given), write the infotexts, save the PNGs, and append
    all of it to `result`. `extra_params`: see build_infotext."""
    if not torch.isfinite(latents).all():
        result.warnings.append("the sampler produced non-finite values (NaN/Inf): the image is black; "
                               "lower the LoRA weights or the CFG scale")
    images = decode_to_images(model.pipe, latents) if images is None else images
    for seed, subseed, image in zip(seeds, subseeds, images):
        info = build_infotext(model, req, seed=seed, subseed=subseed, width=width, height=height,
                              lora_hashes=lora_hashes, plan=plan, extra_params=extra_params, ti_hashes=ti_hashes)
        result.images.append(image)
        result.infotexts.append(info)
        result.seeds.append(seed)
        if req.save_images and out_folder is not None:
            result.saved_paths.append(save_png(image, info, out_folder, seed))
