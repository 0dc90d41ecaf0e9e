"""The txt2img tab's "Seed extras and sampler options" accordion: the A1111 fields that decide the
picture besides the main settings (variation seed, seed resize, RNG source, ENSD, eta, churn, sigma
overrides). A pasted infotext fills them, so an A1111 PNG renders the same picture here.

UI only: widgets, and widget values -> Txt2ImgRequest fields (the engine validates them again).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr

# (request field, label, default). The order is the handler's argument order.
EXTRA_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("subseed", "Variation seed (-1 = random)", -1),
    ("subseed_strength", "Variation strength", 0.0),
    ("seed_resize_from_w", "Resize seed from width (0 = off)", 0),
    ("seed_resize_from_h", "Resize seed from height (0 = off)", 0),
    ("rng", "Random number generator source", "GPU"),
    ("ensd", "Eta noise seed delta (ENSD)", 0),
    ("eta", "Eta (empty = the sampler's default)", None),
    ("s_churn", "Sigma churn", 0.0),
    ("s_noise", "Sigma noise", 1.0),
    ("sigma_min", "Schedule min sigma (0 = model's)", 0.0),
    ("sigma_max", "Schedule max sigma (0 = model's)", 0.0),
    ("rho", "Schedule rho (0 = default)", 0.0),
)
EXTRA_NAMES: tuple[str, ...] = tuple(name for name, _, _ in EXTRA_FIELDS)
_INTEGERS = {"subseed", "seed_resize_from_w", "seed_resize_from_h", "ensd"}


@dataclass
class SamplingExtras:
    accordion: gr.Accordion
    components: dict[str, Any]      # request field -> component, in EXTRA_FIELDS order

    def inputs(self) -> list[Any]:
        return [self.components[name] for name in EXTRA_NAMES]


def build_sampling_extras(elem_prefix: str = "txt2img") -> SamplingExtras:
    """The accordion (closed; call inside the settings column)."""
    components: dict[str, Any] = {}
    with gr.Accordion("Seed extras and sampler options", open=False,
                      elem_id=f"{elem_prefix}_sampling_extras") as accordion:
        with gr.Row():
            components["subseed"] = gr.Number(value=-1, precision=0, label=EXTRA_FIELDS[0][1],
                                              elem_id=f"{elem_prefix}_subseed")
            components["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label=EXTRA_FIELDS[1][1],
                                                       elem_id=f"{elem_prefix}_subseed_strength")
        with gr.Row():
            for name, label, default in EXTRA_FIELDS[2:4]:
                components[name] = gr.Slider(0, 2048, value=default, step=8, label=label,
                                             elem_id=f"{elem_prefix}_{name}")
        with gr.Row():
            components["rng"] = gr.Dropdown(["GPU", "CPU", "NV"], value="GPU", label=EXTRA_FIELDS[4][1],
                                            elem_id=f"{elem_prefix}_rng",
                                            info="GPU: CUDA draws on a GPU, CPU draws elsewhere (A1111's default)")
            components["ensd"] = gr.Number(value=0, precision=0, label=EXTRA_FIELDS[5][1], elem_id=f"{elem_prefix}_ensd")
        with gr.Row():
            for name, label, default in EXTRA_FIELDS[6:]:
                components[name] = gr.Number(value=default, label=label, elem_id=f"{elem_prefix}_{name}", min_width=90)
    return SamplingExtras(accordion, components)


def extras_request_fields(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Widget values (EXTRA_FIELDS order) -> request fields. An empty eta is the sampler's default (None).
    Raises ValueError with a plain message for a value that is not a number."""
    fields: dict[str, Any] = {}
    for (name, label, default), value in zip(EXTRA_FIELDS, values):
        if name == "rng":
            fields[name] = str(value or default)
            continue
        if name == "eta" and value in (None, ""):
            fields[name] = None
            continue
        try:
            number = float(default if value in (None, "") else value)
        except (TypeError, ValueError):
            raise ValueError(f"{label}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{label}: {value!r} is not a finite number")
        fields[name] = int(number) if name in _INTEGERS else number
    return fields
