"""Load Stable Diffusion checkpoints offline and switch between them at run time.

A checkpoint reference (`ref`) is one of:
  * a diffusers folder (has `model_index.json`), e.g. the demo model `models/Stable-diffusion/lora-ui-demo/`;
  * an A1111 single-file `.safetensors` (LDM key names), SD1.x or SDXL, loaded with diffusers'
    `from_single_file` against the component configs shipped in `lora_ui/engine/configs/{sd1,sdxl}`
    (no hub access); the architecture is detected from the safetensors header alone, and so is the
    inpainting variant (9-channel UNet: the shipped UNet config is loaded with in_channels 9);
  * a pickle `.ckpt`/`.pt` file: refused unless `allow_pickle` (it can run arbitrary code);
  * a title or name from `list_checkpoints` ("name.safetensors [hash]", "name.safetensors", "name");
  * None: the default — the demo model when it exists, else a tiny SD1 model built from configs.

`ModelManager.switch(ref)` loads the new model first and only then frees the old one, so a failed
switch leaves the previous model loaded and usable. Every failure is a `CheckpointError` whose
message names the file, the problem and what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_ui.pickles import load_pickle_weights

from . import devices

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "clip_tokenizer"
DEMO_MODEL_DIR = REPO_ROOT / "models" / "Stable-diffusion" / "lora-ui-demo"
CLIP_VOCAB_SIZE = 49408
SAFETENSORS_EXT = (".safetensors",)
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_ARCHS = ("sd1", "sdxl")
BUILTIN_TINY_NAME = "tiny-sd1 (built from configs)"


class CheckpointError(Exception):
    """A checkpoint could not be loaded; the message is meant for the user (file, problem, what to do)."""


# ----------------------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------------------

class HashCache:
    """sha256 of checkpoint files, keyed by (resolved path, total size, newest mtime): a file changed on
    disk gets a new key. The only process-wide mutable state of this module (`HASHES`); thread-safe."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path) -> tuple[tuple[str, int, int], list[Path]]:
        files = _weight_files(path) if path.is_dir() else [path]
        return (str(path.resolve()), sum(f.stat().st_size for f in files),
                max((f.stat().st_mtime_ns for f in files), default=0)), files

    def get(self, key: tuple[str, int, int]) -> str | None:
        with self._lock:
            return self._values.get(key)

    def put(self, key: tuple[str, int, int], value: str) -> None:
        with self._lock:
            self._values[key] = value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


HASHES = HashCache()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))


def sha256_of(path: Path) -> str:
    """Full sha256 (hex) of a file; for a diffusers folder, of its weight files (relative path + bytes,
    sorted) so the same folder always hashes the same. Cached in HASHES for the process."""
    from lora_ui.files import open_regular

    path = Path(path)
    stat_key, files = HashCache.key(path)
    cached = HASHES.get(stat_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode())
        with open_regular(f) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()
    HASHES.put(stat_key, value)
    return value


def cached_short_hash(path: Path) -> str | None:
    """The AutoV2 short hash if it was already computed in this process, else None (never hashes)."""
    try:
        key, _ = HashCache.key(Path(path))
    except OSError:
        return None
    full = HASHES.get(key)
    return full[:10] if full else None


# ----------------------------------------------------------------------------------------------
# Loaded model
# ----------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A pipeline ready for txt2img. `short_hash` is A1111's AutoV2 hash (sha256, first 10 hex),
    computed on first access and cached; None for a model built in memory."""

    pipe: Any
    arch: str                      # "sd1" | "sdxl"
    name: str                      # "v1-5-pruned-emaonly" (stem) — the infotext "Model" value
    path: Path | None
    default_size: int              # pixels; the model's native resolution
    dtype: torch.dtype
    device: torch.device
    kind: str = "folder"           # "folder" | "single_file" | "builtin"
    # the checkpoint's own scheduler config: every request's sampler is built from it, so one request's
    # schedule options (e.g. SGM Uniform's timestep spacing) never leak into the next
    scheduler_config: dict | None = field(default=None, repr=False)
    # the checkpoint's own VAE (engine/vae.py swaps pipe.vae for a VAE file and back) and the VAE file in
    # use (None: the checkpoint's own); infotext "VAE" / "VAE hash" follow it
    base_vae: Any = field(default=None, repr=False)
    vae_path: Path | None = None
    # textual-inversion embeddings (lora_ui.textual_inversion.EmbeddingLibrary) the prompt encoder may use
    embeddings: Any = field(default=None, repr=False)
    # "" or "inpainting" (lora_ui.arch.unet_variant of the UNet's input channels)
    variant: str = ""
    _short_hash: str | None = field(default=None, repr=False)

    @property
    def short_hash(self) -> str | None:
        if self._short_hash is None and self.path is not None and self.path.exists():
            self._short_hash = sha256_of(self.path)[:10]
        return self._short_hash

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel inpainting UNet: every pass gets A1111's image conditioning (engine/inpainting.py)."""
        from lora_ui.arch import INPAINTING

        return self.variant == INPAINTING

    @property
    def sha256_short(self) -> str | None:  # name used in docs/ARCHITECTURE.md
        return self.short_hash

    @property
    def vae_name(self) -> str | None:
        """A1111's infotext "VAE": the VAE file's name (None with the checkpoint's own VAE)."""
        return self.vae_path.name if self.vae_path is not None else None

    @property
    def vae_hash(self) -> str | None:
        """A1111's infotext "VAE hash": sha256 of the VAE file, first 10 hex."""
        return sha256_of(self.vae_path)[:10] if self.vae_path is not None else None

    @property
    def filename(self) -> str:
        return self.path.name if self.path is not None else self.name

    @property
    def title(self) -> str:
        """A1111-style title: "name.safetensors [hash]"."""
        h = self.short_hash
        return f"{self.filename} [{h}]" if h else self.filename


@dataclass(frozen=True)
class CheckpointInfo:
    """One entry of `list_checkpoints`: what the UI dropdown and /sdapi/v1/sd-models show."""

    path: Path
    name: str          # relative to its folder, without extension: "sub/model"
    filename: str      # relative path with extension: "sub/model.safetensors"
    short_hash: str | None

    @property
    def title(self) -> str:
        return f"{self.filename} [{self.short_hash}]" if self.short_hash else self.filename

    @property
    def model_name(self) -> str:
        return self.name.replace("/", "_").replace("\\", "_")


def list_checkpoints(dirs, *, extra: list[Path] | None = None) -> list[CheckpointInfo]:
    """Checkpoints under `dirs` (recursive): single files (.safetensors, .ckpt, .pt) and diffusers
    folders (`model_index.json`), sorted by name. Hashes only when already computed (hashing a 6 GB
    file on every listing is what users complain about); `extra` paths are listed too."""
    found: dict[Path, CheckpointInfo] = {}
    roots: dict[Path, Path | None] = {}  # resolved path -> the folder it was found under (None: extra)
    for root in [Path(d) for d in dirs or []]:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            here = Path(dirpath)
            if (here / "model_index.json").is_file() and here != root:
                rel = here.relative_to(root).as_posix()
                found[here.resolve()] = CheckpointInfo(here, rel, rel, cached_short_hash(here))
                roots.setdefault(here.resolve(), root)
                dirnames[:] = []  # a diffusers folder's subfolders are its components
                continue
            dirnames.sort()
            for fn in sorted(filenames):
                p = here / fn
                if p.suffix.lower() in SAFETENSORS_EXT + (".ckpt", ".pt"):
                    rel = p.relative_to(root).as_posix()
                    found[p.resolve()] = CheckpointInfo(p, rel.rsplit(".", 1)[0], rel, cached_short_hash(p))
                    roots.setdefault(p.resolve(), root)
    for p in extra or []:
        p = Path(p)
        if p.exists() and p.resolve() not in found:
            found[p.resolve()] = CheckpointInfo(p, p.stem if p.is_file() else p.name, p.name, cached_short_hash(p))
            roots[p.resolve()] = None
    return sorted(_unique_names(found, roots), key=lambda c: c.filename.lower())


def _unique_names(found: dict[Path, CheckpointInfo], roots: dict[Path, Path | None]) -> list[CheckpointInfo]:
    """Two checkpoints with the same relative name (one per --ckpt-dir folder, or an extra path) would
    share a title, and only the first could be picked: each of them is named by its folder instead
    ("<folder name>/<relative name>", else "<full folder path>/<relative name>"), so every title is
    unique and resolves to its own file."""
    by_filename: dict[str, list[Path]] = {}
    for key, info in found.items():
        by_filename.setdefault(info.filename.casefold(), []).append(key)
    for keys in by_filename.values():
        if len(keys) < 2:
            continue
        for qualify in (lambda r: r.name, lambda r: r.as_posix()):
            renamed = {}
            for key in keys:
                info, root = found[key], roots.get(key)
                folder = qualify(root) if root is not None else qualify(info.path.parent)
                renamed[key] = CheckpointInfo(info.path, f"{folder}/{info.name}", f"{folder}/{info.filename}",
                                              info.short_hash)
            if len({r.filename.casefold() for r in renamed.values()}) == len(keys):
                break
        found.update(renamed)
    return list(found.values())


# ----------------------------------------------------------------------------------------------
# Architecture detection from the safetensors header
# ----------------------------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> {dtype, shape, data_offsets}, plus
    "__metadata__"), read by the app's one header reader (regular files only, bounded, checked against
    the file size so truncated downloads are caught here)."""
    from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

    path = Path(path)
    try:
        header = read_header(path)
    except SafetensorsHeaderError as e:
        reason = str(e).removeprefix(str(path) + ": ")
        if "truncated" in reason or "larger than the file" in reason:
            raise CheckpointError(f"{path.name} is truncated ({reason}). The download is incomplete; "
                                  "download it again.") from None
        raise CheckpointError(f"{path.name} is not a valid .safetensors file ({reason}); the file is corrupt "
                              "or not a checkpoint. Download it again.") from None
    return {**header.raw_tensors, "__metadata__": dict(header.metadata)}


def detect_architecture(shapes: dict[str, list[int]], filename: str = "checkpoint") -> str:
    """"sd1" or "sdxl" (lora_ui.arch.detect_checkpoint_arch); anything else raises CheckpointError."""
    return detect_checkpoint(shapes, filename)[0]


def detect_checkpoint(shapes: dict[str, list[int]], filename: str = "checkpoint") -> tuple[str, str]:
    """(arch, variant) (lora_ui.arch.detect_checkpoint); anything else raises CheckpointError."""
    from lora_ui.arch import ArchitectureError, detect_checkpoint as detect

    try:
        return detect(shapes, filename)
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None


def _unet_variant(pipe, filename: str) -> str:
    from lora_ui.arch import ArchitectureError, unet_variant

    try:
        return unet_variant(int(pipe.unet.config.in_channels), filename)
    except ArchitectureError as e:
        raise CheckpointError(str(e)) from None


def _is_lfs_pointer(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(40).startswith(b"version https://git-lfs")
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _tokenizers(arch: str) -> dict[str, Any]:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    out = {"tokenizer": tok}
    if arch == "sdxl":
        out["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!")
    return out


def _check_tokenizers(pipe, where: str) -> None:
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is not None and len(tok) != CLIP_VOCAB_SIZE:
            raise CheckpointError(f"{where}: its {name} has {len(tok)} tokens, not CLIP's {CLIP_VOCAB_SIZE}; "
                                  "the tokenizer files are incomplete (vocab.json/merges.txt).")


def _default_size(pipe) -> int:
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(pipe.unet.config.sample_size) * vae_scale


def _arch_of_pipe(pipe) -> str:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd1"
    raise CheckpointError(f"{type(pipe).__name__} pipelines are not supported; only SD1.x and SDXL.")


def _finish(pipe, *, arch, name, path, choice, kind) -> LoadedModel:
    variant = _unet_variant(pipe, path.name if path is not None else name)
    if pipe.unet.device != choice.device:
        pipe = pipe.to(choice.device)
    if pipe.unet.dtype != choice.dtype:  # loaders already got torch_dtype; only in-memory models need a cast
        pipe = pipe.to(dtype=choice.dtype)
    pipe.set_progress_bar_config(disable=True)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, comp, None)
        if module is not None:
            module.eval()
    return LoadedModel(pipe=pipe, arch=arch, name=name, path=path, default_size=_default_size(pipe),
                       dtype=choice.dtype, device=choice.device, kind=kind,
                       scheduler_config=dict(pipe.scheduler.config), base_vae=pipe.vae, variant=variant)


def load_folder(path: Path, choice: devices.DeviceChoice) -> LoadedModel:
    """A diffusers folder (model_index.json) of a StableDiffusion(XL)Pipeline."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: model_index.json is unreadable ({e}); not a diffusers model "
                              "folder. Download it again.") from None
    cls_name = index.get("_class_name", "")
    classes = {"StableDiffusionPipeline": StableDiffusionPipeline,
               "StableDiffusionXLPipeline": StableDiffusionXLPipeline}
    if cls_name not in classes:
        raise CheckpointError(f"{path.name} is a {cls_name or 'unknown'} diffusers folder; only "
                              "StableDiffusionPipeline (SD1.x) and StableDiffusionXLPipeline (SDXL) are supported.")
    kwargs: dict[str, Any] = {"local_files_only": True, "torch_dtype": choice.dtype}
    if cls_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = classes[cls_name].from_pretrained(str(path), **kwargs)
    except Exception as e:  # diffusers raises many types (OSError, ValueError, safetensors errors)
        raise CheckpointError(f"{path.name}: the diffusers folder could not be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). It is incomplete or corrupt; "
                              "download it again.") from e
    _check_tokenizers(pipe, path.name)
    return _finish(pipe, arch=_arch_of_pipe(pipe), name=path.name, path=path, choice=choice, kind="folder")


def _check_config_dir(config_dir: Path, arch: str) -> None:
    needed = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
              "scheduler/scheduler_config.json"]
    if arch == "sdxl":
        needed.append("text_encoder_2/config.json")
    missing = [n for n in needed if not (config_dir / n).is_file()]
    if missing:  # a missing folder is read as a hub id and a missing text_encoder config gives wrong shapes
        raise CheckpointError(f"The component config folder {config_dir} is missing {', '.join(missing)}; "
                              "the installation is incomplete (reinstall the app).")


def load_single_file(path: Path, choice: devices.DeviceChoice, *, allow_pickle: bool = False,
                     config_dir: Path | None = None) -> LoadedModel:
    """An A1111 single-file checkpoint. `config_dir` overrides the shipped component configs (tests
    use configs for tiny widths; real checkpoints use configs/sd1 or configs/sdxl)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    suffix = path.suffix.lower()
    if _is_lfs_pointer(path):
        raise CheckpointError(f"{path.name} is a Git LFS pointer, not the model: run `git lfs pull` or "
                              "download the file itself.")
    if suffix in SAFETENSORS_EXT:
        header = read_safetensors_header(path)
        shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    elif suffix in PICKLE_EXT:
        if not allow_pickle:
            raise CheckpointError(f"{path.name} is a pickle checkpoint, which can run arbitrary code when "
                                  "loaded. Use a .safetensors version, or start with --allow-pickle if you "
                                  "trust the file.")
        state = load_pickle_weights(path, CheckpointError)
        state = state.get("state_dict", state) if isinstance(state, dict) else {}
        shapes = {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        del state
    else:
        raise CheckpointError(f"{path.name}: unknown checkpoint file type {suffix!r}; use a .safetensors "
                              "checkpoint or a diffusers folder.")
    arch, variant = detect_checkpoint(shapes, path.name)
    config_dir = Path(config_dir) if config_dir is not None else CONFIGS_DIR / arch
    _check_config_dir(config_dir, arch)
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    extra: dict[str, Any] = _tokenizers(arch)
    if variant:  # the shipped UNet configs are the 4-channel ones; the weights say how many it takes
        extra["num_in_channels"] = shapes["model.diffusion_model.input_blocks.0.0.weight"][1]
    if arch == "sd1":
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = cls.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                    torch_dtype=choice.dtype, **extra)
    except CheckpointError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path.name}: loading as an {arch.upper()} checkpoint failed "
                              f"({type(e).__name__}: {first[:300]}). The file is corrupt or its weights do not "
                              "match the architecture.") from e
    _check_tokenizers(pipe, path.name)
    return _finish(pipe, arch=arch, name=path.stem, path=path, choice=choice, kind="single_file")


def wrap_pipeline(pipe, *, name: str, path: Path | None = None,
                  choice: devices.DeviceChoice | None = None) -> LoadedModel:
    """A LoadedModel around a pipeline built in memory (tests, benches); CPU fp32 unless `choice`."""
    choice = choice or devices.DeviceChoice(torch.device("cpu"), torch.float32)
    return _finish(pipe, arch=_arch_of_pipe(pipe), name=name, path=path, choice=choice, kind="builtin")


def build_tiny_default(choice: devices.DeviceChoice, seed: int = 0) -> LoadedModel:
    """The stand-in default while the demo model does not exist: a tiny SD1 model with random
    weights (it draws noise-like images, but the whole app works end to end)."""
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    pipe = tiny_sd1_pipeline(seed)
    return _finish(pipe, arch="sd1", name=BUILTIN_TINY_NAME, path=None, choice=choice, kind="builtin")


# ----------------------------------------------------------------------------------------------
# Manager
# ----------------------------------------------------------------------------------------------

class ModelManager:
    """Owns the current `LoadedModel`; `load`/`switch` never leave a half-loaded state.

    Reads from `settings` (duck-typed, all optional): ckpt, ckpt_dirs, device, precision, no_half,
    allow_pickle, demo_model_dir, checkpoint_cache, vae_dirs, sd_vae, embeddings_dirs. Listeners
    registered with `on_switch(fn)` are called with the new LoadedModel after a successful switch
    (the worker rebuilds its LoraManager there).

    Loaded checkpoints are kept in an LRU cache of `checkpoint_cache` models (A1111's
    sd_checkpoints_limit, default 1: only the current one): switching back to a cached one reuses it
    without reading the file. `vaes` (engine/vae.VaeManager) and `embeddings`
    (textual_inversion.EmbeddingLibrary) hang off the manager; every loaded model gets `embeddings`.
    """

    def __init__(self, settings=None, *, device_choice: devices.DeviceChoice | None = None):
        self.settings = settings
        self._choice = device_choice
        self._current: LoadedModel | None = None
        self._lock = threading.RLock()
        self._listeners: list = []
        self._cache: "OrderedDict[str, LoadedModel]" = OrderedDict()  # key -> model, least recently used first
        self._vaes = None
        self._embeddings = None

    @property
    def cache_size(self) -> int:
        value = self._opt("checkpoint_cache", 1)
        return max(1, int(value)) if isinstance(value, int) and not isinstance(value, bool) else 1

    @property
    def vaes(self):
        """The VAE choices (models/VAE, sd_vae); built on first use."""
        if self._vaes is None:
            from .vae import VaeManager

            data_dir = self._opt("data_dir", REPO_ROOT)
            dirs = self._opt("vae_dirs", None) or [Path(data_dir) / "models" / "VAE"]
            self._vaes = VaeManager(dirs, allow_pickle=bool(self._opt("allow_pickle", False)),
                                    selection=self._opt("sd_vae", None) or "Automatic")
        return self._vaes

    @property
    def embeddings(self):
        """Textual-inversion embeddings (<data-dir>/embeddings or --embeddings-dir); scanned on first use."""
        if self._embeddings is None:
            from lora_ui.textual_inversion import EmbeddingLibrary

            data_dir = self._opt("data_dir", REPO_ROOT)
            dirs = self._opt("embeddings_dirs", None) or [Path(data_dir) / "embeddings"]
            self._embeddings = EmbeddingLibrary(dirs, allow_pickle=bool(self._opt("allow_pickle", False)))
            self._embeddings.refresh()
        return self._embeddings

    def cached(self) -> list[LoadedModel]:
        """Models in the LRU cache, least recently used first (the current one is last)."""
        with self._lock:
            return list(self._cache.values())

    @staticmethod
    def _cache_key(path: Path | None) -> str:
        return str(path.resolve()) if path is not None else "<default>"

    # settings access, tolerant of partial settings objects
    def _opt(self, name: str, default):
        value = getattr(self.settings, name, None) if self.settings is not None else None
        return default if value is None else value

    @property
    def device_choice(self) -> devices.DeviceChoice:
        if self._choice is None:
            try:
                self._choice = devices.choose(self._opt("device", "auto"), self._opt("precision", "auto"),
                                              no_half=bool(self._opt("no_half", False)))
            except devices.DeviceError as e:
                raise CheckpointError(str(e)) from e
        return self._choice

    @property
    def ckpt_dirs(self) -> list[Path]:
        return [Path(d) for d in self._opt("ckpt_dirs", [REPO_ROOT / "models" / "Stable-diffusion"])]

    @property
    def demo_model_dir(self) -> Path:
        return Path(self._opt("demo_model_dir", DEMO_MODEL_DIR))

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        """The current model, loading the configured/default one on first use."""
        with self._lock:
            if self._current is None:
                remembered = self._opt("sd_model_checkpoint", None)  # last choice saved in config.json
                if self._opt("ckpt", None) is None and remembered:
                    try:
                        return self.switch(remembered)
                    except CheckpointError as e:  # a stale remembered name must not stop the app
                        log.warning("The last used checkpoint could not be loaded (%s); loading the default.", e)
                self.switch(self._opt("ckpt", None))
            return self._current

    def on_switch(self, listener) -> None:
        self._listeners.append(listener)

    def list(self) -> list[CheckpointInfo]:
        extra = [self.demo_model_dir] if self.demo_model_dir.exists() else []
        if self._current is not None and self._current.path is not None:
            extra.append(self._current.path)
        return list_checkpoints(self.ckpt_dirs, extra=extra)

    def resolve(self, ref) -> Path | None:
        """A path, or a title/name/filename from `list()`, to a path; None means the default."""
        if ref is None or (isinstance(ref, str) and not ref.strip()):
            return None
        text = str(ref).strip()
        if Path(text).expanduser().exists():
            return Path(text).expanduser()
        if isinstance(ref, Path):
            raise CheckpointError(f"Checkpoint not found: {ref}. Put checkpoints in models/Stable-diffusion/ "
                                  "(or --ckpt-dir) and check the path.")
        bare = text.rsplit(" [", 1)[0] if text.endswith("]") else text
        for info in self.list():
            if text in (info.title, info.filename, info.name, info.model_name) or bare in (info.filename, info.name):
                return info.path
        for d in self.ckpt_dirs:
            if (d / text).exists():
                return d / text
        if os.sep in text or text.lower().endswith(SAFETENSORS_EXT + PICKLE_EXT):
            raise CheckpointError(f"Checkpoint not found: {text}. Put checkpoints in models/Stable-diffusion/ "
                                  "(or --ckpt-dir) and check the path.")
        known = ", ".join(i.filename for i in self.list()) or "none found"
        raise CheckpointError(f"Checkpoint {text!r} not found. Known checkpoints: {known}. Put checkpoints "
                              "in models/Stable-diffusion/ (or --ckpt-dir) and refresh.")

    def load(self, ref=None, *, config_dir: Path | None = None) -> LoadedModel:
        """Load `ref` (see module doc) without touching the current model. Raises CheckpointError."""
        choice = self.device_choice
        path = self.resolve(ref)
        if path is None:
            return self._load_default(choice)
        path = path.resolve()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise CheckpointError(f"{path} is a folder without model_index.json: not a diffusers model. "
                                      "Pass a .safetensors file or a diffusers folder.")
            return load_folder(path, choice)
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path.name} is empty (0 bytes); the download failed. Download it again.")
        return load_single_file(path, choice, allow_pickle=bool(self._opt("allow_pickle", False)),
                                config_dir=config_dir)

    def _load_default(self, choice) -> LoadedModel:
        demo = self.demo_model_dir
        if (demo / "model_index.json").is_file():
            try:
                from lora_ui.demo import check_demo_model  # gives a precise message for a broken demo model
            except ImportError:
                check_demo_model = None
            if check_demo_model is not None:
                try:
                    check_demo_model(demo)
                except Exception as e:
                    raise CheckpointError(str(e)) from e  # its message names the file and how to rebuild
            log.info("Loading the demo model from %s", demo)
            return load_folder(demo, choice)
        log.warning("No checkpoint given and the demo model %s does not exist yet: using a tiny SD1 model "
                    "built from configs with random weights (images will be noise).", demo)
        return build_tiny_default(choice)

    def switch(self, ref=None, *, config_dir: Path | None = None) -> LoadedModel:
        """Load `ref` (or take it from the checkpoint cache), make it current and free what falls out of
        the cache (`checkpoint_cache` models are kept, the current one included). On failure the old
        model stays."""
        with self._lock:
            key = self._cache_key(self.resolve(ref)) if config_dir is None else None
            new = self._cache.get(key) if key is not None else None
            if new is not None and new.pipe is not None:
                log.info("Model %s taken from the checkpoint cache", new.name)
            else:
                new = self.load(ref, config_dir=config_dir)
                new.embeddings = self.embeddings
                key = self._cache_key(new.path) if config_dir is None else f"<config {config_dir}> {new.path}"
            old, self._current = self._current, new
            if old is not None and old is not new and old not in self._cache.values():
                self._cache[f"<installed {id(old)}>"] = old
            self._cache[key] = new
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                _, evicted = self._cache.popitem(last=False)
                if evicted is new:
                    continue
                evicted_device = evicted.device
                evicted.pipe = None
                evicted.base_vae = None
                del evicted
                devices.free_memory(evicted_device)
            log.info("Model loaded: %s (%s, %s, %s)", new.name, new.arch, new.dtype, new.device)
        for listener in list(self._listeners):
            listener(new)
        return new

    def set_current(self, model: LoadedModel) -> None:
        """Install an already-built model (tests, benches)."""
        with self._lock:
            self._current = model
            # keyed by identity: a model built elsewhere (maybe with other configs) is never what a
            # switch to its path asks for
            key = f"<installed {id(model)}>"
            self._cache[key] = model
            self._cache.move_to_end(key)
