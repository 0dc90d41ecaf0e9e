"""PNG Info tab: drop an image -> its generation parameters; "Send to txt2img" restores the prompt
(LoRA tags re-pointed to local files by their short hash, so renamed files still work), the sliders
(they follow the prompt) and the settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lora_ui import infotext as infotext_mod
from lora_ui.ui import notify
from lora_ui.ui.hires_fix import HIRES_FIELDS, hires_widget_value
from lora_ui.ui.sampling_extras import EXTRA_NAMES

NO_METADATA = "This image has no generation parameters (no PNG 'parameters' chunk or EXIF comment)."

# Txt2ImgRequest fields "Send to txt2img" fills, in the order of its outputs (after the prompt).
SEND_FIELDS = ("negative_prompt", "sampler", "scheduler", "steps", "cfg_scale", "width", "height", "seed", "clip_skip",
               *EXTRA_NAMES, *HIRES_FIELDS)


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
    """Infotext -> (prompt with LoRA names resolved by hash, {request field: value}, messages for the
    user). A1111's reading (lora_ui.engine.paste): a missing key means A1111's default; a value that
    cannot be used is left out with a message (its widget keeps its value); `choices` ({"sampler": [...],
    "scheduler": [...]}) drops a sampler/schedule the widgets do not offer, with a message."""
    from lora_ui.engine.paste import request_fields_from_infotext

    if not text or not text.strip():
        raise ValueError("Nothing to send: drop an image with generation parameters first.")
    parsed = infotext_mod.parse_infotext(text)
    prompt = str(parsed.get("Prompt", ""))
    messages: list[str] = []
    if library is not None:
        prompt, messages = infotext_mod.resolve_pasted_loras(prompt, parsed.get("Lora hashes", ""), library)
    values, paste_messages = request_fields_from_infotext(parsed)
    messages += paste_messages
    for field, allowed in (choices or {}).items():
        if field in values and values[field] not in allowed:
            messages.append(f"{field} '{values.pop(field)}' is not available here; kept the current one")
    return prompt, {k: hires_widget_value(k, v) for k, v in values.items() if k in SEND_FIELDS}, messages


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
        keep = [gr.update()] * (1 + len(SEND_FIELDS))
        try:
            prompt, values, messages = txt2img_values(text, getattr(self.ctx, "library", None), choices)
        except ValueError as exc:
            notify.warn(str(exc))
            return keep
        notify.warn_all(messages)
        return [prompt] + [values.get(k, gr.update()) for k in SEND_FIELDS]


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
