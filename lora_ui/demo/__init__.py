"""The embedded demo model: synthetic world, training, demo LoRAs, evaluation.

Public API for other modules (light imports only; torch/diffusers are imported lazily):
    DEMO_MODEL_DIR, DEMO_LORA_DIR          where the shipped model and LoRAs live
    check_demo_model(path) -> None          raises DemoModelMissing(msg) with a rebuild hint
"""
from __future__ import annotations

import json
from pathlib import Path

from .paths import DEMO_LORA_DIR, DEMO_MODEL_DIR

REBUILD_HINT = "rebuild it with `python -m lora_ui.demo train` (about 80 minutes on one CPU core)"
_COMPONENT_FILES = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
}


class DemoModelMissing(Exception):
    """The demo model folder is missing or damaged; the message says what and how to rebuild it."""


def _check_safetensors(path: Path) -> None:
    """Header sanity: 8-byte length, JSON header, and the file holds all the bytes it declares."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise ValueError("header length is out of range")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"truncated: {size} bytes, header declares {8 + n + end}")


def check_demo_model(path: str | Path = DEMO_MODEL_DIR) -> None:
    """Cheap check (no torch) that `path` holds a complete demo model folder.

    Raises DemoModelMissing naming the missing/corrupt file and how to rebuild the model.
    """
    path = Path(path)
    if not path.is_dir():
        raise DemoModelMissing(f"The demo model folder {path} does not exist; {REBUILD_HINT}.")
    index = path / "model_index.json"
    try:
        json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise DemoModelMissing(f"The demo model is damaged: {index} is missing or not JSON ({exc}); "
                               f"{REBUILD_HINT}.") from None
    for component, names in _COMPONENT_FILES.items():
        for name in names:
            f = path / component / name
            if not f.is_file():
                raise DemoModelMissing(f"The demo model is incomplete: {f} is missing; {REBUILD_HINT}.")
            try:
                if name.endswith(".safetensors"):
                    _check_safetensors(f)
                elif name.endswith(".json"):
                    json.loads(f.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DemoModelMissing(f"The demo model is damaged: {f} cannot be read ({exc}); "
                                       f"{REBUILD_HINT}.") from None


__all__ = ["DEMO_LORA_DIR", "DEMO_MODEL_DIR", "DemoModelMissing", "check_demo_model", "REBUILD_HINT"]
