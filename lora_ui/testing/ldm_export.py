"""Write a diffusers SD1/SDXL pipeline as an A1111 single-file checkpoint (LDM key names), for tests.

The inverse of diffusers' single-file conversion, written from the LDM layout:

UNet (`model.diffusion_model.`), n = layers_per_block:
    conv_in -> input_blocks.0.0; time_embedding.linear_{1,2} -> time_embed.{0,2};
    add_embedding.linear_{1,2} -> label_emb.0.{0,2}; conv_norm_out -> out.0; conv_out -> out.2
    down_blocks.i.resnets.j -> input_blocks.{1+(n+1)i+j}.0   down_blocks.i.attentions.j -> ....1
    down_blocks.i.downsamplers.0.conv -> input_blocks.{(n+1)(i+1)}.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
    up_blocks.i.resnets.j -> output_blocks.{(n+1)i+j}.0      up_blocks.i.attentions.j -> ....1
    up_blocks.i.upsamplers.0.conv -> output_blocks.{(n+1)i+n}.{2 if attentions else 1}.conv
    resnet parts: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1, norm2 out_layers.0,
    conv2 out_layers.3, conv_shortcut skip_connection; attention inner names are unchanged.
VAE (`first_stage_model.`), L levels:
    {en,de}coder.conv_norm_out -> norm_out; encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j;
    encoder.down_blocks.i.downsamplers.0 -> encoder.down.i.downsample; decoder.up_blocks.i -> decoder.up.{L-1-i}
    (.block.j / .upsample); mid_block.resnets.{0,1} -> mid.block_{1,2}; mid_block.attentions.0 -> mid.attn_1 with
    group_norm norm, to_q q, to_k k, to_v v, to_out.0 proj_out (1x1 conv weights: (C, C, 1, 1));
    resnet conv_shortcut -> nin_shortcut.
CLIP-L (SD1 `cond_stage_model.transformer.text_model.`, SDXL `conditioner.embedders.0.transformer.text_model.`):
    transformers' names (transformers 5 has no `text_model.` level in CLIPTextModel; A1111 files do).
OpenCLIP-G (SDXL `conditioner.embedders.1.model.`): token_embedding.weight, positional_embedding,
    transformer.resblocks.i.{ln_1, ln_2, attn.in_proj_weight/bias (q;k;v stacked), attn.out_proj,
    mlp.c_fc, mlp.c_proj}, ln_final, text_projection (= diffusers text_projection.weight transposed).

`write_config_folder` copies the shipped config folder (configs/sd1 or configs/sdxl) and replaces the
component configs with the tiny pipeline's own, so a test checkpoint loads through exactly the same
code path as a real one, with a `config=` override.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lora_ui.engine.checkpoints import CONFIGS_DIR

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str) -> tuple[str, str]:
    """"a.b.c.weight" -> ("a.b.c", "weight")."""
    module, _, param = key.rpartition(".")
    return module, param


def _resnet_part(rest: str) -> str:
    module, param = _split(rest)
    return f"{_RESNET[module]}.{param}"


def unet_key(key: str, n: int, up_has_attention: list[bool]) -> str:
    """Diffusers UNet state-dict key -> LDM key without the `model.diffusion_model.` prefix."""
    module, param = _split(key)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{0 if j == 0 else 2}.{_resnet_part(rest)}"
    side, i, kind, j, rest = parts[0], int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if side == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(n + 1) * (i + 1)}.0.op.{param}"
        idx = 1 + (n + 1) * i + j
        return f"input_blocks.{idx}.1.{rest}" if kind == "attentions" else f"input_blocks.{idx}.0.{_resnet_part(rest)}"
    if side == "up_blocks":
        if kind == "upsamplers":
            slot = 2 if up_has_attention[i] else 1
            return f"output_blocks.{(n + 1) * i + n}.{slot}.conv.{param}"
        idx = (n + 1) * i + j
        return f"output_blocks.{idx}.1.{rest}" if kind == "attentions" else f"output_blocks.{idx}.0.{_resnet_part(rest)}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key(key: str, levels: int) -> str:
    """Diffusers AutoencoderKL key -> LDM key without the `first_stage_model.` prefix."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    parts = key.split(".")
    coder = parts[0]
    if len(parts) > 1 and parts[1] == "mid_block":
        kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{j + 1}.{rest}"
        module, param = _split(rest)
        return f"{coder}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
    if len(parts) > 1 and parts[1] in ("down_blocks", "up_blocks"):
        i, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
        level = i if parts[1] == "down_blocks" else levels - 1 - i
        side = "down" if parts[1] == "down_blocks" else "up"
        if kind == "resnets":
            return f"{coder}.{side}.{level}.block.{rest}"
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{coder}.{side}.{level}.{sampler}.{'.'.join(rest.split('.')[1:])}"
    return key


def unet_state_dict(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    n = int(cfg.layers_per_block if isinstance(cfg.layers_per_block, int) else cfg.layers_per_block[0])
    up_attn = [t.startswith("CrossAttn") for t in cfg.up_block_types]
    return {"model.diffusion_model." + unet_key(k, n, up_attn): v for k, v in unet.state_dict().items()}


def vae_state_dict(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for k, v in vae.state_dict().items():
        new = vae_key(k, levels)
        if ".mid.attn_1." in new and new.endswith("weight") and v.dim() == 2:
            v = v[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out["first_stage_model." + new] = v
    return out


def clip_l_state_dict(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in text_encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v
    return out


def open_clip_state_dict(text_encoder, prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP names (q/k/v packed into in_proj)."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()
          if not k.endswith("position_ids")}
    out = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
        prefix + "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    layers = text_encoder.config.num_hidden_layers
    inner = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in ("q", "k", "v")], dim=0)
            for a, b in inner.items():
                out[f"{dst}{b}.{param}"] = sd.pop(f"{src}{a}.{param}")
    if sd:
        raise KeyError(f"OpenCLIP export left keys unmapped: {sorted(sd)[:5]}")
    return out


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline under A1111 single-file names (SD1 or SDXL, decided by text_encoder_2)."""
    sd = {**unet_state_dict(pipe.unet), **vae_state_dict(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update(clip_l_state_dict(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        sd.update(open_clip_state_dict(pipe.text_encoder_2))
    else:
        sd.update(clip_l_state_dict(pipe.text_encoder, "cond_stage_model.transformer."))
    return sd


def export_single_file(pipe, path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write `pipe` as an A1111 `.safetensors` checkpoint."""
    from safetensors.torch import save_file

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in ldm_state_dict(pipe).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def write_config_folder(pipe, arch: str, out_dir: Path) -> Path:
    """Copy configs/<arch> (symlinked tokenizers resolved) and put the pipeline's component configs in it."""
    out_dir = Path(out_dir)
    shutil.copytree(CONFIGS_DIR / arch, out_dir, symlinks=False, dirs_exist_ok=True)
    for name in ("unet", "vae"):
        (out_dir / name / "config.json").write_text(json.dumps(dict(getattr(pipe, name).config), indent=2))
    for name in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, name, None)
        if te is not None:
            te.config.to_json_file(str(out_dir / name / "config.json"))
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(pipe.scheduler.config), indent=2))
    return out_dir
