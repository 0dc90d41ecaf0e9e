"""README screenshots of each tab, taken from the running app in headless Chromium.

    .venv/bin/python scripts/screenshots.py                 # starts the app itself (lora_ui.ui.devserver)
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:7860/   # an app you started

Writes docs/screenshots/{txt2img,lora_details,compare,pnginfo,settings}.png. On the self-started app the
txt2img shot shows a LoRA added from its card, its slider moved and a generated image; the compare
shot a with/without render; PNG Info the parameters of that image.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
RENDER_TIMEOUT_MS = 300_000


def shoot(page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def take(url: str, out: Path, steps: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("#txt2img_prompt textarea")

        # txt2img: a LoRA from its card, slider moved, one image rendered
        page.locator("#txt2img_prompt textarea").fill("a big yellow circle on a blue background")
        # the LoRA cards live in the Extra networks accordion, closed by default (A1111)
        page.locator("#lora_browser").get_by_text("Extra networks (LoRA, Textual Inversion)").click()
        expect(page.locator("#lora_cards")).to_be_visible()
        cards = page.locator("#lora_cards .lora-card:not(.misfit)")
        if cards.count():
            cards.first.click()
            expect(page.locator("#active_lora_0_weight")).to_be_visible()
            set_number(page, "active_lora_0_weight", 0.75)
            expect(page.locator("#txt2img_prompt textarea")).to_have_value(re.compile(r":0\.75>"))
        set_number(page, "txt2img_steps", steps)
        page.locator("#txt2img_seed input").fill("1234")
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_infotext textarea")).not_to_have_value("", timeout=RENDER_TIMEOUT_MS)
        shoot(page, out, "txt2img")

        # details panel of the first card
        if cards.count():
            cards.first.locator(".lora-card-info").click()
            expect(page.locator("#lora_details")).to_be_visible()
            page.locator("#lora_details").scroll_into_view_if_needed()
            shoot(page, out, "lora_details")

        # compare: sent from txt2img, rendered with and without
        if cards.count():
            page.locator("#txt2img_send_to_compare").click()
        else:
            page.get_by_role("tab", name="Compare").click()
        expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
        page.wait_for_selector("#compare_generate, #tab_compare .prose", state="attached")
        if page.locator("#compare_generate").count():
            expect(page.locator("#compare_prompt textarea")).not_to_have_value("")
            if page.locator("#compare_steps").count():
                set_number(page, "compare_steps", steps)
                expect(page.locator("#compare_steps input[type=number]").first).to_have_value(str(steps))
            page.locator("#compare_generate").click()
            expect(page.locator("#compare_slider img")).to_have_count(2, timeout=RENDER_TIMEOUT_MS)
            expect(page.locator("#compare_heatmap img").first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        shoot(page, out, "compare")

        # PNG Info: the image rendered above, dropped in as a user would
        page.get_by_role("tab", name="txt2img").click()
        src = page.locator("#txt2img_gallery img").first.get_attribute("src") or ""
        response = page.request.get(src if src.startswith("http") else url.rstrip("/") + "/" + src.lstrip("/"))
        page.get_by_role("tab", name="PNG Info").click()
        if response.ok:
            with tempfile.TemporaryDirectory() as tmp:
                image = Path(tmp) / "generated.png"
                image.write_bytes(response.body())
                page.locator("#pnginfo_image input[type=file]").set_input_files(str(image))
                expect(page.locator("#pnginfo_infotext textarea")).not_to_have_value("")
        shoot(page, out, "pnginfo")

        page.get_by_role("tab", name="Settings").click()
        shoot(page, out, "settings")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app; default: start one here")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps for the example renders")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    if args.url:
        take(args.url, args.out, args.steps)
        return 0
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from lora_ui.ui.devserver import build_dev_context, launch

    with tempfile.TemporaryDirectory(prefix="lora-ui-shots-") as tmp:
        ctx = build_dev_context(Path(tmp))
        demo, url = launch(ctx)
        try:
            take(url, args.out, args.steps)
        finally:
            demo.close()
            ctx.worker.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
