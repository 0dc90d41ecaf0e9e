"""Every limit of the app, in one place: what one request may ask for, what one file may hold.

The module constants are the hard ceilings (the engine refuses anything above them whatever the flags
say); a `Limits` object is what the UI and the REST API apply per request. Its defaults are the
ceilings (A1111-like: 2048 px, 150 steps, batch size 8, batch count 100, CFG 30); the command-line
flags (`--max-size`, `--max-steps`, ...; see `add_flags`) may lower them, never raise them. No torch,
no gradio here: every layer imports it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

# ---- request ceilings (engine hard limits; txt2img.py imports these)
MIN_SIZE = 16
MAX_SIZE = 2048
MAX_STEPS = 150
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_CLIP_SKIP = 12
MAX_SEED = 2**32 - 2               # random seeds are drawn from [0, MAX_SEED] (A1111)
MAX_REQUEST_SEED = 2**32 - 1       # the largest seed a request may give
MAX_PROMPT_CHARS = 20_000          # per prompt (and per negative prompt); CLIP reads 75-token chunks
MAX_LORA_WEIGHT = 100.0            # |weight| of a <lora:...> tag; beyond it fp16/fp32 weights overflow
# steps x batch_size x width x height: the work of one batch. Default: 150 steps of 8 images at 1024²
# (or 37 steps of 8 at 2048²); batch_count repeats batches and is capped separately.
MAX_COST = 150 * 8 * 1024 * 1024

# ---- bodies and files
MAX_BODY_BYTES = 64 * 1024 * 1024          # one HTTP request body (a png-info image is base64 inside it)
MAX_IMAGE_BASE64_CHARS = 48 * 1024 * 1024  # the base64 of one image in a body
MAX_IMAGE_PIXELS = 8192 * 8192             # decoded images (png-info, previews): checked before decoding
MAX_JSON_DEPTH = 64                        # nesting of a JSON body
MAX_HEADER_BYTES = 100 * 1024 * 1024       # a safetensors header (real LoRAs: KBs; with cover images: MBs)
MAX_SIDECAR_BYTES = 4 * 1024 * 1024        # name.json / name.txt / name.civitai.info
MAX_PREVIEW_BYTES = 32 * 1024 * 1024       # name.preview.png ...
MAX_PREVIEW_PIXELS = 8192 * 8192

# ---- sweeps
MAX_SWEEP_WEIGHTS = 32
MAX_SWEEP_RENDERS = 64


class LimitError(ValueError):
    """A value is over a limit; `field` names the request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Limits:
    """The per-request limits the UI and the API apply (each at most its ceiling above)."""

    max_size: int = MAX_SIZE
    max_steps: int = MAX_STEPS
    max_batch_size: int = MAX_BATCH_SIZE
    max_batch_count: int = MAX_BATCH_COUNT
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_lora_weight: float = MAX_LORA_WEIGHT
    max_cost: int = MAX_COST
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            ceiling = _CEILINGS[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < _FLOORS[f.name] or value > ceiling:
                raise ValueError(f"{f.name} must be from {_FLOORS[f.name]} to {ceiling}, got {value!r}")

    def lowered(self, **values: Any) -> "Limits":
        """A copy with the given limits (None values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    # ---- checks shared by the UI and the API (the engine checks the ceilings again)
    def request_errors(self, *, prompt: str = "", negative_prompt: str = "", steps: Any = None,
                       width: Any = None, height: Any = None, batch_size: Any = None,
                       batch_count: Any = None, default_size: int | None = None,
                       second_pass: tuple[int, int, int] | None = None) -> list[LimitError]:
        """Every limit the request breaks, as LimitError(field, message); [] when it fits.

        `second_pass` = (steps, width, height) of hires fix: its work is added to the first pass's."""
        errors: list[LimitError] = []
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if isinstance(text, str) and len(text) > self.max_prompt_chars:
                errors.append(LimitError(name, f"is {len(text)} characters; at most {self.max_prompt_chars} "
                                               "(--max-prompt-length)"))
        for name, value, high, flag in (("width", width, self.max_size, "--max-size"),
                                        ("height", height, self.max_size, "--max-size"),
                                        ("steps", steps, self.max_steps, "--max-steps"),
                                        ("batch_size", batch_size, self.max_batch_size, "--max-batch-size"),
                                        ("batch_count", batch_count, self.max_batch_count, "--max-batch-count")):
            if _is_int(value) and value > high:
                errors.append(LimitError(name, f"must be at most {high} ({flag}), got {value}"))
        if errors:
            return errors
        w = width if _is_int(width) and width > 0 else default_size
        h = height if _is_int(height) and height > 0 else default_size
        if all(_is_int(v) and v > 0 for v in (w, h, steps, batch_size)):
            cost = steps * batch_size * w * h
            what = f"{steps} x {batch_size} x {w} x {h}"
            if second_pass is not None:
                hr_steps, hr_w, hr_h = second_pass
                cost += hr_steps * batch_size * hr_w * hr_h
                what += f" + hires {hr_steps} x {batch_size} x {hr_w} x {hr_h}"
            if cost > self.max_cost:
                errors.append(LimitError(
                    "steps", f"steps x batch_size x width x height = {what} = {cost} "
                             f"is over the cost limit {self.max_cost} (--max-cost); use fewer steps, a smaller "
                             "batch or a smaller size"))
        return errors

    def check_lora_weight(self, value: float, field: str = "prompt", what: str = "LoRA weight") -> None:
        if not math.isfinite(value) or abs(value) > self.max_lora_weight:
            raise LimitError(field, f"{what} {value!r} is not a finite number from -{self.max_lora_weight:g} to "
                                    f"{self.max_lora_weight:g} (--max-lora-weight)")


_CEILINGS = {"max_size": MAX_SIZE, "max_steps": MAX_STEPS, "max_batch_size": MAX_BATCH_SIZE,
             "max_batch_count": MAX_BATCH_COUNT, "max_prompt_chars": MAX_PROMPT_CHARS,
             "max_lora_weight": MAX_LORA_WEIGHT, "max_cost": MAX_COST, "max_body_bytes": MAX_BODY_BYTES}
_FLOORS = {"max_size": MIN_SIZE, "max_steps": 1, "max_batch_size": 1, "max_batch_count": 1,
           "max_prompt_chars": 1, "max_lora_weight": 0.0, "max_cost": 1, "max_body_bytes": 1024}

DEFAULT = Limits()

# flag -> (Limits field, type, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--max-size": ("max_size", int, f"largest width/height in px (default and ceiling {MAX_SIZE})"),
    "--max-steps": ("max_steps", int, f"most sampling steps (default and ceiling {MAX_STEPS})"),
    "--max-batch-size": ("max_batch_size", int, f"most images per batch (default and ceiling {MAX_BATCH_SIZE})"),
    "--max-batch-count": ("max_batch_count", int, f"most batches per request (default and ceiling {MAX_BATCH_COUNT})"),
    "--max-prompt-length": ("max_prompt_chars", int, f"most characters per prompt (default {MAX_PROMPT_CHARS})"),
    "--max-lora-weight": ("max_lora_weight", float, f"largest |weight| of a LoRA tag (default {MAX_LORA_WEIGHT:g})"),
    "--max-cost": ("max_cost", int, "most steps x batch size x width x height per batch "
                                    f"(default {MAX_COST}: 150 steps of 8 images at 1024x1024)"),
    "--max-body-mb": ("max_body_bytes", float, f"largest HTTP request body in MB (default {MAX_BODY_BYTES // 2**20})"),
}


def add_flags(parser) -> None:
    group = parser.add_argument_group("limits (each may only lower its default)")
    for flag, (_, kind, help_text) in FLAGS.items():
        group.add_argument(flag, type=kind, default=None, help=help_text)


def from_args(args) -> Limits:
    """Limits from parsed flags; ValueError naming the flag for a value out of range."""
    values: dict[str, Any] = {}
    for flag, (name, _, _) in FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        if name == "max_body_bytes":
            value = int(value * 2**20)
        values[name] = value
    try:
        return DEFAULT.lowered(**values)
    except ValueError as exc:
        name = str(exc).split(" ", 1)[0]
        flag = next((f for f, (n, _, _) in FLAGS.items() if n == name), name)
        raise ValueError(f"{flag}: {exc}") from None


def of(settings: Any) -> Limits:
    """The Limits of a Settings-like object: its `limits`, else the legacy `api_max_*` attributes, else DEFAULT."""
    limits = getattr(settings, "limits", None) if settings is not None else None
    if isinstance(limits, Limits):
        return limits
    legacy = {name: getattr(settings, f"api_{name}", None) for name in
              ("max_size", "max_steps", "max_batch_size", "max_batch_count")} if settings is not None else {}
    return DEFAULT.lowered(**{k: int(v) for k, v in legacy.items() if isinstance(v, (int, float))})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_depth_ok(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """False when the JSON text nests deeper than `max_depth` (counted on brackets outside strings,
    without parsing: a 100k-deep body must not reach the recursive parser)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= max_depth:  # the usual case, at C speed
        return True
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


__all__ = [name for name in dir() if name.isupper()] + ["Limits", "LimitError", "DEFAULT", "FLAGS", "add_flags",
                                                        "from_args", "of", "json_depth_ok"]
