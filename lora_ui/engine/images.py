"""img2img's pixel work, A1111 1.10's way (modules/images.py, modules/masking.py, processing.py): resize
modes, binary masks, mask blur, the "only masked" crop region, "fill" masked content, and the overlay that
composites the result back onto the original. PIL and numpy only (no torch, no gradio).

Masks are PIL "L" images, 255 = repaint. Images are PIL RGB.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")


def resize_image(mode: int, im: Image.Image, width: int, height: int, resize=None) -> Image.Image:
    """A1111 `images.resize_image`: 0 just resize; 1 crop and resize (fill the box, centre, crop the rest);
    2 (and 3, as A1111's else branch) resize and fill (fit, centre, stretch the edge rows/columns into the
    bars). `resize(im, w, h)` does the scaling (default: Lanczos; A1111 uses the img2img upscaler option,
    default None = Lanczos)."""
    resize = resize or (lambda img, w, h: img.resize((w, h), resample=Image.LANCZOS))
    if mode == 0:
        return resize(im, width, height)
    ratio, src_ratio = width / height, im.width / im.height
    if mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = resize(im, src_w, src_h)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode != 1:
        _fill_bars(res, resized, ratio, src_ratio, width, height, src_w, src_h)
    return res


def _fill_bars(res, resized, ratio, src_ratio, width, height, src_w, src_h) -> None:
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                      box=(0, fill_height + src_h))
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill_width + src_w, 0))


def flatten(img: Image.Image, background: str = "#ffffff") -> Image.Image:
    """A1111 `images.flatten`: an image with transparency over the background colour, as RGB."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGBA", rgba.size, background)
        out.alpha_composite(rgba)
        return out.convert("RGB")
    return img.convert("RGB")


def create_binary_mask(image: Image.Image, round_mask: bool = True) -> Image.Image:
    """A1111: the alpha channel of an RGBA mask that uses transparency, else its luminance; > 128 -> 255."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L")
    else:
        image = image.convert("L")
    return image.point(lambda x: 255 if x > 128 else 0) if round_mask else image


def gaussian_kernel(sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(2 * int(2.5 sigma + 0.5) + 1, sigma) (A1111's kernel size)."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _blur_axis(arr: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D convolution along `axis` with cv2's default border (BORDER_REFLECT_101)."""
    r = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    mode = "reflect" if arr.shape[axis] > 1 else "edge"
    padded = np.pad(arr, pad, mode=mode)
    out = np.zeros_like(arr, dtype=np.float64)
    for i, w in enumerate(kernel):
        out += w * (padded[i:i + arr.shape[0], :] if axis == 0 else padded[:, i:i + arr.shape[1]])
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's mask blur: cv2.GaussianBlur with (k, 1) for x then (1, k) for y, uint8 after each (rounded).
    (numpy re-implementation: within 1 level of cv2, which uses fixed-point arithmetic for uint8.)"""
    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    for sigma, axis in ((blur_x, 1), (blur_y, 0)):
        if sigma > 0:
            arr = np.clip(np.rint(_blur_axis(arr, gaussian_kernel(sigma), axis)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """A1111 `masking.get_crop_region_v2`: the mask's bounding box grown by `pad` (clamped); None if blank."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    if not pad:
        return box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])


def expand_crop_region(region, processing_width: int, processing_height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """A1111 `masking.expand_crop_region`: grow the region to the processing aspect ratio, inside the image."""
    x1, y1, x2, y2 = region
    ratio_crop, ratio_proc = (x2 - x1) / (y2 - y1), processing_width / processing_height
    if ratio_crop > ratio_proc:
        y1, y2 = _expand_span(y1, y2, (x2 - x1) / ratio_proc, image_height)
    else:
        x1, x2 = _expand_span(x1, x2, (y2 - y1) * ratio_proc, image_width)
    return x1, y1, x2, y2


def _expand_span(a: int, b: int, desired: float, limit: int) -> tuple[int, int]:
    diff = int(desired - (b - a))
    a -= diff // 2
    b += diff - diff // 2
    if b >= limit:
        a -= b - limit
        b = limit
    if a < 0:
        b -= a
        a = 0
    if b >= limit:
        b = limit
    return a, b


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 `masking.fill` ("Masked content: fill"): the masked area filled with blurred colours from
    around it (composited Gaussian blurs of radius 256, 64, 16, 4, 2, 0)."""
    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def overlay_of(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """A1111's overlay image: the original where the mask is 0, transparent where it is 255 (RGBA)."""
    masked = Image.new("RGBa", (image.width, image.height))
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return masked.convert("RGBA")


def apply_overlay(image: Image.Image, paste_loc: tuple[int, int, int, int] | None,
                  overlay: Image.Image | None) -> Image.Image:
    """A1111 `apply_overlay`: (only masked: the result resized into its box on a blank canvas) then the
    overlay alpha-composited on top, so unmasked pixels are the original's."""
    if overlay is None:
        return image
    if paste_loc is not None:
        x, y, w, h = paste_loc
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(1, image, w, h), (x, y))
        image = base
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")
