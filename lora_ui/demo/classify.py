"""A simple classifier for images of the synthetic world (numpy only).

Background colour: the palette colour nearest the median of the border pixels.
Shape colour: the palette colour nearest the median of the pixels that differ from the background.
Shape: how much of its bounding box the shape fills (square ~1.0, circle ~pi/4, triangle ~0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import PALETTE

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)  # (8, 3)
# Fill-ratio thresholds halfway between the ideal shapes: triangle 0.5 | circle 0.785 | square 1.0.
TRIANGLE_MAX_FILL = 0.64
CIRCLE_MAX_FILL = 0.89


@dataclass(frozen=True)
class Label:
    colour: str
    background: str
    shape: str
    fill: float  # shape pixels / bounding-box pixels
    area: float  # shape pixels / image pixels


def nearest_colour(rgb: np.ndarray) -> str:
    """(3,) RGB in 0..255 -> name of the nearest palette colour (Euclidean)."""
    d = ((_COLOURS - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(axis=1)
    return _NAMES[int(d.argmin())]


def classify(image: np.ndarray) -> Label:
    """uint8 (h, w, 3) -> Label. An image with no visible shape gets shape "none"."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {img.shape}")
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4w, 3)
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    dist_bg = np.sqrt(((img - bg_rgb) ** 2).sum(axis=2))  # (h, w)
    rough = dist_bg > 60
    if rough.sum() < 4:
        return Label("none", background, "none", 0.0, 0.0)
    shape_rgb = np.median(img[rough], axis=0)
    colour = nearest_colour(shape_rgb)
    # Final mask: pixels closer to the shape's colour than to the background's (half-coverage edge).
    dist_shape = np.sqrt(((img - shape_rgb) ** 2).sum(axis=2))
    mask = dist_shape < dist_bg
    # Bounding box from rows/columns holding at least 2 shape pixels (ignores isolated specks).
    rows = np.where(mask.sum(axis=1) >= 2)[0]
    cols = np.where(mask.sum(axis=0) >= 2)[0]
    if len(rows) == 0 or len(cols) == 0:
        return Label(colour, background, "none", 0.0, float(mask.mean()))
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    fill = float(box.mean())
    shape = "triangle" if fill < TRIANGLE_MAX_FILL else "circle" if fill < CIRCLE_MAX_FILL else "square"
    return Label(colour, background, shape, fill, float(mask.mean()))
