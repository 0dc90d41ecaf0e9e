"""Pixel upscalers, A1111's way: "None", "Lanczos", "Nearest" and ESRGAN-family model files.

Model files live in `<data-dir>/models/ESRGAN` and `<data-dir>/models/RealESRGAN` (A1111's folders); they
are loaded with spandrel (the architecture detector A1111, Forge and ComfyUI use): `.safetensors` always,
pickles (`.pth/.pt/.ckpt`) only with --allow-pickle and then with `torch.load(weights_only=True)`
(lora_ui/pickles.py). Only single-image super-resolution models are accepted (ESRGAN/RRDBNet,
Real-ESRGAN compact, SwinIR, ...; whatever spandrel recognises as `ImageModelDescriptor` of purpose "SR").

`Upscalers(dirs, allow_pickle)`: the listing (`names()`, `items()`) is read from the folders on each call
(no cache: a file dropped in shows up); `resize(image, w, h, name)` is A1111's `images.resize_image` mode 0
with an upscaler: when the scale is > 1, up to three passes of the upscaler until the image covers
(w // 8 * 8, h // 8 * 8) (the `Upscaler.upscale` loop), then Lanczos to exactly w x h.

spandrel imports torchvision for two architectures we never load (LaMa, RestoreFormer); where torchvision
is not importable (the CPU-only torch here: PyPI's torchvision wheel needs the CUDA torch), spandrel is
imported with an inert stand-in for those two names (`_import_spandrel`), removed again right after.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

MODEL_FOLDERS = ("ESRGAN", "RealESRGAN")
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
BUILTIN = ("None", "Lanczos", "Nearest")
TILE = 192          # A1111's ESRGAN_tile
TILE_OVERLAP = 8    # A1111's ESRGAN_tile_overlap


class UpscalerError(ValueError):
    """Unknown upscaler, or a model file that is refused / not an upscaler (the message says which)."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of /sdapi/v1/upscalers: name, kind ("none", "lanczos", "nearest", "model"), file."""

    name: str
    kind: str
    path: Path | None = None
    scale: int | None = None


class Upscalers:
    """The upscalers of one app: model files under `dirs` (each a folder of ESRGAN-family files)."""

    def __init__(self, dirs: Sequence[Path] = (), allow_pickle: bool = False):
        self.dirs = [Path(d) for d in dirs]
        self.allow_pickle = bool(allow_pickle)

    @classmethod
    def for_data_dir(cls, data_dir: Path, allow_pickle: bool = False) -> "Upscalers":
        return cls([Path(data_dir) / "models" / f for f in MODEL_FOLDERS], allow_pickle)

    def items(self) -> list[UpscalerInfo]:
        builtin = [UpscalerInfo(n, n.lower()) for n in BUILTIN]
        return builtin + self._model_files()

    def names(self) -> list[str]:
        return [u.name for u in self.items()]

    def _model_files(self) -> list[UpscalerInfo]:
        suffixes = SAFE_SUFFIXES + (PICKLE_SUFFIXES if self.allow_pickle else ())
        found: dict[str, UpscalerInfo] = {}
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in suffixes and path.stem not in found:
                    found[path.stem] = UpscalerInfo(path.stem, "model", path)
        return list(found.values())

    def find(self, name: str) -> UpscalerInfo:
        for item in self.items():
            if item.name == name or item.name.lower() == str(name).lower():
                return item
        raise UpscalerError(f"unknown upscaler {name!r}; valid: {', '.join(self.names())}")

    def load(self, info: UpscalerInfo, device: Any = "cpu", dtype: Any = None) -> "ModelUpscaler":
        return ModelUpscaler(load_model(info.path, self.allow_pickle), device, dtype)

    def resize(self, image: Image.Image, width: int, height: int, name: str, *, device: Any = "cpu",
               dtype: Any = None, model: "ModelUpscaler | None" = None) -> Image.Image:
        """A1111 `resize_image(0, image, width, height, upscaler_name=name)` -> RGB width x height."""
        info = self.find(name)
        if info.kind == "none" or image.mode == "L":
            return image.resize((width, height), resample=Image.LANCZOS)
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            step = _builtin_step(info.kind) if info.kind != "model" else (model or self.load(info, device, dtype))
            image = upscale_loop(image, scale, step)
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.LANCZOS)
        return image


def _builtin_step(kind: str):
    resample = Image.LANCZOS if kind == "lanczos" else Image.NEAREST

    def step(image: Image.Image, scale: float) -> Image.Image:
        return image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
    return step


def upscale_loop(image: Image.Image, scale: float, step) -> Image.Image:
    """A1111 `Upscaler.upscale`: dest = (w * scale // 8 * 8, h * scale // 8 * 8); up to 3 passes of
    `step(image, scale)` while the image is smaller than dest (or none grew it), then Lanczos to dest."""
    dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
    for i in range(3):
        if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
            break
        shape = image.size
        image = step(image, scale)
        if shape == image.size:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), resample=Image.LANCZOS)
    return image


# ---------------------------------------------------------------------------------------------- models

def _import_spandrel():
    """`import spandrel`; where torchvision cannot be imported, with a stand-in for the two names two
    architectures we never load import from it (calling them raises)."""
    try:
        import spandrel
        return spandrel
    except (ImportError, RuntimeError) as e:
        if "torchvision" not in str(e) and "nms" not in str(e):
            raise UpscalerError(f"spandrel is not usable ({e}); pip install spandrel") from None
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {n: sys.modules.get(n) for n in names}
    stub = _torchvision_stub(names)
    try:
        for n in [k for k in sys.modules if k == "spandrel" or k.startswith("spandrel.")]:
            sys.modules.pop(n)
        sys.modules.update(stub)
        import spandrel
        return spandrel
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module


def _torchvision_stub(names: tuple[str, ...]) -> dict[str, types.ModuleType]:
    def missing(*_a, **_k):
        raise RuntimeError("torchvision is not available; this architecture cannot run here")

    modules = {n: types.ModuleType(n) for n in names}
    functional = modules["torchvision.transforms.functional"]
    functional.InterpolationMode = type("InterpolationMode", (), {})
    functional.rotate = functional.normalize = missing
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.transforms"].functional = functional
    return modules


def read_state_dict(path: Path, allow_pickle: bool) -> dict:
    """Weights of an upscaler file: safetensors, or (--allow-pickle) a weights-only pickle."""
    path = Path(path)
    if path.suffix.lower() in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - a damaged file, to the user
            raise UpscalerError(f"{path.name} could not be read as safetensors ({e})") from None
    if not allow_pickle:
        raise UpscalerError(f"{path.name} is a pickle file; start with --allow-pickle to read it (weights only), "
                            "or use a .safetensors version")
    from lora_ui.pickles import load_pickle_weights

    data = load_pickle_weights(path, UpscalerError)
    for key in ("params_ema", "params", "state_dict"):  # Real-ESRGAN / BasicSR wrappers
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return data[key]
    return data


def load_model(path: Path, allow_pickle: bool = False):
    """spandrel ImageModelDescriptor (eval mode, CPU) of a super-resolution file; UpscalerError otherwise."""
    spandrel = _import_spandrel()
    state = read_state_dict(path, allow_pickle)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as e:  # noqa: BLE001 - spandrel's UnsupportedModelError and shape errors
        raise UpscalerError(f"{Path(path).name} is not an upscaler model spandrel recognises ({e})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise UpscalerError(f"{Path(path).name} is a {descriptor.architecture.name} model "
                            f"({descriptor.purpose}), not a super-resolution upscaler")
    return descriptor.eval()


class ModelUpscaler:
    """One loaded model as an upscale step: image -> image x model.scale (tiled, A1111's 192 / 8)."""

    def __init__(self, descriptor, device: Any = "cpu", dtype: Any = None):
        import torch

        self.descriptor = descriptor.to(torch.device(device))
        self.dtype = dtype if dtype is not None and descriptor.supports_half else torch.float32
        self.descriptor = self.descriptor.to(self.dtype)
        self.scale = int(descriptor.scale)

    def __call__(self, image: Image.Image, _scale: float = 0) -> Image.Image:
        import numpy as np
        import torch

        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = tiled(lambda t: self.descriptor(t.to(self.descriptor.device, self.dtype)).float().cpu(),
                      x, self.scale, TILE, TILE_OVERLAP)
        arr = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(arr)


def tiled(model, x, scale: int, tile: int, overlap: int):
    """Run `model` over x (1, 3, H, W) in tiles of `tile` px with `overlap`, averaging overlaps ->
    (1, 3, H*scale, W*scale). One tile when the image fits."""
    import torch

    _, c, h, w = x.shape
    if h <= tile and w <= tile:
        return model(x)
    out = torch.zeros(1, c, h * scale, w * scale)
    weight = torch.zeros_like(out)
    stride = tile - overlap
    for top in list(range(0, max(h - tile, 0), stride)) + [max(h - tile, 0)]:
        for left in list(range(0, max(w - tile, 0), stride)) + [max(w - tile, 0)]:
            piece = model(x[:, :, top:top + tile, left:left + tile])
            ys, xs = slice(top * scale, top * scale + piece.shape[2]), slice(left * scale, left * scale + piece.shape[3])
            out[:, :, ys, xs] += piece
            weight[:, :, ys, xs] += 1
    return out / weight


def extras_upscale(upscalers: Upscalers, image: Image.Image, name: str, scale: float,
                   size: tuple[int, int] | None = None, crop: bool = True, max_size: int = 8192,
                   device: Any = "cpu") -> tuple[Image.Image, dict[str, Any]]:
    """A1111 Extras "Upscale" (postprocessing_upscale): by `scale`, or to `size` = (w, h) (scale =
    max(w / W, h / H), then with `crop` centred onto a w x h canvas). -> (image, infotext items)."""
    info: dict[str, Any] = {}
    if size is not None:
        scale = max(size[0] / image.width, size[1] / image.height)
        info["Postprocess upscale to"] = f"{size[0]}x{size[1]}"
    else:
        info["Postprocess upscale by"] = scale
    if not 0 < scale <= 16 or max(image.width, image.height) * scale > max_size:
        raise UpscalerError(f"the upscaled size ({image.width}x{image.height} x {scale:g}) must stay within "
                            f"{max_size} px and the scale within 0..16")
    found = upscalers.find(name)
    info["Postprocess upscaler"] = found.name
    step = (upscalers.load(found, device) if found.kind == "model"
            else _builtin_step(found.kind) if found.kind != "none" else (lambda im, _s: im))
    image = upscale_loop(image, scale, step)
    if size is not None and crop:
        canvas = Image.new("RGB", size)
        canvas.paste(image, box=(size[0] // 2 - image.width // 2, size[1] // 2 - image.height // 2))
        image = canvas
        info["Postprocess crop to"] = f"{image.width}x{image.height}"
    return image, info
