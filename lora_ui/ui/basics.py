"""What every A1111 user reaches for first: the checkpoint and VAE pickers at the top of the page,
styles under the prompt, the Textual Inversion cards beside the LoRA cards, and the X/Y/Z plot.

Handlers are plain methods over the AppContext (unit-tested without a browser); they only read
listings and hand work to the one Worker (switches run there, between renders). Tolerant of a
context without the parts (test fakes): a missing part shows an empty picker.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from lora_ui.ui import core_access as core
from lora_ui.ui import notify

POLL_SECONDS = 0.25
AUTOMATIC = "Automatic"


# ------------------------------------------------------------------------------- checkpoint / VAE

class ModelBarHandlers:
    def __init__(self, ctx: Any, poll_seconds: float = POLL_SECONDS) -> None:
        self.ctx = ctx
        self.poll_seconds = poll_seconds

    def checkpoint_titles(self) -> list[str]:
        models = getattr(self.ctx, "models", None)
        current = self.current_title()
        model = core.current_model(self.ctx)
        loaded_path = getattr(model, "path", None) if model is not None else None
        try:
            listing = models.list() if hasattr(models, "list") else []
            # the loaded one under its hashed title, not a second time without the hash
            titles = [current if current and _same_path(c.path, loaded_path) else c.title for c in listing]
        except Exception as exc:  # noqa: BLE001 - a listing error must not break the page
            notify.warn(f"Could not list checkpoints: {exc}")
            titles = []
        if current and current not in titles:
            titles.insert(0, current)
        return titles

    def current_title(self) -> str | None:
        model = core.current_model(self.ctx)
        return getattr(model, "title", None) if model is not None else None

    def vae_choices(self) -> list[str]:
        vaes = getattr(getattr(self.ctx, "models", None), "vaes", None)
        return vaes.choices() if vaes is not None else [AUTOMATIC]

    def vae_selection(self) -> str:
        vaes = getattr(getattr(self.ctx, "models", None), "vaes", None)
        return vaes.selection if vaes is not None else AUTOMATIC

    def refresh_checkpoints(self):
        current = self.current_title()
        return gr.update(choices=self.checkpoint_titles(), value=current)

    def refresh_vaes(self):
        vaes = getattr(getattr(self.ctx, "models", None), "vaes", None)
        if vaes is not None:
            vaes.refresh()
        return gr.update(choices=self.vae_choices(), value=self.vae_selection())

    def refresh_vae_selection(self):
        """The picker's choices and the current selection, without rescanning the folder (page load)."""
        return gr.update(choices=self.vae_choices(), value=self.vae_selection())

    def switch_checkpoint(self, title: str, prompt: str) -> Iterator[tuple[Any, str]]:
        """Switch on the worker (between renders); yields (dropdown, status) while it loads, then the
        result with a line per LoRA of the prompt that does not fit the new model."""
        if not title or title == self.current_title():
            yield gr.update(), ""
            return
        worker = self.ctx.worker
        try:
            future = worker.switch_checkpoint(title, prompt or "")
        except Exception as exc:  # noqa: BLE001 - e.g. the worker is stopped
            notify.warn(f"Checkpoint not switched: {exc}")
            yield gr.update(value=self.current_title()), ""
            return
        started = time.monotonic()
        while not future.done():
            state = worker.progress(with_preview=False)
            text = getattr(state, "textinfo", "") or f"Loading checkpoint {title}"
            yield gr.update(), _status(f"{text} ({time.monotonic() - started:.0f} s)")
            time.sleep(self.poll_seconds)
        try:
            report = future.result()
        except Exception as exc:  # noqa: BLE001 - the old model stays loaded
            notify.warn(f"Checkpoint not switched (the previous one stays loaded): {exc}")
            yield gr.update(value=self.current_title()), ""
            return
        settings = getattr(self.ctx, "settings", None)
        if settings is not None and hasattr(settings, "sd_model_checkpoint"):
            settings.sd_model_checkpoint = report.model.title
            _save(settings)
        notify.warn_all(report.messages)
        lines = [f"Loaded {report.model.title} in {time.monotonic() - started:.1f} s"]
        if report.kept:
            lines.append("LoRAs kept: " + ", ".join(report.kept))
        lines += report.messages
        yield gr.update(choices=self.checkpoint_titles(), value=report.model.title), _status(*lines)

    def switch_vae(self, choice: str) -> str:
        vaes = getattr(getattr(self.ctx, "models", None), "vaes", None)
        if vaes is None or not choice:
            return ""
        try:
            vaes.check_choice(choice)
        except Exception as exc:  # noqa: BLE001 - VaeError: the message lists the valid choices
            notify.warn(str(exc))
            return ""
        vaes.selection = choice
        settings = getattr(self.ctx, "settings", None)
        if settings is not None and hasattr(settings, "sd_vae"):
            settings.sd_vae = choice
            _save(settings)
        return _status(f"VAE: {choice} (used from the next render)")


def _same_path(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError):
        return False


def _save(settings: Any) -> None:
    try:
        settings.save()
    except Exception as exc:  # noqa: BLE001 - the choice works for this run even if config.json is read-only
        notify.warn(f"The choice is used but not remembered: {exc}")


def _status(*lines: str) -> str:
    return "<div class='model-bar-status'>" + "<br>".join(html.escape(line) for line in lines if line) + "</div>"


@dataclass
class ModelBar:
    checkpoint: gr.Dropdown
    refresh_checkpoints: gr.Button
    vae: gr.Dropdown
    refresh_vae: gr.Button
    status: gr.HTML


def build_model_bar(ctx: Any, handlers: ModelBarHandlers | None = None) -> ModelBar:
    """A1111's top row: "Stable Diffusion checkpoint" and "SD VAE" with their refresh buttons."""
    h = handlers or ModelBarHandlers(ctx)
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(h.checkpoint_titles(), value=h.current_title(), label="Stable Diffusion checkpoint",
                                 elem_id="setting_sd_model_checkpoint", scale=4, allow_custom_value=False)
        refresh_ckpt = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40, size="sm")
        vae = gr.Dropdown(h.vae_choices(), value=h.vae_selection(), label="SD VAE", elem_id="setting_sd_vae", scale=2)
        refresh_vae = gr.Button("🔄", elem_id="refresh_sd_vae", scale=0, min_width=40, size="sm")
        status = gr.HTML("", elem_id="model_bar_status")
    refresh_ckpt.click(h.refresh_checkpoints, outputs=[checkpoint], show_progress="hidden")
    refresh_vae.click(h.refresh_vaes, outputs=[vae], show_progress="hidden")
    vae.input(h.switch_vae, inputs=[vae], outputs=[status], show_progress="hidden")
    return ModelBar(checkpoint, refresh_ckpt, vae, refresh_vae, status)


def wire_checkpoint_switch(bar: ModelBar, prompt: gr.Textbox, handlers: ModelBarHandlers) -> None:
    """The switch reads the txt2img prompt (its LoRAs are kept on the new model): wired once both exist."""
    bar.checkpoint.input(handlers.switch_checkpoint, inputs=[bar.checkpoint, prompt],
                         outputs=[bar.checkpoint, bar.status], show_progress="hidden", concurrency_limit=None)


# ----------------------------------------------------------------------------------------- styles

class StyleHandlers:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def db(self):
        from lora_ui.styles import for_context

        return for_context(self.ctx)

    def names(self) -> list[str]:
        try:
            return self.db().names()
        except Exception as exc:  # noqa: BLE001 - an unreadable styles.csv shows no styles, with a warning
            notify.warn(f"styles.csv could not be read: {exc}")
            return []

    def apply(self, names: list[str] | None, prompt: str, negative: str) -> tuple[Any, Any, Any]:
        """A1111's "apply styles": the boxes get the expanded text and the selection is cleared."""
        if not names:
            notify.info("Pick one or more styles first.")
            return gr.update(), gr.update(), gr.update()
        try:
            new_prompt, new_negative = self.db().apply(prompt or "", negative or "", names)
        except Exception as exc:  # noqa: BLE001 - StyleError: unknown (deleted) style
            notify.warn(str(exc))
            return gr.update(), gr.update(), gr.update()
        return new_prompt, new_negative, gr.update(value=[])

    def save(self, name: str, prompt: str, negative: str):
        from lora_ui.styles import PromptStyle

        try:
            self.db().save_style(PromptStyle((name or "").strip(), prompt or "", negative or ""))
        except Exception as exc:  # noqa: BLE001
            notify.warn(f"Style not saved: {exc}")
            return gr.update()
        notify.info(f"Style '{name.strip()}' saved to styles.csv")
        return gr.update(choices=self.names())


def build_styles_row(ctx: Any, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    h = StyleHandlers(ctx)
    with gr.Row(elem_id="txt2img_styles_row", equal_height=True):
        styles = gr.Dropdown(h.names(), value=[], multiselect=True, label="Styles", elem_id="txt2img_styles", scale=4)
        apply = gr.Button("Apply", elem_id="txt2img_style_apply", scale=0, min_width=70, size="sm")
        name = gr.Textbox(label="New style name", elem_id="txt2img_style_name", scale=2)
        save = gr.Button("Save as style", elem_id="txt2img_style_save", scale=0, min_width=110, size="sm")
    apply.click(h.apply, inputs=[styles, prompt, negative], outputs=[prompt, negative, styles], show_progress="hidden")
    save.click(h.save, inputs=[name, prompt, negative], outputs=[styles], show_progress="hidden")


# ------------------------------------------------------------------------------------- embeddings

class EmbeddingHandlers:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def rows(self) -> list[list[str]]:
        """[name, 'N vectors · shape' or 'skipped: reason'] for every embedding, loaded first."""
        models = getattr(self.ctx, "models", None)
        library = getattr(models, "embeddings", None) if models is not None else None
        model = core.current_model(self.ctx)
        if library is None or model is None or getattr(model, "pipe", None) is None:
            return []
        loaded, skipped = library.split(model)
        out = [[n, f"{e.vectors} vector{'s' if e.vectors != 1 else ''} · {e.shape}"] for n, e in loaded.items()]
        out += [[n, f"skipped: {reason}"] for n, (e, reason) in skipped.items()]
        return out

    def refresh(self):
        library = getattr(getattr(self.ctx, "models", None), "embeddings", None)
        if library is not None:
            library.refresh()
        return gr.update(samples=self.rows() or [["", "no embeddings in the embeddings folder"]])

    @staticmethod
    def insert(row: Any, prompt: str) -> Any:
        name = row[0] if isinstance(row, (list, tuple)) and row else None
        if not name:
            return gr.update()
        text = (prompt or "").rstrip()
        return f"{text}, {name}" if text else name


def build_embeddings_pane(ctx: Any, prompt: gr.Textbox) -> None:
    """Cards of the embeddings; a click adds the name to the prompt (A1111's Textual Inversion tab)."""
    h = EmbeddingHandlers(ctx)
    with gr.Row():
        refresh = gr.Button("🔄 Refresh", elem_id="ti_refresh", size="sm", scale=0, min_width=100)
    cards = gr.Dataset(components=[gr.Textbox(visible=False), gr.Textbox(visible=False)],
                       samples=h.rows() or [["", "no embeddings in the embeddings folder"]],
                       headers=["Embedding", "Vectors"], label="Textual Inversion", elem_id="ti_cards",
                       samples_per_page=48, layout="gallery")
    cards.click(h.insert, inputs=[cards, prompt], outputs=[prompt], show_progress="hidden")
    refresh.click(h.refresh, outputs=[cards], show_progress="hidden")


# ---------------------------------------------------------------------------------------- X/Y/Z plot

class XyzHandlers:
    def __init__(self, ctx: Any, poll_seconds: float = POLL_SECONDS) -> None:
        self.ctx = ctx
        self.poll_seconds = poll_seconds

    @staticmethod
    def axis_names() -> list[str]:
        from lora_ui import xyz

        return [a.label for a in xyz.AXES if a.supported]

    def run(self, fields: dict[str, Any], axes: list[tuple[str, str]]) -> Iterator[tuple[Any, Any, str]]:
        """fields: Txt2ImgRequest fields; axes: (type, values). Yields (gallery, infotext, progress)."""
        from lora_ui import xyz
        from lora_ui.engine.txt2img import Txt2ImgRequest

        keep = gr.update()
        try:
            request = Txt2ImgRequest(**fields)
            future = xyz.submit_xyz(self.ctx, request, [xyz.Axis(t, v) for t, v in axes if t and t != "Nothing"])
        except Exception as exc:  # noqa: BLE001 - XyzError / ValueError: say what is wrong, render nothing
            notify.warn(f"X/Y/Z plot not started: {exc}")
            yield keep, keep, ""
            return
        while not future.done():
            view = core.progress_view(self.ctx.worker.progress(with_preview=False))
            yield keep, keep, html.escape(f"X/Y/Z plot: {view.text()}")
            time.sleep(self.poll_seconds)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001
            notify.warn(f"X/Y/Z plot failed: {exc}")
            yield keep, keep, ""
            return
        notify.warn_all(result.warnings)
        images = [(result.grid, "grid")] + [(im, "") for plane in result.images for row in plane for im in row]
        yield images, result.infotext, ""


def build_xyz_panel(ctx: Any, t2i: Any) -> None:
    """An accordion under the txt2img settings: up to three axes; 'Run X/Y/Z plot' renders the grid with
    the txt2img settings as the base and shows it (then the cells) in the output gallery."""
    from lora_ui.ui.txt2img_tab import request_fields

    h = XyzHandlers(ctx)
    names = ["Nothing"] + [n for n in h.axis_names() if n != "Nothing"]
    with gr.Accordion("Script: X/Y/Z plot", open=False, elem_id="xyz_panel"):
        rows = []
        for letter, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
            with gr.Row():
                kind = gr.Dropdown(names, value=default, label=f"{letter.upper()} type", elem_id=f"xyz_{letter}_type",
                                   scale=1)
                values = gr.Textbox(label=f"{letter.upper()} values", elem_id=f"xyz_{letter}_values", scale=3,
                                    placeholder="1-5, 1-5 (+2), 1-10 [5], a, b, \"c, d\"")
            rows += [kind, values]
        run = gr.Button("Run X/Y/Z plot", elem_id="xyz_run", variant="secondary")
        status = gr.HTML("", elem_id="xyz_status")

    def start(prompt, negative, sampler, schedule, steps, cfg, width, height, seed, clip_skip, *axes):
        try:
            fields = request_fields(prompt, negative, sampler, schedule, steps, cfg, width, height, seed, 1, 1,
                                    clip_skip, save_images=False, limits=core.limits(ctx),
                                    default_size=core.default_size(ctx))
        except ValueError as exc:
            notify.warn(f"X/Y/Z plot not started: {exc}")
            yield gr.update(), gr.update(), ""
            return
        pairs = [(axes[i], axes[i + 1]) for i in range(0, len(axes), 2)]
        yield from h.run(fields, pairs)

    run.click(start, inputs=[t2i.prompt, t2i.negative, t2i.sampler, t2i.schedule, t2i.steps, t2i.cfg, t2i.width,
                             t2i.height, t2i.seed, t2i.clip_skip, *rows],
              outputs=[t2i.gallery, t2i.infotext, status], show_progress="hidden", concurrency_limit=None)
