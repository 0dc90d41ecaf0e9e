"""build_ui assembly, txt2img -> compare values, and the browser handlers over the real LoraLibrary."""
from __future__ import annotations

import collections
import json
import re
from types import SimpleNamespace

import pytest

from lora_ui.library import LoraLibrary
from lora_ui.library.synthetic import kohya_metadata, network_tensors, sd1_modules, sdxl_modules, write_lora
from lora_ui.ui import build_ui
from lora_ui.ui import core_access as core
from lora_ui.ui import lora_browser as lb
from lora_ui.ui.app import compare_values
from ui.fakes import FakeModels, FakeSettings, FakeWorker, make_ctx


def test_build_ui_has_every_tab_and_unique_element_ids(tmp_path):
    import gradio as gr

    demo = build_ui(make_ctx(tmp_path))
    assert isinstance(demo, gr.Blocks)
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    duplicated = [k for k, n in collections.Counter(ids).items() if n > 1]
    assert duplicated == []
    for wanted in ("txt2img_prompt", "txt2img_generate", "lora_cards", "active_lora_0_weight", "pnginfo_image",
                   "settings_apply", "tab_compare", "lora_meta_notes"):
        assert wanted in ids


def test_core_never_imports_gradio():
    import subprocess
    import sys

    code = ("import sys, lora_ui.prompt, lora_ui.infotext, lora_ui.library, lora_ui.engine.worker;"
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compare_values_strip_tags_and_pick_loras_seed_and_weight(tmp_path):
    ctx = make_ctx(tmp_path)
    values = compare_values("a cat <lora:xlc:0.6>, night <lora:style:1>", "ugly", 5, [99], ctx, True)
    assert values == ("a cat , night", "ugly", 99, ["xl_char", "style"], 0.6)
    single = compare_values("a cat <lora:style:0.4>", "", 5, [], ctx, False)
    assert single == ("a cat", "", 5, "style", 0.4)


def test_compare_values_without_a_lora_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no <lora:...> tag"):
        compare_values("just a cat", "", -1, [], make_ctx(tmp_path), True)


@pytest.mark.parametrize("raw, expected", [
    ("SDXL", "sdxl"), ("sdxl", "sdxl"), ("SD1", "sd1"), ("sd1", "sd1"), ("SD2", "sd2"), ("Unknown", "unknown"),
    (None, "unknown"), ("SD 1.5", "sd1"),
])
def test_arch_names_normalize(raw, expected):
    assert core.normalize_arch(raw) == expected


def test_fit_rule_marks_only_known_different_architectures():
    assert core.fits_model("SD1", "sd1") and core.fits_model("Unknown", "sdxl") and core.fits_model("SDXL", None)
    assert not core.fits_model("SDXL", "sd1") and not core.fits_model("SD2", "sd1")


@pytest.fixture
def real_ctx(tmp_path):
    """The browser handlers over the real LoraLibrary with kohya-format files (SD1 style, SDXL char in a
    subfolder, a broken file)."""
    lora_dir = tmp_path / "Lora"
    write_lora(lora_dir / "inkwash.safetensors", network_tensors(sd1_modules(text_encoder=False), "LoRA", seed=1),
               kohya_metadata("inkwash", "SD1"))
    write_lora(lora_dir / "chars" / "heroine.safetensors",
               network_tensors(sdxl_modules(text_encoder=False), "LoKr", seed=2), kohya_metadata("heroine_v2", "SDXL"))
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    library = LoraLibrary([lora_dir], cache_dir=tmp_path / "cache")
    library.refresh()
    return SimpleNamespace(settings=FakeSettings(tmp_path / "config.json"), models=FakeModels("sd1"),
                           library=library, worker=FakeWorker())


def test_real_library_cards_badges_and_broken_mark(real_ctx):
    grid = lb.BrowserHandlers(real_ctx).grid("", "", "Name", lb.ALL_FOLDERS)
    keys = re.findall(r"data-lora='([^']*)'", grid)
    assert keys == ["broken", "chars/heroine", "inkwash"]
    heroine = re.search(r"<div class='([^']*)' data-lora='chars/heroine'.*?lora-card-name", grid).group(0)
    assert "misfit" in heroine and ">LoKr<" in heroine and ">SDXL<" in heroine
    broken = re.search(r"<div class='([^']*)' data-lora='broken'.*?lora-card-name", grid).group(0)
    assert ">broken<" in broken


def test_real_library_click_writes_alias_and_click_again_removes(real_ctx):
    h = lb.BrowserHandlers(real_ctx)
    with pytest.warns(UserWarning, match="SDXL LoRA"):
        prompt, _ = h.card_click("chars/heroine", "toggle", "a girl")
    # A1111 writes the alias (ss_output_name) when it names this file unambiguously
    assert prompt == "a girl <lora:heroine_v2:1>"
    assert real_ctx.library.resolve("heroine_v2").name == "heroine"
    with pytest.warns(UserWarning, match="SDXL LoRA"):
        prompt, _ = h.card_click("chars/heroine", "toggle", prompt)
    assert prompt == "a girl"


def test_real_library_broken_file_click_warns_and_keeps_prompt(real_ctx):
    with pytest.warns(UserWarning, match="'broken' cannot be used"):
        assert lb.BrowserHandlers(real_ctx).card_click("broken", "toggle", "x") == ("x", None)


def test_real_library_details_and_sidecar_round_trip(real_ctx):
    h = lb.BrowserHandlers(real_ctx)
    entry = real_ctx.library.resolve("inkwash")
    info = h.show_details("inkwash")[1]
    assert entry.short_hash() in info and entry.sha256() in info
    chips = h.show_details("inkwash")[3]
    ranked = sorted(entry.tag_frequency.items(), key=lambda kv: (-kv[1], kv[0]))
    assert ranked, "kohya_metadata writes training tags"
    top_tag, top_count = ranked[0]
    assert f"data-tag='{top_tag}'>{top_tag} <small>{top_count}</small>" in chips
    sidecar = entry.path.with_name("inkwash.json")
    sidecar.write_text(json.dumps({"someone else's key": 1}))
    real_ctx.library.refresh()
    h.save_meta("inkwash", "ink look", "inkwash style", 0.7, "", "SD1", "my notes")
    assert json.loads(sidecar.read_text()) == {
        "someone else's key": 1, "description": "ink look", "activation text": "inkwash style",
        "preferred weight": 0.7, "negative text": "", "sd version": "SD1", "notes": "my notes"}
    prompt, _ = h.card_click("inkwash", "toggle", "")
    assert prompt == "<lora:inkwash:0.7> inkwash style"
