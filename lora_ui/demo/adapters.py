"""Small trainable adapters (LoRA/LoCon, LoHa, LoKr) attached to a frozen model by forward hooks,
and saving them exactly as kohya sd-scripts / LyCORIS do.

An adapter computes ΔW (the target's weight shape) from its factors; the hook adds
`multiplier * scale * f(x; ΔW)` to the target's output, where f is the target's own op (linear or
conv with the target's stride/padding) without bias. Hooks are per-instance and removable, so the
frozen model is never modified. Module prefixes follow kohya: `lora_unet_<diffusers path, . -> _>`
and `lora_te_text_model_<path>` (transformers 5's CLIPTextModel has no `text_model.` level).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def factorize(dim: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' factorization: dim = m * n with m <= n, m as close to sqrt(dim) as allowed."""
    if factor > 0 and dim % factor == 0:
        m, n = factor, dim // factor
        return (m, n) if m <= n else (n, m)
    best = (1, dim)
    for m in range(1, int(math.isqrt(dim)) + 1):
        if dim % m == 0:
            best = (m, dim // m)
    return best


class Adapter(nn.Module):
    """Base: holds the target's geometry; subclasses define `delta_weight()` (unscaled ΔW) and parts."""

    network_module = "networks.lora"
    algo = "lora"

    def __init__(self, target: nn.Module, rank: int, alpha: float):
        super().__init__()
        if not isinstance(target, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"adapters wrap nn.Linear or nn.Conv2d, not {type(target).__name__}")
        self.is_conv = isinstance(target, nn.Conv2d)
        self.weight_shape = tuple(target.weight.shape)  # (out, in[, kh, kw])
        self.out_features = self.weight_shape[0]
        self.in_features = self.weight_shape[1]
        self.kernel = tuple(target.kernel_size) if self.is_conv else (1, 1)
        self.stride = target.stride if self.is_conv else None
        self.padding = target.padding if self.is_conv else None
        self.rank = rank
        self.alpha = float(alpha)
        self.multiplier = 1.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scaled_delta(self) -> torch.Tensor:
        """scale * ΔW in the target's weight shape (what multiplier 1 adds to W)."""
        return self.scale * self.delta_weight().reshape(self.weight_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.multiplier * self.scaled_delta()
        if self.is_conv:
            return F.conv2d(x, dw, stride=self.stride, padding=self.padding)
        return F.linear(x, dw)

    def parts(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class LoRAAdapter(Adapter):
    """LoRA / LoCon: down (r, in[, kh, kw]) then up (out, r[, 1, 1]); ΔW = up @ down.

    Forward runs the two small layers (cheaper than building ΔW): up(down(x))."""

    def __init__(self, target: nn.Module, rank: int, alpha: float, algo: str = "lora"):
        super().__init__(target, rank, alpha)
        self.algo = algo
        self.network_module = "networks.lora" if algo == "lora" else "lycoris.kohya"
        if self.is_conv:
            self.down = nn.Conv2d(self.in_features, rank, self.kernel, self.stride, self.padding, bias=False)
            self.up = nn.Conv2d(rank, self.out_features, 1, bias=False)
        else:
            self.down = nn.Linear(self.in_features, rank, bias=False)
            self.up = nn.Linear(rank, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def delta_weight(self) -> torch.Tensor:
        return self.up.weight.flatten(1) @ self.down.weight.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * (self.multiplier * self.scale)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.down.weight, "lora_up.weight": self.up.weight}


class LoHaAdapter(Adapter):
    """LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b); w*_a (out, r), w*_b (r, in*kh*kw)."""

    network_module = "lycoris.kohya"
    algo = "loha"

    def __init__(self, target: nn.Module, rank: int, alpha: float):
        super().__init__(target, rank, alpha)
        fan_in = self.in_features * self.kernel[0] * self.kernel[1]
        self.w1_a = nn.Parameter(torch.randn(self.out_features, rank) * 0.1)
        self.w1_b = nn.Parameter(torch.randn(rank, fan_in))
        self.w2_a = nn.Parameter(torch.zeros(self.out_features, rank))
        self.w2_b = nn.Parameter(torch.randn(rank, fan_in))

    def delta_weight(self) -> torch.Tensor:
        return (self.w1_a @ self.w1_b) * (self.w2_a @ self.w2_b)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"hada_w1_a": self.w1_a, "hada_w1_b": self.w1_b, "hada_w2_a": self.w2_a, "hada_w2_b": self.w2_b}


class LoKrAdapter(Adapter):
    """LoKr: ΔW = kron(w1, w2_a @ w2_b); w1 (out1, in1) full, w2 factored at rank r (Linear targets)."""

    network_module = "lycoris.kohya"
    algo = "lokr"

    def __init__(self, target: nn.Module, rank: int, alpha: float, factor: int = -1):
        super().__init__(target, rank, alpha)
        if self.is_conv and self.kernel != (1, 1):
            raise TypeError("this LoKr adapter supports Linear and 1x1 conv targets")
        out1, out2 = factorize(self.out_features, factor)
        in1, in2 = factorize(self.in_features, factor)
        self.w1 = nn.Parameter(torch.empty(out1, in1))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        self.w2_a = nn.Parameter(torch.empty(out2, rank))
        nn.init.kaiming_uniform_(self.w2_a, a=math.sqrt(5))
        self.w2_b = nn.Parameter(torch.zeros(rank, in2))

    def delta_weight(self) -> torch.Tensor:
        return torch.kron(self.w1, self.w2_a @ self.w2_b)

    def parts(self) -> dict[str, torch.Tensor]:
        return {"lokr_w1": self.w1, "lokr_w2_a": self.w2_a, "lokr_w2_b": self.w2_b}


# ----------------------------------------------------------------------------------------------------
# attaching to a pipeline


def kohya_prefix(component: str, module_name: str) -> str:
    """('unet', 'down_blocks.0.attentions.0.proj_in') -> 'lora_unet_down_blocks_0_attentions_0_proj_in';
    ('text_encoder', 'encoder.layers.0.mlp.fc1') -> 'lora_te_text_model_encoder_layers_0_mlp_fc1'."""
    if component == "unet":
        return "lora_unet_" + module_name.replace(".", "_")
    if component == "text_encoder":
        name = module_name[len("text_model."):] if module_name.startswith("text_model.") else module_name
        return "lora_te_text_model_" + name.replace(".", "_")
    raise ValueError(f"unknown component {component!r}")


UNET_ATTN_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                      "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_CONV_SUFFIXES = ("conv1", "conv2")  # resnet 3x3 convs (kohya conv_dim / LoCon)
TE_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def target_modules(pipe, unet_convs: bool, text_encoder: bool) -> list[tuple[str, str, nn.Module]]:
    """(component, module name, module) of every layer a kohya SD1 network patches, sorted by name."""
    found = []
    for name, mod in pipe.unet.named_modules():
        in_transformer = "transformer_blocks" in name and name.endswith(UNET_ATTN_SUFFIXES)
        is_proj = "attentions" in name and name.endswith(("proj_in", "proj_out"))
        if in_transformer or is_proj:
            found.append(("unet", name, mod))
        elif unet_convs and "resnets" in name and name.endswith(UNET_CONV_SUFFIXES):
            found.append(("unet", name, mod))
    if text_encoder:
        for name, mod in pipe.text_encoder.named_modules():
            if "layers." in name and name.endswith(TE_SUFFIXES):
                found.append(("text_encoder", name, mod))
    return found


class AdapterSet(nn.Module):
    """All adapters of one network, attached by forward hooks. `multiplier` scales them all."""

    def __init__(self, pipe, kind: str, rank: int, alpha: float, unet_convs: bool, text_encoder: bool,
                 conv_rank: int | None = None, conv_alpha: float | None = None):
        super().__init__()
        self.kind = kind
        self.rank, self.alpha = rank, alpha
        self.conv_rank, self.conv_alpha = conv_rank or rank, conv_alpha if conv_alpha is not None else alpha
        self.adapters = nn.ModuleDict()
        self.targets: dict[str, nn.Module] = {}
        self._handles: list = []
        for component, name, mod in target_modules(pipe, unet_convs, text_encoder):
            prefix = kohya_prefix(component, name)
            conv3 = isinstance(mod, nn.Conv2d) and mod.kernel_size != (1, 1)
            r, a = (self.conv_rank, self.conv_alpha) if conv3 else (rank, alpha)
            if kind in ("lora", "locon"):
                adapter = LoRAAdapter(mod, r, a, algo=kind)
            elif kind == "loha":
                adapter = LoHaAdapter(mod, r, a)
            elif kind == "lokr":
                adapter = LoKrAdapter(mod, r, a)
            else:
                raise ValueError(f"unknown adapter kind {kind!r}; expected lora, locon, loha or lokr")
            self.adapters[prefix] = adapter
            self.targets[prefix] = mod

    def attach(self) -> None:
        if self._handles:
            return
        for prefix, mod in self.targets.items():
            adapter = self.adapters[prefix]
            self._handles.append(mod.register_forward_hook(lambda m, args, out, a=adapter: out + a(args[0])))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set_multiplier(self, value: float) -> None:
        for a in self.adapters.values():
            a.multiplier = float(value)

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.detach()

    def state_for_file(self) -> dict[str, torch.Tensor]:
        """kohya/LyCORIS tensors: '<prefix>.<part>' in fp16, plus '<prefix>.alpha' (fp16 scalar)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, adapter in self.adapters.items():
            for part, tensor in adapter.parts().items():
                out[f"{prefix}.{part}"] = tensor.detach().to(torch.float16).contiguous()
            out[f"{prefix}.alpha"] = torch.tensor(adapter.alpha, dtype=torch.float16)
        return out
