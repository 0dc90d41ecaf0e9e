"""Textual-inversion embeddings from `<data-dir>/embeddings` (`--embeddings-dir`), used as A1111 does.

Formats (A1111 modules/textual_inversion/textual_inversion.py `create_embedding_from_data`):
  * `string_to_param` (A1111/.pt training output): one term, (n, D) vectors; `step`, `sd_checkpoint`,
    `sd_checkpoint_name` read when present;
  * SDXL: `clip_l` (n, 768) and `clip_g` (n, 1280): shape = the two widths added (2048);
  * a single tensor (`emb_params` as kohya/A1111 safetensors write it, or a diffusers concept
    `{"<token>": (D,) or (n, D)}`).
The name is the file stem; `.safetensors` always, `.pt`/`.bin` only with --allow-pickle (weights-only).

An embedding is *loaded* for a model when its shape (vector width) is the model's: SD1 the text
encoder's width, SDXL both widths added; otherwise it is *skipped* (listed with its shape). A prompt
uses an embedding where the embedding name's tokens appear (A1111 matches token ids, longest name
first); it then takes `vectors` positions in the 75-token chunk, all with the weight of the text
around it, and its vectors replace the token embeddings there (conditioning's token-substitution
hook). `TI hashes: "name: sha256[:12]"` go in the infotext (A1111's `Embedding.shorthash`).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SAFE_EXT = (".safetensors",)
PICKLE_EXT = (".pt", ".bin")


class EmbeddingError(Exception):
    """An embedding file could not be read; the message names the file and the reason."""


@dataclass
class Embedding:
    name: str
    path: Path
    vec: Any                       # Tensor (n, D) or {"clip_l": (n, 768), "clip_g": (n, 1280)}
    shape: int                     # vector width A1111 reports (SDXL: clip_l + clip_g widths)
    vectors: int
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def hash(self) -> str:
        if self._hash is None:
            from lora_ui.engine.checkpoints import sha256_of

            self._hash = sha256_of(self.path)
        return self._hash

    @property
    def shorthash(self) -> str:
        """A1111: the first 12 hex of the file's sha256 (what `TI hashes` holds)."""
        return self.hash[:12]

    def info(self) -> dict[str, Any]:
        """The /sdapi/v1/embeddings item (A1111's convert_embedding)."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.vectors}


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def embedding_from_data(data: Any, name: str, path: Path) -> Embedding:
    """A1111's create_embedding_from_data for a loaded dict. Raises EmbeddingError."""
    if not isinstance(data, dict) or not data:
        raise EmbeddingError(f"{path.name}: not an embedding (no tensors)")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError(f"{path.name}: the embedding file has {len(params) if isinstance(params, dict) else 0} "
                                 "terms in it; one is expected")
        vec = next(iter(params.values())).detach().float()
        vec = vec.unsqueeze(0) if vec.dim() == 1 else vec
        emb = Embedding(name, path, vec, int(vec.shape[-1]), int(vec.shape[0]))
    elif "clip_g" in data and "clip_l" in data:
        vec = {k: data[k].detach().float() for k in ("clip_l", "clip_g")}
        vec = {k: v.unsqueeze(0) if v.dim() == 1 else v for k, v in vec.items()}
        if vec["clip_l"].shape[0] != vec["clip_g"].shape[0]:
            raise EmbeddingError(f"{path.name}: clip_l has {vec['clip_l'].shape[0]} vectors but clip_g "
                                 f"{vec['clip_g'].shape[0]}")
        emb = Embedding(name, path, vec, int(vec["clip_g"].shape[-1] + vec["clip_l"].shape[-1]),
                        int(vec["clip_g"].shape[0]))
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1 or len(data) != 1:
            raise EmbeddingError(f"{path.name}: neither a textual-inversion embedding (string_to_param, emb_params, "
                                 f"clip_l/clip_g) nor a diffusers concept (keys: {', '.join(list(data)[:5])})")
        vec = next(iter(tensors.values())).detach().float()
        vec = vec.unsqueeze(0) if vec.dim() == 1 else vec
        if vec.dim() != 2:
            raise EmbeddingError(f"{path.name}: vectors of shape {tuple(vec.shape)}; (vectors, width) expected")
        emb = Embedding(name, path, vec, int(vec.shape[-1]), int(vec.shape[0]))
    emb.step = _scalar(data.get("step"))
    emb.sd_checkpoint = _scalar(data.get("sd_checkpoint"))
    emb.sd_checkpoint_name = _scalar(data.get("sd_checkpoint_name"))
    if emb.vectors < 1 or emb.vectors > 75:
        raise EmbeddingError(f"{path.name}: {emb.vectors} vectors; 1 to 75 fit a prompt chunk")
    return emb


def load_embedding(path: Path, *, allow_pickle: bool = False) -> Embedding:
    path = Path(path)
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    suffix = path.suffix.lower()
    if suffix in SAFE_EXT:
        from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

        try:
            header = read_header(path)
        except SafetensorsHeaderError as e:
            raise EmbeddingError(f"{path.name}: not a valid .safetensors file ({e})") from None
        from safetensors.torch import load_file

        data: Any = load_file(str(path), device="cpu")
        meta = dict(header.metadata)
        emb = embedding_from_data(data, name, path)
        if emb.step is None and str(meta.get("step", "")).isdigit():
            emb.step = int(meta["step"])
        return emb
    if suffix in PICKLE_EXT:
        if not allow_pickle:
            raise EmbeddingError(f"{path.name}: a pickle embedding, which can run code when loaded; use a "
                                 ".safetensors version or start with --allow-pickle if you trust it")
        from lora_ui.pickles import load_pickle_weights

        return embedding_from_data(load_pickle_weights(path, EmbeddingError), name, path)
    raise EmbeddingError(f"{path.name}: not an embedding file type")


def expected_shape(pipe, arch: str) -> int:
    """A1111's expected_shape: the width of one prompt vector (SDXL: both encoders together)."""
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    if arch == "sdxl":
        width += pipe.text_encoder_2.get_input_embeddings().embedding_dim
    return int(width)


def fit_reason(emb: Embedding, pipe, arch: str) -> str | None:
    """None when the embedding fits the model, else why it is skipped."""
    want = expected_shape(pipe, arch)
    if emb.shape != want:
        return f"its vectors are {emb.shape} wide, this {arch.upper()} model needs {want}"
    if arch == "sdxl" and not isinstance(emb.vec, dict):
        return "an SD1-style embedding; SDXL needs clip_l and clip_g vectors"
    if arch == "sdxl":
        l_w = pipe.text_encoder.get_input_embeddings().embedding_dim
        if emb.vec["clip_l"].shape[-1] != l_w:
            return f"clip_l is {emb.vec['clip_l'].shape[-1]} wide, the model's first encoder needs {l_w}"
    return None


class EmbeddingLibrary:
    """Every embedding file in `dirs` (read at refresh; they are small). Thread-safe."""

    def __init__(self, dirs, *, allow_pickle: bool = False):
        self.dirs = [Path(d) for d in dirs or []]
        self.allow_pickle = allow_pickle
        self.entries: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self) -> "EmbeddingLibrary":
        entries: dict[str, Embedding] = {}
        errors: dict[str, str] = {}
        exts = SAFE_EXT + PICKLE_EXT
        for root in self.dirs:
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    path = Path(dirpath) / fn
                    if path.suffix.lower() not in exts or not path.is_file() or fn.startswith("."):
                        continue
                    try:
                        emb = load_embedding(path, allow_pickle=self.allow_pickle)
                    except (EmbeddingError, OSError, RuntimeError, ValueError) as e:
                        errors[path.stem] = str(e)
                        continue
                    if emb.name in entries:
                        errors[emb.name] = f"{path}: a second embedding named {emb.name!r}; the first one is used"
                        continue
                    entries[emb.name] = emb
        with self._lock:
            self.entries, self.errors = entries, errors
        return self

    def split(self, model) -> tuple[dict[str, Embedding], dict[str, tuple[Embedding, str]]]:
        """(loaded, skipped) for a model: skipped maps name -> (embedding, reason)."""
        with self._lock:
            entries = dict(self.entries)
        loaded, skipped = {}, {}
        pipe = getattr(model, "pipe", None)
        for name, emb in sorted(entries.items(), key=lambda kv: kv[0].lower()):
            reason = fit_reason(emb, pipe, model.arch) if pipe is not None else "no model is loaded"
            if reason is None:
                loaded[name] = emb
            else:
                skipped[name] = (emb, reason)
        return loaded, skipped

    def substitution(self, model) -> "PromptEmbeddings | None":
        """The conditioning hook for one render with `model` (None when no embedding is there)."""
        if not self.entries:
            return None
        loaded, skipped = self.split(model)
        return PromptEmbeddings(model.pipe, model.arch, loaded, skipped)


class PromptEmbeddings:
    """conditioning.TokenSubstitution for one render: finds embedding names in token ids, gives the
    vectors per text encoder and remembers which were used (for `TI hashes`)."""

    def __init__(self, pipe, arch: str, loaded: dict[str, Embedding], skipped: dict[str, tuple[Embedding, str]]):
        self.pipe = pipe
        self.arch = arch
        self.loaded = loaded
        self.skipped = skipped
        self.used: dict[str, Embedding] = {}
        self._lookup: dict[int, dict[int, list[tuple[list[int], Embedding]]]] = {}

    def _table(self, tokenizer) -> dict[int, list[tuple[list[int], Embedding]]]:
        key = id(tokenizer)
        if key not in self._lookup:
            table: dict[int, list[tuple[list[int], Embedding]]] = {}
            for emb in self.loaded.values():
                ids = tokenizer(emb.name, add_special_tokens=False)["input_ids"]
                if ids:
                    table.setdefault(ids[0], []).append((list(ids), emb))
            for options in table.values():
                options.sort(key=lambda item: len(item[0]), reverse=True)
            self._lookup[key] = table
        return self._lookup[key]

    def find(self, tokenizer, tokens: list[int], position: int):
        """(embedding, tokens it spans, vectors it takes) at `position`, or None."""
        for ids, emb in self._table(tokenizer).get(tokens[position], ()):
            if tokens[position:position + len(ids)] == ids:
                self.used.setdefault(emb.name, emb)
                return emb, len(ids), emb.vectors
        return None

    def vectors(self, emb: Embedding, text_encoder) -> torch.Tensor:
        if isinstance(emb.vec, dict):
            return emb.vec["clip_g" if text_encoder is getattr(self.pipe, "text_encoder_2", None) else "clip_l"]
        return emb.vec

    def infotext_hashes(self) -> str | None:
        """A1111's `TI hashes` value: "name: shorthash, ..." (':' and ',' removed from names)."""
        parts = [f"{name.replace(':', '').replace(',', '')}: {emb.shorthash}" for name, emb in self.used.items()]
        return ", ".join(parts) or None

    def warnings_for(self, *prompts: str) -> list[str]:
        """A prompt naming a skipped embedding gets a warning (it is read as plain words)."""
        out = []
        for name, (emb, reason) in self.skipped.items():
            pattern = re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)
            if any(pattern.search(p or "") for p in prompts):
                out.append(f"embedding '{name}' is skipped for this model ({reason}); the prompt reads it as words")
        return out
