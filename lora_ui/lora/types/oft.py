"""OFT / BOFT: rotate the existing weight's output rows by a block-diagonal orthogonal matrix.

Supported (as A1111 v1.10 computes them):
  `oft_blocks` (kohya / new LyCORIS) (k, b, b), k*b = out: Q = B − Bᵀ; when `alpha` is set (non-zero)
      ‖Q‖ (Frobenius, all blocks) is clamped to alpha·out; R = (I + Q)(I − Q)⁻¹ per block;
      W'_k = R_kᵀ W_k on the block view (k, b, ...) of W.
  `oft_blocks` 4-D (m, k, b, b) = BOFT: the same Cayley map per block, then m butterfly stages; stage i
      groups rows in pairs 2^i·b/2 apart, applies R_i (not transposed, as A1111) per block of b.
  `oft_diag` (old LyCORIS) (k, b, b): the blocks are R itself (no Cayley map, alpha unused).
  `rescale` (out,) or (out, 1[, 1, 1]): W' ← rescale ⊙ W' per output row.
ΔW = W' − W, with W the weight passed in; the multiplier scales ΔW linearly. No scale (alpha is the
constraint; a `scale` part is ignored, as in A1111).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import NetworkModule, Target, as_fp32, expect, shape_str

OFT_BLOCKS, OFT_DIAG, RESCALE = "oft_blocks", "oft_diag", "rescale"


def cayley(blocks: Tensor, constraint: float | None) -> Tensor:
    """R = (I + Q)(I − Q)⁻¹ with Q = B − Bᵀ (last two dims), ‖Q‖ clamped to `constraint`. (..., b, b) fp32."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint is not None:
        norm = torch.linalg.vector_norm(q)
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    # X (I − Q) = I + Q, solved rather than inverted.
    return torch.linalg.solve(eye - q, eye + q, left=False)


def butterfly_permute(w: Tensor, half: int) -> Tensor:
    """Rows (c, 2, half) -> (c, half, 2): pairs rows `half` apart next to each other. w: (out, rest)."""
    out, rest = w.shape
    return w.reshape(out // (2 * half), 2, half, rest).transpose(1, 2).reshape(out, rest)


def butterfly_unpermute(w: Tensor, half: int) -> Tensor:
    """Inverse of butterfly_permute."""
    out, rest = w.shape
    return w.reshape(out // (2 * half), half, 2, rest).transpose(1, 2).reshape(out, rest)


class OFTModule(NetworkModule):
    kind = "oft"
    part_names = frozenset({OFT_BLOCKS, OFT_DIAG, RESCALE})
    uses_alpha = False
    uses_scale_tensor = False

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        super().__init__(parts, target)
        if OFT_BLOCKS in parts and OFT_DIAG in parts:
            raise LoraError(f"an OFT module carries both {OFT_BLOCKS} and {OFT_DIAG}; only one is allowed")
        if OFT_BLOCKS not in parts and OFT_DIAG not in parts:
            raise LoraError(
                f"an OFT module needs {OFT_BLOCKS} or {OFT_DIAG} (parts present: {', '.join(sorted(parts))})"
            )
        expect(target.kind in ("linear", "conv"), f"OFT patches Linear or Conv2d layers, but the target is {target.label}")
        self.is_r = OFT_DIAG in parts
        name = OFT_DIAG if self.is_r else OFT_BLOCKS
        self.blocks = parts[name]
        out = target.out_dim
        self.is_boft = self.blocks.dim() == 4 and not self.is_r
        if self.is_boft:
            m, k, b, b2 = self.blocks.shape
            fits = b == b2 and k * b == out and b % 2 == 0 and out % (2 ** m * (b // 2)) == 0
            want = f"(m, k, b, b) with k·b = {out}, b even and {out} divisible by 2^m·b/2"
        else:
            fits = self.blocks.dim() == 3 and self.blocks.shape[1] == self.blocks.shape[2]
            fits = fits and self.blocks.shape[0] * self.blocks.shape[1] == out
            want = f"(k, b, b) with k·b = {out}"
        expect(fits, f"{name} has shape {shape_str(self.blocks.shape)} but the target {target.label} needs {want}")
        self.rescale: Tensor | None = parts.get(RESCALE)
        if self.rescale is not None:
            expect(
                self.rescale.numel() == out and self.rescale.shape[0] == out,
                f"{RESCALE} has shape {shape_str(self.rescale.shape)} but the target {target.label} needs ({out}, 1, ...)",
            )
        # alpha is OFT's constraint: ‖Q‖ ≤ alpha·out (none when alpha is absent or zero).
        self.constraint: float | None = self.alpha * out if (self.alpha and not self.is_r) else None

    @property
    def rank(self) -> int:
        """Number of blocks (A1111's `dim` for OFT; not used for scale)."""
        return int(self.blocks.shape[1] if self.is_boft else self.blocks.shape[0])

    def rotations(self, device: torch.device) -> Tensor:
        """R per block: (k, b, b), or (m, k, b, b) for BOFT; fp32."""
        blocks = as_fp32(self.blocks, device)
        return blocks if self.is_r else cayley(blocks, self.constraint)

    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, None]:
        device = orig_weight.device
        w = as_fp32(orig_weight, device)
        flat = w.reshape(w.shape[0], -1)  # (out, rest)
        r = self.rotations(device)
        if not self.is_boft:
            k, b, _ = r.shape
            # W'_k = R_kᵀ W_k
            merged = torch.bmm(r.transpose(1, 2), flat.reshape(k, b, -1)).reshape(flat.shape)
        else:
            m, k, b, _ = r.shape
            merged = flat
            for stage in range(m):
                half = 2**stage * (b // 2)
                x = butterfly_permute(merged, half).reshape(k, b, -1)
                merged = butterfly_unpermute(torch.bmm(r[stage], x).reshape(flat.shape), half)
        if self.rescale is not None:
            merged = merged * as_fp32(self.rescale, device).reshape(-1, 1)
        updown = merged.reshape(w.shape) - w
        if factor != 1.0:
            updown *= factor
        return updown, None
