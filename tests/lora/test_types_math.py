"""Network types: ΔW equals the independent reference formulas (tests/lora/formulas.py).

fp32 math, relative error ≤ 1e-6 against float64 formulas on the same factor values, for every type on
Linear and Conv2d (1x1 and 3x3) targets, with scale, multiplier, dyn, DoRA (both axes), Tucker, IA3
on_input, OFT/BOFT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lora_ui.lora.types import (
    FullModule,
    GLoRAModule,
    IA3Module,
    LoHaModule,
    LoKrModule,
    LoRAModule,
    NormModule,
    OFTModule,
    load_network_module,
)
from tests.lora import formulas as F

TOL = 1e-6


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rnd(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, std: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=gen) * std).to(dtype)


def linear(out: int, inp: int, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inp, out, bias=bias)


def conv(out: int, inp: int, k: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(inp, out, k, padding=k // 2)


def weight_of(module: nn.Module) -> Tensor:
    return module.weight.detach()


@dataclass
class Case:
    """One network module's parts, its target, and the reference ΔW / Δbias as functions of (W, mult)."""

    name: str
    cls: type
    parts: dict[str, Tensor]
    target: nn.Module
    expected: Callable[[Tensor, float], Tensor]
    expected_bias: Callable[[float], Tensor] | None = None


def catalogue(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Case]:
    """One or more cases per type and target kind; factors in `dtype` (the file dtype)."""
    g = seeded(seed)

    def r(*shape: int, std: float = 1.0) -> Tensor:
        return rnd(g, *shape, dtype=dtype, std=std)

    cases: list[Case] = []
    alpha = torch.tensor(3.0)

    # LoRA on Linear, rank 4, alpha 3
    lin = linear(12, 10, seed)
    up, down = r(12, 4), r(4, 10)
    cases.append(Case("lora-linear", LoRAModule, {"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha}, lin,
                      lambda W, m, up=up, down=down: F.finalize(F.lora_raw(up, down), W, 3.0 / 4, m)))
    # LoCon on a 3x3 conv: down 3x3, up 1x1
    c3 = conv(8, 6, 3, seed)
    up, down = r(8, 4, 1, 1), r(4, 6, 3, 3)
    cases.append(Case("locon-conv3x3", LoRAModule, {"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha}, c3,
                      lambda W, m, up=up, down=down: F.finalize(F.lora_raw(up, down), W, 3.0 / 4, m)))
    # Linear-shaped LoRA on a 1x1 conv (SD1 proj_in/proj_out)
    c1 = conv(8, 6, 1, seed)
    up, down = r(8, 2), r(2, 6)
    cases.append(Case("lora-linear-on-conv1x1", LoRAModule, {"lora_up.weight": up, "lora_down.weight": down}, c1,
                      lambda W, m, up=up, down=down: F.finalize(F.lora_raw(up, down), W, 1.0, m)))
    # Tucker LoCon
    up, down, mid = r(8, 3, 1, 1), r(3, 6, 1, 1), r(3, 3, 3, 3)
    cases.append(Case("locon-tucker", LoRAModule,
                      {"lora_up.weight": up, "lora_down.weight": down, "lora_mid.weight": mid, "alpha": torch.tensor(1.5)}, c3,
                      lambda W, m, up=up, down=down, mid=mid: F.finalize(F.lora_tucker_raw(up, down, mid), W, 1.5 / 3, m)))
    # DoRA, per input column (kohya/LyCORIS (1, in)) and per output row ((out, 1)), on Linear and conv
    up, down = r(12, 4, std=0.3), r(4, 10, std=0.3)
    dora_col = r(1, 10).abs() + 0.5
    cases.append(Case("lora-dora-column", LoRAModule,
                      {"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha, "dora_scale": dora_col}, lin,
                      lambda W, m, up=up, down=down, s=dora_col: F.finalize(F.lora_raw(up, down), W, 0.75, m, dora_scale=s, dora_axis="column")))
    dora_row = r(12, 1).abs() + 0.5
    cases.append(Case("lora-dora-row", LoRAModule,
                      {"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha, "dora_scale": dora_row}, lin,
                      lambda W, m, up=up, down=down, s=dora_row: F.finalize(F.lora_raw(up, down), W, 0.75, m, dora_scale=s, dora_axis="row")))
    cup, cdown = r(8, 4, 1, 1, std=0.3), r(4, 6, 3, 3, std=0.3)
    dora_conv = r(1, 6, 1, 1).abs() + 0.5
    cases.append(Case("locon-dora-column", LoRAModule,
                      {"lora_up.weight": cup, "lora_down.weight": cdown, "dora_scale": dora_conv}, c3,
                      lambda W, m, up=cup, down=cdown, s=dora_conv: F.finalize(F.lora_raw(up, down), W, 1.0, m, dora_scale=s, dora_axis="column")))
    dora_conv_row = r(8, 1, 1, 1).abs() + 0.5
    cases.append(Case("locon-dora-row", LoRAModule,
                      {"lora_up.weight": cup, "lora_down.weight": cdown, "dora_scale": dora_conv_row}, c3,
                      lambda W, m, up=cup, down=cdown, s=dora_conv_row: F.finalize(F.lora_raw(up, down), W, 1.0, m, dora_scale=s, dora_axis="row")))
    # LyCORIS weight-shaped `bias` part
    bias_part = r(12, 10, std=0.1)
    up, down = r(12, 4), r(4, 10)
    cases.append(Case("lora-bias-part", LoRAModule,
                      {"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha, "bias": bias_part}, lin,
                      lambda W, m, up=up, down=down, b=bias_part: F.finalize(F.lora_raw(up, down), W, 0.75, m, bias_part=b)))

    # LoHa plain (Linear and 3x3 conv with flat w_b), Tucker (3x3 conv)
    w1a, w1b, w2a, w2b = r(12, 3), r(3, 10), r(12, 3), r(3, 10)
    cases.append(Case("loha-linear", LoHaModule,
                      {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(2.0)}, lin,
                      lambda W, m, p=(w1a, w1b, w2a, w2b): F.finalize(F.loha_raw(*p), W, 2.0 / 3, m)))
    w1a, w1b, w2a, w2b = r(8, 2), r(2, 54), r(8, 2), r(2, 54)
    cases.append(Case("loha-conv3x3", LoHaModule,
                      {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}, c3,
                      lambda W, m, p=(w1a, w1b, w2a, w2b): F.finalize(F.loha_raw(*p), W, 1.0, m)))
    w1a, w1b, w2a, w2b, t1, t2 = r(2, 8), r(2, 6), r(2, 8), r(2, 6), r(2, 2, 3, 3), r(2, 2, 3, 3)
    cases.append(Case("loha-tucker", LoHaModule,
                      {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "hada_t1": t1, "hada_t2": t2,
                       "alpha": torch.tensor(1.0)}, c3,
                      lambda W, m, p=(w1a, w1b, w2a, w2b, t1, t2): F.finalize(F.loha_raw(*p), W, 1.0 / 2, m)))

    # LoKr: every factor form
    a = torch.tensor(2.0)
    w1, w2 = r(3, 2), r(4, 5)
    cases.append(Case("lokr-full-full", LoKrModule, {"lokr_w1": w1, "lokr_w2": w2, "alpha": a}, lin,
                      lambda W, m, w1=w1, w2=w2: F.finalize(F.lokr_raw(w1=w1, w2=w2), W, 1.0, m)))  # alpha ignored
    w1, w2a, w2b = r(3, 2), r(4, 2), r(2, 5)
    cases.append(Case("lokr-full-lowrank", LoKrModule, {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": a}, lin,
                      lambda W, m, w1=w1, w2a=w2a, w2b=w2b: F.finalize(F.lokr_raw(w1=w1, w2a=w2a, w2b=w2b), W, 2.0 / 2, m)))
    w1a, w1b, w2 = r(3, 1), r(1, 2), r(4, 5)
    cases.append(Case("lokr-lowrank-full", LoKrModule, {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2": w2, "alpha": a}, lin,
                      lambda W, m, w1a=w1a, w1b=w1b, w2=w2: F.finalize(F.lokr_raw(w1a=w1a, w1b=w1b, w2=w2), W, 2.0 / 1, m)))
    w1a, w1b, w2a, w2b = r(3, 1), r(1, 2), r(4, 4), r(4, 5)
    cases.append(Case("lokr-lowrank-lowrank", LoKrModule,
                      {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": a}, lin,
                      lambda W, m, p=(w1a, w1b, w2a, w2b): F.finalize(F.lokr_raw(w1a=p[0], w1b=p[1], w2a=p[2], w2b=p[3]), W, 2.0 / 4, m)))
    w1, w2 = r(2, 3), r(4, 2, 3, 3)
    cases.append(Case("lokr-conv-full4d", LoKrModule, {"lokr_w1": w1, "lokr_w2": w2}, c3,
                      lambda W, m, w1=w1, w2=w2: F.finalize(F.lokr_raw(w1=w1, w2=w2), W, 1.0, m)))
    w1, w2a, w2b = r(2, 3), r(4, 2), r(2, 18)
    cases.append(Case("lokr-conv-lowrank-flat", LoKrModule, {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": a}, c3,
                      lambda W, m, w1=w1, w2a=w2a, w2b=w2b: F.finalize(F.lokr_raw(w1=w1, w2a=w2a, w2b=w2b), W, 1.0, m)))
    w1, w2a, w2b, t2 = r(2, 3), r(2, 4), r(2, 2), r(2, 2, 3, 3)
    cases.append(Case("lokr-conv-tucker", LoKrModule,
                      {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "lokr_t2": t2, "alpha": torch.tensor(1.0)}, c3,
                      lambda W, m, p=(w1, w2a, w2b, t2): F.finalize(F.lokr_raw(w1=p[0], w2a=p[1], w2b=p[2], t2=p[3]), W, 0.5, m)))

    # IA3: per output row, per input column, on a conv
    w = r(12, std=0.2)
    cases.append(Case("ia3-out", IA3Module, {"weight": w}, lin, lambda W, m, w=w: F.ia3_delta(W, w, m)))
    w = r(1, 10, std=0.2)
    cases.append(Case("ia3-on-input", IA3Module, {"weight": w, "on_input": torch.tensor(True)}, lin,
                      lambda W, m, w=w: F.ia3_delta(W, w, m, on_input=True)))
    w = r(8, 1, std=0.2)
    cases.append(Case("ia3-conv", IA3Module, {"weight": w, "alpha": alpha}, c3, lambda W, m, w=w: F.ia3_delta(W, w, m)))
    w = r(6, std=0.2)
    cases.append(Case("ia3-conv-on-input", IA3Module, {"weight": w, "on_input": torch.tensor(1.0)}, c3,
                      lambda W, m, w=w: F.ia3_delta(W, w, m, on_input=True)))

    # Full diff (+ diff_b; a `scale` part scales diff but never diff_b)
    diff, diff_b = r(12, 10), r(12)
    cases.append(Case("full-linear", FullModule, {"diff": diff, "diff_b": diff_b, "scale": torch.tensor(0.5)}, lin,
                      lambda W, m, x=diff: F.finalize(x, W, 0.5, m), lambda m, b=diff_b: F.d(b) * m))
    diff = r(8, 6, 3, 3)
    cases.append(Case("full-conv", FullModule, {"diff": diff}, c3, lambda W, m, x=diff: F.finalize(x, W, 1.0, m)))

    # Norm on GroupNorm and LayerNorm
    torch.manual_seed(seed)
    gn, ln = nn.GroupNorm(2, 8), nn.LayerNorm(10)
    for name, mod, n in (("norm-groupnorm", gn, 8), ("norm-layernorm", ln, 10)):
        wn, bn = r(n), r(n)
        cases.append(Case(name, NormModule, {"w_norm": wn, "b_norm": bn}, mod,
                          lambda W, m, x=wn: F.finalize(x, W, 1.0, m), lambda m, b=bn: F.d(b) * m))

    # GLoRA (Linear)
    a1, a2, b1, b2 = r(3, 10, std=0.3), r(10, 3, std=0.3), r(2, 10), r(12, 2)
    cases.append(Case("glora-linear", GLoRAModule,
                      {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": alpha}, lin,
                      lambda W, m, p=(a1, a2, b1, b2): F.finalize(F.glora_raw(W, *p), W, 1.0, m)))

    # OFT: new blocks (no constraint; active constraint + rescale), old oft_diag, BOFT
    blocks = r(3, 4, 4, std=0.1)
    cases.append(Case("oft-linear", OFTModule, {"oft_blocks": blocks}, lin,
                      lambda W, m, b=blocks: F.oft_delta(W, b, multiplier=m)))
    blocks_c, resc = r(2, 4, 4, std=0.5), r(8, 1, 1, 1).abs() + 0.5
    cases.append(Case("oft-conv-constrained-rescale", OFTModule,
                      {"oft_blocks": blocks_c, "alpha": torch.tensor(1e-2), "rescale": resc}, c3,
                      lambda W, m, b=blocks_c, s=resc: F.oft_delta(W, b, alpha=1e-2, rescale=s, multiplier=m)))
    diag = r(4, 3, 3, std=0.3) + torch.eye(3, dtype=dtype)
    cases.append(Case("oft-diag", OFTModule, {"oft_diag": diag, "alpha": alpha}, lin,
                      lambda W, m, b=diag: F.oft_delta(W, b, is_diag=True, multiplier=m)))
    boft = r(2, 4, 2, 2, std=0.2)  # m=2 stages, 4 blocks of 2 rows: out 8
    cases.append(Case("boft-conv", OFTModule, {"oft_blocks": boft}, c3,
                      lambda W, m, b=boft: F.boft_delta(W, b, multiplier=m)))
    lin16 = linear(16, 5, seed)
    boft3 = r(3, 4, 4, 4, std=0.2)  # m=3 stages, 4 blocks of 4 rows: out 16
    cases.append(Case("boft-linear-3stage", OFTModule, {"oft_blocks": boft3, "alpha": torch.tensor(0.05)}, lin16,
                      lambda W, m, b=boft3: F.boft_delta(W, b, alpha=0.05, multiplier=m)))
    return cases


CASES = catalogue()
CASE_IDS = [c.name for c in CASES]


def check_case(case: Case, multiplier: float, weight: Tensor | None = None) -> None:
    module = load_network_module(case.parts, case.target)
    assert type(module) is case.cls
    W = weight_of(case.target) if weight is None else weight
    delta, bias = module.delta(W, multiplier)
    assert delta.dtype == torch.float32 and delta.shape == W.shape
    expected = case.expected(W, multiplier)
    assert F.rel_err(delta, expected) <= TOL, case.name
    if case.expected_bias is None:
        assert bias is None
    else:
        assert bias is not None and bias.dtype == torch.float32
        assert F.rel_err(bias, case.expected_bias(multiplier)) <= TOL


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("multiplier", [1.0, 0.6, -1.3])
def test_delta_matches_reference_formula(case: Case, multiplier: float) -> None:
    check_case(case, multiplier)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_multiplier_is_linear_and_zero_gives_zero(case: Case) -> None:
    module = load_network_module(case.parts, case.target)
    W = weight_of(case.target)
    d1, b1 = module.delta(W, 1.0)
    d3, b3 = module.delta(W, 0.3)
    assert F.rel_err(d3, 0.3 * F.d(d1)) <= TOL
    assert d1.abs().max() > 0
    d0, b0 = module.delta(W, 0.0)
    assert torch.count_nonzero(d0) == 0
    if b1 is not None:
        assert F.rel_err(b3, 0.3 * F.d(b1)) <= TOL and torch.count_nonzero(b0) == 0


@pytest.mark.parametrize("case", catalogue(torch.float16, seed=5), ids=CASE_IDS)
def test_fp16_factors_and_fp16_weight_give_fp32_math(case: Case) -> None:
    # Formula on the same fp16 values, in float64: fp16 arithmetic would miss by ~1e-3.
    check_case(case, 0.8)
    check_case(case, 0.8, weight=weight_of(case.target).to(torch.float16))


@pytest.mark.parametrize("case", catalogue(torch.bfloat16, seed=6)[:3], ids=CASE_IDS[:3])
def test_bf16_factors_give_fp32_math(case: Case) -> None:
    check_case(case, 1.0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_delta_leaves_parts_and_weight_untouched_and_stacks_on_the_given_weight(case: Case) -> None:
    parts_before = {k: v.clone() for k, v in case.parts.items()}
    module = load_network_module(case.parts, case.target)
    W = weight_of(case.target).clone()
    W_before = W.clone()
    first, _ = module.delta(W, 1.0)
    module.delta(W, 2.0)
    assert torch.equal(W, W_before)
    for k, v in case.parts.items():
        assert torch.equal(v, parts_before[k]), k
    # A second LoRA on the same layer sees the weight already holding the first one.
    W2 = (W + first).contiguous()
    delta2, _ = module.delta(W2, 0.5)
    assert F.rel_err(delta2, case.expected(W2, 0.5)) <= TOL


def test_fp16_factors_stay_fp16_in_memory() -> None:
    case = catalogue(torch.float16)[0]
    module = load_network_module(case.parts, case.target)
    assert module.up.dtype == torch.float16 and module.down.dtype == torch.float16
    assert module.nbytes == sum(t.numel() * t.element_size() for t in case.parts.values())


# ---- scale, rank, dyn, aliases -----------------------------------------------------------------------


def lora_parts(up: Tensor, down: Tensor, **extra: Tensor) -> dict[str, Tensor]:
    return {"lora_up.weight": up, "lora_down.weight": down, **extra}


def test_scale_is_alpha_over_rank_missing_alpha_is_one_scale_tensor_wins() -> None:
    g = seeded(1)
    lin = linear(6, 5)
    up, down = rnd(g, 6, 4), rnd(g, 4, 5)
    plain = load_network_module(lora_parts(up, down), lin)
    halved = load_network_module(lora_parts(up, down, alpha=torch.tensor(2.0)), lin)
    assert plain.rank == 4 and plain.scale == 1.0 and halved.scale == 0.5
    W = weight_of(lin)
    assert F.rel_err(halved.delta(W, 1.0)[0], 0.5 * F.d(plain.delta(W, 1.0)[0])) <= TOL
    # A1111's calc_scale: an explicit `scale` tensor comes first.
    scaled = load_network_module(lora_parts(up, down, alpha=torch.tensor(2.0), scale=torch.tensor(0.25)), lin)
    assert scaled.scale == 0.25
    assert F.rel_err(scaled.delta(W, 1.0)[0], F.finalize(F.lora_raw(up, down), W, 0.25, 1.0)) <= TOL


def test_scale_is_one_for_types_without_rank_and_oft_ignores_scale_tensor() -> None:
    by_name = {c.name: c for c in CASES}
    for name in ("lokr-full-full", "ia3-conv", "glora-linear", "oft-diag"):
        case = by_name[name]
        assert "alpha" in case.parts
        assert load_network_module(case.parts, case.target).scale == 1.0, name
    case = by_name["oft-linear"]
    module = load_network_module({**case.parts, "scale": torch.tensor(0.1)}, case.target)
    assert module.scale == 1.0


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(1, 9), inp=st.integers(1, 9), rank=st.integers(1, 6), dyn=st.integers(1, 8),
    alpha=st.floats(0.1, 8.0), multiplier=st.floats(-2.0, 2.0).filter(lambda m: abs(m) > 1e-3), seed=st.integers(0, 2**16),
)
def test_lora_dyn_keeps_first_components_with_full_rank_scale(out, inp, rank, dyn, alpha, multiplier, seed) -> None:
    g = seeded(seed)
    lin = linear(out, inp, seed=seed)
    up, down = rnd(g, out, rank), rnd(g, rank, inp)
    module = load_network_module(lora_parts(up, down, alpha=torch.tensor(alpha)), lin)
    W = weight_of(lin)
    got, _ = module.delta(W, multiplier, dyn=dyn)
    want = F.finalize(F.lora_raw(up, down, dyn=dyn), W, alpha / rank, multiplier)
    magnitude = F.finalize(F.lora_raw(*F.abs_inputs(up, down), dyn=dyn), W, alpha / rank, abs(multiplier))
    F.assert_fp32_close(got, want, magnitude, depth=min(dyn, rank) + 4)


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(1, 8), inp=st.integers(1, 8), rank=st.integers(1, 5), kernel=st.sampled_from([1, 3]),
    alpha=st.floats(0.1, 8.0), seed=st.integers(0, 2**16), tucker=st.booleans(),
)
def test_locon_random_shapes(out, inp, rank, kernel, alpha, seed, tucker) -> None:
    g = seeded(seed)
    c = conv(out, inp, kernel, seed=seed)
    W = weight_of(c)
    if tucker:
        up, down, mid = rnd(g, out, rank, 1, 1), rnd(g, rank, inp, 1, 1), rnd(g, rank, rank, kernel, kernel)
        parts = lora_parts(up, down, alpha=torch.tensor(alpha), **{"lora_mid.weight": mid})
        raw = F.lora_tucker_raw(up, down, mid)
        magnitude = F.lora_tucker_raw(*F.abs_inputs(up, down, mid))
        depth = 2 * rank + 4  # two contractions over the rank, then scale and multiplier
    else:
        up, down = rnd(g, out, rank, 1, 1), rnd(g, rank, inp, kernel, kernel)
        parts = lora_parts(up, down, alpha=torch.tensor(alpha))
        raw = F.lora_raw(up, down)
        magnitude = F.lora_raw(*F.abs_inputs(up, down))
        depth = rank + 4
    got, _ = load_network_module(parts, c).delta(W, 0.7)
    F.assert_fp32_close(got, F.finalize(raw, W, alpha / rank, 0.7), F.finalize(magnitude, W, alpha / rank, 0.7), depth)


@settings(max_examples=20, deadline=None)
@given(out=st.integers(1, 8), inp=st.integers(1, 8), rank=st.integers(1, 4), seed=st.integers(0, 2**16),
       axis=st.sampled_from(["column", "row"]))
def test_dora_random_shapes_both_axes(out, inp, rank, seed, axis) -> None:
    g = seeded(seed)
    lin = linear(out, inp, seed=seed)
    W = weight_of(lin)
    up, down = rnd(g, out, rank, std=0.2), rnd(g, rank, inp, std=0.2)
    magnitude = rnd(g, 1, inp).abs() + 0.1 if axis == "column" else rnd(g, out, 1).abs() + 0.1
    module = load_network_module(lora_parts(up, down, alpha=torch.tensor(1.0), dora_scale=magnitude), lin)
    got, _ = module.delta(W, 0.9)
    if out == inp == 1:
        axis = "column"  # both axes are the same single element
    want = F.finalize(F.lora_raw(up, down), W, 1.0 / rank, 0.9, dora_scale=magnitude, dora_axis=axis)
    scaled = F.finalize(F.lora_raw(up, down), W, 1.0 / rank, 1.0)
    spread = F.finalize(F.lora_raw(*F.abs_inputs(up, down)), W, 1.0 / rank, 1.0)
    bound_terms = 0.9 * F.dora_magnitude(W, scaled, spread, magnitude, axis)
    norm_length = out if axis == "column" else inp
    F.assert_fp32_close(got, want, bound_terms, depth=rank + norm_length + 8)


def test_peft_magnitude_vector_is_row_dora() -> None:
    g = seeded(2)
    lin = linear(7, 7)
    W = weight_of(lin)
    a, b, m = rnd(g, 3, 7, std=0.3), rnd(g, 7, 3, std=0.3), rnd(g, 7).abs() + 0.5
    module = load_network_module({"lora_A.weight": a, "lora_B.weight": b, "lora_magnitude_vector": m}, lin)
    want = F.finalize(F.lora_raw(b, a), W, 1.0, 1.0, dora_scale=m, dora_axis="row")
    assert F.rel_err(module.delta(W, 1.0)[0], want) <= TOL


def test_peft_and_diffusers_names_equal_kohya_names() -> None:
    g = seeded(3)
    lin = linear(6, 5)
    W = weight_of(lin)
    up, down = rnd(g, 6, 2), rnd(g, 2, 5)
    kohya = load_network_module(lora_parts(up, down, alpha=torch.tensor(1.0)), lin).delta(W, 1.0)[0]
    peft = load_network_module({"lora_B.weight": up, "lora_A.weight": down, "alpha": torch.tensor(1.0)}, lin).delta(W, 1.0)[0]
    old = load_network_module({"lora.up.weight": up, "lora.down.weight": down, "alpha": torch.tensor(1.0)}, lin).delta(W, 1.0)[0]
    assert torch.equal(kohya, peft) and torch.equal(kohya, old)
    assert F.rel_err(kohya, F.finalize(F.lora_raw(up, down), W, 0.5, 1.0)) <= TOL


def test_4d_lora_on_linear_target() -> None:
    g = seeded(4)
    lin = linear(6, 5)
    up, down = rnd(g, 6, 2, 1, 1), rnd(g, 2, 5, 1, 1)
    got, _ = load_network_module(lora_parts(up, down), lin).delta(weight_of(lin), 1.0)
    assert F.rel_err(got, F.finalize(F.lora_raw(up, down), weight_of(lin), 1.0, 1.0)) <= TOL


def test_bias_only_full_and_norm_give_zero_weight_delta() -> None:
    lin, gn = linear(6, 5), nn.GroupNorm(2, 4)
    b = torch.randn(6, generator=seeded(5))
    delta, bias = load_network_module({"diff_b": b}, lin).delta(weight_of(lin), 0.5)
    assert torch.count_nonzero(delta) == 0 and torch.allclose(bias, 0.5 * b)
    nb = torch.randn(4, generator=seeded(6))
    delta, bias = load_network_module({"b_norm": nb}, gn).delta(weight_of(gn), 2.0)
    assert torch.count_nonzero(delta) == 0 and torch.allclose(bias, 2.0 * nb)
    assert load_network_module({"diff_b": b}, lin).has_layer_bias_delta


def test_oft_is_a_rotation_of_each_block() -> None:
    # W' = W + ΔW keeps each row-block's column norms (Rᵀ is orthogonal) when unconstrained, multiplier 1.
    case = {c.name: c for c in CASES}["oft-linear"]
    module = load_network_module(case.parts, case.target)
    W = weight_of(case.target)
    new = W + module.delta(W, 1.0)[0]
    for blk in range(3):
        rows = slice(4 * blk, 4 * blk + 4)
        assert torch.allclose(new[rows].norm(dim=0), W[rows].norm(dim=0), rtol=1e-5)
    assert not torch.allclose(new, W)


# ---- low-rank factors for the low-memory mode -------------------------------------------------------


@pytest.mark.parametrize("name", ["lora-linear", "locon-conv3x3", "lora-linear-on-conv1x1", "locon-tucker"])
@pytest.mark.parametrize("dyn", [None, 2])
def test_low_rank_factors_as_forward_branch_equal_delta(name: str, dyn: int | None) -> None:
    case = {c.name: c for c in CASES}[name]
    module = load_network_module(case.parts, case.target)
    factors = module.low_rank_factors(dyn=dyn)
    assert factors is not None and factors.scale == module.scale
    target = case.target
    W = weight_of(target)
    delta, _ = module.delta(W, 1.0, dyn=dyn)
    x_shape = (2, W.shape[1]) if isinstance(target, nn.Linear) else (2, W.shape[1], 5, 5)
    x = torch.randn(*x_shape, generator=seeded(7))
    if isinstance(target, nn.Linear):
        assert factors.mid is None and factors.down.dim() == 2 and factors.up.dim() == 2
        branch = x @ factors.down.T @ factors.up.T
        reference = x @ delta.T
    else:
        conv_args = {"stride": target.stride, "padding": target.padding}
        assert factors.up.shape[2:] == (1, 1)
        if factors.mid is None:
            h = torch.nn.functional.conv2d(x, factors.down, **conv_args)
        else:
            h = torch.nn.functional.conv2d(x, factors.down)
            h = torch.nn.functional.conv2d(h, factors.mid, **conv_args)
        branch = torch.nn.functional.conv2d(h, factors.up)
        reference = torch.nn.functional.conv2d(x, delta, **conv_args)
    assert F.rel_err(branch * factors.scale, reference) <= 1e-5


def test_low_rank_factors_only_for_plain_lora() -> None:
    by_name = {c.name: c for c in CASES}
    for name in ("lora-dora-column", "lora-bias-part", "loha-linear", "lokr-full-lowrank", "ia3-out", "oft-linear"):
        case = by_name[name]
        assert load_network_module(case.parts, case.target).low_rank_factors() is None, name


def test_low_rank_factors_keep_file_dtype() -> None:
    case = catalogue(torch.float16)[1]
    factors = load_network_module(case.parts, case.target).low_rank_factors()
    assert factors.down.dtype == torch.float16 and factors.up.dtype == torch.float16
    assert factors.down.shape == (4, 6, 3, 3) and factors.up.shape == (8, 4, 1, 1)


@settings(max_examples=20, deadline=None)
@given(
    o1=st.integers(1, 4), o2=st.integers(1, 4), i1=st.integers(1, 4), i2=st.integers(1, 4), rank=st.integers(1, 3),
    kernel=st.sampled_from([None, 1, 3]), w1_form=st.sampled_from(["full", "lowrank"]),
    w2_form=st.sampled_from(["full", "lowrank", "tucker"]), seed=st.integers(0, 2**16),
)
def test_lokr_random_shapes_and_forms(o1, o2, i1, i2, rank, kernel, w1_form, w2_form, seed) -> None:
    g = seeded(seed)
    if kernel is None and w2_form == "tucker":
        w2_form = "lowrank"  # Tucker cores are for convs
    target = linear(o1 * o2, i1 * i2, seed) if kernel is None else conv(o1 * o2, i1 * i2, kernel, seed)
    W = weight_of(target)
    k = () if kernel is None else (kernel, kernel)
    parts: dict[str, Tensor] = {"alpha": torch.tensor(1.5)}
    if w1_form == "full":
        parts["lokr_w1"] = rnd(g, o1, i1)
    else:
        parts["lokr_w1_a"], parts["lokr_w1_b"] = rnd(g, o1, rank), rnd(g, rank, i1)
    if w2_form == "full":
        parts["lokr_w2"] = rnd(g, o2, i2, *k)
    elif w2_form == "lowrank":
        parts["lokr_w2_a"], parts["lokr_w2_b"] = rnd(g, o2, rank), rnd(g, rank, i2 * (kernel or 1) ** 2)
    else:
        parts["lokr_w2_a"], parts["lokr_w2_b"], parts["lokr_t2"] = rnd(g, rank, o2), rnd(g, rank, i2), rnd(g, rank, rank, *k)
    module = load_network_module(parts, target)
    raw = F.lokr_raw(
        w1=parts.get("lokr_w1"), w1a=parts.get("lokr_w1_a"), w1b=parts.get("lokr_w1_b"), w2=parts.get("lokr_w2"),
        w2a=parts.get("lokr_w2_a"), w2b=parts.get("lokr_w2_b"), t2=parts.get("lokr_t2"),
    )
    scale = 1.0 if (w1_form == "full" and w2_form == "full") else 1.5 / rank
    assert module.scale == pytest.approx(scale)
    magnitude = F.lokr_raw(*[None if t is None else t.abs() for t in (
        parts.get("lokr_w1"), parts.get("lokr_w1_a"), parts.get("lokr_w1_b"), parts.get("lokr_w2"),
        parts.get("lokr_w2_a"), parts.get("lokr_w2_b"), parts.get("lokr_t2"))])
    F.assert_fp32_close(module.delta(W, -0.4)[0], F.finalize(raw, W, scale, -0.4),
                        F.finalize(magnitude, W, scale, 0.4), depth=2 * rank + 6)


@settings(max_examples=20, deadline=None)
@given(out=st.integers(1, 7), inp=st.integers(1, 7), rank=st.integers(1, 4), kernel=st.sampled_from([None, 1, 3]),
       tucker=st.booleans(), seed=st.integers(0, 2**16))
def test_loha_random_shapes(out, inp, rank, kernel, tucker, seed) -> None:
    g = seeded(seed)
    target = linear(out, inp, seed) if kernel is None else conv(out, inp, kernel, seed)
    W = weight_of(target)
    if tucker and kernel is not None:
        p = (rnd(g, rank, out), rnd(g, rank, inp), rnd(g, rank, out), rnd(g, rank, inp),
             rnd(g, rank, rank, kernel, kernel), rnd(g, rank, rank, kernel, kernel))
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    else:
        fan_in = inp * (kernel or 1) ** 2
        p = (rnd(g, out, rank), rnd(g, rank, fan_in), rnd(g, out, rank), rnd(g, rank, fan_in))
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    module = load_network_module({**dict(zip(names, p)), "alpha": torch.tensor(2.0)}, target)
    magnitude = F.finalize(F.loha_raw(*F.abs_inputs(*p)), W, 2.0 / rank, 1.2)
    # each factor: up to two contractions over the rank; then their product, scale and multiplier
    F.assert_fp32_close(module.delta(W, 1.2)[0], F.finalize(F.loha_raw(*p), W, 2.0 / rank, 1.2), magnitude,
                        depth=2 * (2 * rank) + 6)


# Factors stay on the CPU (file tensors); ΔW is computed on the weight's device. On a machine with a
# GPU this also runs every case on CUDA.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_delta_is_computed_on_the_weights_device(case: Case, device: str) -> None:
    module = load_network_module(case.parts, case.target)
    W = weight_of(case.target).to(device)
    delta, bias = module.delta(W, 0.7)
    assert delta.device == W.device and delta.dtype == torch.float32
    assert F.rel_err(delta.cpu(), case.expected(W.cpu(), 0.7)) <= TOL
    if bias is not None:
        assert bias.device == W.device
