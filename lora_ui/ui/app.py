"""`build_ui(ctx) -> gr.Blocks`: the tabs assembled (txt2img with the LoRA browser and the active-LoRA
sliders, Compare, PNG Info, Settings) and the cross-tab buttons ("send to compare", "send to txt2img").

Gradio 6 takes theme/css/js at `launch()`: webui.py passes `UI_CSS` (and `UI_HEAD` is empty)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from lora_ui import prompt as prompt_tags
from lora_ui.desktop import APP_NAME
from lora_ui.ui import core_access as core
from lora_ui.ui import notify
from lora_ui.ui.active_loras import build_active_loras
from lora_ui.ui.basics import (ModelBarHandlers, build_embeddings_pane, build_model_bar, build_styles_row,
                               build_xyz_panel, wire_checkpoint_switch)
from lora_ui.ui.lora_browser import BrowserHandlers, ThumbnailCache, build_lora_browser
from lora_ui.ui.pnginfo_tab import SEND_FIELDS, PngInfoHandlers, build_pnginfo_tab
from lora_ui.ui.settings_tab import build_settings_tab
from lora_ui.ui.txt2img_tab import Txt2ImgHandlers, build_txt2img_tab

APP_ICON = Path(__file__).resolve().parent / "static" / "icon.png"  # favicon, PWA and desktop-window icon

UI_CSS = """
#txt2img_generate { min-height: 72px; font-size: 1.1em; }
.active-lora-row { padding: 2px 6px; }
.lora-row-note { color: #b45309; font-size: 12px; }
/* The demo model renders 64 px images: show them large and crisp, not as thumbnails or blurred. */
#txt2img_gallery img, #txt2img_preview img, #img2img_gallery img, #compare_slider img, #compare_without img, #compare_with img,
#compare_sweep_grid img { image-rendering: pixelated; }
#txt2img_preview img, #compare_without img, #compare_with img { width: 100%; height: 100%; object-fit: contain; }
#quicksettings { align-items: end; }
.model-bar-status { font-size: 12px; color: #6b7280; }
/* One output image fills the gallery's width as a square: keep it inside the gallery's 420 px so the whole
   image is in view after Generate (issue 15 layout). */
#txt2img_gallery .thumbnail-lg { max-height: 380px; max-width: 380px; margin: 0 auto; }
"""


def compare_values(prompt: str, negative: str, seed: Any, last_seeds: list[int] | None, ctx: Any,
                   multiselect: bool) -> tuple[str, str, int, Any, float]:
    """txt2img -> compare tab: the prompt without LoRA tags, the negative prompt, the seed of the last
    image (or the seed box), the prompt's LoRA(s) by library name and the first tag's weight. Raises
    ValueError when the prompt has no LoRA (a compare without a LoRA shows nothing)."""
    text, tags, _ = prompt_tags.extract_lora_tags(prompt or "")
    names = []
    for tag in tags:
        entry = core.find_entry(ctx, tag.name)
        names.append(core.entry_name(entry) if entry is not None else tag.name)
    if not names:
        raise ValueError("the prompt has no <lora:...> tag: add a LoRA to compare with and without it")
    chosen_seed = int(last_seeds[0]) if last_seeds else int(seed if seed not in (None, "") else -1)
    return " ".join(text.split()), negative or "", chosen_seed, (names if multiselect else names[0]), tags[0].te


def build_ui(ctx: Any) -> gr.Blocks:
    """The whole web UI for one AppContext. All per-user state lives in gr.State (per session)."""
    thumbs = ThumbnailCache()
    with gr.Blocks(title=APP_NAME, analytics_enabled=False) as demo:
        bar_handlers = ModelBarHandlers(ctx)
        model_bar = build_model_bar(ctx, bar_handlers)  # A1111's place: above every tab
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                browser_handlers = BrowserHandlers(ctx, thumbs)
                panes: dict[str, Any] = {}

                def lora_panes(prompt: gr.Textbox, last_image: gr.State) -> None:
                    with gr.Accordion("Active LoRAs", open=True, elem_id="active_loras"):
                        build_active_loras(ctx, prompt)
                    # A1111's extra-networks place: a toggled area under the prompt, closed by default so
                    # the settings and the output stay in view
                    with gr.Accordion("Extra networks (LoRA, Textual Inversion)", open=False, elem_id="lora_browser"):
                        with gr.Tabs(elem_id="extra_networks_tabs"):
                            with gr.Tab("LoRA", id="extra_lora", elem_id="tab_extra_lora"):
                                panes["browser"] = build_lora_browser(ctx, prompt, last_image, browser_handlers)
                            with gr.Tab("Textual Inversion", id="extra_ti", elem_id="tab_extra_ti"):
                                build_embeddings_pane(ctx, prompt)

                temp_dir = core.ui_temp_dir(ctx)
                t2i = build_txt2img_tab(ctx, lora_panes,
                                        Txt2ImgHandlers(ctx, temp_dir=temp_dir) if temp_dir is not None else None)
                build_styles_row(ctx, t2i.prompt, t2i.negative)
                build_xyz_panel(ctx, t2i)
                wire_checkpoint_switch(model_bar, t2i.prompt, bar_handlers)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                from lora_ui.ui.img2img_tab import build_extras_tab, build_img2img_tab

                build_img2img_tab(ctx)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                build_extras_tab(ctx)
            compare = None
            with gr.Tab("Compare", id="compare", elem_id="tab_compare"):
                try:
                    from lora_ui.ui.compare_tab import build_compare_tab
                except ImportError:
                    gr.Markdown("The compare tab is not installed in this build.")
                else:
                    compare = build_compare_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = build_pnginfo_tab(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_tab = build_settings_tab(ctx)

        # New card size / default weight: re-render the grid once the settings are applied.
        browser = panes["browser"]
        settings_tab.applied.then(browser_handlers.grid, inputs=[t2i.prompt, browser.search, browser.sort, browser.folder],
                                  outputs=[browser.cards], show_progress="hidden")

        # PNG Info -> txt2img: prompt (LoRAs by hash), then the settings, then switch tabs.
        targets = t2i.field_components()
        png_handlers = PngInfoHandlers(ctx)
        choices = {"sampler": [c[1] if isinstance(c, tuple) else c for c in t2i.sampler.choices],
                   "scheduler": [c[1] if isinstance(c, tuple) else c for c in t2i.schedule.choices]}

        def send_png(text: str):
            return png_handlers.send(text, choices, []) + [gr.Tabs(selected="txt2img")]

        png.send_to_txt2img.click(send_png, inputs=[png.infotext],
                                  outputs=[t2i.prompt] + [targets[k] for k in SEND_FIELDS] + [tabs])

        if compare is not None:
            multiselect = bool(getattr(compare.lora, "multiselect", False))

            # the same picture on the "with" side: sampler, schedule, steps, CFG and size go along too
            shared = ("sampler", "schedule", "steps", "cfg", "width", "height")
            outputs = [compare.prompt, compare.negative_prompt, compare.seed, compare.lora,
                       getattr(compare, "weight", None) or gr.State(), *(getattr(compare, k) for k in shared), tabs]

            def send_compare(prompt: str, negative: str, seed: Any, last_seeds: list[int], *sampling: Any):
                try:
                    values = compare_values(prompt, negative, seed, last_seeds, ctx, multiselect)
                except ValueError as exc:
                    notify.warn(f"Not sent to compare: {exc}")
                    return [gr.update()] * len(outputs)
                return [*values, *sampling, gr.Tabs(selected="compare")]

            t2i.send_to_compare.click(
                send_compare, inputs=[t2i.prompt, t2i.negative, t2i.seed, t2i.last_seeds,
                                      *(getattr(t2i, k) for k in shared)],
                outputs=outputs)
        else:
            t2i.send_to_compare.click(lambda: notify.warn("The compare tab is not available in this build."))
        # a (re)loaded page shows the checkpoint and VAE loaded now, not the ones of the app's start
        demo.load(bar_handlers.refresh_checkpoints, outputs=[model_bar.checkpoint], show_progress="hidden")
        demo.load(bar_handlers.refresh_vae_selection, outputs=[model_bar.vae], show_progress="hidden")
        from lora_ui.ui.session_jobs import install_session_cancel

        install_session_cancel(demo, getattr(ctx, "worker", None))  # a closed page cancels its renders
    return demo
