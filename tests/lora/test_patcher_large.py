"""Fast mode on layers big enough (>= 1 MiB) for the page-populated shadow allocation."""
from __future__ import annotations

import torch
from torch import nn

from lora_ui.lora import patcher as P
from lora_ui.lora.patcher import Contribution, Patcher, shadow_weights
from lora_ui.lora.types import load_network_module
from tests.lora import formulas as F


def _big_linear_lora(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(512, 768)  # 1.5 MiB of fp32 weight: above POPULATE_MIN_BYTES
    assert lin.weight.numel() * 4 >= P.POPULATE_MIN_BYTES
    up, down = torch.randn(768, 4).half(), torch.randn(4, 512).half()
    net = load_network_module({"lora_up.weight": up, "lora_down.weight": down,
                               "alpha": torch.tensor(2.0)}, lin)
    return lin, net, up, down


def test_large_fp32_shadow_is_w_plus_scaled_update_and_base_untouched():
    lin, net, up, down = _big_linear_lora()
    saved = lin.weight.detach().clone()
    version = lin.weight._version
    shadow, bias = shadow_weights(lin, [Contribution("s", net, 0.7, None)])
    want = F.d(lin.weight) + 0.7 * (2.0 / 4) * F.d(up) @ F.d(down)  # float64 reference
    assert shadow.dtype == torch.float32 and shadow.shape == lin.weight.shape and shadow.is_contiguous()
    assert shadow.data_ptr() != lin.weight.data_ptr() and bias is None
    assert F.rel_err(shadow, want) <= 1e-6
    assert torch.equal(lin.weight, saved) and lin.weight._version == version


def test_large_layer_forward_weight_change_and_unload():
    lin, net, up, down = _big_linear_lora(1)
    x = torch.randn(3, 512)
    base_out = lin(x)
    patcher = Patcher()
    patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, 1.0, None)])}, "fast"))
    buffer = patcher.layers["l"].shadow_weight
    for m in (1.0, 0.25):
        if m != 1.0:
            patcher.commit(patcher.plan({"l": (lin, [Contribution("s", net, m, None)])}, "fast"))
            assert patcher.layers["l"].shadow_weight.data_ptr() == buffer.data_ptr()  # rebuilt in place
        w = F.d(lin.weight) + m * 0.5 * F.d(up) @ F.d(down)
        assert F.rel_err(lin(x), F.d(x) @ w.T + F.d(lin.bias)) <= 1e-5
        # in place equals a fresh build from W (same one-pass math, rounded once)
        fresh, _ = shadow_weights(lin, [Contribution("s", net, m, None)])
        assert torch.equal(patcher.layers["l"].shadow_weight, fresh)
    patcher.clear()
    assert "forward" not in lin.__dict__
    assert torch.equal(lin(x), base_out)
