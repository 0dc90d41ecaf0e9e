"""Compare tab: what a LoRA does, at a glance.

Pick prompt, seed, LoRA(s) and weight -> *without* and *with* renders at one seed and the same
settings, in an image slider and side by side, plus a difference heatmap with its colour scale and
the numbers (mean absolute difference, share of pixels changed). A weight sweep renders a labelled
X/Y grid (weights across, LoRAs down; infotext embedded, downloadable; an interrupted sweep shows the
cells done). The LoRA inspector charts where one of the picked LoRAs acts.

Handlers only translate widgets into `lora_ui.compare` requests: each comparison or sweep is one
job on the one worker; while its future runs, the generator handlers poll `worker.progress()` and
yield the progress bar, so the page stays responsive. Bad input -> a warning toast, no traceback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import gradio as gr

from lora_ui import compare as cmp
from lora_ui.ui import core_access as core
from lora_ui.ui import notify
from lora_ui.ui.inspector import InspectorHandlers, InspectorPanel, build_inspector, picked_names
from lora_ui.ui.txt2img_tab import (POLL_SECONDS, PROGRESS_CSS, WorkerHandlers, progress_html, request_fields,
                                    sampler_choices)

DEFAULT_STEPS = 20


def numbers_markdown(result: cmp.CompareResult) -> str:
    s = result.stats
    return (f"**Mean absolute difference:** {s.mean_abs_diff:.2f} / 255  \n"
            f"**Pixels changed:** {100 * s.changed_share:.1f}% (a channel moved by more than {s.threshold}/255)  \n"
            f"**Largest difference:** {s.max_abs_diff} / 255  \n"
            f"**Seed:** {result.seed}  \n"
            f"**With:** `{result.with_prompt}`")


def sweep_caption(result: cmp.SweepResult, path: Path) -> str:
    """What the sweep rendered and where it is saved; an interrupted sweep says so first."""
    caption = (f"{len(result.loras)} LoRA × {len(result.weights)} weights, seed {result.seed}, "
               f"{result.renders} renders (the baseline once). Saved to `{path}`.")
    if result.interrupted:
        caption = (f"**⚠ Interrupted after {result.cells_done} of {result.cells_total} cells**: the grey "
                   f"'interrupted' cells were not rendered.  \n{caption}")
    return caption


class CompareHandlers(WorkerHandlers):
    """Plain-method handlers over the AppContext (unit-tested without a browser)."""

    def __init__(self, ctx: Any, request_factory: Callable[..., Any] | None = None,
                 poll_seconds: float = POLL_SECONDS, grids_dir: Path | None = None) -> None:
        super().__init__(ctx, request_factory, poll_seconds)
        self.grids_dir = grids_dir

    # ---- helpers
    def _base_request(self, prompt: str, negative: str, sampler: str, schedule: str, steps: Any, cfg: Any,
                      width: Any, height: Any, seed: Any) -> Any:
        fields = request_fields(prompt, negative, sampler, schedule, steps, cfg, width, height, seed,
                                1, 1, 1, save_images=False, limits=core.limits(self.ctx),
                                default_size=core.default_size(self.ctx))
        return self.request_factory(**fields)

    def _run_job(self, submit: Callable[[], Any], idle_values: Callable[[str], tuple], refused: str,
                 failed: str) -> Generator[tuple, None, Any]:
        """`submit()` the job (bad input or a stopped worker -> a '<refused>: why' warning), yield the
        progress bar until it is done, and return its result (`result = yield from ...`), or None
        after a '<failed>: why' warning (the job failed on the worker: bad LoRA file, interrupted ...)."""
        try:
            future = submit()
        except Exception as exc:  # CompareError, ValueError, WorkerStopped: say so, plainly
            notify.warn(f"{refused}: {exc}")
            yield idle_values("")
            return None
        while not future.done():
            yield idle_values(progress_html(core.progress_view(self.ctx.worker.progress(with_preview=False))))
            time.sleep(self.poll_seconds)
        try:
            return future.result()
        except Exception as exc:
            notify.warn(f"{failed}: {exc}")
            yield idle_values("")
            return None

    def _grid_path(self, seed: int) -> Path:
        """A1111 keeps grids in <outputs>/txt2img-grids/<date>/; never overwrite one."""
        folder = self.grids_dir or core.outputs_path(self.ctx) / "txt2img-grids" / date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%H%M%S")
        for n in range(1000):
            path = folder / f"sweep-{seed}-{stamp}{'' if n == 0 else f'-{n}'}.png"
            if not path.exists():
                return path
        raise RuntimeError(f"could not find a free file name in {folder}")

    # ---- events
    def lora_choices(self) -> Any:
        """Refresh the library, then offer its names."""
        try:
            core.refresh_library(self.ctx)
        except Exception as exc:  # a folder that vanished: keep the old list, say why
            notify.warn(f"Could not refresh the LoRA list: {exc}")
        return gr.update(choices=core.names_in(core.library_entries(self.ctx)))

    def compare(self, prompt: str, negative: str, loras: Any, weight: Any, sampler: str, schedule: str,
                steps: Any, cfg: Any, width: Any, height: Any, seed: Any) -> Iterator[tuple]:
        """Yields (progress, slider, without, with, heatmap, numbers)."""
        keep = gr.update()

        def progress_only(html: str) -> tuple:
            return (html, keep, keep, keep, keep, keep)

        def submit() -> Any:
            base = self._base_request(prompt, negative, sampler, schedule, steps, cfg, width, height, seed)
            pairs = [(name, weight) for name in picked_names(loras)]
            return cmp.submit_compare(self.ctx, cmp.CompareRequest(base=base, loras=pairs))

        result = yield from self._run_job(submit, progress_only, "Not compared", "Comparison failed")
        if result is None:
            return
        notify.warn_all(result.warnings)
        yield ("", (result.without, result.with_lora), result.without, result.with_lora, result.heatmap,
               numbers_markdown(result))

    def sweep(self, prompt: str, negative: str, loras: Any, weights_text: str, sampler: str, schedule: str,
              steps: Any, cfg: Any, width: Any, height: Any, seed: Any) -> Iterator[tuple]:
        """Yields (progress, grid image path, download file path, caption)."""
        keep = gr.update()

        def progress_only(html: str) -> tuple:
            return (html, keep, keep, keep)

        def submit() -> Any:
            weights = cmp.parse_weight_list(weights_text)
            base = self._base_request(prompt, negative, sampler, schedule, steps, cfg, width, height, seed)
            return cmp.submit_sweep(self.ctx, cmp.SweepRequest(base=base, weights=weights, loras=picked_names(loras)))

        result = yield from self._run_job(submit, progress_only, "No sweep", "Sweep failed")
        if result is None:
            return
        try:
            path = cmp.save_png(result.grid, self._grid_path(result.seed), result.infotext)
        except Exception as exc:  # a full disk or an unwritable outputs folder
            notify.warn(f"Sweep failed: the grid could not be saved: {exc}")
            yield progress_only("")
            return
        notify.warn_all(result.warnings)
        if result.interrupted:
            notify.info(f"Sweep interrupted after {result.cells_done} of {result.cells_total} cells: "
                        "showing the cells done.")
        yield ("", str(path), str(path), sweep_caption(result, path))

    def interrupt(self) -> None:
        if not self.ctx.worker.interrupt():
            notify.info("Nothing is being rendered.")


@dataclass
class CompareTab:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    lora: gr.Dropdown                 # multiselect: names of library LoRAs
    weight: gr.Slider
    refresh: gr.Button
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    generate: gr.Button
    interrupt: gr.Button
    progress: gr.HTML
    slider: gr.ImageSlider
    without: gr.Image
    with_lora: gr.Image
    heatmap: gr.Image
    numbers: gr.Markdown
    sweep_weights: gr.Textbox
    sweep_run: gr.Button
    sweep_progress: gr.HTML
    sweep_grid: gr.Image
    sweep_file: gr.File
    sweep_caption: gr.Markdown
    inspector: InspectorPanel


def build_compare_tab(ctx: Any, handlers: CompareHandlers | None = None) -> CompareTab:
    """Layout and events (call inside a `gr.Tab("Compare")` context)."""
    h = handlers or CompareHandlers(ctx)
    samplers, schedules = sampler_choices()
    model = core.current_model(ctx)
    default_size = int(getattr(model, "default_size", 0) or 0)
    names = core.names_in(core.library_entries(ctx))
    with gr.Row(elem_id="compare_toprow"):
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt (LoRA tags are taken out for the 'without' side)", lines=2,
                                elem_id="compare_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="compare_neg_prompt")
        with gr.Column(scale=1, min_width=180):
            generate = gr.Button("Generate comparison", variant="primary", elem_id="compare_generate", size="lg")
            interrupt = gr.Button("Interrupt", elem_id="compare_interrupt", size="sm")
    with gr.Row(elem_id="compare_main"):
        with gr.Column(scale=1, elem_id="compare_settings"):
            with gr.Row(equal_height=True):
                lora = gr.Dropdown(names, value=[], multiselect=True, allow_custom_value=True, label="LoRA(s)",
                                   elem_id="compare_lora", scale=5)
                refresh = gr.Button("Refresh", elem_id="compare_refresh", scale=0, min_width=80, size="sm")
            weight = gr.Slider(-2, 2, value=1, step=0.05, label="LoRA weight", elem_id="compare_weight")
            with gr.Row():
                sampler = gr.Dropdown(samplers, value="Euler a" if "Euler a" in samplers else samplers[0],
                                      label="Sampling method", elem_id="compare_sampler")
                schedule = gr.Dropdown(schedules, value=schedules[0], label="Schedule type", elem_id="compare_schedule")
            steps = gr.Slider(1, core.limits(ctx).max_steps, value=DEFAULT_STEPS, step=1, label="Sampling steps", elem_id="compare_steps")
            with gr.Row():
                width = gr.Slider(0, core.limits(ctx).max_size, value=default_size, step=8, label="Width (0 = model default)",
                                  elem_id="compare_width")
                height = gr.Slider(0, core.limits(ctx).max_size, value=default_size, step=8, label="Height (0 = model default)",
                                   elem_id="compare_height")
            cfg = gr.Slider(0, 30, value=7, step=0.5, label="CFG Scale", elem_id="compare_cfg_scale")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random, the same for both sides)",
                             elem_id="compare_seed")
        with gr.Column(scale=2, elem_id="compare_results"):
            progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="compare_progress")
            slider = gr.ImageSlider(label="Without ◀ ▶ with", type="pil", format="png", interactive=False,
                                    elem_id="compare_slider", max_height=512)
            with gr.Row():
                without = gr.Image(label="Without LoRA", type="pil", format="png", interactive=False,
                                   elem_id="compare_without", height=300)
                with_lora = gr.Image(label="With LoRA", type="pil", format="png", interactive=False,
                                     elem_id="compare_with", height=300)
            with gr.Row():
                heatmap = gr.Image(label="Difference (largest channel |Δ|, 0–255)", type="pil", format="png",
                                   interactive=False, elem_id="compare_heatmap", height=300)
                numbers = gr.Markdown("", elem_id="compare_numbers")
    with gr.Accordion("Weight sweep (X/Y grid)", open=True, elem_id="compare_sweep"):
        with gr.Row(equal_height=True):
            sweep_weights = gr.Textbox(cmp.DEFAULT_WEIGHTS_TEXT, label="Weights (commas; ranges: 0-1 (+0.25), 0-1 [5])",
                                       elem_id="compare_sweep_weights", scale=5)
            sweep_run = gr.Button("Render sweep", variant="primary", elem_id="compare_sweep_run", scale=1)
        sweep_progress = gr.HTML("", css_template=PROGRESS_CSS, elem_id="compare_sweep_progress")
        sweep_grid = gr.Image(label="Sweep grid", type="filepath", format="png", interactive=False,
                              elem_id="compare_sweep_grid")
        with gr.Row():
            sweep_file = gr.File(label="Download grid (PNG with infotext)", interactive=False,
                                 elem_id="compare_sweep_file")
            sweep_caption = gr.Markdown("", elem_id="compare_sweep_caption")
    with gr.Accordion("LoRA inspector", open=False, elem_id="compare_inspector"):
        inspector = build_inspector(ctx, InspectorHandlers(ctx), lora=lora)

    settings = [sampler, schedule, steps, cfg, width, height, seed]
    gr.on([generate.click], h.compare, inputs=[prompt, negative, lora, weight, *settings],
          outputs=[progress, slider, without, with_lora, heatmap, numbers], concurrency_limit=None,
          show_progress="hidden")
    sweep_run.click(h.sweep, inputs=[prompt, negative, lora, sweep_weights, *settings],
                    outputs=[sweep_progress, sweep_grid, sweep_file, sweep_caption], concurrency_limit=None,
                    show_progress="hidden")
    interrupt.click(h.interrupt, concurrency_limit=None, show_progress="hidden")
    refresh.click(h.lora_choices, outputs=[lora], show_progress="hidden")
    return CompareTab(prompt, negative, lora, weight, refresh, sampler, schedule, steps, cfg, width, height, seed,
                      generate, interrupt, progress, slider, without, with_lora, heatmap, numbers, sweep_weights,
                      sweep_run, sweep_progress, sweep_grid, sweep_file, sweep_caption, inspector)
