"""Patcher: per-instance forwards only, base parameters never written, fp32 math rounded once."""
from __future__ import annotations

import torch
from torch import nn

from lora_ui.lora.patcher import Contribution, Patcher, shadow_weights
from lora_ui.lora.types import load_network_module
from tests.lora import formulas as F


def _lora(module, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = module.weight
    up = torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g)
    down = torch.randn(rank, *w.shape[1:], generator=g)
    return load_network_module({"lora_up.weight": up, "lora_down.weight": down}, module), up, down


def test_only_the_instance_is_patched_and_restored():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 5), nn.Linear(6, 5)
    class_forward = nn.Linear.forward
    net, up, down = _lora(a)
    patcher = Patcher()
    patcher.commit(patcher.plan({"a": (a, [Contribution("src", net, 0.5, None)])}, "fast"))
    assert "forward" in a.__dict__ and "forward" not in b.__dict__
    assert nn.Linear.forward is class_forward
    x = torch.randn(3, 6)
    want = x @ (F.d(a.weight) + 0.5 * F.d(up) @ F.d(down)).T.float() + a.bias
    torch.testing.assert_close(a(x), want.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b(x), torch.nn.functional.linear(x, b.weight, b.bias), rtol=0, atol=0)
    patcher.clear()
    assert "forward" not in a.__dict__
    torch.testing.assert_close(a(x), torch.nn.functional.linear(x, a.weight, a.bias), rtol=0, atol=0)


def test_previous_instance_forward_is_kept():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    def custom(x):
        return nn.Conv2d.forward(conv, x) * 2
    conv.forward = custom
    net, _, _ = _lora(conv)
    patcher = Patcher()
    patcher.commit(patcher.plan({"c": (conv, [Contribution("s", net, 1.0, None)])}, "lowmem"))
    x = torch.randn(1, 3, 5, 5)
    assert conv(x).shape == (1, 4, 5, 5)
    patcher.clear()
    assert conv.__dict__["forward"] is custom


def test_base_parameters_are_never_written():
    lin = nn.Linear(8, 8).half()
    versions = (lin.weight._version, lin.bias._version)
    saved = lin.weight.detach().clone()
    net, up, down = _lora(lin)
    for mode in ("fast", "lowmem"):
        patcher = Patcher()
        patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, 0.7, None)])}, mode))
        patcher.clear()
    assert (lin.weight._version, lin.bias._version) == versions
    assert torch.equal(lin.weight, saved)


def test_shadow_is_fp32_math_rounded_once():
    torch.manual_seed(1)
    lin = nn.Linear(64, 64).to(torch.float16)
    net, up, down = _lora(lin, rank=8)
    shadow, bias = shadow_weights(lin, [Contribution("s", net, 0.01, None)])
    want = (F.d(lin.weight) + 0.01 * F.d(up) @ F.d(down)).to(torch.float16)
    # Rounded once from (nearly) exact: at most one fp16 ulp from the exactly rounded value.
    ulp = torch.finfo(torch.float16).eps * want.float().abs().clamp(min=2 ** -14)
    assert ((shadow.float() - want.float()).abs() <= ulp).all()
    assert bias is None and shadow.dtype == torch.float16
    # Rounding each step separately (fp16 ΔW then fp16 add) is measurably worse: the test can fail.
    naive = lin.weight + (0.01 * up.half() @ down.half())
    assert (naive.float() - want.float()).abs().max() >= (shadow.float() - want.float()).abs().max()


def test_unchanged_contributions_are_not_rebuilt():
    lin = nn.Linear(4, 4)
    net, _, _ = _lora(lin)
    patcher = Patcher()
    patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, 1.0, None)])}, "fast"))
    assert patcher.plan({"l": (lin, [Contribution("s", net, 1.0, None)])}, "fast") == {}
    changes = patcher.plan({"l": (lin, [Contribution("s", net, 0.5, None)])}, "fast")
    assert list(changes) == ["l"]
    assert patcher.plan({}, "fast") == {"l": None}
    patcher.clear()


def test_in_place_rebuild_equals_fresh_build_in_fp16():
    torch.manual_seed(2)
    lin = nn.Linear(32, 32).to(torch.float16)
    net, _, _ = _lora(lin, rank=4)
    patcher = Patcher()
    patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, 1.0, None)])}, "fast"))
    buffer = patcher.layers["l"].shadow_weight
    patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, 0.3, None)])}, "fast"))
    assert patcher.layers["l"].shadow_weight.data_ptr() == buffer.data_ptr()
    fresh, _ = shadow_weights(lin, [Contribution("s", net, 0.3, None)])
    assert torch.equal(patcher.layers["l"].shadow_weight, fresh)
    patcher.clear()
