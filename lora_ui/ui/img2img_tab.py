"""The img2img tab (init image, mask drawn in Gradio's ImageEditor or uploaded, A1111's img2img and inpaint
controls) and the Extras tab (upscale one image). Renders go through the worker like txt2img's; the handlers
reuse txt2img's (`Txt2ImgHandlers.generate`: progress polling, gallery, infotext) with img2img's fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from lora_ui.engine.images import INPAINTING_FILL, RESIZE_MODES
from lora_ui.ui import core_access as core
from lora_ui.ui import notify
from lora_ui.ui.txt2img_tab import DEFAULT_SAMPLER, PROGRESS_CSS, Txt2ImgHandlers, sampler_choices


def editor_image_and_mask(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """Gradio ImageEditor value -> (init image RGB, mask "L" from the drawn layers' alpha; None if none drawn)."""
    if not value:
        return None, None
    background = value.get("background") if isinstance(value, dict) else value
    if background is None:
        return None, None
    image = background if isinstance(background, Image.Image) else Image.fromarray(np.asarray(background))
    alpha = np.zeros((image.height, image.width), dtype=bool)
    for layer in (value.get("layers") or []) if isinstance(value, dict) else []:
        layer = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer))
        if layer.mode == "RGBA" and layer.size == image.size:
            alpha |= np.asarray(layer)[:, :, 3] > 0
    mask = Image.fromarray((alpha * 255).astype(np.uint8)) if alpha.any() else None
    return image.convert("RGB"), mask


def img2img_fields(editor: Any, uploaded_mask: Any, resize_mode: str, denoising: float, mask_blur: Any,
                   masked_content: str, inpaint_area: str, padding: Any, mask_mode: str) -> dict[str, Any]:
    """Widget values -> Img2ImgRequest fields (ValueError with a plain message when there is no image)."""
    image, drawn = editor_image_and_mask(editor)
    if image is None:
        raise ValueError("add an init image first")
    mask = uploaded_mask if uploaded_mask is not None else drawn
    return {"init_images": [image], "mask": mask, "resize_mode": RESIZE_MODES.index(resize_mode),
            "denoising_strength": float(denoising), "mask_blur": int(mask_blur or 0),
            "inpainting_fill": INPAINTING_FILL.index(masked_content),
            "inpaint_full_res": inpaint_area == "Only masked", "inpaint_full_res_padding": int(padding or 0),
            "inpainting_mask_invert": int(mask_mode == "Inpaint not masked")}


def _img2img_request(**fields: Any):
    from lora_ui.engine.img2img import Img2ImgRequest

    return Img2ImgRequest(**fields)


class Img2ImgHandlers(Txt2ImgHandlers):
    extra_fields = staticmethod(img2img_fields)

    def __init__(self, ctx: Any, **kwargs: Any) -> None:
        super().__init__(ctx, request_factory=_img2img_request, **kwargs)

    @staticmethod
    def submit(worker: Any, request: Any) -> Any:
        return worker.img2img(request)


class Img2ImgCompareHandlers:
    """img2img compare (issue #16): with / without the prompt's LoRA(s) from the same init image and seed,
    and a denoising-strength x LoRA-weight grid. Both run as one worker job through lora_ui.compare (the
    grid through the X/Y/Z engine). `*inputs` are the Generate button's inputs, in its order."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def request(self, prompt: str, negative: str, sampler: str, schedule: str, steps: Any, cfg: Any, width: Any,
                height: Any, seed: Any, batch_size: Any, batch_count: Any, clip_skip: Any, *extra: Any):
        from lora_ui import limits as app_limits
        from lora_ui.ui.txt2img_tab import request_fields

        fields = request_fields(prompt, negative, sampler, schedule, steps, cfg, width, height, seed, 1, 1,
                                clip_skip, save_images=False, limits=app_limits.of(self.ctx.settings),
                                default_size=core.default_size(self.ctx))
        fields["add_lora_hashes"] = bool(getattr(self.ctx.settings, "add_lora_hashes_to_infotext", True))
        fields.update(img2img_fields(*extra))
        return _img2img_request(**fields)

    def compare(self, *inputs: Any):
        from lora_ui import compare

        keep = (gr.update(),) * 4
        try:
            request = self.request(*inputs)
            result = compare.submit_compare(self.ctx, compare.CompareRequest(base=request)).result()
        except (ValueError, TypeError) as exc:  # CompareError is a ValueError
            notify.warn(f"Not compared: {exc}")
            return keep
        notify.warn_all(str(w) for w in result.warnings)
        info = (f"Seed: {result.seed} · {result.stats.summary()}\n\nWithout: {result.without_infotext}\n\n"
                f"With: {result.with_infotext}")
        return result.without, result.with_lora, result.heatmap, info

    def grid(self, strengths_text: str, weights_text: str, *inputs: Any):
        from lora_ui import compare

        try:
            strengths = compare.parse_weight_list(strengths_text)
            weights = compare.parse_weight_list(weights_text)
            request = self.request(*inputs)
            result = compare.submit_strength_weight_grid(self.ctx, request, strengths, weights).result()
        except (ValueError, TypeError) as exc:
            notify.warn(f"No grid: {exc}")
            return gr.update(), gr.update()
        notify.warn_all(str(w) for w in result.warnings)
        if result.interrupted:
            notify.info("Interrupted: the grid shows the cells done.")
        return result.grid, result.infotext


@dataclass
class Img2ImgTab:
    prompt: Any
    editor: Any
    gallery: Any
    infotext: Any
    generate: Any
    compare: Any = None
    grid_run: Any = None


def build_img2img_tab(ctx: Any, handlers: Img2ImgHandlers | None = None) -> Img2ImgTab:
    h = handlers or Img2ImgHandlers(ctx)
    samplers, schedules = sampler_choices()
    limits = core.limits(ctx)
    default_size = int(getattr(core.current_model(ctx), "default_size", 0) or 0)
    last_images, last_seeds, last_infotexts = gr.State([]), gr.State([]), gr.State([])
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="img2img_prompt",
                                placeholder="Prompt; <lora:name:weight> tags apply LoRAs")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="img2img_neg_prompt")
        with gr.Column(scale=1, min_width=180):
            generate = gr.Button("Generate", variant="primary", elem_id="img2img_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="img2img_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="img2img_skip", size="sm")
    with gr.Row():
        with gr.Column(scale=1):
            editor = gr.ImageEditor(label="Init image (paint the area to inpaint)", type="pil",
                                    elem_id="img2img_editor", height=360)
            with gr.Accordion("Inpaint", open=False, elem_id="img2img_inpaint"):
                mask = gr.Image(label="Upload mask (white = repaint; overrides the painted one)", type="pil",
                                image_mode="L", elem_id="img2img_mask", height=160)
                with gr.Row():
                    mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                    mask_mode = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                         label="Mask mode", elem_id="img2img_mask_mode")
                masked_content = gr.Radio(list(INPAINTING_FILL), value="original", label="Masked content",
                                          elem_id="img2img_inpainting_fill")
                with gr.Row():
                    inpaint_area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture",
                                            label="Inpaint area", elem_id="img2img_inpaint_full_res")
                    padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                        elem_id="img2img_inpaint_full_res_padding")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                   elem_id="img2img_resize_mode")
            with gr.Row():
                sampler = gr.Dropdown(samplers, value=DEFAULT_SAMPLER, label="Sampling method", elem_id="img2img_sampler")
                schedule = gr.Dropdown(schedules, value=schedules[0], label="Schedule type", elem_id="img2img_schedule")
            steps = gr.Slider(1, limits.max_steps, value=20, step=1, label="Sampling steps", elem_id="img2img_steps")
            with gr.Row():
                width = gr.Slider(0, limits.max_size, value=default_size, step=8, label="Width", elem_id="img2img_width")
                height = gr.Slider(0, limits.max_size, value=default_size, step=8, label="Height", elem_id="img2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, limits.max_batch_count, value=1, step=1, label="Batch count")
                batch_size = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="Batch size")
            cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG Scale", elem_id="img2img_cfg_scale")
            denoising = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                  elem_id="img2img_denoising_strength")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="img2img_seed")
            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id="img2img_clip_skip")
        with gr.Column(scale=1):
            progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="img2img_progress")
            preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id="img2img_preview",
                               height=256)
            gallery = gr.Gallery(label="Output", columns=2, height=420, format="png", elem_id="img2img_gallery",
                                 interactive=False)
            infotext = gr.Textbox(label="Generation parameters (infotext)", lines=4, interactive=False,
                                  elem_id="img2img_infotext")
            with gr.Accordion("Compare with / without LoRA", open=False, elem_id="img2img_compare_panel"):
                compare_run = gr.Button("Compare with / without LoRA", elem_id="img2img_compare")
                with gr.Row():
                    compare_without = gr.Image(label="Without LoRA", type="pil", format="png", interactive=False,
                                               elem_id="img2img_compare_without")
                    compare_with = gr.Image(label="With LoRA", type="pil", format="png", interactive=False,
                                            elem_id="img2img_compare_with")
                    compare_heatmap = gr.Image(label="Difference", type="pil", format="png", interactive=False,
                                               elem_id="img2img_compare_heatmap")
                compare_info = gr.Textbox(label="Comparison", lines=3, interactive=False,
                                          elem_id="img2img_compare_info")
                with gr.Row():
                    grid_strengths = gr.Textbox("0.3, 0.6, 0.9", label="Denoising strengths (rows)",
                                                elem_id="img2img_grid_strengths")
                    grid_weights = gr.Textbox("0, 0.5, 1", label="LoRA weights (columns)",
                                              elem_id="img2img_grid_weights")
                grid_run = gr.Button("Strength x weight grid", elem_id="img2img_grid_run")
                grid_image = gr.Image(label="Grid", type="pil", format="png", interactive=False,
                                      elem_id="img2img_grid")
                grid_infotext = gr.Textbox(label="Grid infotext", lines=2, interactive=False,
                                           elem_id="img2img_grid_infotext")
    inputs = [prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch_size, batch_count, clip_skip,
              editor, mask, resize_mode, denoising, mask_blur, masked_content, inpaint_area, padding, mask_mode]
    outputs = [progress, preview, gallery, infotext, last_images, last_seeds, last_infotexts]
    generate.click(h.generate, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden")
    interrupt.click(h.interrupt, concurrency_limit=None, show_progress="hidden")
    skip.click(h.skip, concurrency_limit=None, show_progress="hidden")
    ch = Img2ImgCompareHandlers(ctx)
    compare_run.click(ch.compare, inputs=inputs, outputs=[compare_without, compare_with, compare_heatmap, compare_info],
                      concurrency_limit=None)
    grid_run.click(ch.grid, inputs=[grid_strengths, grid_weights] + inputs, outputs=[grid_image, grid_infotext],
                   concurrency_limit=None)
    return Img2ImgTab(prompt, editor, gallery, infotext, generate, compare_run, grid_run)


# ---------------------------------------------------------------------------------------------- Extras

def extras_upscale_handler(ctx: Any, image: Any, upscaler: str, scale: float):
    """Upscale one image on the worker (an ESRGAN model runs on the model's device)."""
    from lora_ui.engine.upscalers import UpscalerError, Upscalers, extras_upscale

    if image is None:
        notify.warn("Add an image first")
        return None, ""
    ups = getattr(ctx.worker, "upscalers", None) or Upscalers()
    try:
        out, info = ctx.worker.submit(
            lambda session: extras_upscale(ups, image.convert("RGB"), upscaler, float(scale),
                                           max_size=core.limits(ctx).max_size * 4,
                                           device=session.model.device if session.model else "cpu"),
            kind="extras").result()
    except UpscalerError as exc:
        notify.warn(f"Not upscaled: {exc}")
        return None, ""
    return out, ", ".join(f"{k}: {v}" for k, v in info.items())


def build_extras_tab(ctx: Any) -> None:
    from lora_ui.engine.upscalers import Upscalers

    ups = getattr(ctx.worker, "upscalers", None) or Upscalers()
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="pil", elem_id="extras_image")
            upscaler = gr.Dropdown(ups.names(), value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
            scale = gr.Slider(1, 8, value=2, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(label="Result", type="pil", interactive=False, format="png", elem_id="extras_result")
            info = gr.Textbox(label="Info", interactive=False, elem_id="extras_info")
    run.click(lambda im, name, s: extras_upscale_handler(ctx, im, name, s), inputs=[image, upscaler, scale],
              outputs=[result, info])
