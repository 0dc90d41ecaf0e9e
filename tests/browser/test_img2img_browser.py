"""The img2img tab and hires fix in a real browser: upload an init image and a mask, inpaint, get an
image that keeps the outside and repaints the inside; txt2img with hires fix gives an image of the
upscaled size (the gallery image's natural size)."""
from __future__ import annotations

import io
import re
from urllib.parse import urljoin

import numpy as np
from PIL import Image
from playwright.sync_api import expect

SIZE = 64   # the demo model's native size


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def open_accordion(page, elem_id: str, title: str) -> None:
    page.locator(f"#{elem_id}").get_by_text(title, exact=True).first.click()


def gallery_image(page, selector: str) -> tuple[tuple[int, int], Image.Image]:
    """(natural size in the page, the image file it shows) of the first image of a gallery."""
    img = page.locator(selector).first
    expect(img).to_be_visible(timeout=300_000)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    natural = tuple(img.evaluate("el => [el.naturalWidth, el.naturalHeight]"))
    data = page.request.get(urljoin(page.url, img.get_attribute("src"))).body()
    return natural, Image.open(io.BytesIO(data)).convert("RGB")


def test_img2img_inpaint_keeps_the_outside_and_repaints_the_masked_square(page, tmp_path):
    # init: a fine red/green checkerboard (nothing the model would paint back); mask: the centre square
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    checker = ((yy // 2 + xx // 2) % 2).astype(bool)
    init = np.zeros((SIZE, SIZE, 3), np.uint8)
    init[checker] = (220, 30, 30)
    init[~checker] = (30, 200, 40)
    Image.fromarray(init).save(tmp_path / "init.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")

    page.get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_prompt textarea").fill("a big red circle on a blue background")
    page.locator("#img2img_editor input[type=file]").first.set_input_files(str(tmp_path / "init.png"))
    expect(page.locator("#img2img_editor canvas").first).to_be_visible()
    open_accordion(page, "img2img_inpaint", "Inpaint")
    page.locator("#img2img_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    expect(page.locator("#img2img_mask img").first).to_be_visible()
    set_number(page, "img2img_mask_blur", 0)
    set_number(page, "img2img_steps", 4)
    set_number(page, "img2img_denoising_strength", 1)
    page.locator("#img2img_seed input").fill("17")
    page.locator("#img2img_generate").click()

    natural, out = gallery_image(page, "#img2img_gallery img")
    assert natural == (SIZE, SIZE) and out.size == (SIZE, SIZE)
    got = np.asarray(out).astype(int)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[16:48, 16:48] = True
    outside = np.ones((SIZE, SIZE), bool)
    outside[14:50, 14:50] = False  # a 2 px margin around the mask's edge
    assert np.abs(got[outside] - init[outside]).max() <= 3          # the outside is the init image
    assert np.abs(got[inside] - init[inside]).mean() > 30           # the square was repainted
    infotext = page.locator("#img2img_infotext textarea")
    expect(infotext).to_have_value(re.compile(re.escape("Denoising strength: 1")))
    expect(infotext).to_have_value(re.compile(re.escape("Seed: 17")))


def test_hires_fix_from_txt2img_gives_an_image_of_the_upscaled_size(page, app_server):
    native = app_server.ctx.worker.model.default_size
    assert native == SIZE
    page.locator("#txt2img_prompt textarea").fill("a small blue square on a yellow background")
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("5")
    open_accordion(page, "txt2img_hires_fix", "Hires. fix")
    page.locator("#txt2img_enable_hr input[type=checkbox]").check()
    set_number(page, "txt2img_hires_steps", 2)
    set_number(page, "txt2img_hr_scale", 2)
    page.locator("#txt2img_generate").click()
    natural, image = gallery_image(page, "#txt2img_gallery img")
    assert natural == (2 * native, 2 * native) and image.size == (2 * native, 2 * native)
    infotext = page.locator("#txt2img_infotext textarea")
    expect(infotext).to_have_value(re.compile(re.escape("Hires upscale: 2")))
    expect(infotext).to_have_value(re.compile(re.escape(f"Size: {native}x{native}")))


def test_img2img_compare_with_and_without_lora_and_the_strength_x_weight_grid(page, tmp_path):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    init = np.zeros((SIZE, SIZE, 3), np.uint8)
    init[(xx - 32) ** 2 + (yy - 32) ** 2 < 300] = (220, 30, 30)
    init[(xx - 32) ** 2 + (yy - 32) ** 2 >= 300] = (30, 40, 200)
    Image.fromarray(init).save(tmp_path / "init.png")
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_prompt textarea").fill("a big red circle on a blue background <lora:inkwash:1>")
    page.locator("#img2img_editor input[type=file]").first.set_input_files(str(tmp_path / "init.png"))
    expect(page.locator("#img2img_editor canvas").first).to_be_visible()
    set_number(page, "img2img_steps", 4)
    page.locator("#img2img_seed input").fill("23")
    open_accordion(page, "img2img_compare_panel", "Compare with / without LoRA")
    page.locator("#img2img_compare").click()
    info = page.locator("#img2img_compare_info textarea")
    expect(info).to_have_value(re.compile(r"^Seed: 23 "), timeout=300_000)
    expect(info).to_have_value(re.compile(r"With: .*<lora:inkwash:1>.*Denoising strength: 0\.75", re.S))
    _, without = gallery_image(page, "#img2img_compare_without img")
    _, with_lora = gallery_image(page, "#img2img_compare_with img")
    assert without.size == with_lora.size == (SIZE, SIZE)
    assert np.abs(np.asarray(with_lora).astype(int) - np.asarray(without).astype(int)).mean() > 3

    page.locator("#img2img_grid_strengths textarea, #img2img_grid_strengths input").first.fill("0.5, 1")
    page.locator("#img2img_grid_weights textarea, #img2img_grid_weights input").first.fill("0, 1")
    page.locator("#img2img_grid_run").click()
    text = page.locator("#img2img_grid_infotext textarea")
    expect(text).to_have_value(re.compile(r"X Type: LoRA weight, X Values: \"?0, 1\"?, Y Type: Denoising, "
                                          r"Y Values: \"?0\.5, 1\"?"), timeout=300_000)
    natural, grid = gallery_image(page, "#img2img_grid img")
    assert natural[0] >= 2 * SIZE and natural[1] >= 2 * SIZE  # 2 x 2 cells plus their labels
