"""The VAE both ways, A1111's way: pixels -> latents (img2img, pixel-upscaled hires) and latents -> pixels.

encode: A1111 (`images_tensor_to_samples` -> ldm `get_first_stage_encoding(encode_first_stage(x))`) takes
`DiagonalGaussianDistribution.sample()` = mean + std * torch.randn(...) drawn from the process-global torch
RNG with no generator, image by image when the batch has more than one; that global state is whatever the
last `torch.manual_seed` of the process left, so it is not a function of the request and cannot be
reproduced. We take the same posterior sample (not the mean) with the noise from a CPU torch generator
seeded with the image's seed (diffusers `latent_dist.sample(generator)`): deterministic per image seed,
same distribution as A1111, and an image never depends on its batch companions.
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
    """(B, 3, H, W) in [0, 1] -> latents (B, 4, H/8, W/8) * scaling_factor, one image at a time, each
    a posterior sample with a CPU generator seeded seeds[i] (see the module doc)."""
    vae = pipe.vae
    factor = float(vae.config.scaling_factor)
    out = []
    for one, seed in zip(pixels, seeds):
        x = one[None].to(vae.device, vae.dtype) * 2 - 1
        dist = vae.encode(x).latent_dist
        out.append(dist.sample(generator=torch.Generator("cpu").manual_seed(int(seed))) * factor)
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
