"""Active LoRAs: one row per `<lora:...>` tag in the prompt — weight slider (−2…2, step 0.05), optional
TE/UNet split, block-weight preset, enable toggle, remove.

The prompt is the single source of truth. Rows are a fixed pool of `MAX_ROWS` shown/hidden rows
(reliable in gradio: no dynamic re-rendering while a slider is dragged). Sync both ways:
- prompt.change -> `rows_for_prompt` -> every row's widgets (programmatic updates fire `.change`,
  never `.input`/`.release`, so there is no loop);
- a slider `.release` / toggle `.input` -> `rewrite_tag` -> prompt.
A disabled LoRA leaves the prompt (so the next Generate runs without it) and its tag, as written,
waits in the per-session `disabled` state until it is enabled again or removed.
LoRAs beyond the pool get no row; a note under the rows says how many and which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import gradio as gr

from lora_ui import prompt as prompt_tags
from lora_ui.ui import core_access as core

MAX_ROWS = 8
WEIGHT_MIN, WEIGHT_MAX, WEIGHT_STEP = -2.0, 2.0, 0.05
NO_PRESET = "(none)"
# sd-webui-lora-block-weight's preset names (used when the engine's table is not importable).
FALLBACK_LBW_PRESETS = ("NONE", "ALL", "INS", "IND", "INALL", "MIDD", "OUTD", "OUTS", "OUTALL", "ALL0.5")


def lbw_presets() -> list[str]:
    """'(none)' then the engine's block-weight preset names."""
    try:
        from lora_ui.lora import block_weights

        names = getattr(block_weights, "PRESET_NAMES", None) or list(getattr(block_weights, "PRESETS", {}) or [])
    except ImportError:
        names = []
    return [NO_PRESET] + [str(n) for n in (names or FALLBACK_LBW_PRESETS)]


@dataclass(frozen=True)
class RowState:
    """What one Active-LoRAs row shows."""

    name: str                 # as written in the tag
    te: float
    unet: float | None        # None: no TE/UNet split
    lbw: str | None
    enabled: bool
    note: str                 # "" or a plain warning (not in library / other architecture)


def rows_for_prompt(prompt: str, disabled: dict[str, str], resolve: Callable[[str], Any | None],
                    model_arch: str) -> list[RowState]:
    """Rows for the prompt's tags (in prompt order), then the disabled LoRAs not in the prompt."""
    _, tags, _ = prompt_tags.extract_lora_tags(prompt or "")
    rows = [_row(t, True, resolve, model_arch) for t in tags]
    in_prompt = {t.name for t in tags}
    for name, tag_text in (disabled or {}).items():
        if name in in_prompt:
            continue
        _, parsed, _ = prompt_tags.extract_lora_tags(tag_text)
        if parsed:
            rows.append(_row(parsed[0], False, resolve, model_arch))
    return rows


def _row(tag: Any, enabled: bool, resolve: Callable[[str], Any | None], model_arch: str) -> RowState:
    entry = resolve(tag.name)
    if entry is None:
        note = f"⚠ '{tag.name}' is not in the LoRA library; it will be skipped"
    elif core.is_broken(entry):
        note = f"⚠ the file cannot be used: {core.entry_error(entry)}"
    elif not core.fits_model(core.entry_arch(entry), model_arch):
        note = (f"⚠ {core.arch_label(core.entry_arch(entry))} LoRA, the loaded model is "
                f"{core.arch_label(model_arch)}; it will be skipped")
    else:
        note = ""
    return RowState(name=tag.name, te=tag.te, unet=tag.unet, lbw=tag.lbw, enabled=enabled, note=note)


def format_tag(kind: str, name: str, te: float, unet: float | None, dyn: int | None = None,
               lbw: str | None = None, start: int | None = None, stop: int | None = None) -> str:
    """`<lora:name:te>` or `<lora:name:te:unet>`, then named `dyn= lbw= start= stop=` as needed."""
    fw = prompt_tags.format_weight
    parts = [name, fw(te)] + ([fw(unet)] if unet is not None else [])
    for key, value in (("dyn", dyn), ("lbw", lbw), ("start", start), ("stop", stop)):
        if value is not None and value != "":
            parts.append(f"{key}={value}")
    return f"<{kind or 'lora'}:{':'.join(parts)}>"


def _check_weight(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not a finite number")
    return round(number, 4)


def rewrite_tag(prompt: str, name: str, te: Any, split: bool, unet: Any, lbw: str | None) -> str:
    """The row's widgets -> the prompt with that LoRA's tag rewritten in place (dyn/start/stop and the
    tag kind kept as written). Raises ValueError for a weight that is not a finite number or a
    LoRA that is no longer in the prompt; the prompt is then unchanged (the caller keeps it)."""
    te_value = _check_weight(te, f"weight for '{name}'")
    unet_value = _check_weight(unet, f"UNet weight for '{name}'") if split else None
    preset = None if lbw in (None, "", NO_PRESET) else str(lbw)
    _, tags, _ = prompt_tags.extract_lora_tags(prompt or "")
    tag = next((t for t in tags if t.name == name), None)
    if tag is None:
        raise ValueError(f"'{name}' is no longer in the prompt")
    new_text = format_tag(tag.kind, tag.name, te_value, unet_value, tag.dyn, preset, tag.start, tag.stop)
    start, end = tag.span
    return prompt[:start] + new_text + prompt[end:]


def set_enabled(prompt: str, disabled: dict[str, str], name: str, enabled: bool) -> tuple[str, dict[str, str]]:
    """Disable: take the tag out of the prompt and keep it in `disabled`. Enable: put it back at the end.
    Returns new (prompt, disabled); the inputs are not mutated."""
    disabled = dict(disabled or {})
    prompt = prompt or ""
    if enabled:
        tag_text = disabled.pop(name, None)
        if tag_text is None:
            return prompt, disabled
        _, tags, _ = prompt_tags.extract_lora_tags(prompt)
        if any(t.name == name for t in tags):  # the user typed it again meanwhile: the prompt wins
            return prompt, disabled
        sep = "" if not prompt or prompt[-1].isspace() else " "
        return prompt + sep + tag_text, disabled
    _, tags, _ = prompt_tags.extract_lora_tags(prompt)
    tag = next((t for t in tags if t.name == name), None)
    if tag is None:
        return prompt, disabled
    disabled[name] = tag.text or prompt[tag.span[0]:tag.span[1]]
    return prompt_tags.remove_lora(prompt, name), disabled


def remove_row(prompt: str, disabled: dict[str, str], name: str, activation: str = "") -> tuple[str, dict[str, str]]:
    """Remove the LoRA's tag (and its activation text) from the prompt and forget it if disabled."""
    disabled = dict(disabled or {})
    disabled.pop(name, None)
    return prompt_tags.remove_lora(prompt or "", name, activation), disabled


# -- gradio wiring ---------------------------------------------------------------------------------

@dataclass
class LoraRow:
    group: gr.Group
    name: gr.State
    label: gr.Markdown
    enabled: gr.Checkbox
    weight: gr.Slider
    split: gr.Checkbox
    unet: gr.Slider
    lbw: gr.Dropdown
    remove: gr.Button

    def outputs(self) -> list:
        return [self.group, self.name, self.label, self.enabled, self.weight, self.split, self.unet, self.lbw]


@dataclass
class ActiveLoras:
    rows: list[LoraRow]
    disabled: gr.State
    empty: gr.Markdown
    overflow: gr.Markdown             # "N more LoRAs in the prompt have no slider ..." (hidden when all fit)

    def outputs(self) -> list:
        return [self.empty] + [c for row in self.rows for c in row.outputs()] + [self.overflow]


def _slider_update(value: float, **extra: Any) -> dict:
    # Keep a tag weight outside −2…2 visible instead of clamping it (and so rewriting the prompt).
    return gr.update(value=value, minimum=min(WEIGHT_MIN, value), maximum=max(WEIGHT_MAX, value), **extra)


def _names(rows: list[RowState]) -> str:
    shown = ", ".join(f"'{r.name}'" for r in rows[:5])
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def overflow_note(rows: list[RowState]) -> str:
    """"" when every row fits the pool; else which LoRAs got no row and what to do about them."""
    extra = rows[MAX_ROWS:]
    in_prompt = [r for r in extra if r.enabled]
    disabled = [r for r in extra if not r.enabled]
    notes = []
    if in_prompt:
        n = len(in_prompt)
        notes.append(f"⚠ {n} more LoRA{'s' if n > 1 else ''} in the prompt {'have' if n > 1 else 'has'} no slider: "
                     f"edit {'their tags' if n > 1 else 'its tag'} in the prompt ({_names(in_prompt)}; "
                     f"there are {MAX_ROWS} rows).")
    if disabled:
        n = len(disabled)
        notes.append(f"⚠ {n} disabled LoRA{'s' if n > 1 else ''} {'have' if n > 1 else 'has'} no row "
                     f"({_names(disabled)}): remove a LoRA above to free a row and enable "
                     f"{'them' if n > 1 else 'it'} again.")
    return "  \n".join(notes)


def row_updates(rows: list[RowState]) -> list:
    """Updates for `ActiveLoras.outputs()`: the 'no LoRAs' note, 8 values per pool row, then the note
    for the LoRAs that got no row (hidden when all fit)."""
    out: list = [gr.update(visible=not rows)]
    for i in range(MAX_ROWS):
        if i >= len(rows):
            out += [gr.update(visible=False), "", "", gr.update(), gr.update(), gr.update(), gr.update(),
                    gr.update()]
            continue
        r = rows[i]
        label = f"**{r.name}**" + (f"  \n<span class='lora-row-note'>{r.note}</span>" if r.note else "")
        out += [
            gr.update(visible=True),
            r.name,
            label,
            gr.update(value=r.enabled),
            _slider_update(r.te),
            gr.update(value=r.unet is not None),
            _slider_update(r.unet if r.unet is not None else r.te, visible=r.unet is not None),
            gr.update(value=r.lbw if r.lbw else NO_PRESET),
        ]
    note = overflow_note(rows)
    out.append(gr.update(value=note, visible=bool(note)))
    return out


def build_active_loras(ctx: Any, prompt: gr.Textbox) -> ActiveLoras:
    """The pool of rows (call inside a Blocks context). Wires both sync directions to `prompt`."""
    presets = lbw_presets()
    disabled = gr.State({})
    empty = gr.Markdown("No LoRAs in the prompt. Click a card below to add one.", elem_id="active_loras_empty")
    rows: list[LoraRow] = []
    for i in range(MAX_ROWS):
        with gr.Group(visible=False, elem_id=f"active_lora_{i}", elem_classes=["active-lora-row"]) as group:
            name = gr.State("")
            with gr.Row(equal_height=True):
                label = gr.Markdown(elem_id=f"active_lora_{i}_name", min_height=0)
                enabled = gr.Checkbox(value=True, label="on", elem_id=f"active_lora_{i}_enabled", scale=0,
                                      min_width=60)
                weight = gr.Slider(WEIGHT_MIN, WEIGHT_MAX, value=1.0, step=WEIGHT_STEP, label="weight",
                                   elem_id=f"active_lora_{i}_weight", scale=3)
                split = gr.Checkbox(value=False, label="TE/UNet split", elem_id=f"active_lora_{i}_split", scale=0,
                                    min_width=110)
                unet = gr.Slider(WEIGHT_MIN, WEIGHT_MAX, value=1.0, step=WEIGHT_STEP, label="UNet weight",
                                 visible=False, elem_id=f"active_lora_{i}_unet", scale=2)
                lbw = gr.Dropdown(presets, value=NO_PRESET, label="block weights", elem_id=f"active_lora_{i}_lbw",
                                  scale=1, min_width=110)
                remove = gr.Button("✕", elem_id=f"active_lora_{i}_remove", scale=0, min_width=40)
        rows.append(LoraRow(group, name, label, enabled, weight, split, unet, lbw, remove))
    overflow = gr.Markdown("", visible=False, elem_id="active_loras_overflow")
    active = ActiveLoras(rows, disabled, empty, overflow)
    handlers = ActiveLoraHandlers(ctx)

    prompt.change(handlers.rows, inputs=[prompt, disabled], outputs=active.outputs(), show_progress="hidden")
    disabled.change(handlers.rows, inputs=[prompt, disabled], outputs=active.outputs(), show_progress="hidden")
    # Handlers find their LoRA by the row's position among the prompt's tags (rows are built in that
    # order), read from the prompt the event carries: no dependence on when a per-row state arrived.
    for i, row in enumerate(rows):
        widgets = [prompt, disabled, row.weight, row.split, row.unet, row.lbw]
        rewrite = partial(handlers.rewrite_at, i)
        row.weight.release(rewrite, inputs=widgets, outputs=[prompt], show_progress="hidden")
        row.unet.release(rewrite, inputs=widgets, outputs=[prompt], show_progress="hidden")
        row.split.input(rewrite, inputs=widgets, outputs=[prompt], show_progress="hidden")
        row.split.input(lambda on: gr.update(visible=on), inputs=[row.split], outputs=[row.unet],
                        show_progress="hidden")
        row.lbw.input(rewrite, inputs=widgets, outputs=[prompt], show_progress="hidden")
        row.enabled.input(partial(handlers.toggle_at, i), inputs=[prompt, disabled, row.enabled],
                          outputs=[prompt, disabled], show_progress="hidden")
        row.remove.click(partial(handlers.remove_at, i), inputs=[prompt, disabled], outputs=[prompt, disabled],
                         show_progress="hidden")
    return active


class ActiveLoraHandlers:
    """Event handlers as plain methods (unit-tested without a browser)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def rows(self, prompt: str, disabled: dict[str, str]) -> list:
        resolve = lambda name: core.find_entry(self.ctx, name)  # noqa: E731
        return row_updates(rows_for_prompt(prompt, disabled, resolve, core.current_arch(self.ctx)))

    @staticmethod
    def name_at(prompt: str, disabled: dict[str, str], index: int) -> str:
        """The LoRA shown in pool row `index` for this prompt ("" when the row is empty)."""
        rows = rows_for_prompt(prompt, disabled, lambda name: None, "unknown")
        return rows[index].name if 0 <= index < len(rows) else ""

    def rewrite_at(self, index: int, prompt: str, disabled: dict[str, str], te: Any, split: bool, unet: Any,
                   lbw: str | None) -> str:
        return self.rewrite(prompt, self.name_at(prompt, disabled, index), te, split, unet, lbw)

    def toggle_at(self, index: int, prompt: str, disabled: dict[str, str], enabled: bool):
        return self.toggle(prompt, disabled, self.name_at(prompt, disabled, index), enabled)

    def remove_at(self, index: int, prompt: str, disabled: dict[str, str]):
        return self.remove(prompt, disabled, self.name_at(prompt, disabled, index))

    def rewrite(self, prompt: str, name: str, te: Any, split: bool, unet: Any, lbw: str | None) -> str:
        if not name:
            return prompt
        try:
            return rewrite_tag(prompt, name, te, split, unet, lbw)
        except ValueError as exc:
            gr.Warning(f"Weight not applied: {exc}")
            return prompt

    def toggle(self, prompt: str, disabled: dict[str, str], name: str, enabled: bool):
        if not name:
            return prompt, disabled
        return set_enabled(prompt, disabled, name, bool(enabled))

    def remove(self, prompt: str, disabled: dict[str, str], name: str):
        if not name:
            return prompt, disabled
        entry = core.find_entry(self.ctx, name)
        return remove_row(prompt, disabled, name, core.activation_text(entry) if entry is not None else "")
