"""Serve the real UI on a self-contained context, for the browser tests and the README screenshots.

The context is the app's real parts: the ModelManager's default model (the demo model when
models/Stable-diffusion/lora-ui-demo/ exists, else the built-in tiny SD1 pipeline), the real Worker, and a
real LoraLibrary over a LoRA folder. When that folder holds no LoRA, two kohya LoRAs ("inkwash",
"papercut") are written for the loaded UNet so the card grid and the sliders have something to show.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import torch

SAMPLE_LORAS = ("inkwash", "papercut")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_unet_lora(pipe: Any, path: Path, seed: int, rank: int = 4, std: float = 0.3) -> Path:
    """A kohya LoRA (lora_down (r, in), lora_up (out, r), alpha = r) on every UNet attention projection."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        last = name.rsplit(".", 1)[-1]
        if ".attn" in name and (last in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")):
            prefix = "lora_unet_" + name.replace(".", "_")
            out_features, in_features = module.weight.shape[:2]
            tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * std
            tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * std
            tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_output_name": path.stem,
                "ss_tag_frequency": json.dumps({"set": {path.stem: 5, "ink": 3, "wash": 2}})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _ensure_sample_loras(pipe: Any, lora_dir: Path) -> None:
    from lora_ui.library import LORA_SUFFIXES

    lora_dir.mkdir(parents=True, exist_ok=True)
    if not any(p.suffix in LORA_SUFFIXES for p in lora_dir.rglob("*")):
        for i, name in enumerate(SAMPLE_LORAS):
            write_unet_lora(pipe, lora_dir / f"{name}.safetensors", seed=10 + i)


def build_dev_context(work_dir: Path, lora_dir: Path | None = None) -> Any:
    """The app's own AppContext (real Settings with `work_dir` as data dir, config.json there) on the CPU;
    LoRAs from `lora_dir` or written to `work_dir/Lora`. `ctx.lora_dir` says where they are."""
    work_dir.mkdir(parents=True, exist_ok=True)
    lora_dir = lora_dir or work_dir / "Lora"
    from lora_ui.app import AppContext
    from lora_ui.settings import Settings

    settings = Settings(data_dir=work_dir, lora_dirs=[lora_dir], device="cpu")
    ctx = AppContext.build(settings, refresh_library=False)
    _ensure_sample_loras(ctx.models.require().pipe, lora_dir)
    ctx.library.refresh()
    ctx.lora_dir = lora_dir
    return ctx


def launch(ctx: Any, port: int | None = None):
    """Start `build_ui(ctx)` on 127.0.0.1; returns (blocks, url). Call `blocks.close()` when done."""
    from lora_ui.ui.app import UI_CSS, build_ui

    demo = build_ui(ctx)
    port = port or free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        share=False, ssr_mode=False, css=UI_CSS)
    return demo, f"http://127.0.0.1:{port}/"
