"""Opening files the app did not write (models, LoRAs, sidecars, previews): regular files only.

A FIFO named `x.safetensors` would block `open()` forever, a symlink to `/dev/zero` would be read
without end, a device could do anything: `open_regular` opens without blocking (O_NONBLOCK), then
checks with fstat that what it opened is a regular file, so the check and the read are about the same
file (no window to swap it). `read_capped` reads a whole small file with a size cap.
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotRegularFileError", "FileTooLargeError", "ImageRefusedError", "open_regular", "read_capped",
           "is_regular", "open_image"]


class NotRegularFileError(OSError):
    """The path is a FIFO, a device, a socket or a folder, not a regular file."""


class FileTooLargeError(OSError):
    """The file is larger than the cap for its kind."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open `path` for binary reading when it is (or links to) a regular file; else NotRegularFileError.
    Never blocks on FIFOs. Other OSErrors (missing, permission) pass through."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{os.fspath(path)} is {_kind(mode)}, not a regular file; refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; FileTooLargeError / NotRegularFileError else.
    Reads at most max_bytes + 1 bytes even if the file grows while being read."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise FileTooLargeError(f"{Path(path).name}: {what} is {size} bytes; at most {max_bytes} are read")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(f"{Path(path).name}: {what} is larger than {max_bytes} bytes")
    return data


def is_regular(path: str | os.PathLike) -> bool:
    """True when `path` is (or links to) a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


class ImageRefusedError(ValueError):
    """An image file/bytes that is not decoded: too many pixels, too large, unreadable."""


def open_image(source: "str | os.PathLike | bytes", *, max_bytes: int, max_pixels: int):
    """A decoded PIL image from a path (regular file, at most max_bytes) or bytes. The pixel count is
    checked from the image header before anything is decoded (a 24 KB PNG can claim 14000x14000).
    Raises ImageRefusedError (or OSError for an unreadable path) and nothing else."""
    from PIL import Image

    data = source if isinstance(source, bytes) else read_capped(source, max_bytes, "image")
    if len(data) > max_bytes:
        raise ImageRefusedError(f"image is {len(data)} bytes; at most {max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRefusedError(f"image is {width}x{height} pixels; at most {max_pixels} are decoded")
        image.load()
    except ImageRefusedError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (DecompressionBombError, SyntaxError...)
        raise ImageRefusedError(f"not a readable image ({type(exc).__name__})") from None
    return image
