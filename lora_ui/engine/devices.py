"""Pick the torch device and dtype for the pipeline.

Automatic choice: CUDA -> fp16, MPS -> fp16, CPU -> fp32. Both are overridable (`--device`,
`--precision`, `--no-half` = fp32). Half precision on the CPU is refused with a clear message:
PyTorch's CPU kernels for fp16 convolutions are missing or very slow and SD VAEs overflow in fp16, so
a silent fallback would hide a user mistake. bf16 on the CPU is allowed (it works, slowly).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
PRECISION_CHOICES = ("auto", "fp16", "bf16", "fp32")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class DeviceError(ValueError):
    """The requested device or precision cannot be used here; the message says what to do."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype

    @property
    def precision(self) -> str:
        return {v: k for k, v in _DTYPES.items()}[self.dtype]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else mps, else cpu. An explicit device that is not available
    raises DeviceError."""
    if name not in DEVICE_CHOICES:
        raise DeviceError(f"Unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available to PyTorch "
                          "(check the driver and that the CUDA build of torch is installed), "
                          "or use --device cpu.")
    if name == "mps" and not _mps_available():
        raise DeviceError("--device mps was asked for but Apple's MPS backend is not available; "
                          "use --device cpu.")
    return torch.device(name)


def pick_dtype(device: torch.device, precision: str = "auto", *, no_half: bool = False) -> torch.dtype:
    """"auto" -> fp16 on cuda/mps, fp32 on cpu; `no_half` (A1111's --no-half) forces fp32."""
    if precision not in PRECISION_CHOICES:
        raise DeviceError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISION_CHOICES)}.")
    if no_half:
        if precision not in ("auto", "fp32"):
            raise DeviceError(f"--no-half means fp32 but --precision {precision} was also given; "
                              "drop one of them.")
        return torch.float32
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU (missing kernels, NaN images); "
                          "use --precision fp32 (the CPU default) or bf16.")
    if precision == "bf16" and device.type == "mps":
        raise DeviceError("bf16 is not supported on MPS; use --precision fp16 or fp32.")
    return _DTYPES[precision]


def choose(device: str = "auto", precision: str = "auto", *, no_half: bool = False) -> DeviceChoice:
    """Device and dtype from the CLI flags; raises DeviceError with an actionable message."""
    dev = pick_device(device)
    dtype = pick_dtype(dev, precision, no_half=no_half)
    log.info("Using device %s with %s", dev, dtype)
    return DeviceChoice(dev, dtype)


def free_memory(device: torch.device | None = None) -> None:
    """Return cached allocator memory to the driver after a model was dropped."""
    import gc

    gc.collect()
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()
    if _mps_available() and (device is None or device.type == "mps"):
        torch.mps.empty_cache()
