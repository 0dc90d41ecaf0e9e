"""The VAE both ways, A1111's way: pixels -> latents (img2img, pixel-upscaled hires) and latents -> pixels.

encode: A1111 (`images_tensor_to_samples` -> ldm `get_first_stage_encoding(encode_first_stage(x))`) takes
`DiagonalGaussianDistribution.sample()` = mean + std * torch.randn(...) drawn from the process-global torch
RNG with no generator, image by image when the batch has more than one; that global state is whatever the
last `torch.manual_seed` of the process left, so it is not a function of the request and cannot be
reproduced (A1111's own img2img is not bit-reproducible across a restart for that reason). We take the
posterior mean (diffusers `latent_dist.mode()`), i.e. A1111's value with that unknown draw at 0: exact
and deterministic, and an image never depends on its batch companions. For SD's VAE the posterior std is
small next to the latents (A1111's own run-to-run difference); for a VAE with a wide posterior (the 64 px
demo model's std is ~1, as large as the latents) a sample would destroy the picture, the mean does not.
decode: image by image, A1111's float -> uint8 truncation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .sampling.rng import to_uint8


def images_to_tensor(images: Sequence) -> torch.Tensor:
    """PIL RGB images of one size -> (B, 3, H, W) float32 in [0, 1] (A1111: uint8 / 255)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_pixels(pipe, pixels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> latents (B, 4, H/8, W/8) * scaling_factor, one image at a time: the
    posterior mean (see the module doc). `seeds` are accepted for a future seeded-sample option."""
    return encode_signed(pipe, pixels * 2 - 1)


@torch.no_grad()
def encode_signed(pipe, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (the VAE's own range) -> latents * scaling_factor (float32), image by image."""
    vae = pipe.vae
    factor = float(vae.config.scaling_factor)
    out = [vae.encode(one[None].to(vae.device, vae.dtype)).latent_dist.mode() * factor for one in x]
    return torch.cat(out).float()


def encode_images(pipe, images: Sequence, seeds: Sequence[int]) -> torch.Tensor:
    return encode_pixels(pipe, images_to_tensor(images), seeds)


@torch.no_grad()
def decode_to_images(pipe, latents: torch.Tensor) -> list:
    """VAE-decode image by image (as A1111: an image never depends on its batch) -> PIL RGB images."""
    from PIL import Image

    vae = pipe.vae
    factor = float(vae.config.scaling_factor)
    images = []
    for one in latents:
        decoded = vae.decode(one[None].to(vae.device, vae.dtype) / factor).sample
        images.append(Image.fromarray(to_uint8(decoded.float())[0]))
    return images
