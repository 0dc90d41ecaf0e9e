"""Issue 15 "Layout": at the two common window sizes the prompt, Generate, the main settings (sampler,
steps) and, after Generate, the output image are all inside the viewport with the page never scrolled."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import box_in_viewport, open_page

VIEWPORTS = [(1366, 768), (1920, 1080)]
IN_VIEW = {"prompt": "#txt2img_prompt textarea", "generate": "#txt2img_generate",
           "sampler": "#txt2img_sampler", "steps": "#txt2img_steps"}


@pytest.mark.parametrize("width,height", VIEWPORTS, ids=[f"{w}x{h}" for w, h in VIEWPORTS])
def test_prompt_generate_settings_and_output_image_fit_without_scrolling(browser, app_server, width, height):
    context, page = open_page(browser, app_server.url, width, height)
    try:
        page.locator("#txt2img_prompt textarea").fill("a red house")
        steps = page.locator("#txt2img_steps input[type=number]")
        steps.fill("2")
        steps.press("Tab")
        page.evaluate("window.scrollTo(0, 0)")
        for selector in IN_VIEW.values():
            box_in_viewport(page, selector, width, height)

        page.locator("#txt2img_generate").click()  # in view: Playwright does not need to scroll
        image = page.locator("#txt2img_gallery img").first
        expect(image).to_be_visible(timeout=300_000)
        expect(page.locator("#txt2img_infotext textarea")).not_to_have_value("", timeout=300_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        assert page.evaluate("window.scrollY") == 0, "the page scrolled on the way to the image"
        box = box_in_viewport(page, "#txt2img_gallery img", width, height)
        assert box["width"] >= 64 and box["height"] >= 64, f"the output image is only {box}"
        for selector in IN_VIEW.values():  # the result did not push the settings away
            box_in_viewport(page, selector, width, height)
    finally:
        context.close()
