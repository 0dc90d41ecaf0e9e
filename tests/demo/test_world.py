"""The synthetic world: rendering, captions, and the classifier that reads it back."""
import math
import re

import numpy as np
import pytest

from lora_ui.demo import world
from lora_ui.demo.classify import classify, nearest_colour


def test_vocabulary_covers_the_issue():
    for c in ("red", "green", "blue", "yellow", "white", "black", "orange", "purple"):
        assert c in world.COLOURS
    assert set(world.SHAPES) == {"circle", "square", "triangle"}
    assert set(world.SIZES) == {"small", "big"}


def test_scenes_never_use_the_shape_colour_as_background():
    rng = np.random.default_rng(1)
    scenes = [world.random_scene(rng) for _ in range(500)]
    assert all(s.colour != s.background for s in scenes)
    assert {s.background for s in scenes} == set(world.COLOURS)
    for s in scenes:  # shape fully inside the image
        assert s.extent / 2 < s.cx < 1 - s.extent / 2 and s.extent / 2 < s.cy < 1 - s.extent / 2


def test_captions_use_only_the_vocabulary_and_name_the_scene():
    rng = np.random.default_rng(2)
    words = set(world.VOCABULARY)
    for _ in range(300):
        sc = world.random_scene(rng)
        cap = world.caption(sc, rng)
        tokens = re.findall(r"[a-z]+", cap)
        assert set(tokens) <= words, cap
        assert sc.colour in tokens and sc.shape in tokens and sc.background in tokens
        assert cap.index(sc.colour) < cap.index(sc.shape)
    sc = world.Scene("red", "circle", "big", "blue", 0.5, 0.5, 0.6)
    assert world.canonical_caption(sc) == "a big red circle on a blue background"


def test_render_pixels_match_the_scene():
    sc = world.Scene("red", "square", "big", "blue", 0.5, 0.5, 0.5)
    img = world.render(sc, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[32, 32]) == world.PALETTE["red"]
    assert tuple(img[2, 2]) == world.PALETTE["blue"]
    # square side 0.5 * 64 = 32 px: exactly a quarter of the pixels are red
    red = np.all(img == world.PALETTE["red"], axis=-1).sum()
    assert abs(red - 32 * 32) <= 64 + 1  # one-pixel anti-aliased rim at most


@pytest.mark.parametrize("shape,expected_fill", [("circle", math.pi / 4), ("triangle", 0.5), ("square", 1.0)])
def test_shape_areas_follow_geometry(shape, expected_fill):
    sc = world.Scene("white", shape, "big", "black", 0.5, 0.5, 0.6)
    img = world.render(sc, 64).astype(np.float32)
    coverage = (img.mean(axis=-1) - 15) / (245 - 15)  # 0..1 per pixel (black 15 -> white 245)
    side = 0.6 * 64
    assert coverage.sum() / side ** 2 == pytest.approx(expected_fill, abs=0.03)


def test_nearest_colour():
    assert nearest_colour((200, 40, 40)) == "red"
    assert nearest_colour((250, 150, 30)) == "orange"
    assert nearest_colour((20, 20, 20)) == "black"


def test_classifier_reads_the_worlds_own_images():
    rng = np.random.default_rng(3)
    n, hits = 200, np.zeros(3)
    for _ in range(n):
        sc = world.random_scene(rng)
        lab = classify(world.render(sc, 64))
        hits += (lab.colour == sc.colour, lab.background == sc.background, lab.shape == sc.shape)
    assert (hits / n >= 0.99).all(), hits / n


def test_classifier_handles_empty_and_bad_images():
    plain = np.full((64, 64, 3), world.PALETTE["green"], dtype=np.uint8)
    lab = classify(plain)
    assert lab.background == "green" and lab.shape == "none"
    with pytest.raises(ValueError, match="RGB image"):
        classify(np.zeros((64, 64), dtype=np.uint8))


def test_evaluation_scenes_and_scoring():
    from lora_ui.demo.evaluate import eval_scenes, score

    scenes = eval_scenes()
    assert {s.colour for s in scenes} == set(world.COLOURS) and {s.shape for s in scenes} == set(world.SHAPES)
    assert {s.size for s in scenes} == set(world.SIZES) and all(s.colour != s.background for s in scenes)
    images = np.stack([world.render(s, 64) for s in scenes] * 2)  # two "seeds"
    assert score(images, scenes) == {"colour": 1.0, "background": 1.0, "shape": 1.0, "all": 1.0}
    # the same images against scenes shifted by one: the colour is wrong for every image
    shifted = scenes[1:] + scenes[:1]
    assert score(images, shifted)["colour"] == 0.0
