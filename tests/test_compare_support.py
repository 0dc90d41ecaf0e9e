"""Shared helpers for the compare tests (no tests here): a tiny kohya LoRA file for the tiny SD1
pipeline, and a worker stand-in that renders through that pipeline with `<lora:...>` tags applied.

The stand-in follows the worker contract in docs/ARCHITECTURE.md (`submit(req) -> Future` of a
Txt2ImgResult-like object with images, infotexts, seeds, warnings, loras). It applies LoRAs by
adding up @ down * alpha / rank * weight to the UNet's Linear/1x1-conv weights (kohya diffusers
names) and restores them after each render, which is all these tests need from the engine.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lora_ui.prompt import extract_lora_tags

IMAGE_SIZE = 32
STEPS = 3


@dataclass
class FakeTxt2ImgRequest:
    """The fields of the Txt2ImgRequest contract that rendering uses."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler"
    scheduler: str = "Automatic"
    steps: int = STEPS
    cfg_scale: float = 7.0
    width: int | None = IMAGE_SIZE
    height: int | None = IMAGE_SIZE
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    save_images: bool = False


@dataclass
class FakeTxt2ImgResult:
    images: list
    infotexts: list[str]
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    interrupted: bool = False


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


class FakeWorker:
    """Renders synchronously on the caller's thread; records every request it was given."""

    def __init__(self, pipe, lora_files: dict[str, Path]):
        self.pipe = pipe
        self.lora_files = dict(lora_files)
        self.requests: list[FakeTxt2ImgRequest] = []
        self._lock = threading.Lock()

    def submit(self, request) -> Future:
        future: Future = Future()
        with self._lock:
            self.requests.append(request)
            future.set_result(self._render(request))
        return future

    def _render(self, request) -> FakeTxt2ImgResult:
        text, tags, warnings = extract_lora_tags(request.prompt)
        targets = kohya_unet_targets(self.pipe)
        backups: dict[str, torch.Tensor] = {}
        applied: list[str] = []
        try:
            for tag in tags:
                if tag.name not in self.lora_files:
                    warnings.append(f"unknown LoRA '{tag.name}'")
                    continue
                applied.append(tag.name)
                state = load_file(str(self.lora_files[tag.name]))
                for prefix, module in targets.items():
                    if f"{prefix}.lora_down.weight" not in state:
                        continue
                    down, up = state[f"{prefix}.lora_down.weight"], state[f"{prefix}.lora_up.weight"]
                    scale = float(state[f"{prefix}.alpha"]) / down.shape[0]
                    backups.setdefault(prefix, module.weight.detach().clone())
                    with torch.no_grad():
                        module.weight += (up @ down).reshape(module.weight.shape) * scale * tag.unet_weight
            generator = torch.Generator("cpu").manual_seed(int(request.seed))
            image = self.pipe(
                prompt=text, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale, height=request.height, width=request.width,
                generator=generator, output_type="pil",
            ).images[0]
        finally:
            with torch.no_grad():
                for prefix, weight in backups.items():
                    targets[prefix].weight.copy_(weight)
        infotext = f"{request.prompt}\nSteps: {request.steps}, Sampler: {request.sampler}, Seed: {request.seed}, Size: {request.width}x{request.height}"
        return FakeTxt2ImgResult(images=[image], infotexts=[infotext], seeds=[request.seed], warnings=warnings, loras=applied)


class FakeLibrary:
    """Only `resolve(name) -> entry | None`, the part compare/sweep use."""

    def __init__(self, lora_files: dict[str, Path]):
        self.lora_files = dict(lora_files)

    def resolve(self, name: str):
        path = self.lora_files.get(name)
        return None if path is None else type("Entry", (), {"name": name, "path": path})()


@dataclass
class FakeContext:
    worker: FakeWorker
    library: FakeLibrary
