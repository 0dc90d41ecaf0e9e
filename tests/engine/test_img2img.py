"""img2img and inpainting on the 64 px demo model: strength, determinism, batches, masks, infotext, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine import images as px
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.img2img import Img2ImgRequest, generate_img2img
from lora_ui.engine.txt2img import RequestError, Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext

PROMPT = "a big red circle on a blue background"


@pytest.fixture(scope="module")
def demo():
    return wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")


@pytest.fixture(scope="module")
def init(demo):
    return generate(demo, Txt2ImgRequest(prompt=PROMPT, seed=5, steps=8, save_images=False)).images[0]


def run(demo, init, **kw):
    base = dict(prompt=PROMPT, seed=7, steps=10, init_images=[init], save_images=False)
    return generate_img2img(demo, Img2ImgRequest(**{**base, **kw}))


def arr(im):
    return np.asarray(im).astype(int)


def test_low_strength_stays_much_closer_to_the_init_than_full_strength(demo, init):
    near = np.abs(arr(run(demo, init, denoising_strength=0.3).images[0]) - arr(init)).mean()
    far = np.abs(arr(run(demo, init, denoising_strength=1.0).images[0]) - arr(init)).mean()
    assert near * 2.5 < far, (near, far)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM", "DPM++ SDE"])
def test_same_seed_twice_is_bit_identical_and_another_seed_differs(demo, init, sampler):
    a = run(demo, init, sampler=sampler, denoising_strength=0.6)
    b = run(demo, init, sampler=sampler, denoising_strength=0.6)
    c = run(demo, init, sampler=sampler, denoising_strength=0.6, seed=8)
    assert np.array_equal(arr(a.images[0]), arr(b.images[0]))
    assert not np.array_equal(arr(a.images[0]), arr(c.images[0]))


def test_a_batch_equals_single_images(demo, init):
    batch = run(demo, init, sampler="Euler a", batch_size=2, denoising_strength=0.7)
    assert batch.seeds == [7, 8]
    for image, seed in zip(batch.images, batch.seeds):
        single = run(demo, init, sampler="Euler a", seed=seed, denoising_strength=0.7)
        assert np.array_equal(arr(image), arr(single.images[0]))


def square_mask(size=64, box=(20, 20, 44, 44)):
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


@pytest.mark.parametrize("full_res", [False, True])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpainting_keeps_the_outside_and_changes_the_inside(demo, init, full_res, fill):
    mask = square_mask()
    out = run(demo, init, prompt="a green square on a yellow background", mask=mask, mask_blur=4,
              inpainting_fill=fill, inpaint_full_res=full_res, denoising_strength=0.9)
    image = arr(out.images[0])
    assert out.images[0].size == init.size
    outside = np.asarray(px.blur_mask(mask, 4, 4)) == 0          # beyond the blurred mask
    assert outside.sum() > 1000
    assert np.abs(image - arr(init))[outside].max() <= 2
    assert np.abs(image - arr(init))[24:40, 24:40].mean() > 20   # the inside was repainted


def test_inpaint_not_masked_inverts(demo, init):
    mask = square_mask()
    out = run(demo, init, prompt="a green square on a yellow background", mask=mask, mask_blur=0,
              inpainting_mask_invert=1, inpaint_full_res=False, inpainting_fill=1, denoising_strength=0.9)
    diff = np.abs(arr(out.images[0]) - arr(init))
    assert diff[20:44, 20:44].max() <= 2 and diff[:8].mean() > 20
    assert parse_infotext(out.infotexts[0])["Mask mode"] == "Inpaint not masked"


def test_infotext_keys_round_trip(demo, init):
    out = run(demo, init, mask=square_mask(), mask_blur=3, inpaint_full_res=True, inpaint_full_res_padding=8,
              inpainting_fill=2, denoising_strength=0.55)
    parsed = parse_infotext(out.infotexts[0])
    assert parsed["Denoising strength"] == 0.55
    assert parsed["Mask blur"] == 3
    assert parsed["Inpaint area"] == "Only masked"
    assert parsed["Masked area padding"] == 8
    assert parsed["Masked content"] == "latent noise"
    assert parsed["Seed"] == 7 and parsed["Size"] == "64x64"
    assert out.infotexts[0].index("Denoising strength") < out.infotexts[0].index("Mask blur")


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_modes_render_the_processing_size(demo, init, mode):
    wide = init.resize((96, 48))
    out = run(demo, wide, resize_mode=mode, denoising_strength=0.4, width=64, height=64)
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize("field,value,needle", [
    ("denoising_strength", 1.5, "denoising_strength"),
    ("resize_mode", 4, "resize_mode"),
    ("inpainting_fill", -1, "inpainting_fill"),
    ("init_images", [], "init_images"),
    ("mask", Image.new("L", (32, 32)), "mask"),
    ("sampler", "UniPC", "denoising_strength"),           # 10 x 0.2 = 2 steps < UniPC's order 3
])
def test_bad_fields_are_refused_by_name(demo, init, field, value, needle):
    kw = {field: value}
    if field == "sampler":
        kw["denoising_strength"] = 0.2
    with pytest.raises(RequestError) as e:
        run(demo, init, **kw)
    assert e.value.field == needle


def test_resize_image_modes_match_a1111_geometry():
    im = Image.new("RGB", (100, 50), (255, 0, 0))
    assert px.resize_image(0, im, 64, 64).size == (64, 64)
    cropped = np.asarray(px.resize_image(1, im, 64, 64))
    assert (cropped[..., 0] > 200).all()                              # filled, no bars
    filled = np.asarray(px.resize_image(2, im, 64, 64))
    assert (filled[..., 0] > 200).all()                               # bars stretched from the edge rows
    assert px.expand_crop_region((10, 10, 20, 40), 64, 64, 64, 64) == (0, 10, 30, 40)
    assert px.crop_region(Image.new("L", (8, 8))) is None


def test_mask_blur_kernel_is_cv2s():
    k = px.gaussian_kernel(4)
    assert len(k) == 2 * int(2.5 * 4 + 0.5) + 1 == 21
    assert abs(k.sum() - 1) < 1e-12 and k.argmax() == 10
    blurred = np.asarray(px.blur_mask(square_mask(), 4, 4)).astype(int)
    assert blurred[32, 32] == 255 and blurred[0, 0] == 0 and 0 < blurred[32, 19] < 255
