"""What a LoRA does, shown side by side: with/without renders, a difference heatmap, a weight sweep grid.

Core module (no gradio). A comparison or a sweep is ONE compound job on the one worker
(`worker.submit(job(session), kind=..., job_count=renders)`), rendering with `session.txt2img(req)`,
so nothing else runs between its renders and the worker's progress counts them. The LoRA side is
produced only by writing `<lora:name:w>` tags into the prompt, so the worker's normal path
(library -> LoraManager.set_loras) applies them, and the *without* side is the same request with every LoRA tag removed. Both sides share one fixed seed.

Image arrays in this module are uint8 `H x W x 3` (RGB); differences are in 0..255 units.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from lora_ui.limits import MAX_SWEEP_RENDERS, MAX_SWEEP_WEIGHTS
from lora_ui.prompt import PromptSyntaxError, extract_lora_tags, format_weight, set_lora_weight

DEFAULT_WEIGHTS_TEXT = "0, 0.25, 0.5, 0.75, 1"
# A pixel counts as "changed" when one of its channels moved by more than this (0..255 units):
# small enough to catch any visible change, large enough to ignore 8-bit rounding noise.
DEFAULT_CHANGE_THRESHOLD = 2
# Heatmap colour scale (an inferno-like ramp): value 0 -> black, full scale -> pale yellow.
HEATMAP_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 0)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)

ProgressCallback = Callable[[int, int, str], None]  # (renders done, renders total, what is rendering)


class CompareError(ValueError):
    """A comparison or sweep cannot run as asked; the message says what to change. Nothing was rendered
    (or the partial work was dropped) when it is raised."""


class RenderInterrupted(CompareError):
    """The user interrupted a render of a comparison or sweep. A comparison shows nothing then; a
    sweep with at least one LoRA cell done returns a partial SweepResult instead (`interrupted=True`)."""


# ----------------------------------------------------------------------------------------- requests


@dataclass
class CompareRequest:
    """`base` is a Txt2ImgRequest (any dataclass with `prompt`, `seed`, `batch_size`, `batch_count`).

    `loras` (name, weight) pairs are written into the prompt as `<lora:name:weight>` for the *with*
    side (an existing tag of that name is rewritten); when `loras` is empty the prompt's own tags are
    the LoRA side. The *without* side is the prompt with every LoRA tag removed.
    """

    base: Any
    loras: Sequence[tuple[str, float]] = ()
    change_threshold: int = DEFAULT_CHANGE_THRESHOLD


@dataclass
class DiffStats:
    mean_abs_diff: float   # mean |a - b| over all pixels and channels, 0..255 units
    changed_share: float   # share of pixels (0..1) whose largest channel difference > threshold
    max_abs_diff: int      # largest channel difference, 0..255
    threshold: int

    def summary(self) -> str:
        return (f"Mean absolute difference: {self.mean_abs_diff:.2f} / 255 · "
                f"pixels changed (> {self.threshold}/255): {100 * self.changed_share:.1f}% · "
                f"largest difference: {self.max_abs_diff} / 255")


@dataclass
class CompareResult:
    without: Image.Image
    with_lora: Image.Image
    heatmap: Image.Image          # difference map with its colour scale drawn on the right
    stats: DiffStats
    seed: int
    without_prompt: str
    with_prompt: str
    without_infotext: str
    with_infotext: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class SweepRequest:
    """Columns are `weights`, rows are `loras` (names); empty `loras` -> the prompt's own LoRA tags.

    Every cell renders the prompt without its LoRA tags plus `<lora:row name:column weight>`; cells of
    weight 0 are the baseline (no LoRA), rendered once and reused.
    """

    base: Any
    weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    loras: Sequence[str] = ()


@dataclass(frozen=True)
class GridLayout:
    """Where things are in a grid image: labels on top (columns) and on the left (rows)."""

    left: int        # width of the row-label margin
    top: int         # height of the column-label margin
    cell_width: int
    cell_height: int
    rows: int
    columns: int

    @property
    def size(self) -> tuple[int, int]:
        return self.left + self.columns * self.cell_width, self.top + self.rows * self.cell_height

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, upper, right, lower) of one cell, for PIL's crop."""
        x0 = self.left + column * self.cell_width
        y0 = self.top + row * self.cell_height
        return x0, y0, x0 + self.cell_width, y0 + self.cell_height


@dataclass
class SweepResult:
    grid: Image.Image
    layout: GridLayout
    infotext: str                       # embedded in the grid PNG by `save_png`
    weights: list[float]
    loras: list[str]
    cells: list[list[Image.Image]]      # [row = LoRA][column = weight]
    baseline: Image.Image | None        # the single no-LoRA render (when a weight is 0)
    seed: int
    renders: int                        # how many images were actually rendered
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False           # stopped early: the cells in `missing` are placeholders
    missing: list[tuple[int, int]] = field(default_factory=list)  # (row, column) of cells not rendered

    @property
    def cells_total(self) -> int:
        return len(self.loras) * len(self.weights)

    @property
    def cells_done(self) -> int:
        return self.cells_total - len(self.missing)


# ------------------------------------------------------------------------------------ weight lists

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_RANGE_STEP = re.compile(rf"^({_NUMBER})\s*-\s*({_NUMBER})\s*\(\s*([+-]?\s*(?:\d+\.?\d*|\.\d+))\s*\)$")
_RANGE_COUNT = re.compile(rf"^({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]$")
_PLAIN = re.compile(rf"^{_NUMBER}$")


def parse_weight_list(text: str) -> list[float]:
    """"0, 0.25, 0.5" -> [0.0, 0.25, 0.5]. Also A1111's X/Y ranges: "0-1 (+0.25)" (step) and
    "0-1 [5]" (count, ends included). Raises CompareError naming the item that does not parse."""
    if text is None or not str(text).strip():
        raise CompareError(f"The weight list is empty: write weights separated by commas, e.g. {DEFAULT_WEIGHTS_TEXT}.")
    weights: list[float] = []
    items = [item.strip() for item in str(text).split(",")]
    for position, item in enumerate(items, start=1):
        if not item:
            raise CompareError(f"Item {position} of the weight list '{text}' is empty (two commas in a row?).")
        if _PLAIN.match(item):
            weights.append(float(item))
        elif m := _RANGE_STEP.match(item):
            start, end, step = float(m[1]), float(m[2]), float(m[3].replace(" ", ""))
            if step == 0 or (end - start) * step < 0:
                raise CompareError(f"The range '{item}' never reaches {m[2]} with step {m[3]}.")
            count = int(math.floor((end - start) / step + 1e-9)) + 1
            if count > MAX_SWEEP_WEIGHTS:
                raise CompareError(f"The range '{item}' has {count} weights; at most {MAX_SWEEP_WEIGHTS}.")
            weights.extend(round(start + i * step, 6) for i in range(count))
        elif m := _RANGE_COUNT.match(item):
            start, end, count = float(m[1]), float(m[2]), int(m[3])
            if count < 2:
                raise CompareError(f"The range '{item}' needs a count of at least 2 in [ ].")
            if count > MAX_SWEEP_WEIGHTS:
                raise CompareError(f"The range '{item}' has {count} weights; at most {MAX_SWEEP_WEIGHTS}.")
            weights.extend(round(start + (end - start) * i / (count - 1), 6) for i in range(count))
        else:
            raise CompareError(
                f"'{item}' (item {position} of the weight list) is not a number or a range; "
                f"write e.g. {DEFAULT_WEIGHTS_TEXT}, or 0-1 (+0.25), or 0-1 [5].")
    if len(weights) > MAX_SWEEP_WEIGHTS:
        raise CompareError(f"The weight list has {len(weights)} weights; at most {MAX_SWEEP_WEIGHTS}.")
    return weights


# --------------------------------------------------------------------------------- difference maths


def _as_rgb_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 H x W x 3."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def difference_stats(a: Image.Image, b: Image.Image, threshold: int = DEFAULT_CHANGE_THRESHOLD) -> tuple[DiffStats, np.ndarray]:
    """Numbers and the per-pixel map (uint8 H x W: largest channel |a - b|) of two same-size images."""
    if a.size != b.size:
        raise CompareError(f"The two images differ in size ({a.size[0]}x{a.size[1]} vs {b.size[0]}x{b.size[1]}).")
    if not 0 <= int(threshold) <= 254:
        raise CompareError(f"The change threshold must be between 0 and 254 (0..255 units), got {threshold}.")
    channel_diff = np.abs(_as_rgb_array(a).astype(np.int16) - _as_rgb_array(b).astype(np.int16))  # H x W x 3
    pixel_diff = channel_diff.max(axis=2).astype(np.uint8)                                         # H x W
    stats = DiffStats(
        mean_abs_diff=float(channel_diff.mean()),
        changed_share=float((pixel_diff > threshold).mean()),
        max_abs_diff=int(pixel_diff.max()),
        threshold=int(threshold),
    )
    return stats, pixel_diff


def colorize(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Float/uint array (any shape) -> uint8 (..., 3) colours of HEATMAP_STOPS; full_scale maps to 1."""
    t = np.clip(values.astype(np.float64) / max(float(full_scale), 1e-12), 0.0, 1.0)
    positions = np.array([p for p, _ in HEATMAP_STOPS])
    colours = np.array([c for _, c in HEATMAP_STOPS], dtype=np.float64)  # stops x 3
    channels = [np.interp(t, positions, colours[:, k]) for k in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def heatmap_image(pixel_diff: np.ndarray, min_side: int = 256) -> Image.Image:
    """Per-pixel difference (uint8 H x W) -> RGB heatmap, enlarged (nearest) so its short side is at
    least `min_side`, with a colour scale on the right labelled in 0..255 units. The scale's top is
    the largest difference (at least 1), so small changes stay visible; the label says the value."""
    height, width = pixel_diff.shape
    full_scale = max(int(pixel_diff.max()), 1)
    factor = max(1, math.ceil(min_side / min(height, width)))
    heat = Image.fromarray(colorize(pixel_diff, full_scale), "RGB").resize((width * factor, height * factor), Image.NEAREST)

    font = _font(14)
    bar_width, pad = 18, 8
    label_width = max(int(ImageDraw.Draw(heat).textlength(text, font=font)) for text in (str(full_scale), "0", "diff"))
    canvas = Image.new("RGB", (heat.width + pad + bar_width + pad + label_width + pad, heat.height), "white")
    canvas.paste(heat, (0, 0))
    # Vertical colour bar: top = full scale, bottom = 0.
    ramp = np.linspace(full_scale, 0, heat.height)[:, None].repeat(bar_width, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, full_scale), "RGB"), (heat.width + pad, 0))
    draw = ImageDraw.Draw(canvas)
    text_x = heat.width + pad + bar_width + pad
    draw.text((text_x, 0), str(full_scale), fill="black", font=font)
    draw.text((text_x, heat.height // 2 - 7), "diff", fill="black", font=font)  # the bundled font has no Δ
    draw.text((text_x, heat.height - 16), "0", fill="black", font=font)
    return canvas


# -------------------------------------------------------------------------------------------- grids


def make_grid(cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str], row_labels: Sequence[str],
              *, font_size: int | None = None) -> tuple[Image.Image, GridLayout]:
    """Labelled grid like A1111's X/Y plot: column labels on top, row labels on the left, cells
    pasted pixel-exact (no gaps). All cells must share one size."""
    if not cells or not cells[0]:
        raise CompareError("A grid needs at least one image.")
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise CompareError("The grid labels do not match its rows and columns.")
    cell_width, cell_height = cells[0][0].size
    if any(cell.size != (cell_width, cell_height) for row in cells for cell in row):
        raise CompareError("All grid images must have the same size.")

    size = font_size or max(12, min(32, cell_height // 8))
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, size // 2)
    left = pad * 2 + max(int(measure.textlength(label, font=font)) for label in row_labels)
    top = pad * 2 + size
    layout = GridLayout(left=left, top=top, cell_width=cell_width, cell_height=cell_height,
                        rows=len(row_labels), columns=len(column_labels))
    grid = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        x0, _, x1, _ = layout.cell_box(0, c)
        text_width = measure.textlength(label, font=font)
        draw.text(((x0 + x1 - text_width) / 2, pad), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        _, y0, _, y1 = layout.cell_box(r, 0)
        draw.text((pad, (y0 + y1 - size) / 2), label, fill="black", font=font)
        for c, cell in enumerate(cells[r]):
            grid.paste(cell.convert("RGB"), layout.cell_box(r, c)[:2])
    return grid, layout


def save_png(image: Image.Image, path: Path | str, infotext: str) -> Path:
    """Write a PNG with A1111's `parameters` text chunk (PNG Info reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", infotext)
    image.save(path, format="PNG", pnginfo=info)
    return path


def _quote_infotext_value(value: str) -> str:
    """A1111 JSON-quotes values containing ',', ':' or '"'."""
    return json.dumps(value, ensure_ascii=False) if any(ch in value for ch in ',:"') else value


def sweep_infotext(cell_infotext: str, weights: Sequence[float], loras: Sequence[str]) -> str:
    """A cell's infotext plus A1111's X/Y plot fields on its parameter line (the last line)."""
    extra = {
        "Script": "X/Y/Z plot",
        "X Type": "LoRA weight",
        "X Values": ", ".join(format_weight(w) for w in weights),
        "Y Type": "LoRA",
        "Y Values": ", ".join(loras),
    }
    fields = ", ".join(f"{key}: {_quote_infotext_value(value)}" for key, value in extra.items())
    text = cell_infotext.rstrip("\n")
    return f"{text}, {fields}" if text else fields


# ------------------------------------------------------------------------------------ prompt sides


def _strip_lora_tags(prompt: str) -> str:
    stripped, _tags, _warnings = extract_lora_tags(prompt)
    return stripped


def _prompt_lora_names(prompt: str) -> list[str]:
    _stripped, tags, _warnings = extract_lora_tags(prompt)
    return list(dict.fromkeys(tag.name for tag in tags))


def _with_lora_weight(prompt: str, name: str, weight: float) -> str:
    try:
        return set_lora_weight(prompt, name, weight)
    except PromptSyntaxError as exc:
        raise CompareError(f"Cannot write a tag for LoRA '{name}': {exc}.") from None


def _check_weight(name: str, weight: float) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise CompareError(f"The weight of LoRA '{name}' is not a number: {weight!r}.") from None
    if not math.isfinite(weight):
        raise CompareError(f"The weight of LoRA '{name}' must be a finite number, got {weight}.")
    return weight


def _check_known(library: Any, names: Sequence[str]) -> None:
    """With a library at hand, refuse unknown names before anything renders."""
    if library is None:
        return
    unknown = [name for name in names if library.resolve(name) is None]
    if unknown:
        listed = ", ".join(f"'{name}'" for name in unknown)
        raise CompareError(f"Unknown LoRA {listed}: no such file in the LoRA folders (check the name, or press Refresh).")


# ------------------------------------------------------------------------------------------ renders


def _worker_and_library(session_or_worker: Any) -> tuple[Any, Any]:
    """An AppContext (has .worker and .library) or a bare Worker (which may carry .library)."""
    worker = getattr(session_or_worker, "worker", session_or_worker)
    library = getattr(session_or_worker, "library", None) or getattr(worker, "library", None)
    return worker, library


def _fixed_seed(seed: Any) -> int:
    """-1 (random) -> one concrete seed shared by every render of a comparison."""
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise CompareError(f"The seed must be a whole number, got {seed!r}.") from None
    return random.randint(0, 2**32 - 2) if seed < 0 else seed  # A1111 draws seeds below 2**32 - 1


def _single_request(base: Any, prompt: str, seed: int) -> Any:
    if not dataclasses.is_dataclass(base):
        raise CompareError("The comparison needs a Txt2ImgRequest as its base request.")
    return dataclasses.replace(base, prompt=prompt, seed=seed, batch_size=1, batch_count=1)


def _render(session: Any, request: Any) -> Any:
    """One image on the worker thread (`WorkerSession.txt2img`: applies the prompt's LoRA set).
    An interrupted (so unfinished) render raises RenderInterrupted; its partial image is dropped."""
    from lora_ui.xyz import render_request

    result = render_request(session, request)  # an Img2ImgRequest base: both sides from the same init image
    if getattr(result, "interrupted", False) or getattr(session, "interrupted", False) or not result.images:
        raise RenderInterrupted("Rendering was interrupted before the comparison finished; nothing is shown.")
    return result


def _first_infotext(result: Any) -> str:
    infotexts = getattr(result, "infotexts", None) or [""]
    return infotexts[0]


def _result_warnings(result: Any) -> list[str]:
    return list(getattr(result, "warnings", None) or [])


def _check_applied(result: Any, prompt: str) -> None:
    """The worker reports what it applied; a LoRA side that applied nothing is not a comparison."""
    if hasattr(result, "loras") and not result.loras:
        detail = "; ".join(_result_warnings(result)) or "no LoRA in the prompt could be applied"
        raise CompareError(f"The LoRA side applied no LoRA ({detail}). Prompt: {prompt}")


def _report(on_progress: ProgressCallback | None, done: int, total: int, what: str) -> None:
    if on_progress is not None:
        on_progress(done, total, what)


@dataclass(frozen=True)
class _ComparePlan:
    base: Any
    seed: int
    without_prompt: str
    with_prompt: str
    threshold: int


def _plan_compare(request: CompareRequest, library: Any) -> _ComparePlan:
    """Every check that needs no render; raises CompareError before anything is queued."""
    base_prompt = getattr(request.base, "prompt", "") or ""
    loras = [(str(name).strip(), _check_weight(name, weight)) for name, weight in request.loras]
    if any(not name for name, _ in loras):
        raise CompareError("A LoRA in the comparison has an empty name.")
    with_prompt = base_prompt
    for name, weight in loras:
        with_prompt = _with_lora_weight(with_prompt, name, weight)
    if not _prompt_lora_names(with_prompt):
        raise CompareError("Nothing to compare: pick at least one LoRA (or put <lora:name:weight> in the prompt).")
    _check_known(library, _prompt_lora_names(with_prompt))
    try:
        threshold = int(request.change_threshold)
    except (TypeError, ValueError):
        raise CompareError(f"The change threshold must be a whole number, got {request.change_threshold!r}.") from None
    if not 0 <= threshold <= 254:
        raise CompareError(f"The change threshold must be between 0 and 254 (0..255 units), got {threshold}.")
    seed = _fixed_seed(getattr(request.base, "seed", -1))
    _single_request(request.base, base_prompt, seed)  # a base that is no request fails here, not on the worker
    # Exactly the text the worker encodes for the with side once it has taken the tags out, so the
    # two sides differ by the LoRA weights alone (a stray ", " left by a removed tag is a token).
    return _ComparePlan(request.base, seed, _strip_lora_tags(with_prompt), with_prompt, threshold)


def _compare_job(session: Any, plan: _ComparePlan, on_progress: ProgressCallback | None) -> CompareResult:
    _report(on_progress, 0, 2, "without LoRA")
    without = _render(session, _single_request(plan.base, plan.without_prompt, plan.seed))
    _report(on_progress, 1, 2, "with LoRA")
    with_result = _render(session, _single_request(plan.base, plan.with_prompt, plan.seed))
    _check_applied(with_result, plan.with_prompt)
    _report(on_progress, 2, 2, "done")

    without_image, with_image = without.images[0].convert("RGB"), with_result.images[0].convert("RGB")
    stats, pixel_diff = difference_stats(without_image, with_image, plan.threshold)
    return CompareResult(
        without=without_image,
        with_lora=with_image,
        heatmap=heatmap_image(pixel_diff),
        stats=stats,
        seed=plan.seed,
        without_prompt=plan.without_prompt,
        with_prompt=plan.with_prompt,
        without_infotext=_first_infotext(without),
        with_infotext=_first_infotext(with_result),
        warnings=list(dict.fromkeys(_result_warnings(without) + _result_warnings(with_result))),
    )


def submit_compare(session_or_worker: Any, request: CompareRequest,
                   on_progress: ProgressCallback | None = None) -> Future:
    """Check the request, then queue both renders as ONE worker job (nothing else runs between
    them); returns the Future of a CompareResult. Bad input raises CompareError here, before
    anything is queued. `on_progress` is called on the worker thread."""
    worker, library = _worker_and_library(session_or_worker)
    plan = _plan_compare(request, library)
    return worker.submit(lambda session: _compare_job(session, plan, on_progress), kind="compare", job_count=2)


def compare(session_or_worker: Any, request: CompareRequest, on_progress: ProgressCallback | None = None) -> CompareResult:
    """Render without and with the LoRA(s) at one seed and the same settings; diff them."""
    return submit_compare(session_or_worker, request, on_progress).result()


@dataclass(frozen=True)
class _SweepPlan:
    base: Any
    seed: int
    weights: list[float]
    names: list[str]
    plain_prompt: str
    baseline_prompt: str
    renders: int


def _plan_sweep(request: SweepRequest, library: Any) -> _SweepPlan:
    weights = [_check_weight("sweep", w) for w in request.weights]
    if not weights:
        raise CompareError(f"The weight list is empty: write weights separated by commas, e.g. {DEFAULT_WEIGHTS_TEXT}.")
    if len(weights) > MAX_SWEEP_WEIGHTS:
        raise CompareError(f"The weight list has {len(weights)} weights; at most {MAX_SWEEP_WEIGHTS}.")
    base_prompt = getattr(request.base, "prompt", "") or ""
    names: list[str] = []
    for name in (str(n).strip() for n in request.loras):
        if not name:
            raise CompareError("A LoRA in the sweep has an empty name.")
        if name not in names:
            names.append(name)
    names = names or _prompt_lora_names(base_prompt)
    if not names:
        raise CompareError("Nothing to sweep: pick at least one LoRA (or put <lora:name:weight> in the prompt).")
    _check_known(library, names)
    nonzero = sum(1 for w in weights if w != 0)
    renders = (1 if nonzero < len(weights) else 0) + len(names) * nonzero
    if renders > MAX_SWEEP_RENDERS:
        raise CompareError(f"This sweep needs {renders} renders; at most {MAX_SWEEP_RENDERS}: use fewer weights or LoRAs.")
    plain_prompt = _strip_lora_tags(base_prompt)
    for name in names:
        _with_lora_weight(plain_prompt, name, 1.0)  # a name that cannot be written as a tag fails now
    seed = _fixed_seed(getattr(request.base, "seed", -1))
    _single_request(request.base, plain_prompt, seed)
    # The baseline renders the very text each cell encodes after its one tag is taken out.
    baseline_prompt = _strip_lora_tags(_with_lora_weight(plain_prompt, names[0], 1.0))
    return _SweepPlan(request.base, seed, weights, names, plain_prompt, baseline_prompt, renders)


def placeholder_cell(size: tuple[int, int], text: str = "interrupted") -> Image.Image:
    """A neutral grey cell with `text` centred: stands in for a sweep cell that was not rendered."""
    cell = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(cell)
    font_size = max(6, min(48, size[1] // 8))
    while True:  # the largest size (down to 6) at which the text fits the cell's width
        font = _font(font_size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= 0.9 * size[0] or font_size <= 6:
            break
        font_size -= 1
    draw.text(((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top), text,
              fill=(235, 235, 235), font=font)
    return cell


class _AnyLora:
    """The sweep checked its LoRA names already (_plan_sweep): the X/Y/Z plan takes them as they are."""

    @staticmethod
    def resolve(name: str) -> Any:
        return name


def _sweep_job(session: Any, plan: _SweepPlan, on_progress: ProgressCallback | None) -> SweepResult:
    """The sweep is the X/Y/Z plot preset X = "LoRA weight", Y = "LoRA" (lora_ui.xyz, the one grid engine):
    weight-0 cells are the one shared no-LoRA baseline; an interrupt keeps the cells done."""
    from lora_ui import xyz

    base = _single_request(plan.base, plan.plain_prompt, plan.seed)
    xyz_plan = xyz.plan_xyz(SimpleNamespace(library=_AnyLora()), base,
                            [xyz.Axis("LoRA weight", [repr(float(w)) for w in plan.weights]),
                             xyz.Axis("LoRA", list(plan.names))], max_cells=10**6)

    def describe(position: tuple[int, int, int], cell: Any) -> str:
        x, y, _ = position
        weight = plan.weights[x]
        return "baseline (no LoRA)" if weight == 0 else f"{plan.names[y]} at {format_weight(weight)}"

    def check(position: tuple[int, int, int], cell: Any, result: Any) -> None:
        if plan.weights[position[0]] != 0:
            _check_applied(result, cell.req.prompt)

    try:
        result = xyz.run_xyz(session, xyz_plan, on_progress, describe=describe, check=check)
    except xyz.XyzInterrupted:
        result = None
    lora_done = result is not None and any(
        (x, y, 0) not in result.missing for y in range(len(plan.names))
        for x, w in enumerate(plan.weights) if w != 0)
    if not lora_done:
        raise RenderInterrupted("Rendering was interrupted before any LoRA cell of the sweep was done; "
                                "nothing is shown.")
    cells = [list(row) for row in result.images[0]]
    texts = result.infotexts[0]
    missing = [(y, x) for x, y, _ in result.missing]
    zero = [x for x, w in enumerate(plan.weights) if w == 0]
    baseline = next((cells[y][x] for y in range(len(cells)) for x in zero if (y, x) not in missing), None)
    first_lora = next((texts[y][x] for y in range(len(cells)) for x, w in enumerate(plan.weights)
                       if w != 0 and texts[y][x]), "")
    baseline_text = next((texts[y][x] for y in range(len(cells)) for x in zero if texts[y][x]), "")
    grid, layout = make_grid(cells, [format_weight(w) for w in plan.weights], plan.names)
    return SweepResult(
        grid=grid,
        layout=layout,
        infotext=sweep_infotext(first_lora or baseline_text, plan.weights, plan.names),
        weights=list(plan.weights),
        loras=list(plan.names),
        cells=cells,
        baseline=baseline,
        seed=plan.seed,
        renders=result.renders,
        warnings=list(result.warnings),
        interrupted=result.interrupted,
        missing=sorted(missing),
    )


def submit_sweep(session_or_worker: Any, request: SweepRequest, on_progress: ProgressCallback | None = None) -> Future:
    """Check the request, then queue the whole sweep as ONE worker job; Future of a SweepResult."""
    worker, library = _worker_and_library(session_or_worker)
    plan = _plan_sweep(request, library)
    return worker.submit(lambda session: _sweep_job(session, plan, on_progress), kind="sweep", job_count=plan.renders)


def sweep(session_or_worker: Any, request: SweepRequest, on_progress: ProgressCallback | None = None) -> SweepResult:
    """Grid of LoRA (rows) x weight (columns); the no-LoRA baseline renders once for all 0 cells.
    Interrupted after some LoRA cells: a partial result (`interrupted=True`, placeholders in `missing`)."""
    return submit_sweep(session_or_worker, request, on_progress).result()


# ------------------------------------------------------------------------- img2img strength x weight

def plan_strength_weight_grid(session_or_worker: Any, base: Any, strengths: Sequence[float],
                              weights: Sequence[float]) -> Any:
    """The img2img grid (issue #16) as an X/Y/Z plan: X = "LoRA weight" (columns), Y = "Denoising"
    (rows), one fixed seed and init image. `base` is an Img2ImgRequest whose prompt names the LoRA(s) with
    `<lora:name:w>` tags. Raises CompareError before anything is queued."""
    from lora_ui import xyz

    _, library = _worker_and_library(session_or_worker)
    if not hasattr(base, "denoising_strength") or not getattr(base, "init_images", None):
        raise CompareError("The strength x weight grid needs an img2img request with an init image.")
    names = _prompt_lora_names(getattr(base, "prompt", "") or "")
    if not names:
        raise CompareError("Nothing to compare: put a <lora:name:weight> tag in the prompt.")
    _check_known(library, names)
    weights = [_check_weight("grid", w) for w in weights]
    strengths = [float(s) for s in strengths]
    if not weights or not strengths:
        raise CompareError("The grid needs at least one denoising strength and one LoRA weight.")
    seed = _fixed_seed(getattr(base, "seed", -1))
    base = _single_request(base, base.prompt, seed)
    try:
        return xyz.plan_xyz(SimpleNamespace(library=library), base,
                            [xyz.Axis("LoRA weight", [repr(float(w)) for w in weights]),
                             xyz.Axis("Denoising", [repr(float(s)) for s in strengths])])
    except xyz.XyzError as exc:
        raise CompareError(str(exc)) from None


def submit_strength_weight_grid(session_or_worker: Any, base: Any, strengths: Sequence[float],
                                weights: Sequence[float], on_progress: ProgressCallback | None = None) -> Future:
    """Queue the img2img denoising-strength x LoRA-weight grid as ONE worker job; Future of an XyzResult
    (`grid`, per-cell `images` / `infotexts` [0][row][column], `labels`). Weight-0 cells share one render
    per strength (the no-LoRA baseline)."""
    from lora_ui import xyz

    worker, _ = _worker_and_library(session_or_worker)
    plan = plan_strength_weight_grid(session_or_worker, base, strengths, weights)
    return worker.submit(lambda session: xyz.run_xyz(session, plan, on_progress), kind="img2img_grid",
                         job_count=plan.renders)


# ------------------------------------------------------------------------------------- inspector

BLOCK_GROUPS = ("text encoder", "down", "mid", "up", "other")
_GROUP_HINTS = {
    "text encoder": "it changes what the prompt words mean (often a concept or trigger word)",
    "down": "the input (down) blocks shape composition and subject",
    "mid": "the middle block shapes overall composition",
    "up": "the output (up) blocks carry style, colour and texture",
}
_GROUP_PRESET = {"text encoder": None, "down": "INALL", "mid": "MIDD", "up": "OUTALL"}


def block_group(block: str) -> str:
    """'BASE'/'te1'/'text_encoder...' -> 'text encoder'; 'IN04'/'down_blocks.1' -> 'down';
    'M00'/'mid_block' -> 'mid'; 'OUT03'/'up_blocks.2' -> 'up'; anything else -> 'other'."""
    key = block.strip().lower()
    if key == "base" or key.startswith(("te", "text", "lora_te", "clip")):
        return "text encoder"
    if key.startswith(("in", "down", "input")):
        return "down"
    if key.startswith(("m0", "mid", "middle")) or key == "m":
        return "mid"
    if key.startswith(("out", "up", "output")):
        return "up"
    return "other"


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


@dataclass
class BlockProfile:
    """Where a LoRA acts: per-block ||ΔW|| in model order, and each group's share of the total
    squared norm (squares add up across blocks, so shares sum to 1)."""

    blocks: list[tuple[str, str, float]]     # (block id, group, norm), text encoder -> down -> mid -> up
    group_shares: dict[str, float]           # group -> share of sum of norm², groups that occur only

    def summary(self) -> str:
        if not self.blocks or not self.group_shares:
            return "This LoRA changes no weight of the model (all block norms are 0)."
        ranked = sorted(self.group_shares.items(), key=lambda kv: -kv[1])
        main, share = ranked[0]
        parts = ", ".join(f"{group} {100 * value:.0f}%" for group, value in ranked)
        top = sorted(self.blocks, key=lambda b: -b[2])[:3]
        text = (f"Weight change by part: {parts}. Largest blocks: "
                + ", ".join(f"{block} ({norm:.3g})" for block, _, norm in top) + ".")
        if main in _GROUP_HINTS and share >= 0.5:
            text += f" Mostly {main} ({100 * share:.0f}%): {_GROUP_HINTS[main]}."
            preset = _GROUP_PRESET.get(main)
            if preset:
                text += f" To keep only that part, try a block-weight preset such as lbw={preset}."
        else:
            text += " The change is spread over the model; block weights to try: lower the largest blocks first."
        return text


def block_profile(norms: dict[str, float]) -> BlockProfile:
    """Order and group `LoraManager.delta_norms(path)` (block id -> ||ΔW||). Raises CompareError
    for a negative or non-finite norm (a broken engine result must not draw a misleading chart)."""
    rows: list[tuple[str, str, float]] = []
    for block, norm in norms.items():
        value = float(norm)
        if not math.isfinite(value) or value < 0:
            raise CompareError(f"Block '{block}' has an invalid weight-change size {norm!r}.")
        rows.append((str(block), block_group(str(block)), value))
    rows.sort(key=lambda row: (BLOCK_GROUPS.index(row[1]), _natural_key(row[0])))
    total = sum(norm * norm for _, _, norm in rows)
    shares: dict[str, float] = {}
    if total > 0:
        for _, group, norm in rows:
            shares[group] = shares.get(group, 0.0) + norm * norm / total
    return BlockProfile(blocks=rows, group_shares=shares)


def submit_delta_norms(session_or_worker: Any, name: str) -> Future:
    """Per-block ||ΔW|| of the LoRA `name`, computed on the worker thread by its LoraManager
    (`delta_norms(path)`), which knows the loaded model's blocks; Future of a dict."""
    worker, library = _worker_and_library(session_or_worker)
    name = str(name or "").strip()
    if not name:
        raise CompareError("Pick a LoRA to inspect.")
    if library is None:
        raise CompareError("No LoRA library is configured: nothing to inspect.")
    entry = library.resolve(name)
    if entry is None:
        raise CompareError(f"Unknown LoRA '{name}': no such file in the LoRA folders (check the name, or press Refresh).")
    path = Path(entry.path)

    def job(session: Any) -> dict[str, float]:
        manager = session.loras
        if not hasattr(manager, "delta_norms"):
            raise CompareError("This LoRA engine cannot measure per-block weight changes (delta_norms is missing).")
        return dict(manager.delta_norms(path))

    return worker.submit(job, kind="inspect")


def inspect_lora(session_or_worker: Any, name: str) -> BlockProfile:
    return block_profile(submit_delta_norms(session_or_worker, name).result())
