"""Which model a file is for: the one architecture detector of the app.

* `detect_lora_arch(metadata, modules)` -> (arch, basis) for LoRA files, from the header alone (the
  library lists it, the LoRA loader refuses a LoRA whose arch is certain and differs from the model's);
* `detect_checkpoint(shapes, filename)` -> (arch, variant) for checkpoints (ModelManager): arch "sd1" | "sdxl",
  variant "" (plain) | "inpainting" (9-channel UNet, from the conv_in weight shape; `unet_variant` gives it
  for a diffusers UNet's in_channels), raising ArchitectureError for anything this app cannot load (SD2,
  refiners, instruct-pix2pix / depth UNets, LoRAs...). `detect_checkpoint_arch` is its arch alone.

No torch, no file access: callers give the header's metadata and tensor shapes.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["ArchitectureError", "detect_arch", "detect_lora_arch", "lora_arch_from_shapes", "detect_checkpoint_arch",
           "detect_checkpoint", "unet_variant", "CERTAIN", "LORA_ARCH_TO_MODEL", "INPAINTING", "UNET_CHANNELS"]

# LoRA arch names (A1111's "sd version") -> the model arch names of the engine
LORA_ARCH_TO_MODEL = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl"}
# UNet input channels -> checkpoint variant: plain latents (4), inpainting (latents + mask + masked-image latents)
INPAINTING = "inpainting"
UNET_CHANNELS = {4: "", 9: INPAINTING}
# bases on which a loader may refuse a LoRA for another model (the others are A1111's guesses)
CERTAIN = frozenset({"metadata", "keys"})


class ArchitectureError(ValueError):
    """The file is for a model this app cannot load; the message says what it is."""


_LORA_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
# Name tests, as plain substrings of the newline-joined module names (C-speed `in`);
# "\n" + a prefix means "a module name starts with it".
_SDXL_LDM_NAMES = ("input_blocks", "output_blocks", "middle_block")
_SD1_DIFFUSERS_NAMES = ("down_blocks", "up_blocks", "mid_block", "\nlora_te_", "\ntext_encoder.", "\noft_te_",
                        "\nlycoris_te_")
_SD1_LDM_LEVEL0_ATTN_NAMES = ("input_blocks_1_1_", "input_blocks_2_1_", "input_blocks.1.1.", "input_blocks.2.1.")
_TE2_STARTS = ("\nlora_te2_", "\ntext_encoder_2.", "\nlycoris_te2_", "\nte2.")
_TE1_STARTS = ("\nlora_te1_",)
# diffusers UNet names: SDXL has no attention at level 0 and no 4th level; SD1/SD2 have one transformer
# block per attention, SDXL several
_SD1_DIFFUSERS_STRUCTURE = ("down_blocks_0_attentions", "down_blocks.0.attentions", "down_blocks_3_",
                            "down_blocks.3.", "up_blocks_3_", "up_blocks.3.")
_SDXL_DIFFUSERS_STRUCTURE = ("transformer_blocks_1_", "transformer_blocks.1.")


def _contains_any(text: str, needles: tuple[str, ...]) -> bool:
    return any(needle in text for needle in needles)


def _context_dim(modules: Mapping[str, Mapping[str, Any]], joined: str) -> int | None:
    """Cross-attention context width from an attn2 to_k/to_v down weight: 768 SD1, 1024 SD2, 2048 SDXL."""
    if "attn2" not in joined:
        return None
    for module, parts in modules.items():
        at = module.find("attn2")
        if at < 0 or ("to_k" not in module[at + 5:] and "to_v" not in module[at + 5:]):
            continue
        down = next((parts[p] for p in _LORA_DOWN if p in parts), None) or parts.get("hada_w1_b")
        if down is not None and len(down["shape"]) >= 2:
            return down["shape"][1]
    return None


def detect_lora_arch(metadata: Mapping[str, str], modules: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """(SD1 / SD2 / SDXL / Unknown, basis). basis: "metadata" or "keys" (certain), "guess" (A1111's
    fallbacks: kohya metadata -> SD1, diffusers names -> SD1), "none" (Unknown).

    A1111's rule first: `ss_base_model_version` starting with "sdxl_" -> SDXL, `ss_v2 == "True"` -> SD2
    (also SAI `modelspec.architecture`). Then the tensors: cross-attention width (768/1024/2048), a second
    text encoder (`lora_te2_`, `text_encoder_2.`), kohya-SDXL LDM block names or diffusers UNet structure
    (attention at level 0 / a 4th level -> SD1, several transformer blocks -> SDXL). Then A1111's
    fallback: any kohya metadata -> SD1; nothing -> Unknown. Keys win over that fallback because
    metadata such as diffusers' {"format": "pt"} says nothing about the model.
    """
    base = str(metadata.get("ss_base_model_version", ""))
    if base.startswith("sdxl_"):
        return "SDXL", "metadata"
    if str(metadata.get("ss_v2", "")) == "True" or base.startswith("sd_v2"):
        return "SD2", "metadata"
    spec = str(metadata.get("modelspec.architecture", ""))
    if spec.startswith("stable-diffusion-xl"):
        return "SDXL", "metadata"
    if spec.startswith("stable-diffusion-v2"):
        return "SD2", "metadata"
    if spec.startswith("stable-diffusion-v1"):
        return "SD1", "metadata"
    joined = "\n" + "\n".join(modules) + "\n"  # one C-speed substring search per question
    context = _context_dim(modules, joined)
    by_width = {768: "SD1", 1024: "SD2", 2048: "SDXL"}.get(context) if context is not None else None
    if by_width:
        return by_width, "keys"
    if _contains_any(joined, _TE2_STARTS):
        return "SDXL", "keys"
    if _contains_any(joined, _SDXL_LDM_NAMES):
        if _contains_any(joined, _SD1_LDM_LEVEL0_ATTN_NAMES):
            return "SD1", "keys"  # SD1 LDM names: attention at level 0, which SDXL does not have
        return "SDXL", "keys"
    if _contains_any(joined, _TE1_STARTS):
        return "SDXL", "keys"
    sd1_shape = _contains_any(joined, _SD1_DIFFUSERS_STRUCTURE)
    xl_shape = _contains_any(joined, _SDXL_DIFFUSERS_STRUCTURE)
    if sd1_shape != xl_shape:
        return ("SD1" if sd1_shape else "SDXL"), "keys"
    if base.startswith("sd_v1"):
        return "SD1", "metadata"
    if any(k.startswith("ss_") for k in metadata):
        return "SD1", "guess"
    if _contains_any(joined, _SD1_DIFFUSERS_NAMES):
        return "SD1", "guess"  # diffusers UNet names / single text encoder: SD1 (or SD2, which names cannot tell)
    return "Unknown", "none"


def detect_arch(metadata: Mapping[str, str], modules: Mapping[str, Mapping[str, Any]]) -> str:
    """SD1 / SD2 / SDXL / Unknown (see detect_lora_arch)."""
    return detect_lora_arch(metadata, modules)[0]


def lora_arch_from_shapes(metadata: Mapping[str, str], shapes: Mapping[str, Any]) -> tuple[str, str]:
    """detect_lora_arch for a loaded state dict: key -> shape (a tuple, torch.Size or list)."""
    from lora_ui.library.inspect import split_key  # the library's key grammar (kohya, LyCORIS, PEFT)

    modules: dict[str, dict[str, dict[str, Any]]] = {}
    for key, shape in shapes.items():
        if key.startswith("bundle_emb."):
            continue
        module, part = split_key(key)
        if part:
            modules.setdefault(module, {})[part] = {"shape": list(shape)}
    return detect_lora_arch(metadata, modules)


def unet_variant(in_channels: int, filename: str = "checkpoint") -> str:
    """"" for a plain UNet (4 input channels), "inpainting" for a 9-channel one (A1111's "hybrid"
    conditioning: latents + mask + masked-image latents); any other count (instruct-pix2pix 8, depth 5)
    raises ArchitectureError."""
    variant = UNET_CHANNELS.get(int(in_channels))
    if variant is None:
        raise ArchitectureError(f"{filename} is an instruct/depth model ({in_channels} UNet input channels); only "
                                "plain txt2img (4 channels) and inpainting (9 channels) checkpoints are supported.")
    return variant


def detect_checkpoint_arch(shapes: Mapping[str, Any], filename: str = "checkpoint") -> str:
    """"sd1" or "sdxl" (see detect_checkpoint)."""
    return detect_checkpoint(shapes, filename)[0]


def detect_checkpoint(shapes: Mapping[str, Any], filename: str = "checkpoint") -> tuple[str, str]:
    """(arch, variant) from a checkpoint's tensor names and shapes: arch "sd1" or "sdxl", variant "" or
    "inpainting" (9 input channels in `model.diffusion_model.input_blocks.0.0.weight`); anything else raises
    ArchitectureError saying what it is and that it is not supported."""
    arch = _checkpoint_arch(shapes, filename)
    in_conv = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    variant = unet_variant(in_conv[1], filename) if in_conv is not None and len(in_conv) == 4 else ""
    return arch, variant


def _checkpoint_arch(shapes: Mapping[str, Any], filename: str) -> str:
    keys = shapes.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.1.model.") or has("conditioner.embedders.0.model."):
        if not has("conditioner.embedders.0.transformer.text_model."):
            raise ArchitectureError(f"{filename} is an SDXL refiner (no CLIP-L text encoder); refiners are not "
                                    "supported. Use an SDXL base checkpoint.")
        return "sdxl"
    if has("cond_stage_model.model."):
        raise ArchitectureError(f"{filename} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder); "
                                "only SD1.x and SDXL are supported.")
    if has("cond_stage_model.transformer.") and has("model.diffusion_model."):
        return "sd1"
    if has("lora_unet_") or has("lora_te") or any(".lora_down." in k or ".lora_A." in k for k in keys):
        raise ArchitectureError(f"{filename} is a LoRA, not a checkpoint: put it in models/Lora and use it "
                                "with <lora:name:1> in the prompt.")
    if has("model.diffusion_model."):
        raise ArchitectureError(f"{filename} has a UNet but no text encoder this app knows "
                                "(not SD1.x or SDXL); it is not supported.")
    raise ArchitectureError(f"{filename}: architecture not recognised (no Stable Diffusion UNet keys "
                            "'model.diffusion_model.*'); only SD1.x and SDXL checkpoints are supported.")
