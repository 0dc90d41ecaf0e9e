"""Fidelity: for every network type on SD1- and SDXL-shaped pipelines, the image with the LoRA at
weight w equals the image from weights merged by this test's own reference (tests/lora/formulas.py,
float64) within 1/255; the effective weights match to fp32 precision; unload is bit-exact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraSpec
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline
from tests.lora import files
from tests.lora import formulas as F

TE_W, UNET_W = 0.8, 0.6


@pytest.fixture(scope="module")
def pipes():
    return {"sd1": tiny_sd1_pipeline(0), "sdxl": tiny_sdxl_pipeline(0)}


@pytest.fixture(scope="module")
def base_images(pipes):
    return {arch: files.render(p) for arch, p in pipes.items()}


def _rand(gen, *shape, s=0.2):
    return torch.randn(*shape, generator=gen) * s


# Each builder: (module, gen, multiplier) -> (parts, (ΔW, Δb | None)) or None when it does not fit the layer.

def b_lora(m, g, mult):
    w = m.weight
    r = 3
    up = _rand(g, w.shape[0], r) if w.dim() == 2 else _rand(g, w.shape[0], r, 1, 1)
    down = _rand(g, r, w.shape[1]) if w.dim() == 2 else _rand(g, r, *w.shape[1:])
    parts = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}
    return parts, (F.finalize(F.lora_raw(up, down), w, 2.0 / r, mult), None)


def b_lora_tucker(m, g, mult):
    w = m.weight
    if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        return None
    r = 3
    up, down, mid = _rand(g, w.shape[0], r, 1, 1), _rand(g, r, w.shape[1], 1, 1), _rand(g, r, r, 3, 3)
    parts = {"lora_up.weight": up, "lora_down.weight": down, "lora_mid.weight": mid, "alpha": torch.tensor(1.5)}
    return parts, (F.finalize(F.lora_tucker_raw(up, down, mid), w, 1.5 / r, mult), None)


def b_lora_dora(m, g, mult):
    w = m.weight
    if w.dim() != 2:
        return None
    r = 2
    up, down = _rand(g, w.shape[0], r), _rand(g, r, w.shape[1])
    col_norm = w.detach().double().norm(dim=0)
    dora = (col_norm * (1 + _rand(g, w.shape[1], s=0.1).double())).float().reshape(1, -1)
    parts = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0), "dora_scale": dora}
    return parts, (F.finalize(F.lora_raw(up, down), w, 1.0, mult, dora_scale=dora, dora_axis="column"), None)


def b_loha(m, g, mult):
    w = m.weight
    r = 2
    fan_in = w[0].numel()
    w1a, w1b, w2a, w2b = _rand(g, w.shape[0], r), _rand(g, r, fan_in), _rand(g, w.shape[0], r), _rand(g, r, fan_in)
    if w.dim() == 4:
        w1b, w2b = w1b.reshape(r, *w.shape[1:]), w2b.reshape(r, *w.shape[1:])
    parts = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(1.0)}
    return parts, (F.finalize(F.loha_raw(w1a, w1b, w2a, w2b), w, 1.0 / r, mult), None)


def b_lokr(m, g, mult):
    w = m.weight
    if w.dim() != 2 or w.shape[0] % 2 or w.shape[1] % 2:
        return None
    r = 2
    w1 = _rand(g, 2, 2, s=0.5)
    w2a, w2b = _rand(g, w.shape[0] // 2, r), _rand(g, r, w.shape[1] // 2)
    parts = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}
    return parts, (F.finalize(F.lokr_raw(w1=w1, w2a=w2a, w2b=w2b), w, 1.0 / r, mult), None)


def b_ia3(m, g, mult):
    w = m.weight
    if w.dim() != 2:
        return None
    v = _rand(g, w.shape[0], s=0.3)
    return {"weight": v}, (F.ia3_delta(w, v, mult), None)


def b_full(m, g, mult):
    w = m.weight
    diff = _rand(g, *w.shape, s=0.05)
    parts = {"diff": diff}
    db = None
    if m.bias is not None:
        parts["diff_b"] = _rand(g, w.shape[0], s=0.05)
        db = F.d(parts["diff_b"]) * mult
    return parts, (F.d(diff) * mult, db)


def b_norm(m, g, mult):
    if not isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
        return None
    wn, bn = _rand(g, *m.weight.shape, s=0.1), _rand(g, *m.bias.shape, s=0.1)
    return {"w_norm": wn, "b_norm": bn}, (F.d(wn) * mult, F.d(bn) * mult)


def b_glora(m, g, mult):
    w = m.weight
    if w.dim() != 2:
        return None
    r = 2
    a1, a2 = _rand(g, r, w.shape[1]), _rand(g, w.shape[1], r)
    b1, b2 = _rand(g, r, w.shape[1]), _rand(g, w.shape[0], r)
    parts = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2}
    return parts, (F.finalize(F.glora_raw(w, a1, a2, b1, b2), w, 1.0, mult), None)


def b_oft(m, g, mult):
    w = m.weight
    if w.dim() != 2 or w.shape[0] % 8:
        return None
    blocks = _rand(g, w.shape[0] // 8, 8, 8, s=0.05)
    return {"oft_blocks": blocks, "alpha": torch.tensor(0.0)}, (F.oft_delta(w, blocks, alpha=None, multiplier=mult), None)


BUILDERS = {"lora": b_lora, "lora_tucker": b_lora_tucker, "dora": b_lora_dora, "loha": b_loha, "lokr": b_lokr,
            "ia3": b_ia3, "full": b_full, "norm": b_norm, "glora": b_glora, "oft": b_oft}


def _candidate_layers(pipe, kind):
    """A spread of layers per component: UNet attention/resnet/norm layers and text-encoder layers."""
    out = []
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for path, m in model.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)):
                continue
            if kind != "norm" and isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                continue
            if comp == "unet" and not any(s in path for s in ("attn1", "attn2", "ff.net", "proj_", "conv1", "conv2",
                                                              "norm", "time_emb_proj", "samplers")):
                continue
            out.append((comp, path, m))
    return out


def build_file(pipe, kind, tmp_path, seed=0):
    """(path, {(comp, path): (ΔW, Δb)}) for a file of `kind` over every layer it fits."""
    gen = torch.Generator().manual_seed(seed)
    sd, deltas = {}, {}
    for comp, path, m in _candidate_layers(pipe, kind):
        mult = UNET_W if comp == "unet" else TE_W
        built = BUILDERS[kind](m, gen, mult)
        if built is None:
            continue
        parts, delta = built
        layer = files.Layer(comp, path, m)
        prefix = files.key_prefix(pipe, layer, "kohya")
        for name, t in parts.items():
            sd[f"{prefix}.{name}"] = t
        deltas[(comp, path)] = delta
    assert len(deltas) >= 10
    return files.save(sd, tmp_path / f"{kind}.safetensors"), deltas


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_image_matches_reference_merge(pipes, base_images, arch, kind, tmp_path):
    pipe = pipes[arch]
    path, deltas = build_file(pipe, kind, tmp_path)
    before = files.snapshot(pipe)
    manager = LoraManager(pipe, mode="fast")
    report = manager.set_loras([LoraSpec(path, kind, te=TE_W, unet=UNET_W)])
    assert report.loras[0].unmatched_keys == []
    assert report.loras[0].layers == len(deltas)

    # Effective weights: the shadow minus W equals the reference ΔW to fp32 precision.
    for (comp, mpath), (dw, db) in deltas.items():
        patch = manager.patcher.layers[f"{comp}:{mpath}"]
        w = getattr(pipe, comp).get_submodule(mpath).weight
        got = patch.shadow_weight.double() - w.double()
        assert F.rel_err(got, dw.reshape(w.shape)) < 2e-6 * max(1.0, (w.double().norm() / dw.norm()).item()), mpath
        if db is not None:
            b = getattr(pipe, comp).get_submodule(mpath).bias
            assert F.rel_err(patch.shadow_bias.double() - b.double(), db) < 1e-5

    image = files.render(pipe)
    manager.clear()
    files.assert_same_state(pipe, before)
    np.testing.assert_array_equal(files.render(pipe), base_images[arch])

    reference = files.render(files.merged_copy(pipe, deltas))
    assert np.abs(image - base_images[arch]).max() > 2 / 255, "the LoRA should visibly change the image"
    assert np.abs(image - reference).max() <= 1 / 255


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_lowmem_mode_matches_reference_and_falls_back_per_layer(pipes, base_images, arch, tmp_path):
    """Low-memory: plain LoRA as forward branches (no shadow); a DoRA file in the same set falls
    back to a shadow for its layers only; the image matches the reference merge."""
    pipe = pipes[arch]
    lora_path, lora_deltas = build_file(pipe, "lora", tmp_path, seed=1)
    dora_path, dora_deltas = build_file(pipe, "dora", tmp_path, seed=2)
    manager = LoraManager(pipe, mode="lowmem")
    manager.set_loras([LoraSpec(lora_path, "l", te=TE_W, unet=UNET_W)])
    assert manager.patcher.shadow_bytes == 0
    assert all(p.mode == "lowmem" for p in manager.patcher.layers.values())
    image = files.render(pipe)
    reference = files.render(files.merged_copy(pipe, lora_deltas))
    assert np.abs(image - reference).max() <= 1 / 255

    manager.set_loras([LoraSpec(lora_path, "l", te=TE_W, unet=UNET_W), LoraSpec(dora_path, "d", te=TE_W, unet=UNET_W)])
    modes = {t: p.mode for t, p in manager.patcher.layers.items()}
    assert {modes[f"{c}:{p}"] for c, p in dora_deltas} == {"fast"}
    assert any(m == "lowmem" for t, m in modes.items())
    manager.clear()
    np.testing.assert_array_equal(files.render(pipe), base_images[arch])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_stacking_uses_weight_holding_earlier_loras(pipes, arch, tmp_path):
    """IA3 after a LoRA scales W + ΔW_lora, not W: order matters and follows the list."""
    pipe = pipes[arch]
    lora_path, lora_deltas = build_file(pipe, "lora", tmp_path, seed=3)
    gen = torch.Generator().manual_seed(4)
    sd, vecs = {}, {}
    for (comp, mpath) in lora_deltas:
        m = getattr(pipe, comp).get_submodule(mpath)
        if m.weight.dim() == 2:
            v = _rand(gen, m.weight.shape[0], s=0.3)
            sd[f"{files.key_prefix(pipe, files.Layer(comp, mpath, m), 'kohya')}.weight"] = v
            vecs[(comp, mpath)] = v
    ia3_path = files.save(sd, tmp_path / "ia3.safetensors")
    manager = LoraManager(pipe, mode="fast")
    manager.set_loras([LoraSpec(lora_path, "l", te=TE_W, unet=UNET_W), LoraSpec(ia3_path, "i", te=0.5, unet=0.5)])
    for (comp, mpath), v in list(vecs.items())[:20]:
        m = getattr(pipe, comp).get_submodule(mpath)
        after_lora = F.d(m.weight) + lora_deltas[(comp, mpath)][0]
        want = after_lora + F.ia3_delta(after_lora, v, 0.5)
        got = manager.patcher.layers[f"{comp}:{mpath}"].shadow_weight
        assert F.rel_err(got, want) < 1e-6
    manager.clear()


def test_fp16_and_bf16_within_documented_tolerance(pipes, tmp_path):
    """Reduced precision: the shadow is fp32 math rounded once, so it equals the float64 reference
    rounded to the dtype within one ulp; whole-UNet outputs stay within 2% (bf16 5%) of fp32's
    change-relative scale (documented tolerance)."""
    import copy

    pipe = pipes["sd1"]
    path, deltas = build_file(pipe, "lora", tmp_path, seed=5)
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    manager32 = LoraManager(pipe, mode="fast")
    manager32.set_loras([LoraSpec(path, "l", te=TE_W, unet=UNET_W)])
    with torch.no_grad():
        out32 = pipe.unet(sample, 10, encoder_hidden_states=text).sample
    manager32.clear()
    for dtype, ulp_tol, out_tol in ((torch.float16, 2 ** -10, 0.02), (torch.bfloat16, 2 ** -7, 0.05)):
        low = copy.deepcopy(pipe)
        low.unet.to(dtype)
        low.text_encoder.to(dtype)
        manager = LoraManager(low, mode="fast")
        manager.set_loras([LoraSpec(path, "l", te=TE_W, unet=UNET_W)])
        for (comp, mpath), (dw, _) in list(deltas.items())[:40]:
            w = getattr(low, comp).get_submodule(mpath).weight
            want = (w.double() + dw.reshape(w.shape))
            got = manager.patcher.layers[f"{comp}:{mpath}"].shadow_weight
            assert got.dtype == dtype
            assert ((got.double() - want).abs() <= want.abs() * ulp_tol + 1e-7).all(), mpath
        with torch.no_grad():
            out = low.unet(sample.to(dtype), 10, encoder_hidden_states=text.to(dtype)).sample.float()
        assert (out - out32).abs().max() <= out_tol * out32.abs().max()
        manager.clear()
