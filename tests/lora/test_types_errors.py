"""Network types: malformed parts raise LoraError naming the parts (and shapes); foreign parts are not
claimed; the registry keeps A1111's precedence order."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types import NETWORK_TYPES, load_network_module
from tests.lora.test_types_math import CASES, conv, linear

LIN = linear(12, 10)  # Linear(in=10, out=12), with bias
LIN_NO_BIAS = linear(12, 10, bias=False)
C3 = conv(8, 6, 3)
GN = nn.GroupNorm(2, 8)


def r(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def raises(parts: dict[str, Tensor], target: nn.Module, *fragments: str) -> str:
    with pytest.raises(LoraError) as info:
        load_network_module(parts, target)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


BAD = [
    # (id, parts, target, fragments the message must contain)
    ("lora_up-without-down", {"lora_up.weight": r(12, 4)}, LIN, ["lora_down.weight", "lora_up.weight"]),
    ("lora_down-without-up", {"lora_down.weight": r(4, 10), "alpha": torch.tensor(1.0)}, LIN, ["lora_up.weight", "lora_down.weight"]),
    ("peft-A-without-B", {"lora_A.weight": r(4, 10)}, LIN, ["lora_B.weight", "lora_A.weight"]),
    ("lora-up-wrong-out", {"lora_up.weight": r(11, 4), "lora_down.weight": r(4, 10)}, LIN,
     ["lora_up.weight", "(11, 4)", "(12, r", "Linear(in=10, out=12)"]),
    ("lora-down-wrong-in", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 9)}, LIN,
     ["lora_down.weight", "(4, 9)", "(r, 10)"]),
    ("lora-rank-mismatch", {"lora_up.weight": r(12, 3), "lora_down.weight": r(4, 10)}, LIN,
     ["lora_up.weight", "lora_down.weight", "(12, 3)", "(4, 10)", "ranks differ"]),
    ("lora-3x3-down-on-1x1", {"lora_up.weight": r(8, 4, 1, 1), "lora_down.weight": r(4, 6, 3, 3)}, conv(8, 6, 1),
     ["lora_down.weight", "(4, 6, 3, 3)", "(r, 6, 1, 1)"]),
    ("lora-up-3x3", {"lora_up.weight": r(8, 4, 3, 3), "lora_down.weight": r(4, 6, 3, 3)}, C3, ["lora_up.weight", "(8, 4, 3, 3)"]),
    ("lora-on-groupnorm", {"lora_up.weight": r(8, 4), "lora_down.weight": r(4, 8)}, GN, ["lora_up.weight", "GroupNorm"]),
    ("lora-mid-wrong", {"lora_up.weight": r(8, 3, 1, 1), "lora_down.weight": r(3, 6, 1, 1), "lora_mid.weight": r(3, 3, 1, 1)}, C3,
     ["lora_mid.weight", "(3, 3, 1, 1)", "(3, 3, 3, 3)"]),
    ("lora-mid-on-linear", {"lora_up.weight": r(12, 3), "lora_down.weight": r(3, 10), "lora_mid.weight": r(3, 3, 1, 1)}, LIN,
     ["lora_mid.weight", "Conv2d"]),
    ("two-names-for-up", {"lora_up.weight": r(12, 4), "lora_B.weight": r(12, 4), "lora_down.weight": r(4, 10)}, LIN,
     ["lora_up.weight", "lora_B.weight"]),
    ("unknown-extra-part", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10), "lora_extra.weight": r(2)}, LIN,
     ["lora_extra.weight"]),
    ("alpha-not-scalar", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10), "alpha": r(2)}, LIN, ["alpha", "(2,)"]),
    ("dora-wrong-shape", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10), "dora_scale": r(1, 11)}, LIN,
     ["dora_scale", "(1, 11)", "(1, 10", "(12, 1"]),
    ("bias-part-wrong-size", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10), "bias": r(12, 9)}, LIN, ["bias", "(12, 9)"]),
    ("nan-in-up", {"lora_up.weight": r(12, 4).index_fill(0, torch.tensor([3]), float("nan")), "lora_down.weight": r(4, 10)}, LIN,
     ["lora_up.weight", "NaN"]),
    ("inf-in-alpha", {"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10), "alpha": torch.tensor(float("inf"))}, LIN,
     ["alpha", "Inf"]),
    ("inf-in-fp16-hada", {"hada_w1_a": torch.full((12, 2), 70000.0).half(), "hada_w1_b": r(2, 10), "hada_w2_a": r(12, 2),
                          "hada_w2_b": r(2, 10)}, LIN, ["hada_w1_a", "Inf"]),
    ("loha-missing", {"hada_w1_a": r(12, 2), "hada_w1_b": r(2, 10), "hada_w2_a": r(12, 2)}, LIN, ["hada_w2_b"]),
    ("loha-wrong-shape", {"hada_w1_a": r(12, 2), "hada_w1_b": r(2, 10), "hada_w2_a": r(12, 2), "hada_w2_b": r(2, 11)}, LIN,
     ["hada_w2_a", "hada_w2_b", "(2, 11)", "(12, 10)"]),
    ("loha-tucker-wrong", {"hada_w1_a": r(2, 8), "hada_w1_b": r(2, 6), "hada_w2_a": r(2, 8), "hada_w2_b": r(2, 6),
                           "hada_t1": r(2, 3, 3, 3)}, C3, ["hada_t1", "(2, 3, 3, 3)"]),
    ("lokr-both-w1-forms", {"lokr_w1": r(3, 2), "lokr_w1_a": r(3, 1), "lokr_w1_b": r(1, 2), "lokr_w2": r(4, 5)}, LIN,
     ["lokr_w1", "lokr_w1_a"]),
    ("lokr-missing-w2", {"lokr_w1": r(3, 2), "lokr_w2_a": r(4, 2)}, LIN, ["lokr_w2", "lokr_w2_b"]),
    ("lokr-kron-mismatch", {"lokr_w1": r(3, 2), "lokr_w2": r(4, 4)}, LIN, ["lokr_w1", "lokr_w2", "(12, 8)", "(12, 10)"]),
    ("ia3-wrong-size", {"weight": r(11)}, LIN, ["weight", "(11,)", "(12,)"]),
    ("ia3-on-input-wrong-size", {"weight": r(12), "on_input": torch.tensor(True)}, LIN, ["weight", "(12,)", "(10,)", "on_input"]),
    ("ia3-on-input-alone", {"on_input": torch.tensor(True)}, LIN, ["weight", "on_input"]),
    ("diff-wrong-shape", {"diff": r(12, 9)}, LIN, ["diff", "(12, 9)", "(12, 10)"]),
    ("diff_b-without-layer-bias", {"diff": r(12, 10), "diff_b": r(12)}, LIN_NO_BIAS, ["diff_b", "no bias"]),
    ("diff_b-wrong-size", {"diff_b": r(11)}, LIN, ["diff_b", "(11,)", "(12,)"]),
    ("norm-on-linear", {"w_norm": r(12), "b_norm": r(12)}, LIN, ["b_norm", "w_norm", "Linear"]),
    ("norm-wrong-size", {"w_norm": r(7), "b_norm": r(8)}, GN, ["w_norm", "(7,)"]),
    ("glora-missing", {"a1.weight": r(3, 10), "a2.weight": r(10, 3), "b1.weight": r(2, 10)}, LIN, ["b2.weight"]),
    ("glora-on-conv", {"a1.weight": r(3, 6), "a2.weight": r(6, 3), "b1.weight": r(2, 6), "b2.weight": r(8, 2)}, C3, ["GLoRA", "Conv2d"]),
    ("glora-wrong-shape", {"a1.weight": r(3, 10), "a2.weight": r(9, 3), "b1.weight": r(2, 10), "b2.weight": r(12, 2)}, LIN,
     ["a2.weight", "(9, 3)", "(10, 3)"]),
    ("oft-blocks-not-dividing", {"oft_blocks": r(5, 2, 2)}, LIN, ["oft_blocks", "(5, 2, 2)", "12"]),
    ("oft-both", {"oft_blocks": r(3, 4, 4), "oft_diag": r(3, 4, 4)}, LIN, ["oft_blocks", "oft_diag"]),
    ("oft-rescale-wrong", {"oft_blocks": r(3, 4, 4), "rescale": r(11, 1)}, LIN, ["rescale", "(11, 1)"]),
    ("oft-rescale-alone", {"rescale": r(12, 1)}, LIN, ["oft_blocks", "rescale"]),
    ("boft-bad-butterfly", {"oft_blocks": r(3, 6, 2, 2)}, LIN, ["oft_blocks", "(3, 6, 2, 2)"]),
]


@pytest.mark.parametrize("parts,target,fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_parts_raise_lora_error_naming_parts(parts, target, fragments) -> None:
    before = {k: v.clone() for k, v in parts.items()}
    weight_before = target.weight.detach().clone()
    raises(parts, target, *fragments)
    for k, v in parts.items():  # nothing was modified on the way
        assert torch.equal(v, before[k]) or (torch.isnan(v).any() and torch.equal(v.isnan(), before[k].isnan()))
    assert torch.equal(target.weight.detach(), weight_before)


@pytest.mark.parametrize(
    "parts",
    [
        {"foo.weight": r(2, 2)},
        {"alpha": torch.tensor(1.0)},
        {"string_to_param.*": r(2, 8)},
        {"lora_left.weight": r(12, 4), "lora_right.weight": r(4, 10)},
    ],
    ids=["unknown", "alpha-only", "embedding", "made-up-lora"],
)
def test_unknown_part_sets_are_not_claimed(parts) -> None:
    for network_type in NETWORK_TYPES:
        assert network_type.load(parts, LIN) is None, network_type.kind
    message = raises(parts, LIN, "no LoRA network type")
    for name in parts:
        assert name in message


def test_registry_order_is_a1111_precedence() -> None:
    assert [t.kind for t in NETWORK_TYPES] == ["lora", "hada", "ia3", "lokr", "full", "norm", "glora", "oft"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_type_claims_only_its_own_parts(case) -> None:
    claimed = [t for t in NETWORK_TYPES if t.load(case.parts, case.target) is not None]
    assert claimed == [case.cls]


def test_dyn_must_be_positive_and_weight_must_fit() -> None:
    module = load_network_module({"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10)}, LIN)
    with pytest.raises(LoraError, match="dyn"):
        module.delta(LIN.weight.detach(), 1.0, dyn=0)
    with pytest.raises(LoraError, match=r"\(12, 10\).*\(12, 9\)"):
        module.delta(torch.zeros(12, 9), 1.0)


def test_target_without_weight_is_refused() -> None:
    with pytest.raises(LoraError, match="no weight"):
        load_network_module({"lora_up.weight": r(12, 4), "lora_down.weight": r(4, 10)}, nn.ReLU())


def test_huge_finite_values_are_not_mistaken_for_inf() -> None:
    # Their sum overflows fp32; the values themselves are finite.
    up = torch.full((12, 4), 3e38)
    module = load_network_module({"lora_up.weight": up, "lora_down.weight": torch.zeros(4, 10)}, LIN)
    assert module.rank == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_found_in_every_dtype_and_position(dtype, bad) -> None:
    for position in (0, 17, 47):
        up = torch.randn(12, 4).to(dtype)
        up.view(-1)[position] = bad
        raises({"lora_up.weight": up, "lora_down.weight": r(4, 10)}, LIN, "lora_up.weight contains NaN or Inf")
