"""Synthetic LoRA files with real key layouts, for the library's tests and benchmark (numpy only).

Key names follow kohya's conventions (SD1 diffusers names, SDXL LDM names with lora_te1_/lora_te2_),
PEFT dotted names, LyCORIS types. Tensor shapes are tiny except where a width tells the architecture
(cross-attention to_k/to_v input = context width: 768 SD1, 1024 SD2, 2048 SDXL), so files stay small.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import save_file

__all__ = ["sd1_modules", "sdxl_modules", "network_tensors", "peft_tensors", "write_lora", "kohya_metadata", "NETWORK_TYPES",
           "CONTEXT_WIDTH"]

CONTEXT_WIDTH = {"SD1": 768, "SD2": 1024, "SDXL": 2048}
NETWORK_TYPES = ("LoRA", "LoCon", "DoRA", "LoHa", "LoKr", "IA3", "Full", "Norm", "GLoRA", "OFT", "BOFT")
_SMALL = 8  # in/out width of every non-telling layer


def _attn_modules(prefix: str, context: int) -> list[tuple[str, int]]:
    """(module, input width) of one transformer block."""
    mods = []
    for attn in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v", "to_out_0"):
            width = context if attn == "attn2" and proj in ("to_k", "to_v") else _SMALL
            mods.append((f"{prefix}_transformer_blocks_0_{attn}_{proj}", width))
    mods += [(f"{prefix}_transformer_blocks_0_ff_net_0_proj", _SMALL), (f"{prefix}_transformer_blocks_0_ff_net_2", _SMALL),
             (f"{prefix}_proj_in", _SMALL), (f"{prefix}_proj_out", _SMALL)]
    return mods


def sd1_modules(context: int = 768, text_encoder: bool = True, te_layers: int = 12,
                resnets: bool = False) -> list[tuple[str, int, bool]]:
    """Kohya SD1/SD2 module names (diffusers UNet naming): (name, input width, is 3x3 conv)."""
    mods: list[tuple[str, int, bool]] = []
    if text_encoder:
        for i in range(te_layers):
            for proj in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                         "mlp_fc1", "mlp_fc2"):
                mods.append((f"lora_te_text_model_encoder_layers_{i}_{proj}", _SMALL, False))
    for block in range(3):
        for j in range(2):
            mods += [(m, w, False) for m, w in _attn_modules(f"lora_unet_down_blocks_{block}_attentions_{j}", context)]
    mods += [(m, w, False) for m, w in _attn_modules("lora_unet_mid_block_attentions_0", context)]
    for block in range(1, 4):
        for j in range(3):
            mods += [(m, w, False) for m, w in _attn_modules(f"lora_unet_up_blocks_{block}_attentions_{j}", context)]
    if resnets:
        for block in range(4):
            for j in range(2):
                mods += [(f"lora_unet_down_blocks_{block}_resnets_{j}_conv1", _SMALL, True),
                         (f"lora_unet_down_blocks_{block}_resnets_{j}_conv2", _SMALL, True)]
    return mods


def sdxl_modules(text_encoder: bool = True, context: int = 2048, resnets: bool = False) -> list[tuple[str, int, bool]]:
    """Kohya SDXL module names (LDM UNet naming, lora_te1_/lora_te2_)."""
    mods: list[tuple[str, int, bool]] = []
    if text_encoder:
        for te, layers in (("lora_te1", 12), ("lora_te2", 32)):
            for i in range(layers):
                for proj in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj"):
                    mods.append((f"{te}_text_model_encoder_layers_{i}_{proj}", _SMALL, False))
    for block in (4, 5, 7, 8):
        mods += [(m, w, False) for m, w in _attn_modules(f"lora_unet_input_blocks_{block}_1", context)]
    mods += [(m, w, False) for m, w in _attn_modules("lora_unet_middle_block_1", context)]
    for block in range(6):
        mods += [(m, w, False) for m, w in _attn_modules(f"lora_unet_output_blocks_{block}_1", context)]
    if resnets:
        for block in (1, 2, 4, 5):
            mods += [(f"lora_unet_input_blocks_{block}_0_in_layers_2", _SMALL, True),
                     (f"lora_unet_input_blocks_{block}_0_out_layers_3", _SMALL, True)]
    return mods


def _r(shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float16) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def network_tensors(modules: list[tuple[str, int, bool]], network_type: str, rank: int = 4, seed: int = 0,
                    conv_rank: int | None = None, alpha: float | None = None) -> dict[str, np.ndarray]:
    """Tensors of one network type on the given modules (tiny shapes; out width 8).

    LoCon adds nothing by itself: pass modules with resnets=True to get conv layers."""
    rng = np.random.default_rng(seed)
    out = _SMALL
    tensors: dict[str, np.ndarray] = {}
    alpha_value = np.array(alpha if alpha is not None else rank, dtype=np.float16)
    for module, width, is_conv in modules:
        if network_type in ("LoRA", "LoCon", "DoRA"):
            r = conv_rank if is_conv and conv_rank else rank
            if is_conv:
                tensors[f"{module}.lora_down.weight"] = _r((r, width, 3, 3), rng)
                tensors[f"{module}.lora_up.weight"] = _r((out, r, 1, 1), rng)
            else:
                tensors[f"{module}.lora_down.weight"] = _r((r, width), rng)
                tensors[f"{module}.lora_up.weight"] = _r((out, r), rng)
            tensors[f"{module}.alpha"] = alpha_value
            if network_type == "DoRA":
                tensors[f"{module}.dora_scale"] = _r((1, width), rng)
        elif network_type == "LoHa":
            for w in ("w1", "w2"):
                tensors[f"{module}.hada_{w}_a"] = _r((out, rank), rng)
                tensors[f"{module}.hada_{w}_b"] = _r((rank, width), rng)
            tensors[f"{module}.alpha"] = alpha_value
        elif network_type == "LoKr":
            tensors[f"{module}.lokr_w1"] = _r((2, 2), rng)
            tensors[f"{module}.lokr_w2_a"] = _r((out // 2, rank), rng)
            tensors[f"{module}.lokr_w2_b"] = _r((rank, max(width // 2, 1)), rng)
            tensors[f"{module}.alpha"] = alpha_value
        elif network_type == "IA3":
            tensors[f"{module}.weight"] = _r((out,), rng)
            tensors[f"{module}.on_input"] = np.array(0, dtype=np.uint8)
        elif network_type == "Full":
            tensors[f"{module}.diff"] = _r((out, width), rng)
            tensors[f"{module}.diff_b"] = _r((out,), rng)
        elif network_type == "Norm":
            tensors[f"{module}_norm1.w_norm"] = _r((out,), rng)
            tensors[f"{module}_norm1.b_norm"] = _r((out,), rng)
        elif network_type == "GLoRA":
            tensors[f"{module}.a1.weight"] = _r((rank, width), rng)
            tensors[f"{module}.a2.weight"] = _r((width, rank), rng)
            tensors[f"{module}.b1.weight"] = _r((rank, width), rng)
            tensors[f"{module}.b2.weight"] = _r((out, rank), rng)
        elif network_type in ("OFT", "BOFT"):
            name = module.replace("lora_", "oft_", 1)
            blocks = rank
            size = out // blocks if out % blocks == 0 else 1
            shape = (2, blocks, size, size) if network_type == "BOFT" else (blocks, size, size)
            tensors[f"{name}.oft_blocks"] = _r(shape, rng)
            tensors[f"{name}.alpha"] = np.array(1e-3, dtype=np.float16)
        else:
            raise ValueError(f"unknown network type {network_type!r}")
    return tensors


def peft_tensors(modules: list[tuple[str, int, bool]], rank: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """The same modules in diffusers/PEFT naming: unet.down_blocks.0....to_q.lora_A.weight."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, width, _ in modules:
        if module.startswith("lora_unet_"):
            dotted = "unet." + _dot(module[len("lora_unet_"):])
        elif module.startswith("lora_te_"):
            dotted = "text_encoder." + _dot(module[len("lora_te_"):])
        else:
            continue
        tensors[f"{dotted}.lora_A.weight"] = _r((rank, width), rng)
        tensors[f"{dotted}.lora_B.weight"] = _r((_SMALL, rank), rng)
    return tensors


def _dot(name: str) -> str:
    """lora-style underscores back to dots, keeping the multi-word names diffusers uses."""
    keep = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
            "ff_net", "proj_in", "proj_out", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
            "mlp_fc1", "mlp_fc2")
    marked = name
    for i, word in enumerate(keep):
        marked = marked.replace(word, f"\x00{i}\x00")
    marked = marked.replace("_", ".")
    for i, word in enumerate(keep):
        marked = marked.replace(f"\x00{i}\x00", word)
    return marked.replace("mlp_fc", "mlp.fc")


def kohya_metadata(output_name: str, arch: str = "SD1", network_module: str = "networks.lora", dim: int = 4,
                   alpha: float = 4, seed: int = 0, tags: int = 40, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Metadata as kohya sd-scripts writes it (all values strings; JSON values as JSON text)."""
    rng = random.Random(seed)
    base = {"SDXL": "sdxl_base_v1-0", "SD2": "sd_v2", "SD1": "sd_v1"}[arch]
    words = ["1girl", "solo", "smile", "long hair", "outdoors", "looking at viewer", "blue eyes", "dress",
             "sky", "tree", "upper body", "short hair", "hat", "flower", "night", "city"]
    frequency = {f"{rng.randint(5, 20)}_{output_name}": {f" {rng.choice(words)} {i}": rng.randint(1, 300)
                                                         for i in range(tags)}}
    meta = {
        "ss_output_name": output_name,
        "ss_sd_model_name": "sd_xl_base_1.0.safetensors" if arch == "SDXL" else "v1-5-pruned-emaonly.safetensors",
        "ss_base_model_version": base,
        "ss_v2": "True" if arch == "SD2" else "False",
        "ss_network_module": network_module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_resolution": "(1024, 1024)" if arch == "SDXL" else "(512, 512)",
        "ss_clip_skip": "2",
        "ss_num_train_images": str(rng.randint(20, 2000)),
        "ss_training_started_at": str(1700000000 + rng.randint(0, 10**7)),
        "ss_learning_rate": "0.0001",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
        "ss_tag_frequency": json.dumps(frequency),
        "ss_dataset_dirs": json.dumps({f"10_{output_name}": {"n_repeats": 10, "img_count": rng.randint(10, 200)}}),
        "ss_bucket_info": json.dumps({"buckets": {str(i): {"resolution": [512 + 64 * i, 512], "count": i}
                                                  for i in range(8)}, "mean_img_ar_error": 0.01}),
        "sshs_model_hash": "",
        "sshs_legacy_hash": "",
    }
    meta = {k: v for k, v in meta.items() if v != ""}
    if extra:
        meta.update(extra)
    return meta


def write_lora(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    return path
