"""Full / diff: the file holds ΔW itself (`diff`, target-shaped) and optionally a layer-bias delta
(`diff_b`, (out,)). No rank: alpha is ignored. `diff_b` is multiplied by the multiplier only.
A `diff_b` without `diff` (a bias-only difference) gives a zero ΔW.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.types.base import FP32, NetworkModule, Target, as_fp32, expect, fresh_fp32, shape_str

DIFF, DIFF_B = "diff", "diff_b"


def check_layer_bias(name: str, bias: Tensor, target: Target) -> None:
    """A layer-bias delta needs a layer with a bias of the same size."""
    expect(target.has_bias, f"{name} changes the layer bias but the target {target.label} has no bias")
    expect(
        bias.numel() == target.out_dim,
        f"{name} has shape {shape_str(bias.shape)} but the target {target.label} has a bias of shape ({target.out_dim},)",
    )


class FullModule(NetworkModule):
    kind = "full"
    part_names = frozenset({DIFF, DIFF_B})
    uses_alpha = False

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        self.diff: Tensor | None = parts.get(DIFF)
        self.diff_b: Tensor | None = parts.get(DIFF_B)
        if self.diff is not None:
            expect(
                self.diff.numel() == target.numel,
                f"{DIFF} has shape {shape_str(self.diff.shape)} but the target {target.label} has a weight of "
                f"shape {shape_str(target.weight_shape)}",
            )
        if self.diff_b is not None:
            check_layer_bias(DIFF_B, self.diff_b, target)

    @property
    def has_layer_bias_delta(self) -> bool:
        return self.diff_b is not None

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, Tensor | None]:
        device = orig_weight.device
        if self.diff is None:
            updown = torch.zeros(self.target.weight_shape, dtype=FP32, device=device)
        else:
            updown = fresh_fp32(self.diff, device, factor)
        bias = as_fp32(self.diff_b, device).reshape(-1) if self.diff_b is not None else None
        return updown, bias
