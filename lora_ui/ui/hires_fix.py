"""txt2img's "Hires. fix" accordion (A1111's controls) and the widget values -> Txt2ImgRequest fields.

`build_hires_accordion(ctx)` is called once from txt2img_tab.py; its `inputs` are appended to the Generate
inputs and `hires_fields(*values)` turns them into request fields (the engine validates them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

SAME = "Use same"
# Txt2ImgRequest hires fields, in HiresControls.field_components order
HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength", "hr_resize_x",
                "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")


def hires_widget_value(field: str, value: Any) -> Any:
    """A request field's value as its widget shows it ("" sampler/schedule -> "Use same")."""
    return SAME if field in ("hr_sampler_name", "hr_scheduler") and not value else value


@dataclass
class HiresControls:
    enable: Any
    upscaler: Any
    scale: Any
    steps: Any
    denoising: Any
    resize_x: Any
    resize_y: Any
    sampler: Any
    scheduler: Any
    prompt: Any
    negative: Any

    def field_components(self) -> dict[str, Any]:
        """Txt2ImgRequest hires field -> its widget (for PNG Info's "send to txt2img")."""
        return {"enable_hr": self.enable, "hr_upscaler": self.upscaler, "hr_scale": self.scale,
                "hr_second_pass_steps": self.steps, "denoising_strength": self.denoising,
                "hr_resize_x": self.resize_x, "hr_resize_y": self.resize_y, "hr_sampler_name": self.sampler,
                "hr_scheduler": self.scheduler, "hr_prompt": self.prompt, "hr_negative_prompt": self.negative}

    @property
    def inputs(self) -> list:
        return [self.enable, self.upscaler, self.scale, self.steps, self.denoising, self.resize_x, self.resize_y,
                self.sampler, self.scheduler, self.prompt, self.negative]


def upscaler_names(ctx: Any) -> list[str]:
    """Latent modes, then None/Lanczos/Nearest and the ESRGAN-family files of the data dir."""
    from lora_ui.engine.hires import LATENT_UPSCALE_MODES
    from lora_ui.engine.upscalers import BUILTIN

    ups = getattr(getattr(ctx, "worker", None), "upscalers", None)
    return list(LATENT_UPSCALE_MODES) + (ups.names() if ups is not None else list(BUILTIN))


def build_hires_accordion(ctx: Any, samplers: list[str], schedules: list[str], max_size: int,
                          max_steps: int) -> HiresControls:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
        enable = gr.Checkbox(False, label="Enable hires fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(upscaler_names(ctx), value="Latent", label="Upscaler", elem_id="txt2img_hr_upscaler")
            steps = gr.Slider(0, max_steps, value=0, step=1, label="Hires steps (0 = same)", elem_id="txt2img_hires_steps")
            denoising = gr.Slider(0.01, 1, value=0.7, step=0.01, label="Denoising strength",
                                  elem_id="txt2img_denoising_strength")
        with gr.Row():
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(0, max_size, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(0, max_size, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
        with gr.Row():
            sampler = gr.Dropdown([SAME] + samplers, value=SAME, label="Hires sampling method",
                                  elem_id="txt2img_hr_sampler")
            scheduler = gr.Dropdown([SAME] + schedules, value=SAME, label="Hires schedule type",
                                    elem_id="txt2img_hr_scheduler")
        prompt = gr.Textbox(label="Hires prompt (empty = same)", lines=2, elem_id="txt2img_hr_prompt")
        negative = gr.Textbox(label="Hires negative prompt (empty = same)", lines=2, elem_id="txt2img_hr_neg_prompt")
    return HiresControls(enable, upscaler, scale, steps, denoising, resize_x, resize_y, sampler, scheduler, prompt,
                         negative)


def hires_fields(enable=False, upscaler="Latent", scale=2.0, steps=0, denoising=0.7, resize_x=0, resize_y=0,
                 sampler=SAME, scheduler=SAME, prompt="", negative="") -> dict[str, Any]:
    """Widget values -> Txt2ImgRequest hires fields ({} when hires fix is off)."""
    if not enable:
        return {}
    return {"enable_hr": True, "hr_upscaler": upscaler or "Latent", "hr_scale": float(scale),
            "hr_second_pass_steps": int(steps or 0), "denoising_strength": float(denoising),
            "hr_resize_x": int(resize_x or 0), "hr_resize_y": int(resize_y or 0),
            "hr_sampler_name": "" if sampler in (None, SAME) else sampler,
            "hr_scheduler": "" if scheduler in (None, SAME) else scheduler,
            "hr_prompt": prompt or "", "hr_negative_prompt": negative or ""}
