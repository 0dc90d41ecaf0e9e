"""Issue 15 "Layout": at the two common window sizes the prompt, Generate, the main settings (sampler,
steps) and, after Generate, the output image are all inside the viewport with the page never scrolled."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

VIEWPORTS = [(1366, 768), (1920, 1080)]
IN_VIEW = {"prompt": "#txt2img_prompt textarea", "generate": "#txt2img_generate",
           "sampler": "#txt2img_sampler", "steps": "#txt2img_steps"}


def _box_in_viewport(page, selector: str, width: int, height: int) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    inside = box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height
    assert inside, f"{selector} at {box} is not inside the {width}x{height} viewport"
    return box


@pytest.mark.parametrize("width,height", VIEWPORTS, ids=[f"{w}x{h}" for w, h in VIEWPORTS])
def test_prompt_generate_settings_and_output_image_fit_without_scrolling(browser, app_server, width, height):
    from playwright.sync_api import expect as _expect

    _expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server.url)
        page.wait_for_selector("#txt2img_prompt textarea")
        page.locator("#txt2img_prompt textarea").fill("a red house")
        steps = page.locator("#txt2img_steps input[type=number]")
        steps.fill("2")
        steps.press("Tab")
        page.evaluate("window.scrollTo(0, 0)")
        for selector in IN_VIEW.values():
            _box_in_viewport(page, selector, width, height)

        page.locator("#txt2img_generate").click()  # in view: Playwright does not need to scroll
        image = page.locator("#txt2img_gallery img").first
        expect(image).to_be_visible(timeout=300_000)
        expect(page.locator("#txt2img_infotext textarea")).not_to_have_value("", timeout=300_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        assert page.evaluate("window.scrollY") == 0, "the page scrolled on the way to the image"
        box = _box_in_viewport(page, "#txt2img_gallery img", width, height)
        assert box["width"] >= 64 and box["height"] >= 64, f"the output image is only {box}"
        for selector in IN_VIEW.values():  # the result did not push the settings away
            _box_in_viewport(page, selector, width, height)
    finally:
        context.close()
