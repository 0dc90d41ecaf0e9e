"""VAE choice, as A1111's `sd_vae` setting: "Automatic", "None", or a file from `models/VAE`.

* "None": the checkpoint's own VAE.
* "Automatic": `<checkpoint stem>.vae.safetensors` (or `.vae.pt` / `.vae.ckpt` with --allow-pickle) next
  to the checkpoint file, else a file of that name in the VAE folders; else the checkpoint's own VAE.
* a file name (as `list()` shows it, relative to its VAE folder): that file.

A VAE file holds LDM keys (`encoder.down.0.block.0...`, optionally under `first_stage_model.`) or
diffusers keys (`encoder.down_blocks.0.resnets.0...`); both SD1 and SDXL VAEs share the layout. The
VAE is built from the loaded model's own VAE config (so the model's scaling factor stays, as in
A1111) and must fit it exactly: a file whose shapes differ is a `VaeError` naming the file and the
first mismatching key. The model's own VAE module is kept (`LoadedModel.base_vae`), so "None" and a
change back are exact. Loaded VAE modules are cached (a few, by file and model VAE config).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
NONE = "None"
SAFE_EXT = (".safetensors",)
PICKLE_EXT = (".pt", ".ckpt")
VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
CACHE_MODULES = 2


class VaeError(Exception):
    """A VAE file could not be used; the message names the file, the problem and what to do."""


@dataclass(frozen=True)
class VaeInfo:
    path: Path
    name: str  # relative to its VAE folder, with extension: what the picker and sd_vae hold

    @property
    def title(self) -> str:
        return self.name


def list_vaes(dirs, *, allow_pickle: bool = False) -> list[VaeInfo]:
    """VAE files under `dirs` (recursive), sorted by name; pickles only when allowed."""
    found: dict[Path, VaeInfo] = {}
    exts = SAFE_EXT + (PICKLE_EXT if allow_pickle else ())
    for root in [Path(d) for d in dirs or []]:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if p.suffix.lower() in exts and p.is_file():
                    found.setdefault(p.resolve(), VaeInfo(p, p.relative_to(root).as_posix()))
    return sorted(found.values(), key=lambda v: v.name.lower())


def near_checkpoint(checkpoint: Path | None, *, allow_pickle: bool = False) -> Path | None:
    """`<stem>.vae.safetensors` (or a pickle one, when allowed) next to a single-file checkpoint."""
    if checkpoint is None or Path(checkpoint).is_dir():
        return None
    base = Path(checkpoint).with_suffix("")
    for suffix in VAE_SUFFIXES:
        if suffix != ".vae.safetensors" and not allow_pickle:
            continue
        candidate = base.parent / (base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _is_ldm(keys) -> bool:
    return any(".down.0.block." in k or k.startswith(("encoder.mid.", "decoder.up.")) or ".mid.block_1." in k
               for k in keys)


def read_vae_state_dict(path: Path, config: dict, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A VAE file -> diffusers AutoencoderKL state dict (LDM keys converted). Raises VaeError."""
    from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFE_EXT:
        try:
            read_header(path)  # the app's one header reader: truncation and bad headers give clear errors
        except SafetensorsHeaderError as e:
            raise VaeError(f"VAE {path.name} is not a valid .safetensors file ({e}); download it again.") from None
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif suffix in PICKLE_EXT:
        if not allow_pickle:
            raise VaeError(f"VAE {path.name} is a pickle file, which can run code when loaded; use a .safetensors "
                           "VAE or start with --allow-pickle if you trust it.")
        from lora_ui.pickles import load_pickle_weights

        state = load_pickle_weights(path, VaeError)
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
    else:
        raise VaeError(f"{path.name}: unknown VAE file type {suffix!r}; use a .safetensors VAE.")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)
             and not k.startswith(("loss.", "model_ema."))}
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
        raise VaeError(f"VAE {path.name} holds no tensors.")
    if _is_ldm(state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        try:
            state = convert_ldm_vae_checkpoint(state, dict(config))
        except Exception as e:  # noqa: BLE001 - diffusers raises KeyError/IndexError on foreign layouts
            raise VaeError(f"VAE {path.name}: its LDM keys could not be converted ({type(e).__name__}: {e}); "
                           "it is not a Stable Diffusion VAE.") from None
    return state


def build_vae(path: Path, base_vae, *, allow_pickle: bool = False):
    """An AutoencoderKL with the model's own VAE config and the file's weights (device/dtype of base)."""
    from diffusers import AutoencoderKL

    config = dict(base_vae.config)
    state = read_vae_state_dict(path, config, allow_pickle=allow_pickle)
    vae = AutoencoderKL.from_config(config)
    expected = vae.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        first = wrong[0] if wrong else missing[0]
        what = (f"{first} has shape {tuple(state[first].shape)}, the model needs {tuple(expected[first].shape)}"
                if wrong else f"{len(missing)} weights are missing, e.g. {first}")
        raise VaeError(f"VAE {path.name} does not fit this model ({what}). Pick a VAE made for this model's "
                       "architecture (SD1 or SDXL), or Automatic/None.")
    vae.load_state_dict({k: state[k] for k in expected}, strict=True)
    param = next(base_vae.parameters())
    return vae.to(device=param.device, dtype=param.dtype).eval()


class VaeManager:
    """The VAE files, the current `sd_vae` selection and applying a choice to a loaded model."""

    def __init__(self, dirs, *, allow_pickle: bool = False, selection: str = AUTOMATIC):
        self.dirs = [Path(d) for d in dirs or []]
        self.allow_pickle = allow_pickle
        self.selection = selection or AUTOMATIC
        self._lock = threading.RLock()
        self._modules: "OrderedDict[tuple, Any]" = OrderedDict()
        self._listing: list[VaeInfo] | None = None

    def list(self) -> list[VaeInfo]:
        with self._lock:
            if self._listing is None:
                self._listing = list_vaes(self.dirs, allow_pickle=self.allow_pickle)
            return list(self._listing)

    def refresh(self) -> list[VaeInfo]:
        with self._lock:
            self._listing = None
            return self.list()

    def choices(self) -> list[str]:
        """What the picker offers: Automatic, None, then every file."""
        return [AUTOMATIC, NONE] + [v.name for v in self.list()]

    def check_choice(self, choice: str) -> str:
        """A valid sd_vae value (raises VaeError listing the valid ones)."""
        if choice in (AUTOMATIC, NONE) or any(choice in (v.name, v.path.name) for v in self.list()):
            return choice
        raise VaeError(f"unknown VAE {choice!r}; valid: {', '.join(self.choices())} (files in "
                       f"{', '.join(str(d) for d in self.dirs) or 'models/VAE'}; refresh after adding one)")

    def resolve(self, choice: str | None, checkpoint: Path | None) -> Path | None:
        """The VAE file for `choice` (None = the current selection) and a checkpoint; None = its own VAE."""
        choice = choice or self.selection or AUTOMATIC
        if choice == NONE:
            return None
        if choice == AUTOMATIC:
            near = near_checkpoint(checkpoint, allow_pickle=self.allow_pickle)
            if near is not None:
                return near
            if checkpoint is not None:
                stem = Path(checkpoint).name.split(".")[0] if Path(checkpoint).is_file() else Path(checkpoint).name
                for info in self.list():
                    if info.path.name.lower() in (stem.lower() + s for s in VAE_SUFFIXES):
                        return info.path
            return None
        for info in self.list():
            if choice in (info.name, info.path.name):
                return info.path
        self.check_choice(choice)  # raises with the valid choices
        return None

    def apply(self, model, choice: str | None = None) -> Path | None:
        """Put the chosen VAE on `model.pipe` (its own one for None/Automatic without a file). Returns
        the VAE file in use. On failure the model's VAE is unchanged and VaeError is raised."""
        if model.pipe is None:
            return None
        base = model.base_vae if model.base_vae is not None else model.pipe.vae
        if model.base_vae is None:
            model.base_vae = base
        path = self.resolve(choice, model.path)
        if path is None:
            module = base
        else:
            module = self._module(path, base)
        model.pipe.vae = module
        model.vae_path = path
        return path

    def _module(self, path: Path, base):
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, json.dumps(dict(base.config), sort_keys=True,
                                                                                  default=str), id(base))
        with self._lock:
            module = self._modules.get(key)
            if module is None:
                module = build_vae(path, base, allow_pickle=self.allow_pickle)
                self._modules[key] = module
                while len(self._modules) > CACHE_MODULES:
                    self._modules.popitem(last=False)
            self._modules.move_to_end(key)
            return module
