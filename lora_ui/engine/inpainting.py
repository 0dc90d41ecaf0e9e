"""9-channel inpainting UNets: A1111's image conditioning (its "hybrid" c_concat), no gradio.

An inpainting UNet (lora_ui.arch.unet_variant == "inpainting") takes 9 channels at every call:
    concat([x (4, the sampler's latents after c_in scaling), mask (1, latent size, 1 = repaint),
            masked-image latents (4)])
built here as `conditioning(pipe, pixels, mask, latent_size, weight)` (B, 5, h, w) = concat([mask, masked]),
A1111 1.10's `inpainting_image_conditioning`:
    * source  = init image in [-1, 1] (zeros = 0.5 gray where there is none);
    * mask    = the processing-size pixel mask (after invert / blur / crop / resize) / 255, rounded to 0/1
                (A1111's `round_image_mask`, on unless soft inpainting); all ones without a mask;
    * masked  = VAE encode of lerp(source, source * (1 - mask), weight): at weight 1 the repainted area is
                0 in [-1, 1], i.e. 0.5 gray. weight = A1111's option "Inpainting conditioning mask strength"
                (inpainting_mask_weight, default 1.0: `MASK_WEIGHT`; infotext "Conditional mask weight");
    * the mask resized to the latent size by nearest neighbour (torch's interpolate default).
txt2img (and hires fix's second pass, and img2img without a mask) use a full mask over a gray image:
A1111's `txt2img_image_conditioning` (mask of ones, VAE encode of a 0.5-gray image) - the same tensor.
The conditioning is the same for the cond and the uncond rows of CFG (sampling/denoiser.py CFGDenoiser).
The VAE encode is the posterior mean, as every encode of this app (engine/vae_codec.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .vae_codec import encode_signed, images_to_tensor

MASK_WEIGHT = 1.0
INFOTEXT_KEY = "Conditional mask weight"


def is_inpainting(model) -> bool:
    return bool(getattr(model, "is_inpainting", False))


def conditioning(pipe, pixels: torch.Tensor | None, mask: torch.Tensor | None, latent_size: tuple[int, int],
                 *, batch: int = 1, pixel_size: tuple[int, int] | None = None,
                 weight: float = MASK_WEIGHT) -> torch.Tensor:
    """(B, 5, h, w) float32: [mask, masked-image latents] (see the module doc).

    pixels (B, 3, H, W) in [0, 1] or None (a gray image of `pixel_size` (H, W), `batch` rows);
    mask (1 or B, 1, H, W) in [0, 1] or None (all ones); latent_size (h, w)."""
    if pixels is None:
        source = torch.zeros(batch, 3, *pixel_size)
    else:
        source = pixels.float() * 2 - 1
    m = torch.ones(1, 1, *source.shape[-2:]) if mask is None else torch.round(mask.float())
    masked = torch.lerp(source, source * (1.0 - m), weight)
    latents = encode_signed(pipe, masked)
    if latents.shape[-2:] != tuple(latent_size):  # resize mode 3: the init latents are resized alike
        latents = F.interpolate(latents, size=tuple(latent_size), mode="bilinear")
    m_latent = F.interpolate(m, size=tuple(latent_size)).expand(latents.shape[0], -1, -1, -1)
    return torch.cat([m_latent.to(latents), latents], dim=1)


def txt2img_conditioning(model, width: int, height: int, latent_size: tuple[int, int]) -> torch.Tensor | None:
    """A1111's txt2img image conditioning for an inpainting model ((1, 5, h, w): full mask, gray image);
    None for a plain model."""
    if not is_inpainting(model):
        return None
    return conditioning(model.pipe, None, None, latent_size, pixel_size=(height, width)).to(model.device)


def img2img_conditioning(model, images: Sequence, mask_image, latent_size: tuple[int, int]) -> torch.Tensor | None:
    """(B, 5, h, w) for the processed init images (PIL, processing size) and the processed mask (PIL "L" of
    the same size, or None: a full mask); None for a plain model."""
    if not is_inpainting(model):
        return None
    mask = None
    if mask_image is not None:
        if mask_image.size != images[0].size:  # resize mode 3 keeps the images at their own size
            mask_image = mask_image.resize(images[0].size)
        mask = images_to_tensor([mask_image.convert("RGB")])[:, :1]
    return conditioning(model.pipe, images_to_tensor(images), mask, latent_size).to(model.device)
