"""Read a LoRA file, map its keys onto the pipeline, build and validate its network modules.

`parse_lora` does everything that can fail before the pipeline is touched: read (safetensors;
pickles only when allowed, then with ``weights_only=True``), NaN/Inf check, architecture check,
key mapping, one `NetworkModule` per patched layer, shape checks. Any failure is one `LoraError`
naming the file, the reason and the first offending keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lora_ui.arch import CERTAIN, LORA_ARCH_TO_MODEL, lora_arch_from_shapes
from lora_ui.pickles import load_pickle_weights
from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

from .keymap import KeyMap, Target
from .spec import LoraArchMismatch, LoraError

PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")
MAX_KEYS_IN_MESSAGE = 5


@dataclass(eq=False)
class LayerPatch:
    """One file's network module for one target layer. keys: the file keys it was built from."""

    target: Target
    module: object  # NetworkModule (lora_ui.lora.types.base)
    keys: list[str]


@dataclass(eq=False)
class LoraNetwork:
    """A parsed, validated LoRA file, independent of any multiplier.

    layers: target id -> LayerPatch (file order). embeddings: bundled textual-inversion vectors,
    name -> {component ("text_encoder"/"text_encoder_2"): tensor (n_vectors, hidden)}.
    nbytes: memory held by the factors (for the LRU cache bound).
    """

    path: Path
    layers: dict[str, LayerPatch]
    embeddings: dict[str, dict[str, Tensor]]
    matched_keys: list[str]
    unmatched_keys: list[str]
    metadata: dict[str, str]
    nbytes: int
    kinds: set[str] = field(default_factory=set)
    cache_key: tuple | None = None  # (resolved path, mtime_ns, size) when read from disk


def _first(keys, n: int = MAX_KEYS_IN_MESSAGE) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _error(path: Path, reason: str, keys=None) -> LoraError:
    msg = f"LoRA '{path.name}': {reason}"
    if keys:
        msg += f"; first offending keys: {_first(keys)}"
    return LoraError(msg)


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` dict of a safetensors header (the app's one header reader), tensors untouched."""
    return dict(read_header(path).metadata)


def read_lora_file(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(state dict, metadata) of a LoRA file. Raises LoraError for missing, corrupt or refused files.

    Safetensors: the header is read and checked first (regular file, bounded, every range inside the
    file), so a file replaced by garbage after the library listed it is a clear error, never an
    overflow or a huge allocation. Pickles: only with allow_pickle, and then only weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise _error(path, f"file not found ({path})")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _error(path, "pickle files (.pt/.ckpt) can run arbitrary code when loaded and are refused; "
                               "convert it to .safetensors or start with --allow-pickle")
        obj = load_pickle_weights(path, lambda msg: _error(path, msg.removeprefix(f"{path.name} ")))
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            raise _error(path, "the pickle does not hold a dict of named tensors")
        return obj, {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        header = read_header(path)
        tensors = load_file(str(path), device="cpu")
    except SafetensorsHeaderError as e:
        raise _error(path, f"corrupt or not a safetensors file ({str(e).removeprefix(str(path) + ': ')})") from None
    except (SafetensorError, OSError, ValueError, OverflowError, MemoryError, UnicodeDecodeError, RuntimeError) as e:
        raise _error(path, f"corrupt or not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    return tensors, {str(k): str(v) for k, v in header.metadata.items()}


def guess_file_arch(keys, metadata: dict[str, str], shapes=None) -> str | None:
    """"sd1", "sd2", "sdxl" when the app's one detector (lora_ui.arch) is certain, else None.
    `shapes` (key -> shape) lets it use the cross-attention width too."""
    arch, basis = lora_arch_from_shapes(metadata, shapes if shapes is not None else {k: () for k in keys})
    return LORA_ARCH_TO_MODEL.get(arch) if basis in CERTAIN else None


_ARCH_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def _claimed(parts: dict[str, Tensor]) -> bool:
    """True when some network type claims these parts (else the keys are unmatched, not an error)."""
    from .types import NETWORK_TYPES

    return any(t.part_names & parts.keys() for t in NETWORK_TYPES)


def _parse_embeddings(path: Path, tensors: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """bundle_emb.<name>.string_to_param.* (SD1) / bundle_emb.<name>.clip_l|clip_g (SDXL)."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith("bundle_emb."):
            continue
        rest = key[len("bundle_emb."):]
        name, _, part = rest.partition(".")
        if part.startswith("string_to_param") or part == "clip_l":
            component = "text_encoder"
        elif part == "clip_g":
            component = "text_encoder_2"
        else:
            raise _error(path, "bundled embedding with an unknown layout", [key])
        vec = t.detach()
        if vec.dim() == 1:
            vec = vec.unsqueeze(0)
        out.setdefault(name, {})[component] = vec
    return out


def parse_lora(path: Path, keymap: KeyMap, *, allow_pickle: bool = False,
               tensors: dict[str, Tensor] | None = None, metadata: dict[str, str] | None = None) -> LoraNetwork:
    """Read (unless `tensors` given), map and validate a LoRA file for the pipeline of `keymap`.

    Raises LoraError (nothing is touched) for: missing/corrupt/refused file, NaN/Inf tensors,
    a file for another architecture, nothing matching this model, a shape mismatch, parts no
    network type understands. Keys that match no module are reported in `unmatched_keys`.
    """
    from .types import load_network_module

    path = Path(path)
    if tensors is None:
        tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
    metadata = metadata or {}
    if not tensors:
        raise _error(path, "the file holds no tensors")


    file_arch = guess_file_arch(tensors.keys(), metadata, {k: tuple(t.shape) for k, t in tensors.items()})
    if file_arch is not None and file_arch != keymap.arch:
        raise LoraArchMismatch(f"LoRA '{path.name}': this LoRA is for {_ARCH_NAMES[file_arch]}, the loaded model is "
                               f"{_ARCH_NAMES[keymap.arch]}; pick a LoRA made for this model")

    embeddings = _parse_embeddings(path, tensors)
    nan_reason = "tensors contain NaN or Inf values (a broken training run or a damaged file)"
    bad = [f"bundle_emb.{name}" for name, vecs in embeddings.items() for t in vecs.values()
           if not bool(torch.isfinite(t).all())]
    if bad:
        raise _error(path, nan_reason, bad)
    groups: dict[str, tuple[Target, dict[str, Tensor], list[str]]] = {}
    unmatched: list[str] = []
    for key, t in tensors.items():
        if key.startswith("bundle_emb."):
            continue
        hit = keymap.resolve(key)
        if hit is None:
            unmatched.append(key)
            continue
        target, part = hit
        _, parts, keys = groups.setdefault(target.id, (target, {}, []))
        if part in parts:
            raise _error(path, f"two keys give the same part '{part}' of layer {target.id}",
                         [k for k in keys if k.endswith(part)] + [key])
        parts[part] = t
        keys.append(key)

    if not groups and not embeddings:
        raise _error(path, "unknown key layout: no key names a layer of this model", list(tensors.keys()))

    layers: dict[str, LayerPatch] = {}
    matched: list[str] = []
    shape_errors: list[str] = []
    shape_reason = ""
    nbytes = 0
    kinds: set[str] = set()
    for target_id, (target, parts, keys) in groups.items():
        if not _claimed(parts):  # e.g. an alpha without factors: no network type uses these keys
            unmatched += keys
            continue
        try:
            module = load_network_module(parts, target.module)  # checks shapes and NaN/Inf
        except LoraError as e:  # the type's own message names the parts and shapes
            if not all(bool(torch.isfinite(t).all()) for t in parts.values() if t.is_floating_point()):
                raise _error(path, nan_reason, keys) from None
            shape_errors += keys
            shape_reason = shape_reason or f"{target.id}: {e}"
            continue
        layers[target_id] = LayerPatch(target, module, keys)
        matched += keys
        kinds.add(getattr(module, "kind", type(module).__name__))
        nbytes += module.nbytes
    if shape_errors:
        raise _error(path, f"the LoRA does not fit this model ({shape_reason})", shape_errors)
    if not layers and not embeddings:
        raise _error(path, "unknown key layout: no network type recognizes the keys", unmatched)
    nbytes += sum(t.numel() * t.element_size() for e in embeddings.values() for t in e.values())
    return LoraNetwork(path, layers, embeddings, matched, unmatched, metadata, nbytes, kinds)
