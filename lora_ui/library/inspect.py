"""What a LoRA file is, from its safetensors header alone: architecture, network type, rank, metadata.

No tensor is read and torch is not imported: listing thousands of files stays fast.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

from lora_ui.arch import detect_arch
from lora_ui.safetensors_header import SafetensorsHeader

__all__ = ["FileSummary", "summarize_header", "decode_metadata", "tag_frequency", "detect_arch",
           "split_key", "ARCHES", "NETWORK_TYPE_NAMES"]

ARCHES = ("SD1", "SD2", "SDXL", "Unknown")
NETWORK_TYPE_NAMES = ("LoRA", "LoCon", "DoRA", "LoHa", "LoKr", "IA3", "Full", "Norm", "GLoRA", "OFT", "BOFT",
                      "Unknown")

# Network part names (everything after the module prefix of kohya / LyCORIS keys).
_PARTS = (
    "lora_magnitude_vector.weight", "lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight",
    "lora_B.weight", "lora.up.weight", "lora.down.weight", "lora_magnitude_vector", "dora_scale", "alpha",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1_a", "lokr_w1_b",
    "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "lokr_t2", "on_input", "diff_b", "diff", "w_norm", "b_norm",
    "a1.weight", "a2.weight", "b1.weight", "b2.weight", "oft_blocks", "oft_diag", "rescale", "scale", "bias",
    "weight",
)
# Dotted (diffusers / PEFT) keys carry only LoRA parts; bare ".weight" there is a model weight, not IA3.
_KNOWN_PARTS = frozenset(_PARTS)
_DOTTED_SUFFIXES = tuple("." + p for p in ("lora_magnitude_vector.weight", "lora_up.weight", "lora_down.weight",
                                           "lora_A.weight", "lora_B.weight", "lora.up.weight", "lora.down.weight",
                                           "lora_magnitude_vector", "dora_scale", "alpha"))
_KOHYA_PREFIXES = ("lora_", "lycoris_", "oft_", "lora_te", "lokr_", "loha_")
_LORA_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
_LORA_UP = ("lora_up.weight", "lora_B.weight", "lora.up.weight")
# Names of resnet / conv layers (LoCon targets) in every key convention.
_CONV_MARKERS = ("resnets", "in_layers", "out_layers", "emb_layers", "skip_connection", "downsamplers",
                 "upsamplers", "conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "_op\n", ".op\n")
_TE_PREFIXES = ("lora_te", "lycoris_te", "text_encoder", "te_", "te1", "te2", "oft_te")



def split_key(key: str) -> tuple[str, str]:
    """(module prefix, network part). Kohya/LyCORIS keys split at the first dot; dotted PEFT/diffusers
    keys at a known LoRA part suffix. Anything else (a checkpoint's weights...) gives (key, "")."""
    if key.startswith(_KOHYA_PREFIXES):
        module, _, part = key.partition(".")
        return (module, part) if part in _KNOWN_PARTS else (key, "")
    for suffix in _DOTTED_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[1:]
    return key, ""


@dataclass
class FileSummary:
    """Everything the listing needs from one header (cached on disk as a plain dict)."""

    alias: str | None
    arch: str
    network_type: str
    rank: int | None
    conv_rank: int | None
    alpha: float | None
    dora: bool
    module_count: int
    te_modules: int
    unet_modules: int
    embeddings: int
    unmatched_keys: int
    has_metadata: bool
    sshs_model_hash: str | None
    base_model_name: str | None
    cover_image: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FileSummary":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


_LORA_FAMILY = frozenset(_LORA_DOWN + _LORA_UP)


def _module_type(parts: Mapping[str, Mapping[str, Any]]) -> tuple[str, int | None, bool]:
    """(type, rank, has a spatial kernel) for one module's parts (raw header entries with "shape")."""
    down = parts.get("lora_down.weight") or parts.get("lora_A.weight") or parts.get("lora.down.weight")
    if down is not None or not _LORA_FAMILY.isdisjoint(parts):
        shape = down["shape"] if down is not None else ()
        kernel = len(shape) == 4 and shape[2] * shape[3] > 1
        return "LoRA", (shape[0] if shape else None), kernel or "lora_mid.weight" in parts
    if "hada_w1_a" in parts:
        w1b = parts.get("hada_w1_b")
        return "LoHa", (w1b["shape"][0] if w1b is not None and w1b["shape"] else None), False
    if "lokr_w1" in parts or "lokr_w1_a" in parts:
        for p in ("lokr_w2_b", "lokr_w1_b"):
            if p in parts and parts[p]["shape"]:
                return "LoKr", parts[p]["shape"][0], False
        return "LoKr", None, False
    if "weight" in parts and "diff" not in parts and "w_norm" not in parts:
        return "IA3", None, False
    if "diff" in parts:
        return "Full", None, False
    if "w_norm" in parts or "b_norm" in parts:
        return "Norm", None, False
    if "a1.weight" in parts:
        a1 = parts["a1.weight"]["shape"]
        return "GLoRA", (a1[0] if a1 else None), False
    blocks = parts.get("oft_blocks") or parts.get("oft_diag")
    if blocks is not None:
        shape = blocks["shape"]
        if "oft_blocks" in parts and len(shape) == 4:
            return "BOFT", shape[1], False
        return "OFT", (shape[0] if shape else None), False
    return "Unknown", None, False


def _most_common(values: list[int]) -> int | None:
    if not values:
        return None
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v))


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def summarize_header(header: SafetensorsHeader) -> FileSummary:
    """Classify a header: group keys by module, pick the network type, rank, arch."""
    modules: dict[str, dict[str, dict[str, Any]]] = {}
    embeddings: set[str] = set()
    unmatched = 0
    known, kohya = _KNOWN_PARTS, _KOHYA_PREFIXES
    kohya_groups: dict[str, dict[str, dict[str, Any]]] = {}  # the groups of kohya/LyCORIS modules seen so far
    for key, info in header.raw_tensors.items():
        module, _, part = key.partition(".")
        if part in known:
            group = kohya_groups.get(module)
            if group is not None:  # fast path: another part of a kohya/LyCORIS module
                group[part] = info
                continue
            if module.startswith(kohya):
                kohya_groups[module] = modules[module] = {part: info}
                continue
        if key.startswith("bundle_emb."):
            embeddings.add(key.split(".")[1])
            continue
        # other layouts (PEFT / diffusers dotted names...); split_key never returns a kohya module name
        # here (kohya keys reaching it have an unknown part and come back unmatched)
        module, part = split_key(key)
        if not part:
            unmatched += 1
            continue
        group = modules.get(module)
        if group is None:
            modules[module] = {part: info}
        else:
            group[part] = info
    type_counts: Counter[str] = Counter()
    ranks: list[int] = []
    conv_ranks: list[int] = []
    any_conv = False
    dora = False
    te_modules = 0
    lora_modules: list[str] = []
    for module, parts in modules.items():
        kind, rank, kernel = _module_type(parts)
        if kind == "Unknown" and set(parts) <= {"alpha", "scale", "bias", "dora_scale"}:
            unmatched += len(parts)
            continue
        type_counts[kind] += 1
        if "dora_scale" in parts or "lora_magnitude_vector" in parts or "lora_magnitude_vector.weight" in parts:
            dora = True
        if module.startswith(_TE_PREFIXES):
            te_modules += 1
        if kind == "LoRA":
            lora_modules.append(module)
            if kernel:  # a 3x3 (or Tucker) conv LoRA: LoCon's conv_dim
                any_conv = True
                if rank is not None:
                    conv_ranks.append(rank)
                continue
        if rank is not None:
            ranks.append(rank)
    if lora_modules and not any_conv:
        # 1x1-conv or linear LoRA on resnet layers (time_emb_proj, conv_shortcut...) also makes it LoCon;
        # substring tests on one joined string keep this a C-speed scan
        joined_lora = "\n".join(lora_modules) + "\n"
        any_conv = any(marker in joined_lora for marker in _CONV_MARKERS)
    main = [t for t in type_counts if t != "Norm"] or list(type_counts)
    if main:
        order = {name: i for i, name in enumerate(NETWORK_TYPE_NAMES)}
        network_type = max(main, key=lambda t: (type_counts[t], -order.get(t, 99)))
    else:
        network_type = "Unknown"
    if network_type == "LoRA":
        network_type = "DoRA" if dora else ("LoCon" if any_conv else "LoRA")
    rank = _most_common(ranks) if ranks else _most_common(conv_ranks)
    metadata = header.metadata
    alias = metadata.get("ss_output_name") or None
    module_count = sum(type_counts.values())
    return FileSummary(
        alias=alias,
        arch=detect_arch(metadata, modules),
        network_type=network_type,
        rank=rank,
        conv_rank=_most_common(conv_ranks),
        alpha=_float_or_none(metadata.get("ss_network_alpha")),
        dora=dora,
        module_count=module_count,
        te_modules=te_modules,
        unet_modules=module_count - te_modules,
        embeddings=len(embeddings),
        unmatched_keys=unmatched,
        has_metadata=bool(metadata),
        sshs_model_hash=(metadata.get("sshs_model_hash") or None),
        base_model_name=(metadata.get("ss_sd_model_name") or None),
        cover_image=bool(metadata.get("ssmd_cover_images")),
    )


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Metadata with JSON-looking values ('{...}' / '[...]') parsed, as A1111's metadata view does;
    values that fail to parse stay strings."""
    decoded: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                decoded[key] = json.loads(value)
                continue
            except ValueError:
                pass
        decoded[key] = value
    return decoded


def tag_frequency(metadata: Mapping[str, Any]) -> dict[str, int]:
    """`ss_tag_frequency` (dataset -> tag -> count, raw JSON string or decoded) as tag -> total count,
    tags stripped, most frequent first (ties alphabetical). Malformed parts are skipped."""
    raw = metadata.get("ss_tag_frequency")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if not isinstance(raw, dict):
        return {}
    totals: Counter[str] = Counter()
    for dataset in raw.values():
        if not isinstance(dataset, dict):
            continue
        for tag, count in dataset.items():
            if isinstance(count, (int, float)) and not isinstance(count, bool) and str(tag).strip():
                totals[str(tag).strip()] += int(count)
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))
