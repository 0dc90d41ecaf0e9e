"""Issue 15 in a real browser: the checkpoint and VAE pickers at the top of the page, a Textual Inversion
card, a style, a 2x2 X/Y/Z plot, and the output image in view after Generate at 1366x768 and 1920x1080.

A module-scoped app of its own (closed at teardown) over a data dir made before it starts: a second
checkpoint (the demo model folder copied under another name), a VAE in models/VAE (the demo VAE's weights
in diffusers keys with the decoder's output negated, so the picture changes), a 2-vector embedding in
A1111's `emb_params` format and a styles.csv with one `{prompt}` style.
"""
from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from playwright.sync_api import expect
from safetensors.torch import load_file, save_file

from tests.browser.conftest import ARTIFACTS
from tests.browser.helpers import box_in_viewport, open_page

PROMPT = "#txt2img_prompt textarea"
INFOTEXT = "#txt2img_infotext textarea"
SECOND = "second-model"
VAE = "tinted.safetensors"
EMBEDDING = "twovec"
STYLE = "framed"
VIEWPORTS = [(1366, 768), (1920, 1080)]


@pytest.fixture(scope="module")
def basics_app(tmp_path_factory):
    from lora_ui.settings import DEMO_MODEL_DIR
    from lora_ui.ui.devserver import build_dev_context, launch

    root = tmp_path_factory.mktemp("basics-browser")
    shutil.copytree(DEMO_MODEL_DIR, root / "models" / "Stable-diffusion" / SECOND)
    vae = load_file(str(DEMO_MODEL_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    for key in ("decoder.conv_out.weight", "decoder.conv_out.bias"):
        vae[key] = -vae[key]
    (root / "models" / "VAE").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae.items()}, str(root / "models" / "VAE" / VAE))
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(4))},
              str(root / "embeddings" / f"{EMBEDDING}.safetensors"))
    (root / "styles.csv").write_text(f'name,prompt,negative_prompt\n{STYLE},"framed {{prompt}}, border",blurry\n',
                                     encoding="utf-8")
    ctx = build_dev_context(root)
    demo, url = launch(ctx)
    yield SimpleNamespace(url=url, ctx=ctx)
    demo.close()
    ctx.worker.shutdown()


def pick(page, elem_id: str, option: str | re.Pattern) -> None:
    """Open a gradio dropdown and click one of its options."""
    page.locator(f"#{elem_id} input").click()
    exact = {"exact": True} if isinstance(option, str) else {}
    page.locator(f"#{elem_id}").get_by_role("option", name=option, **exact).click()
    if isinstance(option, str) and elem_id != "txt2img_styles":
        expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def generate(page, width: int, height: int) -> str:
    """Generate (2 steps), wait for a new infotext, and check the output image is in view unscrolled."""
    infotext = page.locator(INFOTEXT)
    before = infotext.input_value()
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#txt2img_generate").click()
    expect(infotext).not_to_have_value(before or "", timeout=300_000)
    image = page.locator("#txt2img_gallery img").first
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    page.evaluate("window.scrollTo(0, 0)")
    box = box_in_viewport(page, "#txt2img_gallery img", width, height)
    assert box["width"] >= 64 and box["height"] >= 64, f"the output image is only {box}"
    return infotext.input_value()


def switch_checkpoint(page, name: str) -> None:
    pick(page, "setting_sd_model_checkpoint", re.compile("^" + re.escape(name)))
    expect(page.locator("#model_bar_status")).to_contain_text(f"Loaded {name}", timeout=300_000)
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile("^" + re.escape(name)))


def switch_vae(page, choice: str) -> None:
    pick(page, "setting_sd_vae", choice)
    expect(page.locator("#model_bar_status")).to_contain_text(f"VAE: {choice}")


def screenshot_on_failure(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True, animations="disabled")


@pytest.mark.parametrize("width,height", VIEWPORTS, ids=[f"{w}x{h}" for w, h in VIEWPORTS])
def test_checkpoint_vae_embedding_style_xyz_and_output_in_view(browser, basics_app, width, height):
    """Each size switches to the other checkpoint (demo -> copy, then back: A -> B -> A) and toggles the VAE
    between the file and Automatic; the infotext after Generate follows both."""
    from lora_ui.ui import core_access as core

    models = basics_app.ctx.models
    context, page = open_page(browser, basics_app.url, width, height)
    try:
        loaded = core.current_model(basics_app.ctx)
        # a (re)loaded page shows what is loaded now, not what was loaded at the app's start
        expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(loaded.title)
        expect(page.locator("#setting_sd_vae input")).to_have_value(models.vaes.selection)
        names = [c.name for c in models.list()]
        assert SECOND in names and len(names) == 2, names
        target = next(n for n in names if n != loaded.name)
        vae = VAE if models.vaes.selection == "Automatic" else "Automatic"

        page.locator(PROMPT).fill("a red house")
        set_number(page, "txt2img_steps", 2)
        page.locator("#txt2img_seed input").fill("321")
        switch_checkpoint(page, target)
        switch_vae(page, vae)

        # the embedding's card inserts its name
        toggle = page.locator("#lora_browser").get_by_text("Extra networks (LoRA, Textual Inversion)")
        toggle.click()
        page.get_by_role("tab", name="Textual Inversion").click()
        card = page.locator("#ti_cards").get_by_text(EMBEDDING, exact=True)
        expect(card).to_be_visible()
        card.click()
        expect(page.locator(PROMPT)).to_have_value(f"a red house, {EMBEDDING}")
        toggle.click()  # closed again: the output must fit without it

        # the style expands the prompt around {prompt}
        pick(page, "txt2img_styles", STYLE)
        page.locator("#txt2img_style_apply").click()
        expect(page.locator(PROMPT)).to_have_value(f"framed a red house, {EMBEDDING}, border")
        expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("blurry")

        infotext = generate(page, width, height)
        assert f"framed a red house, {EMBEDDING}, border" in infotext, infotext
        assert f"Model: {target}" in infotext, infotext
        if vae == VAE:
            assert f"VAE: {VAE.rsplit('.', 1)[0]}" in infotext or f"VAE: {VAE}" in infotext, infotext
            assert re.search(r"VAE hash: [0-9a-f]{10}", infotext), infotext
        else:
            assert "VAE:" not in infotext and "VAE hash:" not in infotext, infotext
        assert re.search(rf'TI hashes: "?{EMBEDDING}: [0-9a-f]+', infotext), infotext

        # a 2x2 X/Y/Z plot: Steps 1,2 x CFG 3,5 -> the grid (then the cells) in the gallery
        page.locator("#xyz_panel").get_by_text("Script: X/Y/Z plot").click()
        pick(page, "xyz_x_type", "Steps")
        page.locator("#xyz_x_values textarea, #xyz_x_values input").first.fill("1, 2")
        pick(page, "xyz_y_type", "CFG Scale")
        page.locator("#xyz_y_values textarea, #xyz_y_values input").first.fill("3, 5")
        page.locator("#xyz_run").click()
        expect(page.locator(INFOTEXT)).to_have_value(re.compile(r"X Type: Steps.*Y Type: CFG Scale", re.S),
                                                     timeout=300_000)
        expect(page.locator("#txt2img_gallery img")).not_to_have_count(0)
        widths = page.locator("#txt2img_gallery img").evaluate_all(
            "imgs => Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0)))")
        assert max(widths) >= 2 * 64, f"no 2x2 grid in the gallery (image widths {widths})"
    except Exception:
        screenshot_on_failure(page, f"basics_{width}x{height}")
        raise
    finally:
        context.close()
