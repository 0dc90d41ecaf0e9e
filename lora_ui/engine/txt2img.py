"""txt2img: a validated request -> images, A1111 infotexts and saved PNGs.

A1111 behaviours kept:
  * the initial noise of image i is `torch.randn((4, H/f, W/f), generator=CPU generator seeded with
    seed + i)` (f = the VAE's downscale factor), drawn on the CPU and moved to the device, so a seed
    gives the same image on any device; the same per-image CPU generators then feed the ancestral
    and SDE samplers' step noise (A1111's ImageRNG), so an image does not depend on its batch;
  * batch_count iterations of batch_size images; iteration n uses seeds seed + n*batch_size + i;
  * seed -1 draws a random seed in [0, 2**32 - 2];
  * the prompt keeps its `<lora:...>` tags in the infotext but they are removed before encoding;
  * PNGs go to `<outputs>/txt2img-images/<YYYY-MM-DD>/NNNNN-<seed>.png` with the infotext in the
    `parameters` text chunk; NNNNN continues after the highest number already in that folder.

Callbacks during sampling (after denoising step i of n, i counting from 0):
  * `loras.on_step(k, total)` with k = the number of steps done so far (0 before the first step) —
    i.e. "step k is next"; it switches LoRAs with start/stop on and off;
  * `on_step(k, total, latents)` with k = 1..total (progress); latents (B, 4, h, w) on the device.
    Raising `GenerationInterrupted` there stops sampling: the current latents are decoded and returned
    with `interrupted=True`. `total` is the requested step count (second-order samplers such as Heun run
    2*steps-1 model evaluations; k is scaled to steps).
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

from . import conditioning, samplers

log = logging.getLogger(__name__)

VERSION = "lora-ui v0.1"
from lora_ui.limits import (MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_CLIP_SKIP, MAX_SEED,  # noqa: E402
                            MAX_SIZE, MAX_STEPS, MIN_SIZE)
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
    sampler: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    seed: int = -1
    subseed: int | None = None  # not supported yet (variation seeds)
    add_lora_hashes: bool = True  # "Lora hashes" in the infotext (the UI's setting of the same name)
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    save_images: bool = True


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


def validate(model, req: Txt2ImgRequest) -> tuple[int, int]:
    """Check every field; returns the (width, height) to render. Raises RequestError naming the field."""
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
    cfg = req.cfg_scale
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or not 0 <= cfg <= MAX_CFG:
        raise RequestError("cfg_scale", f"must be a number between 0 and {MAX_CFG:g}, got {cfg!r}")
    _int_field(req, "batch_size", 1, MAX_BATCH_SIZE)
    _int_field(req, "batch_count", 1, MAX_BATCH_COUNT)
    _int_field(req, "clip_skip", 1, MAX_CLIP_SKIP)
    seed = req.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < -1 or seed > 2**63 - 1 - 10_000:
        raise RequestError("seed", f"must be -1 (random) or a whole number >= 0, got {seed!r}")
    try:
        samplers.resolve_sampler(req.sampler)
    except samplers.SamplerError as e:
        raise RequestError("sampler", str(e)) from None
    try:
        samplers.scheduler_options(req.sampler, req.scheduler)
    except samplers.SamplerError as e:
        raise RequestError("scheduler", str(e)) from None
    return size["width"], size["height"]


# ----------------------------------------------------------------------------------------------
# Noise and saving
# ----------------------------------------------------------------------------------------------

def vae_scale_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """A1111 CPU noise: for each seed a CPU generator, `torch.randn(shape)` from it (fp32).

    Returns (noise (B, C, h, w) on the CPU, the generators, positioned after the draw)."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return noise, generators


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
        loras.set_loras(specs)
    elif specs:
        warnings.append("no LoRA engine is attached to this model; <lora:...> tags were ignored")
        specs = []
    return text, negative_text, specs, warnings


def build_infotext(model, req: Txt2ImgRequest, *, seed: int, width: int, height: int,
                   lora_hashes: dict[str, str], schedule: str) -> str:
    from lora_ui.infotext import create_infotext

    params: dict[str, Any] = {
        "Steps": int(req.steps),
        "Sampler": samplers.resolve_sampler(req.sampler).name,
        "Schedule type": schedule,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Clip skip": int(req.clip_skip) if int(req.clip_skip) > 1 else None,
        "Lora hashes": lora_hashes or None,
        "Version": VERSION,
    }
    return create_infotext(req.prompt, req.negative_prompt, params)


def generate(model, req: Txt2ImgRequest, *, library=None, loras=None,
             on_step: Callable[[int, int, torch.Tensor], None] | None = None,
             outputs_dir: Path | None = None) -> Txt2ImgResult:
    """Render `req` with `model` (a LoadedModel). See the module doc for seeds, callbacks and saving.

    Raises RequestError (nothing rendered) for invalid fields; LoraError from `loras.set_loras`."""
    width, height = validate(model, req)
    pipe = model.pipe
    if pipe is None:
        raise RuntimeError("this model was unloaded (a checkpoint switch freed it); use the current model")
    schedule = samplers.resolve_schedule(req.scheduler)
    base_seed = int(req.seed) if req.seed >= 0 else random.randint(0, MAX_SEED)
    text, negative_text, specs, warnings = _apply_loras(req.prompt, req.negative_prompt, library, loras)
    if model.arch == "sdxl" and req.clip_skip > 1:
        warnings.append("Clip skip has no effect on SDXL models (as in A1111); ignored")
    lora_hashes = _lora_hashes(library, specs) if req.add_lora_hashes else {}

    cond = conditioning.encode_prompts(pipe, model.arch, text, negative_text, clip_skip=int(req.clip_skip))
    factor = vae_scale_factor(pipe)
    latent_shape = (int(pipe.unet.config.in_channels), height // factor, width // factor)
    out_folder = Path(outputs_dir) / "txt2img-images" / date.today().isoformat() if outputs_dir else None
    result = Txt2ImgResult(warnings=warnings, loras=specs)

    for iteration in range(int(req.batch_count)):
        seeds = [base_seed + iteration * req.batch_size + i for i in range(int(req.batch_size))]
        noise, generators = initial_noise(seeds, latent_shape)
        base_config = getattr(model, "scheduler_config", None) or pipe.scheduler.config
        pipe.scheduler = samplers.make_scheduler(base_config, req.sampler, req.scheduler, seed=seeds[0])
        stopped = {"flag": False}

        def step_end(p, i, t, kwargs, _stopped=stopped):
            n_timesteps = max(1, int(getattr(p, "_num_timesteps", None) or req.steps))
            done = min(req.steps, math.ceil((i + 1) * req.steps / n_timesteps))
            try:
                if loras is not None and hasattr(loras, "on_step"):
                    loras.on_step(done, req.steps)
                if on_step is not None:
                    on_step(done, req.steps, kwargs["latents"])
            except GenerationInterrupted:
                _stopped["flag"] = True
                p._interrupt = True  # diffusers skips the remaining steps, then decodes the latents
            return kwargs

        if loras is not None and hasattr(loras, "on_step"):
            loras.on_step(0, req.steps)
        call_kwargs = dict(
            num_inference_steps=int(req.steps), guidance_scale=float(req.cfg_scale), width=width, height=height,
            latents=noise.to(model.device, pipe.unet.dtype), generator=generators, output_type="pil",
            callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=["latents"],
            **cond.pipeline_kwargs(len(seeds)),
        )
        output = pipe(**call_kwargs)
        for seed, image in zip(seeds, output.images):
            info = build_infotext(model, req, seed=seed, width=width, height=height,
                                  lora_hashes=lora_hashes, schedule=schedule)
            result.images.append(image)
            result.infotexts.append(info)
            result.seeds.append(seed)
            if req.save_images and out_folder is not None:
                result.saved_paths.append(save_png(image, info, out_folder, seed))
        if stopped["flag"]:
            result.interrupted = True
            break
    return result
