"""Mixed-LoRA layers: each row of one batched forward equals its request's own forward through the
low-memory LoraManager (bit for bit), and within fp rounding of fast mode; exact unload; planner rule."""
from __future__ import annotations

import pytest
import torch

from lora_ui.lora.manager import LoraManager
from lora_ui.lora.mixed import MixedLoras, NotMixable, RowMap
from lora_ui.testing.tiny_models import tiny_sd1_pipeline
from tests.lora.files import assert_same_state, snapshot
from tests.scale.mixed_fixtures import four_sets, spec, write_loras


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pipe = tiny_sd1_pipeline(0)
    paths = write_loras(pipe, tmp_path_factory.mktemp("loras"))
    manager = LoraManager(pipe, mode="lowmem", keep_shadows_seconds=0)
    yield pipe, paths, manager
    manager.close()


def _inputs(n_images: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_images, 4, 16, 16, generator=g)
    t = torch.full((n_images,), 613.25)
    cond = torch.randn(n_images, 77, 32, generator=g)
    uncond = torch.randn(n_images, 77, 32, generator=g)
    return x, t, cond, uncond


def _solo_unet(pipe, manager, specs, x, t, cond, uncond, mode="lowmem"):
    """The request alone: its CFG rows [cond, uncond] through the manager's patches."""
    manager.mode = mode
    manager.set_loras(specs)
    try:
        with torch.no_grad():
            return pipe.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond])).sample
    finally:
        manager.clear()
        manager.mode = "lowmem"


def test_unet_rows_bit_identical_to_each_request_alone_in_lowmem(world):
    pipe, paths, manager = world
    sets = four_sets(paths)
    n = len(sets)
    x, t, cond, uncond = _inputs(n)
    before = snapshot(pipe)
    with MixedLoras(manager, sets) as mixed:
        rows = RowMap.for_cfg(range(n), range(n), [1] * n)   # cond rows of images 0..n-1, then their uncond rows
        with torch.no_grad(), mixed.rows(rows):
            out = pipe.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond])).sample
    assert_same_state(pipe, before)
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())
    for i, specs in enumerate(sets):
        solo = _solo_unet(pipe, manager, specs, x[i:i + 1], t[i:i + 1], cond[i:i + 1], uncond[i:i + 1])
        assert torch.equal(out[[i, n + i]], solo), f"request {i}: max diff {(out[[i, n + i]] - solo).abs().max()}"
        fast = _solo_unet(pipe, manager, specs, x[i:i + 1], t[i:i + 1], cond[i:i + 1], uncond[i:i + 1], mode="fast")
        torch.testing.assert_close(out[[i, n + i]], fast, rtol=1e-4, atol=2e-5)
    # the LoRAs matter: requests differ from the plain model by far more than rounding
    plain = _solo_unet(pipe, manager, [], x[:1], t[:1], cond[:1], uncond[:1])
    assert (out[[0, n]] - plain).abs().max() > 1e-3


def test_text_encoder_uniform_set_equals_manager(world):
    pipe, paths, manager = world
    sets = four_sets(paths)
    ids = pipe.tokenizer(["a red cat", "a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with MixedLoras(manager, sets) as mixed, torch.no_grad():
        got = []
        for i in range(len(sets)):
            with mixed.uniform(i):
                got.append(pipe.text_encoder(ids)[0])
    for i, specs in enumerate(sets):
        manager.set_loras(specs)
        with torch.no_grad():
            want = pipe.text_encoder(ids)[0]
        manager.clear()
        assert torch.equal(got[i], want), i
    assert not torch.equal(got[0], got[3])  # set 0 has a TE LoRA, set 3 none


def test_grouped_rows_share_one_branch_per_lora_and_weight(world):
    pipe, paths, manager = world
    sets = [[spec(paths, "a", 0.8)], [spec(paths, "a", 0.8)], [spec(paths, "a", 0.3)]]
    mixed = MixedLoras(manager, sets)
    assert mixed.shared_branches == 2 * len(manager.resolve(sets[0])[0].network.layers)


def test_layer_outside_a_row_map_raises_and_unload_is_exact(world):
    pipe, paths, manager = world
    before = snapshot(pipe)
    with MixedLoras(manager, four_sets(paths)):
        with pytest.raises(RuntimeError, match="outside a row map"), torch.no_grad():
            pipe.text_encoder(torch.zeros(1, 77, dtype=torch.long))
    assert_same_state(pipe, before)
    assert not any("forward" in m.__dict__ for c in (pipe.unet, pipe.text_encoder) for m in c.modules())


def test_planner_rule_types_without_low_rank_form_and_schedules_fall_back(world):
    pipe, paths, manager = world
    with pytest.raises(NotMixable, match="hada"):
        MixedLoras(manager, [[spec(paths, "a")], [spec(paths, "hada")]])
    with pytest.raises(NotMixable, match="start/stop"):
        MixedLoras(manager, [[spec(paths, "a", stop=3)]])
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())


def test_needs_a_cleared_manager(world):
    pipe, paths, manager = world
    manager.set_loras([spec(paths, "a")])
    try:
        with pytest.raises(RuntimeError, match="cleared"):
            MixedLoras(manager, [[spec(paths, "b")]]).install()
    finally:
        manager.clear()
