"""Reference formulas for every LoRA network type, written from /work/shared/reference/lora-formats.md
(and, where that text only names a feature, from A1111 v1.10's documented behaviour), independently of
lora_ui.lora.types: plain torch, float64, no shared helpers, loops where they make the math obvious.

Every function returns the final weight delta ΔW (what is added to W), multiplier included.
"""
from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


def d(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ (Frobenius, float64); absolute error when expected is 0."""
    a, e = d(actual), d(expected)
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    diff = (a - e).norm().item()
    base = e.norm().item()
    return diff / base if base > 0 else diff


# ---- how close fp32 can be: element-wise bounds from the arithmetic -------------------------------------
#
# The code under test computes in fp32; these formulas compute the exact value of the same inputs in
# float64 (exact up to ~1e-16, negligible here). Standard rounding-error analysis (Higham, "Accuracy and
# Stability of Numerical Algorithms", §3.1): with unit roundoff u = 2**-24, a sum of k products computed
# in fp32 in any order is within  k·u·Σ|a_i·b_i|  of the exact sum (to first order), and every further
# multiply, add or cast adds one u times the magnitude of its operands. So each element gets its own
# bound  depth·u·magnitude, where `magnitude` is the same formula evaluated on the absolute values of
# every input (Σ|terms|, not |Σ terms|: near-cancelling terms are exactly where fp32 loses digits, and
# where a fixed relative tolerance fails by chance on tiny random shapes), and `depth` is the longest
# chain of roundings (the reduction length plus the scalar steps after it). A real formula error of
# the kind these tests look for (a missing term, a wrong scale, a transposed factor) is of the size of
# the result itself, orders of magnitude above these bounds.

U32 = 2.0**-24
TINY = 2.0**-126  # fp32's smallest normal: results below it round absolutely, not relatively


def fp32_bound(magnitude: Tensor, depth: int) -> Tensor:
    """Per-element bound on |fp32 result − exact result| (see above)."""
    return depth * U32 * d(magnitude).abs() + depth * TINY


def assert_fp32_close(got: Tensor, want: Tensor, magnitude: Tensor, depth: int, what: str = "") -> None:
    """Every element of `got` within `fp32_bound(magnitude, depth)` of the float64 `want`; the message
    names the worst element, its error and its bound."""
    g, w = d(got), d(want)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    err = (g - w).abs()
    bound = fp32_bound(magnitude.reshape(w.shape), depth)
    ratio = err / bound
    worst = int(ratio.argmax())
    assert ratio.reshape(-1)[worst] <= 1.0, (
        f"{what}: element {worst} off by {err.reshape(-1)[worst]:.3e}, bound {bound.reshape(-1)[worst]:.3e} "
        f"(depth {depth}, magnitude {d(magnitude).reshape(-1)[worst]:.3e})")


def abs_inputs(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The inputs with every value replaced by its absolute value (to evaluate Σ|terms| with a formula)."""
    return tuple(None if t is None else d(t).abs() for t in tensors)


def dora_magnitude(weight: Tensor, scaled_delta: Tensor, delta_magnitude: Tensor, dora_scale: Tensor,
                   dora_axis: str) -> Tensor:
    """Σ|terms| for DoRA's  (W + ΔW)·s/‖W + ΔW‖ − W  (ΔW already scaled, exact in float64; its own
    magnitude `delta_magnitude`). Error sources, each bounded element-wise by u times:
      * ΔW's rounding, carried through the rescale:      (|s|/‖·‖)·(|ΔW|mag + |W|)
      * the norm's (length-n reduction, relative) and the rescale's own roundings, and the same rounding
        of ΔW seen through the norm:                      |rescaled|·(1 + ‖|ΔW|mag + |W|‖/‖·‖)
      * the final subtraction:                            |W|
    A depth of (reduction length + a few) then covers every path."""
    w = d(weight)
    merged = w + d(scaled_delta)
    spread = d(delta_magnitude) + w.abs()
    if dora_axis == "column":
        def norm_of(x):
            return x.transpose(0, 1).reshape(w.shape[1], -1).pow(2).sum(1).sqrt()
        view = [1, w.shape[1]] + [1] * (w.dim() - 2)
    else:
        def norm_of(x):
            return x.reshape(w.shape[0], -1).pow(2).sum(1).sqrt()
        view = [w.shape[0]] + [1] * (w.dim() - 1)
    norm = norm_of(merged).reshape(view)
    gain = d(dora_scale).abs().reshape(view) / norm
    rescaled = merged.abs() * gain
    return gain * spread + rescaled * (1 + norm_of(spread).reshape(view) / norm) + w.abs()


# ---- the shared finalize step ----------------------------------------------------------------------


def finalize(raw: Tensor, weight: Tensor, scale: float, multiplier: float, *, bias_part: Tensor | None = None,
             dora_scale: Tensor | None = None, dora_axis: str | None = None) -> Tensor:
    """Reference "finalize": + weight-shaped bias part, reshape to W, × scale, DoRA, × multiplier.

    dora_axis: "column" (norm per input column: over every dim except dim 1) or "row" (per output row:
    over every dim except dim 0).
    """
    w = d(weight)
    delta = d(raw)
    if bias_part is not None:
        delta = delta.reshape(bias_part.shape) + d(bias_part)
    delta = delta.reshape(w.shape) * scale
    if dora_scale is not None:
        merged = w + delta
        if dora_axis == "column":
            cols = merged.transpose(0, 1).reshape(merged.shape[1], -1)  # one row per input column
            norm = cols.pow(2).sum(dim=1).sqrt()
            view = [1, merged.shape[1]] + [1] * (merged.dim() - 2)
        else:
            rows = merged.reshape(merged.shape[0], -1)
            norm = rows.pow(2).sum(dim=1).sqrt()
            view = [merged.shape[0]] + [1] * (merged.dim() - 1)
        decomposed = merged * d(dora_scale).reshape(view) / norm.reshape(view)
        delta = decomposed - w
    return delta * multiplier


# ---- raw ΔW per type (before scale / multiplier) ---------------------------------------------------


def lora_raw(up: Tensor, down: Tensor, dyn: int | None = None) -> Tensor:
    """up (out, r[,1,1]) @ down (r, in[,kh,kw]) on the first `dyn` rank components: (out, in*kh*kw)."""
    u = d(up).reshape(up.shape[0], up.shape[1])
    dn = d(down).reshape(down.shape[0], -1)
    r = up.shape[1] if dyn is None else min(dyn, up.shape[1])
    out = torch.zeros(u.shape[0], dn.shape[1], dtype=F64)
    for c in range(r):  # sum of rank-1 terms
        out += torch.outer(u[:, c], dn[c])
    return out


def lora_tucker_raw(up: Tensor, down: Tensor, mid: Tensor) -> Tensor:
    """einsum('n m k l, i n, m j -> i j k l', mid, up(i,n), down(m,j))."""
    u = d(up).reshape(up.shape[0], up.shape[1])
    dn = d(down).reshape(down.shape[0], down.shape[1])
    return torch.einsum("n m k l, i n, m j -> i j k l", d(mid), u, dn)


def tucker_rebuild(t: Tensor, w_b: Tensor, w_a: Tensor) -> Tensor:
    """einsum('i j k l, j r, i p -> p r k l', t, w_b, w_a) (LoHa/LoKr Tucker factor)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", d(t), d(w_b), d(w_a))


def loha_raw(w1a, w1b, w2a, w2b, t1=None, t2=None) -> Tensor:
    """(w1_a @ w1_b) ⊙ (w2_a @ w2_b), each factor a Tucker rebuild when t is given."""
    f1 = tucker_rebuild(t1, w1b, w1a) if t1 is not None else d(w1a) @ d(w1b).reshape(w1b.shape[0], -1)
    f2 = tucker_rebuild(t2, w2b, w2a) if t2 is not None else d(w2a) @ d(w2b).reshape(w2b.shape[0], -1)
    return f1.reshape(-1) * f2.reshape(-1)


def kron(a: Tensor, b: Tensor) -> Tensor:
    """Kronecker product by its definition: K[i·p+k, j·q+l, ...] = a[i, j, ...] · b[k, l, ...]."""
    a, b = d(a), d(b)
    if b.dim() == 4:
        # a (o1, i1) treated as (o1, i1, 1, 1)
        prod = torch.einsum("ij,klxy->ikjlxy", a, b)
        return prod.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], b.shape[2], b.shape[3])
    prod = torch.einsum("ij,kl->ikjl", a, b)
    return prod.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def lokr_raw(w1=None, w1a=None, w1b=None, w2=None, w2a=None, w2b=None, t2=None) -> Tensor:
    f1 = d(w1) if w1 is not None else d(w1a) @ d(w1b)
    if w2 is not None:
        f2 = d(w2)
    elif t2 is not None:
        f2 = tucker_rebuild(t2, w2b, w2a)
    else:
        f2 = d(w2a) @ d(w2b)
    return kron(f1, f2)


def ia3_delta(weight: Tensor, w: Tensor, multiplier: float, on_input: bool = False) -> Tensor:
    """W' = W ⊙ (1 + mult·w) per output row (per input column when on_input); returns W' − W."""
    W = d(weight)
    new = W.clone()
    v = d(w).reshape(-1)
    for idx in range(v.numel()):
        if on_input:
            new[:, idx] = W[:, idx] * (1 + multiplier * v[idx])
        else:
            new[idx] = W[idx] * (1 + multiplier * v[idx])
    return new - W


def glora_raw(weight: Tensor, a1, a2, b1, b2) -> Tensor:
    """b2 @ b1 + (W @ a2) @ a1."""
    return d(b2) @ d(b1) + (d(weight) @ d(a2)) @ d(a1)


def cayley(blocks: Tensor, constraint: float | None) -> Tensor:
    """Q = B − Bᵀ (clamped: ‖Q‖ ≤ constraint); R = (I + Q)(I − Q)⁻¹ for each block."""
    B = d(blocks)
    Q = B - B.transpose(-1, -2)
    if constraint:
        n = Q.norm()
        if n > constraint:
            Q = Q * (constraint / n)
    eye = torch.eye(B.shape[-1], dtype=F64)
    return (eye + Q) @ torch.linalg.inv(eye - Q)


def oft_delta(weight: Tensor, blocks: Tensor, *, alpha: float | None = None, is_diag: bool = False,
              rescale: Tensor | None = None, multiplier: float = 1.0) -> Tensor:
    """OFT: W'_k = R_kᵀ W_k for each block k of `b` output rows; oft_diag blocks are R itself."""
    W = d(weight)
    out = W.shape[0]
    R = d(blocks) if is_diag else cayley(blocks, alpha * out if alpha else None)
    k, b, _ = R.shape
    rows = W.reshape(out, -1)
    new = torch.empty_like(rows)
    for blk in range(k):
        sl = slice(blk * b, (blk + 1) * b)
        new[sl] = R[blk].T @ rows[sl]
    if rescale is not None:
        new = new * d(rescale).reshape(-1, 1)
    return (new.reshape(W.shape) - W) * multiplier


def boft_delta(weight: Tensor, blocks: Tensor, *, alpha: float | None = None, multiplier: float = 1.0) -> Tensor:
    """BOFT, A1111/LyCORIS convention: for stage i, half = 2^i·b/2; the rows are permuted so that row
    pairs `half` apart sit next to each other (row (c, g, h) -> position (c, h, g)), each run of b rows is
    multiplied by R_i[block] (not transposed), and the permutation is undone.
    Written with explicit permutation and block-diagonal matrices."""
    W = d(weight)
    out = W.shape[0]
    m, k, b, _ = blocks.shape
    R = cayley(blocks, alpha * out if alpha else None)
    rows = W.reshape(out, -1)
    for stage in range(m):
        half = 2**stage * (b // 2)
        P = torch.zeros(out, out, dtype=F64)  # (P x)[new] = x[old]
        for old in range(out):
            c, rem = divmod(old, 2 * half)
            g, h = divmod(rem, half)
            new = c * 2 * half + h * 2 + g
            P[new, old] = 1.0
        block_diag = torch.block_diag(*[R[stage, j] for j in range(k)])
        rows = P.T @ block_diag @ P @ rows
    return (rows.reshape(W.shape) - W) * multiplier
