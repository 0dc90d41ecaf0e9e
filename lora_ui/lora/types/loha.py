"""LoHa (LyCORIS hadamard product): ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b).

Shapes (r = rank):
  plain:  hada_w1_a / hada_w2_a (out, r), hada_w1_b / hada_w2_b (r, in*kh*kw) (or (r, in, kh, kw))
  Tucker: hada_t1 / hada_t2 (r, r, kh, kw), then hada_w?_a (r, out), hada_w?_b (r, in), and each factor is
          einsum('i j k l, j r, i p -> p r k l', t, w_b, w_a)  (out, in, kh, kw)
rank = hada_w1_b.shape[0]; scale = alpha / rank.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import NetworkModule, Target, as_fp32, expect, shape_str

W1A, W1B, W2A, W2B, T1, T2 = "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"


def check_product(names: tuple[str, str, str], a: Tensor, b: Tensor, t: Tensor | None) -> None:
    """Check that a (w_a, w_b[, t]) triple fits together (the caller checks the rebuilt shape).

    Plain: a (out_f, r), b (r, ...). Tucker: t (r1, r2, kh, kw), a (r1, out_f), b (r2, in_f).
    """
    a_name, b_name, t_name = names
    if t is None:
        expect(a.dim() == 2, f"{a_name} must be 2-D, got shape {shape_str(a.shape)}")
        expect(b.dim() >= 2, f"{b_name} must be 2-D or 4-D, got shape {shape_str(b.shape)}")
        expect(
            a.shape[1] == b.shape[0],
            f"{a_name} has shape {shape_str(a.shape)} but {b_name} has shape {shape_str(b.shape)}: "
            f"their ranks differ ({a.shape[1]} vs {b.shape[0]})",
        )
    else:
        expect(t.dim() == 4, f"{t_name} must be 4-D (r, r, kh, kw), got shape {shape_str(t.shape)}")
        expect(a.dim() == 2 and b.dim() == 2, f"with {t_name}, {a_name} and {b_name} must be 2-D")
        expect(
            a.shape[0] == t.shape[0] and b.shape[0] == t.shape[1],
            f"{t_name} has shape {shape_str(t.shape)} but {a_name} {shape_str(a.shape)} and "
            f"{b_name} {shape_str(b.shape)} need ({a.shape[0]}, {b.shape[0]}, kh, kw)",
        )


def product_shape(a: Tensor, b: Tensor, t: Tensor | None) -> tuple[int, ...]:
    """Shape of the rebuilt factor: (a.out, b.in...) plain, (a.out, b.in, kh, kw) Tucker."""
    if t is None:
        return (a.shape[0], *b.shape[1:])
    return (a.shape[1], b.shape[1], *t.shape[2:])


def rebuild(a: Tensor, b: Tensor, t: Tensor | None, device: torch.device) -> Tensor:
    """w_a @ w_b (flattened, (out, in*kh*kw)), or the Tucker rebuild (out, in, kh, kw); fp32."""
    a32, b32 = as_fp32(a, device), as_fp32(b, device)
    if t is None:
        return torch.mm(a32, b32.flatten(1))
    t32 = as_fp32(t, device)
    core_b = torch.einsum("ijkl,jr->irkl", t32, b32)  # (r1, in, kh, kw)
    return torch.einsum("irkl,ip->prkl", core_b, a32)


class LoHaModule(NetworkModule):
    kind = "hada"
    part_names = frozenset({W1A, W1B, W2A, W2B, T1, T2})

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        missing = [n for n in (W1A, W1B, W2A, W2B) if n not in parts]
        if missing:
            raise LoraError(
                f"a LoHa module needs {', '.join(missing)} (parts present: {', '.join(sorted(parts))})"
            )
        expect(target.kind in ("linear", "conv"), f"LoHa patches Linear or Conv2d layers, but the target is {target.label}")
        self.w1a, self.w1b, self.w2a, self.w2b = parts[W1A], parts[W1B], parts[W2A], parts[W2B]
        self.t1: Tensor | None = parts.get(T1)
        self.t2: Tensor | None = parts.get(T2)
        check_product((W1A, W1B, T1), self.w1a, self.w1b, self.t1)
        check_product((W2A, W2B, T2), self.w2a, self.w2b, self.t2)
        for a_name, b_name, a, b, t in ((W1A, W1B, self.w1a, self.w1b, self.t1), (W2A, W2B, self.w2a, self.w2b, self.t2)):
            shape = product_shape(a, b, t)
            fits = shape[0] == target.out_dim and torch.Size(shape).numel() == target.numel
            if t is not None:
                fits = fits and tuple(shape) == target.weight_shape
            expect(
                fits,
                f"{a_name} {shape_str(a.shape)} and {b_name} {shape_str(b.shape)} rebuild a weight of shape "
                f"{shape_str(shape)} but the target {target.label} has {shape_str(target.weight_shape)}",
            )

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        device = orig_weight.device
        shape = self.target.weight_shape
        w1 = rebuild(self.w1a, self.w1b, self.t1, device).reshape(shape)
        w2 = rebuild(self.w2a, self.w2b, self.t2, device).reshape(shape)
        if factor != 1.0:
            w1 *= factor
        return w1.mul_(w2), None
