"""PNG Info tab: drop an image -> its generation parameters; "Send to txt2img" restores the prompt
(LoRA tags re-pointed to local files by their short hash, so renamed files still work), the sliders
(they follow the prompt) and the settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lora_ui import infotext as infotext_mod
from lora_ui.ui import notify

NO_METADATA = "This image has no generation parameters (no PNG 'parameters' chunk or EXIF comment)."

# Infotext key -> (kind, what the txt2img widget is called); the order of `SendTargets`.
SEND_KEYS = ("Negative prompt", "Sampler", "Schedule type", "Steps", "CFG scale", "Size-1", "Size-2", "Seed",
             "Clip skip")


def read_parameters(image_path: str | None) -> tuple[str, list[list[str]]]:
    """-> (infotext, [key, value] rows). Raises ValueError with a plain message for an unreadable
    image or one without metadata."""
    if not image_path:
        return "", []
    try:
        text = infotext_mod.read_infotext(image_path)
    except infotext_mod.InfotextError as exc:
        raise ValueError(str(exc)) from None
    if not text:
        raise ValueError(NO_METADATA)
    parsed = infotext_mod.parse_infotext(text)
    rows = [[k, str(v)] for k, v in parsed.items() if k not in ("Prompt", "Negative prompt")
            and not (k.endswith("-1") or k.endswith("-2"))]
    return text, rows


def txt2img_values(text: str, library: Any, choices: dict[str, list[str]] | None = None
                   ) -> tuple[str, dict[str, Any], list[str]]:
    """Infotext -> (prompt with LoRA names resolved by hash, {infotext key: value for the widgets},
    messages for the user). Keys missing from the infotext are left out (the widget keeps its value);
    a sampler/schedule the UI does not offer is left out with a message."""
    if not text or not text.strip():
        raise ValueError("Nothing to send: drop an image with generation parameters first.")
    parsed = infotext_mod.parse_infotext(text)
    prompt = str(parsed.get("Prompt", ""))
    messages: list[str] = []
    if library is not None:
        prompt, messages = infotext_mod.resolve_pasted_loras(prompt, parsed.get("Lora hashes", ""), library)
    values: dict[str, Any] = {}
    for key in SEND_KEYS:
        if key not in parsed:
            continue
        value = parsed[key]
        allowed = (choices or {}).get(key)
        if allowed is not None and value not in allowed:
            messages.append(f"{key} '{value}' is not available here; kept the current one")
            continue
        if key in ("Steps", "Seed", "Clip skip", "Size-1", "Size-2", "CFG scale") and not isinstance(value, (int, float)):
            messages.append(f"{key} '{value}' is not a number; kept the current one")
            continue
        values[key] = value
    return prompt, values, messages


@dataclass
class PngInfoTab:
    image: gr.Image
    infotext: gr.Textbox
    table: gr.Dataframe
    send_to_txt2img: gr.Button


class PngInfoHandlers:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def on_image(self, image_path: str | None):
        try:
            text, rows = read_parameters(image_path)
        except ValueError as exc:
            notify.warn(str(exc))
            return "", []
        return text, rows

    def send(self, text: str, choices: dict[str, list[str]], current: list[Any]) -> list[Any]:
        """-> [prompt, then one value per SEND_KEYS entry]; on bad input every widget keeps its value."""
        keep = [gr.update()] * (1 + len(SEND_KEYS))
        try:
            prompt, values, messages = txt2img_values(text, getattr(self.ctx, "library", None), choices)
        except ValueError as exc:
            notify.warn(str(exc))
            return keep
        notify.warn_all(messages)
        return [prompt] + [values.get(k, gr.update()) for k in SEND_KEYS]


def build_pnginfo_tab(ctx: Any) -> PngInfoTab:
    h = PngInfoHandlers(ctx)
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=420)
        with gr.Column():
            infotext = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_infotext")
            table = gr.Dataframe(headers=["parameter", "value"], interactive=False, elem_id="pnginfo_table")
            send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send_to_txt2img")
    image.change(h.on_image, inputs=[image], outputs=[infotext, table])
    return PngInfoTab(image, infotext, table, send)
