"""LoRA / LoCon: ΔW = up @ down (kohya, LyCORIS LoCon, PEFT `lora_A`/`lora_B`, diffusers `.lora.down/up`),
with an optional Tucker core `lora_mid` for conv layers.

Shapes (r = rank):
  up   `lora_up.weight` / `lora_B.weight` / `lora.up.weight`:       (out, r[, 1, 1])
  down `lora_down.weight` / `lora_A.weight` / `lora.down.weight`:   (r, in[, kh, kw])   (kernel of the
       target for LoCon 3x3 convs; a Linear-shaped pair on a 1x1 conv is normal in SD1 proj_in/out)
  mid  `lora_mid.weight`: (r, r, kh, kw); then down is (r, in, 1, 1) and
       ΔW = einsum('n m k l, i n, m j -> i j k l', mid, up, down).
rank = down.shape[0]; scale = alpha / rank. `dyn=N` keeps the first N rank components (scale still uses
the full rank). Like A1111, `dyn` is ignored when a Tucker core is present.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import (
    LowRankFactors,
    NetworkModule,
    Target,
    as_fp32,
    expect,
    first_part,
    scaled_fp32,
    shape_str,
)

UP_NAMES = ("lora_up.weight", "lora_B.weight", "lora.up.weight")
DOWN_NAMES = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
MID_NAMES = ("lora_mid.weight",)


def _trailing_ones(t: Tensor) -> bool:
    return all(d == 1 for d in t.shape[2:])


class LoRAModule(NetworkModule):
    kind = "lora"
    part_names = frozenset(UP_NAMES + DOWN_NAMES + MID_NAMES)

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        up = first_part(parts, UP_NAMES, "up factor")
        down = first_part(parts, DOWN_NAMES, "down factor")
        mid = first_part(parts, MID_NAMES, "Tucker core")
        if up is None or down is None:
            missing = "lora_up.weight (or lora_B.weight)" if up is None else "lora_down.weight (or lora_A.weight)"
            raise LoraError(f"a LoRA module needs {missing} (parts present: {', '.join(sorted(parts))})")
        (up_name, self.up), (down_name, self.down) = up, down
        self.mid: Tensor | None = mid[1] if mid is not None else None
        expect(
            target.kind in ("linear", "conv"),
            lambda: f"{up_name}/{down_name} patch Linear or Conv2d layers, but the target is {target.label}",
        )
        out, numel = target.out_dim, target.numel
        fan_in = numel // out  # in * kh * kw
        expect(self.down.dim() in (2, 4),
               lambda: f"{down_name} must be 2-D or 4-D, got shape {shape_str(self.down.shape)}")
        expect(self.up.dim() in (2, 4), lambda: f"{up_name} must be 2-D or 4-D, got shape {shape_str(self.up.shape)}")
        r = self.down.shape[0]
        expect(
            self.up.shape[0] == out and _trailing_ones(self.up),
            lambda: f"{up_name} has shape {shape_str(self.up.shape)} but the target {target.label} needs ({out}, r[, 1, 1])",
        )
        if self.mid is None:
            expect(
                self.up.shape[1] == r,
                lambda: f"{up_name} has shape {shape_str(self.up.shape)} but {down_name} has shape "
                f"{shape_str(self.down.shape)}: their ranks differ ({self.up.shape[1]} vs {r})",
            )
            down_ok = self.down[0].numel() == fan_in
            if self.down.dim() == 4:
                want = target.weight_shape[1:] if target.kind == "conv" else (target.in_dim, 1, 1)
                down_ok = down_ok and tuple(self.down.shape[1:]) == tuple(want)
            expect(
                down_ok,
                lambda: f"{down_name} has shape {shape_str(self.down.shape)} but the target {target.label} needs "
                f"(r, {', '.join(str(d) for d in target.weight_shape[1:])})",
            )
        else:
            mid_name = MID_NAMES[0]
            expect(target.kind == "conv", lambda: f"{mid_name} (Tucker core) needs a Conv2d target, got {target.label}")
            want_mid = (self.up.shape[1], r, *target.kernel)
            expect(
                tuple(self.mid.shape) == want_mid,
                lambda: f"{mid_name} has shape {shape_str(self.mid.shape)} but {up_name} {shape_str(self.up.shape)}, "
                f"{down_name} {shape_str(self.down.shape)} and the target {target.label} need {shape_str(want_mid)}",
            )
            expect(
                self.down.shape[1] == target.in_dim and _trailing_ones(self.down),
                lambda: f"{down_name} has shape {shape_str(self.down.shape)} but with {mid_name} the target {target.label} "
                f"needs (r, {target.in_dim}[, 1, 1])",
            )

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        device = orig_weight.device
        up = self.up.flatten(1)  # (out, r)
        down = self.down.flatten(1)  # (r, in*kh*kw), or (r, in) with a core
        if self.mid is None:
            if dyn is not None:
                up, down = up[:, :dyn], down[:dyn]
            # One matmul; the factor rides on the small `up`.
            return torch.mm(scaled_fp32(up, device, factor), as_fp32(down, device)), None
        mid = as_fp32(self.mid, device)  # (n, m, kh, kw)
        core_down = torch.einsum("nmkl,mj->njkl", mid, as_fp32(down, device))  # (n, in, kh, kw)
        updown = torch.einsum("in,njkl->ijkl", scaled_fp32(up, device, factor), core_down)
        return updown, None

    def low_rank_factors(self, dyn: int | None = None) -> LowRankFactors | None:
        if self.dora_scale is not None or self.weight_bias is not None:
            return None  # not expressible as a branch
        t = self.target
        r = self.rank
        if t.kind == "linear":
            down, up, mid = self.down.reshape(r, t.in_dim), self.up.reshape(t.out_dim, -1), None
        elif self.mid is None:
            down, up, mid = self.down.reshape(r, *t.weight_shape[1:]), self.up.reshape(t.out_dim, -1, 1, 1), None
        else:
            down = self.down.reshape(r, t.in_dim, 1, 1)
            up, mid = self.up.reshape(t.out_dim, -1, 1, 1), self.mid
        if dyn is not None and mid is None:
            down, up = down[:dyn], up[:, :dyn]
        return LowRankFactors(down=down, up=up, mid=mid, scale=self.scale)

