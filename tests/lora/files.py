"""Tiny LoRA file builders for the engine tests, written independently of the engine's key map.

Keys are derived from the tiny models' own module lists with each convention's definition:
kohya = "lora_unet_" / "lora_te_" + module path with "." -> "_"; PEFT = "<component>.<path>.lora_A";
LDM names from the test's own table (`ldm_name`). Each builder returns the state dict and the list
of `Layer`s it patches, so tests can merge the expected weights themselves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

PATCHABLE = (nn.Linear, nn.Conv2d)
ATTN_RE = re.compile(r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)$")
TE_RE = re.compile(r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@dataclass
class Layer:
    """component: "unet"/"text_encoder"/"text_encoder_2"; path: module path in that component."""

    component: str
    path: str
    module: nn.Module


def layers_of(pipe, *, unet: str = "attn", te: bool = True) -> list[Layer]:
    """Layers a typical file patches. unet: "attn" (attention/ff/proj, kohya default), "all"
    (plus resnet convs/linears, LoCon), "none"."""
    out = []
    if unet != "none":
        for path, m in pipe.unet.named_modules():
            if not isinstance(m, PATCHABLE):
                continue
            if unet == "attn" and not ATTN_RE.search(path):
                continue
            if unet == "all" and not (ATTN_RE.search(path) or ".resnets." in path or "samplers" in path):
                continue
            out.append(Layer("unet", path, m))
    if te:
        for comp in ("text_encoder", "text_encoder_2"):
            enc = getattr(pipe, comp, None)
            if enc is None:
                continue
            for path, m in enc.named_modules():
                if isinstance(m, nn.Linear) and TE_RE.search(path):
                    out.append(Layer(comp, path, m))
    return out


def _te_core(path: str) -> str:
    return path[len("text_model."):] if path.startswith("text_model.") else path


# ---- LDM names (test's own table: reference formulas, written out per level) -------------------

_RES = {"norm1": "in_layers_0", "conv1": "in_layers_2", "time_emb_proj": "emb_layers_1",
        "norm2": "out_layers_0", "conv2": "out_layers_3", "conv_shortcut": "skip_connection"}


def ldm_name(unet, path: str) -> str | None:
    """kohya LDM name (without lora_unet_) of a UNet module path of a layers_per_block=2 UNet."""
    assert unet.config.layers_per_block == 2
    p = path.split(".")
    if p[0] == "down_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if kind == "downsamplers":
            return f"input_blocks_{3 + 3 * i}_0_op"
        n = 1 + 3 * i + j
    elif p[0] == "up_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if kind == "upsamplers":
            has_attn = getattr(unet.up_blocks[i], "attentions", None) is not None
            return f"output_blocks_{3 * i + 2}_{2 if has_attn else 1}_conv"
        n = 3 * i + j
    elif p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), p[3:]
        head = "middle_block_1" if kind == "attentions" else f"middle_block_{0 if j == 0 else 2}"
        inner = "_".join(rest) if kind == "attentions" else _RES[rest[0]]
        return f"{head}_{inner}"
    else:
        return None
    side = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
    if kind == "resnets":
        return f"{side}_{n}_0_{_RES[rest[0]]}"
    return f"{side}_{n}_1_{'_'.join(rest)}"


def key_prefix(pipe, layer: Layer, convention: str) -> str:
    """File prefix of a layer in a convention: "kohya" (diffusers names), "kohya_ldm", "kohya_te1"
    (te1/te2 prefixes), "peft" (dotted unet./text_encoder.), "lycoris"."""
    if layer.component == "unet":
        if convention in ("kohya", "kohya_te1"):
            return "lora_unet_" + layer.path.replace(".", "_")
        if convention == "kohya_ldm":
            return "lora_unet_" + ldm_name(pipe.unet, layer.path)
        if convention == "lycoris":
            return "lycoris_" + layer.path.replace(".", "_")
        if convention == "peft":
            return "unet." + layer.path
    core = _te_core(layer.path)
    if convention == "peft":
        return f"{layer.component}.{core}"
    if layer.component == "text_encoder_2":
        return "lora_te2_text_model_" + core.replace(".", "_")
    if convention in ("kohya_ldm", "kohya_te1") or getattr(pipe, "text_encoder_2", None) is not None:
        return "lora_te1_text_model_" + core.replace(".", "_")
    return "lora_te_text_model_" + core.replace(".", "_")


def lora_factors(module: nn.Module, rank: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(up, down) shaped like kohya files: Linear (out, r), (r, in); Conv (out, r, 1, 1), (r, in, kh, kw)
    (down carries the layer's kernel: LoCon)."""
    w = module.weight
    if w.dim() == 2:
        return torch.randn(w.shape[0], rank, generator=gen) * 0.2, torch.randn(rank, w.shape[1], generator=gen) * 0.2
    up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.2
    down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=gen) * 0.2
    return up, down


def make_lora(pipe, *, convention: str = "kohya", rank: int = 4, alpha: float | None = 2.0, seed: int = 0,
              unet: str = "attn", te: bool = True, dtype=torch.float32, sd1_linear_proj: bool = True):
    """(state dict, [(Layer, up, down, scale)]) of a plain LoRA/LoCon over `layers_of(pipe, ...)`.

    sd1_linear_proj: SD1's 1x1-conv proj_in/proj_out get Linear-shaped 2-D factors, as kohya writes.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    truth = []
    for layer in layers_of(pipe, unet=unet, te=te):
        up, down = lora_factors(layer.module, rank, gen)
        if sd1_linear_proj and up.dim() == 4 and tuple(down.shape[2:]) == (1, 1):
            up, down = up.flatten(1), down.flatten(1)
        up, down = up.to(dtype), down.to(dtype)
        prefix = key_prefix(pipe, layer, convention)
        if convention == "peft":
            sd[f"{prefix}.lora_A.weight"] = down
            sd[f"{prefix}.lora_B.weight"] = up
        else:
            sd[f"{prefix}.lora_down.weight"] = down
            sd[f"{prefix}.lora_up.weight"] = up
            if alpha is not None:
                sd[f"{prefix}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
        scale = (alpha / rank) if (alpha is not None and convention != "peft") else 1.0
        truth.append((layer, up, down, scale))
    return sd, truth


def save(sd: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def reference_lora_delta(layer: Layer, up: Tensor, down: Tensor, scale: float, multiplier: float) -> Tensor:
    """ΔW = multiplier · scale · (up @ down) reshaped to the layer's weight, fp32, written with
    einsum (not the engine's mm/addmm path)."""
    u = up.double().reshape(up.shape[0], up.shape[1])
    d = down.double().reshape(down.shape[0], -1)
    dw = torch.einsum("or,ri->oi", u, d) * (scale * multiplier)
    return dw.reshape(layer.module.weight.shape).float()


# ---- pipeline helpers ---------------------------------------------------------------------------

def render(pipe, prompt: str = "a photo of a cat", steps: int = 2, seed: int = 0):
    """A 32x32 image as float numpy (1, 32, 32, 3) in [0, 1]; deterministic for a given pipe state."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    kwargs = dict(num_inference_steps=steps, height=32, width=32, generator=g, output_type="np", guidance_scale=5.0)
    out = pipe(prompt, **kwargs).images
    return np.asarray(out, dtype=np.float64)


def components(pipe) -> dict[str, nn.Module]:
    return {n: getattr(pipe, n) for n in ("unet", "text_encoder", "text_encoder_2", "vae") if getattr(pipe, n, None) is not None}


def snapshot(pipe) -> dict:
    """Everything a LoRA may touch: parameter values and in-place versions, instance forwards, tokenizers."""
    params, versions, forwards = {}, {}, {}
    for cname, comp in components(pipe).items():
        for n, p in comp.named_parameters():
            params[f"{cname}.{n}"] = p.detach().clone()
            versions[f"{cname}.{n}"] = p._version
        for n, m in comp.named_modules():
            if "forward" in m.__dict__:
                forwards[f"{cname}.{n}"] = m.__dict__["forward"]
    toks = {n: id(getattr(pipe, n)) for n in ("tokenizer", "tokenizer_2") if getattr(pipe, n, None) is not None}
    return {"params": params, "versions": versions, "forwards": forwards, "tokenizers": toks}


def assert_same_state(pipe, snap: dict) -> None:
    now = snapshot(pipe)
    assert now["params"].keys() == snap["params"].keys()
    changed = [k for k, v in snap["params"].items() if not torch.equal(v, now["params"][k])]
    assert not changed, f"parameters changed: {changed[:5]}"
    bumped = [k for k, v in snap["versions"].items() if now["versions"][k] != v]
    assert not bumped, f"parameters written in place: {bumped[:5]}"
    assert now["forwards"] == snap["forwards"], "instance forwards differ"
    assert now["tokenizers"] == snap["tokenizers"], "tokenizers differ"


def merged_copy(pipe, deltas: dict[tuple[str, str], Tensor | tuple[Tensor, Tensor | None]]):
    """A deep copy of pipe with W += ΔW (and b += Δb) in float64, rounded once, for each (component, path)."""
    import copy

    clone = copy.deepcopy(pipe)
    with torch.no_grad():
        for (comp, path), delta in deltas.items():
            dw, db = delta if isinstance(delta, tuple) else (delta, None)
            m = getattr(clone, comp).get_submodule(path)
            m.weight.copy_((m.weight.double() + dw.double().reshape(m.weight.shape)).to(m.weight.dtype))
            if db is not None:
                m.bias.copy_((m.bias.double() + db.double().reshape(m.bias.shape)).to(m.bias.dtype))
    return clone
