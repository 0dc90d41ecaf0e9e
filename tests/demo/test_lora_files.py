"""The demo LoRA trainer's adapters and the files it saves (kohya / LyCORIS layout)."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from lora_ui.demo.adapters import AdapterSet, LoHaAdapter, LoKrAdapter, LoRAAdapter, factorize, kohya_prefix
from lora_ui.demo.lora_train import (DEMO_LORAS, addnet_hash, load_into, network_metadata, save_lora_file,
                                     style_dark, style_outline, style_pastel, style_stripes, train_lora,
                                     write_sidecar)
from lora_ui.testing.tiny_models import tiny_sd1_pipeline


def _randomize(adapter: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# --- ΔW formulas, written independently of the adapters -------------------------------------------

def expected_delta(kind: str, parts: dict, shape: tuple) -> torch.Tensor:
    out = shape[0]
    if kind in ("lora", "locon"):
        up, down = parts["lora_up.weight"], parts["lora_down.weight"]
        dw = torch.einsum("or,ri->oi", up.reshape(out, -1), down.reshape(down.shape[0], -1))
    elif kind == "loha":
        dw = torch.einsum("or,ri->oi", parts["hada_w1_a"], parts["hada_w1_b"]) * \
             torch.einsum("or,ri->oi", parts["hada_w2_a"], parts["hada_w2_b"])
    else:  # lokr: kron(a, b)[i*p+k, j*q+l] = a[i, j] * b[k, l]
        a = parts["lokr_w1"]
        b = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        dw = torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])
    return dw.reshape(shape)


@pytest.mark.parametrize("kind,layer", [
    ("lora", nn.Linear(12, 10)), ("locon", nn.Conv2d(6, 8, 3, padding=1)), ("loha", nn.Linear(12, 10)),
    ("loha", nn.Conv2d(6, 8, 3, padding=1)), ("lokr", nn.Linear(12, 10)), ("lokr", nn.Conv2d(6, 8, 1)),
])
def test_adapter_output_equals_merged_weight(kind, layer):
    """hook output of the adapter == running the layer with W + m * alpha/r * ΔW (formula above)."""
    cls = {"lora": LoRAAdapter, "locon": LoRAAdapter, "loha": LoHaAdapter, "lokr": LoKrAdapter}[kind]
    adapter = cls(layer, 4, 2.0)
    _randomize(adapter)
    adapter.multiplier = 0.7
    x = torch.randn(3, 12) if isinstance(layer, nn.Linear) else torch.randn(2, 6, 5, 5)
    merged = layer.weight + 0.7 * (2.0 / 4) * expected_delta(kind, {k: v.detach() for k, v in adapter.parts().items()},
                                                              tuple(layer.weight.shape))
    want = F_apply(layer, merged, x)
    got = layer(x) + adapter(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def F_apply(layer, weight, x):
    if isinstance(layer, nn.Linear):
        return torch.nn.functional.linear(x, weight, layer.bias)
    return torch.nn.functional.conv2d(x, weight, layer.bias, layer.stride, layer.padding)


def test_new_adapters_start_as_identity():
    for cls in (LoRAAdapter, LoHaAdapter, LoKrAdapter):
        a = cls(nn.Linear(8, 6), 2, 1.0)
        assert torch.count_nonzero(a.scaled_delta()) == 0


def test_factorize_like_lycoris():
    assert factorize(64) == (8, 8)
    assert factorize(320) == (16, 20)
    assert factorize(12) == (3, 4)
    assert factorize(7) == (1, 7)


def test_kohya_prefixes():
    assert kohya_prefix("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya_prefix("text_encoder", "encoder.layers.1.mlp.fc1") == "lora_te_text_model_encoder_layers_1_mlp_fc1"
    assert kohya_prefix("text_encoder", "text_model.encoder.layers.1.mlp.fc1") == \
        "lora_te_text_model_encoder_layers_1_mlp_fc1"
    with pytest.raises(ValueError):
        kohya_prefix("vae", "x")


def test_styles_change_images_as_described():
    rng = np.random.default_rng(0)
    from lora_ui.demo import world
    imgs = np.stack([world.render(world.random_scene(rng), 32) for _ in range(4)])
    assert style_dark(imgs).mean() == pytest.approx(imgs.mean() * 0.35, rel=0.01)
    assert style_pastel(imgs).min() >= 140
    striped = style_stripes(imgs).astype(float)
    assert striped[:, 8:16].mean() < 0.4 * striped[:, 0:8].mean() + 1
    outlined = style_outline(imgs)
    changed = np.any(outlined != imgs, axis=-1).mean()
    assert 0.02 < changed < 0.4


# --- training and files on a tiny SD1 pipeline -------------------------------------------------------

@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return tiny_sd1_pipeline(0)


@pytest.fixture(scope="module")
def trained(pipe, tmp_path_factory):
    """Every demo LoRA kind trained a few steps on the tiny pipeline and saved."""
    out = tmp_path_factory.mktemp("loras")
    result = {}
    for name, spec in DEMO_LORAS.items():
        spec = replace(spec, batch=4, lr=5e-3)
        net, losses, info = train_lora(pipe, spec, steps=2, dataset_size=8, image_size=32, progress=False)
        path = out / f"{name}.safetensors"
        save_lora_file(net, network_metadata(spec, info), path)
        write_sidecar(spec, path.with_suffix(".json"))
        result[name] = (spec, net, path, losses)
    return result


PART_RE = {
    "lora": r"(lora_down\.weight|lora_up\.weight|alpha)",
    "locon": r"(lora_down\.weight|lora_up\.weight|alpha)",
    "loha": r"(hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|alpha)",
    "lokr": r"(lokr_w1|lokr_w2_a|lokr_w2_b|alpha)",
}


def test_saved_keys_are_kohya_names_of_real_modules(pipe, trained):
    known = {kohya_prefix("unet", n) for n, _ in pipe.unet.named_modules()} | \
            {kohya_prefix("text_encoder", n) for n, _ in pipe.text_encoder.named_modules()}
    for name, (spec, net, path, _) in trained.items():
        sd = load_file(str(path))
        prefixes = set()
        for key, t in sd.items():
            prefix, part = key.split(".", 1)
            assert re.fullmatch(PART_RE[spec.kind], part), key
            assert prefix in known, key
            assert t.dtype == torch.float16, key
            prefixes.add(prefix)
        assert all(f"{p}.alpha" in sd and sd[f"{p}.alpha"].shape == () for p in prefixes)
        has_te = any(p.startswith("lora_te_text_model_encoder_layers_") for p in prefixes)
        has_conv = any(re.search(r"resnets_\d+_conv[12]$", p) for p in prefixes)
        assert has_te == spec.text_encoder and has_conv == spec.unet_convs, name
        assert any(p.endswith("attn2_to_k") for p in prefixes)
        if spec.kind in ("lora", "locon"):  # 3x3 down, 1x1 up on resnet convs
            conv = next(p for p in prefixes if p.endswith("resnets_0_conv1"))
            assert sd[f"{conv}.lora_down.weight"].shape[2:] == (3, 3)
            assert sd[f"{conv}.lora_up.weight"].shape[2:] == (1, 1)


def test_metadata_is_what_kohya_writes(trained):
    for name, (spec, net, path, _) in trained.items():
        with safe_open(str(path), "pt") as f:
            md = f.metadata()
        assert md["ss_output_name"] == name
        assert md["ss_network_module"] == ("networks.lora" if spec.kind == "lora" else "lycoris.kohya")
        assert md["ss_network_dim"] == str(spec.rank) and float(md["ss_network_alpha"]) == spec.alpha
        args = json.loads(md["ss_network_args"])
        if spec.kind != "lora":
            assert args["algo"] == spec.kind
        assert md["ss_base_model_version"] == "sd_v1"
        freq = json.loads(md["ss_tag_frequency"])
        (dataset, tags), = freq.items()
        assert sum(1 for t in tags if re.search(r"(circle|square|triangle)", t)) > 0
        if spec.activation_text:
            assert tags[spec.activation_text] == 8  # every training caption starts with it
        assert md["ss_num_train_images"] == "8" and md["ss_resolution"] == "(32, 32)"
        assert int(md["ss_training_started_at"]) > 1_700_000_000
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        import hashlib
        assert md["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest() == addnet_hash(data)
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["sd version"] == "SD1" and side["activation text"] == spec.activation_text
        assert side["preferred weight"] == spec.preferred_weight
        assert set(side) >= {"description", "negative text", "notes"}


def test_file_delta_equals_adapter_delta(pipe, trained):
    """ΔW rebuilt from the file's tensors (independent formula) == what the adapter computes with
    its factors rounded to fp16 (the file's precision)."""
    for name, (spec, net, path, _) in trained.items():
        sd = {k: v.float() for k, v in load_file(str(path)).items()}
        for prefix, adapter in list(net.adapters.items())[:12]:
            parts = {k: sd[f"{prefix}.{k}"] for k in adapter.parts()}
            scale = sd[f"{prefix}.alpha"].item() / adapter.rank
            from_file = scale * expected_delta(spec.kind, parts, adapter.weight_shape)
            rounded = type(adapter).__new__(type(adapter))
            nn.Module.__init__(rounded)
            rounded.__dict__.update({k: v for k, v in adapter.__dict__.items() if k not in ("_parameters", "_modules")})
            rounded._parameters = {k: (nn.Parameter(v.detach().half().float()) if v is not None else None)
                                   for k, v in adapter._parameters.items()}
            rounded._modules = {}
            for mname, m in adapter._modules.items():
                mc = type(m).__new__(type(m))
                mc.__dict__.update(m.__dict__)
                mc._parameters = {k: nn.Parameter(v.detach().half().float()) for k, v in m._parameters.items() if v is not None}
                rounded._modules[mname] = mc
            torch.testing.assert_close(rounded.scaled_delta(), from_file, rtol=1e-4, atol=1e-6)
            assert torch.count_nonzero(from_file) > 0, f"{name}: {prefix} learned nothing"


def test_load_into_round_trips(pipe, trained):
    spec, net, path, _ = trained["demo-outline"]
    fresh = AdapterSet(pipe, spec.kind, spec.rank, spec.alpha, spec.unet_convs, spec.text_encoder)
    load_into(fresh, path)
    for prefix, a in fresh.adapters.items():
        b = net.adapters[prefix]
        torch.testing.assert_close(a.scaled_delta(), b.scaled_delta(), rtol=2e-3, atol=1e-5)


def test_adapters_change_output_with_weight_and_detach_exactly(pipe, trained):
    spec, net, path, _ = trained["demo-dark"]
    torch.manual_seed(1)
    x = torch.randn(1, 4, 16, 16)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        def run():
            return pipe.unet(x, torch.tensor([500]), pipe.text_encoder(ids).last_hidden_state).sample
        base = run()
        diffs = []
        with net:
            for w in (0.0, 0.5, 1.0):
                net.set_multiplier(w)
                diffs.append((run() - base).abs().mean().item())
        after = run()
    assert diffs[0] == 0.0 and 0 < diffs[1] < diffs[2]
    assert diffs[2] == pytest.approx(2 * diffs[1], rel=0.1)  # linear in the weight
    assert torch.equal(after, base)


def test_training_reduces_the_loss(pipe):
    spec = replace(DEMO_LORAS["demo-dark"], batch=4, lr=1e-2, text_encoder=False, unet_convs=False)
    _, losses, _ = train_lora(pipe, spec, steps=30, dataset_size=8, image_size=32, progress=False)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_plain_lora_file_loads_in_diffusers_peft_with_the_same_effect(trained):
    """demo-dark's layout (text encoder + attention + 3x3 resnet convs) through diffusers' kohya
    converter and peft gives exactly the outputs our adapters give, at a non-trivial weight."""
    spec, net, path, _ = trained["demo-dark"]
    fresh = tiny_sd1_pipeline(0)  # peft modifies the pipeline it loads into: keep the fixture clean
    mine = AdapterSet(fresh, spec.kind, spec.rank, spec.alpha, spec.unet_convs, spec.text_encoder,
                      spec.conv_rank, spec.conv_alpha)
    load_into(mine, path)
    torch.manual_seed(2)
    x = torch.randn(1, 4, 16, 16)
    ids = fresh.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids

    def run():
        cond = fresh.text_encoder(ids).last_hidden_state
        return cond, fresh.unet(x, torch.tensor([500]), cond).sample

    with torch.no_grad():
        base_te, base = run()
        with mine:
            mine.set_multiplier(0.8)
            our_te, ours = run()
        fresh.load_lora_weights(str(path), adapter_name="dark")
        fresh.set_adapters(["dark"], [0.8])
        peft_te, theirs = run()
    assert (our_te - base_te).abs().mean() > 1e-4 and (ours - base).abs().mean() > 1e-4
    torch.testing.assert_close(peft_te, our_te, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
