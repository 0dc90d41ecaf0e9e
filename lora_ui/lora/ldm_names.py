"""Diffusers UNet module paths -> original LDM (CompVis / kohya SDXL) names, and block ids.

The map is generated from the UNet's own structure (``layers_per_block`` and which up blocks have
attentions), not from a fixed table, so SD1 (4 levels) and SDXL (3 levels, no attention at level 0)
both come out right. All names returned here use '_' separators, as kohya keys do, without the
``lora_unet_`` prefix.

LDM numbering (n = layers_per_block, one extra slot per level for the down/upsampler):
  down_blocks.i.resnets.j      -> input_blocks_{1 + (n+1)i + j}_0
  down_blocks.i.attentions.j   -> input_blocks_{1 + (n+1)i + j}_1
  down_blocks.i.downsamplers.0 -> input_blocks_{(n+1)(i+1)}_0_op
  up_blocks.i.resnets.j        -> output_blocks_{(n+1)i + j}_0      (up blocks have n+1 layers, j <= n)
  up_blocks.i.attentions.j     -> output_blocks_{(n+1)i + j}_1
  up_blocks.i.upsamplers.0     -> output_blocks_{(n+1)i + n}_{2 if the block has attentions else 1}_conv
  mid_block.resnets.{0,1}      -> middle_block_{0,2};  mid_block.attentions.0 -> middle_block_1
"""
from __future__ import annotations

import re

# Inside a resnet, diffusers and LDM name the layers differently.
_RESNET_PARTS = {
    "norm1": "in_layers_0",
    "conv1": "in_layers_2",
    "time_emb_proj": "emb_layers_1",
    "norm2": "out_layers_0",
    "conv2": "out_layers_3",
    "conv_shortcut": "skip_connection",
}

# Modules outside the down/mid/up blocks.
_TOP_LEVEL = {
    "conv_in": "input_blocks_0_0",
    "time_embedding.linear_1": "time_embed_0",
    "time_embedding.linear_2": "time_embed_2",
    "add_embedding.linear_1": "label_emb_0_0",
    "add_embedding.linear_2": "label_emb_0_2",
    "conv_norm_out": "out_0",
    "conv_out": "out_2",
}

_BLOCK_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _underscore(path: str) -> str:
    return path.replace(".", "_")


def _inner(kind: str, rest: str | None) -> str | None:
    """Name of a layer inside a resnet/attention, LDM style (None when it has no LDM equivalent)."""
    if rest is None:
        return None
    if kind == "resnets":
        return _RESNET_PARTS.get(rest)
    # Attention (transformer) blocks keep diffusers' inner names in LDM files.
    return _underscore(rest)


def ldm_block_index(path: str, layers_per_block: int, up_has_attention: dict[int, bool]) -> tuple[str, int] | None:
    """("input"|"middle"|"output", LDM block index) for a diffusers UNet module path, or None.

    Used for LBW block ids (IN04, M00, OUT03 ...). Top-level modules: conv_in is IN00, conv_out/
    conv_norm_out/time/label embeddings belong to no block (None).
    """
    n = layers_per_block
    if path == "conv_in":
        return ("input", 0)
    m = _BLOCK_RE.match(path)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if side == "down_blocks":
            idx = (n + 1) * (i + 1) if kind == "downsamplers" else 1 + (n + 1) * i + j
            return ("input", idx)
        idx = (n + 1) * i + n if kind == "upsamplers" else (n + 1) * i + j
        return ("output", idx)
    if _MID_RE.match(path):
        return ("middle", 0)
    return None


def diffusers_to_ldm(path: str, layers_per_block: int, up_has_attention: dict[int, bool]) -> str | None:
    """LDM name (underscored, no prefix) of a diffusers UNet module path, or None if it has none.

    path: e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
      -> "input_blocks_4_1_transformer_blocks_0_attn1_to_q" (layers_per_block 2).
    up_has_attention: up block index -> whether that up block has attentions (decides the
    upsampler's slot in its LDM output block).
    """
    if path in _TOP_LEVEL:
        return _TOP_LEVEL[path]
    n = layers_per_block
    m = _BLOCK_RE.match(path)
    if m:
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down_blocks":
            if kind == "downsamplers":
                return f"input_blocks_{(n + 1) * (i + 1)}_0_op" if rest == "conv" else None
            inner = _inner(kind, rest)
            if inner is None:
                return None
            slot = 0 if kind == "resnets" else 1
            return f"input_blocks_{1 + (n + 1) * i + j}_{slot}_{inner}"
        # Up blocks have n + 1 layers each; the upsampler shares the last one's LDM block.
        if kind == "upsamplers":
            if rest != "conv":
                return None
            slot = 2 if up_has_attention.get(i, False) else 1
            return f"output_blocks_{(n + 1) * i + n}_{slot}_conv"
        inner = _inner(kind, rest)
        if inner is None:
            return None
        slot = 0 if kind == "resnets" else 1
        return f"output_blocks_{(n + 1) * i + j}_{slot}_{inner}"
    m = _MID_RE.match(path)
    if m:
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        inner = _inner(kind, rest)
        if inner is None:
            return None
        idx = 1 if kind == "attentions" else (0 if j == 0 else 2)
        return f"middle_block_{idx}_{inner}"
    return None
