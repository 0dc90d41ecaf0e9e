"""The main journeys of issue 6 in a real browser: card -> tag + slider -> Generate -> infotext with the
LoRA and its hash; notes survive a reload and land in name.json; PNG Info round trip restores the slider."""
from __future__ import annotations

import json
import re

from playwright.sync_api import expect

PROMPT = "#txt2img_prompt textarea"


def set_slider(page, elem_id: str, value: float) -> None:
    """Type into the slider's number box and leave it: gradio fires `release` on blur."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def open_extra_networks(page) -> None:
    """The LoRA cards live in the Extra networks accordion under the prompt, closed by default (A1111)."""
    cards = page.locator("#lora_cards")
    expect(cards).to_be_hidden()
    page.locator("#lora_browser").get_by_text("Extra networks (LoRA, Textual Inversion)").click()
    expect(cards).to_be_visible()


def quick_settings(page) -> None:
    set_slider(page, "txt2img_steps", 2)
    page.locator("#txt2img_seed input").fill("321")


def generate_and_wait(page):
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=300_000)
    expect(page.locator("#txt2img_infotext textarea")).not_to_have_value("", timeout=300_000)
    return page.locator("#txt2img_infotext textarea").input_value()


def test_card_click_adds_tag_and_slider_then_generate_writes_lora_and_hash(page, app_server):
    open_extra_networks(page)
    card = page.locator("#lora_cards .lora-card[data-lora='inkwash']")
    expect(card).to_be_visible()
    card.click()
    expect(page.locator(PROMPT)).to_have_value("<lora:inkwash:1>")
    expect(page.locator("#active_lora_0_weight")).to_be_visible()
    expect(page.locator("#active_lora_0_weight input[type=number]")).to_have_value("1")
    expect(card).to_have_class(re.compile(r"\bactive\b"))

    set_slider(page, "active_lora_0_weight", 0.55)  # slider -> tag
    expect(page.locator(PROMPT)).to_have_value("<lora:inkwash:0.55>")

    page.locator(PROMPT).fill("a house <lora:inkwash:0.3>")  # tag -> slider
    expect(page.locator("#active_lora_0_weight input[type=number]")).to_have_value("0.3")

    quick_settings(page)
    infotext = generate_and_wait(page)
    entry = app_server.ctx.library.resolve("inkwash")
    assert "<lora:inkwash:0.3>" in infotext
    assert re.search(r'Lora hashes: "?inkwash: ' + entry.short_hash(), infotext), infotext

    card.click()  # clicking again removes the tag and the row
    expect(page.locator(PROMPT)).to_have_value("a house")
    expect(page.locator("#active_lora_0_weight")).to_be_hidden()


def test_notes_edit_survives_reload_and_is_written_to_name_json(page, app_server):
    open_extra_networks(page)
    page.locator("#lora_cards .lora-card[data-lora='papercut'] .lora-card-info").click()
    expect(page.locator("#lora_details")).to_be_visible()
    expect(page.locator("#lora_details_info")).to_contain_text("papercut")
    page.locator("#lora_meta_notes textarea").fill("cut paper look, try 0.6")
    page.locator("#lora_meta_save").click()
    expect(page.get_by_text("Saved papercut.json").first).to_be_visible()  # the save event has finished
    sidecar = app_server.lora_dir / "papercut.json"
    assert json.loads(sidecar.read_text())["notes"] == "cut paper look, try 0.6"

    page.reload()
    open_extra_networks(page)
    page.locator("#lora_cards .lora-card[data-lora='papercut'] .lora-card-info").click()
    expect(page.locator("#lora_meta_notes textarea")).to_have_value("cut paper look, try 0.6")


def test_png_info_round_trip_restores_prompt_slider_and_settings(page, app_server, tmp_path):
    page.locator(PROMPT).fill("a boat <lora:inkwash:0.35>")
    quick_settings(page)
    infotext = generate_and_wait(page)
    image_path = app_server.ctx.worker.outputs_dir
    saved = sorted(image_path.rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]

    page.locator(PROMPT).fill("something else")
    expect(page.locator("#active_lora_0_weight")).to_be_hidden()
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    expect(page.locator("#pnginfo_infotext textarea")).to_have_value(infotext)
    page.locator("#pnginfo_send_to_txt2img").click()

    expect(page.locator(PROMPT)).to_have_value("a boat <lora:inkwash:0.35>")
    expect(page.locator("#active_lora_0_weight input[type=number]")).to_have_value("0.35")
    expect(page.locator("#txt2img_steps input[type=number]")).to_have_value("2")
    expect(page.locator("#txt2img_seed input")).to_have_value("321")


def test_unknown_lora_gives_a_visible_warning_and_the_app_keeps_working(page):
    page.locator(PROMPT).fill("a tree <lora:does_not_exist:1>")
    expect(page.locator("#active_lora_0_name")).to_contain_text("not in the LoRA library")
    quick_settings(page)
    generate_and_wait(page)
    expect(page.get_by_text(re.compile("does_not_exist")).first).to_be_visible()
