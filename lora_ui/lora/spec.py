"""What a request wants from the LoRA engine: fully resolved LoRA specs, and the engine's error type."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoraSpec:
    """One wanted LoRA, resolved to a file (the library builds it from a prompt tag).

    `te`/`unet` are the multipliers for text-encoder and UNet modules; `lbw` is the raw block-weight
    string from the prompt (a preset name such as "INALL" or comma-separated ratios), expanded by the
    engine, which knows the architecture and the network type; `start`/`stop` are sampling steps.
    """

    path: Path
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    lbw: str | None = None
    start: int | None = None
    stop: int | None = None


class LoraError(Exception):
    """A LoRA could not be applied. The message names the file, the reason and the first offending
    keys; when it is raised, the pipeline is exactly as it was before the call."""


class LoraArchMismatch(LoraError):
    """The file is a LoRA for another architecture than the loaded model (the app's one detector,
    lora_ui.arch, is certain). The manager skips such a LoRA with a warning instead of failing the render."""
