"""LoKr (LyCORIS Kronecker product): ΔW = kron(w1, w2), reshaped to the target.

Factor forms (every combination):
  w1 = lokr_w1 (o1, i1)                        or lokr_w1_a (o1, r) @ lokr_w1_b (r, i1)
  w2 = lokr_w2 (o2, i2[, kh, kw])              or lokr_w2_a (o2, r) @ lokr_w2_b (r, i2*kh*kw)
                                               or Tucker: lokr_t2 (r, r, kh, kw), lokr_w2_a (r, o2),
                                                  lokr_w2_b (r, i2): einsum('i j k l, j r, i p -> p r k l')
  Conv targets with a 4-D w2: w1 is unsqueezed to (o1, i1, 1, 1). out = o1*o2, in = i1*i2.
rank = lokr_w2_b.shape[0], else lokr_w1_b.shape[0]; with two full factors there is no rank and alpha is
ignored (scale 1), as in A1111.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import NetworkModule, Target, as_fp32, expect, scaled_fp32, shape_str
from lora_ui.lora.types.loha import check_product, product_shape, rebuild

W1, W1A, W1B = "lokr_w1", "lokr_w1_a", "lokr_w1_b"
W2, W2A, W2B, T2 = "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"


def _factor_parts(
    parts: Mapping[str, Tensor], full: str, a: str, b: str, t: str | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(full, a, b, t) for one Kronecker factor; exactly one form must be present."""
    has_full = full in parts
    has_pair = [n for n in (a, b) if n in parts]
    has_t = t is not None and t in parts
    if has_full and (has_pair or has_t):
        raise LoraError(f"a LoKr module gives its factor both as {full} and as {', '.join(has_pair + ([t] if has_t else []))}")
    if not has_full and len(has_pair) != 2:
        missing = [n for n in (a, b) if n not in parts]
        raise LoraError(
            f"a LoKr module needs {full} or both {a} and {b}; missing {', '.join(missing)} "
            f"(parts present: {', '.join(sorted(parts))})"
        )
    return parts.get(full), parts.get(a), parts.get(b), parts.get(t) if t is not None else None


class LoKrModule(NetworkModule):
    kind = "lokr"
    part_names = frozenset({W1, W1A, W1B, W2, W2A, W2B, T2})

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        expect(target.kind in ("linear", "conv"), f"LoKr patches Linear or Conv2d layers, but the target is {target.label}")
        self.w1, self.w1a, self.w1b, _ = _factor_parts(parts, W1, W1A, W1B, None)
        self.w2, self.w2a, self.w2b, self.t2 = _factor_parts(parts, W2, W2A, W2B, T2)
        if self.w1 is None:
            check_product((W1A, W1B, ""), self.w1a, self.w1b, None)
            expect(self.w1b.dim() == 2, f"{W1B} must be 2-D, got shape {shape_str(self.w1b.shape)}")
            w1_shape = product_shape(self.w1a, self.w1b, None)
        else:
            expect(self.w1.dim() == 2, f"{W1} must be 2-D, got shape {shape_str(self.w1.shape)}")
            w1_shape = tuple(self.w1.shape)
        if self.w2 is None:
            check_product((W2A, W2B, T2), self.w2a, self.w2b, self.t2)
            w2_shape = product_shape(self.w2a, self.w2b, self.t2)
            if self.t2 is None:
                w2_shape = (w2_shape[0], torch.Size(w2_shape[1:]).numel())  # rebuilt flat
        else:
            expect(self.w2.dim() in (2, 4), f"{W2} must be 2-D or 4-D, got shape {shape_str(self.w2.shape)}")
            w2_shape = tuple(self.w2.shape)
        o1, i1 = w1_shape
        o2, *rest2 = w2_shape
        kron_shape = (o1 * o2, i1 * rest2[0], *rest2[1:])
        fits = kron_shape[0] == target.out_dim and torch.Size(kron_shape).numel() == target.numel
        if len(kron_shape) == 4:
            fits = fits and kron_shape == target.weight_shape
        w1_desc = W1 if self.w1 is not None else f"{W1A} @ {W1B}"
        w2_desc = W2 if self.w2 is not None else (f"{W2A} @ {W2B}" if self.t2 is None else f"Tucker({T2}, {W2A}, {W2B})")
        expect(
            fits,
            f"kron({w1_desc} {shape_str(w1_shape)}, {w2_desc} {shape_str(w2_shape)}) has shape "
            f"{shape_str(kron_shape)} but the target {target.label} has {shape_str(target.weight_shape)}",
        )

    @property
    def rank(self) -> int | None:
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        device = orig_weight.device
        if self.w1 is not None:
            w1 = scaled_fp32(self.w1, device, factor)  # (o1, i1); the factor rides on the small w1
        else:
            w1 = torch.mm(as_fp32(self.w1a, device), as_fp32(self.w1b, device))
            if factor != 1.0:
                w1 *= factor
        if self.w2 is not None:
            w2 = as_fp32(self.w2, device)
        else:
            w2 = rebuild(self.w2a, self.w2b, self.t2, device)  # (o2, i2*kh*kw) or Tucker (o2, i2, kh, kw)
        return kron(w1, w2), None


def kron(w1: Tensor, w2: Tensor) -> Tensor:
    """Kronecker product of w1 (o1, i1) and w2 (o2, i2[, kh, kw]) -> (o1*o2, i1*i2[, kh, kw]).

    As one broadcast multiply: torch.kron (2.13) fails on some shapes with size-1 dims (a view error).
    """
    o1, i1 = w1.shape
    o2, i2, *kernel = w2.shape
    blocks = w1.reshape(o1, 1, i1, 1, *[1] * len(kernel)) * w2.reshape(1, o2, 1, i2, *kernel)
    return blocks.reshape(o1 * o2, i1 * i2, *kernel)
