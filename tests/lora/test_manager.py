"""LoraManager behaviour: live weights without file reads, no-op on unchanged sets, LRU cache,
block weights, start/stop, delta norms, bundled embeddings, mode selection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lora_ui.lora.loader as loader_module
from lora_ui.lora.block_weights import parse_block_weights
from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraSpec
from tests.lora import files
from tests.lora import formulas as F


def _lora(pipe, tmp_path, name="a", seed=0, **kw):
    sd, truth = files.make_lora(pipe, seed=seed, **kw)
    return files.save(sd, tmp_path / f"{name}.safetensors"), truth


def _effective(manager, layer):
    target_id = f"{layer.component}:{layer.path}"
    patch = manager.patcher.layers.get(target_id)
    return layer.module.weight if patch is None else patch.shadow_weight


def _check_weights(manager, truth, te, unet, ratio=lambda layer: 1.0):
    for layer, up, down, scale in truth:
        mult = (te if layer.component != "unet" else unet) * ratio(layer)
        want = F.d(layer.module.weight) + F.d(files.reference_lora_delta(layer, up, down, scale, mult))
        assert F.rel_err(_effective(manager, layer), want) < 1e-6, layer.path


def test_weight_change_reads_no_file(sd1, tmp_path, monkeypatch):
    path, truth = _lora(sd1, tmp_path)
    manager = LoraManager(sd1, mode="fast")
    first = manager.set_loras([LoraSpec(path, "a", te=1.0, unet=1.0)])
    assert first.files_read == 1
    path.unlink()  # the file is gone: a weight change must not need it

    def no_reading(*a, **k):
        raise AssertionError("a weight change read a file")

    monkeypatch.setattr(loader_module, "read_lora_file", no_reading)
    report = manager.set_loras([LoraSpec(path, "a", te=0.3, unet=0.7)])
    assert report.files_read == 0
    assert report.loras[0].from_cache
    _check_weights(manager, truth, te=0.3, unet=0.7)
    manager.clear()


def test_unchanged_set_is_no_work_and_te_change_touches_te_only(sd1, tmp_path):
    path, truth = _lora(sd1, tmp_path)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a", te=0.5, unet=0.5)])
    shadows = {t: p.shadow_weight for t, p in manager.patcher.layers.items()}
    again = manager.set_loras([LoraSpec(path, "a", te=0.5, unet=0.5)])
    assert again.changed_layers == 0
    assert all(manager.patcher.layers[t].shadow_weight is s for t, s in shadows.items())
    n_te = sum(1 for layer, *_ in truth if layer.component != "unet")
    te_change = manager.set_loras([LoraSpec(path, "a", te=0.9, unet=0.5)])
    assert te_change.changed_layers == n_te
    # A weight change rewrites the existing shadows in place: no W-sized allocation.
    assert all(manager.patcher.layers[t].shadow_weight.data_ptr() == s.data_ptr() for t, s in shadows.items())
    unet_ids = [t for t in shadows if t.startswith("unet:")]
    assert all(manager.patcher.layers[t].shadow_weight is shadows[t] for t in unet_ids)
    _check_weights(manager, truth, te=0.9, unet=0.5)
    manager.clear()


def test_lru_cache_reuses_and_evicts(sd1, tmp_path):
    a, _ = _lora(sd1, tmp_path, "a", seed=1)
    b, _ = _lora(sd1, tmp_path, "b", seed=2)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(a, "a")])
    manager.set_loras([LoraSpec(b, "b")])
    back = manager.set_loras([LoraSpec(a, "a")])
    assert back.files_read == 0 and back.loras[0].from_cache
    manager.clear()

    tiny = LoraManager(sd1, mode="fast", cache_bytes=1)  # room for one network only
    tiny.set_loras([LoraSpec(a, "a")])
    tiny.set_loras([LoraSpec(b, "b")])
    assert len(tiny.cache.entries) == 1
    again = tiny.set_loras([LoraSpec(a, "a")])
    assert again.files_read == 1
    tiny.clear()


def test_changed_file_on_disk_is_reread(sd1, tmp_path):
    path, _ = _lora(sd1, tmp_path, "a", seed=1)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a")])
    sd, truth = files.make_lora(sd1, seed=9)
    files.save(sd, path)
    import os
    os.utime(path, ns=(1, 1))  # a different mtime, as a re-download would give
    report = manager.set_loras([LoraSpec(path, "a", te=0.4, unet=0.4)])
    assert report.files_read == 1
    _check_weights(manager, truth, te=0.4, unet=0.4)
    manager.clear()


def test_two_loras_stack_and_unload_is_exact(sd1, tmp_path):
    a, ta = _lora(sd1, tmp_path, "a", seed=1)
    b, tb = _lora(sd1, tmp_path, "b", seed=2)
    base = files.render(sd1)
    before = files.snapshot(sd1)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(a, "a", te=0.5, unet=0.8), LoraSpec(b, "b", te=0.2, unet=-0.4)])
    for (la, ua, da, sa), (lb, ub, db, sb) in zip(ta, tb):
        ma = 0.5 if la.component != "unet" else 0.8
        mb = 0.2 if lb.component != "unet" else -0.4
        want = (F.d(la.module.weight) + F.d(files.reference_lora_delta(la, ua, da, sa, ma))
                + F.d(files.reference_lora_delta(lb, ub, db, sb, mb)))
        assert F.rel_err(_effective(manager, la), want) < 1e-6
    manager.set_loras([LoraSpec(b, "b", te=0.2, unet=-0.4)])  # drop one: only b remains
    _check_weights(manager, tb, te=0.2, unet=-0.4)
    manager.set_loras([])
    files.assert_same_state(sd1, before)
    np.testing.assert_array_equal(files.render(sd1), base)


def test_block_weights_scale_each_block(sd1, tmp_path):
    path, truth = _lora(sd1, tmp_path, unet="all")
    values = [0.5] + [round(0.1 * i, 1) for i in range(1, 26)]  # 26 values: BASE, IN00..IN11, M00, OUT00..OUT11
    lbw = ",".join(str(v) for v in values)
    ratios = dict(zip(["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)], values))
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a", te=1.0, unet=0.5, lbw=lbw)])
    blocks = {t.module: t.lbw_block for t in manager.keymap.targets.values()}
    _check_weights(manager, truth, te=1.0, unet=0.5, ratio=lambda layer: ratios[blocks[layer.module]])
    # A preset: OUTALL keeps BASE and OUT03..OUT11, zeroes the input side.
    manager.set_loras([LoraSpec(path, "a", te=1.0, unet=0.5, lbw="OUTALL")])
    outall = parse_block_weights("OUTALL")
    assert outall["IN04"] == 0.0 and outall["OUT05"] == 1.0 and outall["BASE"] == 1.0
    _check_weights(manager, truth, te=1.0, unet=0.5, ratio=lambda layer: outall[blocks[layer.module]])
    assert not any(t.startswith("unet:down_blocks") for t in manager.patcher.layers)
    manager.clear()


def test_start_stop_switch_unet_layers_during_sampling(sd1, tmp_path):
    path, truth = _lora(sd1, tmp_path)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a", te=0.7, unet=0.9, start=2, stop=4)])
    unet_layers = [t for t in truth if t[0].component == "unet"]
    te_layers = [t for t in truth if t[0].component != "unet"]
    for step, on in ((0, False), (1, False), (2, True), (3, True), (4, False), (5, False)):
        manager.on_step(step, 6)
        for layer, *_ in unet_layers:
            assert (f"unet:{layer.path}" in manager.patcher.layers) == on, (step, layer.path)
        _check_weights(manager, te_layers, te=0.7, unet=0.0)  # text encoders are never scheduled
        if on:
            _check_weights(manager, unet_layers, te=0.7, unet=0.9)
    manager.clear()


def test_on_step_without_schedule_does_nothing(sd1, tmp_path):
    path, _ = _lora(sd1, tmp_path)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a")])
    patches = dict(manager.patcher.layers)
    for i in range(3):
        manager.on_step(i, 3)
    assert manager.patcher.layers == patches
    manager.clear()


def test_dyn_keeps_first_rank_components(sd1, tmp_path):
    path, truth = _lora(sd1, tmp_path, rank=4, alpha=2.0)
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(path, "a", te=1.0, unet=1.0, dyn=2)])
    for layer, up, down, scale in truth[:30]:
        want = F.d(layer.module.weight) + F.finalize(F.lora_raw(up, down, dyn=2), layer.module.weight, scale, 1.0)
        assert F.rel_err(_effective(manager, layer), want) < 1e-6
    manager.clear()


def test_delta_norms_per_block(sd1, tmp_path):
    path, truth = _lora(sd1, tmp_path, unet="all")
    manager = LoraManager(sd1, mode="fast")
    norms = manager.delta_norms(path)
    want: dict[str, float] = {}
    for layer, up, down, scale in truth:
        p = layer.path.split(".")
        if layer.component != "unet":
            block = "te"
        elif p[0] in ("down_blocks", "up_blocks"):
            block = f"{p[0].split('_')[0]}_{p[1]}"
        elif p[0] == "mid_block":
            block = "mid"
        else:
            block = "other"
        dw = files.reference_lora_delta(layer, up, down, scale, 1.0).double()
        want[block] = want.get(block, 0.0) + float(dw.pow(2).sum())
    assert set(norms) == set(want)
    for block, sq in want.items():
        assert math.isclose(norms[block], math.sqrt(sq), rel_tol=1e-5), block
    assert not manager.patcher.layers  # inspecting applies nothing


def test_bundled_embedding_active_while_loaded(sd1, tmp_path):
    sd, _ = files.make_lora(sd1, te=False)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    sd["bundle_emb.mystyle.string_to_param.*"] = vectors
    path = files.save(sd, tmp_path / "emb.safetensors")
    before = files.snapshot(sd1)
    tokenizer = sd1.tokenizer
    manager = LoraManager(sd1, mode="fast")
    report = manager.set_loras([LoraSpec(path, "emb")])
    assert report.loras[0].embeddings == ["mystyle"]
    ids = sd1.tokenizer("a mystyle mystyle_1 cat").input_ids
    assert ids[2:4] == [49408, 49409]
    table = sd1.text_encoder.get_input_embeddings()
    looked_up = table(torch.tensor([[ids[1], 49408, 49409]]))
    torch.testing.assert_close(looked_up[0, 1:], vectors, rtol=0, atol=0)
    torch.testing.assert_close(looked_up[0, 0], table.weight[ids[1]], rtol=0, atol=0)
    # The pipeline's own prompt conversion expands the multi-vector token.
    assert sd1.maybe_convert_prompt("a mystyle cat", sd1.tokenizer) == "a mystyle mystyle_1 cat"
    manager.clear()
    assert sd1.tokenizer is tokenizer and len(sd1.tokenizer) == 49408
    files.assert_same_state(sd1, before)


def test_bundled_embedding_for_sdxl_encoders(sdxl, tmp_path):
    sd, _ = files.make_lora(sdxl, te=False)
    sd["bundle_emb.xlstyle.clip_l"] = torch.randn(1, 32)
    sd["bundle_emb.xlstyle.clip_g"] = torch.randn(1, 48)
    path = files.save(sd, tmp_path / "xlemb.safetensors")
    before = files.snapshot(sdxl)
    manager = LoraManager(sdxl, mode="fast")
    manager.set_loras([LoraSpec(path, "xlemb")])
    assert sdxl.tokenizer("xlstyle").input_ids[1] == 49408
    assert sdxl.tokenizer_2("xlstyle").input_ids[1] == 49408
    out = sdxl.text_encoder_2.get_input_embeddings()(torch.tensor([[49408]]))
    torch.testing.assert_close(out[0, 0], sd["bundle_emb.xlstyle.clip_g"][0], rtol=0, atol=0)
    manager.clear()
    files.assert_same_state(sdxl, before)


def test_mode_auto_and_override(sd1, tmp_path, monkeypatch):
    path, _ = _lora(sd1, tmp_path)
    with pytest.raises(ValueError, match="mode must be one of"):
        LoraManager(sd1, mode="turbo")
    manager = LoraManager(sd1)  # auto: plenty of RAM on CPU -> fast
    assert manager.set_loras([LoraSpec(path, "a")]).mode == "fast"
    manager.clear()
    import lora_ui.lora.manager as manager_module
    monkeypatch.setattr(manager_module, "_available_cpu_bytes", lambda: 1000)  # almost no free RAM
    low = LoraManager(sd1)
    report = low.set_loras([LoraSpec(path, "a")])
    assert report.mode == "lowmem" and low.patcher.shadow_bytes == 0
    low.clear()
