"""img2img and inpainting: a validated request -> images, A1111 infotexts and saved PNGs (no gradio).

The pipeline per batch, A1111 1.10's `StableDiffusionProcessingImg2Img` (pixel steps in engine/images.py):
    1. pixels (once per request, `prepare`): mask -> binary (alpha or luminance > 128), inverted for "Inpaint
       not masked", blurred (mask_blur, x then y); "only masked": crop region = mask bbox + padding, grown
       to the processing aspect ratio, mask and image cropped and resized (resize and fill) to width x height;
       else the image (and mask) resized with `resize_mode` (0 just resize, 1 crop and resize, 2 resize and
       fill; 3 keeps the image and upscales its latents). Overlays (original where the mask is 0) are kept
       for the end; "fill" paints the masked area with blurred surrounding colours.
    2. VAE encode (engine/vae.py: the posterior sample, noise from a CPU generator seeded with the image's
       seed; A1111 draws it from the global torch RNG, see vae.py), resize mode 3: bilinear latent resize.
    3. latent mask: the processed mask resized to the latent size (PIL default bicubic), rounded to 0/1;
       "latent noise": init = init * mask + first draw of a fresh ImageRNG(seeds) * nmask; "latent nothing":
       init * mask. (A1111 takes that noise from the first batch's seeds for every batch, a known
       "needs to be fixed" in its code; we use each batch's own seeds.)
    4. txt2img's shared pieces: conditioning for `steps`, ImageRNG (per-image seeds, variation, ENSD),
       `registry.img2img_steps` (t_enc = int(min(d, 0.999) * steps); "Always do exact number of steps":
       `exact_steps`), `registry.sample_img2img` (x = init + noise * sigma_sched[0], ...), the latent mask
       blended at every denoiser call and once on the result (samples * nmask + init * mask).
    5. decode image by image (uint8 truncation), overlay composited (`apply_overlay`; "only masked": the
       result is pasted back into its box on the original's canvas), infotext, PNG in img2img-images/.
9-channel inpainting UNets (engine/inpainting.py): every UNet call also gets A1111's image conditioning,
built from the processed init images and the processed mask (rounded to 0/1; a full mask without one).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lora_ui.limits import MAX_IMAGE_PIXELS, MAX_SEED

from . import images as px
from . import inpainting
from .sampling import registry
from .sampling.denoiser import LatentMask
from .sampling.rng import ImageRNG
from .txt2img import (PassSpec, RequestError, Txt2ImgRequest, Txt2ImgResult, _apply_loras, finish_images,
                      _float_field, _int_field, _lora_hashes, seeds_for, model_schedule, sample_pass,
                      embeddings_for, encode_conds, make_rng, outputs_folder, prompt_steps,
                      sampling_options, vae_scale_factor)
from .txt2img import validate as validate_txt2img
from .vae_codec import encode_images

MAX_MASK_BLUR = 64
MAX_PADDING = 256


@dataclass
class Img2ImgRequest(Txt2ImgRequest):
    """Every txt2img sampling field, plus A1111's img2img fields (API names and defaults).

    width/height: the processing size (None: the model's default). init_images: PIL images, one for the
    whole batch or one per batch image. mask: PIL image (white / opaque = repaint) or None."""

    init_images: list = field(default_factory=list)
    resize_mode: int = 0                   # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    denoising_strength: float = 0.75
    exact_steps: bool = False              # A1111 option "Always do exact number of steps" (img2img_fix_steps)
    mask: Any = None
    mask_blur: int = 4
    inpainting_fill: int = 0               # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True          # "Inpaint area: Only masked"
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0        # 1: "Inpaint not masked"


@dataclass
class Prepared:
    """Step 1's output: init images (processing size; resize mode 3: original size), the processing-size
    mask for the latent mask (None: plain img2img), overlays and the "only masked" paste box."""

    images: list
    latent_mask: Any = None
    overlays: list | None = None
    paste_to: tuple[int, int, int, int] | None = None
    overlay_mask: Any = None               # A1111's mask_for_overlay ("L")
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def validate(model, req: Img2ImgRequest) -> tuple[int, int]:
    """Every field (RequestError naming it); returns the processing (width, height)."""
    if getattr(req, "enable_hr", False):
        raise RequestError("enable_hr", "hires fix is a txt2img option; img2img has its own size and denoising")
    width, height = validate_txt2img(model, req)
    _float_field(req, "denoising_strength", 0.0, 1.0)
    _int_field(req, "resize_mode", 0, 3)
    _int_field(req, "inpainting_fill", 0, 3)
    _int_field(req, "mask_blur", 0, MAX_MASK_BLUR)
    _int_field(req, "inpaint_full_res_padding", 0, MAX_PADDING)
    _int_field(req, "inpainting_mask_invert", 0, 1)
    for name in ("inpaint_full_res", "exact_steps"):
        if not isinstance(getattr(req, name), (bool, int)):
            raise RequestError(name, f"must be true or false, got {getattr(req, name)!r}")
    _validate_images(req)
    _validate_steps(req)
    return width, height


def _validate_images(req: Img2ImgRequest) -> None:
    from PIL import Image

    images = req.init_images
    if not isinstance(images, (list, tuple)) or not images:
        raise RequestError("init_images", "needs at least one image")
    if len(images) not in (1, int(req.batch_size)):
        raise RequestError("init_images", f"{len(images)} images for batch_size {req.batch_size}: "
                                          "give one image, or one per batch image")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise RequestError("init_images", f"item {i} is not an image")
        if im.width * im.height > MAX_IMAGE_PIXELS or min(im.size) < 1:
            raise RequestError("init_images", f"item {i} is {im.width}x{im.height}; at most {MAX_IMAGE_PIXELS} pixels")
    if req.resize_mode == 3 and len({im.size for im in images}) > 1:
        raise RequestError("init_images", "resize mode 3 (latent upscale) needs images of one size")
    if req.mask is not None:
        if not isinstance(req.mask, Image.Image):
            raise RequestError("mask", "is not an image")
        if req.mask.size != images[0].size:
            raise RequestError("mask", f"is {req.mask.width}x{req.mask.height}; it must have the init image's "
                                       f"size {images[0].width}x{images[0].height}")


def _validate_steps(req: Img2ImgRequest) -> None:
    steps, t_enc = registry.img2img_steps(int(req.steps), float(req.denoising_strength), bool(req.exact_steps))
    if steps < 1:
        raise RequestError("denoising_strength", "must be above 0 with 'exact steps' on")
    if registry.find_sampler(req.sampler).name == "UniPC" and t_enc < 3:
        raise RequestError("denoising_strength", f"UniPC needs steps x denoising strength >= 3 (its order); "
                                                 f"got {t_enc} ({req.steps} x {req.denoising_strength})")


# ----------------------------------------------------------------------------------------------
# Step 1: pixels
# ----------------------------------------------------------------------------------------------

def prepare(req: Img2ImgRequest, width: int, height: int) -> Prepared:
    """A1111 img2img `init()`'s pixel part (see the module doc)."""
    out = Prepared(images=[])
    mask, crop = _prepare_mask(req, width, height, out)
    for img in req.init_images:
        out.images.append(_prepare_image(req, px.flatten(img), mask, crop, width, height, out))
    if len(out.images) == 1:
        out.images = out.images * int(req.batch_size)
        out.overlays = out.overlays * int(req.batch_size) if out.overlays else out.overlays
    return out


def _prepare_mask(req, width, height, out: Prepared):
    """-> (processing-size mask or None, crop region or None); sets overlay mask, paste box, params."""
    if req.mask is None:
        return None, None
    mask = px.create_binary_mask(req.mask)
    if req.inpainting_mask_invert:
        mask = px.ImageOps.invert(mask)
        out.params["Mask mode"] = "Inpaint not masked"
    if req.mask_blur > 0:
        mask = px.blur_mask(mask, req.mask_blur, req.mask_blur)
        out.params["Mask blur"] = int(req.mask_blur)
    if req.inpaint_full_res:
        region = px.crop_region(mask, int(req.inpaint_full_res_padding))
        if region is None:
            out.warnings.append('Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.')
            return None, None
        x1, y1, x2, y2 = region = px.expand_crop_region(region, width, height, mask.width, mask.height)
        out.overlay_mask = mask
        out.paste_to = (x1, y1, x2 - x1, y2 - y1)
        out.params["Inpaint area"] = "Only masked"
        out.params["Masked area padding"] = int(req.inpaint_full_res_padding)
        out.latent_mask = px.resize_image(2, mask.crop(region), width, height)
        return out.latent_mask, region
    out.latent_mask = px.resize_image(req.resize_mode, mask, width, height)
    import numpy as np

    doubled = np.clip(np.asarray(out.latent_mask.convert("L")).astype(np.float32) * 2, 0, 255).astype(np.uint8)
    out.overlay_mask = px.Image.fromarray(doubled)
    return out.latent_mask, None


def _prepare_image(req, image, mask, crop, width, height, out: Prepared):
    if crop is None and req.resize_mode != 3:
        image = px.resize_image(req.resize_mode, image, width, height)
    if mask is not None:
        overlay_mask = out.overlay_mask
        if overlay_mask.size != image.size:
            overlay_mask = px.resize_image(req.resize_mode, overlay_mask, image.width, image.height)
        out.overlays = (out.overlays or []) + [px.overlay_of(image, overlay_mask)]
    if crop is not None:
        image = px.resize_image(2, image.crop(crop), width, height)
    if mask is not None and req.inpainting_fill == 0:
        image = px.fill(image, mask)
        out.params["Masked content"] = "fill"
    return image


# ----------------------------------------------------------------------------------------------
# Steps 2-3: latents
# ----------------------------------------------------------------------------------------------

def init_latents(model, req: Img2ImgRequest, images: list, seeds: list[int], width: int, height: int) -> torch.Tensor:
    """Encode each image with its seed; resize mode 3: bilinear to the processing latent size."""
    factor = vae_scale_factor(model.pipe)
    latents = [encode_images(model.pipe, [im], [seed]) for im, seed in zip(images, seeds)]
    if req.resize_mode == 3:
        latents = [torch.nn.functional.interpolate(x, size=(height // factor, width // factor), mode="bilinear")
                   for x in latents]
    return torch.cat(latents).to(model.device)


def latent_mask_of(mask_image, init: torch.Tensor, req: Img2ImgRequest, seeds: list[int],
                   device) -> tuple[LatentMask, torch.Tensor, str | None]:
    """(LatentMask, filled init latents, "Masked content" label or None) from the processing-size mask."""
    import numpy as np

    b, c, h, w = init.shape
    arr = np.asarray(mask_image.convert("RGB").resize((w, h)), dtype=np.float32)[:, :, 0] / 255
    latmask = torch.from_numpy(np.tile(np.around(arr)[None], (c, 1, 1))).to(device)
    keep = 1.0 - latmask
    label = None
    if req.inpainting_fill == 2:
        noise = ImageRNG((c, h, w), seeds, source=req.rng, device=device).first()
        init = init * keep + noise * latmask
        label = "latent noise"
    elif req.inpainting_fill == 3:
        init = init * keep
        label = "latent nothing"
    return LatentMask(init, latmask), init, label


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def generate_img2img(model, req: Img2ImgRequest, *, library=None, loras=None,
                     on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                     outputs_dir: Path | None = None, **_ignored) -> Txt2ImgResult:
    """Render `req` (see the module doc). Raises RequestError (nothing rendered) for invalid fields."""
    width, height = validate(model, req)
    base_seed = int(req.seed) if req.seed >= 0 else random.randint(0, MAX_SEED)
    base_subseed = int(req.subseed) if req.subseed >= 0 else random.randint(0, MAX_SEED)
    text, negative_text, specs, warnings = _apply_loras(req.prompt, req.negative_prompt, library, loras)
    prepared = prepare(req, width, height)
    lora_hashes = _lora_hashes(library, specs) if req.add_lora_hashes else {}
    steps, t_enc = registry.img2img_steps(int(req.steps), float(req.denoising_strength), bool(req.exact_steps))
    options = sampling_options(model, req)
    plan = registry.plan(req.sampler, req.scheduler, steps, model_schedule(model), options)
    spec = PassSpec(req.sampler, req.scheduler, steps, float(req.cfg_scale), options, t_enc=t_enc)
    out_folder = outputs_folder(outputs_dir, "img2img-images")
    result = Txt2ImgResult(warnings=warnings + prepared.warnings, loras=specs)
    ti = embeddings_for(model)
    if ti is not None:
        result.warnings += ti.warnings_for(text, negative_text)
    for iteration in range(int(req.batch_count)):
        seeds, subseeds = seeds_for(req, base_seed, base_subseed, iteration)
        sampled, params, ti_hashes = _one_batch(model, req, prepared, spec, plan, text, negative_text, seeds,
                                                subseeds, width, height, loras, on_step, ti)
        images = _composite(model, sampled.latents, prepared)
        finish_images(model, req, sampled.latents, seeds, subseeds, width, height, lora_hashes, plan, out_folder,
                      result, params, images=images, ti_hashes=ti_hashes)
        if sampled.interrupted:
            result.interrupted = True
            break
    result.warnings = list(dict.fromkeys(result.warnings))
    return result


def _one_batch(model, req, prepared: Prepared, spec: PassSpec, plan, text, negative_text, seeds, subseeds,
               width, height, loras, on_step, ti=None):
    """Encode, mask, sample one batch -> (Sampled with the final latents, infotext extra params, TI hashes)."""
    from dataclasses import replace

    init = init_latents(model, req, prepared.images, seeds, width, height)
    params = {"Denoising strength": req.denoising_strength, **prepared.params}
    latent_mask = None
    if prepared.latent_mask is not None:
        latent_mask, init, label = latent_mask_of(prepared.latent_mask, init, req, seeds, model.device)
        if label:
            params["Masked content"] = label
    conds, ti_hashes = encode_conds(model, req, text, negative_text, len(seeds), prompt_steps(plan, req.steps), ti)
    rng = make_rng(model, req, seeds, subseeds, tuple(init.shape[1:]), plan)
    image_cond = inpainting.img2img_conditioning(model, prepared.images, prepared.latent_mask, tuple(init.shape[-2:]))
    sampled = sample_pass(model, replace(spec, init=init, latent_mask=latent_mask, image_cond=image_cond), conds, rng,
                          width, height, loras, on_step)
    if latent_mask is not None:
        sampled.latents = latent_mask.blend(sampled.latents)
    return sampled, params, ti_hashes


def _composite(model, latents: torch.Tensor, prepared: Prepared) -> list:
    from .vae_codec import decode_to_images

    images = decode_to_images(model.pipe, latents)
    if not prepared.overlays:
        return images
    return [px.apply_overlay(im, prepared.paste_to, ov) for im, ov in zip(images, prepared.overlays)]
