"""Hires. fix: A1111 1.10's second txt2img pass (processing.py `sample_hr_pass`), no gradio.

After the first pass (the plain txt2img latents, unchanged), per batch:
  1. upscale to (hr_upscale_to_x, hr_upscale_to_y) (`target_size`):
       latent upscalers: torch interpolate of the latents (mode, antialias) - no decode, no re-encode;
       pixel upscalers: the first pass decoded to uint8 (A1111's truncation), `Upscalers.resize` (mode 0),
       VAE-encoded again (`vae.encode_images`, per-image seeded posterior sample);
     then A1111's truncation crop when both hr_resize_x and hr_resize_y are set and change the aspect;
  2. a new per-image ImageRNG on the upscaled shape with the same seeds / variation / seed resize;
  3. the hires prompt's conditioning (steps of the second pass), the hires sampler / schedule type;
  4. `registry.sample_img2img` with A1111's `setup_img2img_steps(p, steps=hr_steps)`: hires always passes
     its steps, so the "exact steps" branch runs: schedule length int(hr_steps / min(d, 0.999)),
     t_enc = hr_steps - 1, x = latents + noise * sigmas[len - t_enc - 1]: exactly hr_steps steps.
     (reference §8 states t_enc = int(min(d, 0.999) * steps); A1111's code, quoted in our docstring of
     `registry.img2img_steps`, passes steps= and so takes the exact branch.)
The same model and LoRA patches stay in place between the passes (no reload); a different hires prompt
applies its own `<lora:...>` set for the second pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .sampling import registry

# A1111 shared.latent_upscale_modes: name -> (torch interpolate mode, antialias)
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
OPT_F = 8  # A1111's opt_f; our `factor` is the model's VAE factor (8 for SD; the 64 px demo model's is 4)


@dataclass(frozen=True)
class HiresTarget:
    """A1111 calculate_target_resolution: upscale to (to_x, to_y), then crop truncate_x / _y latent columns
    / rows (only when hr_resize_x and hr_resize_y are both set). `width`, `height`: the final image size."""

    to_x: int
    to_y: int
    truncate_x: int = 0
    truncate_y: int = 0
    factor: int = OPT_F

    @property
    def width(self) -> int:
        return (self.to_x // self.factor - self.truncate_x) * self.factor

    @property
    def height(self) -> int:
        return (self.to_y // self.factor - self.truncate_y) * self.factor


def target_size(width: int, height: int, scale: float, resize_x: int, resize_y: int, factor: int = OPT_F) -> HiresTarget:
    """A1111: by factor when both resize values are 0, else to the given width and/or height."""
    if resize_x == 0 and resize_y == 0:
        return HiresTarget(int(width * scale), int(height * scale), factor=factor)
    if resize_y == 0:
        return HiresTarget(resize_x, resize_x * height // width, factor=factor)
    if resize_x == 0:
        return HiresTarget(resize_y * width // height, resize_y, factor=factor)
    if width / height < resize_x / resize_y:
        to_x, to_y = resize_x, resize_x * height // width
    else:
        to_x, to_y = resize_y * width // height, resize_y
    return HiresTarget(to_x, to_y, (to_x - resize_x) // factor, (to_y - resize_y) // factor, factor)


def crop_truncated(latents: torch.Tensor, target: HiresTarget) -> torch.Tensor:
    """A1111: samples[:, :, ty//2 : h - (ty+1)//2, tx//2 : w - (tx+1)//2]."""
    tx, ty = target.truncate_x, target.truncate_y
    h, w = latents.shape[2], latents.shape[3]
    return latents[:, :, ty // 2:h - (ty + 1) // 2, tx // 2:w - (tx + 1) // 2]


def upscale_latents(latents: torch.Tensor, name: str, target: HiresTarget) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, to_y // f, to_x // f) with the latent mode's interpolation (f: VAE factor)."""
    mode, antialias = LATENT_UPSCALE_MODES[name]
    size = (target.to_y // target.factor, target.to_x // target.factor)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)


def hires_steps(req) -> int:
    return int(req.hr_second_pass_steps) or int(req.steps)


def validate_hires(req, width: int, height: int, upscalers=None, factor: int = OPT_F) -> HiresTarget:
    """Check the hires fields (RequestError naming the field); returns the target."""
    from lora_ui.limits import MAX_SIZE, MAX_STEPS, MIN_SIZE

    from .txt2img import RequestError, _float_field, _int_field

    _float_field(req, "denoising_strength", 0.0, 1.0)
    if req.denoising_strength <= 0:
        raise RequestError("denoising_strength", "must be above 0 with hires fix (0 would leave no steps)")
    _float_field(req, "hr_scale", 1.0, 8.0)
    _int_field(req, "hr_second_pass_steps", 0, MAX_STEPS)
    for name in ("hr_resize_x", "hr_resize_y"):
        value = _int_field(req, name, 0, MAX_SIZE)
        if value and (value < MIN_SIZE or value % 8):
            raise RequestError(name, f"must be 0 (use the scale) or a multiple of 8 from {MIN_SIZE}, got {value}")
    _check_hires_names(req, upscalers)
    target = target_size(width, height, float(req.hr_scale), int(req.hr_resize_x), int(req.hr_resize_y), factor)
    for name, value in (("hr_scale", target.width), ("hr_scale", target.height)):
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise RequestError(name, f"the hires size {target.width}x{target.height} is outside "
                                     f"{MIN_SIZE}..{MAX_SIZE} px")
    return target


def _check_hires_names(req, upscalers) -> None:
    from .txt2img import RequestError

    for name in ("hr_upscaler", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"):
        if not isinstance(getattr(req, name), str):
            raise RequestError(name, f"must be text, got {type(getattr(req, name)).__name__}")
    try:
        if req.hr_sampler_name:
            registry.find_sampler(req.hr_sampler_name)
        if req.hr_scheduler:
            registry.find_schedule(req.hr_scheduler)
    except registry.SamplingError as e:
        raise RequestError("hr_sampler_name" if "sampler" in str(e) else "hr_scheduler", str(e)) from None
    if req.hr_upscaler in LATENT_UPSCALE_MODES:
        return
    from .upscalers import BUILTIN, UpscalerError, Upscalers

    try:
        (upscalers or Upscalers()).find(req.hr_upscaler)
    except UpscalerError as e:
        latent = ", ".join(LATENT_UPSCALE_MODES)
        raise RequestError("hr_upscaler", f"{e}; latent: {latent}" if upscalers else
                           f"unknown upscaler {req.hr_upscaler!r}; valid: {latent}, {', '.join(BUILTIN)}") from None


class HiresFix:
    """The second pass of one txt2img request (built once, run per batch by txt2img.generate)."""

    def __init__(self, model, req, first_size: tuple[int, int], text: str, negative_text: str,
                 first_plan: registry.Plan, library=None, warnings: list[str] | None = None, upscalers=None):
        from .txt2img import PassSpec, sampling_options

        self.model, self.req, self.first_size = model, req, first_size
        self.upscalers, self.library = upscalers, library
        self.warnings = warnings if warnings is not None else []
        from .txt2img import vae_scale_factor

        self.target = validate_hires(req, *first_size, upscalers, vae_scale_factor(model.pipe))
        self.steps = hires_steps(req)
        self.sampler = req.hr_sampler_name or req.sampler
        self.scheduler = req.hr_scheduler or req.scheduler
        self.text, self.negative_text, self.hr_loras = self._prompts(text, negative_text)
        schedule_len, t_enc = registry.img2img_steps(self.steps, float(req.denoising_strength), exact=True)
        self.spec = PassSpec(self.sampler, self.scheduler, schedule_len, float(req.cfg_scale),
                             sampling_options(model, req), t_enc=t_enc)
        self.plan = registry.plan(self.sampler, self.scheduler, schedule_len, _schedule(model), self.spec.options)
        self.first_plan = first_plan
        self.first_loras: list = []          # the first pass's LoRA set, restored after a hires-prompt set
        self._model_upscaler = None

    def _prompts(self, text: str, negative_text: str) -> tuple[str, str, list | None]:
        """The second pass's prompts without LoRA tags, and its LoRA set when the hires prompt has tags."""
        from lora_ui.prompt import extract_lora_tags

        if not self.req.hr_prompt and not self.req.hr_negative_prompt:
            return text, negative_text, None
        hr_text, tags, tag_warnings = extract_lora_tags(self.req.hr_prompt) if self.req.hr_prompt else (text, [], [])
        hr_negative = extract_lora_tags(self.req.hr_negative_prompt)[0] if self.req.hr_negative_prompt else negative_text
        self.warnings.extend(tag_warnings)
        if not self.req.hr_prompt:
            return hr_text, hr_negative, None
        specs: list = []
        if tags and self.library is not None:
            specs, spec_warnings = self.library.specs_for(tags)
            self.warnings.extend(spec_warnings)
        return hr_text, hr_negative, specs

    # ---------------------------------------------------------------------------------- the pass
    def second_pass(self, latents: torch.Tensor, seeds: list[int], subseeds: list[int], loras, on_step,
                    first_images: list | None = None):
        """First-pass latents (B, C, h, w) -> Sampled with (B, C, H/8, W/8) latents of the final size."""
        from dataclasses import replace

        from .txt2img import embeddings_for, encode_conds, make_rng, prompt_steps, sample_pass

        req = self.req
        init = crop_truncated(self._upscale(latents, seeds, first_images), self.target)
        rng = make_rng(self.model, req, seeds, subseeds, tuple(init.shape[1:]), self.plan)
        swap = self.hr_loras is not None and loras is not None
        if swap:
            loras.set_loras(self.hr_loras)
        try:
            conds, _ = encode_conds(self.model, req, self.text, self.negative_text, len(seeds),
                                    prompt_steps(self.plan, self.steps), embeddings_for(self.model))
            spec = replace(self.spec, init=init)
            return sample_pass(self.model, spec, conds, rng, self.target.width, self.target.height, loras, on_step)
        finally:
            if swap:
                loras.set_loras(self.first_loras)

    def _upscale(self, latents: torch.Tensor, seeds: list[int], first_images) -> torch.Tensor:
        if self.req.hr_upscaler in LATENT_UPSCALE_MODES:
            return upscale_latents(latents, self.req.hr_upscaler, self.target)
        from .upscalers import Upscalers
        from .vae_codec import decode_to_images, encode_images

        images = first_images if first_images is not None else decode_to_images(self.model.pipe, latents)
        upscalers = self.upscalers or Upscalers()
        info = upscalers.find(self.req.hr_upscaler)
        if info.kind == "model" and self._model_upscaler is None:
            self._model_upscaler = upscalers.load(info, self.model.device)
        big = [upscalers.resize(im, self.target.to_x, self.target.to_y, info.name, model=self._model_upscaler)
               for im in images]
        return encode_images(self.model.pipe, big, seeds)

    # ---------------------------------------------------------------------------------- infotext
    def infotext_params(self) -> dict[str, Any]:
        """A1111's extra_generation_params of hires fix, in its insertion order."""
        req = self.req
        params: dict[str, Any] = {"Denoising strength": req.denoising_strength}
        if req.hr_sampler_name and registry.find_sampler(req.hr_sampler_name).name != \
                registry.find_sampler(req.sampler).name:
            params["Hires sampler"] = registry.find_sampler(req.hr_sampler_name).name
        if req.hr_prompt and req.hr_prompt != req.prompt:
            params["Hires prompt"] = req.hr_prompt
        if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
            params["Hires negative prompt"] = req.hr_negative_prompt
        label = self.plan.infotext["Schedule type"]
        if self.plan.spec.family != "timestep" and label != self.first_plan.infotext["Schedule type"]:
            params["Hires schedule type"] = label
        if req.hr_resize_x == 0 and req.hr_resize_y == 0:
            params["Hires upscale"] = req.hr_scale
        else:
            params["Hires resize"] = f"{req.hr_resize_x}x{req.hr_resize_y}"
        if req.hr_second_pass_steps:
            params["Hires steps"] = int(req.hr_second_pass_steps)
        if req.hr_upscaler:
            params["Hires upscaler"] = req.hr_upscaler
        return params


def _schedule(model):
    from .txt2img import model_schedule

    return model_schedule(model)


def hires_request_from_infotext(parsed: dict[str, Any]) -> dict[str, Any]:
    """Txt2ImgRequest hires fields from a parsed infotext (paste-back); {} when it has no hires keys."""
    if not any(k in parsed for k in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps")):
        return {}
    out: dict[str, Any] = {"enable_hr": True, "denoising_strength": float(parsed.get("Denoising strength", 0.7))}
    if "Hires upscale" in parsed:
        out["hr_scale"] = float(parsed["Hires upscale"])
    if "Hires resize" in parsed:
        w, _, h = str(parsed["Hires resize"]).partition("x")
        out["hr_resize_x"], out["hr_resize_y"] = int(w or 0), int(h or 0)
    for key, field in (("Hires steps", "hr_second_pass_steps"), ("Hires upscaler", "hr_upscaler"),
                       ("Hires sampler", "hr_sampler_name"), ("Hires schedule type", "hr_scheduler"),
                       ("Hires prompt", "hr_prompt"), ("Hires negative prompt", "hr_negative_prompt")):
        if key in parsed:
            out[field] = int(parsed[key]) if field == "hr_second_pass_steps" else str(parsed[key])
    return out
