"""File hashes A1111 users see: AutoV2 (sha256 of the whole file, first 10 hex) and the kohya "addnet"
hash (sha256 of the bytes after the safetensors header, first 12 hex in infotext `Lora hashes`).

Both are computed in one pass over the file.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from lora_ui.files import open_regular

__all__ = ["HashError", "file_hashes", "AUTOV2_LENGTH", "SHORT_HASH_LENGTH"]

AUTOV2_LENGTH = 10
SHORT_HASH_LENGTH = 12
_BLOCK = 1024 * 1024


class HashError(OSError):
    """The file could not be read for hashing; the message names it."""


def file_hashes(path: Path, safetensors: bool = True) -> tuple[str, str | None]:
    """(sha256 of the whole file, addnet sha256 of the bytes after the header) as full hex digests.

    The addnet hash is None for non-safetensors files (A1111 uses the whole-file hash for those).
    The header length is read from the file itself (first 8 bytes, little-endian), as kohya does.
    """
    whole = hashlib.sha256()
    after_header = hashlib.sha256() if safetensors else None
    try:
        with open_regular(path) as handle:
            prefix = handle.read(8)
            whole.update(prefix)
            skip = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 and safetensors else 0
            position = len(prefix)
            while True:
                block = handle.read(_BLOCK)
                if not block:
                    break
                whole.update(block)
                if after_header is not None:
                    start = 8 + skip - position
                    if start < len(block):
                        after_header.update(block[max(start, 0):])
                position += len(block)
    except OSError as exc:
        raise HashError(f"{path}: cannot be read for hashing ({exc.strerror or exc})") from None
    return whole.hexdigest(), (after_header.hexdigest() if after_header is not None else None)
