"""IA3: scale the existing weight per output row (or per input column with `on_input`).

Parts: `weight` (out,) / (out, 1) — or (in,) / (1, in) with `on_input` true — and optional `on_input`
(a one-element flag). ΔW = W ⊙ w, so W + mult·ΔW = W ⊙ (1 + mult·w); computed against the weight passed
in (stacked LoRAs: the weight already holding the earlier ones). No rank: alpha is ignored.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import NetworkModule, Target, as_fp32, expect, scalar_of, scaled_fp32, shape_str

WEIGHT, ON_INPUT = "weight", "on_input"


class IA3Module(NetworkModule):
    kind = "ia3"
    part_names = frozenset({WEIGHT, ON_INPUT})
    uses_alpha = False

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        if WEIGHT not in parts:
            raise LoraError(f"an IA3 module needs {WEIGHT} (parts present: {', '.join(sorted(parts))})")
        expect(target.kind in ("linear", "conv"), f"IA3 patches Linear or Conv2d layers, but the target is {target.label}")
        self.w = parts[WEIGHT]
        self.on_input = bool(scalar_of(ON_INPUT, parts[ON_INPUT])) if ON_INPUT in parts else False
        axis, size = (1, target.in_dim) if self.on_input else (0, target.out_dim)
        fits = self.w.numel() == size and (self.w.dim() == 1 or self.w.shape[axis] == size)
        expect(
            fits,
            f"{WEIGHT} has shape {shape_str(self.w.shape)} but the target {target.label} needs "
            + (f"({size},) or (1, {size}) (on_input)" if self.on_input else f"({size},) or ({size}, 1)"),
        )
        self.broadcast_shape = [1] * len(target.weight_shape)
        self.broadcast_shape[axis] = size

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        w = scaled_fp32(self.w, orig_weight.device, factor).reshape(self.broadcast_shape)
        return as_fp32(orig_weight, orig_weight.device) * w, None
