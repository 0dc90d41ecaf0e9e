"""LoRA network types: one small class per type, tried in A1111's precedence order.

Adding a type = one file with a NetworkModule subclass + one line in NETWORK_TYPES.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from lora_ui.lora.spec import LoraError
from lora_ui.lora.types.base import LowRankFactors, NetworkModule, Target
from lora_ui.lora.types.full import FullModule
from lora_ui.lora.types.glora import GLoRAModule
from lora_ui.lora.types.ia3 import IA3Module
from lora_ui.lora.types.loha import LoHaModule
from lora_ui.lora.types.lokr import LoKrModule
from lora_ui.lora.types.lora import LoRAModule
from lora_ui.lora.types.norm import NormModule
from lora_ui.lora.types.oft import OFTModule

# First type whose parts are present wins (A1111 order: lora, hada, ia3, lokr, full, norm, glora, oft).
NETWORK_TYPES: tuple[type[NetworkModule], ...] = (
    LoRAModule,
    LoHaModule,
    IA3Module,
    LoKrModule,
    FullModule,
    NormModule,
    GLoRAModule,
    OFTModule,
)


def load_network_module(parts: Mapping[str, Tensor], target: "nn.Module | Target") -> NetworkModule:
    """The network module for one layer's parts; LoraError when no type claims them or they are malformed."""
    for network_type in NETWORK_TYPES:
        module = network_type.load(parts, target)
        if module is not None:
            return module
    raise LoraError(f"no LoRA network type uses the parts {', '.join(sorted(parts)) or '(none)'}")


__all__ = [
    "NETWORK_TYPES",
    "FullModule",
    "GLoRAModule",
    "IA3Module",
    "LoHaModule",
    "LoKrModule",
    "LoRAModule",
    "LowRankFactors",
    "NetworkModule",
    "NormModule",
    "OFTModule",
    "Target",
    "load_network_module",
]
