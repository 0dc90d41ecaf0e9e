"""ShadowPool: freed CPU shadows are re-staged to W and reused, bit-identical to fresh ones."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from lora_ui.lora.patcher import Contribution, Patcher, ShadowPool, shadow_weights
from lora_ui.lora.types import load_network_module
from tests.lora import formulas as F


def _layers(seed=0):
    torch.manual_seed(seed)
    return {"lin": nn.Linear(24, 16), "conv": nn.Conv2d(4, 6, 3, padding=1)}


def _lora(module, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = module.weight
    up = torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g)
    down = torch.randn(rank, *w.shape[1:], generator=g)
    return load_network_module({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}, module)


def _loha(module, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = module.weight
    cols = w[0].numel()
    t = {"hada_w1_a": torch.randn(w.shape[0], rank, generator=g), "hada_w1_b": torch.randn(rank, cols, generator=g),
         "hada_w2_a": torch.randn(w.shape[0], rank, generator=g), "hada_w2_b": torch.randn(rank, cols, generator=g)}
    return load_network_module(t, module)


def _wanted(layers, make, multiplier=0.8, seed=0):
    return {name: (m, [Contribution(f"src{seed}", make(m, seed=seed), multiplier, None)]) for name, m in layers.items()}


def _fresh_shadows(layers, wanted):
    """What a patcher with no pool builds: the reference for bit-identity."""
    return {name: shadow_weights(m, wanted[name][1])[0] for name, m in layers.items()}


@pytest.mark.parametrize("make", [_lora, _loha], ids=["lora", "loha"])
def test_reapply_after_unload_reuses_the_buffers_and_is_bit_identical(make):
    layers = _layers()
    patcher = Patcher(keep_shadows_seconds=60)
    wanted = _wanted(layers, make)
    patcher.commit(patcher.plan(wanted, "fast"))
    first = {n: p.shadow_weight.data_ptr() for n, p in patcher.layers.items()}
    patcher.clear()
    patcher.pool.wait_staged(10)
    assert patcher.pool.nbytes == sum(m.weight.numel() * 4 for m in layers.values())
    # re-staged: every pooled buffer holds W exactly again
    assert all(torch.equal(e.buffer, layers[n].weight) and e.staged for n, e in patcher.pool._entries.items())
    wanted2 = _wanted(layers, make, multiplier=-0.6, seed=1)
    patcher.commit(patcher.plan(wanted2, "fast"))
    assert {n: p.shadow_weight.data_ptr() for n, p in patcher.layers.items()} == first  # the same memory
    assert patcher.pool.nbytes == 0
    for name, want in _fresh_shadows(layers, wanted2).items():
        assert torch.equal(patcher.layers[name].shadow_weight, want), name


def test_a_swap_pools_the_old_shadows_and_the_next_swap_takes_them():
    layers = _layers()
    patcher = Patcher(keep_shadows_seconds=60)
    patcher.commit(patcher.plan(_wanted(layers, _lora, seed=0), "fast"))
    a_ptrs = {n: p.shadow_weight.data_ptr() for n, p in patcher.layers.items()}
    patcher.commit(patcher.plan(_wanted(layers, _lora, seed=1), "fast"))  # A -> B: B needs new memory
    assert not set(a_ptrs.values()) & {p.shadow_weight.data_ptr() for p in patcher.layers.values()}
    patcher.pool.wait_staged(10)
    wanted_c = _wanted(layers, _lora, seed=2)
    patcher.commit(patcher.plan(wanted_c, "fast"))  # B -> C: C takes A's old buffers
    assert {n: p.shadow_weight.data_ptr() for n, p in patcher.layers.items()} == a_ptrs
    for name, want in _fresh_shadows(layers, wanted_c).items():
        assert torch.equal(patcher.layers[name].shadow_weight, want)
    x = torch.randn(2, 24)
    lin = layers["lin"]
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, _fresh_shadows(layers, wanted_c)["lin"], lin.bias),
                               rtol=0, atol=0)


def test_an_unstaged_pooled_buffer_still_gives_the_exact_shadow():
    lin = _layers()["lin"]
    contributions = [Contribution("s", _lora(lin), 0.5, None)]
    stale = torch.full_like(lin.weight, 123.0)  # an old shadow, not re-staged yet
    got, _ = shadow_weights(lin, contributions, out=stale, staged=False)
    assert got is stale and torch.equal(got, shadow_weights(lin, contributions)[0])


def test_staged_in_place_update_matches_an_independent_formula():
    lin = _layers()["lin"]
    net = _lora(lin)
    staged = lin.weight.detach().clone()
    got, _ = shadow_weights(lin, [Contribution("s", net, 0.5, None)], out=staged, staged=True)
    up, down = net.low_rank_factors(None).up, net.low_rank_factors(None).down
    want = F.d(lin.weight) + 0.5 * (2.0 / 3) * F.d(up.reshape(up.shape[0], -1)) @ F.d(down.reshape(down.shape[0], -1))
    assert F.rel_err(got, want) <= 1e-6


def test_half_precision_layers_reuse_the_buffer_and_round_once():
    lin = _layers()["lin"].half()
    contributions = [Contribution("s", _lora(lin), 0.5, None)]
    pooled = torch.zeros_like(lin.weight)
    got, _ = shadow_weights(lin, contributions, out=pooled, staged=True)  # staged is ignored for fp16
    assert got is pooled and torch.equal(got, shadow_weights(lin, contributions)[0])


def test_pool_returns_its_memory_after_keep_seconds_and_on_release():
    layers = _layers()
    patcher = Patcher(keep_shadows_seconds=0.3)
    patcher.commit(patcher.plan(_wanted(layers, _lora), "fast"))
    patcher.clear()
    assert patcher.pool.nbytes > 0
    deadline = time.time() + 10
    while patcher.pool.nbytes and time.time() < deadline:
        time.sleep(0.05)
    assert patcher.pool.nbytes == 0
    patcher = Patcher(keep_shadows_seconds=60)
    patcher.commit(patcher.plan(_wanted(layers, _lora), "fast"))
    patcher.close()
    assert patcher.pool.nbytes == 0 and not patcher.layers
    assert all("forward" not in m.__dict__ for m in layers.values())


def test_pool_disabled_and_foreign_buffers_are_not_kept():
    lin = nn.Linear(4, 3)
    buffer = torch.zeros(3, 4)
    off = ShadowPool(keep_seconds=0)
    assert off.put([("l", lin, buffer)]) == [buffer] and off.nbytes == 0
    pool = ShadowPool(keep_seconds=60)
    wrong_shape = torch.zeros(4, 4)
    assert pool.put([("l", lin, wrong_shape), ("w", lin, lin.weight)]) == [wrong_shape, lin.weight]
    assert pool.nbytes == 0
    pool.put([("l", lin, torch.zeros(3, 4))])
    assert pool.take("l", nn.Linear(4, 3)) is None  # another module under the same id: not its buffer


def test_lowmem_branch_in_place_and_with_grad_agree():
    layers = _layers()
    patcher = Patcher()
    patcher.commit(patcher.plan(_wanted(layers, _lora), "lowmem"))
    for name, x in (("lin", torch.randn(2, 5, 24)), ("conv", torch.randn(2, 4, 7, 7))):
        module = layers[name]
        with torch.no_grad():
            in_place = module(x)
        with_grad = module(x)
        assert with_grad.requires_grad
        torch.testing.assert_close(in_place, with_grad.detach(), rtol=1e-6, atol=1e-6)
        w_eff = _fresh_shadows(layers, _wanted(layers, _lora))[name]
        ref = (torch.nn.functional.linear(x, w_eff, module.bias) if name == "lin"
               else torch.nn.functional.conv2d(x, w_eff, module.bias, padding=1))
        torch.testing.assert_close(in_place, ref, rtol=1e-5, atol=1e-5)
