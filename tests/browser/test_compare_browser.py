"""Compare tab in a real browser: two different images at the same seed plus a heatmap and the numbers;
a weight sweep gives a grid image (PNG with infotext, downloadable); a sweep list that does not parse
shows a plain warning and the page keeps working."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image
from playwright.sync_api import expect

SEED = 321


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def open_compare(page) -> None:
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare_prompt textarea")).to_be_visible()


def pick_lora(page, name: str) -> None:
    box = page.locator("#compare_lora input")
    box.click()
    box.fill(name)
    box.press("Enter")
    expect(page.locator("#compare_lora")).to_contain_text(name)
    page.locator("#compare_prompt textarea").click()  # close the options list


def fetch_url(page, url: str) -> Image.Image:
    response = page.request.get(url if url.startswith("http") else page.url.rstrip("/") + "/" + url.lstrip("/"))
    assert response.ok, f"could not fetch {url}"
    return Image.open(io.BytesIO(response.body()))


def fetch_image(page, img) -> Image.Image:
    return fetch_url(page, img.get_attribute("src"))


def test_compare_shows_two_different_images_at_one_seed_and_a_heatmap(page, app_server):
    open_compare(page)
    page.locator("#compare_prompt textarea").fill("a lighthouse at dusk")
    pick_lora(page, "inkwash")
    set_number(page, "compare_steps", 2)
    page.locator("#compare_seed input").fill(str(SEED))
    page.locator("#compare_generate").click()

    numbers = page.locator("#compare_numbers")
    expect(numbers).to_contain_text("Mean absolute difference", timeout=120_000)
    expect(numbers).to_contain_text(f"Seed: {SEED}")
    expect(page.locator("#compare_slider img")).to_have_count(2)
    without = fetch_image(page, page.locator("#compare_without img").first).convert("RGB")
    with_lora = fetch_image(page, page.locator("#compare_with img").first).convert("RGB")
    assert without.size == with_lora.size
    assert not np.array_equal(np.asarray(without), np.asarray(with_lora)), "the LoRA changed nothing"
    slider = [fetch_image(page, img).convert("RGB") for img in page.locator("#compare_slider img").all()]
    assert {s.tobytes() for s in slider} == {without.tobytes(), with_lora.tobytes()}
    heatmap = fetch_image(page, page.locator("#compare_heatmap img").first)
    assert heatmap.height >= 256 and heatmap.width > heatmap.height  # the colour scale sits on the right
    # The numbers on the page are those of the two images shown (PNG: pixel-exact).
    diff = np.abs(np.asarray(without, dtype=np.int16) - np.asarray(with_lora, dtype=np.int16))
    expect(numbers).to_contain_text(f"{diff.mean():.2f} / 255")


def test_sweep_gives_a_downloadable_grid_and_a_bad_list_warns(page, app_server):
    open_compare(page)
    page.locator("#compare_prompt textarea").fill("a lighthouse")
    pick_lora(page, "inkwash")
    pick_lora(page, "papercut")
    set_number(page, "compare_steps", 2)
    page.locator("#compare_seed input").fill(str(SEED))

    weights = page.locator("#compare_sweep_weights textarea, #compare_sweep_weights input").first
    weights.fill("0, x")
    page.locator("#compare_sweep_run").click()
    expect(page.get_by_text("No sweep: 'x' (item 2 of the weight list)").first).to_be_visible()

    weights.fill("0, 1")
    page.locator("#compare_sweep_run").click()
    expect(page.locator("#compare_sweep_grid img")).to_be_visible(timeout=120_000)
    grid = fetch_image(page, page.locator("#compare_sweep_grid img").first)
    cell = app_server.ctx.worker.model.default_size
    assert grid.width > 2 * cell and grid.height > 2 * cell  # 2 weights x 2 LoRAs plus labels
    link = page.locator("#compare_sweep_file a").first
    expect(link).to_be_visible()
    download = fetch_url(page, link.get_attribute("href"))
    assert 'X Values: "0, 1"' in download.info.get("parameters", ""), download.info
    expect(page.locator("#compare_sweep_caption")).to_contain_text("3 renders")


def test_inspector_charts_where_the_picked_lora_acts(page, app_server):
    open_compare(page)
    pick_lora(page, "papercut")
    page.locator("#compare_inspector").get_by_text("LoRA inspector").click()
    page.locator("#inspector_run").click()
    summary = page.locator("#inspector_summary")
    expect(summary).to_contain_text("papercut", timeout=60_000)
    expect(summary).to_contain_text("Weight change by part")
    expect(page.locator("#inspector_chart")).to_contain_text("‖ΔW‖")
    # The bars are drawn in the colours of the parts this LoRA touches (down, mid, up blocks).
    page.wait_for_timeout(1500)  # the chart animates its bars in
    chart = np.asarray(Image.open(io.BytesIO(page.locator("#inspector_chart").screenshot(animations="disabled"))).convert("RGB"))
    for colour in ("#0ea5e9", "#22c55e", "#f97316"):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        close = (np.abs(chart.astype(int) - rgb).max(axis=2) <= 12).sum()
        assert close > 50, f"no bar drawn in {colour}"


def test_send_to_compare_puts_the_txt2img_picture_on_the_with_side(page, app_server):
    """txt2img with a LoRA -> "Send to compare" -> Generate comparison: the "with" side is the txt2img image,
    pixel for pixel (prompt, seed, LoRA weight, sampler, schedule, steps, CFG and size all went along)."""
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk <lora:inkwash:0.6>")
    set_number(page, "txt2img_steps", 3)
    set_number(page, "txt2img_cfg_scale", 5.5)
    page.locator("#txt2img_seed input").fill(str(SEED))
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(f"Seed: {SEED}"), timeout=300_000)
    txt2img = fetch_image(page, page.locator("#txt2img_gallery img").first).convert("RGB")
    sampler = page.locator("#txt2img_sampler input").input_value()

    page.locator("#txt2img_send_to_compare").click()
    expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#compare_prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#compare_sampler input")).to_have_value(sampler)
    expect(page.locator("#compare_steps input[type=number]")).to_have_value("3")
    page.locator("#compare_generate").click()
    expect(page.locator("#compare_numbers")).to_contain_text(f"Seed: {SEED}", timeout=300_000)
    with_lora = fetch_image(page, page.locator("#compare_with img").first).convert("RGB")
    assert np.array_equal(np.asarray(with_lora), np.asarray(txt2img))
