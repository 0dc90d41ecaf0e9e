"""txt2img tab: prompt + negative prompt with Generate/Interrupt/Skip on the right, settings on the left,
gallery + infotext on the right, the LoRA card grid under the prompt and the active-LoRA sliders.

The handlers only translate widgets into a `Txt2ImgRequest` and hand it to the one `Worker`; while
its future runs, `Txt2ImgHandlers.generate` (a generator) polls `worker.progress()` and yields the
step/ETA text and the live preview, so the page stays responsive and nothing renders on the UI thread.
"""
from __future__ import annotations

import html
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr


from lora_ui import limits as app_limits
from lora_ui.limits import MAX_CFG, MAX_CLIP_SKIP, MAX_REQUEST_SEED
from lora_ui.ui.sampling_extras import EXTRA_NAMES, SamplingExtras, build_sampling_extras, extras_request_fields
from lora_ui.ui import core_access as core
from lora_ui.ui import notify
from lora_ui.ui.hires_fix import HiresControls, build_hires_accordion, hires_fields

POLL_SECONDS = 0.25
DEFAULT_SAMPLER = "DPM++ 2M"  # A1111 1.10's UI default


def sampler_choices() -> tuple[list[str], list[str]]:
    """Every A1111 sampler and schedule type, in A1111's order (the engine's registry is the one list)."""
    from lora_ui.engine.sampling.registry import SAMPLER_NAMES, SCHEDULE_NAMES

    return list(SAMPLER_NAMES), list(SCHEDULE_NAMES)


def _default_request_factory(**fields: Any) -> Any:
    from lora_ui.engine.txt2img import Txt2ImgRequest

    return Txt2ImgRequest(**fields)


def with_session_owner(request: Any) -> Any:
    """The request with `owner` = the Gradio session of the event being handled (the worker serves owners
    round-robin and cancels a closed page's jobs by it); unchanged outside an event or without the field."""
    from dataclasses import is_dataclass, replace

    from lora_ui.ui.session_jobs import current_session_hash

    session = current_session_hash()
    if session and is_dataclass(request) and getattr(request, "owner", "") is None:
        return replace(request, owner=session)
    return request


class WorkerHandlers:
    """What the render tabs' handlers share: the AppContext, how widget values become a request
    (`request_factory(**request_fields(...))`, default Txt2ImgRequest) and how often to poll progress."""

    def __init__(self, ctx: Any, request_factory: Callable[..., Any] | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.ctx = ctx
        self.request_factory = request_factory or _default_request_factory
        self.poll_seconds = poll_seconds


def _int_in(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{what} {value!r} is not a whole number")
    if not low <= number <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {int(number)}")
    return int(number)


def _float_in(value: Any, what: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{what} must be between {low:g} and {high:g}, got {value!r}")
    return number


def request_fields(prompt: str, negative: str, sampler: str, schedule: str, steps: Any, cfg: Any, width: Any,
                   height: Any, seed: Any, batch_size: Any, batch_count: Any, clip_skip: Any,
                   save_images: bool = True, limits: app_limits.Limits | None = None,
                   default_size: int | None = None) -> dict[str, Any]:
    """Widget values -> Txt2ImgRequest fields. Width/height 0 mean "the model's default size".
    Raises ValueError with a plain message for values the widgets should not have produced, or over
    the limits (lora_ui.limits, the same the REST API applies)."""
    limits = limits or app_limits.DEFAULT
    w = _int_in(width or 0, "width", 0, limits.max_size)
    h = _int_in(height or 0, "height", 0, limits.max_size)
    for what, size in (("width", w), ("height", h)):
        if size and size % 8:
            raise ValueError(f"{what} must be a multiple of 8, got {size}")
    seed_value = _int_in(seed if seed not in (None, "") else -1, "seed", -1, MAX_REQUEST_SEED)
    fields = dict(
        prompt=prompt or "",
        negative_prompt=negative or "",
        sampler=sampler,
        scheduler=schedule or "Automatic",
        steps=_int_in(steps, "steps", 1, limits.max_steps),
        cfg_scale=_float_in(cfg, "CFG scale", 0.0, MAX_CFG),
        width=w or None,
        height=h or None,
        seed=seed_value,
        batch_size=_int_in(batch_size, "batch size", 1, limits.max_batch_size),
        batch_count=_int_in(batch_count, "batch count", 1, limits.max_batch_count),
        clip_skip=_int_in(clip_skip, "clip skip", 1, MAX_CLIP_SKIP),
        save_images=bool(save_images),
    )
    errors = limits.request_errors(prompt=fields["prompt"], negative_prompt=fields["negative_prompt"],
                                   steps=fields["steps"], width=fields["width"], height=fields["height"],
                                   batch_size=fields["batch_size"], batch_count=fields["batch_count"],
                                   default_size=default_size)
    if errors:
        raise ValueError("; ".join(str(e) for e in errors))
    return fields


def progress_html(view: core.ProgressView) -> str:
    """A1111-like bar: a filled div of `fraction` width and 'Step 7/20 · 35% · ETA 3 s'."""
    pct = max(0.0, min(100.0, view.fraction * 100))
    return (f"<div class='lora-progress' data-step='{view.step}' data-steps='{view.steps}'>"
            f"<div class='lora-progress-bar' style='width:{pct:.1f}%'></div>"
            f"<div class='lora-progress-text'>{html.escape(view.text())}</div></div>")


def _png_bytes_to_image(data: bytes | None):
    if not data:
        return None
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _gallery_paths(result: Any, temp_dir: Path) -> list[str]:
    """Files the gallery shows and 'use last image as preview' copies: the saved PNGs, or temporary
    PNGs with the infotext embedded when saving is off."""
    saved = [str(p) for p in (getattr(result, "saved_paths", None) or []) if p and Path(p).is_file()]
    images = list(getattr(result, "images", None) or [])
    if len(saved) == len(images) and saved:
        return saved
    from lora_ui.infotext import png_info_with_infotext

    infotexts = list(getattr(result, "infotexts", None) or [])
    paths = []
    temp_dir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        text = infotexts[i] if i < len(infotexts) else ""
        handle = tempfile.NamedTemporaryFile(suffix=".png", dir=temp_dir, delete=False)
        handle.close()
        image.save(handle.name, format="PNG", pnginfo=png_info_with_infotext(text) if text else None)
        paths.append(handle.name)
    return paths


@dataclass
class GenerationOutput:
    """One yield of `generate`: values for (progress, preview, gallery, infotext, last images, last seeds, last infotexts)."""

    progress: str
    preview: Any
    gallery: Any
    infotext: Any
    last_images: Any
    last_seeds: Any
    last_infotexts: Any

    def values(self) -> tuple:
        return (self.progress, self.preview, self.gallery, self.infotext, self.last_images, self.last_seeds,
                self.last_infotexts)


def txt2img_extra_fields(*values: Any) -> dict[str, Any]:
    """The txt2img tab's widgets after clip skip -> request fields: the seed extras / sampler options
    (sampling_extras.EXTRA_FIELDS order), then the hires fix's (hires_fix.hires_fields order)."""
    n = len(EXTRA_NAMES)
    fields = extras_request_fields(values[:n]) if values[:n] else {}
    fields.update(hires_fields(*values[n:]))
    return fields


class Txt2ImgHandlers(WorkerHandlers):
    """Plain-method handlers over the AppContext (unit-tested without a browser)."""

    def __init__(self, ctx: Any, request_factory: Callable[..., Any] | None = None,
                 poll_seconds: float = POLL_SECONDS, temp_dir: Path | None = None) -> None:
        super().__init__(ctx, request_factory, poll_seconds)
        self.temp_dir = temp_dir or Path(tempfile.gettempdir()) / "lora-ui-images"

    def generate(self, prompt: str, negative: str, sampler: str, schedule: str, steps: Any, cfg: Any,
                 width: Any, height: Any, seed: Any, batch_size: Any, batch_count: Any,
                 clip_skip: Any, *extra_values: Any) -> Iterator[tuple]:
        """`extra_values`: the tab's own widgets after clip skip, turned into request fields by
        `extra_fields` (txt2img: the seed extras / sampler options, then the hires fix)."""
        keep = gr.update()
        try:
            fields = request_fields(prompt, negative, sampler, schedule, steps, cfg, width, height, seed,
                                    batch_size, batch_count, clip_skip, limits=app_limits.of(self.ctx.settings),
                                    default_size=core.default_size(self.ctx))
            fields["add_lora_hashes"] = bool(getattr(self.ctx.settings, "add_lora_hashes_to_infotext", True))
            fields.update(self.extra_fields(*extra_values))
            request = with_session_owner(self.request_factory(**fields))
        except (ValueError, TypeError) as exc:
            notify.warn(f"Not generated: {exc}")
            yield GenerationOutput("", keep, keep, keep, keep, keep, keep).values()
            return
        worker = self.ctx.worker
        try:
            future = self.submit(worker, request)
        except Exception as exc:  # e.g. the worker was shut down
            notify.warn(f"Not generated: {exc}")
            yield GenerationOutput("", keep, keep, keep, keep, keep, keep).values()
            return
        shown_step = None
        while not future.done():
            view = core.progress_view(worker.progress())
            preview = keep
            if view.preview_png is not None and (view.job_no, view.step) != shown_step:
                preview = gr.update(value=_png_bytes_to_image(view.preview_png), visible=True)
                shown_step = (view.job_no, view.step)
            yield GenerationOutput(progress_html(view), preview, keep, keep, keep, keep, keep).values()
            time.sleep(self.poll_seconds)
        try:
            result = future.result()
        except Exception as exc:  # the job failed; the worker itself keeps running
            notify.warn(f"Generation failed: {exc}")
            yield GenerationOutput("", gr.update(visible=False), keep, keep, keep, keep, keep).values()
            return
        notify.warn_all(str(w) for w in (getattr(result, "warnings", None) or []))
        paths = _gallery_paths(result, self.temp_dir)
        infotexts = [str(t) for t in (getattr(result, "infotexts", None) or [])]
        seeds = [int(s) for s in (getattr(result, "seeds", None) or [])]
        if getattr(result, "interrupted", False):
            notify.info("Interrupted: showing what was done.")
        yield GenerationOutput("", gr.update(visible=False), paths, infotexts[0] if infotexts else "", paths, seeds,
                               infotexts).values()

    extra_fields = staticmethod(txt2img_extra_fields)  # the widgets after clip skip -> request fields

    @staticmethod
    def submit(worker: Any, request: Any) -> Any:
        return worker.txt2img(request) if hasattr(worker, "txt2img") else worker.submit(request)

    def interrupt(self) -> None:
        if not self.ctx.worker.interrupt():
            notify.info("Nothing is being generated.")

    def skip(self) -> None:
        if not self.ctx.worker.skip():
            notify.info("Nothing is being generated.")

    @staticmethod
    def random_seed() -> int:
        return -1

    @staticmethod
    def reuse_seed(last_seeds: list[int] | None, selected: int | None) -> Any:
        """The seed of the selected gallery image (or the first one) of the last generation."""
        if not last_seeds:
            notify.warn("No image generated yet: nothing to reuse.")
            return gr.update()
        index = selected if selected is not None and 0 <= selected < len(last_seeds) else 0
        return last_seeds[index]

    @staticmethod
    def select_image(last_infotexts: list[str] | None, evt: gr.SelectData) -> tuple[str, int]:
        index = int(evt.index) if evt is not None and evt.index is not None else 0
        texts = last_infotexts or []
        return (texts[index] if 0 <= index < len(texts) else ""), index


@dataclass
class Txt2ImgTab:
    prompt: gr.Textbox
    negative: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    batch_size: gr.Slider
    batch_count: gr.Slider
    clip_skip: gr.Slider
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.Textbox
    send_to_compare: gr.Button
    last_images: gr.State
    last_seeds: gr.State
    last_infotexts: gr.State
    selected_index: gr.State
    last_image: gr.State      # path of the selected/first image of the last generation (for previews)
    extras: SamplingExtras | None = None
    hires: HiresControls | None = None

    def field_components(self) -> dict[str, Any]:
        """Txt2ImgRequest field -> component, for PNG Info's 'send to txt2img'."""
        main = {"negative_prompt": self.negative, "sampler": self.sampler, "scheduler": self.schedule,
                "steps": self.steps, "cfg_scale": self.cfg, "width": self.width, "height": self.height,
                "seed": self.seed, "clip_skip": self.clip_skip}
        return {**main, **(self.extras.components if self.extras is not None else {}),
                **(self.hires.field_components() if self.hires is not None else {})}


PROGRESS_CSS = """
.lora-progress { position: relative; height: 22px; border-radius: 6px; background: #e5e7eb22; overflow: hidden; }
.lora-progress-bar { position: absolute; left: 0; top: 0; bottom: 0; background: #f97316; transition: width .2s; }
.lora-progress-text { position: relative; font-size: 13px; line-height: 22px; padding-left: 8px; }
"""


def build_txt2img_tab(ctx: Any, lora_panes: Callable[[gr.Textbox, gr.State], None] | None = None,
                      handlers: Txt2ImgHandlers | None = None) -> Txt2ImgTab:
    """Layout (call inside a Blocks/Tab context). `lora_panes(prompt, last_image)` builds the active-LoRA
    rows and the card grid under the prompt (A1111's extra-networks place)."""
    h = handlers or Txt2ImgHandlers(ctx)
    last_images, last_seeds, last_infotexts = gr.State([]), gr.State([]), gr.State([])
    selected_index, last_image = gr.State(None), gr.State(None)
    samplers, schedules = sampler_choices()
    model = core.current_model(ctx)
    default_size = int(getattr(model, "default_size", 0) or 0)
    # A1111's two columns: prompt, extra networks and settings on the left; Generate and the results on the
    # right, from the top of the tab, so the output image is in view after Generate at 1366x768.
    with gr.Row(elem_id="txt2img_main"):
        with gr.Column(scale=3, elem_id="txt2img_settings"):
            with gr.Column(elem_id="txt2img_toprow"):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt; <lora:name:weight> tags apply LoRAs",
                                    elem_id="txt2img_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            if lora_panes is not None:
                with gr.Column(elem_id="txt2img_lora_area"):
                    lora_panes(prompt, last_image)
            with gr.Row():
                sampler = gr.Dropdown(samplers, value=DEFAULT_SAMPLER,
                                      label="Sampling method", elem_id="txt2img_sampler")
                schedule = gr.Dropdown(schedules, value=schedules[0], label="Schedule type",
                                       elem_id="txt2img_schedule")
            steps = gr.Slider(1, core.limits(ctx).max_steps, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(0, core.limits(ctx).max_size, value=default_size, step=8, label="Width (0 = model default)",
                                  elem_id="txt2img_width")
                height = gr.Slider(0, core.limits(ctx).max_size, value=default_size, step=8, label="Height (0 = model default)",
                                   elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, core.limits(ctx).max_batch_count, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, core.limits(ctx).max_batch_size, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="txt2img_seed", scale=4)
                random_seed = gr.Button("Random", elem_id="txt2img_random_seed", scale=0, min_width=70, size="sm")
                reuse_seed = gr.Button("Reuse", elem_id="txt2img_reuse_seed", scale=0, min_width=70, size="sm")
            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id="txt2img_clip_skip")
            extras = build_sampling_extras()
            hires = build_hires_accordion(ctx, samplers, schedules, core.limits(ctx).max_size, core.limits(ctx).max_steps)
        with gr.Column(scale=2, elem_id="txt2img_results"):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", size="sm", min_width=60)
                skip = gr.Button("Skip", elem_id="txt2img_skip", size="sm", min_width=60)
                send_to_compare = gr.Button("Send to compare", elem_id="txt2img_send_to_compare", size="sm",
                                            min_width=60)
            progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="txt2img_progress", js_on_load=None)
            preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id="txt2img_preview",
                               height=256)
            gallery = gr.Gallery(label="Output", columns=2, height=420, format="png", elem_id="txt2img_gallery",
                                 interactive=False)
            infotext = gr.Textbox(label="Generation parameters (infotext)", lines=4, interactive=False,
                                  elem_id="txt2img_infotext", buttons=["copy"])
    tab = Txt2ImgTab(prompt, negative, generate, interrupt, skip, sampler, schedule, steps, cfg, width, height,
                     seed, random_seed, reuse_seed, batch_size, batch_count, clip_skip, progress, preview, gallery,
                     infotext, send_to_compare, last_images, last_seeds, last_infotexts, selected_index, last_image,
                     extras, hires)

    inputs = [prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch_size, batch_count, clip_skip,
              *extras.inputs(), *hires.inputs]
    outputs = [progress, preview, gallery, infotext, last_images, last_seeds, last_infotexts]
    for trigger in (generate.click,):
        trigger(h.generate, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden").then(
            lambda paths: (paths[0] if paths else None, None), inputs=[last_images],
            outputs=[last_image, selected_index], show_progress="hidden")
    interrupt.click(h.interrupt, concurrency_limit=None, show_progress="hidden")
    skip.click(h.skip, concurrency_limit=None, show_progress="hidden")
    random_seed.click(h.random_seed, outputs=[seed], show_progress="hidden")
    reuse_seed.click(h.reuse_seed, inputs=[last_seeds, selected_index], outputs=[seed], show_progress="hidden")
    gallery.select(h.select_image, inputs=[last_infotexts], outputs=[infotext, selected_index],
                   show_progress="hidden").then(
        lambda paths, i: paths[i] if paths and i is not None and i < len(paths) else gr.update(),
        inputs=[last_images, selected_index], outputs=[last_image], show_progress="hidden")
    return tab
