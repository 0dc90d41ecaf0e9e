"""Page helpers shared by the browser tests."""
from __future__ import annotations

from playwright.sync_api import expect

PROMPT = "#txt2img_prompt textarea"


def open_page(browser, url: str, width: int, height: int):
    """(context, page): a fresh browser context at width x height with the app loaded; close the context."""
    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector(PROMPT)
    except BaseException:
        context.close()
        raise
    return context, page


def box_in_viewport(page, selector: str, width: int, height: int) -> dict:
    """The bounding box of `selector`'s first element; fails unless it lies inside the width x height viewport."""
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    inside = box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height
    assert inside, f"{selector} at {box} is not inside the {width}x{height} viewport"
    return box
