"""LoRA browser handlers, called directly (no browser)."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from lora_ui.ui import lora_browser as lb
from ui.fakes import make_ctx


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def cards_in(html_text: str) -> list[str]:
    return re.findall(r"data-lora='([^']*)'", html_text)


def card_html(html_text: str, name: str) -> str:
    """One card's markup, from its opening div to the name line."""
    match = re.search(r"<div class='lora-card[^']*' data-lora='" + re.escape(name) + r"'.*?lora-card-name", html_text)
    assert match, f"no card for {name}"
    return match.group(0)


def test_grid_shows_every_lora_sorted_by_name_with_badges_and_misfit_mark(ctx):
    h = lb.BrowserHandlers(ctx)
    grid = h.grid("", "", "Name", lb.ALL_FOLDERS)
    assert cards_in(grid) == ["loha_thing", "style", "xl_char"]
    # the SDXL LoRA is shown (not hidden) and marked for the loaded SD1 model
    xl_card = card_html(grid, "xl_char")
    assert "misfit" in xl_card and "not for SD1" in xl_card and ">LoKr<" in xl_card and ">SDXL<" in xl_card
    style_card = card_html(grid, "style")
    assert "misfit" not in style_card and ">LoRA<" in style_card and ">SD1<" in style_card
    assert "--card: 160px" in grid  # card size from settings


def test_placeholder_when_no_preview_and_inline_thumbnail_when_there_is_one(ctx, tmp_path):
    preview = tmp_path / "p.png"
    Image.new("RGB", (400, 300), (10, 200, 30)).save(preview)
    ctx.library.entries[0].preview = preview  # style
    grid = lb.BrowserHandlers(ctx).grid("", "", "Name", lb.ALL_FOLDERS)
    srcs = re.findall(r"<img src='([^']*)'", grid)
    assert srcs[1].startswith("data:image/jpeg;base64,")  # style
    assert srcs[0] == lb.PLACEHOLDER_SVG and srcs[2] == lb.PLACEHOLDER_SVG


def test_broken_preview_falls_back_to_placeholder(ctx, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert lb.ThumbnailCache().data_uri(broken) == lb.PLACEHOLDER_SVG
    assert lb.ThumbnailCache().data_uri(tmp_path / "missing.png") == lb.PLACEHOLDER_SVG


def test_search_matches_name_folder_tags_and_description(ctx):
    h = lb.BrowserHandlers(ctx)
    assert cards_in(h.grid("", "paper", "Name", lb.ALL_FOLDERS)) == ["style"]      # training tag
    assert cards_in(h.grid("", "WASH look", "Name", lb.ALL_FOLDERS)) == ["style"]  # description, all words
    assert cards_in(h.grid("", "chars", "Name", lb.ALL_FOLDERS)) == ["xl_char"]    # folder
    assert cards_in(h.grid("", "xlc", "Name", lb.ALL_FOLDERS)) == ["xl_char"]      # alias
    assert cards_in(h.grid("", "nothing-like-this", "Name", lb.ALL_FOLDERS)) == []
    assert "No LoRAs match" in h.grid("", "nothing-like-this", "Name", lb.ALL_FOLDERS)


def test_sort_by_date_and_size_and_folder_filter(ctx):
    h = lb.BrowserHandlers(ctx)
    assert cards_in(h.grid("", "", lb.SORT_OPTIONS[1], lb.ALL_FOLDERS)) == ["xl_char", "loha_thing", "style"]
    assert cards_in(h.grid("", "", lb.SORT_OPTIONS[2], lb.ALL_FOLDERS)) == ["xl_char", "style", "loha_thing"]
    assert cards_in(h.grid("", "", "Name", "chars")) == ["xl_char"]
    assert cards_in(h.grid("", "", "Name", lb.ROOT_FOLDER)) == ["loha_thing", "style"]
    assert lb.folder_choices(ctx.library.entries) == [lb.ALL_FOLDERS, lb.ROOT_FOLDER, "chars"]


def test_unknown_sort_order_is_refused_with_its_name(ctx):
    with pytest.raises(ValueError, match="unknown sort order 'Colour'"):
        lb.filter_and_sort([], "", "Colour", lb.ALL_FOLDERS)


def test_card_click_adds_tag_with_preferred_weight_and_activation_text_then_removes_both(ctx):
    h = lb.BrowserHandlers(ctx)
    prompt, selected = h.card_click("style", "toggle", "a cat")
    assert prompt == "a cat <lora:style:0.8> inkstyle" and selected is None
    grid = h.grid(prompt, "", "Name", lb.ALL_FOLDERS)
    assert "lora-card active" in card_html(grid, "style") and "active" not in card_html(grid, "loha_thing")
    prompt, _ = h.card_click("style", "toggle", prompt)
    assert prompt == "a cat"


def test_card_click_uses_default_weight_when_no_preferred_weight(ctx):
    ctx.settings.default_lora_weight = 0.65
    prompt, _ = lb.BrowserHandlers(ctx).card_click("loha_thing", "toggle", "")
    assert prompt == "<lora:loha_thing:0.65>"


def test_card_click_removes_a_tag_written_with_the_alias(ctx):
    h = lb.BrowserHandlers(ctx)
    with pytest.warns(UserWarning, match="SDXL LoRA; the loaded model is SD1"):
        prompt, _ = h.card_click("xl_char", "toggle", "x <lora:xlc:0.5>")
    assert prompt == "x"


def test_card_click_on_other_arch_warns_but_still_adds(ctx):
    with pytest.warns(UserWarning, match="'xl_char' is a SDXL LoRA"):
        prompt, _ = lb.BrowserHandlers(ctx).card_click("xl_char", "toggle", "")
    assert prompt == "<lora:xl_char:1>"


def test_card_click_on_vanished_lora_warns_and_keeps_prompt(ctx):
    with pytest.warns(UserWarning, match="'gone' is no longer in the library"):
        assert lb.BrowserHandlers(ctx).card_click("gone", "toggle", "a dog") == ("a dog", None)


def test_details_show_file_info_hashes_metadata_table_chips_and_editor(ctx):
    h = lb.BrowserHandlers(ctx)
    prompt, selected = h.card_click("style", "details", "a cat")
    assert (prompt, selected) == ("a cat", "style")
    panel, info, rows, chips, desc, act, weight, neg, version, notes = h.show_details("style")
    assert panel["visible"] is True
    entry = ctx.library.entries[0]
    assert entry.hash12 in info and entry.sha256() in info and str(entry.path) in info and "2.9 KB" in info
    assert ["ss_network_dim", "4"] in rows
    # chips: ink 6, paper 3, wash 2 (summed over datasets, most used first)
    assert re.findall(r"data-tag='([^']*)'>[^<]*<small>(\d+)", chips) == [("ink", "6"), ("paper", "3"), ("wash", "2")]
    assert (desc, act, weight, neg, version, notes) == ("ink wash look", "inkstyle", 0.8, "", "Unknown", "")


def test_details_mark_other_architecture(ctx):
    info = lb.BrowserHandlers(ctx).show_details("xl_char")[1]
    assert "does not fit the loaded SD1 model" in info


def test_chip_click_appends_to_activation_text_once():
    assert lb.add_to_activation_text("inkstyle", "paper") == "inkstyle, paper"
    assert lb.add_to_activation_text("inkstyle, paper", "paper") == "inkstyle, paper"
    assert lb.add_to_activation_text("", "ink") == "ink"


def test_save_user_meta_writes_name_json_keeping_unknown_keys(ctx, capsys):
    h = lb.BrowserHandlers(ctx)
    h.save_meta("style", "new desc", "inkstyle, paper", 0.7, "blurry", "SD1", "my notes")
    entry = ctx.library.entries[0]
    written = json.loads(entry.path.with_suffix(".json").read_text())
    assert written == {"description": "new desc", "activation text": "inkstyle, paper", "preferred weight": 0.7,
                       "negative text": "blurry", "sd version": "SD1", "notes": "my notes", "custom key": "kept"}
    assert "Saved style.json" in capsys.readouterr().out
    assert h.show_details("style")[-1] == "my notes"


@pytest.mark.parametrize("weight, version, message", [
    ("abc", "SD1", "preferred weight 'abc' is not a number"),
    (float("nan"), "SD1", "out of range"),
    (50, "SD1", "out of range"),
    (1, "SD3", "sd version 'SD3' is not one of"),
])
def test_bad_user_meta_is_refused_and_nothing_written(ctx, weight, version, message):
    entry = ctx.library.entries[0]
    before = dict(entry.user_meta)
    with pytest.warns(UserWarning, match=message):
        lb.BrowserHandlers(ctx).save_meta("style", "d", "a", weight, "", version, "n")
    assert not entry.path.with_suffix(".json").exists() and entry.user_meta == before


def test_save_without_selection_warns(ctx):
    with pytest.warns(UserWarning, match="No LoRA selected"):
        lb.BrowserHandlers(ctx).save_meta(None, "d", "a", 1, "", "SD1", "n")


def test_use_last_image_as_preview_writes_name_preview_png_with_infotext(ctx, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    last = tmp_path / "last.png"
    info = PngInfo()
    info.add_text("parameters", "a cat <lora:style:0.8>\nSteps: 4, Seed: 5")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(last, pnginfo=info)
    h = lb.BrowserHandlers(ctx)
    h.use_last_image("style", str(last))
    target = ctx.library.entries[0].path.with_name("style.preview.png")
    with Image.open(target) as image:
        assert image.getpixel((0, 0)) == (1, 2, 3)
        assert image.info["parameters"].startswith("a cat <lora:style:0.8>")
    assert ctx.library.refreshed == 1
    assert "data:image/jpeg;base64," in h.grid("", "style", "Name", lb.ALL_FOLDERS)


def test_use_last_image_without_an_image_warns_and_writes_nothing(ctx):
    with pytest.warns(UserWarning, match="no image generated yet"):
        lb.BrowserHandlers(ctx).use_last_image("style", None)
    assert not ctx.library.entries[0].path.with_name("style.preview.png").exists()


def test_refresh_reports_failure_and_keeps_the_grid(ctx):
    def broken_refresh():
        raise OSError("models/Lora: permission denied")

    ctx.library.refresh = broken_refresh
    with pytest.warns(UserWarning, match="permission denied"):
        grid, folder_update = lb.BrowserHandlers(ctx).refresh("", "", "Name", "chars")
    assert cards_in(grid) == ["xl_char"] and folder_update["value"] == "chars"


def test_names_are_html_escaped(ctx):
    ctx.library.entries[0].name = "it's <b>"
    grid = lb.BrowserHandlers(ctx).grid("", "", "Name", lb.ALL_FOLDERS)
    assert "<b>" not in grid and "it&#x27;s &lt;b&gt;" in grid


def test_typing_in_the_prompt_rerenders_the_grid_only_when_active_loras_change(ctx):
    h = lb.BrowserHandlers(ctx)
    grid, keys = h.grid_on_prompt("a cat", "", "Name", lb.ALL_FOLDERS, None)
    assert cards_in(grid) == ["loha_thing", "style", "xl_char"] and keys == []
    assert h.grid_on_prompt("a cat, night", "", "Name", lb.ALL_FOLDERS, keys) == ({"__type__": "update"}, [])
    grid, keys = h.grid_on_prompt("a cat <lora:style:0.3>", "", "Name", lb.ALL_FOLDERS, keys)
    assert keys == ["style"] and "lora-card active" in card_html(grid, "style")
    assert h.grid_on_prompt("a cat <lora:style:0.9>", "", "Name", lb.ALL_FOLDERS, keys)[0] == {"__type__": "update"}
