"""GLoRA (LyCORIS): ΔW = b2 @ b1 + (W @ a2) @ a1, on Linear layers only.

Shapes (r = rank): a1.weight (r, in), a2.weight (in, r), b1.weight (r, in), b2.weight (out, r).
W is the weight passed in (stacked LoRAs: the weight already holding the earlier ones). Like A1111,
no rank is used for scale: alpha is ignored.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import NetworkModule, Target, as_fp32, expect, scaled_fp32, shape_str

A1, A2, B1, B2 = "a1.weight", "a2.weight", "b1.weight", "b2.weight"


class GLoRAModule(NetworkModule):
    kind = "glora"
    part_names = frozenset({A1, A2, B1, B2})
    uses_alpha = False

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        missing = [n for n in (A1, A2, B1, B2) if n not in parts]
        if missing:
            raise LoraError(f"a GLoRA module needs {', '.join(missing)} (parts present: {', '.join(sorted(parts))})")
        expect(target.kind == "linear", f"GLoRA patches Linear layers only, but the target is {target.label}")
        self.a1, self.a2, self.b1, self.b2 = parts[A1], parts[A2], parts[B1], parts[B2]
        out, inp = target.weight_shape
        ra, rb = self.a1.shape[0], self.b1.shape[0]
        for name, t, want in ((A1, self.a1, (ra, inp)), (A2, self.a2, (inp, ra)), (B1, self.b1, (rb, inp)), (B2, self.b2, (out, rb))):
            expect(
                tuple(t.shape) == want,
                f"{name} has shape {shape_str(t.shape)} but with the target {target.label} it must be {shape_str(want)}",
            )

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        device = orig_weight.device
        w_a2 = torch.mm(as_fp32(orig_weight, device), as_fp32(self.a2, device))  # (out, r)
        if factor != 1.0:
            w_a2 *= factor
        updown = torch.mm(scaled_fp32(self.b2, device, factor), as_fp32(self.b1, device))
        return updown.addmm_(w_a2, as_fp32(self.a1, device)), None
