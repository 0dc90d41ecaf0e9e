"""Norm: new values for a GroupNorm/LayerNorm's affine parameters, as deltas.

Parts: `w_norm` (C,) (the weight delta) and optional `b_norm` (C,) (the bias delta, multiplier only).
A `b_norm` without `w_norm` gives a zero weight delta. No rank: alpha is ignored.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.types.base import FP32, NetworkModule, Target, as_fp32, expect, fresh_fp32, shape_str
from lora_ui.lora.types.full import check_layer_bias

W_NORM, B_NORM = "w_norm", "b_norm"


class NormModule(NetworkModule):
    kind = "norm"
    part_names = frozenset({W_NORM, B_NORM})
    uses_alpha = False

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        expect(
            target.kind == "norm" or len(target.weight_shape) == 1,
            f"{', '.join(sorted(self.part_names & parts.keys()))} patch GroupNorm/LayerNorm layers, but the target is {target.label}",
        )
        self.w_norm: Tensor | None = parts.get(W_NORM)
        self.b_norm: Tensor | None = parts.get(B_NORM)
        if self.w_norm is not None:
            expect(
                self.w_norm.numel() == target.numel,
                f"{W_NORM} has shape {shape_str(self.w_norm.shape)} but the target {target.label} has a weight of "
                f"shape {shape_str(target.weight_shape)}",
            )
        if self.b_norm is not None:
            check_layer_bias(B_NORM, self.b_norm, target)

    @property
    def has_layer_bias_delta(self) -> bool:
        return self.b_norm is not None

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, Tensor | None]:
        device = orig_weight.device
        if self.w_norm is None:
            updown = torch.zeros(self.target.weight_shape, dtype=FP32, device=device)
        else:
            updown = fresh_fp32(self.w_norm, device, factor)
        bias = as_fp32(self.b_norm, device).reshape(-1) if self.b_norm is not None else None
        return updown, bias
