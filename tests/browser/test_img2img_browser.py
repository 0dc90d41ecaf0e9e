"""The img2img tab and hires fix in a real browser: upload an init image and a mask (or draw the mask with
the mouse on the editor's canvas), inpaint, get an image that keeps the outside and repaints the inside;
txt2img with hires fix gives an image of the upscaled size (the gallery image's natural size)."""
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
    upload_to_editor(page, tmp_path / "init.png")  # waits for the canvas: an early upload is dropped
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


ZOOM_JS = "() => parseFloat(document.querySelector('#img2img_editor .zoom-number')?.innerText) || 0"


def upload_to_editor(page, path) -> float:
    """Put the init image in the ImageEditor once its canvas is ready; -> the canvas zoom (screen px per
    image px) once the image is shown (the empty canvas shows 37%, a 64 px image fitted ~466%)."""
    page.locator("#img2img_editor canvas").first.wait_for(state="visible")
    page.wait_for_function(f"({ZOOM_JS})() > 0")
    page.locator("#img2img_editor input[type=file]").first.set_input_files(str(path))
    page.wait_for_function(f"({ZOOM_JS})() > 100")
    return page.evaluate(ZOOM_JS) / 100


def draw_stroke(page, zoom: float, start: tuple[int, int], end: tuple[int, int], brush_size: int) -> None:
    """A mouse stroke from `start` to `end` (image pixels) with the Brush tool at `brush_size`: the image
    is centred in the canvas, `zoom` screen px per image px."""
    toolbar = page.locator("#img2img_editor .toolbar-wrap")
    toolbar.locator("button[aria-label='Brush Size']").click()
    page.locator("#img2img_editor input[type=range]").fill(str(brush_size))
    toolbar.locator("button[aria-label='Brush']").click()
    box = page.locator("#img2img_editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def screen(p):
        return cx + (p[0] - SIZE / 2) * zoom, cy + (p[1] - SIZE / 2) * zoom

    page.mouse.move(*screen(start))
    page.mouse.down()
    page.mouse.move(*screen(end), steps=12)
    page.mouse.up()


def distance_to_segment(a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
    """(SIZE, SIZE) distance of each pixel centre to the segment a-b (image pixels)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    (ax, ay), (bx, by) = a, b
    t = np.clip(((xx - ax) * (bx - ax) + (yy - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(xx - (ax + t * (bx - ax)), yy - (ay + t * (by - ay)))


def test_img2img_inpaint_a_mask_drawn_with_the_mouse(page, tmp_path):
    # init: a smooth colour gradient; mask: one horizontal brush stroke across the middle (mask blur 4)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    init = np.stack([xx * 4, yy * 4, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    Image.fromarray(init).save(tmp_path / "init.png")
    start, end = (20, 32), (44, 32)

    page.get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#img2img_prompt textarea").fill("a big red circle on a blue background")
    zoom = upload_to_editor(page, tmp_path / "init.png")
    draw_stroke(page, zoom, start, end, brush_size=8)
    set_number(page, "img2img_steps", 4)
    set_number(page, "img2img_denoising_strength", 1)
    page.locator("#img2img_seed input").fill("17")
    page.locator("#img2img_generate").click()

    natural, out = gallery_image(page, "#img2img_gallery img")
    assert natural == (SIZE, SIZE)
    diff = np.abs(np.asarray(out).astype(int) - init.astype(int)).max(axis=2)
    distance = distance_to_segment(start, end)
    under, far = distance <= 2, distance > 22   # far: beyond the brush radius + the blur's 10 px reach
    assert far.sum() > 1000
    assert diff[far].max() <= 2                 # away from the stroke: the init image
    assert diff[under].mean() > 30              # under the stroke: repainted
    expect(page.locator("#img2img_infotext textarea")).to_have_value(re.compile(re.escape("Mask blur: 4")))


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
    upload_to_editor(page, tmp_path / "init.png")  # waits for the canvas: an early upload is dropped
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
