"""LoRA files for the mixed-batch tests: four plain/LoCon/Tucker LoRAs of different ranks and one LoHa,
written with the engine-independent builders of tests/lora/files.py."""
from __future__ import annotations

from pathlib import Path

import torch

from lora_ui.lora.spec import LoraSpec
from tests.lora.files import key_prefix, layers_of, make_lora, save


def tucker_lora(pipe, rank: int, seed: int) -> dict:
    """Tucker (lora_mid) LoCon on every 3x3 resnet conv of the UNet."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for layer in layers_of(pipe, unet="all", te=False):
        w = layer.module.weight
        if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
            continue
        prefix = key_prefix(pipe, layer, "kohya")
        sd[f"{prefix}.lora_down.weight"] = torch.randn(rank, w.shape[1], 1, 1, generator=gen) * 0.2
        sd[f"{prefix}.lora_mid.weight"] = torch.randn(rank, rank, 3, 3, generator=gen) * 0.2
        sd[f"{prefix}.lora_up.weight"] = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.2
        sd[f"{prefix}.alpha"] = torch.tensor(float(rank) / 2)
    return sd


def loha(pipe, rank: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for layer in layers_of(pipe, unet="attn", te=False)[:6]:
        w = layer.module.weight
        prefix = key_prefix(pipe, layer, "kohya")
        fan_in = w[0].numel()
        for i in (1, 2):
            sd[f"{prefix}.hada_w{i}_a"] = torch.randn(w.shape[0], rank, generator=gen) * 0.2
            sd[f"{prefix}.hada_w{i}_b"] = torch.randn(rank, fan_in, generator=gen) * 0.2
        sd[f"{prefix}.alpha"] = torch.tensor(float(rank))
    return sd


def write_loras(pipe, folder: Path) -> dict[str, Path]:
    """a: rank 2 attn+TE; b: rank 4 LoCon on every layer (3x3 downs, time_emb_proj); c: rank 8 PEFT attn+TE;
    d: rank 3 Tucker resnet convs; hada: a LoHa (no low-rank form)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "a": save(make_lora(pipe, rank=2, alpha=1.0, seed=1)[0], folder / "a.safetensors"),
        "b": save(make_lora(pipe, rank=4, alpha=3.0, seed=2, unet="all", te=False)[0], folder / "b.safetensors"),
        "c": save(make_lora(pipe, convention="peft", rank=8, seed=3)[0], folder / "c.safetensors"),
        "d": save(tucker_lora(pipe, 3, seed=4), folder / "d.safetensors"),
        "hada": save(loha(pipe, 2, seed=5), folder / "hada.safetensors"),
    }
    return out


def spec(paths: dict[str, Path], name: str, te: float = 1.0, unet: float | None = None, **kw) -> LoraSpec:
    return LoraSpec(paths[name], name, te=te, unet=te if unet is None else unet, **kw)


def four_sets(paths: dict[str, Path]) -> list[list[LoraSpec]]:
    """Five requests' LoRA sets over the four LoRAs: different weights of one LoRA, different orders,
    two LoRAs stacked on one layer, and a request with none."""
    return [
        [spec(paths, "a", 0.8)],
        [spec(paths, "b", 1.0), spec(paths, "a", 0.5, 1.1)],
        [spec(paths, "c", 0.7), spec(paths, "d", 1.2)],
        [],
        [spec(paths, "d", 0.6), spec(paths, "b", 0.9, lbw="1,0,0.5,1,1,0.5,0.5,1,0,1,1,1,1,0.5,1,1,1")],
    ]


def tiny_model_with_loras(folder):
    """(the tiny SD1 model as a LoadedModel, {name: path} of the test LoRAs written for it in `folder`)."""
    import torch

    from lora_ui.engine.checkpoints import LoadedModel
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline(0)
    model = LoadedModel(pipe=pipe, arch="sd1", name="tiny", path=None, default_size=32, dtype=torch.float32,
                        device=torch.device("cpu"), scheduler_config=dict(pipe.scheduler.config))
    return model, write_loras(pipe, folder)
