"""What the CFG denoiser is given: encoded prompts per image, per step (the contract between
conditioning (prompt parsing, editing, alternation, AND) and the denoiser).

Shapes: `embeds` (1, 77*k, D) for one prompt (k = chunk count, D = 768 for SD1, 2048 for SDXL);
`pooled` (1, P) for SDXL (None for SD1). Different prompts may have different k: the denoiser batches
equal lengths together and runs the others separately (A1111's rule; no padding unless asked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Cond:
    """One encoded prompt (batch 1)."""

    embeds: torch.Tensor                    # (1, 77*k, D)
    pooled: torch.Tensor | None = None      # (1, P), SDXL only

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


@dataclass(frozen=True)
class ImageConds:
    """The conditioning of one image at one denoiser call: AND terms (in order) and the negative."""

    terms: tuple[tuple[Cond, float], ...]   # ((cond, weight), ...) - A1111's composable AND, weight 1 default
    uncond: Cond


# Called with the 0-based index of the denoiser call (A1111 counts CFG UNet evaluations) and returns
# one ImageConds per image of the batch. Prompt editing/alternation change what it returns per call.
StepConds = Callable[[int], list[ImageConds]]


def constant_conds(conds: list[ImageConds]) -> StepConds:
    """A StepConds that ignores the step (no prompt editing)."""
    return lambda _call: conds
