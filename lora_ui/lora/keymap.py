"""Key map built from the pipeline's own modules: every name a LoRA file may use for each layer.

For every patchable module (Linear, Conv2d, GroupNorm, LayerNorm) of the UNet and the text
encoder(s), all conventions' names are generated and point at one `Target`:

- kohya, diffusers paths: ``lora_unet_down_blocks_0_attentions_0_..._attn1_to_q``
- kohya, LDM paths (SDXL files, some SD1): ``lora_unet_input_blocks_1_1_..._attn1_to_q``
- text encoders: ``lora_te_`` / ``lora_te1_`` (first encoder), ``lora_te2_`` (second), each with and
  without ``text_model_`` (transformers 5's CLIPTextModel has no ``text_model.`` level; files say it)
- LyCORIS ``lycoris_<path>`` and kohya OFT ``oft_unet_<path>`` (both UNet path styles)
- dotted diffusers/PEFT: ``unet.<path>``, bare ``<path>`` and ``base_model.model.<path>`` for the
  UNet, ``text_encoder.<path>``, ``text_encoder_2.<path>`` (with and without ``text_model.``)

Nothing is guessed by replacing underscores in file keys: a key either names a module of this model
in one of these conventions or it is reported as unmatched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .ldm_names import diffusers_to_ldm, ldm_block_index

PATCHABLE_TYPES = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

# Network parts of dotted (diffusers/PEFT) files -> kohya part names the network types understand.
_DOTTED_PARTS = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_A.default.weight": "lora_down.weight",
    "lora_B.default.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.default": "dora_scale",
    "lora_magnitude_vector.default.weight": "dora_scale",
}


@dataclass(eq=False)
class Target:
    """One patchable module of the pipeline.

    id: "<component>:<dotted path>" (unique, e.g. "unet:mid_block.attentions.0.proj_in").
    lbw_block: LBW block id ("BASE" for text encoders, "IN00".."IN11", "M00", "OUT00".."OUT11"),
      "" for UNet modules outside every block (time/label embeddings, conv_out).
    level: coarse block for the inspector: "te", "te2", "down_<i>", "mid", "up_<i>", "other".
    """

    id: str
    component: str
    path: str
    module: nn.Module = field(repr=False)
    lbw_block: str
    level: str

    @property
    def is_text_encoder(self) -> bool:
        return self.component != "unet"


@dataclass
class KeyMap:
    """arch: "sd1" or "sdxl" (from the pipeline: a second text encoder means SDXL).
    targets: id -> Target; names: every convention's prefix -> Target."""

    arch: str
    targets: dict[str, Target]
    names: dict[str, Target]

    def resolve(self, key: str) -> tuple[Target, str] | None:
        """Split a file key into (target, network part), or None if it names no module here.

        Kohya-style keys are split at the first dot; dotted keys at the longest known module
        prefix, and their PEFT/diffusers part names are translated to kohya's
        ("lora_A.weight" -> "lora_down.weight").
        """
        first_dot = key.find(".")
        if first_dot <= 0:
            return None
        target = self.names.get(key[:first_dot])
        if target is not None:
            return target, key[first_dot + 1:]
        # Dotted: try the longest prefix first ("unet.a.b.lora_A.weight" -> "unet.a.b").
        pos = len(key)
        while True:
            pos = key.rfind(".", 0, pos)
            if pos <= first_dot:
                return None
            target = self.names.get(key[:pos])
            if target is not None:
                part = key[pos + 1:]
                return target, _DOTTED_PARTS.get(part, part)


def _text_encoder_names(component: str, path: str) -> list[str]:
    """All names of a text-encoder module. path is the module's own dotted path, which may or may
    not start with "text_model." depending on the transformers class."""
    core = path[len("text_model."):] if path.startswith("text_model.") else path
    under = core.replace(".", "_")
    kohya_prefixes = ["lora_te_", "lora_te1_"] if component == "text_encoder" else ["lora_te2_"]
    names = []
    for prefix in kohya_prefixes:
        names += [f"{prefix}text_model_{under}", f"{prefix}{under}"]
    names += [f"{component}.text_model.{core}", f"{component}.{core}"]
    return names


def _unet_names(path: str, ldm: str | None) -> list[str]:
    under = path.replace(".", "_")
    names = [f"lora_unet_{under}", f"lycoris_{under}", f"oft_unet_{under}", f"unet.{path}", path,
             f"base_model.model.{path}"]
    if ldm is not None:
        names += [f"lora_unet_{ldm}", f"lycoris_{ldm}", f"oft_unet_{ldm}"]
    return names


def _level(path: str) -> str:
    parts = path.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return f"{parts[0][:-len('_blocks')]}_{parts[1]}"
    if parts[0] == "mid_block":
        return "mid"
    return "other"


def _lbw_block(path: str, layers_per_block: int, up_attn: dict[int, bool]) -> str:
    where = ldm_block_index(path, layers_per_block, up_attn)
    if where is None:
        return ""
    side, idx = where
    if side == "middle":
        return "M00"
    return f"{'IN' if side == 'input' else 'OUT'}{idx:02d}"


def build_keymap(pipe) -> KeyMap:
    """Key map of a diffusers SD1/SDXL pipeline (any object with .unet and .text_encoder[_2])."""
    targets: dict[str, Target] = {}
    names: dict[str, Target] = {}
    arch = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"

    unet = getattr(pipe, "unet", None)
    if unet is not None:
        lpb = unet.config.layers_per_block
        layers_per_block = lpb if isinstance(lpb, int) else int(lpb[0])
        up_attn = {i: hasattr(block, "attentions") and block.attentions is not None and len(block.attentions) > 0
                   for i, block in enumerate(unet.up_blocks)}
        for path, module in unet.named_modules():
            if not isinstance(module, PATCHABLE_TYPES) or module.weight is None:
                continue
            t = Target(f"unet:{path}", "unet", path, module,
                       _lbw_block(path, layers_per_block, up_attn), _level(path))
            targets[t.id] = t
            for name in _unet_names(path, diffusers_to_ldm(path, layers_per_block, up_attn)):
                names.setdefault(name, t)

    for component, level in (("text_encoder", "te"), ("text_encoder_2", "te2")):
        te = getattr(pipe, component, None)
        if te is None:
            continue
        for path, module in te.named_modules():
            if not isinstance(module, PATCHABLE_TYPES) or module.weight is None:
                continue
            t = Target(f"{component}:{path}", component, path, module, "BASE", level)
            targets[t.id] = t
            for name in _text_encoder_names(component, path):
                names.setdefault(name, t)
    return KeyMap(arch, targets, names)
