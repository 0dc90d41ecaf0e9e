"""Settings tab: the settings that matter, persisted to `config.json` through `ctx.settings`
(default LoRA weight, card size, whether to add LoRA hashes to infotext). Where images are saved is
shown, not edited: server-wide paths come from the command line only."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr

from lora_ui.ui import core_access as core
from lora_ui.ui import notify


def validated(default_weight: Any, card_size: Any, add_hashes: Any) -> dict[str, Any]:
    """Widget values -> {settings attribute: value}. Raises ValueError naming the bad field.

    Where images are saved is not among them: server-wide paths are the operator's, set on the command
    line (--data-dir, --outputs-dir); the tab only shows the folder."""
    try:
        weight = float(default_weight)
    except (TypeError, ValueError):
        raise ValueError(f"default LoRA weight {default_weight!r} is not a number") from None
    if not math.isfinite(weight) or not -2.0 <= weight <= 2.0:
        raise ValueError(f"default LoRA weight must be between -2 and 2, got {default_weight!r}")
    try:
        size = int(float(card_size))
    except (TypeError, ValueError):
        raise ValueError(f"card size {card_size!r} is not a number") from None
    if not 64 <= size <= 512:
        raise ValueError(f"card size must be between 64 and 512 px, got {size}")
    return {"default_lora_weight": weight, "card_size": size, "add_lora_hashes_to_infotext": bool(add_hashes)}


def apply_settings(settings: Any, values: dict[str, Any]) -> None:
    """Set the values on the Settings object and write config.json; on a failed save the previous
    values are put back, so memory and file never disagree."""
    previous = {k: getattr(settings, k, None) for k in values}
    for key, value in values.items():
        setattr(settings, key, value)
    try:
        save = getattr(settings, "save", None)
        if save is None:
            raise RuntimeError("these settings cannot be saved (Settings.save is missing)")
        save()
    except Exception:
        for key, value in previous.items():
            setattr(settings, key, value)
        raise


@dataclass
class SettingsTab:
    default_weight: gr.Slider
    card_size: gr.Slider
    outputs_dir: gr.Textbox
    add_hashes: gr.Checkbox
    apply: gr.Button
    status: gr.Markdown
    applied: Any = None   # the apply event, so the app can chain a re-render after it


class SettingsHandlers:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def apply(self, default_weight: Any, card_size: Any, add_hashes: Any) -> str:
        settings = self.ctx.settings
        try:
            values = validated(default_weight, card_size, add_hashes)
            apply_settings(settings, values)
        except (ValueError, OSError, RuntimeError) as exc:
            notify.warn(f"Settings not saved: {exc}")
            return ""
        where = getattr(self.ctx.settings, "config_path", None)
        notify.info("Settings saved" + (f" to {where}" if where else ""))
        return "Saved."

    def current(self) -> tuple:
        return tuple(core.setting(self.ctx, f.attr) for f in core.SETTING_FIELDS if f.attr != "outputs_dir")


def build_settings_tab(ctx: Any) -> SettingsTab:
    h = SettingsHandlers(ctx)
    weight_f, size_f, dir_f, hash_f = core.SETTING_FIELDS
    default_weight = gr.Slider(-2, 2, value=float(core.setting(ctx, weight_f.attr)), step=0.05, label=weight_f.label,
                               elem_id="settings_default_weight")
    card_size = gr.Slider(64, 512, value=int(core.setting(ctx, size_f.attr)), step=8, label=size_f.label,
                          elem_id="settings_card_size")
    outputs_dir = gr.Textbox(value=str(core.outputs_path(ctx)), label=dir_f.label + " (set with --outputs-dir)",
                             elem_id="settings_outputs_dir", interactive=False)
    add_hashes = gr.Checkbox(value=bool(core.setting(ctx, hash_f.attr)), label=hash_f.label,
                             elem_id="settings_add_hashes")
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    status = gr.Markdown(elem_id="settings_status")
    applied = apply.click(h.apply, inputs=[default_weight, card_size, add_hashes], outputs=[status])
    return SettingsTab(default_weight, card_size, outputs_dir, add_hashes, apply, status, applied)
