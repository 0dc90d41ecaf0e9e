"""Shared helpers for the compare tests (no tests here): a tiny kohya LoRA file for the tiny SD1
pipeline, and the real Worker + txt2img.generate + LoraManager + LoraLibrary around that pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lora_ui.engine import txt2img
from lora_ui.engine.checkpoints import LoadedModel
from lora_ui.engine.txt2img import Txt2ImgRequest
from lora_ui.engine.worker import Worker
from lora_ui.lora.manager import LoraManager

IMAGE_SIZE = 32
STEPS = 3


def tiny_request(**fields) -> Txt2ImgRequest:
    """A request the tiny pipeline renders in a fraction of a second."""
    defaults = dict(sampler="Euler", steps=STEPS, width=IMAGE_SIZE, height=IMAGE_SIZE, save_images=False)
    return Txt2ImgRequest(**{**defaults, **fields})


def tiny_model(pipe) -> LoadedModel:
    return LoadedModel(pipe=pipe, arch="sd1", name="tiny-sd1", path=None, default_size=IMAGE_SIZE,
                       dtype=torch.float32, device=torch.device("cpu"), kind="builtin")


def kohya_unet_targets(pipe) -> dict[str, torch.nn.Module]:
    """kohya name ('lora_unet_' + dotted path with '.' -> '_') -> module, for every attention projection."""
    targets = {}
    for name, module in pipe.unet.named_modules():
        if ".attn" in name and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            targets["lora_unet_" + name.replace(".", "_")] = module
    return targets


def write_tiny_lora(pipe, path: Path, seed: int, rank: int = 4, std: float = 0.4) -> Path:
    """A kohya-format LoRA on every UNet attention projection of `pipe` (values seeded)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, module in kohya_unet_targets(pipe).items():
        out_features, in_features = module.weight.shape[:2]
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * std
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * std
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})
    return path


class RecordingGenerate:
    """The real txt2img.generate, recording each request it renders."""

    def __init__(self):
        self.requests: list[Txt2ImgRequest] = []

    def __call__(self, model, req, **kwargs):
        self.requests.append(req)
        return txt2img.generate(model, req, **kwargs)


@dataclass
class Rig:
    """What a compare test needs: the worker, its library, and the log of renders."""

    worker: Worker
    library: Any
    generate: RecordingGenerate
    lora_files: dict[str, Path] = field(default_factory=dict)

    @property
    def requests(self) -> list[Txt2ImgRequest]:
        return self.generate.requests

    def close(self) -> None:
        """Unload every LoRA (the pipeline is shared between tests), then stop the worker."""
        self.worker.submit(lambda session: session.loras.clear(), kind="cleanup").result()
        self.worker.shutdown()


@dataclass
class Context:
    """The two AppContext attributes compare/sweep read."""

    worker: Worker
    library: Any


def make_rig(pipe, lora_files: dict[str, Path], with_library: bool = True) -> Rig:
    """The real LoraLibrary over the folder of `lora_files` (one folder), the real Worker."""
    from lora_ui.library import LoraLibrary

    folders = {path.parent for path in lora_files.values()}
    assert len(folders) == 1, "the tiny LoRAs live in one folder"
    library = LoraLibrary(list(folders), cache_dir=None)
    library.refresh()
    generate = RecordingGenerate()
    worker = Worker(tiny_model(pipe), library=library if with_library else None,
                    lora_manager_factory=LoraManager, generate=generate)
    return Rig(worker=worker, library=library, generate=generate, lora_files=dict(lora_files))
