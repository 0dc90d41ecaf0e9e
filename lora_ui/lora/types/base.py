"""The base of every LoRA network type, and the finalize step all types share.

A network type is one small class: it says which network parts it claims (`part_names`), checks
them against the target layer when it loads (`load`), and computes its raw weight delta
(`calc_updown`). Everything the types have in common lives here in `delta` (A1111's
`finalize_updown`):

    ΔW = calc_updown(W)                      raw delta, fp32, any shape with the target's numel
    ΔW = ΔW + bias_part                      LyCORIS quirk: a weight-shaped `bias` part
    ΔW = ΔW.reshape(W.shape)
    ΔW = ΔW * scale                          alpha / rank, or the `scale` tensor, else 1
    ΔW = DoRA(W, ΔW) - W                     only when `dora_scale` is present
    ΔW = ΔW * multiplier
    Δb = raw layer-bias delta * multiplier   (`diff_b`, `b_norm`: never scaled)

All math is fp32 on the device of the weight passed in; factors stay in their file dtype in memory and
are cast at use.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from lora_ui.lora.spec import LoraError

FP32 = torch.float32

# Parts any type may carry next to its own.
ALPHA = "alpha"
SCALE = "scale"
DORA_SCALE = "dora_scale"
PEFT_DORA_MAGNITUDE = "lora_magnitude_vector"  # PEFT's name for dora_scale: (out,), per output row
WEIGHT_BIAS = "bias"  # LyCORIS: a weight-shaped tensor added to the raw ΔW (not the layer's bias)
SHARED_PARTS: frozenset[str] = frozenset({ALPHA, SCALE, DORA_SCALE, PEFT_DORA_MAGNITUDE, WEIGHT_BIAS})


def shape_str(shape: Iterable[int]) -> str:
    """(320, 4) style, for messages."""
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


@dataclass(frozen=True)
class Target:
    """What a network module needs to know about the layer it patches (shapes only, no weights).

    kind: "linear" | "conv" | "norm" | "other"; weight_shape: the layer weight's shape, e.g.
    Linear (out, in), Conv2d (out, in/groups, kh, kw), GroupNorm/LayerNorm (C,).
    """

    kind: str
    weight_shape: tuple[int, ...]
    has_bias: bool
    label: str

    @classmethod
    def of(cls, module: "nn.Module | Target") -> "Target":
        if isinstance(module, Target):
            return module
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor):
            raise LoraError(f"the target {type(module).__name__} has no weight to patch")
        shape = tuple(int(d) for d in weight.shape)
        bias = getattr(module, "bias", None)
        has_bias = isinstance(bias, Tensor)
        if isinstance(module, nn.Linear):
            kind, label = "linear", f"Linear(in={shape[1]}, out={shape[0]})"
        elif isinstance(module, nn.Conv2d):
            kind = "conv"
            label = f"Conv2d(in={module.in_channels}, out={shape[0]}, kernel={shape[2]}x{shape[3]})"
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            kind, label = "norm", f"{type(module).__name__}(weight {shape_str(shape)})"
        else:
            kind, label = "other", f"{type(module).__name__}(weight {shape_str(shape)})"
        return cls(kind=kind, weight_shape=shape, has_bias=has_bias, label=label)

    @property
    def out_dim(self) -> int:
        return self.weight_shape[0]

    @property
    def in_dim(self) -> int:
        """Input features / channels per group (dim 1 of the weight); 1 for 1-D weights."""
        return self.weight_shape[1] if len(self.weight_shape) > 1 else 1

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def kernel(self) -> tuple[int, ...]:
        """(kh, kw) for convs, () otherwise."""
        return self.weight_shape[2:]


class LowRankFactors(NamedTuple):
    """A plain LoRA as factors, for adding the branch in forward instead of materialising ΔW.

    Shapes follow the target (views of the file tensors, file dtype; cast at use):
      Linear: down (r, in), up (out, r), mid None; ΔW = scale * up @ down.
      Conv2d: down (r, in, kh, kw) carrying the layer's kernel/stride/padding, up (out, r, 1, 1);
              with a Tucker core: down (r, in, 1, 1), mid (r, r, kh, kw) carrying the kernel/stride/
              padding, up (out, r, 1, 1).
    scale excludes the multiplier (alpha / full rank, even when `dyn` cuts the rank).
    """

    down: Tensor
    up: Tensor
    mid: Tensor | None
    scale: float


def first_part(parts: Mapping[str, Tensor], names: tuple[str, ...], role: str) -> tuple[str, Tensor] | None:
    """The one part among `names` (aliases of one factor), or None; two aliases at once is an error."""
    present = [n for n in names if n in parts]
    if len(present) > 1:
        raise LoraError(f"parts {', '.join(present)} all give the {role}; a module may carry only one of them")
    if not present:
        return None
    return present[0], parts[present[0]]


def expect(condition: bool, message: "str | Callable[[], str]") -> None:
    """Raise LoraError(message) unless `condition`. A callable message is built only on failure
    (hot paths: a file has hundreds of modules, each checked several times)."""
    if not condition:
        raise LoraError(message() if callable(message) else message)


def scalar_of(name: str, tensor: Tensor) -> float:
    expect(tensor.numel() == 1, lambda: f"{name} must hold one number, got shape {shape_str(tensor.shape)}")
    return float(tensor.reshape(()).item())


def as_fp32(tensor: Tensor, device: torch.device) -> Tensor:
    """The tensor in fp32 on `device` (no copy when it already is)."""
    return tensor.to(device=device, dtype=FP32)


def fresh_fp32(tensor: Tensor, device: torch.device, factor: float = 1.0) -> Tensor:
    """factor * tensor as a new fp32 tensor on device (safe to modify in place)."""
    t32 = tensor.to(device=device, dtype=FP32, copy=True)
    return t32.mul_(factor) if factor != 1.0 else t32


def scaled_fp32(tensor: Tensor, device: torch.device, factor: float) -> Tensor:
    """factor * tensor in fp32 on device; never modifies `tensor` itself."""
    t32 = as_fp32(tensor, device)
    if factor == 1.0:
        return t32
    if t32 is tensor:
        return t32 * factor
    return t32.mul_(factor)


class NetworkModule(ABC):
    """One network type's factors for one layer.

    Subclasses set `kind`, `part_names` (the parts that identify the type; any of them present means
    "mine"), `uses_alpha` (scale = alpha / rank; False: alpha is ignored or means something else)
    and implement `__init__` (validate against the target, raising LoraError naming the parts and
    shapes) and `calc_updown`.
    """

    kind: ClassVar[str]
    part_names: ClassVar[frozenset[str]]
    uses_alpha: ClassVar[bool] = True
    uses_scale_tensor: ClassVar[bool] = True

    def __init__(self, parts: Mapping[str, Tensor], target: Target) -> None:
        self.parts: dict[str, Tensor] = dict(parts)
        self.target = target
        self.alpha: float | None = scalar_of(ALPHA, parts[ALPHA]) if ALPHA in parts else None
        self.scale_tensor: float | None = scalar_of(SCALE, parts[SCALE]) if SCALE in parts else None
        dora = first_part(parts, (DORA_SCALE, PEFT_DORA_MAGNITUDE), "DoRA magnitude")
        self.dora_scale: Tensor | None = None
        self.dora_axis: int | None = None  # 1: norm per input column, 0: per output row
        if dora is not None:
            self.dora_scale, self.dora_axis = self._check_dora(*dora)
        self.weight_bias: Tensor | None = parts.get(WEIGHT_BIAS)
        if self.weight_bias is not None:
            expect(
                self.weight_bias.numel() == target.numel,
                f"{WEIGHT_BIAS} has shape {shape_str(self.weight_bias.shape)} ({self.weight_bias.numel()} values) "
                f"but the target {target.label} has a weight of shape {shape_str(target.weight_shape)}",
            )

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, parts: Mapping[str, Tensor], target: "nn.Module | Target") -> "NetworkModule | None":
        """`cls` built from `parts` if they are its type, None if not.

        Raises LoraError when they are its type but malformed: a partner part missing, a part this
        type does not know, a shape that does not fit the target, NaN/Inf values.
        """
        if not (cls.part_names & parts.keys()):
            return None
        unknown = sorted(parts.keys() - cls.part_names - SHARED_PARTS)
        if unknown:
            raise LoraError(
                f"a {cls.kind} module has parts {', '.join(unknown)} that this type does not use "
                f"(all parts: {', '.join(sorted(parts))})"
            )
        check_finite(parts)
        return cls(parts, Target.of(target))

    def _check_dora(self, name: str, dora: Tensor) -> tuple[Tensor, int]:
        """The DoRA magnitude and the weight axis it runs along (1: input columns, 0: output rows).

        LyCORIS/kohya store (1, in[, 1, 1]) (norm per input column, A1111's case) or (out, 1[, 1, 1])
        (per output row); PEFT stores (out,). A 1-D tensor is per output row when it fits out.
        """
        t = self.target
        shape = tuple(dora.shape)
        numel = dora.numel()
        per_column = len(shape) >= 2 and shape[1] == t.in_dim and numel == t.in_dim
        per_row = len(shape) >= 1 and shape[0] == t.out_dim and numel == t.out_dim
        if per_row and (len(shape) == 1 or not per_column):
            return dora, 0
        if per_column:
            return dora, 1
        if len(shape) == 1 and numel == t.in_dim:
            return dora, 1
        raise LoraError(
            f"{name} has shape {shape_str(shape)} but the target {t.label} needs (1, {t.in_dim}, ...) "
            f"(per input column) or ({t.out_dim}, 1, ...) (per output row)"
        )

    # ---- what the patcher reads ----------------------------------------------------------------

    @property
    def rank(self) -> int | None:
        """The `dim` that alpha is divided by; None for types without one."""
        return None

    @property
    def scale(self) -> float:
        """A1111's calc_scale: the `scale` tensor, else alpha / rank, else 1.0."""
        if self.uses_scale_tensor and self.scale_tensor is not None:
            return self.scale_tensor
        rank = self.rank
        if self.uses_alpha and self.alpha is not None and rank:
            return self.alpha / rank
        return 1.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the factors (file dtype)."""
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    @property
    def has_layer_bias_delta(self) -> bool:
        """True when `delta` returns a layer-bias delta (the patcher then patches the bias too)."""
        return False

    def low_rank_factors(self, dyn: int | None = None) -> LowRankFactors | None:
        """The factors for a forward-time branch, or None when this module is not a plain LoRA."""
        return None

    # ---- math ----------------------------------------------------------------------------------

    @abstractmethod
    def calc_updown(self, orig_weight: Tensor, dyn: int | None = None, factor: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """(factor * raw ΔW, raw layer-bias delta or None), fp32 on orig_weight's device.

        ΔW is a fresh tensor (the caller may modify it) whose numel equals the target weight's; its
        shape may still need the reshape. `dyn` matters only to plain LoRA; `factor` lets types fold
        a number into a small factor instead of a pass over the W-sized result.
        """

    def delta(self, orig_weight: Tensor, multiplier: float, dyn: int | None = None) -> tuple[Tensor, Tensor | None]:
        """(ΔW, Δbias) to add to the layer: the finalize step shared by all types.

        orig_weight: the layer's current weight, target-shaped, any dtype/device (stacked LoRAs pass
        the weight already holding the earlier ones). ΔW: target-shaped, fp32, on orig_weight's
        device; Δbias: (out,) fp32 or None.
        """
        if dyn is not None and dyn < 1:
            raise LoraError(f"dyn must be a positive rank, got {dyn}")
        if tuple(orig_weight.shape) != self.target.weight_shape:
            raise LoraError(
                f"{self.kind} module was loaded for a weight of shape {shape_str(self.target.weight_shape)} "
                f"but is applied to one of shape {shape_str(orig_weight.shape)}"
            )
        scale = self.scale
        if self.weight_bias is None and self.dora_scale is None:
            # Common case: scale and multiplier folded into the computation, no extra pass.
            updown, bias_delta = self.calc_updown(orig_weight, dyn=dyn, factor=scale * multiplier)
            updown = updown.reshape(orig_weight.shape)
        else:
            updown, bias_delta = self.calc_updown(orig_weight, dyn=dyn)
            if self.weight_bias is not None:
                updown = updown.reshape(self.weight_bias.shape)
                updown += as_fp32(self.weight_bias, updown.device)
            updown = updown.reshape(orig_weight.shape)
            updown *= scale
            if self.dora_scale is not None:
                updown = self._weight_decompose(updown, orig_weight)
            updown *= multiplier
        if bias_delta is not None:
            bias_delta = bias_delta * multiplier
        return updown, bias_delta

    def _weight_decompose(self, scaled_updown: Tensor, orig_weight: Tensor) -> Tensor:
        """DoRA: M = W + ΔW·scale, W' = M · dora_scale / ‖M‖ along `dora_axis`; returns W' − W (fp32).

        scaled_updown is consumed (modified in place).
        """
        assert self.dora_scale is not None and self.dora_axis is not None
        orig32 = as_fp32(orig_weight, scaled_updown.device)
        merged = scaled_updown.add_(orig32)
        keep = self.dora_axis
        norm_dims = tuple(d for d in range(merged.dim()) if d != keep)
        norm = torch.linalg.vector_norm(merged, dim=norm_dims, keepdim=True)
        magnitude_shape = [1] * merged.dim()
        magnitude_shape[keep] = merged.shape[keep]
        magnitude = as_fp32(self.dora_scale, merged.device).reshape(magnitude_shape)
        merged *= magnitude / norm
        return merged.sub_(orig32)


def all_finite(tensor: Tensor) -> bool:
    """True when no element is NaN/Inf.

    A finite sum proves it (any NaN or Inf makes the sum NaN or Inf) and costs a fraction of
    `isfinite(t).all()` on fp16 CPU tensors (~0.03 s vs ~0.35 s for a 16M-value file); only a
    non-finite sum (which huge finite values can also cause) needs the exact check.
    """
    total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else FP32)
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(parts: Mapping[str, Tensor]) -> None:
    """LoraError naming the parts that hold NaN or Inf."""
    bad = [name for name, t in parts.items() if t.is_floating_point() and not all_finite(t)]
    if bad:
        names = ", ".join(sorted(bad))
        raise LoraError(f"{names} {'contains' if len(bad) == 1 else 'contain'} NaN or Inf values")
