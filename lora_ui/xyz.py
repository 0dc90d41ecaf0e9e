"""X/Y/Z plot: a grid of renders over up to three generation parameters (A1111's "X/Y/Z plot" script).

The one grid engine of the app: the LoRA weight sweep (lora_ui.compare.sweep) is its preset
X = "LoRA weight", Y = "LoRA".

    plan = plan_xyz(env, base_request, [Axis("Steps", "2-4"), Axis("CFG Scale", "3, 7")])
    result = run_xyz(session, plan)      # inside ONE worker job (nothing else renders in between)

Values are written as in A1111 (`xyz_grid.py`): comma separated (CSV quoting: `a, b, "c, d"`); for
whole-number axes `1-5` (1,2,3,4,5), `1-5 (+2)` (1,3,5), `1-10 [5]` (5 values from 1 to 10, linspace,
truncated to whole numbers); for decimal axes `0-1 (+0.25)` and `0-1 [5]`. Axis types are the A1111
1.10 txt2img list (`AXES`, the index is what A1111 clients send in `script_args`) plus this app's
"LoRA weight" and "LoRA"; types this app cannot render are listed but refused with a clear message.

Rendering: the base seed -1 is drawn once for the whole plot (A1111 without "keep -1 for seeds"); cells
whose requests are identical (e.g. weight 0 of every LoRA: the no-LoRA baseline) render once; cells
are rendered grouped by checkpoint and VAE, and the checkpoint in use before the plot is restored after
it. Each cell keeps its own infotext; the grid's infotext is the first cell's plus A1111's `Script`,
`X Type`, `X Values`, ... fields. An interrupt keeps the cells done (grey placeholders for the rest).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

MAX_CELLS = 100


class XyzError(ValueError):
    """The plot's axes or values are not valid; the message names the axis and the value."""


class XyzInterrupted(XyzError):
    """Interrupted before any cell was rendered."""


@dataclass
class Cell:
    """What one cell renders: the request, and the checkpoint to render it with (None: the current)."""

    req: Any
    checkpoint: str | None = None


@dataclass(frozen=True)
class AxisType:
    label: str
    kind: type                                   # int, float or str (how values parse)
    apply: Callable[[Cell, Any, Any], None] | None  # (cell, value, env); None: not supported here
    phase: int = 1                               # lower applies first (LoRA before LoRA weight)
    plain_label: bool = False                    # the grid shows "value", not "Label: value"
    choices: Callable[[Any], list[str]] | None = None
    check: Callable[[Any, list], None] | None = None  # (env, values): raises XyzError

    @property
    def supported(self) -> bool:
        return self.apply is not None


def _field(name: str) -> Callable[[Cell, Any, Any], None]:
    def apply(cell: Cell, value: Any, env: Any) -> None:
        cell.req = dataclasses.replace(cell.req, **{name: value})
    return apply


def _prompt_sr(cell: Cell, value: str, env: Any, first: str = "") -> None:
    cell.req = dataclasses.replace(cell.req, prompt=cell.req.prompt.replace(first, value),
                                   negative_prompt=cell.req.negative_prompt.replace(first, value))


def _checkpoint(cell: Cell, value: str, env: Any) -> None:
    cell.checkpoint = value


def _size(cell: Cell, value: str, env: Any) -> None:
    width, height = _parse_size(value)
    cell.req = dataclasses.replace(cell.req, width=width, height=height)


def _parse_size(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(value))
    if not m:
        raise XyzError(f"Size value {value!r} is not WIDTHxHEIGHT (e.g. 512x768)")
    return int(m[1]), int(m[2])


def _styles(cell: Cell, value: str, env: Any) -> None:
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    prompt, negative = env.styles.apply(cell.req.prompt, cell.req.negative_prompt, names)
    cell.req = dataclasses.replace(cell.req, prompt=prompt, negative_prompt=negative)


def _lora(cell: Cell, value: str, env: Any) -> None:
    from lora_ui.prompt import extract_lora_tags, set_lora_weight

    plain = extract_lora_tags(cell.req.prompt)[0]
    cell.req = dataclasses.replace(cell.req, prompt=set_lora_weight(plain, str(value), 1.0))


def _lora_weight(cell: Cell, value: float, env: Any) -> None:
    from lora_ui.prompt import extract_lora_tags, set_lora_weight

    text, tags, _ = extract_lora_tags(cell.req.prompt)
    if not tags:
        raise XyzError("the LoRA weight axis needs a <lora:name:weight> tag in the prompt (or a LoRA axis)")
    if value == 0:  # weight 0 changes nothing: the plain prompt, so every 0 cell is one shared render
        prompt = text
    else:
        prompt = cell.req.prompt
        for name in dict.fromkeys(t.name for t in tags):
            prompt = set_lora_weight(prompt, name, float(value))
    cell.req = dataclasses.replace(cell.req, prompt=prompt)


def _check_denoising(env: Any, values: list) -> None:
    for value in values:
        if not 0.0 <= float(value) <= 1.0:
            raise XyzError(f"Denoising: {value:g} is out of range; denoising strength is 0 to 1")


def render_request(session: Any, req: Any) -> Any:
    """One request on the worker thread: an img2img request (it has init images) through
    `session.img2img`, anything else through `session.txt2img`."""
    if hasattr(req, "init_images") and hasattr(session, "img2img"):
        return session.img2img(req)
    return session.txt2img(req)


def _check_sampler(env: Any, values: list) -> None:
    from lora_ui.engine.sampling import registry

    for v in values:
        try:
            registry.find_sampler(v)
        except registry.SamplingError as e:
            raise XyzError(f"Sampler: {e}") from None


def _check_schedule(env: Any, values: list) -> None:
    from lora_ui.engine.sampling import registry

    for v in values:
        try:
            registry.find_schedule(v)
        except registry.SamplingError as e:
            raise XyzError(f"Schedule type: {e}") from None


def _check_checkpoints(env: Any, values: list) -> None:
    known = env.checkpoint_names()
    for v in values:
        if v not in known and v.rsplit(" [", 1)[0] not in known:
            raise XyzError(f"Checkpoint name: unknown checkpoint {v!r}; known: {', '.join(sorted(env.checkpoint_titles()))}")


def _check_vae(env: Any, values: list) -> None:
    from lora_ui.engine.vae import VaeError

    for v in values:
        try:
            env.vaes.check_choice(v)
        except VaeError as e:
            raise XyzError(f"VAE: {e}") from None


def _check_styles(env: Any, values: list) -> None:
    from lora_ui.styles import StyleError

    for v in values:
        for name in (n.strip() for n in str(v).split(",") if n.strip()):
            try:
                env.styles.get(name)
            except StyleError as e:
                raise XyzError(f"Styles: {e}") from None


def _check_loras(env: Any, values: list) -> None:
    library = getattr(env, "library", None)
    for v in values:
        if library is None or library.resolve(str(v)) is None:
            raise XyzError(f"LoRA: unknown LoRA {v!r} (no such file in the LoRA folders)")


def _check_sizes(env: Any, values: list) -> None:
    for v in values:
        _parse_size(v)


def _check_rng(env: Any, values: list) -> None:
    for v in values:
        if v not in ("GPU", "CPU", "NV"):
            raise XyzError(f"RNG source: {v!r} is not GPU, CPU or NV")


def _sampler_choices(env: Any) -> list[str]:
    from lora_ui.engine.sampling.registry import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


def _schedule_choices(env: Any) -> list[str]:
    from lora_ui.engine.sampling.registry import SCHEDULE_NAMES

    return list(SCHEDULE_NAMES)


_U = None  # an axis A1111 has that this app does not render (hires fix, img2img, face restore, ...)

# A1111 1.10's txt2img axis list, in its order (script_args send the index), then this app's own.
AXES: list[AxisType] = [
    AxisType("Nothing", str, lambda cell, value, env: None, plain_label=True),
    AxisType("Seed", int, _field("seed")),
    AxisType("Var. seed", int, _field("subseed")),
    AxisType("Var. strength", float, _field("subseed_strength")),
    AxisType("Steps", int, _field("steps")),
    AxisType("Hires steps", int, _U),
    AxisType("CFG Scale", float, _field("cfg_scale")),
    AxisType("Prompt S/R", str, _prompt_sr, plain_label=True),
    AxisType("Prompt order", str, _U),
    AxisType("Sampler", str, _field("sampler"), plain_label=True, choices=_sampler_choices, check=_check_sampler),
    AxisType("Hires sampler", str, _U),
    AxisType("Checkpoint name", str, _checkpoint, phase=0, plain_label=True,
             choices=lambda env: env.checkpoint_titles(), check=_check_checkpoints),
    AxisType("Negative Guidance minimum sigma", float, _U),
    AxisType("Sigma Churn", float, _field("s_churn")),
    AxisType("Sigma min", float, _field("s_tmin")),
    AxisType("Sigma max", float, _field("s_tmax")),
    AxisType("Sigma noise", float, _field("s_noise")),
    AxisType("Schedule type", str, _field("scheduler"), plain_label=True, choices=_schedule_choices,
             check=_check_schedule),
    AxisType("Schedule min sigma", float, _field("sigma_min")),
    AxisType("Schedule max sigma", float, _field("sigma_max")),
    AxisType("Schedule rho", float, _field("rho")),
    AxisType("Eta", float, _field("eta")),
    AxisType("Clip skip", int, _field("clip_skip")),
    AxisType("Denoising", float, _field("denoising_strength"), check=_check_denoising),  # img2img; txt2img: hires
    AxisType("Initial noise multiplier", float, _U),
    AxisType("Extra noise", float, _U),
    AxisType("Hires upscaler", str, _U),
    AxisType("VAE", str, _field("vae"), plain_label=True, choices=lambda env: env.vaes.choices(), check=_check_vae),
    AxisType("Styles", str, _styles, phase=0, plain_label=True, choices=lambda env: env.styles.names(),
             check=_check_styles),
    AxisType("UniPC Order", int, _U),
    AxisType("Face restore", str, _U),
    AxisType("Token merging ratio", float, _U),
    AxisType("Token merging ratio high-res", float, _U),
    AxisType("Always discard next-to-last sigma", str, _U),
    AxisType("SGM noise multiplier", str, _U),
    AxisType("Refiner checkpoint", str, _U),
    AxisType("Refiner switch at", float, _U),
    AxisType("RNG source", str, _field("rng"), plain_label=True, choices=lambda env: ["GPU", "CPU", "NV"],
             check=_check_rng),
    AxisType("FP8 mode", str, _U),
    AxisType("Size", str, _size, check=_check_sizes),
    AxisType("LoRA weight", float, _lora_weight, phase=2),
    AxisType("LoRA", str, _lora, phase=0, plain_label=True,
             choices=lambda env: sorted(e.name for e in getattr(getattr(env, "library", None), "entries", [])),
             check=_check_loras),
]
AXIS_NAMES = [a.label for a in AXES]


def find_axis(kind: int | str) -> AxisType:
    """An axis by A1111 index or by label (case-insensitive). Raises XyzError."""
    if isinstance(kind, bool):
        raise XyzError(f"axis type {kind!r} is neither an index nor a name")
    if isinstance(kind, int) or (isinstance(kind, str) and kind.strip().isdigit()):
        index = int(kind)
        if not 0 <= index < len(AXES):
            raise XyzError(f"axis type {index} does not exist (0 to {len(AXES) - 1})")
        return AXES[index]
    for axis in AXES:
        if axis.label.lower() == str(kind).strip().lower():
            return axis
    raise XyzError(f"unknown axis type {kind!r}; valid: {', '.join(AXIS_NAMES)}")


# ------------------------------------------------------------------------------------- values

_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_F = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_RANGE_N = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
_RANGE_NF = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*")


def split_values(text: str) -> list[str]:
    """A1111's csv_string_to_list_strip: CSV items (quotes keep commas), stripped, empty ones dropped."""
    rows = csv.reader(io.StringIO(str(text)), skipinitialspace=True)
    return [item.strip() for row in rows for item in row if item.strip()]


def _num(text: str) -> str:
    return text.replace(" ", "")


def parse_values(axis: AxisType, text: str | Sequence[Any]) -> list[Any]:
    """A1111's value parsing for one axis (ranges for numbers). Raises XyzError naming the value."""
    items = split_values(text) if isinstance(text, str) else [str(v).strip() for v in text if str(v).strip()]
    if axis.kind is int:
        out: list[Any] = []
        for item in items:
            if (m := _RANGE.fullmatch(item)) is not None:
                start, end = int(_num(m[1])), int(_num(m[2])) + 1
                step = int(m[3]) if m[3] is not None else 1
                if step == 0:
                    raise XyzError(f"{axis.label}: the range {item!r} has step 0")
                out += list(range(start, end, step))
            elif (m := _RANGE_N.fullmatch(item)) is not None:
                num = int(m[3]) if m[3] is not None else 1
                out += [int(x) for x in np.linspace(int(_num(m[1])), int(_num(m[2])), num).tolist()]
            else:
                try:
                    out.append(int(item))
                except ValueError:
                    raise XyzError(f"{axis.label}: {item!r} is not a whole number or a range (1-5, 1-5 (+2), "
                                   "1-10 [5])") from None
        values = out
    elif axis.kind is float:
        out = []
        for item in items:
            if (m := _RANGE_F.fullmatch(item)) is not None:
                start, end = float(_num(m[1])), float(_num(m[2]))
                step = float(m[3]) if m[3] is not None else 1.0
                if step == 0:
                    raise XyzError(f"{axis.label}: the range {item!r} has step 0")
                out += np.arange(start, end + step, step).tolist()
            elif (m := _RANGE_NF.fullmatch(item)) is not None:
                num = int(float(m[3])) if m[3] is not None else 1
                out += np.linspace(float(_num(m[1])), float(_num(m[2])), num).tolist()
            else:
                try:
                    out.append(float(item))
                except ValueError:
                    raise XyzError(f"{axis.label}: {item!r} is not a number or a range (0-1 (+0.25), 0-1 [5])") from None
        values = out
    else:
        values = items
    if not values and axis.label != "Nothing":
        raise XyzError(f"{axis.label}: no values given")
    return values


def format_value(axis: AxisType, value: Any) -> str:
    """A grid label as A1111 writes it ("Steps: 20", "CFG Scale: 7.5", or the value alone)."""
    if isinstance(value, float):
        value = round(value, 8)
        text = f"{value:g}" if axis.label == "LoRA weight" else str(value)
    else:
        text = str(value)
    if axis.label == "Nothing":
        return ""
    return text if axis.plain_label else f"{axis.label}: {text}"


# --------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Axis:
    """One axis as a request gives it: type (A1111 index or label) and values (text or list)."""

    type: int | str = "Nothing"
    values: str | Sequence[Any] = ""


@dataclass
class XyzPlan:
    axes: list[tuple[AxisType, list[Any]]]      # x, y, z (Nothing axes have one empty value)
    cells: dict[tuple[int, int, int], Cell]      # (x, y, z) -> what it renders
    seed: int
    renders: int                                 # distinct requests


@dataclass
class XyzResult:
    grid: Image.Image                            # all of it (Z grids side by side when there is a Z axis)
    grids: list[Image.Image]                     # one per Z value
    images: list[list[list[Image.Image]]]        # [z][y][x]
    infotexts: list[list[list[str]]]             # [z][y][x], "" for a cell not rendered
    labels: tuple[list[str], list[str], list[str]]
    infotext: str                                # the grid's (first cell's + Script / X Type / X Values ...)
    seed: int
    renders: int
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    missing: list[tuple[int, int, int]] = field(default_factory=list)


class XyzEnv:
    """What axes check values against: checkpoints, VAEs, styles and LoRAs of an AppContext."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.library = getattr(ctx, "library", None)

    @property
    def vaes(self):
        return self.ctx.models.vaes

    @property
    def styles(self):
        from lora_ui.styles import StyleDatabase

        db = getattr(self.ctx, "styles", None)
        if db is None:
            data_dir = getattr(getattr(self.ctx, "settings", None), "data_dir", None)
            from pathlib import Path

            db = StyleDatabase(Path(data_dir or ".") / "styles.csv")
        return db

    def checkpoint_titles(self) -> list[str]:
        return [c.title for c in self.ctx.models.list()]

    def checkpoint_names(self) -> set[str]:
        return {n for c in self.ctx.models.list() for n in (c.title, c.filename, c.name, c.model_name)}


def plan_xyz(env: Any, base: Any, axes: Sequence[Axis], *, max_cells: int = MAX_CELLS) -> XyzPlan:
    """Check the axes and values and build every cell's request. Raises XyzError."""
    if not dataclasses.is_dataclass(base):
        raise XyzError("the X/Y/Z plot needs a Txt2ImgRequest (or Img2ImgRequest) as its base request")
    parsed: list[tuple[AxisType, list[Any]]] = []
    for axis in list(axes) + [Axis()] * (3 - len(axes)):
        kind = find_axis(axis.type)
        if not kind.supported:
            raise XyzError(f"the axis type {kind.label!r} is not supported by LoRA UI; supported: "
                           f"{', '.join(a.label for a in AXES if a.supported)}")
        values = parse_values(kind, axis.values) if kind.label != "Nothing" else [None]
        if kind.check is not None:
            kind.check(env, values)
        parsed.append((kind, values or [None]))
    labels = [k.label for k, _ in parsed if k.label != "Nothing"]
    if len(set(labels)) != len(labels):
        raise XyzError(f"an axis type is used twice ({', '.join(labels)}); each axis needs its own type")
    total = int(np.prod([len(v) for _, v in parsed]))
    if total > max_cells:
        raise XyzError(f"this plot has {total} cells; at most {max_cells}: use fewer values")
    seed = int(base.seed) if base.seed is not None and base.seed >= 0 else random.randint(0, 2**32 - 2)
    base = dataclasses.replace(base, seed=seed, batch_size=1, batch_count=1)
    seed_axes = {"Seed", "Var. seed"}
    for i, (kind, values) in enumerate(parsed):  # A1111: -1 seeds on a seed axis are drawn once, here
        if kind.label in seed_axes:
            parsed[i] = (kind, [random.randint(0, 2**32 - 2) if v == -1 else v for v in values])
    prompt_sr_first = {i: values[0] for i, (kind, values) in enumerate(parsed) if kind.label == "Prompt S/R"}
    for i, first in prompt_sr_first.items():
        if first not in base.prompt and first not in base.negative_prompt:
            raise XyzError(f"Prompt S/R: the first value {first!r} is what gets replaced, but it is not in the "
                           "prompt or the negative prompt")
    order = sorted(range(3), key=lambda i: parsed[i][0].phase)
    cells: dict[tuple[int, int, int], Cell] = {}
    for z, zv in enumerate(parsed[2][1]):
        for y, yv in enumerate(parsed[1][1]):
            for x, xv in enumerate(parsed[0][1]):
                cell = Cell(base)
                value_of = {0: xv, 1: yv, 2: zv}
                for i in order:
                    kind = parsed[i][0]
                    if kind.label == "Nothing":
                        continue
                    if kind.label == "Prompt S/R":
                        _prompt_sr(cell, value_of[i], env, prompt_sr_first[i])
                    else:
                        kind.apply(cell, value_of[i], env)
                cells[(x, y, z)] = cell
    renders = len({_key(c) for c in cells.values()})
    return XyzPlan(parsed, cells, seed, renders)


def _key(cell: Cell) -> tuple:
    return (cell.checkpoint, repr(cell.req))


# ---------------------------------------------------------------------------------------- run

def run_xyz(session: Any, plan: XyzPlan, on_progress: Callable[[int, int, str], None] | None = None, *,
            describe: Callable[[tuple[int, int, int], Cell], str] | None = None,
            check: Callable[[tuple[int, int, int], Cell, Any], None] | None = None) -> XyzResult:
    """Render the plan inside one worker job (`session` is a WorkerSession) and draw the grid.

    on_progress(done, total, what) before each render and once at the end ("done" / "interrupted");
    describe(position, cell) names a cell for it; check(position, cell, result) may raise to fail the plot.
    When the worker fans out (`session.fan_out`, --ray: Ray replicas) and every cell is a txt2img on the
    loaded checkpoint, the cells render concurrently there and come back as they finish."""
    # grouped by checkpoint and VAE (few switches), then in grid order
    ordered = sorted(plan.cells.items(), key=lambda kv: (str(kv[1].checkpoint or ""), str(kv[1].req.vae or ""),
                                                         kv[0][2], kv[0][1], kv[0][0]))
    run = _Run(plan, on_progress, describe, check)
    fan_out = getattr(session, "fan_out", None)
    if fan_out is not None and all(c.checkpoint is None and not hasattr(c.req, "init_images") for _, c in ordered):
        _render_fanned(session, fan_out, ordered, run)
    else:
        _render_in_order(session, ordered, run)
    return _assemble(plan, run)


@dataclass
class _Run:
    """What rendering a plan collected: cell key -> (RGB image, infotext), warnings, whether it stopped early."""
    plan: XyzPlan
    on_progress: Callable[[int, int, str], None] | None
    describe: Callable[[tuple[int, int, int], Cell], str] | None
    check: Callable[[tuple[int, int, int], Cell, Any], None] | None
    done: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    interrupted: bool = False

    def progress(self, position: tuple[int, int, int], cell: Cell) -> None:
        if self.on_progress is not None:
            what = (self.describe(position, cell) if self.describe is not None
                    else f"cell {len(self.done) + 1} of {self.plan.renders}")
            self.on_progress(len(self.done), self.plan.renders, what)

    def take(self, session: Any, position: tuple[int, int, int], cell: Cell, result: Any) -> bool:
        """Keep one cell's result; False (and `interrupted`) when the render was cut short."""
        if getattr(result, "interrupted", False) or getattr(session, "interrupted", False) or not result.images:
            self.interrupted = True
            return False
        if self.check is not None:
            self.check(position, cell, result)
        self.warnings += list(getattr(result, "warnings", []) or [])
        self.done[_key(cell)] = (result.images[0].convert("RGB"), result.infotexts[0] if result.infotexts else "")
        return True


def _render_in_order(session: Any, ordered: list, run: _Run) -> None:
    """One cell after the other on this worker, switching checkpoints where a cell names one."""
    previous = getattr(session, "model", None)
    current_ckpt: str | None = None
    try:
        for (x, y, z), cell in ordered:
            if _key(cell) in run.done:
                continue
            if cell.checkpoint is not None and cell.checkpoint != current_ckpt:
                session.switch_model(cell.checkpoint)
                current_ckpt = cell.checkpoint
            elif cell.checkpoint is None and current_ckpt is not None:
                session.switch_model(str(previous.path) if previous.path is not None else None)
                current_ckpt = None
            run.progress((x, y, z), cell)
            if not run.take(session, (x, y, z), cell, render_request(session, cell.req)):
                break
    finally:
        if current_ckpt is not None and previous is not None and session.model is not previous:
            try:
                session.switch_model(str(previous.path) if previous.path is not None else None)
            except Exception as exc:  # noqa: BLE001 - the plot's images are still good
                run.warnings.append(f"could not switch back to {previous.name}: {exc}")


def _render_fanned(session: Any, fan_out: Callable, ordered: list, run: _Run) -> None:
    """Every distinct cell at once through `fan_out(requests)` -> iterator of (index, result) in the order
    they finish; an interrupt stops taking results and closing the iterator cancels the rest."""
    unique: dict[tuple, tuple[tuple[int, int, int], Cell]] = {}
    for position, cell in ordered:
        unique.setdefault(_key(cell), (position, cell))
    items = list(unique.values())
    results = fan_out([cell.req for _, cell in items])
    try:
        for index, result in results:
            position, cell = items[index]
            run.progress(position, cell)
            if not run.take(session, position, cell, result):
                break
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def _assemble(plan: XyzPlan, run: _Run) -> XyzResult:
    """The grid (and per-Z grids) from the rendered cells; cells not rendered are placeholders in `missing`."""
    from lora_ui.compare import make_grid, placeholder_cell

    done, warnings, interrupted, on_progress = run.done, run.warnings, run.interrupted, run.on_progress
    if on_progress is not None:
        on_progress(len(done), plan.renders, "interrupted" if interrupted else "done")
    if not done:
        raise XyzInterrupted("the X/Y/Z plot was interrupted before any cell was rendered; nothing is shown")
    size = next(iter(done.values()))[0].size
    (xk, xs), (yk, ys), (zk, zs) = plan.axes
    labels = ([format_value(xk, v) for v in xs], [format_value(yk, v) for v in ys], [format_value(zk, v) for v in zs])
    images, infotexts, missing = [], [], []
    blank = placeholder_cell(size)
    for z in range(len(zs)):
        rows, texts = [], []
        for y in range(len(ys)):
            row, trow = [], []
            for x in range(len(xs)):
                got = done.get(_key(plan.cells[(x, y, z)]))
                if got is None or got[0].size != size:
                    missing.append((x, y, z))
                    row.append(blank if got is None else got[0].resize(size))
                    trow.append("" if got is None else got[1])
                else:
                    row.append(got[0])
                    trow.append(got[1])
            rows.append(row)
            texts.append(trow)
        images.append(rows)
        infotexts.append(texts)
    grids = [make_grid(rows, labels[0], labels[1])[0] for rows in images]
    grid = grids[0] if len(grids) == 1 else make_grid([grids], labels[2], [""])[0]
    first = next((t for plane in infotexts for row in plane for t in row if t), "")
    return XyzResult(grid=grid, grids=grids, images=images, infotexts=infotexts, labels=labels,
                     infotext=grid_infotext(first, plan), seed=plan.seed, renders=len(done),
                     warnings=list(dict.fromkeys(warnings)), interrupted=interrupted, missing=missing)


def grid_infotext(cell_infotext: str, plan: XyzPlan) -> str:
    """A cell's infotext plus A1111's plot fields on its parameter line."""
    import json

    extra: dict[str, str] = {"Script": "X/Y/Z plot"}
    for letter, (kind, values) in zip("XYZ", plan.axes):
        if kind.label == "Nothing":
            continue
        extra[f"{letter} Type"] = kind.label
        extra[f"{letter} Values"] = ", ".join(format_value(kind, v).split(": ", 1)[-1] if not kind.plain_label
                                               else str(v) for v in values)
        if kind.label in ("Seed", "Var. seed"):
            extra[f"Fixed {letter} Values"] = ", ".join(str(v) for v in values)
    def quoted(v: str) -> str:
        return json.dumps(v, ensure_ascii=False) if any(c in v for c in ',:"') else v

    parts = ", ".join(f"{k}: {quoted(v)}" for k, v in extra.items())
    text = cell_infotext.rstrip("\n")
    return f"{text}, {parts}" if text else parts


def submit_xyz(ctx: Any, base: Any, axes: Sequence[Axis], on_progress=None):
    """Plan (errors now, nothing queued) and queue the plot as ONE worker job; Future of an XyzResult."""
    plan = plan_xyz(XyzEnv(ctx), base, axes)
    return ctx.worker.submit(lambda session: run_xyz(session, plan, on_progress), kind="xyz", job_count=plan.renders)
