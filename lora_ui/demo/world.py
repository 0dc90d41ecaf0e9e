"""The synthetic world the demo model is trained on: one plain shape on a plain background.

A scene is a coloured circle, square or triangle (axis-aligned, upright), small or big, on a
background of another palette colour. Images are rendered procedurally at 4x and box-downsampled,
so edges are anti-aliased like a real photo of a drawing. No torch here: numpy + PIL only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
# Shape extent as a fraction of the image side, per size word.
SIZE_FRACTION: dict[str, tuple[float, float]] = {"small": (0.30, 0.38), "big": (0.55, 0.68)}
# Every word any caption uses: the model card lists it, tests check captions stay inside it.
VOCABULARY: tuple[str, ...] = COLOURS + SHAPES + SIZES + ("large", "little", "a", "on", "background")


@dataclass(frozen=True)
class Scene:
    """One image of the world. cx, cy, extent are fractions of the image side (0..1)."""

    colour: str
    shape: str
    size: str
    background: str
    cx: float
    cy: float
    extent: float


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly drawn scene; the background is always a different colour from the shape."""
    colour = COLOURS[rng.integers(len(COLOURS))]
    others = [c for c in COLOURS if c != colour]
    background = others[rng.integers(len(others))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = SIZES[rng.integers(len(SIZES))]
    lo, hi = SIZE_FRACTION[size]
    extent = float(rng.uniform(lo, hi))
    margin = extent / 2 + 0.04
    cx = float(rng.uniform(margin, 1 - margin))
    cy = float(rng.uniform(margin, 1 - margin))
    return Scene(colour, shape, size, background, cx, cy, extent)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Render a scene -> uint8 array (size, size, 3)."""
    s = 4 * size  # supersampled canvas
    img = Image.new("RGB", (s, s), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    half = scene.extent * s / 2
    x0, y0 = scene.cx * s - half, scene.cy * s - half
    x1, y1 = scene.cx * s + half, scene.cy * s + half
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif scene.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(scene.cx * s, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.uint8)


def canonical_caption(scene: Scene) -> str:
    """The fixed caption form used by evaluation prompts: "a big red circle on a blue background"."""
    return f"a {scene.size} {scene.colour} {scene.shape} on a {scene.background} background"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption with variations (size synonyms or omitted, different phrasing)."""
    size_word = {"small": ("small", "small", "little", ""), "big": ("big", "big", "large", "")}[scene.size]
    size = size_word[rng.integers(len(size_word))]
    noun = f"{size} {scene.colour} {scene.shape}".strip()
    form = rng.integers(4)
    if form == 0:
        return f"a {noun} on a {scene.background} background"
    if form == 1:
        return f"{noun} on {scene.background} background"
    if form == 2:
        return f"a {noun}, {scene.background} background"
    return f"{scene.background} background, a {noun}"


def render_batch(rng: np.random.Generator, n: int, size: int = 64) -> tuple[np.ndarray, list[Scene], list[str]]:
    """n random scenes -> (uint8 images (n, size, size, 3), scenes, captions)."""
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render(sc, size) for sc in scenes])
    captions = [caption(sc, rng) for sc in scenes]
    return images, scenes, captions
