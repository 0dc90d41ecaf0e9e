"""LoRA inspector: a bar chart of where a LoRA acts (size of its weight change per block: text
encoder, down/mid/up blocks) and a one-paragraph reading of it, so a style LoRA (mostly up blocks)
is told from a character LoRA (down/mid, text encoder) at a glance, with a block-weight preset to try.

The numbers come from `LoraManager.delta_norms(path)`, measured on the worker thread
(`lora_ui.compare.inspect_lora`); this module only turns them into a pandas frame and widgets.
Inside the compare tab the LoRA picker is a multiselect: a second dropdown, limited to the picked
LoRAs (the first by default), says which one to inspect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from lora_ui import compare as cmp
from lora_ui.ui import core_access as core
from lora_ui.ui import notify

CHART_COLUMNS = ("block", "part", "size")
# One colour per part of the model, the same on every chart.
PART_COLOURS = {"text encoder": "#8b5cf6", "down": "#0ea5e9", "mid": "#22c55e", "up": "#f97316", "other": "#9ca3af"}


def picked_names(value: Any) -> list[str]:
    """A LoRA dropdown's value (None, one name, or a list of names) -> names, blanks dropped."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip() for v in values if str(v).strip()]


def profile_frame(profile: cmp.BlockProfile) -> pd.DataFrame:
    """BlockProfile -> frame with columns block, part, size (||ΔW||), rows in model order."""
    return pd.DataFrame([{"block": block, "part": group, "size": norm} for block, group, norm in profile.blocks],
                        columns=list(CHART_COLUMNS))


class InspectorHandlers:
    """Plain-method handlers (unit-tested without a browser)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    @staticmethod
    def which_choices(lora: Any, current: Any = None) -> Any:
        """The 'which one' dropdown follows the picked LoRAs: its choices are exactly those, and it keeps
        its value while that is still picked, else falls back to the first picked one (None: none)."""
        names = list(dict.fromkeys(picked_names(lora)))
        current = str(current or "").strip()
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    def inspect(self, lora: Any, which: Any = None) -> tuple[Any, str]:
        """Picked LoRA(s) (a name or a list) and which of them to chart (default: the first picked)
        -> (chart frame, summary). A `which` that is not among the picked ones warns, charts nothing."""
        names = picked_names(lora)
        which = str(which or "").strip()
        if which and which not in names:
            picked = ", ".join(f"'{n}'" for n in names) or "none"
            notify.warn(f"Not inspected: '{which}' is not one of the picked LoRAs ({picked}); pick it first.")
            return gr.update(), gr.update()
        name = which or (names[0] if names else "")
        try:
            profile = cmp.inspect_lora(self.ctx, name)
        except cmp.CompareError as exc:
            notify.warn(f"Not inspected: {exc}")
            return gr.update(), gr.update()
        except Exception as exc:  # a broken file or an engine error: say so, keep the page working
            notify.warn(f"Could not inspect '{name}': {exc}")
            return gr.update(), gr.update()
        return profile_frame(profile), f"**{name}** — {profile.summary()}"


@dataclass
class InspectorPanel:
    lora: gr.Dropdown
    which: gr.Dropdown | None          # with a shared multiselect picker: which picked LoRA to chart
    inspect: gr.Button
    chart: gr.BarPlot
    summary: gr.Markdown


def build_inspector(ctx: Any, handlers: InspectorHandlers | None = None, lora: gr.Dropdown | None = None) -> InspectorPanel:
    """Layout (inside a Blocks context). With `lora` given (e.g. the compare tab's picker) it is
    reused as the input, with a dropdown of the picked LoRAs to choose the one charted; otherwise the
    panel gets its own LoRA dropdown."""
    h = handlers or InspectorHandlers(ctx)
    which = None
    with gr.Column(elem_id="lora_inspector"):
        gr.Markdown("Where the LoRA acts: size of its weight change ‖ΔW‖ per block "
                    "(text encoder, down, mid and up blocks of the UNet).")
        with gr.Row(equal_height=True):
            if lora is None:
                lora = gr.Dropdown(core.names_in(core.library_entries(ctx)), label="LoRA", allow_custom_value=True,
                                   elem_id="inspector_lora", scale=4)
            else:
                first = h.which_choices(lora.value)
                which = gr.Dropdown(first["choices"], value=first["value"], label="LoRA to inspect (of the picked ones)",
                                    elem_id="inspector_which", scale=4)
            inspect = gr.Button("Inspect", elem_id="inspector_run", scale=1)
        # Starts empty (None): a chart built on an empty frame draws no bars after an update.
        chart = gr.BarPlot(None, x="block", y="size", color="part", color_map=PART_COLOURS,
                           x_title="block", y_title="‖ΔW‖", sort=None, x_label_angle=-45, height=280,
                           label="Weight change per block", elem_id="inspector_chart")
        summary = gr.Markdown("", elem_id="inspector_summary")
    if which is None:
        inspect.click(h.inspect, inputs=[lora], outputs=[chart, summary], show_progress="minimal")
    else:
        lora.change(h.which_choices, inputs=[lora, which], outputs=[which], show_progress="hidden")
        inspect.click(h.inspect, inputs=[lora, which], outputs=[chart, summary], show_progress="minimal")
    return InspectorPanel(lora, which, inspect, chart, summary)
